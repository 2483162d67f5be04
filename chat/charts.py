"""Usage as a picture: tokens per day, stacked by model, drawn on the server as SVG.

No script and no library: an inline <svg> whose colours come from the page's
stylesheet (so it follows the theme), a <title> on each bar segment with its
figures for a pointer or a screen reader, and the table beside it for the
numbers. The most-used models get a colour each; the rest share "other".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date, timedelta

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 8, 12, 28  # room for the axes' labels
COLOURS = 6  # series-0 .. series-5 in app.css; the sixth is "other"
OTHER = "other models"


DayTokens = tuple[date, str, int]  # a day, a model, the tokens it used that day


def tokens_by_day(points: Iterable[DayTokens], *, first: date, last: date, label: str) -> SafeString:
    """A stacked bar a day from `first` to `last` (both included), and its legend."""
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    by_model: dict[str, int] = defaultdict(int)
    cells: dict[tuple[date, str], int] = defaultdict(int)
    for day, model, tokens in points:
        if first <= day <= last and tokens > 0:
            by_model[model or "default"] += tokens
            cells[day, model or "default"] += tokens
    if not by_model:
        return format_html('<p class="muted">{}</p>', "No tokens used in these days.")
    ranked = sorted(by_model, key=lambda model: (-by_model[model], model))
    # A colour each for the biggest; past COLOURS models, the last colour is everyone else's.
    legend_names = ranked if len(ranked) <= COLOURS else [*ranked[: COLOURS - 1], OTHER]
    series = {model: min(ranked.index(model), COLOURS - 1) for model in ranked}
    stacks: dict[date, dict[int, int]] = defaultdict(lambda: defaultdict(int))  # day -> series -> tokens
    for (day, model), tokens in cells.items():
        stacks[day][series[model]] += tokens
    top = nice_ceiling(max(sum(stacks[day].values()) for day in days))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / len(days)
    bars = []  # (series, x, y, width, height, day, tokens, model): numbers formatted here
    for n, day in enumerate(days):
        y = float(TOP + plot_h)
        for index, tokens in sorted(stacks[day].items()):
            height = plot_h * tokens / top
            y -= height
            x = LEFT + n * slot + slot * 0.1
            bars.append(
                (index, f"{x:.1f}", f"{y:.1f}", f"{slot * 0.8:.1f}", f"{height:.1f}", day.isoformat(),
                 f"{tokens:,}", legend_names[index])
            )  # fmt: skip
    rects = format_html_join(
        "",
        '<rect class="chart-bar series-{}" x="{}" y="{}" width="{}" height="{}">'
        "<title>{}: {} tokens, {}</title></rect>",
        bars,
    )
    lines = [(f"{TOP + plot_h * (1 - share):.1f}", short(int(top * share))) for share in (0, 0.5, 1)]
    ticks = format_html_join(
        "",
        '<line class="chart-grid" x1="{}" x2="{}" y1="{}" y2="{}"></line>'
        '<text class="chart-label" x="{}" y="{}" dy="4" text-anchor="end">{}</text>',
        ((LEFT, WIDTH - RIGHT, y, y, LEFT - 6, y, text) for y, text in lines),
    )
    marked = sorted({0, len(days) // 2, len(days) - 1})
    dates = format_html_join(
        "",
        '<text class="chart-label" x="{}" y="{}" text-anchor="middle">{}</text>',
        ((f"{LEFT + n * slot + slot / 2:.1f}", HEIGHT - 8, days[n].strftime("%b %d")) for n in marked),
    )
    legend = format_html_join(
        "", '<li><span class="chart-swatch series-{}"></span>{}</li>', enumerate(legend_names)
    )
    svg = format_html(
        '<svg class="usage-chart" viewBox="0 0 {} {}" role="img" aria-label="{}">{}{}{}</svg>',
        WIDTH,
        HEIGHT,
        label,
        ticks,
        rects,
        dates,
    )
    return format_html('<figure class="chart">{}<ul class="chart-legend">{}</ul></figure>', svg, legend)


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (an axis' top)."""
    if value <= 0:
        return 0
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def short(tokens: int) -> str:
    """12000 -> 12k, 3500000 -> 3.5M: an axis label."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if tokens >= size:
            return f"{tokens / size:.3g}{suffix}"
    return str(tokens)
