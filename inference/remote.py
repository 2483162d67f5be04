"""Remote models: replies streamed from an OpenAI-compatible server.

vLLM, TGI, llama.cpp's server, Ollama and Hugging Face's Inference Providers
router (https://router.huggingface.co/v1) all speak the OpenAI chat API, so
one client serves them all. It is the `openai` package: the protocol's own
reference client, async on httpx, with a typed error per status (which is
what the error messages below are made from). huggingface_hub's
InferenceClient reaches the same servers through `base_url`, but adds
nothing here that the protocol's own client lacks.

A reply is a coroutine on the remote worker's event loop: while it waits for
the upstream it holds no thread, so one worker streams many replies at once.

- Timeouts: connecting, and each wait for the next piece of the stream.
- Retries, with doubling backoff (or the upstream's Retry-After), on 429,
  5xx, a refused connection and a timeout, but only before the first token:
  after it, a retry would repeat text the reader already has.
- Cancelling closes the upstream stream, so the server stops generating.
- Bounds of its own, against an upstream that ignores `max_tokens` or is not
  an OpenAI server at all: the reply is cut as "length" at REPLY_CHARS_PER_TOKEN
  characters a token of max_new_tokens (there is no tokenizer here to count
  with); one SSE event over MAX_EVENT_BYTES is an UpstreamError before it is
  held (the SDK's decoder would buffer a line without end whole); after its
  finish, an upstream that never sends [DONE] is let go after FINISH_GRACE_S.
- Errors become GenerationErrors whose message a person can act on; a
  refused key names the environment variable, never the key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import openai
from openai._streaming import ServerSentEvent, SSEDecoder

from inference.grammar import JSON_OBJECT_SCHEMA
from inference.types import Completion, ContextOverflow, FinishReason, GenerationError, GenerationRequest

logger = logging.getLogger(__name__)

# How often a reply waiting on the upstream checks whether it was cancelled.
CANCEL_POLL_S = 0.25
MAX_RETRY_AFTER_S = 30.0
FINISH_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length", "content_filter": "stop"}
# The most characters a reply may have for each token of its max_new_tokens. A remote model
# has no tokenizer here, and the upstream's pieces are not tokens (some servers send several
# tokens a piece, some a character or a word), so the bound is on characters: no tokenizer
# averages above about 8 a token over a reply, even on indented code, and CJK is 1 to 2; 32
# is four times that. Only an upstream that ignores `max_tokens` reaches it.
REPLY_CHARS_PER_TOKEN = 32
# The most one SSE event (up to the blank line that ends it) may take: a streamed piece is a
# few hundred bytes, and a server that sends the whole reply as one piece still fits.
MAX_EVENT_BYTES = 1 << 20
# How long to wait, once the upstream has finished, for the usage and [DONE] it still owes
# (a server sends them at once): one that holds the stream open must not keep the reply.
FINISH_GRACE_S = 2.0
# The largest prompt token count taken from an upstream's usage: within a signed 32-bit
# column, far above any context window.
MAX_REPORTED_TOKENS = 2**31 - 1


@dataclass(frozen=True)
class RemoteConfig:
    name: str  # the model's name here
    base_url: str  # the upstream's OpenAI-compatible API root, e.g. http://gpu-box:8000/v1
    upstream_model: str  # the model id the upstream knows
    api_key_env: str = ""  # the environment variable holding the key ("" for none)
    send_repetition_penalty: bool = False  # vLLM, TGI and llama.cpp take it; OpenAI itself refuses it
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0  # the longest wait for the next piece of the stream
    retries: int = 3  # extra attempts before the first token
    backoff_s: float = 0.5  # the first retry's wait, doubled for each one after
    max_concurrent: int = 64  # replies one worker streams at once; more wait their turn


class UpstreamError(GenerationError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RemoteBackend:
    """Streams replies for one remote model; `generate` is a coroutine."""

    def __init__(self, config: RemoteConfig, *, api_key: str | None) -> None:
        self.config = config
        self.model_name = config.name
        self._client = _Client(
            base_url=config.base_url,
            # The client insists on a key; a server that needs none ignores it.
            api_key=api_key or "no-key",
            timeout=openai.Timeout(config.read_timeout_s, connect=config.connect_timeout_s),
            max_retries=0,  # retried here, and only before the first token
        )

    async def close(self) -> None:
        await self._client.close()

    async def generate(
        self,
        request: GenerationRequest,
        on_text: Callable[[str], Awaitable[None]],
        should_stop: Callable[[], Awaitable[bool]] | None = None,
    ) -> Completion:
        """Stream one reply; `on_text` gets each piece, `should_stop` is polled while waiting."""
        state = _Stream()
        reading = asyncio.ensure_future(self._read(request, on_text, state))
        deadline = time.monotonic() + request.time_limit_s if request.time_limit_s else None
        ended: FinishReason | None = None
        while not reading.done():
            await asyncio.wait({reading}, timeout=CANCEL_POLL_S)
            if reading.done():
                break
            if should_stop is not None and await should_stop():
                ended = "cancelled"
            elif deadline is not None and time.monotonic() >= deadline:
                ended = "timeout"
            if ended:
                reading.cancel()  # closes the HTTP response: the upstream stops generating
                await asyncio.gather(reading, return_exceptions=True)
                break
        if ended is None:
            reading.result()  # raises the upstream's error, if any
        text = "".join(state.parts).strip()
        return Completion(
            text=text,
            prompt_tokens=state.prompt_tokens,
            completion_tokens=state.completion_tokens or state.pieces,
            finish_reason=ended or state.finish_reason,
            dropped_turns=0,
        )

    async def _read(
        self, request: GenerationRequest, on_text: Callable[[str], Awaitable[None]], state: _Stream
    ) -> None:
        stream = await self._open(request)
        try:
            await self._take(stream, request.params.max_new_tokens, on_text, state)
        except openai.APITimeoutError:
            raise UpstreamError(
                "upstream_timeout",
                f"The model server at {self.config.base_url} stopped sending for "
                f"{self.config.read_timeout_s:g} s in the middle of the reply.",
            ) from None
        except _Oversized:
            raise UpstreamError(
                "upstream_error",
                f"The model server at {self.config.base_url} sent a piece of the reply over "
                f"{MAX_EVENT_BYTES >> 20} MiB long, where pieces are a few hundred bytes: check that "
                "base_url is its OpenAI-compatible API (often ending in /v1); if so, the server is broken.",
            ) from None
        except Exception as exc:  # the transport's own errors too (the client does not wrap them mid-stream)
            raise UpstreamError(
                "upstream_unavailable",
                f"The model server at {self.config.base_url} broke off the reply: {_describe(exc)}",
            ) from None
        finally:
            await stream.close()  # before the end: the connection closes, and the upstream stops generating

    async def _take(
        self, stream: Any, max_new_tokens: int, on_text: Callable[[str], Awaitable[None]], state: _Stream
    ) -> None:
        """Read the stream's chunks into `state` until it ends, or the reply is longer than it may be."""
        max_chars = max_new_tokens * REPLY_CHARS_PER_TOKEN
        chunks = aiter(stream)
        loop = asyncio.get_running_loop()
        let_go_at: float | None = None  # once finished: one grace for the usage and [DONE], not one an event
        while True:
            try:
                async with asyncio.timeout_at(let_go_at):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if let_go_at is None:
                    raise
                logger.info(
                    "%s: no [DONE] %g s after the finish; ending the reply", self.model_name, FINISH_GRACE_S
                )
                return
            if chunk.usage is not None:
                state.prompt_tokens = _count(chunk.usage.prompt_tokens, 0)
                state.completion_tokens = _count(chunk.usage.completion_tokens, max_new_tokens)
            for choice in chunk.choices:
                piece = choice.delta.content if choice.delta and not state.finished else None
                if piece:
                    kept = piece[: max_chars - state.chars]
                    if kept:
                        state.parts.append(kept)
                        state.chars += len(kept)
                        state.pieces += 1
                        await on_text(kept)
                    if len(kept) < len(piece):
                        # More than max_new_tokens can be, whatever the tokenizer: the upstream
                        # is ignoring max_tokens. Its own count will not come; it had them all.
                        state.finish_reason = "length"
                        state.completion_tokens = max_new_tokens
                        return
                if choice.finish_reason and not state.finished:
                    state.finish_reason = FINISH_REASONS.get(choice.finish_reason, "stop")
                    state.finished = True  # text after its own finish is not the reply's
                    let_go_at = loop.time() + FINISH_GRACE_S

    async def _open(self, request: GenerationRequest) -> Any:
        """The upstream's stream, retried on passing trouble before any token came."""
        config = self.config
        for attempt in range(config.retries + 1):
            try:
                return await self._client.chat.completions.create(**self._arguments(request))
            except (openai.AuthenticationError, openai.PermissionDeniedError):
                where = (
                    f"the key in ${config.api_key_env}"
                    if config.api_key_env
                    else "the request (no key is configured: set api_key_env in the models file)"
                )
                raise UpstreamError(
                    "upstream_auth", f"The model server at {config.base_url} refused {where}."
                ) from None
            except openai.NotFoundError:
                model = config.upstream_model
                raise UpstreamError(
                    "upstream_error",
                    f"The model server at {config.base_url} does not serve the model {model!r}.",
                ) from None
            except openai.BadRequestError as exc:
                message = _describe(exc)
                if _too_long(message):
                    raise ContextOverflow(
                        f"The conversation is too long for {config.name}: {message}"
                    ) from None
                raise UpstreamError(
                    "upstream_error", f"The model server at {config.base_url} refused the request: {message}"
                ) from None
            except (
                openai.RateLimitError,
                openai.InternalServerError,
                openai.APIConnectionError,  # includes APITimeoutError
            ) as exc:
                if attempt == config.retries:
                    raise UpstreamError(_code(exc), _after_retries(config, exc)) from None
                wait = _retry_after(exc) or config.backoff_s * 2**attempt
                logger.info("%s: %s; retrying in %.1f s", config.name, _describe(exc), wait)
                await asyncio.sleep(wait)
            except openai.APIStatusError as exc:
                raise UpstreamError(
                    "upstream_error", f"The model server at {config.base_url} answered {_describe(exc)}"
                ) from None
        raise AssertionError("unreachable")

    def _arguments(self, request: GenerationRequest) -> dict[str, Any]:
        params = request.params
        arguments: dict[str, Any] = {
            "model": self.config.upstream_model,
            "messages": [{"role": turn.role, "content": turn.content} for turn in request.turns],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            arguments["stop"] = list(params.stop)
        if params.seed is not None:
            arguments["seed"] = params.seed
        if params.response_schema is not None:
            arguments["response_format"] = response_format(params.response_schema)
        if self.config.send_repetition_penalty:
            arguments["extra_body"] = {"repetition_penalty": params.repetition_penalty}
        return arguments


class _Client(openai.AsyncOpenAI):
    """The SDK's client, its SSE decoder bounded (`_make_sse_decoder` is its hook for a decoder)."""

    def _make_sse_decoder(self) -> SSEDecoder:
        return _BoundedDecoder()


class _Oversized(Exception):
    """One SSE event over MAX_EVENT_BYTES."""


class _BoundedDecoder(SSEDecoder):
    """The SDK's decoder, fed only while the event it holds is within MAX_EVENT_BYTES.

    It buffers a line, and an event's lines, until they end, however long: one line
    without end would take all memory before a chunk reached us. The bytes are counted
    as decoded (after gzip, say), as the decoder holds them.
    """

    async def aiter_bytes(self, iterator: AsyncIterator[bytes]) -> AsyncIterator[ServerSentEvent]:
        async for event in super().aiter_bytes(_bounded(iterator)):
            yield event


async def _bounded(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    held = 0  # bytes since the last blank line: the event the decoder holds
    before = b""  # the byte before this chunk: a blank line may straddle two
    async for chunk in chunks:
        seen = before + chunk
        # A blank line is two line ends in a row, CRLF being one end ("\r\n" alone is none).
        end = max(seen.rfind(b"\n\n"), seen.rfind(b"\r\r"), seen.rfind(b"\n\r"))
        held = len(seen) - end - 2 if end >= 0 else held + len(chunk)
        if held > MAX_EVENT_BYTES:
            raise _Oversized
        before = chunk[-1:]
        yield chunk


def _count(value: Any, most: int) -> int:
    """A token count the upstream reports, as a stored count may be: a whole number from 0
    (to `most`, where the reply's own limit bounds it; 0: to a database integer's range)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(0, min(value, most or MAX_REPORTED_TOKENS))


class _Stream:
    """What has come in so far."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.chars = 0
        self.pieces = 0
        self.finished = False  # the upstream has sent its finish_reason
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason: FinishReason = "stop"


def _code(exc: Exception) -> str:
    return "upstream_timeout" if isinstance(exc, openai.APITimeoutError) else "upstream_unavailable"


def _after_retries(config: RemoteConfig, exc: Exception) -> str:
    tries = f"{config.retries + 1} tries"
    if isinstance(exc, openai.APITimeoutError):
        waited = f"{config.read_timeout_s:g} s"
        return f"The model server at {config.base_url} did not answer within {waited} ({tries})."
    if isinstance(exc, openai.APIConnectionError):
        return f"The model server at {config.base_url} cannot be reached ({tries}): {_describe(exc)}"
    return f"The model server at {config.base_url} is busy or failing ({tries}): {_describe(exc)}"


def _too_long(message: str) -> bool:
    """Whether a 400 says the prompt is over the context window (each server words it its own way)."""
    lowered = message.lower()
    return "context" in lowered and ("length" in lowered or "window" in lowered)


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return min(float(value), MAX_RETRY_AFTER_S) if value else None
    except ValueError:
        return None


def _describe(exc: Exception) -> str:
    """The upstream's own words, shortened: status and message, never headers (they hold the key)."""
    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        message = body.get("message") if isinstance(body, dict) else None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            message = body["error"].get("message")
        return f"{exc.status_code}: {(message or exc.message)[:300]}"
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {str(cause)[:300] or 'no detail'}"


def response_format(response_schema: str) -> dict[str, Any]:
    """The OpenAI response_format asking an upstream for JSON: json_object for any
    object, else json_schema with `strict` (vLLM, SGLang, llama.cpp's server and
    Ollama constrain their decoding to it)."""
    if response_schema == JSON_OBJECT_SCHEMA:
        return {"type": "json_object"}
    schema = json.loads(response_schema)
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": schema, "strict": True}}
