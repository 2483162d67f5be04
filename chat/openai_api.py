"""The OpenAI-compatible API: `GET /v1/models` and `POST /v1/chat/completions`.

Programs written for OpenAI's API (its official SDKs, LangChain, curl
scripts) work against SanjAI by pointing their base URL at `/v1` and using a
SanjAI API key. Each completion is stored as a conversation of the key's owner
and runs through the same Celery worker as the chat page; the web process
never generates. Streaming answers are server-sent events read from the
conversation's channel-layer group by an async generator; a client that
disconnects cancels its reply.

Structured output (`response_format` json_object or json_schema) becomes the
submit path's `response_schema`: local models decode under the schema's
grammar, so the reply parses; remote ones are asked for it. What SanjAI does
not do (several choices, tools, log probabilities, frequency and presence
penalties) is refused with a 400 that names the field, never silently
ignored. A field sent as null counts as absent, so clients that echo back
full message objects (`"tool_calls": null`) work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from ninja import Body
from ninja.errors import HttpError, ValidationError

from chat import delivery, selectors
from chat.auth import auth_user, json_api
from chat.lifecycle.status import reply_cancel
from chat.lifecycle.submit import NewConversation, PostedMessage, Submission
from chat.models import Conversation, Message
from chat.services import limits
from chat.services.conversations import conversation_delete
from inference.types import Turn

logger = logging.getLogger(__name__)


# While a streamed reply waits in the queue, an SSE comment every so often
# keeps proxies from closing a connection that looks idle.
KEEPALIVE_S = 15.0
# After a cancel, how long to wait for the worker to stop before deleting an
# unstored exchange (it stops within a decode step or two).
STOP_WAIT_S = 5.0


# --- Errors --------------------------------------------------------------------


class ApiError(Exception):
    """An OpenAI-style error: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s: int | None = None
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _api_error(request: HttpRequest | None, exc: ApiError) -> JsonResponse:
    response = JsonResponse(exc.body, status=exc.status)
    if exc.retry_after_s is not None:
        response["Retry-After"] = str(exc.retry_after_s)
    return response


def _envelope(status: int, message: str, code: str) -> JsonResponse:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return _api_error(None, ApiError(status, message, kind=kind, code=code))


api = json_api(
    error=_envelope,
    sessions=False,  # programs only: no browser session, so no CSRF to think about
    unauthenticated="Missing or invalid API key: send 'Authorization: Bearer <api key>' "
    "(keys are made on the profile page or with `make apikey`).",
    title="SanjAI OpenAI-compatible API",
    version="1",
    urls_namespace="openai",
    docs_url=None,  # OpenAI's own API reference documents this surface
    openapi_url=None,
)
api.exception_handler(ApiError)(_api_error)


NOT_A_JSON_OBJECT = "The request body must be a JSON object."


@api.exception_handler(ValidationError)
def _not_an_object(request: HttpRequest, exc: ValidationError) -> JsonResponse:
    return _api_error(request, _invalid(NOT_A_JSON_OBJECT))


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> JsonResponse:
    message = NOT_A_JSON_OBJECT if exc.status_code == 400 else str(exc)
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return _api_error(request, ApiError(exc.status_code, message, kind=kind))


# --- Parsing a request ---------------------------------------------------------

TOP_LEVEL_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "repetition_penalty",  # a SanjAI extension, as in /chat
        "n",
        "store",
        "user",  # an end-user id for the caller's own records; nothing here uses it
        "logprobs",
        "response_format",
    }
)
MESSAGE_FIELDS = frozenset({"role", "content", "name"})
SYSTEM_ROLES = frozenset({"system", "developer"})  # "developer" is OpenAI's newer name for it


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    system_prompt: str
    turns: tuple[Turn, ...]  # alternating user/assistant, ending with the user's
    params: dict[str, Any]  # as sent, under SanjAI's names; the submit path validates them
    length_field: str  # which of OpenAI's two names set max_new_tokens, for errors
    sources: tuple[str, ...]  # where each turn came from ("messages[2].content"), for errors
    stream: bool
    include_usage: bool
    store: bool

    def submission(self) -> Submission:
        *history, question = self.turns
        return Submission(
            content=question.content,
            params=self.params,
            new_conversation=NewConversation(system_prompt=self.system_prompt, history=tuple(history)),
            model=self.model,
        )


def _absent(value: Any) -> bool:
    return value is None or value == [] or value == {}


def _refuse_unknown(data: Mapping[str, Any], allowed: frozenset[str], where: str = "") -> None:
    for key, value in data.items():
        if key not in allowed and not _absent(value):
            raise _invalid(
                f"Unrecognized request argument supplied: {where}{key}. SanjAI does not support it.",
                param=f"{where}{key}",
                code="unsupported_parameter",
            )


def _boolean(payload: Mapping[str, Any], field: str, default: bool) -> bool:
    value = payload.get(field)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(f"{field}: must be true or false, got {value!r}.", param=field)
    return value


