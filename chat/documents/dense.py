"""Dense (embedding) search over a user's document chunks, on when an embedder is configured.

Off unless EMBEDDING_MODEL (a local folder) or EMBEDDING_URL (a remote
OpenAI-compatible /v1/embeddings) is set (sanjai_site/settings.py); then
chat.documents.search fuses it with the lexical ranking.

Vectors live in chat_chunkvector (chat.models.ChunkVector): one unit-length
float32 blob per chunk, deleted with its chunk, hence with its document and
its owner's account. The table has no dimension: a model's is known only
once it loads, and migrations must apply with dense search off. A query is
compared with every vector of the given documents (exact, no approximate
index: a conversation's documents hold thousands of chunks, not millions):
- on SQLite, by sqlite-vec's `vec_distance_cosine`, where this Python's sqlite3
  can load extensions (some builds cannot: then numpy, over the same blobs);
- on PostgreSQL with pgvector installed, by its `<=>` operator over a `vector`
  column added on first use (`CREATE EXTENSION` needs the right to, so it is
  not in a migration); without pgvector, numpy again.

Every query is filtered by the owner as well as by the document ids the caller
gives: retrieval never crosses users, whatever ids it is handed.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

import numpy as np
from django.conf import settings
from django.db import DatabaseError, connection, transaction

from chat.documents.ranking import Hit
from chat.models import ChunkVector, Document, DocumentChunk
from inference.embedding import Embedder, EmbeddingError, LocalEmbedder, RemoteEmbedder

logger = logging.getLogger(__name__)

# Ingestion reports its progress between these while chunks are embedded
# (chat.services.documents.document_ingest: parsing ends at 60).
PROGRESS_FROM, PROGRESS_TO = 60, 95
HEADING_SEPARATOR = "\n"
# A cosine at or below this is no sign of relevance (rounding leaves orthogonal at ~1e-17).
MIN_SIMILARITY = 1e-6
NAME_CHARS = 500  # ChunkVector.model's column
# How many rows one UPDATE of the pgvector column takes.
PG_WRITE_BATCH = 500

NOT_CONFIGURED = (
    "No embedding model is configured: set EMBEDDING_MODEL to a local sentence-transformers or "
    "Hugging Face folder, or EMBEDDING_URL and EMBEDDING_REMOTE_MODEL to an OpenAI-compatible "
    "/v1/embeddings server."
)

__all__ = ["NOT_CONFIGURED", "EmbeddingError", "dense_search", "embed_texts", "enabled", "index_document"]


class DenseOff(RuntimeError):
    """Dense search was asked for with no embedder configured."""


def enabled() -> bool:
    return bool(settings.EMBEDDING_MODEL or settings.EMBEDDING_URL)


def embedder() -> Embedder:
    """The configured embedder, loaded once per process (and again if the settings change, as tests do)."""
    if not enabled():
        raise DenseOff(NOT_CONFIGURED)
    return _embedder(
        settings.EMBEDDING_MODEL,
        settings.EMBEDDING_URL,
        settings.EMBEDDING_REMOTE_MODEL,
        settings.EMBEDDING_API_KEY_ENV,
        settings.DEVICE,
        settings.EMBEDDING_BATCH_SIZE,
        settings.EMBEDDING_TIMEOUT_S,
    )


@functools.cache
def _embedder(
    path: str, url: str, remote_model: str, key_env: str, device: str, batch_size: int, timeout_s: float
) -> Embedder:
    if path:
        return LocalEmbedder(path, device=device, batch_size=batch_size)
    api_key = os.environ.get(key_env) if key_env else None
    return RemoteEmbedder(
        base_url=url, model=remote_model, api_key=api_key, timeout_s=timeout_s, batch_size=batch_size
    )


def embedder_name() -> str:
    """The name vectors are tagged with, without loading a local model; at most ChunkVector.model's 500."""
    if settings.EMBEDDING_MODEL:
        name = str(settings.EMBEDDING_MODEL)
    else:
        name = f"{settings.EMBEDDING_REMOTE_MODEL}@{settings.EMBEDDING_URL}"
    if len(name) > NAME_CHARS:  # still one name per embedder: cut, with a digest of the whole
        name = f"{name[: NAME_CHARS - 65]}#{hashlib.sha256(name.encode()).hexdigest()}"
    return name


def embed_texts(texts: list[str]) -> list[list[float]]:
    """Unit-length vectors of `texts`, in order, EMBEDDING_BATCH_SIZE at a time (EmbeddingError if not)."""
    return embedder().embed(texts)


