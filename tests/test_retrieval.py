"""Chatting with documents: lexical search, the passages a reply is given, citations, waiting for a file."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from chat.documents.ranking import Hit, fuse
from chat.documents.retrieval import INSTRUCTIONS
from chat.documents.search import lexical_search
from chat.lifecycle.run import reply_prompt
from chat.lifecycle.status import reply_claim, reply_finish
from chat.lifecycle.submit import Submission, reply_submit
from chat.models import Conversation, Document, Message
from chat.services import documents
from chat.services.accounts import account_delete, api_key_create
from chat.services.limits import InvalidInput
from chat.tasks import ingest_document
from inference import presence, registry
from inference.types import Completion
from tests.conftest import captured_events

pytestmark = pytest.mark.django_db(transaction=True)

HANDBOOK = """# Travel

Employees book trains for trips under four hours. Flights need a manager's approval.

# Expenses

Meal costs are refunded up to 40 euros a day with receipts.

# Equipment

Every new hire gets a laptop and a second screen on their first day.
"""


@pytest.fixture(autouse=True)
def document_dir(settings: Any, tmp_path: Path) -> Path:
    settings.DOCUMENT_DIR = tmp_path / "documents"
    return settings.DOCUMENT_DIR


@pytest.fixture
def unqueued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Stands in for the broker's documents queue: the test runs the job itself."""
    ids: list[int] = []

    def publish(*, document_id: int) -> bool:
        ids.append(document_id)
        return True

    monkeypatch.setattr(documents, "document_enqueue", publish)
    return ids


def read(user: Any, name: str = "handbook.md", text: str = HANDBOOK) -> Document:
    document = documents.document_upload(user=user, name=name, data=text.encode())
    ingest_document(document.pk)  # what the documents worker runs
    document.refresh_from_db()
    assert document.status == Document.Status.READY, document.error
    return document


def chunk_text(hits: list[Hit]) -> list[str]:
    from chat.models import DocumentChunk

    return [DocumentChunk.objects.get(pk=hit.chunk_id).text for hit in hits]


def test_lexical_search_ranks_the_passage_that_answers_first_and_stems_words(
    owner: Any, unqueued: list[int]
) -> None:
    document = read(owner)
    hits = lexical_search(
        user_id=owner.pk, document_ids=[document.pk], query="What meal cost is refunded?", k=3
    )
    assert hits and "40 euros" in chunk_text(hits)[0]
    # "laptops" finds "laptop"; the heading counts too.
    assert (
        "laptop"
        in chunk_text(lexical_search(user_id=owner.pk, document_ids=[document.pk], query="laptops", k=1))[0]
    )
    # Only stop words, or nothing to match: no hits rather than every chunk.
    assert lexical_search(user_id=owner.pk, document_ids=[document.pk], query="what is the", k=3) == []
    assert lexical_search(user_id=owner.pk, document_ids=[document.pk], query='"*) OR (', k=3) == []


def test_search_never_crosses_users_whatever_ids_it_is_given(
    owner: Any, other_user: Any, unqueued: list[int]
) -> None:
    theirs = read(other_user, text="The vault code is 7781. Meal costs are secret.")
    mine = read(owner)
    hits = lexical_search(user_id=owner.pk, document_ids=[theirs.pk, mine.pk], query="vault code meal", k=10)
    assert hits and all("vault" not in text for text in chunk_text(hits))


def test_rank_fusion_rewards_what_both_rankings_agree_on() -> None:
    lexical = [Hit(1, 9.0), Hit(2, 5.0), Hit(3, 1.0)]
    dense = [Hit(2, 0.9), Hit(3, 0.8), Hit(4, 0.1)]
    fused = fuse([lexical, dense], k=3)
    # Second and first beats first alone; ranks count, not the scores' scales.
    assert [hit.chunk_id for hit in fused] == [2, 3, 1]
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61)


def question_for(user: Any, document: Document, content: str) -> Message:
    conversation = Conversation.objects.create(owner=user)
    conversation.documents.add(document)
    question = Message.objects.create(conversation=conversation, role="user", content=content)
    return Message.objects.create(
        conversation=conversation, parent=question, role="assistant", status="pending"
    )


