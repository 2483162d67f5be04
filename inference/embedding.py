"""Text embedders for dense retrieval: a local model folder, or a remote `/v1/embeddings`.

Both answer unit-length float32 vectors (cosine similarity is then a dot
product, the form sqlite-vec and pgvector compare fastest). Knows nothing of
Django: chat.documents.dense builds one from the settings.

The local one loads with sentence-transformers, the reference implementation
of these folders: it reads a sentence-transformers folder's own pipeline
(modules.json: pooling mode, Dense layers, Normalize, prompts) and wraps a plain
Hugging Face folder in mean pooling, so both kinds of folder mean what their
authors meant. It never downloads: `local_files_only`, and the caller passes a
folder that exists.

`EmbedderProcess` holds a local model in a spawned process of its own, so the
web process (which never imports torch) can serve `/v1/embeddings`.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, Protocol

import numpy as np
import openai


class EmbeddingError(Exception):
    """The embedder could not embed: the remote server refused or failed, or the model would not load."""


class Embedder(Protocol):
    name: str  # what the vectors are tagged with: vectors of two embedders are never compared

    def embed(self, texts: Sequence[str], *, query: bool = False) -> list[list[float]]:
        """One vector per text; `query` for a question searched with (some models prompt it apart)."""
        ...

    def embed_counted(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        """The vectors and how many tokens the model read (OpenAI's `usage.prompt_tokens`)."""
        ...


def normalized(vectors: Any) -> np.ndarray:
    """Rows scaled to unit length, as float32; an all-zero row (nothing the model knows) stays zero."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise EmbeddingError(f"expected one vector per text, got an array of shape {array.shape}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    unit: np.ndarray = np.divide(array, norms, out=np.zeros_like(array), where=norms > 0)
    return unit


class LocalEmbedder:
    def __init__(self, path: str, *, device: str = "auto", batch_size: int = 32) -> None:
        # Imported here: torch is for the workers that embed, not for every importer.
        from sentence_transformers import SentenceTransformer

        from inference.loading import pick_device

        self.name = path
        self.batch_size = batch_size
        try:
            self.model = SentenceTransformer(path, device=str(pick_device(device)), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EmbeddingError(f"cannot load the embedding model in {path}: {exc}") from exc
        self.dimensions = int(self.model.get_embedding_dimension() or 0)

    def embed(self, texts: Sequence[str], *, query: bool = False) -> list[list[float]]:
        if not texts:
            return []
        # encode_query / encode_document apply the prompts the folder declares for each
        # (e5's "query: ", nomic's "search_document: "); a folder without any gets none.
        encode = self.model.encode_query if query else self.model.encode_document
        vectors = encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        unit: list[list[float]] = normalized(vectors).tolist()
        return unit

    def embed_counted(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        # Counted as the model reads them: cut at its longest sequence.
        most = self.model.max_seq_length or 0
        lengths = (len(ids) for ids in self.model.tokenizer(list(texts))["input_ids"])
        tokens = sum(min(n, most) if most else n for n in lengths)
        return self.embed(texts), tokens


class RemoteEmbedder:
    """An OpenAI-compatible `/v1/embeddings` (vLLM, TEI, llama.cpp's server, Ollama, OpenAI, SanjAI)."""

    def __init__(
        self, *, base_url: str, model: str, api_key: str | None, timeout_s: float, batch_size: int
    ) -> None:
        self.name = f"{model}@{base_url}"
        self.model = model
        self.batch_size = batch_size
        self.client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "no-key", timeout=timeout_s, max_retries=2
        )

    def embed(self, texts: Sequence[str], *, query: bool = False) -> list[list[float]]:
        return self.embed_counted(texts)[0]  # the OpenAI protocol has no query/document distinction

    def embed_counted(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        vectors: list[list[float]] = []
        tokens = 0
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            try:
                response = self.client.embeddings.create(
                    model=self.model, input=batch, encoding_format="float"
                )
            except openai.OpenAIError as exc:
                raise EmbeddingError(f"the embedding server at {self.client.base_url} failed: {exc}") from exc
            if len(response.data) != len(batch):
                raise EmbeddingError(
                    f"asked for {len(batch)} embeddings, the server answered {len(response.data)}"
                )
            ordered = sorted(response.data, key=lambda item: item.index)
            vectors.extend(normalized([item.embedding for item in ordered]).tolist())
            tokens += response.usage.prompt_tokens if response.usage else 0
        return vectors, tokens


# --- A local model in a process of its own ---------------------------------------

_loaded: LocalEmbedder | None = None


def _load(path: str, device: str, batch_size: int) -> None:
    global _loaded
    _loaded = LocalEmbedder(path, device=device, batch_size=batch_size)


def _embed(texts: list[str]) -> tuple[list[list[float]], int]:
    if _loaded is None:
        raise EmbeddingError("the embedding process has no model loaded")
    return _loaded.embed_counted(texts)


class EmbedderProcess:
    """One spawned process that loads the model once and embeds one request at a time.

    'spawn', never 'fork': the web process has threads and an event loop. A job
    past its timeout has the process killed and replaced (pebble).
    """

    def __init__(self, path: str, *, device: str, batch_size: int) -> None:
        from pebble import ProcessPool

        self.name = path
        self._pool = ProcessPool(
            max_workers=1,
            initializer=_load,
            initargs=(path, device, batch_size),
            context=multiprocessing.get_context("spawn"),
        )

    def submit(self, texts: Sequence[str], *, timeout_s: float) -> Future[tuple[list[list[float]], int]]:
        """The vectors and the token count, from the process (pebble's ProcessExpired if it died)."""
        future: Future[tuple[list[list[float]], int]] = self._pool.schedule(
            _embed, args=(list(texts),), timeout=timeout_s
        )
        return future

    def close(self) -> None:
        self._pool.stop()  # type: ignore[no-untyped-call]
        self._pool.join(timeout=5)
