"""Reading other people's conversations in the admin: a permission of its own, and an
append-only log of every view and export that the conversation's owner can see."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from chat.models import AuditEntry, Conversation, Feedback, Message
from chat.services import accounts, conversations
from tests.conftest import exchange

pytestmark = pytest.mark.django_db

PASSWORD = "a long staff password"


@pytest.fixture
def chat(owner: Any) -> Conversation:
    conversation = conversations.conversation_create(user=owner, title="Capitals")
    exchange(conversation, "What is the capital of France?", "Paris.")
    return conversation


def staff(django_user_model: Any, username: str, *, reads_others: bool) -> Any:
    """Staff who run the site (may view conversations, messages and feedback) with or without
    the permission to read other people's conversations."""
    user = django_user_model.objects.create_user(username=username, password=PASSWORD, is_staff=True)
    codenames = ["view_conversation", "view_message", "view_feedback", "view_auditentry"]
    if reads_others:
        codenames.append("read_others_conversations")
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="chat", codename__in=codenames)
    )
    return user


def logged_in(user: Any) -> Client:
    client = Client(REMOTE_ADDR="203.0.113.7")
    client.force_login(user)
    return client


def test_a_superuser_opening_someone_elses_conversation_is_recorded(
    admin_client: Client, admin_user: Any, owner: Any, chat: Conversation
) -> None:
    page = admin_client.get(f"/admin/chat/conversation/{chat.pk}/change/", REMOTE_ADDR="198.51.100.4")
    assert page.status_code == 200 and "Paris." in page.content.decode()
    (entry,) = AuditEntry.objects.all()
    assert (entry.actor, entry.actor_username, entry.owner, entry.owner_username) == (
        admin_user,
        "admin",
        owner,
        "olivia",
    )
    assert (entry.action, entry.conversation_id, entry.ip) == ("view", chat.pk, "198.51.100.4")
    assert entry.path == f"/admin/chat/conversation/{chat.pk}/change/"


def test_the_delete_confirmation_counts_as_a_view(admin_client: Client, chat: Conversation) -> None:
    page = admin_client.get(f"/admin/chat/conversation/{chat.pk}/delete/")
    assert page.status_code == 200 and "Paris." in page.content.decode()  # the messages to go
    assert [(e.action, e.owner_username) for e in AuditEntry.objects.all()] == [("view", "olivia")]


def test_opening_ones_own_conversation_records_nothing(admin_client: Client, admin_user: Any) -> None:
    mine = conversations.conversation_create(user=admin_user, title="Notes")
    _, reply = exchange(mine, "Remind me", "Of what?")
    assert admin_client.get(f"/admin/chat/conversation/{mine.pk}/change/").status_code == 200
    assert admin_client.get(f"/admin/chat/message/{reply.pk}/change/").status_code == 200
    assert admin_client.get("/admin/chat/message/").status_code == 200
    assert not AuditEntry.objects.exists()


def test_permitted_staff_are_recorded_for_messages_too(
    django_user_model: Any, owner: Any, chat: Conversation
) -> None:
    reviewer = logged_in(staff(django_user_model, "rita", reads_others=True))
    reply = chat.messages.get(role="assistant")
    assert reviewer.get(f"/admin/chat/conversation/{chat.pk}/change/").status_code == 200
    assert reviewer.get(f"/admin/chat/message/{reply.pk}/change/").status_code == 200
    listing = reviewer.get("/admin/chat/message/")
    assert listing.status_code == 200 and "Paris." in listing.content.decode()
    entries = AuditEntry.objects.order_by("pk")
    assert [(e.actor_username, e.owner_username, e.action, e.ip) for e in entries] == [
        ("rita", "olivia", "view", "203.0.113.7")
    ] * 3


def test_staff_without_the_permission_are_refused_but_keep_the_feedback_queue(
    django_user_model: Any, owner: Any, chat: Conversation
) -> None:
    reply = chat.messages.get(role="assistant")
    rating = Feedback.objects.create(message=reply, rating=Feedback.Rating.DOWN, comment="too short")
    operator = logged_in(staff(django_user_model, "oscar", reads_others=False))
    for url in (
        f"/admin/chat/conversation/{chat.pk}/change/",
        "/admin/chat/conversation/",
        f"/admin/chat/message/{reply.pk}/change/",
        "/admin/chat/message/",
    ):
        assert operator.get(url).status_code == 403, url
    assert not AuditEntry.objects.exists()  # refused, so nothing was read

    queue = operator.get("/admin/chat/feedback/")
    assert queue.status_code == 200 and "too short" in queue.content.decode()
    detail = operator.get(f"/admin/chat/feedback/{rating.pk}/change/").content.decode()
    assert "What is the capital of France?" in detail
    assert f"/admin/chat/conversation/{chat.pk}/change/" not in detail  # no link to what they may not open
    (entry,) = AuditEntry.objects.all()  # the review showed the turns before the reply
    assert (entry.actor_username, entry.owner_username, entry.action) == ("oscar", "olivia", "view")


