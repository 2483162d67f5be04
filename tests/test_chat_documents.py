"""`POST /chat`'s `documents`: what is decided before a reply runs.

The replies that cite the documents (`citations`, on `/chat` and on `/v1`)
run on the shared real stack, in tests/test_stack.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from chat.models import Conversation, Document, Message
from chat.services import documents

PASSAGE = "Llamas hum softly when they are curious about a visitor."
NOTES = f"# Llamas\n\n{PASSAGE}\n".encode()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(client: Client, body: dict[str, Any], key: str) -> tuple[int, dict[str, Any]]:
    response = client.post("/chat", json.dumps(body), content_type="application/json", headers=bearer(key))
    return response.status_code, response.json()


# --- In-process: POST /chat's `documents`, decided before a job runs ------------------


@pytest.fixture
def stored(monkeypatch: pytest.MonkeyPatch, settings: Any, tmp_path: Path) -> Any:
    """Documents stored under a temporary folder; their reading is not queued (no broker here)."""
    settings.DOCUMENT_DIR = tmp_path / "documents"
    monkeypatch.setattr(documents, "document_enqueue", lambda *, document_id: True)

    def upload(user: Any, name: str = "notes.md", data: bytes = NOTES) -> Document:
        document = documents.document_upload(user=user, name=name, data=data)
        Document.objects.filter(pk=document.pk).update(status=Document.Status.READY)
        return document

    return upload


@pytest.mark.django_db
def test_chat_attaches_the_documents_to_its_conversation(
    client: Client, owner: Any, owner_key: str, stored: Any, settings: Any, redis_url: str
) -> None:
    settings.REDIS_URL = redis_url  # a live broker with no worker: 503 once stored
    document = stored(owner)
    status, body = chat(client, {"message": "Why do llamas hum?", "documents": [document.pk]}, owner_key)
    assert status == 503 and body["success"] is False
    conversation = Conversation.objects.get(pk=body["conversation_id"], owner=owner)
    assert list(conversation.documents.all()) == [document]
    # The next message continues the conversation: the document stays with it.
    chat(client, {"message": "And why else?"}, owner_key)
    assert list(Conversation.objects.get(pk=conversation.pk).documents.all()) == [document]


@pytest.mark.django_db
def test_chat_with_another_users_document_is_404_and_stores_nothing(
    client: Client, owner: Any, other_user: Any, owner_key: str, stored: Any
) -> None:
    theirs = stored(other_user, "secret.md", b"# Their plans\n")
    status, body = chat(client, {"message": "Tell me", "documents": [theirs.pk]}, owner_key)
    assert status == 404 and body["success"] is False
    assert f"Document {theirs.pk} not found" in body["error"]
    assert not Message.objects.exists() and not theirs.conversations.exists()


@pytest.mark.parametrize("documents_field", ["7", [1.5], {"id": 1}, [True]])
@pytest.mark.django_db
def test_chat_documents_must_be_a_list_of_ids(
    client: Client, owner: Any, owner_key: str, documents_field: Any
) -> None:
    status, body = chat(client, {"message": "hi", "documents": documents_field}, owner_key)
    assert status == 400 and body["error"].startswith("documents: must be a list of your documents' ids")
    assert not Message.objects.exists()
