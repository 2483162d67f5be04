"""`/v1/files`: a user's documents as OpenAI file objects, and the files a completion brings.

Every file is one of the caller's documents (chat.services.documents): an
upload here is the REST API's `POST /api/v1/documents` under OpenAI's names,
with the same size limit (DOCUMENT_MAX_BYTES, 413) and storage budget
(DOCUMENT_STORAGE_BYTES_PER_USER, 413 as there). `file-12` is document 12; an
id that is not the caller's, or not an id at all, is a 404 like one that
does not exist.

SanjAI's documents have one purpose, being read for chat: `user_data` is
taken, and `assistants` as another name for it (both answer `user_data`).
The file's state is OpenAI's older `status`: `uploaded` while it is read,
`processed` once ready, `error` with the reason in `status_details`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, BinaryIO

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import UploadedFile

from chat.models import Document
from chat.openai.protocol import FILE_ID_PREFIX, ApiError, FilePart, file_id_number, invalid
from chat.services import documents, limits

PURPOSES = ("user_data", "assistants")  # the second is taken as the first
STATUSES = {
    Document.Status.PROCESSING: "uploaded",
    Document.Status.READY: "processed",
    Document.Status.FAILED: "error",
}
UPLOAD_FIELDS = ("file", "purpose")
LIST_LIMIT = 10_000  # OpenAI's own most (and default) per page


def file_id(document_id: int) -> str:
    return f"{FILE_ID_PREFIX}{document_id}"


def not_found(value: str, param: str | None = None) -> ApiError:
    return ApiError(
        404,
        f"{param + ': ' if param else ''}no such file: {value!r}. Your files are listed by GET /v1/files "
        "(ids look like file-12).",
        param=param,
        code="file_not_found",
    )


def file_object(document: Document) -> dict[str, Any]:
    """OpenAI's file object, with the reading's progress beside it (clients ignore fields they don't know)."""
    return {
        "id": file_id(document.pk),
        "object": "file",
        "bytes": document.size_bytes,
        "created_at": int(document.created.timestamp()),
        "filename": document.name,
        "purpose": "user_data",
        "status": STATUSES.get(Document.Status(document.status), "uploaded"),
        "status_details": document.error or None,
        "expires_at": None,  # kept until deleted
        "progress": document.progress,  # 0-100 while it is read
    }


def owned(*, user: User, value: str) -> Document:
    """The caller's document a path's file id names; a 404 for anything else."""
    pk = file_id_number(value)
    if pk is None:
        raise not_found(value)
    try:
        return documents.document_get(user=user, document_id=pk)
    except Document.DoesNotExist:
        raise not_found(value) from None


def delete(*, user: User, document: Document) -> None:
    try:
        documents.document_delete(user=user, document_id=document.pk)
    except Document.DoesNotExist:  # deleted meanwhile
        raise not_found(file_id(document.pk)) from None


def content(document: Document) -> BinaryIO:
    """The stored bytes, open for reading; a 404 if they are gone (deleted meanwhile)."""
    try:
        return documents.file_path(document).open("rb")
    except FileNotFoundError:
        raise not_found(file_id(document.pk)) from None


# --- Upload --------------------------------------------------------------------


def upload(*, user: User, fields: dict[str, list[str]], files: dict[str, list[UploadedFile]]) -> Document:
    """POST /v1/files: a multipart `file` with `purpose`, stored as a new document of `user`."""
    unknown = sorted((set(fields) | set(files)) - set(UPLOAD_FIELDS))
    if unknown:
        raise invalid(
            f"Unrecognized request argument supplied: {', '.join(unknown)}. "
            f"SanjAI takes {' and '.join(UPLOAD_FIELDS)}.",
            param=unknown[0],
            code="unsupported_parameter",
        )
    purpose = fields.get("purpose", [""])
    if len(purpose) != 1 or purpose[0] not in PURPOSES:
        given = f", got {purpose[0]!r}" if len(purpose) == 1 and purpose[0] else ""
        raise invalid(f"purpose: must be {' or '.join(PURPOSES)}{given}.", param="purpose")
    sent = files.get("file", [])
    if len(sent) != 1:
        raise invalid(
            "file: send exactly one file, as the multipart form field `file`"
            + (f" (got {len(sent)})." if sent else "."),
            param="file",
        )
    return store(user=user, name=sent[0].name or "", data=_read(sent[0]), param="file")


def _read(file: UploadedFile) -> bytes:
    # One byte over the limit is enough to refuse, and no more is read into memory.
    limit = settings.DOCUMENT_MAX_BYTES
    if file.size is not None and file.size > limit:
        raise ApiError(
            413,
            f"file: {file.name} is over {limit / 1_000_000:g} MB, the most a document may be.",
            param="file",
            code="file_too_large",
        )
    return file.read(limit + 1)


def store(*, user: User, name: str, data: bytes, param: str) -> Document:
    """`document_upload`, its refusals in OpenAI's shape, `param` naming the field that sent it."""
    try:
        return documents.document_upload(user=user, name=name, data=data)
    except documents.DocumentTooLarge as exc:
        raise ApiError(413, _at(param, exc), param=param, code="file_too_large") from None
    except limits.QuotaExceeded as exc:  # the storage budget: 413, as the REST API answers it
        raise ApiError(413, _at(param, exc), param=param, code=exc.code) from None
    except limits.InvalidInput as exc:  # empty, a format not read, a name with nothing left
        raise invalid(_at(param, exc), param=param) from None


def _at(param: str, exc: Exception) -> str:
    """The service's message, led by the request's field instead of its own."""
    message = str(exc)
    return f"{param}: {message.removeprefix('file: ')}"


def page(*, user: User, limit: int, order: str, after: str, purpose: str) -> dict[str, Any]:
    """GET /v1/files: one page of the caller's files, as OpenAI's cursor list."""
    if not 1 <= limit <= LIST_LIMIT:
        raise invalid(f"limit: must be 1 to {LIST_LIMIT}, got {limit}.", param="limit")
    if order not in ("asc", "desc"):
        raise invalid(f"order: must be asc or desc, got {order!r}.", param="order")
    if purpose and purpose not in PURPOSES:
        # Files of another purpose do not exist here: a list of them is empty.
        return {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}
    rows = documents.document_list(user=user).order_by("pk" if order == "asc" else "-pk")
    if after:
        pk = file_id_number(after)
        if pk is None:
            raise invalid(f"after: must be a file id (file-12), got {after!r}.", param="after")
        rows = rows.filter(pk__gt=pk) if order == "asc" else rows.filter(pk__lt=pk)
    found = list(rows[: limit + 1])
    data = [file_object(document) for document in found[:limit]]
    return {
        "object": "list",
        "data": data,
        "has_more": len(found) > limit,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


# --- Files in a completion's messages -------------------------------------------


@dataclass(frozen=True)
class Attached:
    """The documents a completion's file parts name: ids for the submission, and the ones it created."""

    ids: tuple[int, ...]
    created: tuple[int, ...]  # stored from inline file_data by this request


NONE = Attached(ids=(), created=())


def attach(*, user: User, parts: Sequence[FilePart]) -> Attached:
    """The document ids of a completion's file parts; inline files stored as the caller's documents.

    Whether each id is the caller's is the submit path's rule (it raises
    Document.DoesNotExist). Inline bytes equal to one of the caller's
    documents reuse it: clients send the whole exchange, files included, with
    every turn. A refused inline file takes the ones stored before it along.
    """
    ids: list[int] = []
    created: list[int] = []
    try:
        for part in parts:
            pk = file_id_number(part.file_id) if part.file_id else _same_file(user=user, part=part)
            if pk is None:
                pk = store(user=user, name=part.filename, data=part.data, param=part.where).pk
                created.append(pk)
            if pk not in ids:
                ids.append(pk)
    except ApiError:
        forget(user=user, created=created)  # their files too, which a rollback would leave
        raise
    return Attached(ids=tuple(ids), created=tuple(created))


def _same_file(*, user: User, part: FilePart) -> int | None:
    digest = hashlib.sha256(part.data).hexdigest()
    return (
        documents.document_list(user=user)
        .filter(sha256=digest, size_bytes=len(part.data))
        .exclude(status=Document.Status.FAILED)
        .values_list("pk", flat=True)
        .first()
    )


def missing(*, user: User, parts: Sequence[FilePart], ids: Sequence[int]) -> ApiError:
    """The 404 for a submission refused for a document not the caller's, naming the first such file."""
    for pk in ids:
        try:
            documents.document_get(user=user, document_id=pk)
        except Document.DoesNotExist:
            where = next((p.where for p in parts if p.file_id and file_id_number(p.file_id) == pk), None)
            return not_found(file_id(pk), where)
    # Each is the caller's now (one was deleted and the refusal raced it): name the first file.
    first = next((p for p in parts if p.file_id), None)
    return not_found(first.file_id if first else file_id(ids[0]), first.where if first else None)


def forget(*, user: User, created: Sequence[int]) -> None:
    """Delete the documents a request stored from inline data (a refused or unstored exchange)."""
    for pk in created:
        with suppress(Document.DoesNotExist):  # deleted meanwhile
            documents.document_delete(user=user, document_id=pk)