def test_exports_are_recorded(admin_client: Client, owner: Any, other_user: Any, chat: Conversation) -> None:
    theirs = conversations.conversation_create(user=other_user, title="Recipes")
    exchange(theirs, "Soup?", "Leek and potato.")
    exported = admin_client.post(
        "/admin/chat/conversation/",
        {"action": "export_json", "_selected_action": [chat.pk, theirs.pk]},
    )
    assert exported.status_code == 200
    body = json.loads(exported.content)
    assert {c["owner"]: c["title"] for c in body["conversations"]} == {
        "olivia": "Capitals",
        "mallory": "Recipes",
    }
    assert sorted((e.owner_username, e.action) for e in AuditEntry.objects.all()) == [
        ("mallory", "export"),
        ("olivia", "export"),
    ]

    rating = Feedback.objects.create(message=chat.messages.get(role="assistant"), rating=Feedback.Rating.UP)
    admin_client.post("/admin/chat/feedback/", {"action": "export_csv", "_selected_action": [rating.pk]})
    assert AuditEntry.objects.filter(action="export", owner=owner).count() == 2


def test_the_log_cannot_be_added_to_changed_or_deleted_in_the_admin(
    admin_client: Client, chat: Conversation
) -> None:
    admin_client.get(f"/admin/chat/conversation/{chat.pk}/change/")
    entry = AuditEntry.objects.get()
    assert admin_client.get("/admin/chat/auditentry/add/").status_code == 403
    assert (
        admin_client.post(f"/admin/chat/auditentry/{entry.pk}/change/", {"action": "export"}).status_code
        == 403
    )
    assert admin_client.post(f"/admin/chat/auditentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    refused = admin_client.post(
        "/admin/chat/auditentry/",
        {"action": "delete_selected", "_selected_action": [entry.pk], "post": "yes"},
    )
    assert refused.status_code in (200, 302)  # the action is not offered: Django answers "no action"
    assert AuditEntry.objects.get().action == "view"
    entry.action = "export"
    with pytest.raises(ValueError, match="append-only"):
        entry.save()


def test_the_log_filters_and_exports_as_csv(
    admin_client: Client, django_user_model: Any, owner: Any, other_user: Any, chat: Conversation
) -> None:
    theirs = conversations.conversation_create(user=other_user, title="Recipes")
    admin_client.get(f"/admin/chat/conversation/{chat.pk}/change/")
    admin_client.get(f"/admin/chat/conversation/{theirs.pk}/change/")
    filtered = admin_client.get("/admin/chat/auditentry/", {"owner__id__exact": owner.pk})
    assert [e.owner_username for e in filtered.context["cl"].result_list] == ["olivia"]
    by_action = admin_client.get("/admin/chat/auditentry/", {"action__exact": "export"})
    assert list(by_action.context["cl"].result_list) == []

    everything = admin_client.get("/admin/chat/auditentry/export/")
    assert everything.status_code == 200 and everything["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(everything.content.decode().lstrip("\ufeff"))))
    assert rows[0] == ["created", "actor", "action", "owner", "conversation_id", "ip", "path"]
    assert sorted((r[1], r[2], r[3], r[4]) for r in rows[1:]) == sorted(
        [("admin", "view", "olivia", str(chat.pk)), ("admin", "view", "mallory", str(theirs.pk))]
    )
    only_olivia = admin_client.get("/admin/chat/auditentry/export/", {"owner__id__exact": owner.pk})
    assert [r[3] for r in csv.reader(io.StringIO(only_olivia.content.decode().lstrip("\ufeff")))][1:] == [
        "olivia"
    ]


def test_the_owner_sees_who_opened_their_conversation(
    admin_client: Client, owner: Any, chat: Conversation, settings: Any
) -> None:
    client = logged_in(owner)
    assert "No one else has opened your conversations." in client.get("/profile/").content.decode()
    admin_client.get(f"/admin/chat/conversation/{chat.pk}/change/")
    page = client.get("/profile/").content.decode()
    assert f"admin viewed conversation #{chat.pk}" in page

    settings.AUDIT_NOTICE = False
    page = client.get("/profile/").content.decode()
    assert "Who opened your conversations" not in page and "admin viewed" not in page
    assert AuditEntry.objects.count() == 1  # the log itself is kept either way


def test_entries_outlive_both_accounts(
    admin_client: Client, admin_user: Any, owner: Any, chat: Conversation
) -> None:
    admin_client.get(f"/admin/chat/conversation/{chat.pk}/change/")
    accounts.account_delete(user=owner)
    admin_user.delete()
    entry = AuditEntry.objects.get()
    assert (entry.actor, entry.owner, entry.actor_username, entry.owner_username) == (
        None,
        None,
        "admin",
        "olivia",
    )
    assert entry.conversation_id == chat.pk and not Message.objects.exists()


def test_behind_the_tls_proxy_the_address_is_the_one_the_proxy_appended(
    admin_client: Client, chat: Conversation, settings: Any
) -> None:
    settings.TLS_PROXY = True
    admin_client.get(
        f"/admin/chat/conversation/{chat.pk}/change/",
        REMOTE_ADDR="127.0.0.1",
        HTTP_X_FORWARDED_FOR="10.9.9.9, 192.0.2.33",  # the left one came from the client: forgeable
    )
    assert AuditEntry.objects.get().ip == "192.0.2.33"
