"""Token usage: the ledger each finished reply adds to, and the budgets it is held to.

A reply's tokens (prompt + completion, as the APIs report them) are added to
its owner's row for the day and the model when the reply ends, whatever the
outcome: cancelled and timed-out replies used their tokens too. Budgets are
per calendar day and month in settings.TIME_ZONE. They are checked when a
reply is submitted, so the replies already running when a budget runs out
still finish: the overshoot is at most MAX_CONCURRENT_REPLIES replies.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db.models import F, QuerySet, Sum
from django.utils import timezone

from chat.models import Profile, Usage
from chat.services.policies import allowance


def usage_record(
    *, user_id: int, model: str, prompt_tokens: int, completion_tokens: int, day: date, replies: int = 1
) -> None:
    """Add one reply's tokens to the user's row for `day` and `model` (call inside a transaction).
    A pass that ended in tool calls adds its tokens with `replies=0`: its reply counts once, at its end."""
    row, _ = Usage.objects.get_or_create(user_id=user_id, day=day, model=model)
    Usage.objects.filter(pk=row.pk).update(
        replies=F("replies") + replies,
        prompt_tokens=F("prompt_tokens") + prompt_tokens,
        completion_tokens=F("completion_tokens") + completion_tokens,
    )


@dataclass(frozen=True)
class Budget:
    """One of a user's budgets (a day's or a month's) and how much of it is used."""

    period: str  # "day" or "month"
    limit: int  # tokens; 0 = no limit
    used: int
    resets_at: datetime  # when the period turns, in the site's time zone

    @property
    def exceeded(self) -> bool:
        return bool(self.limit) and self.used >= self.limit

    @property
    def remaining(self) -> int | None:
        return None if not self.limit else max(self.limit - self.used, 0)


def _limit(override: int | None, default: int) -> int:
    return default if override is None else override


def _tokens(rows: QuerySet[Usage]) -> int:
    totals = rows.aggregate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
    return (totals["prompt"] or 0) + (totals["completion"] or 0)


def budgets(
    *, user: User, profile: Profile | None = None, now: datetime | None = None
) -> tuple[Budget, Budget]:
    """The user's daily and monthly budgets as of `now`: their own Profile limit, else
    their groups' (chat.services.policies), else the site's QUOTA_*_TOKENS."""
    if profile is None:
        profile = Profile.objects.get_or_create(user=user)[0]
    today = timezone.localdate(now or timezone.now())
    month_start = today.replace(day=1)
    next_month = (month_start + timedelta(days=32)).replace(day=1)
    mine = Usage.objects.filter(user=user)
    groups = allowance(user=user)
    return (
        Budget(
            "day",
            _limit(profile.daily_token_limit, groups.daily),
            _tokens(mine.filter(day=today)),
            _start_of(today + timedelta(days=1)),
        ),
        Budget(
            "month",
            _limit(profile.monthly_token_limit, groups.monthly),
            _tokens(mine.filter(day__gte=month_start)),
            _start_of(next_month),
        ),
    )


def _start_of(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


@dataclass(frozen=True)
class Tokens:
    replies: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class UsageRow(Tokens):
    day: date
    model: str


def usage_by_day(*, user: User, days: int = 30) -> list[UsageRow]:
    """The user's usage per day and model over the last `days` days, newest first."""
    since = timezone.localdate() - timedelta(days=days - 1)
    rows = Usage.objects.filter(user=user, day__gte=since).order_by("-day", "model")
    return [
        UsageRow(
            day=r.day,
            model=r.model,
            replies=r.replies,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
        )
        for r in rows
    ]


@dataclass(frozen=True)
class ReportRow(Tokens):
    username: str
    model: str


def usage_per_day(*, since: date, until: date) -> list[tuple[date, str, int]]:
    """Every user's tokens together, (day, model, tokens), between two days (both included)."""
    rows = (
        Usage.objects.filter(day__gte=since, day__lte=until)
        .values("day", "model")
        .annotate(total=Sum(F("prompt_tokens") + F("completion_tokens")))
        .order_by("day", "model")
    )
    return [(r["day"], r["model"], r["total"]) for r in rows]


def _totals_by(field: str, *, since: date, until: date) -> list[tuple[Any, str, Tokens]]:
    """(the `field` value, model, their tokens) between two days (both included), biggest first."""
    rows = (
        Usage.objects.filter(day__gte=since, day__lte=until)
        .values(field, "model")
        .annotate(
            replies_sum=Sum("replies"),
            prompt_sum=Sum("prompt_tokens"),
            completion_sum=Sum("completion_tokens"),
            total=Sum(F("prompt_tokens") + F("completion_tokens")),
        )
        .order_by("-total", field, "model")
    )
    return [
        (r[field], r["model"], Tokens(r["replies_sum"], r["prompt_sum"], r["completion_sum"])) for r in rows
    ]


def usage_report(*, since: date, until: date) -> list[ReportRow]:
    """Every user's usage per model between two days (both included), biggest users first."""
    return [
        ReportRow(username=username, model=model, **vars(tokens))
        for username, model, tokens in _totals_by("user__username", since=since, until=until)
    ]


@dataclass(frozen=True)
class GroupRow(Tokens):
    group: str  # "" for users in no group
    model: str


def usage_by_group(*, since: date, until: date) -> list[GroupRow]:
    """Usage per Django group and model between two days (both included), biggest first.

    A member of two groups counts in both: each group's figure is what its members
    used, as a team's budget holder reads it. Users in no group form one row ("").
    """
    return [
        GroupRow(group=group or "", model=model, **vars(tokens))
        for group, model, tokens in _totals_by("user__groups__name", since=since, until=until)
    ]