def _refuse_unsupported_values(payload: Mapping[str, Any]) -> None:
    n = payload.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise _invalid(f"n: only n=1 is supported (one choice per request), got {n!r}.", param="n")
    for field in ("frequency_penalty", "presence_penalty"):
        value = payload.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _invalid(f"{field}: must be a number, got {value!r}.", param=field)
        if value != 0:
            raise _invalid(
                f"{field}: SanjAI does not support it; send 0 or leave it out, and use "
                "repetition_penalty (1 to 2) to discourage repetition.",
                param=field,
                code="unsupported_parameter",
            )
    if _boolean(payload, "logprobs", False):
        raise _invalid("logprobs: log probabilities are not supported.", param="logprobs")
    user = payload.get("user")
    if user is not None and not isinstance(user, str):
        raise _invalid(f"user: must be a string, got {user!r}.", param="user")


RESPONSE_FORMATS = (
    '{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema": {...}}'
)
JSON_SCHEMA_FIELDS = frozenset({"name", "description", "schema", "strict"})


def _response_schema(value: Any) -> dict[str, Any] | None:
    """The JSON Schema a response_format asks the reply to follow; None for plain text.

    json_object asks for any JSON object. A json_schema's schema is checked
    (can the grammar enforce it?) by the submit path, as on every surface.
    `strict` changes nothing: a local model's reply always follows the schema.
    """
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        _refuse_unknown(value, frozenset({"type"}), where="response_format.")
        return None
    if kind == "json_object":
        _refuse_unknown(value, frozenset({"type"}), where="response_format.")
        return {"type": "object"}
    if kind == "json_schema":
        _refuse_unknown(value, frozenset({"type", "json_schema"}), where="response_format.")
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise _invalid(
                "response_format.json_schema: must be an object with a name and a schema.",
                param="response_format.json_schema",
            )
        _refuse_unknown(spec, JSON_SCHEMA_FIELDS, where="response_format.json_schema.")
        schema = spec.get("schema", {"type": "object"})
        if not isinstance(schema, dict):
            raise _invalid(
                "response_format.json_schema.schema: must be a JSON Schema object.",
                param="response_format.json_schema.schema",
            )
        return schema
    raise _invalid(
        f"response_format: must be {RESPONSE_FORMATS}, got {value!r}."[:500],
        param="response_format",
    )


def _content(value: Any, param: str) -> str:
    if isinstance(value, list):  # content parts: text only
        texts = []
        for index, part in enumerate(value):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise _invalid(
                    f"{param}[{index}]: only text content parts are supported "
                    '({"type": "text", "text": "..."}).',
                    param=f"{param}[{index}]",
                )
            texts.append(part["text"])
        value = "".join(texts)
    if not isinstance(value, str) or not value.strip():
        raise _invalid(f"{param}: must be a non-empty string.", param=param)
    return value  # its length is checked by the submit path, as on every surface


def _messages(value: Any) -> tuple[str, tuple[Turn, ...], tuple[str, ...]]:
    """The system prompt, the dialogue, and where each turn came from.

    Consecutive turns of one role are joined; a joined turn is named after its last message.
    """
    if not isinstance(value, list) or not value:
        raise _invalid("messages: must be a non-empty list of {role, content} objects.", param="messages")
    system: list[str] = []
    turns: list[Turn] = []
    sources: list[str] = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _invalid(f"{where}: must be an object with role and content.", param=where)
        _refuse_unknown(message, MESSAGE_FIELDS, where=f"{where}.")
        role = message.get("role")
        content = _content(message.get("content"), f"{where}.content")
        if role in SYSTEM_ROLES:
            if turns:
                raise _invalid(
                    f"{where}: system messages must come before the conversation's first user message.",
                    param=where,
                )
            system.append(content)
        elif role in ("user", "assistant"):
            if not turns and role == "assistant":
                raise _invalid(f"{where}: the first non-system message must be from the user.", param=where)
            if turns and turns[-1].role == role:
                turns[-1] = Turn(role, f"{turns[-1].content}\n\n{content}")
                sources[-1] = f"{where}.content"
            else:
                turns.append(Turn(role, content))
                sources.append(f"{where}.content")
        else:
            raise _invalid(
                f"{where}.role: must be system, developer, user or assistant (no tools here), got {role!r}.",
                param=f"{where}.role",
            )
    if not turns or turns[-1].role != "user":
        raise _invalid("messages: the last message must be from the user.", param="messages")
    return "\n\n".join(system), tuple(turns), tuple(sources)


def _max_tokens(payload: Mapping[str, Any]) -> tuple[str, Any]:
    """The field that sets the reply length, and its value; the two names are synonyms."""
    new, old = payload.get("max_completion_tokens"), payload.get("max_tokens")
    if new is not None and old is not None and new != old:
        raise _invalid(
            "max_tokens and max_completion_tokens disagree; send one of them.", param="max_completion_tokens"
        )
    return ("max_completion_tokens", new) if new is not None else ("max_tokens", old)


