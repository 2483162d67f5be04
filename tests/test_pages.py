"""The HTML pages, the admin review screens and the create_api_key command.

Personas: `owner` (who owns the data under test), `other_user` (who must
never see it) and anonymous (a plain client). They are defined here, over
conftest's, because the login tests need to know the password.
"""

from __future__ import annotations

import hashlib
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from chat.lifecycle.submit import params_for
from chat.models import ApiKey, Conversation, Message, Profile
from chat.services import accounts, conversations

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery-staple"


@pytest.fixture
def owner() -> User:
    return User.objects.create_user(username="alice", password=PASSWORD)


@pytest.fixture
def other_user() -> User:
    return User.objects.create_user(username="bob", password=PASSWORD)


@pytest.fixture
def owner_client(owner: User) -> Client:
    client = Client()
    client.force_login(owner)
    return client


@pytest.fixture
def other_client(other_user: User) -> Client:
    client = Client()
    client.force_login(other_user)
    return client


@pytest.fixture
def superuser_client() -> Client:
    root = User.objects.create_superuser(username="root", password=PASSWORD, email="root@example.com")
    client = Client()
    client.force_login(root)
    return client


def _conversation(user: User, title: str, *contents: str, failed_error: str = "") -> Conversation:
    conversation = conversations.conversation_create(user=user, title=title)
    last = None  # one branch
    for content in contents:
        last = Message.objects.create(
            conversation=conversation, parent=last, role=Message.Role.USER, content=content
        )
    if failed_error:
        Message.objects.create(
            conversation=conversation,
            parent=last,
            role=Message.Role.ASSISTANT,
            status=Message.Status.FAILED,
            error_code="worker_unavailable",
            error=failed_error,
        )
    return conversation


def _new_key(client: Client, name: str = "laptop") -> str:
    response = client.post(reverse("api_key_new"), {"name": name})
    assert response.status_code == 200
    return response.context["new_key"]


# --- Access ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["home", "profile", "conversation"])
def test_anonymous_is_sent_to_login(client: Client, owner: User, name: str) -> None:
    conversation = _conversation(owner, "Private")
    url = reverse(name, kwargs={"conversation_id": conversation.pk} if name == "conversation" else None)

    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"].startswith(f"{reverse('login')}?next=")
    assert "Private" not in response.content.decode()


def test_anonymous_cannot_post_actions(client: Client, owner: User) -> None:
    api_key, _ = accounts.api_key_create(user=owner, name="k")

    client.post(reverse("conversation_start"), {"content": "hi"}, content_type="application/json")
    client.post(reverse("api_key_new"), {"name": "sneaky"})
    client.post(reverse("api_key_revoke", kwargs={"key_id": api_key.pk}))

    assert Conversation.objects.count() == 0
    assert ApiKey.objects.count() == 1
    api_key.refresh_from_db()
    assert api_key.revoked_at is None


def test_anonymous_sees_login_and_signup_links(client: Client) -> None:
    response = client.get(reverse("login"))

    assert response.status_code == 200
    body = response.content.decode()
    assert reverse("signup") in body
    assert "Log out" not in body


# --- Sign-up, login, logout -------------------------------------------------------


def test_signup_creates_user_logs_in_and_redirects_home(client: Client) -> None:
    response = client.post(
        reverse("signup"), {"username": "carol", "password1": PASSWORD, "password2": PASSWORD}
    )

    assert response.status_code == 302
    assert response["Location"] == reverse("home")
    carol = User.objects.get(username="carol")
    assert carol.check_password(PASSWORD)
    assert Profile.objects.filter(user=carol).exists()
    home = client.get(reverse("home"))
    assert home.status_code == 200
    assert home.context["user"] == carol


def test_signup_rejects_mismatched_passwords(client: Client) -> None:
    response = client.post(
        reverse("signup"), {"username": "carol", "password1": PASSWORD, "password2": PASSWORD + "x"}
    )

    assert response.status_code == 200
    assert response.context["form"].errors
    assert not User.objects.filter(username="carol").exists()
    assert "_auth_user_id" not in client.session


def test_login_with_right_password_logs_in(client: Client, owner: User) -> None:
    response = client.post(reverse("login"), {"username": owner.username, "password": PASSWORD})

    assert response.status_code == 302
    assert response["Location"] == reverse("home")
    assert client.session["_auth_user_id"] == str(owner.pk)