def test_a_small_document_is_given_whole_and_its_passages_become_the_replys_citations(
    owner: Any, unqueued: list[int]
) -> None:
    document = read(owner)
    reply = question_for(owner, document, "How much for meals?")
    turns = reply_prompt(reply)
    prompt = turns[-1].content
    assert prompt.startswith(INSTRUCTIONS) and prompt.endswith("Question: How much for meals?")
    assert "[1] (handbook.md, Travel)" in prompt and "40 euros" in prompt and "laptop" in prompt
    stored = Message.objects.get(pk=reply.pk).citations
    assert [c["heading"] for c in stored] == ["Travel", "Expenses", "Equipment"]
    assert all(c["document_id"] == document.pk and c["score"] is None and not c["cited"] for c in stored)

    # The reply's text names [2]: that one is marked cited when it finishes.
    reply_claim(reply_id=reply.pk, worker="w", model="tiny")
    reply.refresh_from_db()
    completion = Completion("Up to 40 euros a day [2].", 5, 9, "stop", 0)
    reply_finish(reply=reply, completion=completion, first_token_at=None, time_limit_s=None)
    assert [c["cited"] for c in Message.objects.get(pk=reply.pk).citations] == [False, True, False]


def test_past_the_budget_only_the_best_passages_are_given(
    owner: Any, unqueued: list[int], settings: Any
) -> None:
    settings.DOCUMENT_CONTEXT_TOKENS = 30  # 120 characters: one section at most
    document = read(owner)
    reply = question_for(owner, document, "Who approves flights?")
    prompt = reply_prompt(reply)[-1].content
    assert "manager's approval" in prompt and "40 euros" not in prompt and "laptop" not in prompt
    (citation,) = Message.objects.get(pk=reply.pk).citations
    assert citation["n"] == 1 and citation["heading"] == "Travel" and citation["score"] > 0


def test_a_failed_or_detached_document_is_not_searched(owner: Any, unqueued: list[int]) -> None:
    document = read(owner)
    reply = question_for(owner, document, "meals?")
    Document.objects.filter(pk=document.pk).update(status=Document.Status.FAILED)
    assert reply_prompt(reply)[-1].content == "meals?"
    assert Message.objects.get(pk=reply.pk).citations == []


# --- The submit path --------------------------------------------------------------


