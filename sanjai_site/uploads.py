"""Request bodies over their limit are refused before any of them is stored.

Django's ASGI handler reads a whole body into a temporary file before a view
runs, and only then can a view look at its size: a 1 GB upload would be on
disk first. `BodyLimit` sits in front of it. The ASGI server (uvicorn) reads
a body only as fast as the application asks for it, so what this refuses is
never read into memory or onto disk beyond the server's small buffer.

- A body whose Content-Length is over the path's limit never reaches Django:
  on a path with its own limit (the import) it is answered with 413 here; on
  any other path Django gets an empty body with the declared length, and its
  own check (DATA_UPLOAD_MAX_MEMORY_SIZE) refuses it in the surface's own
  format (the APIs' JSON 413s, see chat.auth.install_error_handlers).
- A body without a Content-Length (chunked) is counted as it streams and cut
  off with 413 once it passes the limit.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

Scope = dict[str, Any]
Message = Mapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class PathLimit:
    """A path's own body limit, and what its 413 page tells the user."""

    bytes: int
    message: str


class BodyLimit:
    def __init__(self, app: ASGIApp, *, default: int, paths: Mapping[str, PathLimit]) -> None:
        self.app = app
        self.default = default
        self.paths = dict(paths)  # exact path -> its own limit, answered here

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        own_limit = self.paths.get(scope["path"])
        limit = self.default if own_limit is None else own_limit.bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            if own_limit is not None:
                await _too_large(send, own_limit.message)
            else:
                await self.app(scope, _without_body(receive), send)
            return
        if declared is not None:
            await self.app(scope, receive, send)
            return
        message = (
            own_limit.message if own_limit else f"Request bodies are limited to {limit / 1_000_000:g} MB."
        )
        await self._counted(scope, receive, send, limit, message)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int, message: str) -> None:
        received = 0
        over = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    return {"type": "http.disconnect"}  # Django stops reading and answers nothing
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counting_receive, watching_send)
        if over and not started:
            await _too_large(send, message)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # malformed: the server has already refused it
    return None


def _without_body(receive: Receive) -> Receive:
    """An empty body for the application; the client's is dropped, never stored, as it
    arrives, while the application listens for a disconnect (as Django does)."""
    delivered = False

    async def empty_body() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": b"", "more_body": False}
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message

    return empty_body


async def _too_large(send: Send, message: str) -> None:
    body = (
        f'<!doctype html><title>Too large</title><p>{html.escape(message)} <a href="/">Back to SanjAI</a></p>'
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
