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
- Errors become GenerationErrors whose message a person can act on; a
  refused key names the environment variable, never the key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import openai

from inference.types import Completion, ContextOverflow, FinishReason, GenerationError, GenerationRequest

logger = logging.getLogger(__name__)

# How often a reply waiting on the upstream checks whether it was cancelled.
CANCEL_POLL_S = 0.25
MAX_RETRY_AFTER_S = 30.0
FINISH_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length", "content_filter": "stop"}


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
        self._client = openai.AsyncOpenAI(
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
            async for chunk in stream:
                if chunk.usage is not None:
                    state.prompt_tokens = chunk.usage.prompt_tokens
                    state.completion_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    piece = choice.delta.content if choice.delta else None
                    if piece:
                        state.parts.append(piece)
                        state.pieces += 1
                        await on_text(piece)
                    if choice.finish_reason:
                        state.finish_reason = FINISH_REASONS.get(choice.finish_reason, "stop")
        except openai.APITimeoutError:
            raise UpstreamError(
                "upstream_timeout",
                f"The model server at {self.config.base_url} stopped sending for "
                f"{self.config.read_timeout_s:g} s in the middle of the reply.",
            ) from None
        except Exception as exc:  # the transport's own errors too (the client does not wrap them mid-stream)
            raise UpstreamError(
                "upstream_unavailable",
                f"The model server at {self.config.base_url} broke off the reply: {_describe(exc)}",
            ) from None
        finally:
            await stream.close()

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
                if "context" in message.lower() and (
                    "length" in message.lower() or "window" in message.lower()
                ):
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
        if self.config.send_repetition_penalty:
            arguments["extra_body"] = {"repetition_penalty": params.repetition_penalty}
        return arguments


class _Stream:
    """What has come in so far."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pieces = 0
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
