"""Draw the app's icons: static/icons/icon.svg and its PNG renders.

The SVG and the PNGs come from the same few shapes (a speech bubble with three
dots, the page's "thinking" look) so they cannot drift apart. No SVG renderer
is installed here, so the PNGs are drawn with Pillow at four times the size and
scaled down, which antialiases the edges. The files are committed; run this
again only when the design changes:

    .venv/bin/python scripts/make_icons.py
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

ICONS = Path(__file__).resolve().parent.parent / "static" / "icons"
SIZE = 512  # the design's own units
ACCENT = "#2f6fdf"  # --accent, light, in static/css/app.css
WHITE = "#ffffff"
CORNER = 112  # the "any" icons' rounded corners; a maskable icon is full-bleed
# A maskable icon's platform mask may cut everything outside the central circle
# of 40% of its size (https://web.dev/articles/maskable-icon).
SAFE_RADIUS = 0.4 * SIZE


@dataclass(frozen=True)
class Shapes:
    """The bubble, its tail and the dots, in SIZE units, moved and scaled."""

    scale: float

    def point(self, x: float, y: float) -> tuple[float, float]:
        # The bubble with its tail spans y 128..412: centre it, then scale about the middle.
        centre = SIZE / 2
        return (centre + (x - centre) * self.scale, centre + (y - 14 - centre) * self.scale)

    def bubble(self) -> tuple[tuple[float, float], tuple[float, float], float]:
        return self.point(104, 128), self.point(408, 344), 64 * self.scale

    def tail(self) -> list[tuple[float, float]]:
        return [self.point(168, 330), self.point(144, 412), self.point(256, 330)]

    def dots(self) -> list[tuple[tuple[float, float], float]]:
        return [(self.point(x, 236), 26 * self.scale) for x in (180, 256, 332)]

    def farthest(self) -> float:
        """How far the drawing reaches from the centre, for the maskable safe zone."""
        (left, top), (right, bottom), radius = self.bubble()
        centre = SIZE / 2
        corners = [
            math.hypot(x - centre, y - centre) + radius
            for x in (left + radius, right - radius)
            for y in (top + radius, bottom - radius)
        ]
        tips = [math.hypot(x - centre, y - centre) for x, y in self.tail()]
        return max(corners + tips)


def svg(shapes: Shapes, *, corner: float) -> str:
    (left, top), (right, bottom), radius = shapes.bubble()
    tail = " ".join(f"{x:g},{y:g}" for x, y in shapes.tail())
    dots = "".join(f'<circle cx="{x:g}" cy="{y:g}" r="{r:g}"/>' for (x, y), r in shapes.dots())
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {SIZE} {SIZE}">'
        f'<rect width="{SIZE}" height="{SIZE}" rx="{corner:g}" fill="{ACCENT}"/>'
        f'<g fill="{WHITE}"><rect x="{left:g}" y="{top:g}" width="{right - left:g}" '
        f'height="{bottom - top:g}" rx="{radius:g}"/><polygon points="{tail}"/></g>'
        f'<g fill="{ACCENT}">{dots}</g></svg>\n'
    )


def png(shapes: Shapes, *, corner: float, pixels: int) -> Image.Image:
    big = pixels * 4
    k = big / SIZE
    image = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((0, 0, big - 1, big - 1), radius=corner * k, fill=ACCENT)
    (left, top), (right, bottom), radius = shapes.bubble()
    draw.rounded_rectangle((left * k, top * k, right * k, bottom * k), radius=radius * k, fill=WHITE)
    draw.polygon([(x * k, y * k) for x, y in shapes.tail()], fill=WHITE)
    for (x, y), r in shapes.dots():
        draw.ellipse(((x - r) * k, (y - r) * k, (x + r) * k, (y + r) * k), fill=ACCENT)
    return image.resize((pixels, pixels), Image.Resampling.LANCZOS)


def main() -> None:
    ICONS.mkdir(parents=True, exist_ok=True)
    plain, maskable = Shapes(scale=1.0), Shapes(scale=0.8)
    if maskable.farthest() > SAFE_RADIUS:
        raise SystemExit(f"the maskable icon reaches {maskable.farthest():.0f} > {SAFE_RADIUS:.0f}")
    (ICONS / "icon.svg").write_text(svg(plain, corner=CORNER))
    for pixels in (192, 512):
        png(plain, corner=CORNER, pixels=pixels).save(ICONS / f"icon-{pixels}.png", optimize=True)
    # Full-bleed and opaque: the platform cuts its own shape out of it.
    png(maskable, corner=0, pixels=512).convert("RGB").save(ICONS / "icon-maskable-512.png", optimize=True)


if __name__ == "__main__":
    main()
