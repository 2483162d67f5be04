"""Documents a user uploads: stored, read in the background, deleted.

`document_upload` checks the file's size and the owner's storage budget,
stores the bytes under DOCUMENT_DIR and queues the reading once the row is
committed. `document_ingest` (the "documents" queue's job) claims the row with
a conditional update, so a job delivered twice reads the file once; it parses
in a child process held to the configured limits (chat.documents.parse_isolated),
writes every chunk in one transaction, embeds them when dense search is on
(chat.documents.dense), and only then marks the document ready.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Sequence
from contextlib import suppress
from datetime import timedelta
from pathlib import Path

import redis
from celery import current_app
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import QuerySet, Sum
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from chat.documents import ParseLimits, UnreadableDocument, chunk, clean_filename, dense, parse_isolated
from chat.documents.parsing import kind_of
from chat.events import send_event
from chat.models import MAX_ID, Conversation, Document, DocumentChunk
from chat.services.limits import InvalidInput, QuotaExceeded, lock_profile
from inference.embedding import EmbeddingError

logger = logging.getLogger(__name__)

INGEST_TASK = "chat.ingest_document"  # chat.tasks.ingest_document's name

HEADING_CHARS = 500  # DocumentChunk.heading's column
# A stale ingestion is queued again this many times before it is failed.
MAX_REQUEUES = 1


def parse_limits() -> ParseLimits:
    return ParseLimits(
        max_bytes=settings.DOCUMENT_MAX_BYTES,
        max_memory_bytes=settings.DOCUMENT_PARSE_MEMORY_BYTES,
        time_limit_s=settings.DOCUMENT_PARSE_TIME_LIMIT_S,
    )


class DocumentTooLarge(InvalidInput):
    """The file is over DOCUMENT_MAX_BYTES (the APIs answer 413)."""


def _mb(size: int) -> str:
    return f"{size / 1_000_000:g} MB"


def file_path(document: Document) -> Path:
    return Path(settings.DOCUMENT_DIR) / document.path


def document_upload(*, user: User, name: str, data: bytes) -> Document:
    """Store `data` as a new document of `user`, processing; its reading is queued on commit."""
    filename = _filename("file", name)
    if not data:
        raise InvalidInput("file", "the file is empty.")
    if len(data) > settings.DOCUMENT_MAX_BYTES:
        raise DocumentTooLarge(
            "file",
            f"{filename} is {_mb(len(data))}; a document may be at most {_mb(settings.DOCUMENT_MAX_BYTES)}.",
        )
    try:
        kind = kind_of(filename)
    except UnreadableDocument as exc:
        raise InvalidInput("file", str(exc)) from None
    relative = f"{user.pk}/{secrets.token_hex(16)}"
    with transaction.atomic():
        lock_profile(user=user)  # two uploads of one user take turns at the budget
        _check_budget(user=user, size=len(data))
        target = Path(settings.DOCUMENT_DIR) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        try:
            document = Document.objects.create(
                owner=user,
                name=filename,
                kind=kind,
                size_bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                path=relative,
            )
        except Exception:
            target.unlink(missing_ok=True)
            raise
        transaction.on_commit(lambda: document_enqueue(document_id=document.pk))
    return document


def _filename(field: str, name: str) -> str:
    try:
        return clean_filename(name)
    except UnreadableDocument as exc:
        raise InvalidInput(field, f"{exc}; give the file a name.") from None


def _check_budget(*, user: User, size: int) -> None:
    used = Document.objects.filter(owner=user).aggregate(total=Sum("size_bytes"))["total"] or 0
    budget = settings.DOCUMENT_STORAGE_BYTES_PER_USER
    if used + size > budget:
        raise QuotaExceeded(
            f"Your documents use {_mb(used)} of your {_mb(budget)}; this one ({_mb(size)}) does not fit. "
            "Delete a document to make room."
        )


def document_enqueue(*, document_id: int) -> bool:
    """Publish the reading job; False (logged) if the broker cannot take it: the sweeper tries again.

    By the task's name (chat.tasks.ingest_document), so this service does not import
    the tasks module, which imports it."""
    try:
        current_app.send_task(INGEST_TASK, args=[document_id], queue=settings.DOCUMENT_QUEUE, retry=False)
    except (redis.RedisError, BrokerError, OSError) as exc:
        logger.warning("document %s: cannot queue its reading (%s); the sweeper will retry", document_id, exc)
        return False
    return True


def progress_event(document: Document) -> dict[str, object]:
    return {
        "type": "document.progress",
        "document_id": document.pk,
        "name": document.name,
        "status": document.status,
        "progress": document.progress,
        "error": document.error,
    }


def _announce(document_id: int) -> None:
    """Tell the pages of the conversations the document is attached to where its reading stands."""
    document = Document.objects.filter(pk=document_id).first()
    if document is None:
        return
    event = progress_event(document)
    for conversation_id in Conversation.objects.filter(documents=document).values_list("pk", flat=True):
        send_event(conversation_id, event)


def _claim(*, document_id: int, worker: str) -> bool:
    """PROCESSING and unclaimed -> claimed by `worker`; False if another job has it or it is done."""
    claimed = Document.objects.filter(pk=document_id, status=Document.Status.PROCESSING, worker="").update(
        ingest_started_at=timezone.now(), worker=worker, progress=5
    )
    if claimed != 1:
        logger.info("document %s already claimed, finished or deleted; skipping", document_id)
    return claimed == 1


def _fail(*, document_id: int, error: str) -> int:
    failed = Document.objects.filter(pk=document_id, status=Document.Status.PROCESSING).update(
        status=Document.Status.FAILED, error=error, progress=100
    )
    if failed:
        _announce(document_id)
    return failed


def _progress(document_id: int, percent: int) -> None:
    if Document.objects.filter(pk=document_id, status=Document.Status.PROCESSING).update(progress=percent):
        _announce(document_id)


def document_ingest(*, document_id: int, worker: str) -> None:
    """Read a processing document into chunks; ready, or failed with the reason. Safe to run twice."""
    if not worker:
        raise ValueError("worker: the claiming worker's id is required")
    if not _claim(document_id=document_id, worker=worker):
        return
    _announce(document_id)
    document = Document.objects.get(pk=document_id)
    try:
        data = file_path(document).read_bytes()
    except FileNotFoundError:
        _fail(document_id=document_id, error="The stored file is missing. Upload it again.")
        return
    try:
        parsed = parse_isolated(data, document.name, parse_limits())
    except UnreadableDocument as exc:
        _fail(document_id=document_id, error=str(exc))
        return
    chunks = chunk(parsed)
    with transaction.atomic():
        # Locked and re-read: a document deleted meanwhile gets no chunks.
        if not Document.objects.select_for_update().filter(pk=document_id, worker=worker).exists():
            return
        DocumentChunk.objects.filter(document_id=document_id).delete()
        DocumentChunk.objects.bulk_create(
            DocumentChunk(
                document_id=document_id,
                ordinal=c.ordinal,
                text=c.text,
                page=c.page,
                heading=c.heading[:HEADING_CHARS],
            )
            for c in chunks
        )
    _progress(document_id, 60)
    # Still processing, so no reply searches it yet: a worker that dies here leaves a
    # document the sweeper reads again, never a half-indexed one that looks ready.
    try:
        dense.index_document(
            document_id=document_id, progress=lambda percent: _progress(document_id, percent)
        )
    except EmbeddingError as exc:
        logger.warning("document %s: not embedded (%s); it is searched by its words only", document_id, exc)
    ready = Document.objects.filter(pk=document_id, worker=worker, status=Document.Status.PROCESSING).update(
        status=Document.Status.READY,
        page_count=parsed.page_count,
        progress=100,
        error="",
        indexed_at=timezone.now(),
    )
    if ready:
        _announce(document_id)


def document_list(*, user: User) -> QuerySet[Document]:
    """The user's documents, newest first (a read, kept beside the writes it pairs with)."""
    return Document.objects.filter(owner=user)


