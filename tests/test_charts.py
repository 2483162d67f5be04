"""The usage charts: tokens per day stacked by model, drawn on the server as SVG."""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat import charts
from chat.models import Usage

pytestmark = pytest.mark.django_db

DAY = date(2026, 12, 1)


def bars(svg: str) -> list[str]:
    """Each bar segment's own words: "<day>: <tokens> tokens, <model>"."""
    return re.findall(r"<rect [^>]*><title>([^<]*)</title>", svg)


def test_each_day_is_a_bar_stacked_by_model_and_scaled_to_a_round_top() -> None:
    drawn = charts.tokens_by_day(
        [(DAY, "big", 300), (DAY, "small", 1200), (DAY - timedelta(days=2), "small", 50)],
        first=DAY - timedelta(days=6),
        last=DAY,
        label="Tokens",
    )
    assert bars(drawn) == ["2026-11-29: 50 tokens, small", "2026-12-01: 1,200 tokens, small",
                           "2026-12-01: 300 tokens, big"]  # fmt: skip
    assert '<svg class="usage-chart"' in drawn and 'aria-label="Tokens"' in drawn
    # The axis tops out at 2k (the day's 1,500 rounded up to 1, 2 or 5 times a power of ten).
    assert ">2k</text>" in drawn and ">1k</text>" in drawn
    heights = [float(h) for h in re.findall(r'height="([\d.]+)"', drawn)]
    assert heights[1] == pytest.approx(4 * heights[2])  # 1,200 against 300 tokens
    assert "small</li>" in drawn and "big</li>" in drawn  # the legend, biggest first
    assert drawn.index("small</li>") < drawn.index("big</li>")


def test_past_six_models_the_rest_share_one_colour_and_names_are_escaped() -> None:
    points = [(DAY, f"model-{n}", 100 * (10 - n)) for n in range(8)] + [(DAY, "<script>", 1)]
    drawn = charts.tokens_by_day(points, first=DAY, last=DAY, label="Tokens")
    assert drawn.count("<li>") == 6 and "other models</li>" in drawn
    assert "<script>" not in drawn and "&lt;script&gt;" not in drawn  # one of the others
    assert "model-7" not in drawn
    assert charts.tokens_by_day([], first=DAY, last=DAY, label="Tokens").startswith('<p class="muted">')
    assert [charts.nice_ceiling(n) for n in (0, 1, 3, 7, 20, 21, 999, 1001)] == [
        0,
        1,
        5,
        10,
        20,
        50,
        1000,
        2000,
    ]


def test_the_usage_page_and_the_admin_report_draw_the_chart(
    client: Client, admin_client: Client, owner: Any, other_user: Any
) -> None:
    today = timezone.localdate()
    Usage.objects.create(user=owner, day=today, model="small", prompt_tokens=1000, completion_tokens=234)
    Usage.objects.create(user=other_user, day=today, model="small", prompt_tokens=98765, completion_tokens=1)
    client.force_login(owner)
    page = client.get(reverse("usage")).content.decode()
    assert bars(page) == [f"{today.isoformat()}: 1,234 tokens, small"]  # another user's are not in it
    assert "css/chart.css" in page
    report = admin_client.get("/admin/chat/usage/report/").content.decode()
    assert bars(report) == [f"{today.isoformat()}: 100,000 tokens, small"]  # every user together
