"""What a user may use, from the policies of their Django groups (chat.models.GroupPolicy).

The rules, written once: a user in no group with a policy gets the site
defaults and every declared model. Otherwise the models are the union of their
groups' lists (a group with an empty list allows every model), and the budgets
and the concurrency limit are the most generous group's, where 0 means no
limit and a group's empty value means the site default. The user's own
Profile budget (daily_token_limit, monthly_token_limit) still applies over it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import User

from chat.models import GroupPolicy


@dataclass(frozen=True)
class Allowance:
    """A user's models (None: every declared one), budgets and concurrency; 0 = no limit."""

    models: frozenset[str] | None
    daily: int
    monthly: int
    concurrent: int

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


def _most_generous(values: Iterable[int]) -> int:
    """The largest limit, where 0 (no limit) beats every number."""
    values = list(values)
    return 0 if 0 in values else max(values)


def allowance(*, user: User) -> Allowance:
    """The user's allowance from their groups' policies (before their own Profile budget)."""
    policies = list(GroupPolicy.objects.filter(group__user=user))
    if not policies:
        return Allowance(
            models=None,
            daily=settings.QUOTA_DAILY_TOKENS,
            monthly=settings.QUOTA_MONTHLY_TOKENS,
            concurrent=settings.MAX_CONCURRENT_REPLIES,
        )
    every = any(not policy.allowed_models for policy in policies)
    return Allowance(
        models=None if every else frozenset(name for policy in policies for name in policy.allowed_models),
        daily=_most_generous(_or(p.daily_token_limit, settings.QUOTA_DAILY_TOKENS) for p in policies),
        monthly=_most_generous(_or(p.monthly_token_limit, settings.QUOTA_MONTHLY_TOKENS) for p in policies),
        concurrent=_most_generous(
            _or(p.max_concurrent_replies, settings.MAX_CONCURRENT_REPLIES) for p in policies
        ),
    )


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def models_for(*, user: User) -> list[str]:
    """The declared models the user may use, in the registry's order."""
    mine = allowance(user=user)
    return [name for name in settings.MODEL_REGISTRY.names if mine.allows(name)]


def default_model_for(*, user: User) -> str:
    """The site's default model, or, when the user may not use it, their first allowed one:
    a user expects "the default" to be a model that answers them, not a refusal.
    The site default if they may use none (the submission then refuses, naming why)."""
    default = str(settings.MODEL_REGISTRY.default)
    mine = models_for(user=user)
    return default if default in mine or not mine else mine[0]