def document_get(*, user: User, document_id: int) -> Document:
    """One of the user's documents; Document.DoesNotExist for anyone else's."""
    return Document.objects.get(pk=document_id, owner=user)


def document_rename(*, user: User, document_id: int, name: str) -> Document:
    """Give one of `user`'s documents a new name (checked as an upload's is); its kind stays."""
    document = Document.objects.get(pk=document_id, owner=user)
    document.name = _filename("name", name)
    document.save(update_fields=["name"])
    return document


def documents_owned(*, user: User, ids: Sequence[int]) -> list[Document]:
    """The user's documents with these ids, in that order; Document.DoesNotExist naming the first
    that is not one of theirs (or InvalidInput when `ids` is not a list of ids)."""
    if not isinstance(ids, list | tuple) or any(type(i) is not int for i in ids):
        raise InvalidInput("documents", "must be a list of your documents' ids (GET /api/v1/documents).")
    wanted = list(dict.fromkeys(ids))
    if len(wanted) > settings.DOCUMENTS_PER_CONVERSATION:
        raise InvalidInput(
            "documents", f"at most {settings.DOCUMENTS_PER_CONVERSATION} documents go with one conversation."
        )
    found = Document.objects.filter(owner=user).in_bulk([i for i in wanted if 0 < i <= MAX_ID])
    for document_id in wanted:
        if document_id not in found:
            raise Document.DoesNotExist(
                f"Document {document_id} not found: it is not one of your documents (GET /api/v1/documents)."
            )
    return [found[i] for i in wanted]


