"""The one way events reach browsers and waiting API calls.

Every event about a conversation goes to its channel-layer group, and only
after the surrounding transaction commits, so nobody hears of a row they
cannot read yet. Tests capture events by listening on the group.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

# How often streamed text is published: one publish per token would cost more
# in Redis round trips than the tokens themselves.
DELTA_INTERVAL_S = 0.04


def conversation_group(conversation_id: int) -> str:
    return f"conversation.{conversation_id}"


def user_group(user_id: int) -> str:
    """Every open socket of one user: closed together when their session ends."""
    return f"user.{user_id}"


class _PublishLoop:
    """One event loop in a daemon thread that publishes for a process's threads.

    `async_to_sync` called from a thread with no event loop to return to (a
    worker's job thread) starts a new thread and a new event loop for every
    call, and the Redis channel layer opens a new connection for every new
    loop. At 8 replies streaming, that was ~200 threads, loops and Redis
    connections a second, and the interpreter time they took was taken from
    the engine thread: the worker's throughput fell to half of the engine's.
    One long-lived loop keeps the layer's connections open between publishes.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run `coroutine` on the loop and wait for it, raising what it raises."""
        asyncio.run_coroutine_threadsafe(coroutine, self._started()).result()

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="event-publisher", daemon=True).start()
                self._loop = loop
            return self._loop


_publish_loop: _PublishLoop | None = None


def publish_from_own_loop() -> None:
    """Publish events through one long-lived event loop in this process.

    For processes whose publishing threads have no event loop of their own to
    use (the generation worker). Not for the web process: its sync code runs
    under `sync_to_async`, and `async_to_sync` there already publishes on the
    server's own loop.
    """
    global _publish_loop
    if _publish_loop is None:
        _publish_loop = _PublishLoop()


def send_event(conversation_id: int, event: dict[str, Any]) -> None:
    """Publish `event` (a dict with a "type" such as "message.done") after commit."""
    _publish_after_commit(conversation_group(conversation_id), {"type": "chat.event", "event": event})


def end_sessions(user_id: int) -> None:
    """Close every socket the user has open (logout, account deletion), after commit."""
    _publish_after_commit(user_group(user_id), {"type": "session.end"})


def _publish_after_commit(group: str, message: dict[str, Any]) -> None:
    def publish() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            if _publish_loop is not None:
                _publish_loop.run(layer.group_send(group, message))
            else:
                async_to_sync(layer.group_send)(group, message)
        except (redis.RedisError, OSError) as exc:
            # Events only say when to look; the rows are the truth, and every
            # listener re-reads them. A broker outage must not fail the write.
            logger.warning("%s for %s not published: %s", message["type"], group, exc)

    transaction.on_commit(publish)


class DeltaCoalescer:
    """Buffers streamed text and publishes it at most every DELTA_INTERVAL_S.

    Each delta carries `offset`, the length of the reply before it, so that a
    client that loaded a snapshot of the text can skip what it already has.
    """

    def __init__(self, conversation_id: int, message_id: int) -> None:
        self._conversation_id = conversation_id
        self._message_id = message_id
        self._pending: list[str] = []
        self._offset = 0
        self._last = 0.0

    def __call__(self, text: str) -> None:
        self._pending.append(text)
        if time.monotonic() - self._last >= DELTA_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        self._last = time.monotonic()
        send_event(
            self._conversation_id,
            {"type": "message.delta", "message_id": self._message_id, "offset": self._offset, "text": text},
        )
        self._offset += len(text)


class Subscription:
    """A private channel that receives one conversation's events."""

    def __init__(self, layer: Any, channel: str) -> None:
        self._layer = layer
        self._channel = channel

    async def next(self) -> dict[str, Any]:
        """The next event, however long it takes.

        Do not cancel this on a short timer: with the Redis layer a cancel can
        lose a message just popped, and a process's private channels share
        one Redis key, so the loss can be another listener's (see ReplyWatch).
        """
        message = await self._layer.receive(self._channel)
        return message["event"]

    async def wake(self) -> None:
        """Give a pending `next()` something to return (an event of no reply's), so a
        receive that was cancelled but is still waiting inside the layer ends now."""
        await self._layer.send(self._channel, {"type": "chat.event", "event": {"type": "watch.ended"}})


FINISHED_EVENT_TYPES = frozenset({"message.done", "message.failed", "message.cancelled"})


@asynccontextmanager
async def subscribe(conversation_id: int) -> AsyncIterator[Subscription]:
    """Listen to a conversation's events for the duration of the block.

    Subscribe before queueing work, so that no event can slip past in between.
    """
    layer = get_channel_layer()
    channel = await layer.new_channel()
    group = conversation_group(conversation_id)
    await layer.group_add(group, channel)
    try:
        yield Subscription(layer, channel)
    finally:
        await layer.group_discard(group, channel)
