"""The chat page's server side: rename, delete, settings, export/import, account deletion."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls.resolvers import RegexPattern, URLResolver
from django.utils import timezone

from chat import selectors
from chat.consumers import CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED
from chat.lifecycle.submit import TITLE_LENGTH
from chat.models import Conversation, MemoryFact, Message, Profile
from chat.routing import websocket_urlpatterns
from chat.services import conversations
from tests.conftest import exchange, submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(owner: Any) -> Client:
    client = Client()
    client.force_login(owner)
    return client


@pytest.fixture
def conversation(owner: Any) -> Conversation:
    conversation = conversations.conversation_create(user=owner, title="Capitals", system_prompt="Be brief.")
    _, reply = exchange(conversation, "Capital of *France*?", "**Paris**")
    Message.objects.filter(pk=reply.pk).update(completion_tokens=3)
    return conversation


def test_the_page_has_the_sidebar_messages_and_settings_ranges(browser: Client, conversation: Any) -> None:
    body = browser.get(f"/c/{conversation.pk}/").content.decode()
    assert 'data-ws-path="/ws/conversations/' in body
    assert "Capital of *France*?" in body and "**Paris**" in body  # rendered as Markdown by the page
    # The ranges shown come from the one parameter schema.
    assert "(0, 1]" in body and "[0, 2]" in body and "from 1 to 1024" in body
    assert 'name="temperature" min="0.0" max="2.0"' in body
    assert 'aria-live="polite"' in body


def test_the_page_gets_its_socket_path_and_close_codes_from_the_server(
    browser: Client, conversation: Any
) -> None:
    """The script connects where the websocket route listens and reads the codes the consumer closes with."""
    body = browser.get(f"/c/{conversation.pk}/").content.decode()
    path = re.search(r'data-ws-path="([^"]+)"', body)
    assert path is not None
    match = URLResolver(RegexPattern(r"^/"), websocket_urlpatterns).resolve(path.group(1))
    assert match.kwargs == {"conversation_id": conversation.pk}
    constants = re.search(r'<script id="page-constants" type="application/json">(.*?)</script>', body)
    assert constants is not None
    assert json.loads(constants.group(1)) == {
        "closeCodes": {"unauthenticated": CLOSE_UNAUTHENTICATED, "notFound": CLOSE_NOT_FOUND},
        "titleLength": TITLE_LENGTH,
        "memoryFactChars": MemoryFact._meta.get_field("text").max_length,
    }
    # The home page (a new chat) has no socket yet, and the constants all the same.
    home = browser.get("/").content.decode()
    assert "data-ws-path" not in home and 'id="page-constants"' in home


def test_pages_forbid_inline_script_and_remote_content(browser: Client, conversation: Any) -> None:
    policy = browser.get(f"/c/{conversation.pk}/")["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "img-src 'self' data:" in policy


def test_search_finds_titles_and_content(browser: Client, conversation: Any, owner: Any) -> None:
    conversations.conversation_create(user=owner, title="Unrelated")
    body = browser.get("/?q=paris").content.decode()
    assert "Capitals" in body and "Unrelated" not in body


def test_rename_and_delete(browser: Client, conversation: Any, other_user: Any) -> None:
    response = browser.post(f"/c/{conversation.pk}/rename/", {"title": "  European capitals "})
    assert response.json() == {"title": "European capitals"}
    assert browser.post(f"/c/{conversation.pk}/rename/", {"title": " "}).status_code == 400
    theirs = conversations.conversation_create(user=other_user, title="Theirs")
    assert browser.post(f"/c/{theirs.pk}/rename/", {"title": "x"}).status_code == 404
    assert browser.post(f"/c/{theirs.pk}/delete/").status_code == 404
    assert browser.post(f"/c/{conversation.pk}/delete/").status_code == 302
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert Conversation.objects.filter(pk=theirs.pk).exists()


def test_settings_are_validated_and_used_for_the_next_reply(
    browser: Client, conversation: Any, queued: list[int]
) -> None:
    url = f"/c/{conversation.pk}/settings/"
    good = {
        "system_prompt": "Answer in French.",
        "max_new_tokens": 50,
        "temperature": 0,
        "top_p": 1,
        "repetition_penalty": 1.0,
    }
    response = browser.post(url, json.dumps(good), content_type="application/json")
    assert response.status_code == 200
    bad = browser.post(url, json.dumps({**good, "temperature": 3}), content_type="application/json")
    assert bad.status_code == 400 and bad.json() == {
        "error": "temperature: must be a number in [0, 2] (0 is greedy), got 3",
        "field": "temperature",
    }
    conversation.refresh_from_db()
    assert conversation.system_prompt == "Answer in French."
    posted = submit(conversation.owner, "Hi", conversation_id=conversation.pk)
    assert posted.reply.params["max_new_tokens"] == 50 and posted.reply.params["temperature"] == 0


def test_export_as_json_and_markdown_and_import_it_back(
    browser: Client, conversation: Any, owner: Any
) -> None:
    exported = browser.get(f"/c/{conversation.pk}/export/?format=json")
    assert exported["Content-Disposition"].startswith("attachment;")
    data = json.loads(exported.content)
    assert data["format"] == "sanjai.conversation" and data["system_prompt"] == "Be brief."
    assert [(m["role"], m["content"]) for m in data["messages"]] == [
        ("user", "Capital of *France*?"),
        ("assistant", "**Paris**"),
    ]
    markdown = browser.get(f"/c/{conversation.pk}/export/?format=md").content.decode()
    assert markdown.startswith("# Capitals") and "## SanjAI" in markdown and "**Paris**" in markdown
    assert browser.get(f"/c/{conversation.pk}/export/?format=pdf").status_code == 400

    upload = SimpleUploadedFile("c.json", exported.content, content_type="application/json")
    response = browser.post("/import/", {"file": upload})
    copy = Conversation.objects.exclude(pk=conversation.pk).get(owner=owner)
    assert response["Location"] == f"/c/{copy.pk}/"
    assert [(m.role, m.content) for m in copy.messages.all()] == [
        ("user", "Capital of *France*?"),
        ("assistant", "**Paris**"),
    ]


def test_a_bad_import_says_why_and_creates_nothing(browser: Client, owner: Any) -> None:
    for content, reason in [
        (b"not json", "not valid JSON"),
        (b'{"format": "other"}', "Not a SanjAI conversation export"),
        (
            json.dumps(
                {"format": "sanjai.conversation", "version": 1, "messages": [{"role": "root"}]}
            ).encode(),
            "messages[0] needs a role",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (
            json.dumps(
                {
                    "format": "sanjai.conversation",
                    "version": 1,
                    "messages": [{"role": "user", "content": "x" * 16_001}],
                }
            ).encode(),
            "messages[0].content: must be at most 16000 characters",
        ),
    ]:
        response = browser.post("/import/", {"file": SimpleUploadedFile("x.json", content)}, follow=True)
        assert reason in response.content.decode()
    assert not Conversation.objects.filter(owner=owner).exists()


def branched(owner: Any) -> Conversation:
    """Q1 A1, then Q2 answered twice (A2, then A2'), then Q2 edited into Q2' with its A3;
    the branch viewed: Q1 A1 Q2 A2'."""
    conversation = conversations.conversation_create(user=owner, title="Branches")
    _, a1 = exchange(conversation, "Q1", "A1")
    q2, _ = exchange(conversation, "Q2", "A2")
    again = Message.objects.create(conversation=conversation, parent=q2, role="assistant", content="A2'")
    edited = Message.objects.create(conversation=conversation, parent=a1, role="user", content="Q2'")
    Message.objects.create(conversation=conversation, parent=edited, role="assistant", content="A3")
    Conversation.objects.filter(pk=conversation.pk).update(current_leaf=again)
    conversation.refresh_from_db()
    return conversation


def tree_of(conversation: Conversation) -> list[tuple[str, str, str | None]]:
    """(role, content, parent's content) of every message, oldest first: ids aside, the tree."""
    return [
        (m.role, m.content, m.parent.content if m.parent else None)
        for m in conversation.messages.select_related("parent").order_by("id")
    ]


def test_export_and_import_keep_every_branch_and_the_one_viewed(browser: Client, owner: Any) -> None:
    conversation = branched(owner)
    data = json.loads(browser.get(f"/c/{conversation.pk}/export/?format=json").content)
    assert data["version"] == 2 and data["current_id"] == conversation.current_leaf_id
    assert [(m["content"], m["parent_id"]) for m in data["messages"]][:3] == [
        ("Q1", None),
        ("A1", data["messages"][0]["id"]),
        ("Q2", data["messages"][1]["id"]),
    ]
    markdown = browser.get(f"/c/{conversation.pk}/export/?format=md").content.decode()
    viewed, others = markdown.split("## Other branches")
    assert "A2'" in viewed and "_(version 2 of 2)_" in viewed and "A3" not in viewed
    assert "### Branch 1, after “Q2”" in others and "A2\n" in others
    assert "### Branch 2, after “A1”" in others and "Q2'" in others and "A3" in others

    upload = SimpleUploadedFile("c.json", json.dumps(data).encode(), content_type="application/json")
    browser.post("/import/", {"file": upload})
    copy = Conversation.objects.exclude(pk=conversation.pk).get(owner=owner)
    assert tree_of(copy) == tree_of(conversation)
    branch = selectors.conversation_branch(conversation=copy).messages
    assert [m.content for m in branch] == ["Q1", "A1", "Q2", "A2'"]


def test_an_export_from_before_branches_imports_as_one_branch(browser: Client, owner: Any) -> None:
    old = {
        "format": "sanjai.conversation",
        "version": 1,
        "title": "Old",
        "messages": [
            {"role": "user", "content": "Q1", "status": "done"},
            {"role": "assistant", "content": "A1", "status": "done"},
            {"role": "user", "content": "Q2", "status": "done"},
        ],
    }
    upload = SimpleUploadedFile("old.json", json.dumps(old).encode(), content_type="application/json")
    browser.post("/import/", {"file": upload})
    copy = Conversation.objects.get(owner=owner, title="Old")
    assert tree_of(copy) == [("user", "Q1", None), ("assistant", "A1", "Q1"), ("user", "Q2", "A1")]
    assert [m.content for m in selectors.conversation_branch(conversation=copy).messages] == [
        "Q1",
        "A1",
        "Q2",
    ]


def test_an_import_whose_parents_do_not_hold_together_is_refused(browser: Client, owner: Any) -> None:
    for messages, reason in [
        (
            [{"id": 1, "parent_id": 2, "role": "user", "content": "x"}],
            "must be null or a message listed before",
        ),
        ([{"parent_id": None, "role": "user", "content": "x"}], "of its own (a number or text)"),
    ]:
        data = {"format": "sanjai.conversation", "version": 2, "messages": messages}
        upload = SimpleUploadedFile("x.json", json.dumps(data).encode())
        assert reason in browser.post("/import/", {"file": upload}, follow=True).content.decode()
    assert not Conversation.objects.filter(owner=owner).exists()


def test_export_everything_is_only_mine(browser: Client, conversation: Any, other_user: Any) -> None:
    conversations.conversation_create(user=other_user, title="Secret plans")
    data = json.loads(browser.get("/profile/export/?format=json").content)
    assert [c["title"] for c in data["conversations"]] == ["Capitals"]
    assert "Secret plans" not in browser.get("/profile/export/?format=md").content.decode()


def test_deleting_the_account_needs_the_password_and_removes_everything(
    browser: Client, conversation: Any, owner: Any, django_user_model: Any
) -> None:
    browser.post("/profile/delete/", {"password": "wrong"})
    assert django_user_model.objects.filter(pk=owner.pk).exists()
    browser.post("/profile/delete/", {"password": "correct horse battery"})
    assert not django_user_model.objects.filter(pk=owner.pk).exists()
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert browser.get("/").status_code == 302  # logged out


def test_the_profile_page_offers_export_import_and_account_deletion(browser: Client) -> None:
    body = browser.get("/profile/").content.decode()
    assert "<title>Profile · SanjAI</title>" in body
    for url in ("/profile/export/?format=json", "/profile/export/?format=md", "/import/", "/profile/delete/"):
        assert url in body
    assert body.count("<h2>Your data</h2>") == 1


# --- The sidebar: date groups, paging, pin and archive ------------------------------------


def _aged(conversation: Conversation, age: timedelta) -> Conversation:
    """Last active `age` ago (auto_now cannot be set through save())."""
    Conversation.objects.filter(pk=conversation.pk).update(updated=timezone.now() - age)
    conversation.refresh_from_db()
    return conversation


def _groups(page: selectors.SidebarPage) -> list[tuple[str, list[str]]]:
    return [(group.label, [c.title for c in group.conversations]) for group in page.groups]


def test_the_sidebar_groups_by_day_in_the_sites_time_zone(owner: Any, other_user: Any, settings: Any) -> None:
    settings.TIME_ZONE = "Pacific/Auckland"  # far from UTC: days must turn at local midnight
    now = timezone.localtime()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    made = {
        "just now": timedelta(0),
        "this morning": now - midnight,  # local midnight, give or take the test's own run time
        "last night": now - midnight + timedelta(minutes=1),
        "three days ago": timedelta(days=3),
        "a week ago": now - midnight + timedelta(days=6, hours=1),
        "last month": timedelta(days=30),
    }
    for title, age in made.items():
        _aged(conversations.conversation_create(user=owner, title=title), age)
    conversations.conversation_create(user=other_user, title="not mine")

    page = selectors.conversation_sidebar(user=owner)

    assert _groups(page) == [
        ("Today", ["just now", "this morning"]),
        ("Yesterday", ["last night"]),
        ("Previous 7 days", ["three days ago", "a week ago"]),
        ("Older", ["last month"]),
    ]
    assert page.next_cursor is None


def test_the_sidebar_pages_by_position_and_search_still_works(
    owner: Any, browser: Client, django_assert_num_queries: Any
) -> None:
    for n in range(7):
        _aged(conversations.conversation_create(user=owner, title=f"Chat {n}"), timedelta(days=n * 10))
    pinned = conversations.conversation_create(user=owner, title="Pinned chat")
    conversations.conversation_update(user=owner, conversation_id=pinned.pk, pinned=True)

    with django_assert_num_queries(2):  # the pinned ones, the page
        first = selectors.conversation_sidebar(user=owner, limit=3)
    assert _groups(first) == [
        ("Pinned", ["Pinned chat"]),
        ("Today", ["Chat 0"]),
        ("Older", ["Chat 1", "Chat 2"]),
    ]
    assert first.next_cursor is not None
    # A conversation that becomes active meanwhile moves to the top: nothing is skipped or repeated.
    conversations.conversation_update(user=owner, conversation_id=first.conversations[-1].pk, title="Chat 2")
    second = selectors.conversation_sidebar(user=owner, limit=3, before=first.next_cursor)
    assert _groups(second) == [("Older", ["Chat 3", "Chat 4", "Chat 5"])]  # no pinned group after page 1
    third = selectors.conversation_sidebar(user=owner, limit=3, before=second.next_cursor)
    assert _groups(third) == [("Older", ["Chat 6"])] and third.next_cursor is None

    # The page's More link fetches the same pages as HTML, search included.
    body = browser.get("/").content.decode()
    assert body.count('class="conversation-item') == 8 and "data-more" not in body  # 50 a page
    searched = selectors.conversation_sidebar(user=owner, query="chat 3")
    assert [c.title for c in searched.conversations] == ["Chat 3"]
    fragment = browser.get(f"/sidebar/?q=Chat&before={first.next_cursor}").content.decode()
    assert "Chat 3" in fragment and "Chat 0" not in fragment and "Pinned chat" not in fragment
    assert browser.get("/sidebar/?before=yesterday").status_code == 400
    with pytest.raises(selectors.InvalidCursor):
        selectors.conversation_sidebar(user=owner, before="12-x")


def test_pin_and_archive_from_the_page(browser: Client, owner: Any, other_user: Any) -> None:
    first = conversations.conversation_create(user=owner, title="First")
    conversations.conversation_create(user=owner, title="Second")
    _aged(first, timedelta(days=2))
    updated = Conversation.objects.get(pk=first.pk).updated

    def flags(conversation: Conversation, **body: Any) -> Any:
        return browser.post(f"/c/{conversation.pk}/flags/", body, content_type="application/json")

    assert flags(first, pinned=True).json() == {"pinned": True, "archived": False}
    assert _groups(selectors.conversation_sidebar(user=owner)) == [
        ("Pinned", ["First"]),
        ("Today", ["Second"]),
    ]
    assert Conversation.objects.get(pk=first.pk).updated == updated  # not activity: its day group stays

    # Archiving unpins and takes it out of the list, into the Archived view.
    assert flags(first, archived=True).json() == {"pinned": False, "archived": True}
    assert [c.title for c in selectors.conversation_sidebar(user=owner).conversations] == ["Second"]
    archived = selectors.conversation_sidebar(user=owner, archived=True)
    assert _groups(archived) == [("Previous 7 days", ["First"])]
    body = browser.get("/?archived=1").content.decode()
    assert "Unarchive First" in body and "Second" not in body and "Back to all conversations" in body
    assert "Archived conversations" in browser.get("/").content.decode()

    assert flags(first, archived=False).json() == {"pinned": False, "archived": False}
    assert [c.title for c in selectors.conversation_sidebar(user=owner).conversations] == ["Second", "First"]

    assert flags(first, pinned="yes").status_code == 400
    theirs = conversations.conversation_create(user=other_user, title="Theirs")
    assert flags(theirs, archived=True).status_code == 404
    assert Conversation.objects.get(pk=theirs.pk).archived_at is None


# --- The theme --------------------------------------------------------------------------


def test_the_theme_is_kept_in_the_profile_and_set_on_every_page(browser: Client, owner: Any) -> None:
    assert '<html lang="en" data-theme="system">' in browser.get("/").content.decode()

    response = browser.post("/profile/theme/", {"theme": "dark"}, content_type="application/json")

    assert response.json() == {"theme": "dark"}
    assert Profile.objects.get(user=owner).theme == "dark"
    for page in ("/", "/profile/", "/usage/"):
        body = browser.get(page).content.decode()
        assert '<html lang="en" data-theme="dark">' in body, page
        assert '<option value="dark" selected>' in body, page
    assert (
        browser.post("/profile/theme/", {"theme": "pink"}, content_type="application/json").status_code == 400
    )
    assert Profile.objects.get(user=owner).theme == "dark"
    assert '<html lang="en" data-theme="system">' in Client().get("/login/").content.decode()