def documents_attach(*, conversation: Conversation, documents: list[Document]) -> None:
    """Attach the owner's documents to a conversation, within DOCUMENTS_PER_CONVERSATION.

    Call it inside a transaction: over the limit, InvalidInput is raised after the
    rows were added, and the caller's rollback takes them back."""
    if any(document.owner_id != conversation.owner_id for document in documents):
        raise ValueError("a conversation gets only its owner's documents")
    conversation.documents.add(*documents)
    if (count := conversation.documents.count()) > settings.DOCUMENTS_PER_CONVERSATION:
        raise InvalidInput(
            "documents",
            f"this conversation would have {count} documents; at most "
            f"{settings.DOCUMENTS_PER_CONVERSATION} go with one. Detach some first.",
        )


def documents_detach(*, conversation: Conversation, document_id: int) -> None:
    """Detach a document from a conversation; Document.DoesNotExist if it is not attached."""
    document = conversation.documents.get(pk=document_id)
    conversation.documents.remove(document)


def document_delete(*, user: User, document_id: int) -> None:
    """Delete one of `user`'s documents with its chunks and file; DoesNotExist if it is not theirs."""
    document = Document.objects.get(pk=document_id, owner=user)
    path = file_path(document)
    with transaction.atomic():
        document.delete()  # the chunks cascade
        transaction.on_commit(lambda: path.unlink(missing_ok=True))


def documents_remove_files(*, user: User) -> None:
    """Remove every stored file of `user` once the deletion commits (account deletion cascades the rows)."""
    paths = [
        Path(settings.DOCUMENT_DIR) / p
        for p in Document.objects.filter(owner=user).values_list("path", flat=True)
    ]

    def remove() -> None:
        for path in paths:
            path.unlink(missing_ok=True)
        with suppress(OSError):
            (Path(settings.DOCUMENT_DIR) / str(user.pk)).rmdir()

    transaction.on_commit(remove)


def sweep_stale_documents() -> int:
    """Queue again, once, documents processing past DOCUMENT_INGEST_STALE_S; fail them after that.

    A claimed document's worker may have died mid-read, or its job may never
    have reached the broker. Returns how many were handled.
    """
    limit = settings.DOCUMENT_INGEST_STALE_S
    cutoff = timezone.now() - timedelta(seconds=limit)
    # Never claimed and older than the bound, or claimed (or requeued) that long ago.
    stale = Document.objects.filter(status=Document.Status.PROCESSING, created__lt=cutoff).exclude(
        ingest_started_at__gte=cutoff
    )
    handled = 0
    for document_id, requeues in list(stale.values_list("pk", "requeues")):
        if requeues >= MAX_REQUEUES:
            handled += _fail(
                document_id=document_id,
                error=f"Reading this document did not finish within {limit:g} s, twice. "
                "Delete it and upload it again.",
            )
            continue
        # Released for a new claim, its clock restarted so this pass's job has the full bound.
        released = Document.objects.filter(
            pk=document_id, status=Document.Status.PROCESSING, requeues=requeues
        ).update(ingest_started_at=timezone.now(), worker="", requeues=requeues + 1, progress=0)
        if released:
            document_enqueue(document_id=document_id)
            handled += 1
    return handled
