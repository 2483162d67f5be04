"""The one way out for the HTTP surfaces: submit, wait, re-read, and say what went wrong.

`POST /chat`, `/v1/chat/completions` and `/api/v1` each parse their own
input and format their own answer; between the two they share this module:

- `submit` calls the one submit path (`reply_submit`) and turns its refusals
  into a `Problem` (status, code, message, Retry-After);
- `ReplyWatch` follows a stored reply to its end: streamed text for SSE, or
  the finished row. Events only say when to look; the stored row is the
  truth, so a missed event, a quiet channel or a channel layer that hiccups
  delays an answer by at most `POLL_S` and is never mistaken for a dead broker;
- `failure` maps a failed reply's error code to a status (`FAILURES`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

import redis
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import OperationalError, connection

from chat import selectors
from chat.events import FINISHED_EVENT_TYPES, Subscription, subscribe
from chat.lifecycle.dispatch import WorkerUnavailable
from chat.lifecycle.submit import NothingToRegenerate, PostedMessage, Submission, reply_submit
from chat.models import Conversation, Document, Message
from chat.services import limits
from inference.params import InvalidParameter

logger = logging.getLogger(__name__)


@dataclass(eq=False)  # not frozen: raising sets attributes on an exception
class Problem(Exception):
    """A refusal or a failed reply, as every HTTP surface reports it in its own format."""

    status: int
    code: str
    message: str
    retry_after_s: int | None = None
    field: str | None = None  # the input field at fault, for 400s
    # The stored rows, when the problem came after the message was kept.
    conversation_id: int | None = None
    message_id: int | None = None

    def __str__(self) -> str:
        return self.message


# A failed reply's error code -> (status, code the APIs report).
FAILURES: dict[str, tuple[int, str]] = {
    "context_overflow": (400, "context_length_exceeded"),
    "worker_unavailable": (503, "worker_unavailable"),
    "model_loading": (503, "model_loading"),
    "worker_lost": (503, "worker_lost"),
    "queue_timeout": (503, "queue_timeout"),
    "timeout": (504, "generation_timeout"),
    # A remote model's upstream (inference/remote.py):
    "upstream_auth": (502, "upstream_auth"),  # it refused the key
    "upstream_error": (502, "upstream_error"),  # it refused the request
    "upstream_unavailable": (503, "upstream_unavailable"),  # down, failing or busy after the retries
    "upstream_timeout": (504, "upstream_timeout"),
}


def failure(reply: Message) -> Problem:
    status, code = FAILURES.get(reply.error_code, (500, reply.error_code or "generation_failed"))
    return Problem(
        status,
        code,
        reply.error or "Generation failed.",
        retry_after_s=RETRY_AFTER_UNAVAILABLE_S if status == 503 else None,
        conversation_id=reply.conversation_id,
        message_id=reply.pk,
    )


SAVED = " Your message was saved."

# How long a client should wait before trying again when no worker is up, or
# while the workers load the model.
RETRY_AFTER_UNAVAILABLE_S = 10
RETRY_AFTER_LOADING_S = 5


def problem(exc: Exception, submission: Submission) -> Problem | None:
    """The Problem a refusal or outage from `reply_submit` is, or None for anything else."""
    if isinstance(exc, WorkerUnavailable):
        return Problem(
            503,
            exc.code,
            f"{exc}{SAVED}",
            retry_after_s=RETRY_AFTER_LOADING_S if exc.code == "model_loading" else RETRY_AFTER_UNAVAILABLE_S,
            conversation_id=exc.reply.conversation_id,
            message_id=exc.reply.pk,
        )
    if isinstance(exc, InvalidParameter | limits.InvalidInput):
        return Problem(400, "invalid_request", str(exc), field=exc.field)
    if isinstance(exc, NothingToRegenerate):
        return Problem(400, "invalid_request", str(exc))
    if isinstance(exc, limits.ModelNotDeclared):
        return Problem(404, exc.code, str(exc), field="model")
    if isinstance(exc, limits.ModelNotAllowed):
        return Problem(403, exc.code, str(exc), field="model")
    if isinstance(exc, Conversation.DoesNotExist):
        return Problem(404, "not_found", f"Conversation {submission.conversation_id} not found.")
    if isinstance(exc, Document.DoesNotExist):
        return Problem(404, "not_found", str(exc), field="documents")
    if isinstance(exc, limits.ConversationBusy):
        return Problem(409, exc.code, str(exc), retry_after_s=exc.retry_after_s)
    if isinstance(exc, limits.TooManyReplies | limits.RateLimited | limits.QuotaExceeded):
        return Problem(429, exc.code, str(exc), retry_after_s=exc.retry_after_s)
    return None


def waits_for_model(prefer: str) -> bool:
    """Whether a request's `Prefer` header (RFC 7240) lets its reply wait for a model
    that is still loading: `Prefer: wait=0` asks for an answer now, 503 model_loading
    with Retry-After, instead."""
    for preference in prefer.split(","):
        name, _, value = preference.split(";")[0].partition("=")
        if name.strip().lower() == "wait" and value.strip().strip('"') == "0":
            return False
    return True


def submit_sync(*, user: User, submission: Submission, prefer: str = "") -> PostedMessage:
    """`reply_submit`, with every refusal and outage raised as a Problem.

    `prefer`: the HTTP request's Prefer header, if it came over HTTP.
    """
    if not waits_for_model(prefer):
        submission = replace(submission, wait_for_model=False)
    try:
        return reply_submit(user=user, submission=submission)
    except Exception as exc:
        found = problem(exc, submission)
        if found is None:
            raise
        raise found from None


async def submit(*, user: User, submission: Submission, prefer: str = "") -> PostedMessage:
    """`submit_sync` for an async view."""
    return await sync_to_async(submit_sync)(user=user, submission=submission, prefer=prefer)


# How long a waiter trusts a quiet channel before it re-reads the reply's row.
POLL_S = 2.0
# How long leaving a watch waits, twice at most, for its cancelled receive to end.
EXIT_WAIT_S = 0.5
# Receives the layer kept after their watch ended: held until they end by themselves.
_LINGERING: set[asyncio.Task[None]] = set()


# Long enough to wait out a PostgreSQL restart (`make drill-compose` makes one).
DATABASE_RETRY_S = 30.0


def _stored_reply(*, user: User, message_id: int) -> Message:
    """The reply's row, with the connection closed after it: a request that waits for
    its reply (a /chat call, a stream, for minutes) holds no database connection while
    it waits, and never reuses one a PostgreSQL restart has cut."""
    try:
        return selectors.message_get(user=user, message_id=message_id)
    finally:
        if not connection.in_atomic_block:  # a test's transaction is the caller's to end
            connection.close()


class ReplyWatch:
    """Follows one stored reply until it ends, from events and its row.

    Use as `async with ReplyWatch(user, reply) as watch:` right after the
    reply was submitted; events that came before the subscription are made
    up for by re-reading the row.

    One task receives the conversation's events for the whole watch and
    hands this reply's to the waiter through a queue: the waiter's timeouts
    cancel only the queue read, never a receive from the channel layer (a
    receive cancelled mid-flight can lose a message). The task stops by
    itself after the reply's last event; it is cancelled only when the
    watch ends early.
    """

    def __init__(self, user: User, reply: Message) -> None:
        self.user = user
        self.reply_id = reply.pk
        self.conversation_id = reply.conversation_id
        self.reply = reply  # the latest row read
        self._subscription: Any = None
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._receiver: asyncio.Task[None] | None = None
        self._events_source: Subscription | None = None

    async def __aenter__(self) -> ReplyWatch:
        subscription = subscribe(self.conversation_id)
        try:
            events = await subscription.__aenter__()
        except (redis.RedisError, OSError) as exc:
            logger.warning("channel layer unavailable, following reply %s by polling: %s", self.reply_id, exc)
            return self
        self._subscription = subscription
        self._events_source = events
        self._receiver = asyncio.create_task(self._receive(events))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is not None and not receiver.done():
            await self._stop_receiving(receiver)
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                await subscription.__aexit__(kind, exc, tb)
            except (redis.RedisError, OSError) as error:
                logger.warning("channel layer unavailable while unsubscribing: %s", error)

    async def _stop_receiving(self, receiver: asyncio.Task[None]) -> None:
        """Cancel the receiving task without waiting on the layer for ever.

        channels_redis does not always end a cancelled receive at once: it may
        wait inside the layer for the channel's next message, which for a
        reply nobody is writing (a stalled worker) never comes, and the
        request would hang past its own timeout. So the channel is sent a
        message of its own to end on; a receive that still lingers is left to
        finish by itself, never awaited.
        """
        receiver.cancel()
        await asyncio.wait({receiver}, timeout=EXIT_WAIT_S)
        if not receiver.done() and self._events_source is not None:
            with suppress(redis.RedisError, OSError):
                await self._events_source.wake()
            await asyncio.wait({receiver}, timeout=EXIT_WAIT_S)
        if not receiver.done():
            logger.warning(
                "reply %s: the channel layer kept a cancelled receive; left to end by itself", self.reply_id
            )
            _LINGERING.add(receiver)
            receiver.add_done_callback(_LINGERING.discard)

    async def _receive(self, events: Subscription) -> None:
        try:
            while True:
                event = await events.next()
                if event.get("type") == "watch.ended":  # our own wake-up (_stop_receiving)
                    return
                if event.get("message_id") != self.reply_id:
                    continue
                self._events.put_nowait(event)
                if event["type"] in FINISHED_EVENT_TYPES:
                    return
        except (redis.RedisError, OSError) as exc:
            logger.warning("channel layer trouble, following reply %s by polling: %s", self.reply_id, exc)

    @property
    def finished(self) -> bool:
        return self.reply.is_finished

    async def reread(self) -> Message:
        """The reply's stored row; Message.DoesNotExist if its conversation was deleted.

        A database that stops answering (a PostgreSQL restart) is asked again
        every second for DATABASE_RETRY_S before the error is raised.
        """
        deadline = time.monotonic() + DATABASE_RETRY_S
        while True:
            try:
                self.reply = await sync_to_async(_stored_reply)(user=self.user, message_id=self.reply_id)
                return self.reply
            except OperationalError as exc:
                if time.monotonic() > deadline:
                    raise
                logger.warning("reply %s: no answer from the database (%s); asking again", self.reply_id, exc)
                await asyncio.sleep(1)

    async def _next_event(self, timeout_s: float) -> dict[str, Any] | None:
        """This reply's next event, or None after `timeout_s` of quiet."""
        try:
            return await asyncio.wait_for(self._events.get(), timeout_s)
        except TimeoutError:  # quiet, a slow machine, or no events to be had: look at the row
            return None

    async def wait(self, timeout_s: float) -> Message:
        """The reply's row once it has ended, or as it stands after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        await self.reread()
        while not self.finished and (left := deadline - time.monotonic()) > 0:
            event = await self._next_event(min(POLL_S, left))
            if event is None or event["type"] in FINISHED_EVENT_TYPES:
                await self.reread()
        return self.reply

    async def text(self, timeout_s: float) -> AsyncIterator[str]:
        """The reply's text in order as it is produced, until it ends or `timeout_s` passes.

        Yields "" after each quiet `POLL_S`, so a caller can keep its
        connection alive. The last pieces come from the finished row, so the
        pieces always add up to the stored text.
        """
        deadline = time.monotonic() + timeout_s
        sent = 0
        await self.reread()
        while not self.finished and (left := deadline - time.monotonic()) > 0:
            event = await self._next_event(min(POLL_S, left))
            if event is not None and event["type"] == "message.delta":
                offset, piece = event["offset"], event["text"]
                if offset > sent:  # missed deltas: the row's saved text may hold them
                    await self.reread()
                    if len(self.reply.content) < offset:
                        continue  # the finished row will bring it all
                    piece = self.reply.content[sent:offset] + piece
                    offset = sent
                piece = piece[sent - offset :]
                if piece:
                    sent += len(piece)
                    yield piece
                continue
            await self.reread()
            if not self.finished and len(self.reply.content) > sent:
                piece, sent = self.reply.content[sent:], len(self.reply.content)
                yield piece
            else:
                yield ""
        if self.finished and len(self.reply.content) > sent:
            yield self.reply.content[sent:]