def _blob(vector: Sequence[float]) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def index_document(*, document_id: int, progress: Callable[[int], None] | None = None) -> None:
    """Embed every chunk of a document and store the vectors, replacing its old ones, in one transaction.

    `progress(percent)` hears 60..95 as batches finish. A document deleted (or
    read again) meanwhile keeps no vector of a chunk that is gone. Nothing to do
    with dense search off; EmbeddingError if the embedder fails (nothing is stored).
    """
    if not enabled():
        return
    rows = list(
        DocumentChunk.objects.filter(document_id=document_id)
        .order_by("ordinal")
        .values_list("pk", "heading", "text")
    )
    name = embedder_name()
    blobs: list[bytes] = []  # 1.5 kB a chunk at 384 dimensions, where a list of floats takes 12 kB
    step = max(1, settings.EMBEDDING_BATCH_SIZE)
    for start in range(0, len(rows), step):
        batch = rows[start : start + step]
        texts = [f"{heading}{HEADING_SEPARATOR}{text}" if heading else text for _, heading, text in batch]
        blobs.extend(_blob(vector) for vector in embed_texts(texts))
        if progress is not None:
            done = min(len(rows), start + step) / len(rows)
            progress(PROGRESS_FROM + int(done * (PROGRESS_TO - PROGRESS_FROM)))
    pgvector = connection.vendor == "postgresql" and _pgvector_ready()  # its DDL, if any, before the lock
    with transaction.atomic():
        if not Document.objects.select_for_update().filter(pk=document_id).exists():
            return
        alive = set(DocumentChunk.objects.filter(document_id=document_id).values_list("pk", flat=True))
        ChunkVector.objects.filter(document_id=document_id).delete()
        kept = [(pk, blob) for (pk, _, _), blob in zip(rows, blobs, strict=True) if pk in alive]
        ChunkVector.objects.bulk_create(
            ChunkVector(chunk_id=pk, document_id=document_id, model=name, embedding=blob) for pk, blob in kept
        )
        if pgvector:
            _pg_write(kept)


def dense_search(*, user_id: int, document_ids: Collection[int], query: str, k: int) -> list[Hit]:
    """The `k` chunks of the user's `document_ids` closest to `query` by cosine similarity, best first."""
    ids = sorted({int(i) for i in document_ids})
    if not ids or k < 1 or not query.strip():
        return []
    [vector] = embedder().embed([query], query=True)
    return nearest(user_id=user_id, document_ids=ids, vector=vector, k=k, model=embedder_name())


def nearest(
    *, user_id: int, document_ids: Collection[int], vector: Sequence[float], k: int, model: str
) -> list[Hit]:
    """The `k` chunks of the user's `document_ids` whose vectors (made by `model`) are closest to `vector`."""
    ids = sorted({int(i) for i in document_ids})
    if not ids or k < 1 or not any(vector):
        return []  # a zero query (nothing in it the model knows) has no direction to compare
    hits = search_method()(user_id=user_id, document_ids=ids, vector=vector, k=k, model=model)
    # Orthogonal or opposite: no sign of relevance, and a place in the fused ranking would say otherwise.
    return [hit for hit in hits if hit.score > MIN_SIMILARITY]


class Method(Protocol):
    def __call__(
        self, *, user_id: int, document_ids: list[int], vector: Sequence[float], k: int, model: str
    ) -> list[Hit]: ...


def search_method() -> Method:
    """How this database compares vectors: pgvector, sqlite-vec, or numpy where neither can."""
    if connection.vendor == "postgresql" and _pgvector_ready():
        return _pg_search
    if connection.vendor == "sqlite" and _sqlite_vec_loaded():
        return _sqlite_search
    return _numpy_search


def _marks(count: int) -> str:
    return ", ".join(["%s"] * count)


# The owner's check and the embedder's, then the document ids' placeholders.
_OWNED = (
    "JOIN chat_document d ON d.id = v.document_id "
    "WHERE d.owner_id = %s AND v.model = %s AND v.document_id IN "
)


def _fetch(sql: str, params: list[Any]) -> list[Hit]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [Hit(chunk_id=row[0], score=float(row[1])) for row in cursor.fetchall()]


def _sqlite_search(
    *, user_id: int, document_ids: list[int], vector: Sequence[float], k: int, model: str
) -> list[Hit]:
    sql = (
        "SELECT v.chunk_id, 1 - vec_distance_cosine(v.embedding, %s) AS score FROM chat_chunkvector v "  # noqa: S608 (only placeholders)
        f"{_OWNED}({_marks(len(document_ids))}) ORDER BY score DESC, v.chunk_id LIMIT %s"
    )
    return _fetch(sql, [_blob(vector), user_id, model, *document_ids, k])


