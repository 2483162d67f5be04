"""The chat websockets, and who may open one."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.urls import path

from chat.consumers import ConversationConsumer

websocket_urlpatterns = [
    path("ws/conversations/<int:conversation_id>/", ConversationConsumer.as_asgi()),
]


def conversation_ws_path(conversation_id: int) -> str:
    """The path of a conversation's socket, as the route above matches it (the page is given it)."""
    return f"/ws/conversations/{conversation_id}/"


DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int] | None:
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        return None
    return parts.scheme, parts.hostname.lower(), port


class SameOriginValidator:
    """Websocket handshakes only from this site's own pages.

    Browsers send cookies with cross-site websocket handshakes too, so the
    Origin must be the page's own: the same scheme, host and port as the
    request (a page on localhost at another port is another site), or one of
    CSRF_TRUSTED_ORIGINS (a TLS proxy in front: the page is https, the hop
    to the ASGI server is not). The host must also be one of ALLOWED_HOSTS.
    """

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not self.allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)

    @staticmethod
    def allowed(scope: dict[str, Any]) -> bool:
        headers = dict(scope.get("headers", []))
        origin = _origin(headers.get(b"origin", b"").decode("latin1"))
        host = headers.get(b"host", b"").decode("latin1")
        if (
            origin is None
            or not host
            or not validate_host(split_domain_port(host)[0], settings.ALLOWED_HOSTS)
        ):
            return False
        scheme = "https" if scope.get("scheme") in {"wss", "https"} else "http"
        trusted = {_origin(url) for url in settings.CSRF_TRUSTED_ORIGINS}
        return origin == _origin(f"{scheme}://{host}") or origin in trusted


websocket_application = SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
