"""One ASGI application for pages, the APIs and the chat websockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sanjai_site.settings")
django_application = get_asgi_application()

# Imported after Django is set up: they load models.
from channels.routing import ProtocolTypeRouter  # noqa: E402

from chat.routing import websocket_application  # noqa: E402
from chat.services.sweeper import start_sweeper  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": websocket_application,  # only this site's own pages may open one
    }
)

# Only the web server imports this module. Its sweeper ends replies nobody is
# working on, even while no worker is running to do it.
start_sweeper()
