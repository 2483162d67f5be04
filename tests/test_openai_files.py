"""`/v1/files` and file content parts in chat completions, through the official `openai` client.

In-process: the SDK talks to the app's own WSGI handler over httpx (no
socket, no worker), so everything decided before a reply runs is seen as a
client sees it. The reply itself, citing the file, runs on the real stack
(tests/test_chat_documents.py).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client
from openai import OpenAI

from chat.models import Conversation, Document, Message
from chat.services import accounts, documents
from inference import registry
from tests.test_document_parsing import make_pdf

pytestmark = pytest.mark.django_db(transaction=True)

NOTES = b"# Llamas\n\nLlamas hum when they are curious.\n"


@pytest.fixture(autouse=True)
def document_dir(settings: Any, tmp_path: Path) -> Path:
    settings.DOCUMENT_DIR = tmp_path / "documents"
    return settings.DOCUMENT_DIR


@pytest.fixture(autouse=True)
def reading_queued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Stands in for the documents queue's broker: records the ids queued for reading."""
    ids: list[int] = []

    def publish(*, document_id: int) -> bool:
        ids.append(document_id)
        return True

    monkeypatch.setattr(documents, "document_enqueue", publish)
    return ids


@pytest.fixture
def no_worker(settings: Any, redis_url: str) -> None:
    """A live broker with no worker: a submitted reply is refused with 503 after it is stored."""
    settings.REDIS_URL = redis_url
    settings.MODEL_REGISTRY = registry.single("/models/tiny.gguf")


def sdk_for(user: Any) -> Iterator[OpenAI]:
    key = accounts.api_key_create(user=user, name="sdk")[1]
    transport = httpx.WSGITransport(app=WSGIHandler())
    with httpx.Client(transport=transport, base_url="http://testserver") as http:
        yield OpenAI(base_url="http://testserver/v1", api_key=key, max_retries=0, http_client=http)


@pytest.fixture
def sdk(owner: Any) -> Iterator[OpenAI]:
    yield from sdk_for(owner)


@pytest.fixture
def their_sdk(other_user: Any) -> Iterator[OpenAI]:
    yield from sdk_for(other_user)


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# --- /v1/files ---------------------------------------------------------------------


def test_a_file_is_uploaded_listed_read_and_deleted(sdk: OpenAI, owner: Any, document_dir: Path) -> None:
    created = sdk.files.create(file=("notes.md", NOTES), purpose="user_data")
    document = Document.objects.get(owner=owner)
    assert created.id == f"file-{document.pk}"
    assert (created.object, created.filename, created.bytes, created.purpose) == (
        "file",
        "notes.md",
        len(NOTES),
        "user_data",
    )
    assert created.status == "uploaded" and created.status_details is None  # read in the background
    assert created.created_at == int(document.created.timestamp())

    Document.objects.filter(pk=document.pk).update(status=Document.Status.READY, progress=100)
    assert sdk.files.retrieve(created.id).status == "processed"
    assert [f.id for f in sdk.files.list()] == [created.id]
    assert sdk.files.content(created.id).content == NOTES

    deleted = sdk.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    assert not Document.objects.exists()
    assert not [p for p in document_dir.rglob("*") if p.is_file()]
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(created.id)


def test_a_failed_file_says_why(sdk: OpenAI) -> None:
    created = sdk.files.create(file=("notes.md", NOTES), purpose="assistants")  # another name for user_data
    assert created.purpose == "user_data"
    Document.objects.update(status=Document.Status.FAILED, error="The PDF is encrypted.")
    failed = sdk.files.retrieve(created.id)
    assert (failed.status, failed.status_details) == ("error", "The PDF is encrypted.")


def test_the_list_pages_with_a_cursor(sdk: OpenAI) -> None:
    ids = [
        sdk.files.create(file=(f"n{i}.md", NOTES + bytes([65 + i])), purpose="user_data").id for i in range(3)
    ]
    first = sdk.files.list(limit=2)
    assert [f.id for f in first.data] == ids[::-1][:2] and first.has_more
    assert [f.id for f in sdk.files.list(limit=2)] == ids[::-1]  # auto-paging over both pages
    assert [f.id for f in sdk.files.list(order="asc", after=ids[0])] == ids[1:]
    assert list(sdk.files.list(purpose="batch")) == []  # no file here has another purpose
    with pytest.raises(openai.BadRequestError, match="limit: must be 1 to 10000"):
        sdk.files.list(limit=0)