@pytest.fixture
def ready_worker(settings: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """A live generation worker's heartbeat, and the jobs published to it (the broker's
    part runs in the stack tests)."""
    from celery import current_app

    settings.REDIS_URL = redis_url
    settings.MODEL_REGISTRY = registry.single("/models/tiny.gguf")
    info = presence.WorkerInfo(
        id="ready/1/a",
        name="ready",
        model="tiny",
        device="cpu",
        since=time.time(),
        state="ready",
        progress=100,
    )
    heartbeat = presence.Heartbeat(redis_url, info, ttl_s=30)
    heartbeat.start()
    published: list[Any] = []
    monkeypatch.setattr(current_app, "send_task", lambda name, args, queue, retry: published.append(args[0]))
    yield published
    heartbeat.stop()


def post(user: Any, path: str, body: dict[str, Any]) -> Any:
    client = Client(headers={"Authorization": f"Bearer {api_key_create(user=user, name='t')[1]}"})
    return client.post(path, json.dumps(body), content_type="application/json")


def test_a_question_waits_for_its_document_then_is_queued_once_it_is_read(
    owner: Any, unqueued: list[int], ready_worker: list[Any]
) -> None:
    document = documents.document_upload(user=owner, name="handbook.md", data=HANDBOOK.encode())
    conversation = Conversation.objects.create(owner=owner)
    with captured_events(conversation.pk) as events:
        answer = post(
            owner,
            f"/api/v1/conversations/{conversation.pk}/messages",
            {"content": "How much for meals?", "documents": [document.pk]},
        )
    assert answer.status_code == 202, answer.content
    reply = Message.objects.get(pk=answer.json()["reply"]["id"])
    assert reply.status == Message.Status.PENDING and reply.queued_at is None and ready_worker == []
    waiting = next(e for e in events if e["type"] == "reply.waiting")
    assert waiting["documents"] == [{"id": document.pk, "name": "handbook.md", "progress": 0}]

    with captured_events(conversation.pk) as events:
        ingest_document(document.pk)
    progress = [(e["status"], e["progress"]) for e in events if e["type"] == "document.progress"]
    assert progress[0] == ("processing", 5) and progress[-1] == ("ready", 100)
    assert ready_worker == [reply.pk]
    assert Message.objects.get(pk=reply.pk).queued_at is not None


def test_documents_on_a_message_must_be_the_users_own(
    owner: Any, other_user: Any, unqueued: list[int], ready_worker: list[Any]
) -> None:
    theirs = read(other_user)
    conversation = Conversation.objects.create(owner=owner)
    path = f"/api/v1/conversations/{conversation.pk}/messages"
    refused = post(owner, path, {"content": "Tell me their secrets", "documents": [theirs.pk]})
    assert refused.status_code == 404
    assert f"Document {theirs.pk} not found" in refused.json()["detail"]
    assert not Message.objects.filter(conversation=conversation).exists()  # nothing stored
    assert post(owner, path, {"content": "x", "documents": ["report.pdf"]}).status_code == 400
    assert ready_worker == []


def test_a_conversation_holds_a_stated_number_of_documents(
    owner: Any, unqueued: list[int], ready_worker: list[Any], settings: Any
) -> None:
    settings.DOCUMENTS_PER_CONVERSATION = 2
    ids = [read(owner, name=f"{n}.md").pk for n in range(3)]
    conversation = Conversation.objects.create(owner=owner)
    conversation.documents.add(ids[0], ids[1])
    with pytest.raises(InvalidInput, match="would have 3 documents; at most 2"):
        reply_submit(user=owner, submission=Submission("send", "hi", conversation.pk, documents=[ids[2]]))
    assert conversation.documents.count() == 2
    assert not Message.objects.filter(conversation=conversation).exists()


def test_rest_attaches_lists_detaches_and_renames(owner: Any, other_user: Any, unqueued: list[int]) -> None:
    document = read(owner)
    conversation = Conversation.objects.create(owner=owner)
    client = Client(headers={"Authorization": f"Bearer {api_key_create(user=owner, name='t')[1]}"})
    base = f"/api/v1/conversations/{conversation.pk}/documents"
    attached = client.post(base, json.dumps({"document_ids": [document.pk]}), content_type="application/json")
    assert attached.status_code == 200 and [d["id"] for d in attached.json()] == [document.pk]
    assert [d["name"] for d in client.get(base).json()] == ["handbook.md"]

    renamed = client.patch(
        f"/api/v1/documents/{document.pk}",
        json.dumps({"name": "../HR handbook.md"}),
        content_type="application/json",
    )
    assert renamed.status_code == 200 and renamed.json()["name"] == "HR handbook.md"
    assert client.delete(f"{base}/{document.pk}").status_code == 204
    assert client.get(base).json() == [] and Document.objects.filter(pk=document.pk).exists()
    assert client.delete(f"{base}/{document.pk}").status_code == 404

    theirs = read(other_user)
    stranger = client.post(base, json.dumps({"document_ids": [theirs.pk]}), content_type="application/json")
    assert stranger.status_code == 404 and conversation.documents.count() == 0
    their_conversation = Conversation.objects.create(owner=other_user)
    assert client.get(f"/api/v1/conversations/{their_conversation.pk}/documents").status_code == 404
    assert (
        client.patch(
            f"/api/v1/documents/{theirs.pk}", json.dumps({"name": "x.md"}), content_type="application/json"
        ).status_code
        == 404
    )


def test_deleting_a_document_or_the_account_keeps_the_conversation_and_its_citations(
    owner: Any, unqueued: list[int]
) -> None:
    document = read(owner)
    reply = question_for(owner, document, "meals?")
    reply_prompt(reply)
    documents.document_delete(user=owner, document_id=document.pk)
    reply.refresh_from_db()
    assert reply.citations and reply.conversation.documents.count() == 0
    account_delete(user=owner)
    assert not Document.objects.exists()


def test_citations_survive_export_and_import_and_show_in_the_admins_review(
    owner: Any, other_user: Any, unqueued: list[int], admin_client: Client
) -> None:
    from chat import exports
    from chat.services.conversations import conversation_import

    document = read(owner)
    reply = question_for(owner, document, "How much for meals?")
    reply_prompt(reply)
    reply_claim(reply_id=reply.pk, worker="w", model="tiny")
    reply.refresh_from_db()
    completion = Completion("40 euros a day [2].", 5, 9, "stop", 0)
    reply_finish(reply=reply, completion=completion, first_token_at=None, time_limit_s=None)
    conversation = reply.conversation
    messages = list(conversation.messages.all())

    markdown = exports.conversation_to_markdown(conversation, messages)
    assert "- [2] handbook.md, Expenses (cited): “# Expenses Meal costs are refunded" in markdown

    copy = conversation_import(user=other_user, data=exports.conversation_to_dict(conversation, messages))
    imported = copy.messages.get(role="assistant").citations
    assert [c["cited"] for c in imported] == [False, True, False]
    # The passages stay readable; the ids of the owner's rows do not travel with them.
    assert imported[1]["passage"] == reply.citations[1]["passage"]
    assert all(c["document_id"] is None and c["chunk_id"] is None for c in imported)

    review = admin_client.get(f"/admin/chat/conversation/{conversation.pk}/change/")
    assert review.status_code == 200
    page = review.content.decode()
    assert "<b>[2]</b> handbook.md" in page and "<i>cited</i>" in page and "<i>not cited</i>" in page


def test_an_import_with_broken_citations_is_refused_saying_where(owner: Any) -> None:
    from chat import exports

    data = {
        "format": exports.FORMAT,
        "version": 2,
        "messages": [
            {"id": 1, "parent_id": None, "role": "user", "content": "q"},
            {"id": 2, "parent_id": 1, "role": "assistant", "content": "a", "citations": [{"n": "one"}]},
        ],
    }
    with pytest.raises(exports.InvalidImport, match=r"messages\[1\]\.citations\[0\] needs a number n"):
        exports.parse_import(data)


def test_passages_are_left_out_weakest_first_until_the_prompt_fits_the_models_context(
    owner: Any, unqueued: list[int], tiny_backend: Any
) -> None:
    from inference.prompt import build_prompt

    document = read(owner)  # three sections; the tiny model's context is 256 tokens
    reply = question_for(owner, document, "What meal costs are refunded, with receipts?")
    Message.objects.filter(pk=reply.pk).update(params={"max_new_tokens": 8})
    reply.refresh_from_db()
    turns = reply_prompt(reply, tiny_backend)
    given = Message.objects.get(pk=reply.pk).citations
    assert 1 <= len(given) < 3 and given[0]["heading"] == "Expenses"  # the best one stays
    # What is stored is what the model was given, and it fits.
    assert all(f"[{c['n']}] (" in turns[-1].content for c in given)
    build_prompt(tiny_backend.loaded.tokenizer, turns, context_tokens=256, max_new_tokens=8)


def test_the_passage_index_is_kept_by_the_database_after_every_migration(
    owner: Any, unqueued: list[int]
) -> None:
    """Every later migration leaves the index working: a chunk written now is found, one deleted is not."""
    from django.db import connection

    document = read(owner, text="Gliders soar above the quarry.")
    assert lexical_search(user_id=owner.pk, document_ids=[document.pk], query="gliders", k=1)
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'chat_documentchunk'"
            )
            assert {row[0] for row in cursor.fetchall()} == {
                "chat_documentchunk_fts_insert",
                "chat_documentchunk_fts_delete",
                "chat_documentchunk_fts_update",
            }
    documents.document_delete(user=owner, document_id=document.pk)
    assert lexical_search(user_id=owner.pk, document_ids=[document.pk], query="gliders", k=1) == []


