"""Serving `/v1/chat/completions`: one exchange from the submit path to the answer, whole or streamed.

The request comes parsed (chat/openai/protocol.py). `complete` submits it
through the one submit path (chat.delivery, chat.lifecycle.submit), then
answers the finished reply as one chat.completion, or streams
chat.completion.chunk server-sent events read from the conversation's
channel-layer group. A client that disconnects cancels its reply; an exchange
sent with `store: false` is deleted once it has ended.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.http import HttpResponseBase, JsonResponse, StreamingHttpResponse

from chat import delivery, selectors
from chat.lifecycle.status import reply_cancel
from chat.lifecycle.submit import PostedMessage
from chat.models import Conversation, Message
from chat.openai import files
from chat.openai.protocol import ApiError, CompletionRequest
from chat.services.conversations import conversation_delete
from inference.tools import CALL_START, parse_calls

logger = logging.getLogger(__name__)


# While a streamed reply waits in the queue, an SSE comment every so often
# keeps proxies from closing a connection that looks idle.
KEEPALIVE_S = 15.0
# After a cancel, how long to wait for the worker to stop before deleting an
# unstored exchange (it stops within a decode step or two).
STOP_WAIT_S = 5.0


async def complete(*, user: User, request: CompletionRequest, prefer: str) -> HttpResponseBase:
    """Submit a parsed completion request and answer it (ApiError for a refusal)."""
    attached = files.NONE
    if request.files:
        attached = await sync_to_async(files.attach)(user=user, parts=request.files)
    try:
        posted = await delivery.submit(user=user, submission=request.submission(attached.ids), prefer=prefer)
    except delivery.Problem as problem:
        if not request.store and problem.conversation_id is not None:
            with suppress(Conversation.DoesNotExist):
                await sync_to_async(conversation_delete)(user=user, conversation_id=problem.conversation_id)
            problem.message = problem.message.replace(delivery.SAVED, "")  # and it is not kept
        error = _api_problem(problem, request)
        if problem.field == "documents" and problem.status == 404:  # a file id not the caller's
            error = await sync_to_async(files.missing)(user=user, parts=request.files, ids=attached.ids)
        if not request.store or problem.conversation_id is None:  # nothing kept refers to them
            await sync_to_async(files.forget)(user=user, created=attached.created)
        raise error from None
    exchange = Exchange(user=user, request=request, posted=posted, created_files=attached.created)
    response: HttpResponseBase
    if request.stream:
        response = _ClosingStream(_stream(exchange), content_type="text/event-stream; charset=utf-8")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: pass chunks through as they come
    else:
        response = JsonResponse(exchange.completion(await _wait(exchange)))
    for name, value in exchange.headers().items():
        response[name] = value
    return response


# The OpenAI error type of each status the submit path or a failed reply answers with.
KINDS = {400: "invalid_request_error", 404: "invalid_request_error", 409: "invalid_request_error"}
KINDS |= {403: "permission_error", 429: "rate_limit_error"}


def _api_problem(problem: delivery.Problem, request: CompletionRequest) -> ApiError:
    message, param = problem.message, None
    if problem.field is not None:
        param = _openai_param(problem.field, request)
        message = f"{param}: {message.split(': ', 1)[-1]}"
    code = {"invalid_request": None, "generation_timeout": "generation_timeout"}.get(
        problem.code, problem.code
    )
    error = ApiError(
        problem.status, message, kind=KINDS.get(problem.status, "server_error"), param=param, code=code
    )
    error.retry_after_s = problem.retry_after_s
    return error


def _openai_param(field: str, request: CompletionRequest) -> str:
    """The request field that the submit path's `field` came from, in OpenAI's terms."""
    if field == "max_new_tokens":
        return request.length_field
    if field == "message":
        return request.sources[-1]
    if field.startswith("history["):
        return request.sources[int(field[len("history[") : -1])]
    if field in ("system_prompt", "history"):
        return "messages"
    if field == "response_schema":
        return "response_format"
    if field == "documents":  # the file parts of its messages
        return "messages"
    return field


class Exchange:
    """One completion request from submitting to clean-up, shared by both answer styles."""

    def __init__(
        self,
        *,
        user: User,
        request: CompletionRequest,
        posted: PostedMessage,
        created_files: tuple[int, ...] = (),
    ) -> None:
        self.user = user
        self.request = request
        self.created_files = created_files  # documents stored from the request's inline file_data
        self.watch = delivery.ReplyWatch(user, posted.reply)
        self.reply_id = posted.reply.pk
        self.conversation_id = posted.reply.conversation_id
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.delivered = False  # the finished reply reached the client

    async def finished_reply(self) -> Message:
        """The stored row once the reply has ended; ApiError for a failure or a timeout."""
        if not self.watch.finished:
            raise ApiError(
                504,
                f"No reply within {settings.CHAT_REPLY_TIMEOUT_S:g} s: the queue is long. "
                "The request was cancelled; try again later.",
                kind="server_error",
                code="timeout",
            )
        reply = self.watch.reply
        if reply.status == Message.Status.FAILED:
            raise _api_problem(delivery.failure(reply), self.request)
        return reply

    @asynccontextmanager
    async def watching(self) -> AsyncIterator[delivery.ReplyWatch]:
        """The reply's watch, which cancels the reply on the way out if it was not delivered.

        The cancel comes before the watch is left, not after: leaving it waits
        for its channel-layer receive to end, which can take until the reply's
        next event (measured: 5.5 s, all of a 4,000-token reply, for a client
        that disconnected at once).
        """
        async with self.watch as watch:
            try:
                yield watch
            except BaseException:  # the client went away (cancelled), or an error on the way
                await asyncio.shield(self.cancel_undelivered())
                raise

    async def cancel_undelivered(self) -> None:
        """Cancel the reply if it was not delivered and has not ended."""
        if not self.delivered and not self.watch.finished:
            # Logged: a reply that runs on after its client left should be explainable.
            logger.info("reply %s was not delivered (its client went away): cancelling it", self.reply_id)
            with suppress(Message.DoesNotExist):
                await sync_to_async(reply_cancel)(user=self.user, message_id=self.reply_id)

    async def close(self) -> None:
        """Cancel a reply nobody will receive; delete the exchange if the client asked not to store it."""
        await self.cancel_undelivered()
        if self.request.store:
            return
        if not self.watch.finished:
            # Let the worker stop and save before the rows go, so it finds them.
            with suppress(Message.DoesNotExist):
                await self.watch.wait(STOP_WAIT_S)
        with suppress(Conversation.DoesNotExist):
            await sync_to_async(conversation_delete)(user=self.user, conversation_id=self.conversation_id)
        await sync_to_async(files.forget)(user=self.user, created=self.created_files)

    def citations(self, reply: Message) -> dict[str, Any]:
        """The passages the reply was given, beside `choices` (a SanjAI extension), when the
        request brought files; each names its file as /v1 does (`file_id`)."""
        if not self.request.files:
            return {}
        return {
            "citations": [
                {**citation, "file_id": files.file_id(citation["document_id"])}
                for citation in reply.citations
            ]
        }

    def headers(self) -> dict[str, str]:
        return {
            "X-SanjAI-Conversation-Id": str(self.conversation_id),
            "X-SanjAI-Message-Id": str(self.reply_id),
        }

    def usage(self, reply: Message) -> dict[str, int]:
        usage = selectors.message_usage(reply)
        return {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}

    def answer(self, reply: Message) -> tuple[str, list[dict[str, Any]], str | None]:
        """The reply as OpenAI sees it: its text, its tool calls, its finish reason.

        A reply that holds well-formed calls of the request's tools (see
        inference/tools.py) answers them, with the text before them as content;
        anything else is text, never an error.
        """
        text, calls = parse_calls(reply.content, self.request.tool_names)
        if not calls:
            return reply.content, [], reply.finish_reason
        tool_calls = [
            {
                "id": f"call_{secrets.token_hex(12)}",
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)},
            }
            for call in calls
        ]
        return text, tool_calls, "tool_calls"

    def completion(self, reply: Message) -> dict[str, Any]:
        content, tool_calls, finish_reason = self.answer(reply)
        message: dict[str, Any] = {"role": "assistant", "content": content or None, "refusal": None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        else:
            message["content"] = content
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.request.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": self.usage(reply),
            **self.citations(reply),
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.request.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            **extra,
        }
        if self.request.include_usage and "usage" not in body:
            body["usage"] = None  # as OpenAI does: only the last chunk carries it
        return body


class _HeldBack:
    """Streamed text, held back from where a tool call may begin.

    With tools, a reply's text goes out as it comes up to anything that could
    be the start of a call (`marker`); the rest waits for the end of the
    reply, when it is either its calls or, if they do not parse, more text.
    """

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.sent = ""
        self._seen = ""
        self._holding = False

    def take(self, piece: str) -> str:
        """What of `piece` may go out now."""
        self._seen += piece
        if not self.marker:
            self.sent += piece
            return piece
        if self._holding:
            return ""
        start = self._seen.find(self.marker)
        if start < 0:  # hold only a tail that could still grow into the marker
            start = next(
                (
                    i
                    for i in range(max(0, len(self._seen) - len(self.marker)), len(self._seen))
                    if self.marker.startswith(self._seen[i:])
                ),
                len(self._seen),
            )
        else:
            self._holding = True
        out = self._seen[len(self.sent) : start]
        self.sent += out
        return out

    def rest(self, final: str) -> str:
        """What is left to send of the final text, once the reply has ended."""
        return final[len(self.sent) :] if final.startswith(self.sent) else ""


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


class _ClosingStream(StreamingHttpResponse):
    """Closes the stream's generator as soon as the client goes away.

    Django closes only its own wrapper around the generator; ours would be
    finalized whenever the garbage collector got to it, and its clean-up
    (cancelling a reply nobody will read) with it, seconds or minutes later.
    """

    def __init__(self, stream: AsyncGenerator[str, None], **kwargs: Any) -> None:
        super().__init__(stream, **kwargs)
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield self.make_bytes(part)
        finally:
            await self._stream.aclose()


async def _wait(exchange: Exchange) -> Message:
    """The finished reply for a non-streaming answer; cancels it if the client goes away."""
    try:
        async with exchange.watching() as watch:
            try:
                await watch.wait(settings.CHAT_REPLY_TIMEOUT_S)
            except Message.DoesNotExist:
                raise _deleted() from None
            reply = await exchange.finished_reply()
            exchange.delivered = True
            return reply
    finally:
        # Also on asyncio.CancelledError: the client disconnected.
        await asyncio.shield(exchange.close())


def _deleted() -> ApiError:
    return ApiError(
        409,
        "The conversation was deleted while its reply was being generated.",
        code="conversation_deleted",
    )


async def _stream(exchange: Exchange) -> AsyncGenerator[str, None]:
    """Server-sent chat.completion.chunk events, ending with `data: [DONE]` or an error event.

    Django cancels this generator when the client disconnects (the ASGI server reports
    it); the `finally` then cancels the reply so the worker stops.
    """
    try:
        async with exchange.watching() as watch:
            yield _sse(exchange.chunk({"role": "assistant", "content": ""}))
            quiet_since = time.monotonic()
            held = _HeldBack(CALL_START if exchange.request.tool_names else "")
            try:
                async for piece in watch.text(settings.CHAT_REPLY_TIMEOUT_S):
                    if piece and (text := held.take(piece)):
                        quiet_since = time.monotonic()
                        yield _sse(exchange.chunk({"content": text}))
                    elif time.monotonic() - quiet_since >= KEEPALIVE_S:  # held text counts as quiet
                        quiet_since = time.monotonic()
                        yield ": keep-alive\n\n"
                reply = await exchange.finished_reply()
            except Message.DoesNotExist:
                raise _deleted() from None
            content, tool_calls, finish_reason = exchange.answer(reply)
            if tool_calls:  # each call in one delta, which the SDKs assemble as they do OpenAI's
                for index, call in enumerate(tool_calls):
                    yield _sse(exchange.chunk({"tool_calls": [{"index": index, **call}]}))
            elif rest := held.rest(content):
                yield _sse(exchange.chunk({"content": rest}))
            yield _sse(exchange.chunk({}, finish_reason=finish_reason, **exchange.citations(reply)))
            if exchange.request.include_usage:
                usage_chunk = exchange.chunk({}, usage=exchange.usage(reply))
                usage_chunk["choices"] = []
                yield _sse(usage_chunk)
            exchange.delivered = True
            yield "data: [DONE]\n\n"
    except ApiError as exc:
        # Headers are gone already: report it in the stream, as OpenAI does.
        yield _sse(exc.body)
    except Exception:
        logger.exception("stream of reply %s failed", exchange.reply_id)
        yield _sse(ApiError(500, "The server failed while streaming this reply.", kind="server_error").body)
    finally:
        await asyncio.shield(exchange.close())
