"""Full-text search (chat/search.py, GET /api/v1/search): ranking, snippets, isolation,
the index kept in sync, hostile input. Runs on SQLite (FTS5) and again on PostgreSQL
(make test-postgres), so every assertion here holds on both engines.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from chat import search
from chat.models import Conversation, Message
from chat.services import conversations
from tests.conftest import exchange

pytestmark = pytest.mark.django_db

API = "/api/v1/search"


def found(user: Any, query: str, **page: Any) -> list[int]:
    return [hit.message_id for hit in search.message_search(user=user, query=query, **page).hits]


def get(client: Client, key: str, query: str, **params: Any) -> tuple[int, Any]:
    response = client.get(API, {"q": query, **params}, headers={"Authorization": f"Bearer {key}"})
    return response.status_code, response.json()


@pytest.fixture
def chat(owner: Any) -> Conversation:
    return conversations.conversation_create(user=owner, title="Travel plans")


def test_more_occurrences_rank_higher_and_every_word_must_match(owner: Any, chat: Conversation) -> None:
    once, thrice = exchange(
        chat,
        "Tell me about the museums of Lisbon and which one to visit first this year",
        "Lisbon museums: Lisbon has many; in Lisbon start with the tile museum downtown",
    )
    _, unrelated = exchange(chat, "What about Porto?", "Porto has bridges and wine cellars by the river")
    assert found(owner, "lisbon") == [thrice.pk, once.pk]
    assert found(owner, "lisbon tile") == [thrice.pk]  # every word required
    assert set(found(owner, "porto")) == {unrelated.pk - 1, unrelated.pk}
    assert found(owner, "museum") == [thrice.pk, once.pk]  # stemmed: museums, museum
    assert found(owner, "lisb") == [thrice.pk, once.pk]  # the last word as a prefix, as one types


def test_a_hit_says_where_it_is_with_the_words_marked_and_the_text_escaped(
    owner: Any, chat: Conversation
) -> None:
    question, _ = exchange(chat, "Is <b>Lisbon</b> & Porto far apart?", "About three hours by train.")
    [hit] = search.message_search(user=owner, query="lisbon").hits
    assert (hit.message_id, hit.conversation_id, hit.title, hit.role) == (
        question.pk,
        chat.pk,
        "Travel plans",
        "user",
    )
    assert "<mark>Lisbon</mark>" in hit.snippet
    assert "&lt;b&gt;" in hit.snippet and "<b>" not in hit.snippet and "&amp;" in hit.snippet
    assert hit.created == question.created and hit.archived is False
    assert hit.url == f"/c/{chat.pk}/#message-{question.pk}"


def test_a_stray_mark_character_in_a_message_makes_no_unbalanced_tag() -> None:
    assert search.snippet_html(f"a {search.STOP} b {search.START}word{search.STOP} c {search.START}") == (
        "a  b <mark>word</mark> c <mark></mark>"
    )


def test_another_users_messages_never_match(owner: Any, other_user: Any, chat: Conversation) -> None:
    mine, _ = exchange(chat, "Where is the secret lighthouse?", "On the cliff.")
    theirs = conversations.conversation_create(user=other_user, title="Lighthouse secret")
    exchange(theirs, "The secret lighthouse is mine", "Lighthouse secret lighthouse secret")
    assert found(owner, "secret lighthouse") == [mine.pk]
    assert [m.conversation.owner_id for m in Message.objects.filter(pk__in=found(other_user, "secret"))] == [
        other_user.pk,
        other_user.pk,
    ]


def test_archived_conversations_are_found_and_labelled(owner: Any, chat: Conversation) -> None:
    asked, _ = exchange(chat, "Pack the snorkel", "Done.")
    conversations.conversation_update(user=owner, conversation_id=chat.pk, archived=True)
    [hit] = search.message_search(user=owner, query="snorkel").hits
    assert hit.message_id == asked.pk and hit.archived is True


def test_edits_and_deletes_change_what_is_found(owner: Any, chat: Conversation) -> None:
    asked, answered = exchange(chat, "Book the ferry", "The ferry leaves at nine")
    assert set(found(owner, "ferry")) == {asked.pk, answered.pk}
    answered.content = "The boat leaves at nine"
    answered.save()  # a full save, as the admin does
    assert found(owner, "ferry") == [asked.pk]
    assert found(owner, "boat") == [answered.pk]
    Message.objects.filter(pk=asked.pk).update(content="Book the hovercraft")
    assert found(owner, "ferry") == []
    assert found(owner, "hovercraft") == [asked.pk]
    answered.delete()
    assert found(owner, "boat") == []
    conversations.conversation_delete(user=owner, conversation_id=chat.pk)
    assert found(owner, "hovercraft") == []


def test_a_streamed_reply_is_found_once_finished_not_while_written(owner: Any, chat: Conversation) -> None:
    asked, _ = exchange(chat, "Name a fish", "Cod.")
    reply = Message.objects.create(
        conversation=chat, parent=asked, role="assistant", status=Message.Status.PENDING
    )
    # As the worker writes it (chat/lifecycle): claimed, saved about once a second, then finished.
    Message.objects.filter(pk=reply.pk).update(status=Message.Status.STREAMING, started_at=timezone.now())
    Message.objects.filter(pk=reply.pk).update(content="A halibut")
    assert found(owner, "halibut") == []
    Message.objects.filter(pk=reply.pk).update(content="A halibut, or a mackerel")
    Message.objects.filter(pk=reply.pk).update(status=Message.Status.DONE, finished_at=timezone.now())
    assert found(owner, "mackerel") == [reply.pk]
    assert found(owner, "halibut") == [reply.pk]


def test_pages_are_bounded_and_follow_on_without_repeats(
    owner: Any, chat: Conversation, django_assert_max_num_queries: Any
) -> None:
    made = {exchange(chat, f"Question {n} about kayaks", "Fine.")[0].pk for n in range(5)}
    seen: list[int] = []
    offset: int | None = 0
    while offset is not None:
        with django_assert_max_num_queries(3):  # ranking, snippets, the rows
            page = search.message_search(user=owner, query="kayaks", limit=2, offset=offset)
        assert len(page.hits) <= 2
        seen += [hit.message_id for hit in page.hits]
        offset = page.next_offset
    assert sorted(seen) == sorted(made) and len(seen) == 5


@pytest.mark.parametrize(
    "query",
    [
        '"',
        'paris"',
        "AND(",
        "paris AND(",
        "NEAR(paris rome)",
        "paris OR",
        "-paris",
        "paris*",
        "^paris",
        "col:paris",
        "paris' & !rome | (",
        "'",
        "\\",
        "paris\x00rome",
        "ÉLAN, élan",
        "\u00b2 \u216b \u0661\u0662 \U0001d518 \u01c5",  # Unicode letters, digits tokenizers may drop
        "e\u0301 \u6771\u4eac \uff46\uff55\uff4c\uff4c",  # combining accent, CJK, full-width
        "x" * 200,
    ],
)
def test_hostile_query_syntax_is_a_word_search_or_a_clear_400_never_a_500(
    client: Client, owner: Any, owner_key: str, chat: Conversation, query: str
) -> None:
    exchange(chat, "Paris and Rome, NEAR each other? élan", "Not really.")
    status, body = get(client, owner_key, query)
    assert status in (200, 400), body
    if status == 400:
        assert body["detail"].startswith("q: ")
    else:
        assert all("<script" not in item["snippet"] for item in body["items"])


def test_quotes_and_operators_are_plain_text(owner: Any, chat: Conversation) -> None:
    asked, _ = exchange(chat, "Paris is lovely in spring", "Yes.")
    assert found(owner, '"paris"') == [asked.pk]
    assert found(owner, "paris*") == [asked.pk]
    assert found(owner, "(paris)") == [asked.pk]


def test_the_rest_route_answers_ranked_hits_with_bounds_named(
    client: Client, owner: Any, owner_key: str, chat: Conversation
) -> None:
    asked, answered = exchange(
        chat, "Do otters sleep holding hands at night", "Otters, otters: otters hold hands asleep"
    )
    status, body = get(client, owner_key, "otters")
    assert status == 200
    assert (body["limit"], body["offset"], body["next_offset"]) == (20, 0, None)
    assert [item["message_id"] for item in body["items"]] == [answered.pk, asked.pk]
    first = body["items"][0]
    assert first["conversation_id"] == chat.pk and first["title"] == "Travel plans"
    assert first["role"] == "assistant" and first["archived"] is False
    assert "<mark>" in first["snippet"] and first["url"].endswith(f"#message-{answered.pk}")
    assert first["created"].startswith(str(answered.created.year))

    status, body = get(client, owner_key, "otters", limit=1)
    assert status == 200 and body["next_offset"] == 1 and len(body["items"]) == 1

    for bad, named in [
        ({"q": "otters", "limit": 51}, "limit"),
        ({"q": "otters", "offset": 501}, "offset"),
        ({"q": "x" * 201}, "q"),
        ({"q": ""}, "q"),
        ({"q": "?!"}, "q: type at least one word"),
        ({"q": " ".join(["w"] * 11)}, "q: at most 10 words"),
        ({}, "q"),
    ]:
        response = client.get(API, bad, headers={"Authorization": f"Bearer {owner_key}"})
        assert response.status_code == 400, bad
        assert named in response.json()["detail"], (bad, response.json())


def test_the_rest_route_needs_a_login(client: Client) -> None:
    assert client.get(API, {"q": "otters"}).status_code == 401


def test_the_browser_session_searches_too(client: Client, owner: Any, chat: Conversation) -> None:
    asked, _ = exchange(chat, "Walruses", "Big.")
    client.force_login(owner)
    response = client.get(API, {"q": "walrus"})
    assert response.status_code == 200
    assert [item["message_id"] for item in response.json()["items"]] == [asked.pk]


def test_the_index_survives_every_later_migration() -> None:
    """A migration that alters chat_message rebuilds the table on SQLite, which drops
    the index's triggers (see migration 0011): it must create them again."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'chat_message'"
            )
            expected = {"chat_message_fts_insert", "chat_message_fts_update", "chat_message_fts_delete"}
        else:
            cursor.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'chat_message' AND column_name = 'search_vector'"
            )
            expected = {"search_vector"}
        assert {row[0] for row in cursor.fetchall()} >= expected
