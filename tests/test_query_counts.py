"""The queries behind one page load and one message stay flat as a user's history grows.

Each measurement runs twice, on a small history and a large one (2 and 50
messages in the conversation, 2 and 50 conversations in the sidebar), and the
counts must be equal: a query per message or per conversation (an N+1) shows
up as a difference. The counts themselves are pinned too, so a new query on
the hot path is a decision someone writes down here, not an accident.
On an external PostgreSQL each query is a round trip (open-webui #10807: 60-100
per reload), so these are the numbers a replica pays per page.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from chat.consumers import ConversationConsumer
from chat.models import Conversation
from chat.services import conversations, feedback, folders, sharing
from tests.conftest import exchange, finish, submit

pytestmark = pytest.mark.django_db

SMALL, LARGE = 2, 50

# The page (GET /c/<id>/): the session and its user, the conversation, the
# sidebar's pinned group and page, the branch (its tree, its messages), the
# profile, presets, group policies, the folders and their conversations, the
# share link. Some are asked twice (the profile, presets, policies): flat, and
# cheaper to leave than to thread through every caller. The socket's snapshot
# then carries the branch again, with documents, alternatives and tool steps.
PAGE_QUERIES = 17
SNAPSHOT_QUERIES = 8
# One message sent (reply_submit, as the socket and /chat call it, with the
# broker stood in): the lost-reply check, the profile lock and rate token, the
# busy, concurrency and quota checks, the branch, the question and its
# placeholder, the conversation's leaf, two savepoints, the queued mark.
SEND_QUERIES = 28


def history(owner: Any, *, conversations_count: int, messages_count: int) -> Conversation:
    """`conversations_count` conversations, some filed, pinned and shared, the last with
    `messages_count` messages (rated replies, one regenerated), as a user's history looks."""
    folder = folders.folder_create(user=owner, name="Work")
    made = []
    for index in range(conversations_count):
        conversation = conversations.conversation_create(user=owner, title=f"Chat {index}")
        if index % 3 == 0:
            folders.conversation_move(user=owner, conversation_id=conversation.pk, folder_id=folder.pk)
        if index % 5 == 0:
            conversations.conversation_update(user=owner, conversation_id=conversation.pk, pinned=True)
        exchange(conversation, f"Question {index}", f"Answer {index}")
        made.append(conversation)
    shown = made[-1]
    for turn in range(messages_count // 2 - 1):
        _, reply = exchange(shown, f"Follow-up {turn}", f"More {turn}")
        feedback.feedback_set(user=owner, message_id=reply.pk, rating="up" if turn % 2 else "down")
    sharing.share_save(user=owner, conversation_id=shown.pk)
    return shown


def count(action: Any) -> int:
    with CaptureQueriesContext(connection) as queries:
        action()
    return len(queries.captured_queries)


def page_queries(owner: Any, conversation: Conversation) -> int:
    client = Client()
    client.force_login(owner)
    client.get(f"/c/{conversation.pk}/")  # the first request warms what a process keeps (content types)

    def load() -> None:
        response = client.get(f"/c/{conversation.pk}/")
        assert response.status_code == 200
        assert conversation.title in response.content.decode()

    return count(load)


def snapshot_queries(owner: Any, conversation: Conversation) -> int:
    consumer = ConversationConsumer()
    consumer.user = owner
    consumer.conversation_id = conversation.pk
    found: dict[str, Any] = {}

    def snapshot() -> None:
        found.update(consumer._snapshot())

    queries = count(snapshot)
    stored = conversation.messages.count()
    assert len(found["messages"]) == stored  # every message of the branch, none lost to a limit
    return queries


@pytest.mark.parametrize("measure", [page_queries, snapshot_queries], ids=["page", "snapshot"])
def test_a_page_load_costs_the_same_queries_with_2_or_50_messages_and_conversations(
    measure: Any, django_user_model: Any
) -> None:
    counts = {}
    for size in (SMALL, LARGE):
        owner = django_user_model.objects.create_user(f"user{size}", password="a long passphrase")
        shown = history(owner, conversations_count=size, messages_count=size)
        counts[size] = measure(owner, shown)
    expected = PAGE_QUERIES if measure is page_queries else SNAPSHOT_QUERIES
    assert counts == {SMALL: expected, LARGE: expected}


def test_one_message_costs_the_same_queries_with_2_or_50_messages_before_it(
    django_user_model: Any, queued: list[int]
) -> None:
    counts = {}
    for size in (SMALL, LARGE):
        owner = django_user_model.objects.create_user(f"user{size}", password="a long passphrase")
        shown = history(owner, conversations_count=size, messages_count=size)
        counts[size] = count(lambda: submit(owner, "One more question", conversation_id=shown.pk))  # noqa: B023
    assert len(queued) == 2  # each was stored and handed to the broker
    assert counts == {SMALL: SEND_QUERIES, LARGE: SEND_QUERIES}


def test_the_counts_are_of_the_owners_data_only(owner: Any, other_user: Any) -> None:
    """A large history of someone else's changes nothing of what the owner's page costs."""
    mine = history(owner, conversations_count=SMALL, messages_count=SMALL)
    alone = page_queries(owner, mine)
    history(other_user, conversations_count=LARGE, messages_count=LARGE)
    body = _page(owner, mine)
    assert page_queries(owner, mine) == alone
    assert "Chat 49" not in body  # the other user's conversations are not in the sidebar


def _page(user: Any, conversation: Conversation) -> str:
    client = Client()
    client.force_login(user)
    return client.get(f"/c/{conversation.pk}/").content.decode()


def test_a_finished_reply_lets_the_next_message_in(owner: Any, queued: list[int]) -> None:
    """The measured send path is the real one: a second send waits for the first reply."""
    shown = history(owner, conversations_count=SMALL, messages_count=SMALL)
    first = submit(owner, "One more question", conversation_id=shown.pk)
    finish(first.reply)
    submit(owner, "And another", conversation_id=shown.pk)
    assert len(queued) == 2
