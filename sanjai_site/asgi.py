"""One ASGI application for pages, the APIs and the chat websockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sanjai_site.settings")
django_application = get_asgi_application()

# Imported after Django is set up: they load models.
from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import reverse  # noqa: E402

from chat.exports import import_too_large  # noqa: E402
from chat.lifecycle.sweep import start_sweeper  # noqa: E402
from chat.routing import websocket_application  # noqa: E402
from chat.views import IMPORT_REFUSED  # noqa: E402
from sanjai_site.uploads import BodyLimit, PathLimit  # noqa: E402

# Multipart framing and the CSRF field around an imported file.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
DOCUMENT_BODY_BYTES = settings.DOCUMENT_MAX_BYTES + MULTIPART_OVERHEAD_BYTES
DOCUMENT_TOO_LARGE = (
    f"file: the file is larger than {settings.DOCUMENT_MAX_BYTES / 1_000_000:g} MB, "
    "the most a document may be."
)

application = ProtocolTypeRouter(
    {
        # Bodies over their limit are refused before any of them is stored.
        "http": BodyLimit(
            django_application,
            default=settings.DATA_UPLOAD_MAX_MEMORY_SIZE,
            timeout_s=settings.REQUEST_BODY_TIMEOUT_S,
            paths={
                # The form is on the profile page, which then says why.
                reverse("conversation_import"): PathLimit(
                    settings.IMPORT_MAX_BYTES + MULTIPART_OVERHEAD_BYTES,
                    import_too_large(settings.IMPORT_MAX_BYTES),
                    refused_url=f"{reverse('profile')}?{IMPORT_REFUSED}",
                ),
                # A document upload (the multipart field `file`), refused in each API's envelope.
                "/api/v1/documents": PathLimit(
                    DOCUMENT_BODY_BYTES, DOCUMENT_TOO_LARGE, json_body=lambda message: {"detail": message}
                ),
                "/v1/files": PathLimit(
                    DOCUMENT_BODY_BYTES,
                    DOCUMENT_TOO_LARGE,
                    json_body=lambda message: {
                        "error": {
                            "message": message,
                            "type": "invalid_request_error",
                            "param": "file",
                            "code": "file_too_large",
                        }
                    },
                ),
                reverse("dictation"): PathLimit(
                    settings.VOICE_MAX_BYTES,
                    f"The recording is larger than {settings.VOICE_MAX_BYTES / 1_000_000:g} MB, "
                    "the most dictation takes.",
                ),
            },
        ),
        "websocket": websocket_application,  # only this site's own pages may open one
    }
)

# Only the web server imports this module. Its sweeper ends replies nobody is
# working on, even while no worker is running to do it.
start_sweeper()
