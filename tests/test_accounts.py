"""Accounts for a server shared with other people: login throttling, sign-up
modes and invites, password change and reset, usage and budgets."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat.events import user_group
from chat.models import Invite, Message, Profile, Usage
from chat.services import accounts, conversations
from tests.conftest import captured_group

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery"  # the owner fixture's
NEW_PASSWORD = "a brand new passphrase"


def log_in(
    client: Client, username: str, password: str, *, admin: bool = False, address: str = "10.0.0.1"
) -> Any:
    url = "/admin/login/" if admin else reverse("login")
    return client.post(url, {"username": username, "password": password}, REMOTE_ADDR=address)


# --- Login throttling (django-axes) -------------------------------------------------


@pytest.mark.parametrize("admin", [False, True], ids=["site", "admin"])
def test_a_username_is_locked_out_after_too_many_failed_logins(
    client: Client, owner: User, settings: Any, admin: bool
) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    owner.is_staff = True
    owner.save()
    for _ in range(2):
        assert log_in(client, owner.username, "wrong", admin=admin).status_code == 200
    locked = log_in(client, owner.username, "wrong", admin=admin)
    assert locked.status_code == 429
    page = locked.content.decode()
    assert "failed to log in 3 times" in page and "blocked for 15 minutes" in page
    assert locked["Retry-After"] == str(15 * 60)
    # Even the right password is refused now, on both login forms.
    for either in (False, True):
        assert log_in(client, owner.username, PASSWORD, admin=either).status_code == 429
    assert "_auth_user_id" not in client.session
    # The lockout is for this username from this address: the owner elsewhere still gets in.
    elsewhere = Client()
    assert log_in(elsewhere, owner.username, PASSWORD, address="10.0.0.2").status_code == 302


def test_a_successful_login_clears_the_failure_count(client: Client, owner: User, settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    for _ in range(2):
        log_in(client, owner.username, "wrong")
    assert log_in(client, owner.username, PASSWORD).status_code == 302
    client.post(reverse("logout"))
    for _ in range(2):
        assert log_in(client, owner.username, "wrong").status_code == 200
    assert log_in(client, owner.username, PASSWORD).status_code == 302


def test_behind_the_tls_proxy_failures_count_against_the_forwarded_address() -> None:
    from django.test import RequestFactory

    from chat.auth import client_ip_behind_proxy

    request = RequestFactory().get("/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.9")
    assert client_ip_behind_proxy(request) == "203.0.113.9"  # the proxy's own entry, not the forgeable one
    assert client_ip_behind_proxy(RequestFactory().get("/", REMOTE_ADDR="127.0.0.1")) == "127.0.0.1"


# --- Sign-up modes ---------------------------------------------------------------------


def signup_form(username: str = "carol", **extra: str) -> dict[str, str]:
    return {"username": username, "password1": NEW_PASSWORD, "password2": NEW_PASSWORD, **extra}


def test_closed_sign_up_refuses_and_the_login_page_does_not_offer_it(client: Client, settings: Any) -> None:
    settings.SIGNUP = "closed"
    page = client.get(reverse("signup"))
    assert page.status_code == 403 and "Sign-up is closed on this server" in page.content.decode()
    assert client.post(reverse("signup"), signup_form()).status_code == 403
    assert not User.objects.filter(username="carol").exists()
    assert reverse("signup") not in client.get(reverse("login")).content.decode()


def test_invite_only_sign_up_needs_an_unused_unexpired_invite(
    client: Client, owner: User, settings: Any
) -> None:
    settings.SIGNUP = "invite"
    assert "by invitation" in client.get(reverse("signup")).content.decode()
    assert client.post(reverse("signup"), signup_form()).status_code == 403
    assert client.get(reverse("signup"), {"invite": "made-up"}).status_code == 403

    invite = accounts.invite_create(created_by=owner, note="for Carol")
    assert client.get(reverse("signup"), {"invite": invite.code}).status_code == 200
    response = client.post(reverse("signup"), signup_form(invite=invite.code, email="carol@example.com"))
    assert response.status_code == 302
    carol = User.objects.get(username="carol")
    assert carol.email == "carol@example.com"
    invite.refresh_from_db()
    assert invite.used_by == carol and invite.used_at is not None

    # One invite, one account.
    again = Client().post(reverse("signup"), signup_form("dave", invite=invite.code))
    assert again.status_code == 403 and "already been used" in again.content.decode()
    expired = accounts.invite_create(created_by=owner)
    Invite.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    late = Client().post(reverse("signup"), signup_form("erin", invite=expired.code))
    assert late.status_code == 403 and "expired" in late.content.decode()
    assert not User.objects.filter(username__in=["dave", "erin"]).exists()


def test_an_admin_makes_an_invite_and_sees_its_link(admin_client: Client, settings: Any) -> None:
    settings.SIGNUP = "invite"
    response = admin_client.post("/admin/chat/invite/add/", {"note": "for Frank"})
    assert response.status_code == 302
    invite = Invite.objects.get(note="for Frank")
    assert len(invite.code) >= 32 and invite.expires_at > timezone.now() + timedelta(days=13)
    listing = admin_client.get("/admin/chat/invite/").content.decode()
    assert f"/signup/?invite={invite.code}" in listing
    assert Client().get(reverse("signup"), {"invite": invite.code}).status_code == 200


# --- Password change and reset ----------------------------------------------------------


def test_changing_the_password_keeps_this_session_and_ends_the_others(client: Client, owner: User) -> None:
    other_device = Client()
    other_device.force_login(owner)
    client.force_login(owner)
    form = {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
    response = client.post(reverse("password_change"), form)
    assert response.status_code == 302 and response["Location"] == reverse("profile")
    owner.refresh_from_db()
    assert owner.check_password(NEW_PASSWORD)
    assert client.get(reverse("home")).status_code == 200
    assert other_device.get(reverse("home")).status_code == 302  # back to the login page


def test_a_wrong_old_password_changes_nothing(client: Client, owner: User) -> None:
    client.force_login(owner)
    form = {"old_password": "not it", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
    response = client.post(reverse("password_change"), form)
    assert response.status_code == 200 and "old password was entered incorrectly" in response.content.decode()
    owner.refresh_from_db()
    assert owner.check_password(PASSWORD)


def test_saving_a_user_without_a_new_password_leaves_their_sockets_open(
    owner: User, django_capture_on_commit_callbacks: Any
) -> None:
    with captured_group(user_group(owner.pk)) as events, django_capture_on_commit_callbacks(execute=True):
        owner.email = "olivia@example.com"
        owner.save()
        owner.last_login = timezone.now()
        owner.save(update_fields=["last_login"])
    assert events == []
    with captured_group(user_group(owner.pk)) as events, django_capture_on_commit_callbacks(execute=True):
        owner.set_password(NEW_PASSWORD)
        owner.save()
    assert events == [{"type": "session.end"}]


def test_a_forgotten_password_is_reset_through_the_emailed_link(client: Client, owner: User) -> None:
    owner.email = "olivia@example.com"
    owner.save()
    response = client.post(reverse("password_reset"), {"email": "olivia@example.com"})
    assert response.status_code == 302 and response["Location"] == reverse("password_reset_done")
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["olivia@example.com"]
    link = re.search(r"http://testserver(/password-reset/\S+/\S+/)", mail.outbox[0].body)
    assert link is not None
    form_page = client.get(link.group(1), follow=True)  # Django swaps the token for a session key
    assert form_page.status_code == 200 and form_page.context["validlink"]
    done = client.post(
        form_page.redirect_chain[-1][0], {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
    )
    assert done.status_code == 302 and done["Location"] == reverse("password_reset_complete")
    owner.refresh_from_db()
    assert owner.check_password(NEW_PASSWORD)
    # The link works once.
    assert not Client().get(link.group(1), follow=True).context["validlink"]


def test_a_reset_for_an_unknown_address_sends_nothing_and_says_the_same(client: Client, owner: User) -> None:
    response = client.post(reverse("password_reset"), {"email": "nobody@example.com"})
    assert response.status_code == 302 and response["Location"] == reverse("password_reset_done")
    assert mail.outbox == []


def test_the_profile_keeps_the_reset_address(client: Client, owner: User) -> None:
    client.force_login(owner)
    form = {
        "display_name": "Olivia",
        "email": "olivia@example.com",
        "default_system_prompt": "",
        "max_new_tokens": 200,
        "temperature": 0.7,
        "top_p": 0.95,
        "repetition_penalty": 1.1,
    }
    assert client.post(reverse("profile"), form).status_code == 302
    owner.refresh_from_db()
    assert owner.email == "olivia@example.com"


# --- Usage ---------------------------------------------------------------------------------


def test_a_finished_reply_adds_its_tokens_to_the_owners_usage_for_its_model(
    owner: Any, tiny_backend: Any, queued: list[int]
) -> None:
    from chat.lifecycle.run import reply_generate
    from tests.conftest import submit

    for _ in range(2):
        reply = submit(owner, "Count to three.", max_new_tokens=5).reply
        reply_generate(reply_id=reply.pk, backend=tiny_backend, worker="test-worker")
    replies = Message.objects.filter(conversation__owner=owner, role="assistant")
    assert {reply.model for reply in replies} == {tiny_backend.model_name}
    row = Usage.objects.get(user=owner)
    assert (row.day, row.model, row.replies) == (timezone.localdate(), tiny_backend.model_name, 2)
    assert row.prompt_tokens == sum(reply.prompt_tokens for reply in replies)
    assert row.completion_tokens == sum(reply.completion_tokens for reply in replies) == 10
    # Deleting the conversations gives no budget back.
    conversations.conversation_delete(user=owner, conversation_id=replies[0].conversation_id)
    assert Usage.objects.get(user=owner).completion_tokens == 10


def test_the_usage_page_shows_tokens_by_day_and_model_and_the_budgets(
    client: Client, owner: User, other_user: User, settings: Any
) -> None:
    settings.QUOTA_DAILY_TOKENS = 5000
    today = timezone.localdate()
    Usage.objects.create(
        user=owner, day=today, model="small", replies=2, prompt_tokens=1200, completion_tokens=34
    )
    Usage.objects.create(
        user=owner, day=today, model="big", replies=1, prompt_tokens=300, completion_tokens=7
    )
    Usage.objects.create(
        user=owner,
        day=today - timedelta(days=3),
        model="small",
        replies=1,
        prompt_tokens=50,
        completion_tokens=5,
    )
    Usage.objects.create(
        user=other_user, day=today, model="small", replies=9, prompt_tokens=98765, completion_tokens=1
    )
    client.force_login(owner)
    page = client.get(reverse("usage"))
    assert page.status_code == 200
    rows = [(r.day, r.model, r.total_tokens) for r in page.context["rows"]]
    assert rows == [(today, "big", 307), (today, "small", 1234), (today - timedelta(days=3), "small", 55)]
    day, month = page.context["budgets"]
    assert (day.limit, day.used, day.remaining) == (5000, 1541, 3459)
    assert month.limit == 0 and month.remaining is None
    assert "98765" not in page.content.decode()  # another user's usage is not shown


def test_the_admin_report_sums_usage_per_user_and_model_and_exports_csv(
    admin_client: Client, owner: User, other_user: User
) -> None:
    today = timezone.localdate()
    Usage.objects.create(
        user=owner, day=today, model="small", replies=2, prompt_tokens=100, completion_tokens=20
    )
    Usage.objects.create(
        user=owner,
        day=today - timedelta(days=1),
        model="small",
        replies=1,
        prompt_tokens=10,
        completion_tokens=2,
    )
    Usage.objects.create(
        user=other_user, day=today, model="big", replies=1, prompt_tokens=500, completion_tokens=50
    )
    Usage.objects.create(
        user=other_user,
        day=today - timedelta(days=90),
        model="big",
        replies=1,
        prompt_tokens=7,
        completion_tokens=7,
    )
    since = (today - timedelta(days=1)).isoformat()
    page = admin_client.get("/admin/chat/usage/report/", {"since": since, "until": today.isoformat()})
    assert page.status_code == 200
    assert [(r.username, r.model, r.replies, r.total_tokens) for r in page.context["rows"]] == [
        ("mallory", "big", 1, 550),
        ("olivia", "small", 3, 132),
    ]
    assert "Report per user and model" in admin_client.get("/admin/chat/usage/").content.decode()
    exported = admin_client.get(
        "/admin/chat/usage/report/", {"since": since, "until": today.isoformat(), "format": "csv"}
    )
    assert exported["Content-Type"].startswith("text/csv")
    assert list(csv.reader(io.StringIO(exported.content.decode()))) == [
        ["user", "model", "replies", "prompt_tokens", "completion_tokens", "total_tokens"],
        ["mallory", "big", "1", "500", "50", "550"],
        ["olivia", "small", "3", "110", "22", "132"],
    ]
    assert Client().get("/admin/chat/usage/report/").status_code == 302  # staff only


def test_an_admin_sets_one_users_budget(admin_client: Client, owner: User) -> None:
    profile = Profile.objects.get_or_create(user=owner)[0]
    page = admin_client.get(f"/admin/chat/profile/{profile.pk}/change/")
    assert "daily_token_limit" in page.content.decode()
    form = {
        "display_name": "",
        "default_system_prompt": "",
        "default_params": "{}",
        "daily_token_limit": "2500",
        "monthly_token_limit": "",
    }
    assert admin_client.post(f"/admin/chat/profile/{profile.pk}/change/", form).status_code == 302
    profile.refresh_from_db()
    assert (profile.daily_token_limit, profile.monthly_token_limit) == (2500, None)