def test_a_citation_opens_in_its_document(owner: Any, other_user: Any, unqueued: list[int]) -> None:
    body = "\n\n".join(f"# Part {n}\n\nParagraph {n} of the manual." for n in range(1, 8))
    document = read(owner, name="manual.md", text=body)
    chunks = list(document.chunks.order_by("ordinal"))
    client = Client(headers={"Authorization": f"Bearer {api_key_create(user=owner, name='t')[1]}"})
    base = f"/api/v1/documents/{document.pk}/passages"

    whole = client.get(base).json()
    assert whole["count"] == len(chunks) == 7 and [p["heading"] for p in whole["items"]][:2] == [
        "Part 1",
        "Part 2",
    ]
    around = client.get(base, {"around": chunks[4].pk, "limit": 3}).json()
    assert [p["id"] for p in around["items"]] == [c.pk for c in chunks[3:6]]  # it in the middle
    assert client.get(base, {"around": chunks[0].pk, "limit": 3}).json()["items"][0]["id"] == chunks[0].pk

    theirs = read(other_user)
    assert client.get(f"/api/v1/documents/{theirs.pk}/passages").status_code == 404
    stranger = theirs.chunks.first()
    assert stranger is not None
    assert client.get(base, {"around": stranger.pk}).status_code == 404
