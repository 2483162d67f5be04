"""Accounts: sign-up (open, invite-only or closed), invites, deletion, and API keys for programs."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from chat.events import end_sessions
from chat.models import ApiKey, Invite
from chat.services.documents import documents_remove_files
from chat.services.profiles import profile_get_or_create


class SignupClosed(Exception):
    """Sign-up is not open to this visitor: closed, or invite-only without a usable invite."""


def signup_check(*, invite_code: str | None) -> Invite | None:
    """Whether a visitor may sign up under settings.SIGNUP; the invite they need, if any.

    Raises SignupClosed with a message for the visitor.
    """
    mode = settings.SIGNUP
    if mode == "open":
        return None
    if mode == "closed":
        raise SignupClosed("Sign-up is closed on this server. Ask its administrator for an account.")
    if not invite_code:
        raise SignupClosed("Sign-up here is by invitation. Open the invite link you were sent.")
    invite = Invite.objects.filter(code=invite_code).first()
    if invite is None:
        raise SignupClosed("This invite link is not valid. Check that you copied all of it.")
    if invite.used_at is not None:
        raise SignupClosed("This invite has already been used. Ask for a new one.")
    if invite.expires_at <= timezone.now():
        raise SignupClosed("This invite has expired. Ask for a new one.")
    return invite


@transaction.atomic
def user_create(*, username: str, password: str, email: str = "", invite_code: str | None = None) -> User:
    """Sign a person up, if settings.SIGNUP lets them (raises SignupClosed otherwise).

    The caller validates the password (UserCreationForm does). An invite is
    used up in the same transaction, so one link makes one account.
    """
    invite = signup_check(invite_code=invite_code)
    user = get_user_model().objects.create_user(username=username, password=password, email=email)
    if invite is not None:
        taken = Invite.objects.filter(pk=invite.pk, used_at__isnull=True).update(
            used_by=user, used_at=timezone.now()
        )
        if not taken:  # used by someone else a moment ago
            raise SignupClosed("This invite has already been used. Ask for a new one.")
    profile_get_or_create(user=user)
    return user


def invite_create(*, created_by: User | None, note: str = "") -> Invite:
    """A new one-use invite, valid for settings.INVITE_VALID_DAYS."""
    return Invite.objects.create(note=note, created_by=created_by)


@transaction.atomic
def account_delete(*, user: User) -> None:
    """Delete the user with every conversation, message, key and profile (cascades),
    and close their open sockets."""
    end_sessions(user.pk)
    documents_remove_files(user=user)  # the rows cascade; their files go once this commits
    user.delete()


API_KEY_PREFIX = "sanjai-"
LAST_USED_RESOLUTION = timedelta(minutes=1)


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_create(*, user: User, name: str) -> tuple[ApiKey, str]:
    """Create a key; the returned secret is shown once and never stored."""
    prefix = secrets.token_hex(4)
    key = f"{API_KEY_PREFIX}{prefix}-{secrets.token_urlsafe(32)}"
    api_key = ApiKey.objects.create(
        user=user, name=name.strip() or "API key", prefix=prefix, hashed_secret=_hash_key(key)
    )
    return api_key, key


def api_key_revoke(*, user: User, key_id: int) -> None:
    """Revoke one of the user's keys; DoesNotExist for anyone else's."""
    api_key = ApiKey.objects.get(pk=key_id, user=user)
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])


def api_key_authenticate(*, key: str) -> User | None:
    """The active user a presented key belongs to, or None."""
    if not key.startswith(API_KEY_PREFIX):
        return None
    prefix = key[len(API_KEY_PREFIX) :].split("-", 1)[0]
    api_key = ApiKey.objects.select_related("user").filter(prefix=prefix, revoked_at__isnull=True).first()
    if api_key is None or not hmac.compare_digest(api_key.hashed_secret, _hash_key(key)):
        return None
    if not api_key.user.is_active:
        return None
    now = timezone.now()
    if api_key.last_used is None or now - api_key.last_used > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used=now)  # not on every request
    return api_key.user