@pytest.mark.parametrize(
    ("upload", "param", "fragment"),
    [
        ({"purpose": "fine-tune"}, "purpose", "purpose: must be user_data or assistants, got 'fine-tune'"),
        ({"purpose": ""}, "purpose", "purpose: must be user_data or assistants."),
        ({"name": "tool.exe"}, "file", "file: "),
        ({"name": "..."}, "file", "file name is empty"),
        ({"data": b""}, "file", "file: the file is empty"),
    ],
)
def test_a_bad_upload_is_a_400_naming_the_field(
    sdk: OpenAI, upload: dict[str, Any], param: str, fragment: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.files.create(
            file=(upload.get("name", "notes.md"), upload.get("data", NOTES)),
            purpose=upload.get("purpose", "user_data"),
        )
    error = error_of(raised.value)
    assert error["param"] == param and fragment in error["message"], error
    assert error["type"] == "invalid_request_error"
    assert not Document.objects.exists()


def test_an_upload_that_is_not_multipart_or_brings_more_fields_is_a_400(owner: Any, owner_key: str) -> None:
    client = Client(headers={"Authorization": f"Bearer {owner_key}"})
    response = client.post("/v1/files", {"purpose": "user_data"}, content_type="application/json")
    assert response.status_code == 400 and "multipart/form-data" in response.json()["error"]["message"]
    response = client.post("/v1/files", {"purpose": "user_data"})
    assert response.status_code == 400
    assert (
        response.json()["error"]["message"]
        == "file: send exactly one file, as the multipart form field `file`."
    )
    response = client.post(
        "/v1/files", {"purpose": "user_data", "file": ("x.md", NOTES), "expires_after[seconds]": "3600"}
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "expires_after[seconds]"
    assert response.json()["error"]["code"] == "unsupported_parameter"
    assert not Document.objects.exists()


def test_a_file_over_the_size_limit_or_the_budget_is_a_413(sdk: OpenAI, settings: Any) -> None:
    settings.DOCUMENT_MAX_BYTES = 10
    with pytest.raises(openai.APIStatusError) as raised:
        sdk.files.create(file=("notes.md", NOTES), purpose="user_data")
    assert raised.value.status_code == 413
    error = error_of(raised.value)
    assert error["code"] == "file_too_large" and error["param"] == "file"
    assert error["message"].startswith("file: notes.md is over")

    settings.DOCUMENT_MAX_BYTES = 10_000
    settings.DOCUMENT_STORAGE_BYTES_PER_USER = len(NOTES) + 5
    sdk.files.create(file=("notes.md", NOTES), purpose="user_data")
    with pytest.raises(openai.APIStatusError) as raised:
        sdk.files.create(file=("more.md", NOTES), purpose="user_data")
    assert raised.value.status_code == 413
    error = error_of(raised.value)
    assert error["code"] == "quota_exceeded" and "Delete a document to make room" in error["message"]
    assert Document.objects.count() == 1


def test_another_users_file_is_not_found_everywhere(sdk: OpenAI, their_sdk: OpenAI) -> None:
    theirs = their_sdk.files.create(file=("secret.md", b"# Their plans\n"), purpose="user_data")
    for call in (sdk.files.retrieve, sdk.files.delete, sdk.files.content):
        with pytest.raises(openai.NotFoundError) as raised:
            call(theirs.id)
        error = error_of(raised.value)
        assert error["code"] == "file_not_found" and f"no such file: '{theirs.id}'" in error["message"]
    assert list(sdk.files.list()) == []
    assert their_sdk.files.retrieve(theirs.id).filename == "secret.md"  # untouched


@pytest.mark.parametrize("bad", ["file-abc", "12", "file-0", "file-99999999999999999999", "file-1.5"])
def test_a_malformed_file_id_is_not_found_saying_what_ids_look_like(sdk: OpenAI, bad: str) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.files.retrieve(bad)
    assert "ids look like file-12" in error_of(raised.value)["message"]


# --- File parts in chat completions ---------------------------------------------------


def ask_about(sdk: OpenAI, *parts: dict[str, Any], **fields: Any) -> Any:
    return sdk.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": [{"type": "text", "text": "What do llamas do?"}, *parts]}],
        **fields,
    )


def file_ref(file_id: str) -> dict[str, Any]:
    return {"type": "file", "file": {"file_id": file_id}}


def test_a_file_id_part_attaches_the_document_to_the_exchange(
    sdk: OpenAI, owner: Any, no_worker: None
) -> None:
    uploaded = sdk.files.create(file=("notes.md", NOTES), purpose="user_data")
    Document.objects.update(status=Document.Status.READY)  # read: the reply is queued at once
    with pytest.raises(openai.InternalServerError) as raised:  # 503: no worker in this test
        ask_about(sdk, file_ref(uploaded.id))
    assert raised.value.status_code == 503
    conversation = Conversation.objects.get(owner=owner)
    assert [f"file-{d.pk}" for d in conversation.documents.all()] == [uploaded.id]
    # The text parts are the question; the file is not part of it.
    assert conversation.messages.get(role="user").content == "What do llamas do?"


def test_inline_file_data_becomes_a_document_once(sdk: OpenAI, owner: Any, no_worker: None) -> None:
    pdf = make_pdf(["Alpacas are smaller than llamas."])
    inline = {
        "type": "file",
        "file": {
            "filename": "alpacas.pdf",
            "file_data": "data:application/pdf;base64," + base64.b64encode(pdf).decode(),
        },
    }
    for _ in range(2):  # clients send the whole exchange, files included, every turn
        with pytest.raises(openai.InternalServerError):
            ask_about(sdk, inline)
    document = Document.objects.get(owner=owner)
    assert (document.name, document.size_bytes, document.kind) == ("alpacas.pdf", len(pdf), "pdf")
    assert Conversation.objects.count() == 2
    assert all(list(c.documents.all()) == [document] for c in Conversation.objects.all())


def test_a_file_part_with_no_filename_is_named_from_its_media_type(
    sdk: OpenAI, owner: Any, no_worker: None
) -> None:
    part = {
        "type": "file",
        "file": {"file_data": "data:text/markdown;base64," + base64.b64encode(NOTES).decode()},
    }
    with pytest.raises(openai.InternalServerError):
        ask_about(sdk, part)
    assert Document.objects.get(owner=owner).name == "file.md"


def test_another_users_file_in_a_message_is_404_and_nothing_is_kept(
    sdk: OpenAI, their_sdk: OpenAI, owner: Any, no_worker: None
) -> None:
    theirs = their_sdk.files.create(file=("secret.md", b"# Their plans\n"), purpose="user_data")
    inline = {"type": "file", "file": {"filename": "mine.md", "file_data": base64.b64encode(NOTES).decode()}}
    with pytest.raises(openai.NotFoundError) as raised:
        ask_about(sdk, inline, file_ref(theirs.id))
    error = error_of(raised.value)
    assert error["param"] == "messages[0].content[2].file.file_id" and error["code"] == "file_not_found"
    assert f"no such file: '{theirs.id}'" in error["message"]
    assert not Conversation.objects.filter(owner=owner).exists()
    assert not Document.objects.filter(owner=owner).exists()  # the inline file went with the refusal
    assert not Document.objects.get().conversations.exists()


def test_store_false_takes_the_inline_file_with_the_exchange(
    sdk: OpenAI, owner: Any, no_worker: None
) -> None:
    inline = {"type": "file", "file": {"filename": "mine.md", "file_data": base64.b64encode(NOTES).decode()}}
    kept = sdk.files.create(file=("kept.md", b"# Kept\n"), purpose="user_data")
    Document.objects.update(status=Document.Status.READY)
    with pytest.raises(openai.InternalServerError):
        ask_about(sdk, inline, file_ref(kept.id), store=False)
    assert not Conversation.objects.exists() and not Message.objects.exists()
    assert [d.name for d in Document.objects.all()] == ["kept.md"]  # an uploaded file stays


@pytest.mark.parametrize(
    ("content", "param", "fragment"),
    [
        (
            [{"type": "file", "file": {"file_id": "abc"}}],
            "messages[0].content[0].file.file_id",
            "like file-12",
        ),
        ([{"type": "file", "file": {}}], "messages[0].content[0].file", 'must be {"file_id"'),
        (
            [{"type": "file", "file": {"file_id": "file-1", "file_data": "eA=="}}],
            "messages[0].content[0].file",
            "send one of file_id and file_data",
        ),
        (
            [{"type": "file", "file": {"file_data": "not base64!", "filename": "a.md"}}],
            "messages[0].content[0].file.file_data",
            "is not valid base64",
        ),
        (
            [{"type": "file", "file": {"file_data": "eA=="}}],
            "messages[0].content[0].file.filename",
            "needed with file_data",
        ),
        (
            [{"type": "file", "file": {"file_id": "file-1", "detail": "high"}}],
            "messages[0].content[0].file.detail",
            "Unrecognized request argument",
        ),
        (
            [{"type": "file", "file": {"file_id": "file-1"}, "cache": 1}],
            "messages[0].content[0].cache",
            "Unrecognized request argument",
        ),
        ([{"type": "file", "file": {"file_id": "file-1"}}], "messages[0].content", "needs a text part too"),
        (
            [{"type": "image_url", "image_url": {"url": "x"}}],
            "messages[0].content[0]",
            "content parts are supported",
        ),
    ],
)
def test_a_bad_file_part_is_a_400_naming_it(
    client: Client, owner_key: str, content: Any, param: str, fragment: str
) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}]}
    response = client.post(
        "/v1/chat/completions",
        json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {owner_key}"},
    )
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["param"] == param and fragment in error["message"], error
    assert not Conversation.objects.exists() and not Document.objects.exists()


