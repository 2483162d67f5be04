"""`POST /v1/embeddings` in OpenAI's format, served when an embedding model is configured.

The model is the one dense document search uses (chat.documents.dense):
EMBEDDING_MODEL, a local folder, or EMBEDDING_URL, a remote server this one
then relays to. Without either it answers 404 saying how to configure one.

A local model runs in a spawned process of its own (inference.embedding
.EmbedderProcess), loaded on the first request: the web process never imports
torch. A request may hold EMBEDDING_MAX_INPUTS texts of EMBEDDING_MAX_CHARS
characters in all, and each web process embeds or queues at most
EMBEDDING_MAX_WAITING requests at once (503 past them). `encoding_format` "float" or "base64" (little-endian
float32, what the official SDK asks for by default).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import functools
import threading
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from ninja import Body, Router
from pebble import ProcessExpired
from pydantic import BaseModel, ConfigDict, ValidationError

from chat.auth import auth_user
from chat.documents import dense
from chat.openai.protocol import ApiError, invalid
from inference.embedding import EmbedderProcess, EmbeddingError

router = Router()


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str | list[str]
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None  # OpenAI's end-user tag: accepted, not used


def served_model() -> str:
    """The model id this server answers to: the local folder's name, or the remote model's."""
    if settings.EMBEDDING_MODEL:
        return Path(settings.EMBEDDING_MODEL).name
    return str(settings.EMBEDDING_REMOTE_MODEL)


def _refusal(exc: ValidationError) -> ApiError:
    error = exc.errors()[0]
    param = str(error["loc"][0]) if error["loc"] else None
    if param == "input":
        return invalid("input: a string or a list of strings (token arrays are not taken).", param="input")
    if error["type"] == "extra_forbidden":
        return invalid(f"{param}: not a field of an embeddings request.", param=param)
    return invalid(f"{param}: {error['msg']}.", param=param)


def parse(payload: Any) -> EmbeddingsRequest:
    """Validated, and within the limits; ApiError(400) names the field."""
    try:
        body = EmbeddingsRequest.model_validate(payload)
    except ValidationError as exc:
        raise _refusal(exc) from None
    texts = [body.input] if isinstance(body.input, str) else body.input
    most, most_chars = settings.EMBEDDING_MAX_INPUTS, settings.EMBEDDING_MAX_CHARS
    if not texts:
        raise invalid("input: the list is empty; send at least one string.", param="input")
    if len(texts) > most:
        raise invalid(f"input: {len(texts)} strings; at most {most} per request.", param="input")
    if any(not text for text in texts):
        raise invalid("input: an empty string has no embedding.", param="input")
    if (chars := sum(len(text) for text in texts)) > most_chars:
        raise invalid(f"input: {chars} characters in all; at most {most_chars} per request.", param="input")
    if body.model != served_model():
        raise ApiError(
            404,
            f"model: {body.model!r} is not served here; the embedding model is {served_model()!r}.",
            param="model",
            code="model_not_found",
        )
    return body


@functools.cache
def _process(path: str, device: str, batch_size: int) -> EmbedderProcess:
    process = EmbedderProcess(path, device=device, batch_size=batch_size)
    atexit.register(process.close)
    return process


_waiting = 0
_waiting_lock = threading.Lock()  # requests run on several threads under WSGI, one loop under ASGI


@contextmanager
def _slot() -> Iterator[None]:
    """A place among the EMBEDDING_MAX_WAITING requests one web process embeds or queues; 503 past them."""
    global _waiting
    with _waiting_lock:
        if _waiting >= settings.EMBEDDING_MAX_WAITING:
            raise ApiError(
                503,
                f"The embedding model is busy with {_waiting} requests; try again shortly.",
                kind="server_error",
                code="embeddings_busy",
            )
        _waiting += 1
    try:
        yield
    finally:
        with _waiting_lock:
            _waiting -= 1


async def _embed(texts: list[str]) -> tuple[list[list[float]], int]:
    if not settings.EMBEDDING_MODEL:  # remote: relayed from a thread
        embedder = await sync_to_async(dense.embedder)()
        return await sync_to_async(embedder.embed_counted, thread_sensitive=False)(texts)
    process = _process(str(settings.EMBEDDING_MODEL), settings.DEVICE, settings.EMBEDDING_BATCH_SIZE)
    return await asyncio.wrap_future(process.submit(texts, timeout_s=settings.EMBEDDING_TIMEOUT_S))


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


@router.post("/embeddings")
async def embeddings(request: HttpRequest, payload: dict[str, Any] = Body(...)) -> JsonResponse:
    auth_user(request)  # any user with a key; it touches no one's data
    if not dense.enabled():
        raise ApiError(404, dense.NOT_CONFIGURED, code="embeddings_not_configured")
    body = parse(payload)
    texts = [body.input] if isinstance(body.input, str) else body.input
    try:
        with _slot():
            vectors, tokens = await _embed(texts)
    except FutureTimeout:
        raise ApiError(
            504, f"Embedding took longer than {settings.EMBEDDING_TIMEOUT_S:g} s.", kind="server_error"
        ) from None
    except (EmbeddingError, ProcessExpired) as exc:
        raise ApiError(502, f"The embedding model failed: {exc}", kind="server_error") from None
    if body.dimensions is not None and vectors and body.dimensions != len(vectors[0]):
        raise invalid(
            f"dimensions: this model's embeddings have {len(vectors[0])}; it cannot shorten them.",
            param="dimensions",
        )
    return JsonResponse(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encoded(vector, body.encoding_format)}
                for i, vector in enumerate(vectors)
            ],
            "model": served_model(),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
