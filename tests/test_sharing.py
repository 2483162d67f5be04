"""Share by link: a read-only snapshot anyone with the link reads, its owner's to update or revoke."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from chat.models import Conversation, Message, Profile, Share
from chat.services import accounts, conversations
from tests.conftest import exchange

pytestmark = pytest.mark.django_db


@pytest.fixture
def conversation(owner: Any) -> Conversation:
    conversation = conversations.conversation_create(user=owner, title="Capitals")
    exchange(conversation, "What is the capital of France?", "**Paris**, on the Seine.")
    return conversation


def share(client: Client, conversation: Conversation, **form: str) -> Any:
    return client.post(f"/c/{conversation.pk}/share/", form)


def token_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def test_an_anonymous_viewer_reads_the_snapshot_without_the_owners_name(
    client: Client, owner: Any, conversation: Conversation
) -> None:
    Profile.objects.update_or_create(user=owner, defaults={"display_name": "Olivia Owner"})
    client.force_login(owner)
    made = share(client, conversation)
    assert made.status_code == 200
    url = made.json()["url"]
    assert len(token_of(url)) >= 43  # 256 random bits, base64: not to be guessed

    page = Client().get(url)
    body = page.content.decode()
    assert page.status_code == 200
    assert "What is the capital of France?" in body and "**Paris**, on the Seine." in body
    assert "Olivia" not in body and "olivia" not in body
    assert page["X-Robots-Tag"] == "noindex, nofollow" and '<meta name="robots" content="noindex' in body
    assert page["Cache-Control"] == "no-store" and page["Referrer-Policy"] == "no-referrer"
    assert "Log in to continue this conversation" in body

    share(client, conversation, show_owner="1")  # the owner chooses to be named
    assert "Shared by Olivia Owner" in Client().get(url).content.decode()


def test_later_messages_stay_out_until_the_owner_updates_the_same_link(
    client: Client, owner: Any, conversation: Conversation
) -> None:
    client.force_login(owner)
    url = share(client, conversation).json()["url"]
    exchange(conversation, "And of Italy?", "Rome.")
    Message.objects.create(conversation=conversation, role="assistant", content="", status="streaming")
    assert "And of Italy?" not in Client().get(url).content.decode()

    updated = share(client, conversation)
    assert updated.json()["url"] == url
    body = Client().get(url).content.decode()
    assert "And of Italy?" in body and "Rome." in body


def test_a_revoked_share_or_one_whose_conversation_or_account_is_gone_is_404(
    client: Client, owner: Any, conversation: Conversation
) -> None:
    client.force_login(owner)
    url = share(client, conversation).json()["url"]
    assert client.delete(f"/c/{conversation.pk}/share/").json() == {"shared": False}
    assert Client().get(url).status_code == 404

    url = share(client, conversation).json()["url"]
    conversations.conversation_delete(user=owner, conversation_id=conversation.pk)
    assert Client().get(url).status_code == 404

    again = conversations.conversation_create(user=owner, title="Again")
    exchange(again, "Hi", "Hello!")
    url = share(client, again).json()["url"]
    accounts.account_delete(user=owner)
    assert Client().get(url).status_code == 404
    assert not Share.objects.exists()


def test_another_user_can_neither_share_nor_revoke_my_conversation(
    client: Client, owner: Any, other_user: Any, conversation: Conversation
) -> None:
    client.force_login(owner)
    url = share(client, conversation).json()["url"]
    client.force_login(other_user)
    assert share(client, conversation).status_code == 404
    assert client.delete(f"/c/{conversation.pk}/share/").status_code == 404
    assert Client().get(url).status_code == 200
    assert Share.objects.get().show_owner is False


def test_a_viewer_continues_a_shared_conversation_in_a_copy_of_their_own(
    client: Client, owner: Any, other_user: Any, conversation: Conversation
) -> None:
    client.force_login(owner)
    url = share(client, conversation).json()["url"]
    token = token_of(url)
    assert Client().post(f"/s/{token}/continue/").status_code == 302  # to the login page

    client.force_login(other_user)
    opened = client.post(f"/s/{token}/continue/")
    copy = Conversation.objects.get(owner=other_user)
    assert opened.status_code == 302 and opened["Location"] == f"/c/{copy.pk}/"
    assert copy.title == "Capitals"
    assert [(m.role, m.content) for m in copy.messages.order_by("id")] == [
        ("user", "What is the capital of France?"),
        ("assistant", "**Paris**, on the Seine."),
    ]
    assert conversation.messages.count() == 2  # the owner's own is untouched


def test_with_sharing_off_nothing_is_shared_and_links_answer_404(
    client: Client, owner: Any, conversation: Conversation, settings: Any
) -> None:
    client.force_login(owner)
    url = share(client, conversation).json()["url"]
    settings.SHARING = False
    assert Client().get(url).status_code == 404
    refused = share(client, conversation)
    assert refused.status_code == 403 and "turned off" in refused.json()["error"]


def test_a_conversation_with_nothing_finished_is_not_shared(client: Client, owner: Any) -> None:
    empty = conversations.conversation_create(user=owner)
    client.force_login(owner)
    refused = share(client, empty)
    assert refused.status_code == 409 and "no finished message" in refused.json()["error"]


def test_rest_shares_and_revokes_and_the_admin_lists_shares(
    client: Client,
    admin_client: Client,
    owner: Any,
    owner_key: str,
    other_user: Any,
    conversation: Conversation,
) -> None:
    headers = {"Authorization": f"Bearer {owner_key}"}
    path = f"/api/v1/conversations/{conversation.pk}/share"
    made = client.post(
        path, json.dumps({"show_owner": True}), content_type="application/json", headers=headers
    )
    assert made.status_code == 200
    shared = made.json()
    assert shared["show_owner"] is True and shared["url"].startswith("http://testserver/s/")
    assert Client().get(shared["url"]).status_code == 200
    assert "Capitals" in admin_client.get("/admin/chat/share/").content.decode()

    other_key = accounts.api_key_create(user=other_user, name="other")[1]
    assert client.delete(path, headers={"Authorization": f"Bearer {other_key}"}).status_code == 404
    assert client.delete(path, headers=headers).status_code == 204
    assert Client().get(shared["url"]).status_code == 404
    assert client.delete(path, headers=headers).status_code == 404  # nothing left to revoke