def test_login_with_wrong_password_does_not(client: Client, owner: User) -> None:
    response = client.post(reverse("login"), {"username": owner.username, "password": "wrong"})

    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


def test_logout_needs_post(owner_client: Client) -> None:
    assert owner_client.get(reverse("logout")).status_code == 405
    assert "_auth_user_id" in owner_client.session

    response = owner_client.post(reverse("logout"))

    assert response.status_code == 302
    assert "_auth_user_id" not in owner_client.session


def test_admin_link_only_for_staff(owner_client: Client, superuser_client: Client) -> None:
    admin_url = reverse("admin:index")

    assert admin_url not in owner_client.get(reverse("home")).content.decode()
    assert admin_url in superuser_client.get(reverse("home")).content.decode()


# --- Home and conversations -------------------------------------------------------


def test_home_lists_only_own_conversations_newest_first(
    owner_client: Client, owner: User, other_user: User
) -> None:
    older = _conversation(owner, "Older plans")
    newer = _conversation(owner, "Newer plans")
    _conversation(other_user, "Bob's secret")
    # auto_now cannot be set through save(); order by an explicit update instead.
    Conversation.objects.filter(pk=older.pk).update(updated=newer.updated.replace(year=2000))

    response = owner_client.get(reverse("home"))

    assert response.status_code == 200
    assert list(response.context["conversations"]) == [newer, older]
    body = response.content.decode()
    assert "Bob&#x27;s secret" not in body and "Bob's secret" not in body
    assert reverse("conversation", kwargs={"conversation_id": newer.pk}) in body


def test_home_query_count_does_not_grow_with_conversations(owner_client: Client, owner: User) -> None:
    _conversation(owner, "first", "hello")
    with CaptureQueriesContext(connection) as one:
        owner_client.get(reverse("home"))
    for index in range(5):
        _conversation(owner, f"more {index}", "hello")
    with CaptureQueriesContext(connection) as six:
        response = owner_client.get(reverse("home"))

    assert len(response.context["conversations"]) == 6
    assert len(six) == len(one)


def test_the_home_page_is_a_new_chat_that_stores_nothing(owner_client: Client, owner: User) -> None:
    body = owner_client.get(reverse("home")).content.decode()

    assert 'id="composer"' in body and "autofocus" in body
    assert f'data-start-url="{reverse("conversation_start")}"' in body
    assert "data-conversation-id" not in body
    assert f'href="{reverse("home")}" class="button primary wide" id="new-chat"' in body  # a link
    assert not Conversation.objects.exists()


def test_the_first_message_creates_the_conversation_with_it(
    owner_client: Client, owner: User, queued: list[int]
) -> None:
    assert owner_client.get(reverse("conversation_start")).status_code == 405

    response = owner_client.post(
        reverse("conversation_start"), {"content": "Plan a trip"}, content_type="application/json"
    )

    assert response.status_code == 201
    conversation = Conversation.objects.get(owner=owner)
    assert response.json()["conversation"] == {
        "id": conversation.pk,
        "title": "Plan a trip",
        "url": reverse("conversation", kwargs={"conversation_id": conversation.pk}),
        "ws_path": f"/ws/conversations/{conversation.pk}/",
        "settings_url": reverse("conversation_settings", kwargs={"conversation_id": conversation.pk}),
        "export_url": reverse("conversation_export", kwargs={"conversation_id": conversation.pk}),
        "share_url": reverse("conversation_share", kwargs={"conversation_id": conversation.pk}),
    }
    assert [(m.role, m.content) for m in conversation.messages.all()] == [
        ("user", "Plan a trip"),
        ("assistant", ""),
    ]
    assert queued == [conversation.messages.get(role="assistant").pk]
    # It is the conversation `POST /chat` continues, as conversation_create makes it.
    assert Profile.objects.get(user=owner).current_conversation == conversation


def test_a_refused_first_message_stores_nothing(owner_client: Client, owner: User, queued: list[int]) -> None:
    for body in ({"content": "   "}, {"content": 3}, ["hi"]):
        response = owner_client.post(reverse("conversation_start"), body, content_type="application/json")
        assert response.status_code == 400, body
        assert response.json()["error"]
    assert not Conversation.objects.exists()
    assert not Message.objects.exists()


