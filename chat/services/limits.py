"""The rules a submission must pass, in one place for every surface.

Each refusal is an exception that says what was wrong and what is allowed;
the surfaces only choose its envelope and status (`chat.delivery.problem`).
Sizes are checked before anything is written; the busy rule and the per-user
limits run inside the submission's transaction, after the user's profile row
is locked, so two requests of one user take turns and cannot both squeeze
under a limit.
"""

from __future__ import annotations

import math
from datetime import datetime

from django.conf import settings
from django.contrib.auth.models import User

from chat import selectors
from chat.models import Conversation, Profile
from chat.services import policies
from chat.services.usage import budgets
from inference.params import InvalidParameter


class SubmissionRefused(Exception):
    """A rule refused the submission; nothing was stored."""

    code = "refused"

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InvalidInput(SubmissionRefused, ValueError):
    """Input the rules do not allow, such as an empty or oversized message."""

    code = "invalid_input"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ConversationBusy(SubmissionRefused):
    code = "conversation_busy"


class TooManyReplies(SubmissionRefused):
    code = "too_many_concurrent_replies"


class RateLimited(SubmissionRefused):
    code = "rate_limited"


class QuotaExceeded(SubmissionRefused):
    code = "quota_exceeded"


class ModelNotDeclared(SubmissionRefused):
    code = "model_not_found"


class ModelNotAllowed(SubmissionRefused):
    """A declared model the user's groups do not let them use (chat.models.GroupPolicy)."""

    code = "model_not_allowed"


# A hint for clients over the concurrency cap: about how long a short reply takes.
BUSY_RETRY_AFTER_S = 5


def check_length(field: str, text: str) -> str:
    """`text` if it fits CHAT_MAX_MESSAGE_CHARS (messages, edits, system prompts, imports)."""
    limit = settings.CHAT_MAX_MESSAGE_CHARS
    if len(text) > limit:
        raise InvalidInput(field, f"must be at most {limit} characters, got {len(text)}.")
    return text


def check_history(turns: int) -> None:
    """The earlier turns a new conversation brings (a /v1 exchange's messages): each is a
    stored row, written in one transaction."""
    most = settings.CHAT_MAX_HISTORY_TURNS
    if turns > most:
        raise InvalidInput(
            "history", f"at most {most} earlier messages may come with a request, got {turns}."
        )


def check_message(field: str, text: str) -> str:
    """A user message: not blank, within the length limit. Returns it stripped."""
    text = text.strip()
    if not text:
        raise InvalidInput(field, "must be a non-empty string.")
    return check_length(field, text)


def check_model(name: str, *, user: User | None = None) -> str:
    """A declared model's name ("" = the default one); ModelNotDeclared names the ones there are.

    With `user`: one their groups let them use (ModelNotAllowed names theirs); "" is
    their default (chat.services.policies.default_model_for).
    """
    registry = settings.MODEL_REGISTRY
    if not name:
        if user is None:
            return str(registry.default)
        # Checked below too: a policy may list only models no longer declared.
        name = policies.default_model_for(user=user)
    if registry.get(name) is None:
        names = ", ".join(registry.names)
        raise ModelNotDeclared(
            f"model: {name!r} does not exist here; the models are {names} (GET /v1/models)."
        )
    if user is not None and not policies.allowance(user=user).allows(name):
        theirs = ", ".join(policies.models_for(user=user)) or "none"
        raise ModelNotAllowed(
            f"model: you may not use {name!r}; the models you may use are {theirs} (GET /v1/models)."
        )
    return name


def check_tools(*, model: str) -> None:
    """Function calling runs on local models, whose decoding can enforce a call."""
    declared = settings.MODEL_REGISTRY.get(model)
    if declared is not None and declared.kind == "remote":
        raise InvalidParameter(
            "tools", f"function calling is not available for the remote model {model} yet; use a local model"
        )


def check_idle(*, conversation: Conversation) -> None:
    """One reply at a time per conversation: its prompt is the conversation so far."""
    if selectors.reply_in_progress(conversation=conversation):
        raise ConversationBusy(
            "This conversation is still answering: wait for the reply or stop it first.",
            retry_after_s=BUSY_RETRY_AFTER_S,
        )


def check_concurrency(*, user: User) -> None:
    """At most MAX_CONCURRENT_REPLIES (or the user's groups' limit) replies queued or
    generating per user, on all surfaces."""
    limit = policies.allowance(user=user).concurrent
    if not limit:
        return
    running = selectors.reply_unfinished_count(user=user)
    if running >= limit:
        raise TooManyReplies(
            f"You have {running} replies being generated; at most {limit} may run at once. "
            "Wait for one to finish, or stop one.",
            retry_after_s=BUSY_RETRY_AFTER_S,
        )


def take_rate_token(*, profile: Profile, now: datetime) -> None:
    """At most MAX_REPLIES_PER_MINUTE replies started per user per minute (a token bucket).

    The caller holds the profile row lock and saves nothing else on refusal:
    a refused request does not use up the allowance.
    """
    per_minute = settings.MAX_REPLIES_PER_MINUTE
    if not per_minute:
        return
    per_second = per_minute / 60
    allowance = float(per_minute) if profile.rate_allowance is None else profile.rate_allowance
    if profile.rate_checked_at is not None:
        elapsed = max((now - profile.rate_checked_at).total_seconds(), 0.0)
        allowance = min(float(per_minute), allowance + elapsed * per_second)
    if allowance < 1:
        wait_s = math.ceil((1 - allowance) / per_second)
        raise RateLimited(
            f"You may start at most {per_minute} replies a minute. Try again in {wait_s} s.",
            retry_after_s=wait_s,
        )
    profile.rate_allowance = allowance - 1
    profile.rate_checked_at = now
    profile.save(update_fields=["rate_allowance", "rate_checked_at"])


def check_quota(*, user: User, profile: Profile, now: datetime) -> None:
    """Within the user's daily and monthly token budgets (QUOTA_*_TOKENS or their own)."""
    for budget in budgets(user=user, profile=profile, now=now):
        if budget.exceeded:
            wait_s = max(math.ceil((budget.resets_at - now).total_seconds()), 1)
            resets = budget.resets_at.isoformat(timespec="minutes")
            raise QuotaExceeded(
                f"You have used {budget.used:,} of your {budget.limit:,} tokens for this {budget.period}. "
                f"Your budget resets at {resets} (in {_duration(wait_s)}).",
                retry_after_s=wait_s,
            )


def _duration(seconds: int) -> str:
    hours, minutes = divmod(math.ceil(seconds / 60), 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "", f"{minutes} min" if minutes else ""]
    return " ".join(part for part in parts if part) or "1 min"


def lock_profile(*, user: User) -> Profile:
    """The user's profile, locked for the rest of the transaction (PostgreSQL; SQLite's
    IMMEDIATE transactions already serialize writers)."""
    Profile.objects.get_or_create(user=user)
    return Profile.objects.select_for_update().get(user=user)