def _numpy_search(
    *, user_id: int, document_ids: list[int], vector: Sequence[float], k: int, model: str
) -> list[Hit]:
    sql = f"SELECT v.chunk_id, v.embedding FROM chat_chunkvector v {_OWNED}({_marks(len(document_ids))})"  # noqa: S608 (only placeholders)
    with connection.cursor() as cursor:
        cursor.execute(sql, [user_id, model, *document_ids])
        rows = cursor.fetchall()
    ids = [row[0] for row in rows]
    blobs = [bytes(row[1]) for row in rows]  # PostgreSQL answers memoryviews
    if not ids:
        return []
    matrix = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(ids), -1)
    query = np.asarray(vector, dtype=np.float32)
    if matrix.shape[1] != query.shape[0]:
        raise EmbeddingError(f"stored vectors have {matrix.shape[1]} dimensions, the query {query.shape[0]}")
    scores = matrix @ query  # both unit length: the cosine similarity
    top = np.lexsort((np.asarray(ids), -scores))[:k]
    return [Hit(chunk_id=ids[i], score=float(scores[i])) for i in top]


# --- sqlite-vec ----------------------------------------------------------------


def _sqlite_vec_loaded() -> bool:
    """Load sqlite-vec into this thread's connection once; False where this Python cannot load extensions."""
    connection.ensure_connection()
    raw = connection.connection
    # Remembered on Django's wrapper beside the raw connection it was loaded into
    # (sqlite3.Connection takes no attributes): a reconnection loads it again.
    seen = getattr(connection, "_sanjai_sqlite_vec", None)
    if seen is not None and seen[0] is raw:
        return bool(seen[1])
    loaded = False
    if hasattr(raw, "enable_load_extension"):
        import sqlite_vec

        try:
            raw.enable_load_extension(True)
            try:
                sqlite_vec.load(raw)
                loaded = True
            finally:
                raw.enable_load_extension(False)
        except Exception as exc:  # sqlite3.OperationalError, or a missing shared library
            logger.warning("sqlite-vec could not be loaded (%s): dense search compares vectors in numpy", exc)
    connection._sanjai_sqlite_vec = (raw, loaded)  # type: ignore[attr-defined]
    return loaded


# --- pgvector ------------------------------------------------------------------

_pg_state: dict[str, bool] = {}


def _pgvector_ready() -> bool:
    """pgvector's column on chat_chunkvector, added (and filled from the blobs) once per process.

    False where the extension is not installed or this role may not create it:
    numpy then compares the blobs."""
    alias = connection.alias
    if alias in _pg_state:
        return _pg_state[alias]
    ready = _pg_prepare()
    # Inside a caller's transaction the column is only there if it commits: not remembered.
    if not connection.in_atomic_block:
        _pg_state[alias] = ready
    return ready


def _pg_prepare() -> bool:
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS vector")
            cursor.execute("ALTER TABLE chat_chunkvector ADD COLUMN IF NOT EXISTS vec vector")
    except DatabaseError as exc:
        logger.warning("pgvector is not available (%s): dense search compares vectors in numpy", exc)
        return False
    # Vectors stored before the column existed.
    rows = ChunkVector.objects.extra(where=["vec IS NULL"]).values_list("chunk_id", "embedding")
    _pg_write([(chunk_id, bytes(blob)) for chunk_id, blob in rows])
    return True


def _pg_literal(vector: Sequence[float]) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in vector) + "]"


def _pg_write(rows: Sequence[tuple[int, bytes]]) -> None:
    """Set pgvector's column of each (chunk id, blob)."""
    with connection.cursor() as cursor:
        for start in range(0, len(rows), PG_WRITE_BATCH):
            batch = rows[start : start + PG_WRITE_BATCH]
            cursor.executemany(
                "UPDATE chat_chunkvector SET vec = %s::vector WHERE chunk_id = %s",
                [
                    (_pg_literal(np.frombuffer(blob, dtype="<f4").tolist()), chunk_id)
                    for chunk_id, blob in batch
                ],
            )


def _pg_search(
    *, user_id: int, document_ids: list[int], vector: Sequence[float], k: int, model: str
) -> list[Hit]:
    literal = _pg_literal(vector)
    sql = (
        "SELECT v.chunk_id, 1 - (v.vec <=> %s::vector) AS score FROM chat_chunkvector v "  # noqa: S608 (only placeholders)
        f"{_OWNED}({_marks(len(document_ids))}) AND v.vec IS NOT NULL "
        "ORDER BY v.vec <=> %s::vector, v.chunk_id LIMIT %s"
    )
    return _fetch(sql, [literal, user_id, model, *document_ids, literal, k])