def test_a_first_message_no_worker_takes_keeps_the_conversation(
    owner_client: Client, owner: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference import presence

    monkeypatch.setattr(presence, "live_workers", lambda url: [])

    response = owner_client.post(
        reverse("conversation_start"), {"content": "Anyone there?"}, content_type="application/json"
    )

    assert response.status_code == 503 and response["Retry-After"]
    conversation = Conversation.objects.get(owner=owner)
    answer = response.json()
    assert answer["code"] == "worker_unavailable" and "No generation worker" in answer["error"]
    assert answer["conversation"]["id"] == conversation.pk  # the page still becomes its page
    assert conversation.messages.get(role="assistant").status == Message.Status.FAILED


def test_owner_sees_conversation_messages_escaped(owner_client: Client, owner: User) -> None:
    conversation = _conversation(
        owner, "Chat", "What is <script>alert(1)</script>?", failed_error="No generation worker is running."
    )

    response = owner_client.get(reverse("conversation", kwargs={"conversation_id": conversation.pk}))

    assert response.status_code == 200
    body = response.content.decode()
    assert "What is &lt;script&gt;alert(1)&lt;/script&gt;?" in body
    assert "<script>alert(1)</script>" not in body
    assert "No generation worker is running." in body


def test_other_user_gets_404_for_conversation(other_client: Client, owner: User) -> None:
    conversation = _conversation(owner, "Private", "my secret question")

    response = other_client.get(reverse("conversation", kwargs={"conversation_id": conversation.pk}))

    assert response.status_code == 404
    assert "my secret question" not in response.content.decode()


# --- Profile and API keys ---------------------------------------------------------


def test_profile_update_is_saved_and_used_for_new_conversations(
    owner_client: Client, owner: User, queued: list[int]
) -> None:
    response = owner_client.post(
        reverse("profile"),
        {"display_name": "Alice A.", "default_system_prompt": "Answer in French.", **DEFAULTS},
    )

    assert response.status_code == 302
    profile = Profile.objects.get(user=owner)
    assert (profile.display_name, profile.default_system_prompt) == ("Alice A.", "Answer in French.")
    assert "Answer in French." in owner_client.get(reverse("profile")).content.decode()
    owner_client.post(reverse("conversation_start"), {"content": "Hi"}, content_type="application/json")
    conversation = Conversation.objects.get(owner=owner)
    assert conversation.system_prompt == "Answer in French."
    params = params_for(conversation=conversation)
    assert (params.max_new_tokens, params.temperature) == (300, 0.2)


def test_profile_defaults_out_of_range_are_refused(owner_client: Client, owner: User) -> None:
    response = owner_client.post(
        reverse("profile"), {"display_name": "", "default_system_prompt": "", **DEFAULTS, "top_p": 1.5}
    )
    assert response.status_code == 400
    assert response.context["params_form"].errors["top_p"]


DEFAULTS = {"max_new_tokens": 300, "temperature": 0.2, "top_p": 0.8, "repetition_penalty": 1.1}


def test_profile_rejects_overlong_display_name(owner_client: Client, owner: User) -> None:
    response = owner_client.post(
        reverse("profile"), {"display_name": "x" * 101, "default_system_prompt": "", **DEFAULTS}
    )

    assert response.status_code == 400
    assert response.context["profile_form"].errors["display_name"]
    assert not Profile.objects.filter(user=owner).exclude(display_name="").exists()


def test_api_key_is_shown_once_and_stored_only_as_hash(owner_client: Client, owner: User) -> None:
    response = owner_client.post(reverse("api_key_new"), {"name": "laptop"})

    assert response.status_code == 200
    key = response.context["new_key"]
    assert key and key in response.content.decode()
    assert "cannot be shown again" in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    stored = ApiKey.objects.get(user=owner)
    assert stored.name == "laptop"
    assert stored.hashed_secret == hashlib.sha256(key.encode()).hexdigest()
    assert key not in (stored.name, stored.prefix, stored.hashed_secret)
    assert accounts.api_key_authenticate(key=key) == owner

    again = owner_client.get(reverse("profile")).content.decode()
    assert key not in again
    assert stored.hashed_secret not in again
    assert stored.prefix in again
    assert "laptop" in again


def test_revoking_a_key_stops_it_working(owner_client: Client, owner: User) -> None:
    key = _new_key(owner_client)
    api_key = ApiKey.objects.get(user=owner)
    url = reverse("api_key_revoke", kwargs={"key_id": api_key.pk})
    assert owner_client.get(url).status_code == 405

    response = owner_client.post(url)

    assert response.status_code == 302
    assert response["Location"] == reverse("profile")
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    assert accounts.api_key_authenticate(key=key) is None
    assert "revoked" in owner_client.get(reverse("profile")).content.decode()


def test_revoking_someone_elses_key_is_404(owner_client: Client, other_client: Client, owner: User) -> None:
    key = _new_key(owner_client)
    api_key = ApiKey.objects.get(user=owner)

    response = other_client.post(reverse("api_key_revoke", kwargs={"key_id": api_key.pk}))

    assert response.status_code == 404
    api_key.refresh_from_db()
    assert api_key.revoked_at is None
    assert accounts.api_key_authenticate(key=key) == owner


def test_profile_lists_only_own_keys(owner_client: Client, other_user: User) -> None:
    accounts.api_key_create(user=other_user, name="bobs-build-server")

    response = owner_client.get(reverse("profile"))

    assert list(response.context["api_keys"]) == []
    assert "bobs-build-server" not in response.content.decode()


# --- Management command -----------------------------------------------------------


def test_create_api_key_command_prints_a_working_key(owner: User) -> None:
    out, err = StringIO(), StringIO()

    call_command("create_api_key", owner.username, "--name", "ci", stdout=out, stderr=err)

    key = out.getvalue().strip()
    assert accounts.api_key_authenticate(key=key) == owner
    assert ApiKey.objects.get(user=owner).name == "ci"
    assert key not in err.getvalue()


def test_create_api_key_command_names_a_missing_user() -> None:
    with pytest.raises(CommandError, match="nobody"):
        call_command("create_api_key", "nobody", stdout=StringIO(), stderr=StringIO())
    assert ApiKey.objects.count() == 0


# --- Admin review -----------------------------------------------------------------


def test_admin_search_finds_conversation_by_message_content(
    superuser_client: Client, owner: User, other_user: User
) -> None:
    wanted = _conversation(owner, "Trip", "tell me about the aurora borealis", "and the weather")
    _conversation(other_user, "Cooking", "how long to boil an egg")

    response = superuser_client.get(reverse("admin:chat_conversation_changelist"), {"q": "aurora"})

    assert response.status_code == 200
    results = list(response.context["cl"].result_list)
    assert results == [wanted]
    # The search joins messages; the count must still be per conversation.
    assert results[0].message_count == 2


def test_admin_filters_conversations_by_message_status(superuser_client: Client, owner: User) -> None:
    failed = _conversation(owner, "Broken", "hi", failed_error="No worker.")
    _conversation(owner, "Fine", "hi")

    response = superuser_client.get(
        reverse("admin:chat_conversation_changelist"), {"messages__status__exact": "failed"}
    )

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [failed]


def test_admin_conversation_review_is_read_only(superuser_client: Client, owner: User) -> None:
    conversation = _conversation(owner, "Original title", "a message to review")
    change_url = reverse("admin:chat_conversation_change", args=[conversation.pk])

    assert superuser_client.get(reverse("admin:chat_conversation_add")).status_code == 403
    page = superuser_client.get(change_url)
    assert page.status_code == 200
    assert "a message to review" in page.content.decode()
    assert 'name="messages-0-content"' not in page.content.decode()
    edit = superuser_client.post(change_url, {"title": "Rewritten"})
    assert edit.status_code == 403
    conversation.refresh_from_db()
    assert conversation.title == "Original title"
    assert superuser_client.get(reverse("admin:chat_message_add")).status_code == 403


def test_admin_api_key_page_never_shows_the_hash(superuser_client: Client, owner: User) -> None:
    api_key, _ = accounts.api_key_create(user=owner, name="laptop")

    page = superuser_client.get(reverse("admin:chat_apikey_change", args=[api_key.pk]))

    assert page.status_code == 200
    assert api_key.prefix in page.content.decode()
    assert api_key.hashed_secret not in page.content.decode()
