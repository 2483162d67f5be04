"""Request bodies over their limits are refused before any of them is stored.

Django's ASGI handler reads a whole body into a temporary file before a view
runs, and only then can a view look at its size: a 1 GB upload would be on
disk first. `BodyLimit` sits in front of it. The ASGI server (uvicorn) reads
a body only as fast as the application asks for it, so what this refuses is
never read into memory or onto disk beyond the server's small buffer.

- A request that declares both Content-Length and Transfer-Encoding is
  refused with 400 (RFC 9112 section 6.1: it is how requests are smuggled,
  and uvicorn's h11 frames such a body as chunked, so the declared length
  would say nothing about what follows).
- A body whose Content-Length is over the path's limit never reaches Django:
  on a path with its own limit it is answered here, with 413 (dictation,
  whose page script shows the message) or by sending the browser to a page
  that says why (the import form's own page); on any other path Django gets
  an empty body with the declared length, and its own check
  (DATA_UPLOAD_MAX_MEMORY_SIZE) refuses it in the surface's own format (the
  APIs' JSON 413s, see chat.auth.install_error_handlers).
- Every other body is counted as it streams, whatever its head says, and cut
  off the same way once it passes the limit.
- Before a browser is sent elsewhere, the rest of its upload is read and
  thrown away (up to DRAIN_FACTOR times the limit, within the time limit):
  a browser that is still sending when the connection closes shows "connection
  reset" rather than the answer. Nothing drained is kept.
- Every body has a time limit from the request's head to its last byte: a
  slow drip is cut off with 408 when it runs out, so no client holds a
  request open by sending a byte at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

Scope = dict[str, Any]
Message = Mapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DISCONNECT: Message = {"type": "http.disconnect"}  # what makes Django stop reading and answer nothing
DRAIN_FACTOR = 4  # how much of a refused upload is read and dropped, in times its limit


@dataclass(frozen=True)
class PathLimit:
    """A path's own body limit, and what its 413 page tells the user, or where a
    browser is sent instead (303: a page that shows the reason itself); for an
    API's path, the 413's JSON body in that API's envelope, made from the message."""

    bytes: int
    message: str
    refused_url: str | None = None
    json_body: Callable[[str], dict[str, Any]] | None = None


class BodyLimit:
    def __init__(
        self, app: ASGIApp, *, default: int, paths: Mapping[str, PathLimit], timeout_s: float
    ) -> None:
        self.app = app
        self.default = default
        self.paths = dict(paths)  # exact path -> its own limit, answered here
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name for name, _ in scope.get("headers", ())}
        if b"content-length" in headers and b"transfer-encoding" in headers:
            await _refuse(
                send,
                400,
                "A request may declare Content-Length or Transfer-Encoding, not both.",
            )
            return
        own_limit = self.paths.get(scope["path"])
        limit = self.default if own_limit is None else own_limit.bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            if own_limit is not None:
                await self._turn_away(receive, send, own_limit, deadline=self._deadline())
            else:
                await self.app(scope, _without_body(receive, self._deadline()), _closing(send))
            return
        await self._counted(scope, receive, send, limit, own_limit)

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.timeout_s

    async def _counted(
        self, scope: Scope, receive: Receive, send: Send, limit: int, own_limit: PathLimit | None
    ) -> None:
        received = 0
        refusal: tuple[int, str] | None = None
        body_done = False  # any method may carry a body, and Django reads whichever comes
        started = False
        deadline = self._deadline()
        message = (
            own_limit.message if own_limit else f"Request bodies are limited to {limit / 1_000_000:g} MB."
        )

        async def counting_receive() -> Message:
            nonlocal received, refusal, body_done
            if refusal is not None:
                return DISCONNECT
            if body_done:  # Django listening for a disconnect while it answers: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    incoming = await receive()
            except TimeoutError:
                refusal = (408, f"The request's body did not arrive within {self.timeout_s:g} s.")
                return DISCONNECT
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                body_done = not incoming.get("more_body", False)
                if received > limit:
                    refusal = (413, message)
                    return DISCONNECT
            return incoming

        async def watching_send(outgoing: Message) -> None:
            nonlocal started
            started = started or outgoing["type"] == "http.response.start"
            await send(outgoing)

        await self.app(scope, counting_receive, watching_send)
        if refusal is None or started:
            return
        if refusal[0] == 413 and own_limit is not None:
            await self._turn_away(receive, send, own_limit, deadline=deadline, drained=received)
        else:
            await _refuse(send, *refusal)

    async def _turn_away(
        self, receive: Receive, send: Send, own_limit: PathLimit, *, deadline: float, drained: int = 0
    ) -> None:
        """Refuse a body over its path's own limit, as that path asks."""
        if own_limit.json_body is not None:
            await _refuse(send, 413, own_limit.message, json_body=own_limit.json_body)
            return
        if own_limit.refused_url is None:
            await _refuse(send, 413, own_limit.message)
            return
        cap = DRAIN_FACTOR * own_limit.bytes
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while drained <= cap:
                    incoming = await receive()
                    if incoming["type"] != "http.request":
                        return  # the client went away: nobody to answer
                    drained += len(incoming.get("body", b""))
                    if not incoming.get("more_body", False):
                        break
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", own_limit.refused_url.encode()),
                    (b"content-length", b"0"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # malformed: the server has already refused it
    return None


def _without_body(receive: Receive, deadline: float) -> Receive:
    """An empty body for the application; the client's is dropped, never stored, as it
    arrives, while the application listens for a disconnect (as Django does), and only
    until the body's deadline: then the application hears that the client went away."""
    delivered = False

    async def empty_body() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": b"", "more_body": False}
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return message
        except TimeoutError:
            return DISCONNECT

    return empty_body


def _closing(send: Send) -> Send:
    """`send`, the response saying Connection: close: the rest of the client's body is
    never read, so the connection must not wait for it to serve another request."""

    async def send_closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return send_closing


async def _refuse(
    send: Send, status: int, message: str, *, json_body: Callable[[str], dict[str, Any]] | None = None
) -> None:
    if json_body is not None:
        body, kind = json.dumps(json_body(message)).encode(), b"application/json"
    else:
        title = {400: "Bad request", 408: "Too slow", 413: "Too large"}[status]
        back = '<a href="/">Back to SanjAI</a>'
        body = f"<!doctype html><title>{title}</title><p>{html.escape(message)} {back}</p>".encode()
        kind = b"text/html; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", kind),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),  # the rest of the body is never read
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
