"""One ASGI application for pages, the API and (later) websockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sanjai_site.settings")
django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402  (needs settings first)

application = ProtocolTypeRouter({"http": django_application})
