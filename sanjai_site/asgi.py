"""One ASGI application for pages, the APIs and the chat websockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sanjai_site.settings")
django_application = get_asgi_application()

# Imported after Django is set up: they load models.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from chat.routing import websocket_urlpatterns  # noqa: E402
from chat.services.sweeper import start_sweeper  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_application,
        # Browsers send cookies with cross-site websocket handshakes too: only
        # pages served from ALLOWED_HOSTS may open one.
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

# Only the web server imports this module. Its sweeper ends replies nobody is
# working on, even while no worker is running to do it.
start_sweeper()