def parse_completion(payload: Mapping[str, Any]) -> CompletionRequest:
    """Validate a chat.completions request; ApiError(400) names the first bad field."""
    _refuse_unknown(payload, TOP_LEVEL_FIELDS)
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model: must name the served model (see GET /v1/models).", param="model")
    system_prompt, turns, sources = _messages(payload.get("messages"))
    _refuse_unsupported_values(payload)
    stream = _boolean(payload, "stream", False)
    options = payload.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise _invalid("stream_options: only allowed when stream is true.", param="stream_options")
        if not isinstance(options, dict):
            raise _invalid("stream_options: must be an object.", param="stream_options")
        _refuse_unknown(options, frozenset({"include_usage"}), where="stream_options.")
        include_usage = _boolean(options, "include_usage", False)
    length_field, length = _max_tokens(payload)
    return CompletionRequest(
        model=model,
        system_prompt=system_prompt,
        turns=turns,
        params={
            "max_new_tokens": length,
            **{field: payload.get(field) for field in ("temperature", "top_p", "repetition_penalty")},
            **{field: payload.get(field) for field in ("stop", "seed")},
            "response_schema": _response_schema(payload.get("response_format")),
        },
        length_field=length_field,
        sources=sources,
        stream=stream,
        include_usage=include_usage,
        store=_boolean(payload, "store", True),
    )


# --- Models --------------------------------------------------------------------


def _served_models() -> list[selectors.ServedModel]:
    return selectors.model_list(registry=settings.MODEL_REGISTRY, redis_url=settings.REDIS_URL)


def _model_object(model: selectors.ServedModel) -> dict[str, Any]:
    """OpenAI's model object, with SanjAI's live state beside it (clients ignore fields they don't know)."""
    return {
        "id": model.name,
        "object": "model",
        "created": int(model.since),
        "owned_by": "sanjai",
        "kind": model.kind,
        "state": model.state,  # ready, loading or no_worker
        "workers": model.workers,
    }


@api.get("/models")
def models(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"object": "list", "data": [_model_object(model) for model in _served_models()]})


@api.get("/models/{model_id}")
def model_detail(request: HttpRequest, model_id: str) -> JsonResponse:
    try:
        limits.check_model(model_id)  # the one wording for a model that is not declared
    except limits.ModelNotDeclared as exc:
        raise ApiError(404, str(exc), param="model", code="model_not_found") from None
    (model,) = [served for served in _served_models() if served.name == model_id]
    return JsonResponse(_model_object(model))


# --- Completions ---------------------------------------------------------------

# The OpenAI error type of each status the submit path or a failed reply answers with.
KINDS = {400: "invalid_request_error", 404: "invalid_request_error", 409: "invalid_request_error"}
KINDS |= {429: "rate_limit_error"}


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
    if field == "system_prompt":
        return "messages"
    if field == "response_schema":
        return "response_format"
    return field


class Exchange:
    """One completion request from submitting to clean-up, shared by both answer styles."""

    def __init__(self, *, user: User, request: CompletionRequest, posted: PostedMessage) -> None:
        self.user = user
        self.request = request
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

    def headers(self) -> dict[str, str]:
        return {
            "X-SanjAI-Conversation-Id": str(self.conversation_id),
            "X-SanjAI-Message-Id": str(self.reply_id),
        }

    def usage(self, reply: Message) -> dict[str, int]:
        usage = selectors.message_usage(reply)
        return {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}

    def completion(self, reply: Message) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.request.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": self.usage(reply),
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


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


@api.post("/chat/completions")
async def chat_completions(request: HttpRequest, payload: dict[str, Any] = Body(...)) -> HttpResponseBase:
    parsed = parse_completion(payload)
    user = auth_user(request)
    try:
        posted = await delivery.submit(
            user=user, submission=parsed.submission(), prefer=request.headers.get("Prefer", "")
        )
    except delivery.Problem as problem:
        if not parsed.store and problem.conversation_id is not None:
            with suppress(Conversation.DoesNotExist):
                await sync_to_async(conversation_delete)(user=user, conversation_id=problem.conversation_id)
            problem.message = problem.message.replace(delivery.SAVED, "")  # and it is not kept
        raise _api_problem(problem, parsed) from None
    exchange = Exchange(user=user, request=parsed, posted=posted)
    response: HttpResponseBase
    if parsed.stream:
        response = _ClosingStream(_stream(exchange), content_type="text/event-stream; charset=utf-8")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: pass chunks through as they come
    else:
        response = JsonResponse(exchange.completion(await _wait(exchange)))
    for name, value in exchange.headers().items():
        response[name] = value
    return response


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
            try:
                async for piece in watch.text(settings.CHAT_REPLY_TIMEOUT_S):
                    if piece:
                        quiet_since = time.monotonic()
                        yield _sse(exchange.chunk({"content": piece}))
                    elif time.monotonic() - quiet_since >= KEEPALIVE_S:
                        quiet_since = time.monotonic()
                        yield ": keep-alive\n\n"
                reply = await exchange.finished_reply()
            except Message.DoesNotExist:
                raise _deleted() from None
            yield _sse(exchange.chunk({}, finish_reason=reply.finish_reason))
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