def test_only_a_users_message_brings_files(client: Client, owner_key: str) -> None:
    body = {
        "model": "tiny",
        "messages": [
            {"role": "system", "content": [{"type": "file", "file": {"file_id": "file-1"}}]},
            {"role": "user", "content": "Hi"},
        ],
    }
    response = client.post(
        "/v1/chat/completions",
        json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {owner_key}"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content[0]"


def test_a_refused_inline_file_takes_the_ones_before_it_along(
    sdk: OpenAI, owner: Any, no_worker: None, document_dir: Path
) -> None:
    good = {"type": "file", "file": {"filename": "a.md", "file_data": base64.b64encode(NOTES).decode()}}
    bad = {"type": "file", "file": {"filename": "b.exe", "file_data": base64.b64encode(b"MZ").decode()}}
    with pytest.raises(openai.BadRequestError) as raised:
        ask_about(sdk, good, bad)
    assert error_of(raised.value)["param"] == "messages[0].content[2].file.file_data"
    assert not Document.objects.exists() and not Conversation.objects.exists()
    assert not [p for p in document_dir.rglob("*") if p.is_file()]


def test_a_file_may_come_in_its_own_message_before_the_question(
    sdk: OpenAI, owner: Any, no_worker: None
) -> None:
    uploaded = sdk.files.create(file=("notes.md", NOTES), purpose="user_data")
    Document.objects.update(status=Document.Status.READY)
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(
            model="tiny",
            messages=[
                {"role": "user", "content": [file_ref(uploaded.id)]},
                {"role": "user", "content": "What do llamas do?"},
            ],
        )
    conversation = Conversation.objects.get(owner=owner)
    assert conversation.messages.get(role="user").content == "What do llamas do?"
    assert conversation.documents.count() == 1


def test_more_files_than_a_conversation_takes_is_a_400(sdk: OpenAI, settings: Any, no_worker: None) -> None:
    settings.DOCUMENTS_PER_CONVERSATION = 1
    ids = [
        sdk.files.create(file=(f"n{i}.md", NOTES + bytes([65 + i])), purpose="user_data").id for i in range(2)
    ]
    with pytest.raises(openai.BadRequestError) as raised:
        ask_about(sdk, *(file_ref(i) for i in ids))
    error = error_of(raised.value)
    assert error["param"] == "messages" and "at most 1 documents go with one conversation" in error["message"]
    assert not Conversation.objects.exists()
