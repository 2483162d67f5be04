"""Documents: upload over REST, reading in the background, budgets, ownership, deletion, the sweeper."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from chat.lifecycle.sweep import sweep
from chat.models import Document, DocumentChunk
from chat.services import documents
from chat.services.accounts import account_delete, api_key_create
from chat.tasks import ingest_document
from tests.test_document_parsing import make_docx, make_pdf

pytestmark = pytest.mark.django_db(transaction=True)

API = "/api/v1/documents"


@pytest.fixture(autouse=True)
def document_dir(settings: Any, tmp_path: Path) -> Path:
    settings.DOCUMENT_DIR = tmp_path / "documents"
    return settings.DOCUMENT_DIR


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Stands in for the broker: records the document ids queued for reading."""
    ids: list[int] = []

    def publish(*, document_id: int) -> bool:
        ids.append(document_id)
        return True

    monkeypatch.setattr(documents, "document_enqueue", publish)
    return ids


def client_for(user: Any) -> Client:
    return Client(headers={"Authorization": f"Bearer {api_key_create(user=user, name='docs')[1]}"})


def upload(client: Client, name: str, data: bytes) -> Any:
    return client.post(API, {"file": SimpleUploadedFile(name, data)})


def stored_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()] if directory.exists() else []


def test_a_pdf_is_read_into_chunks_with_its_pages(owner: Any, queued: list[int]) -> None:
    response = upload(
        client_for(owner), "Guide.pdf", make_pdf(["First page about llamas.", "Second page on alpacas."])
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "processing" and body["name"] == "Guide.pdf" and body["progress"] == 0
    assert queued == [body["id"]]

    ingest_document(body["id"])  # what the documents worker runs

    shown = client_for(owner).get(f"{API}/{body['id']}").json()
    assert shown["status"] == "ready" and shown["page_count"] == 2 and shown["progress"] == 100
    chunks = list(DocumentChunk.objects.filter(document_id=body["id"]))
    assert [c.page for c in chunks] == [1, 2]
    assert "llamas" in chunks[0].text and "alpacas" in chunks[1].text


def test_a_docx_keeps_its_headings(owner: Any, queued: list[int]) -> None:
    response = upload(client_for(owner), "manual.docx", make_docx())
    assert response.status_code == 201
    ingest_document(response.json()["id"])
    document = Document.objects.get(pk=response.json()["id"])
    assert document.status == Document.Status.READY and document.indexed_at is not None
    assert "Installation" in {c.heading for c in document.chunks.all()}


def test_a_file_whose_extension_lies_fails_with_the_reason(owner: Any, queued: list[int]) -> None:
    response = upload(client_for(owner), "report.pdf", b"MZ\x90\x00 this is an executable, not a PDF")
    assert response.status_code == 201
    ingest_document(response.json()["id"])
    shown = client_for(owner).get(f"{API}/{response.json()['id']}").json()
    assert shown["status"] == "failed" and "PDF" in shown["error"]
    assert not DocumentChunk.objects.exists()


def test_an_unknown_format_is_refused_at_upload(owner: Any, queued: list[int], document_dir: Path) -> None:
    response = upload(client_for(owner), "tool.exe", b"MZ")
    assert response.status_code == 400 and response.json()["detail"].startswith("file:")
    assert not Document.objects.exists() and stored_files(document_dir) == []


def test_a_file_over_the_size_limit_is_refused_and_nothing_stored(
    owner: Any, queued: list[int], settings: Any, document_dir: Path
) -> None:
    settings.DOCUMENT_MAX_BYTES = 1000
    response = upload(client_for(owner), "big.txt", b"x" * 1001)
    assert response.status_code == 413 and "0.001 MB" in response.json()["detail"]
    assert not Document.objects.exists() and stored_files(document_dir) == [] and queued == []


def test_the_storage_budget_is_per_user(
    owner: Any, other_user: Any, queued: list[int], settings: Any
) -> None:
    settings.DOCUMENT_STORAGE_BYTES_PER_USER = 1500
    assert upload(client_for(owner), "a.txt", b"a" * 1000).status_code == 201
    refused = upload(client_for(owner), "b.txt", b"b" * 1000)
    assert refused.status_code == 413 and "Delete a document" in refused.json()["detail"]
    assert Document.objects.filter(owner=owner).count() == 1
    assert upload(client_for(other_user), "b.txt", b"b" * 1000).status_code == 201


def test_another_users_document_is_not_found(owner: Any, other_user: Any, queued: list[int]) -> None:
    document_id = upload(client_for(owner), "notes.md", b"# Secret\n\nplans").json()["id"]
    intruder = client_for(other_user)
    assert intruder.get(f"{API}/{document_id}").status_code == 404
    assert intruder.delete(f"{API}/{document_id}").status_code == 404
    assert intruder.get(API).json() == []
    assert [d["id"] for d in client_for(owner).get(API).json()] == [document_id]


def test_delete_removes_the_file_and_chunks(owner: Any, queued: list[int], document_dir: Path) -> None:
    client = client_for(owner)
    document_id = upload(client, "notes.md", b"# Title\n\nSome text.").json()["id"]
    ingest_document(document_id)
    assert DocumentChunk.objects.filter(document_id=document_id).exists() and stored_files(document_dir)
    assert client.delete(f"{API}/{document_id}").status_code == 204
    assert not Document.objects.exists() and not DocumentChunk.objects.exists()
    assert stored_files(document_dir) == []
    assert client.get(f"{API}/{document_id}").status_code == 404


def test_deleting_the_account_removes_its_files(owner: Any, queued: list[int], document_dir: Path) -> None:
    upload(client_for(owner), "notes.txt", b"hello")
    assert stored_files(document_dir)
    account_delete(user=owner)
    assert stored_files(document_dir) == [] and not Document.objects.exists()


def test_ingesting_twice_is_a_no_op(owner: Any, queued: list[int]) -> None:
    document_id = upload(client_for(owner), "notes.txt", b"one\n\ntwo").json()["id"]
    ingest_document(document_id)
    first = list(DocumentChunk.objects.values_list("pk", flat=True))
    indexed_at = Document.objects.get(pk=document_id).indexed_at
    ingest_document(document_id)  # a redelivered job
    assert list(DocumentChunk.objects.values_list("pk", flat=True)) == first
    assert Document.objects.get(pk=document_id).indexed_at == indexed_at


def test_the_sweeper_requeues_a_stale_document_once_then_fails_it(
    owner: Any, queued: list[int], settings: Any
) -> None:
    document_id = upload(client_for(owner), "notes.txt", b"text").json()["id"]
    # Claimed by a worker that died; older than the bound.
    long_ago = timezone.now() - timedelta(seconds=settings.DOCUMENT_INGEST_STALE_S + 5)
    Document.objects.filter(pk=document_id).update(
        created=long_ago, ingest_started_at=long_ago, worker="gone@host:1"
    )
    sweep()
    assert queued == [document_id, document_id]  # the upload's job, then the sweeper's
    assert Document.objects.get(pk=document_id).status == Document.Status.PROCESSING

    Document.objects.filter(pk=document_id).update(ingest_started_at=long_ago)  # the second job was lost too
    sweep()
    document = Document.objects.get(pk=document_id)
    assert document.status == Document.Status.FAILED and "did not finish" in document.error
    assert queued == [document_id, document_id]


def test_a_requeued_document_is_read_by_the_next_job(owner: Any, queued: list[int], settings: Any) -> None:
    document_id = upload(client_for(owner), "notes.txt", b"text").json()["id"]
    long_ago = timezone.now() - timedelta(seconds=settings.DOCUMENT_INGEST_STALE_S + 5)
    Document.objects.filter(pk=document_id).update(
        created=long_ago, ingest_started_at=long_ago, worker="gone@host:1"
    )
    sweep()
    ingest_document(document_id)
    assert Document.objects.get(pk=document_id).status == Document.Status.READY


def test_an_upload_without_a_file_says_which_field_is_missing(
    client: Any, owner: Any, owner_key: str
) -> None:
    """Found by the schema fuzz: an empty multipart body was a 500."""
    response = client.post(
        "/api/v1/documents",
        data=b"--b--\r\n",
        content_type="multipart/form-data; boundary=b",
        headers={"Authorization": f"Bearer {owner_key}"},
    )
    assert response.status_code == 400 and "file" in response.json()["detail"]
    assert not Document.objects.exists()
