"""Accounts: sign-up, deletion, and API keys for programs."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from chat.events import end_sessions
from chat.models import ApiKey
from chat.services.profiles import profile_get_or_create


@transaction.atomic
def user_create(*, username: str, password: str) -> User:
    """Sign a person up. The caller validates the password (UserCreationForm does)."""
    user = get_user_model().objects.create_user(username=username, password=password)
    profile_get_or_create(user=user)
    return user


@transaction.atomic
def account_delete(*, user: User) -> None:
    """Delete the user with every conversation, message, key and profile (cascades),
    and close their open sockets."""
    end_sessions(user.pk)
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
