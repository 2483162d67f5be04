"""The installable app: the web app manifest, the service worker and its offline page.

The worker only ever stores the shell listed here, all of it the same for
everybody: the offline page is rendered without a request, so no user, session,
CSRF token or flash message can reach it. Pages and answers are never stored;
the conversation list an offline page shows is kept by the browser itself
(static/js/pwa.js), per user, and cleared at logout.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.contrib.staticfiles import finders
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.templatetags.static import static
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

# The colours of static/css/app.css's light theme (--bg, and --surface for the
# header); the page's <meta name="theme-color"> gives the dark ones, which a
# manifest cannot. tests/test_pwa.py holds these to app.css.
BACKGROUND_LIGHT = "#f7f7f8"
BACKGROUND_DARK = "#16171a"
SURFACE_LIGHT = "#ffffff"
SURFACE_DARK = "#1f2125"

ICONS: tuple[dict[str, str], ...] = (
    {"src": "icons/icon.svg", "sizes": "any", "type": "image/svg+xml", "purpose": "any"},
    {"src": "icons/icon-192.png", "sizes": "192x192", "type": "image/png", "purpose": "any"},
    {"src": "icons/icon-512.png", "sizes": "512x512", "type": "image/png", "purpose": "any"},
    {"src": "icons/icon-maskable-512.png", "sizes": "512x512", "type": "image/png", "purpose": "maskable"},
)

# What the offline page loads, and the icons. Not the chat page's own scripts:
# no chat page is ever served from the cache, so a stored chat.js could only be
# stale, never useful.
SHELL_STATIC = ("css/app.css", "css/offline.css", "js/offline.js", *(icon["src"] for icon in ICONS))
WORKER_SOURCE = "js/sw.js"


def manifest_data() -> dict[str, Any]:
    return {
        "id": "/",
        "name": "SanjAI",
        "short_name": "SanjAI",
        "description": "Chat with a language model that runs on your own hardware.",
        "start_url": "/",
        "scope": "/",
        "display": "standalone",
        "background_color": BACKGROUND_LIGHT,
        "theme_color": SURFACE_LIGHT,
        "icons": [{**icon, "src": static(icon["src"])} for icon in ICONS],
    }


def offline_html() -> str:
    # No request: context processors do not run, so nothing of whoever asked
    # (or whoever's cookies the worker's fetch carried) is in the page.
    return render_to_string("chat/offline.html", {"theme": "system"})


def _static_bytes(path: str) -> bytes:
    found = finders.find(path)
    if not isinstance(found, str):
        raise FileNotFoundError(f"static file {path} not found")
    with open(found, "rb") as handle:
        return handle.read()


def shell_version(parts: dict[str, bytes]) -> str:
    """A short hash of the shell: any change to a file in it names a new cache."""
    digest = hashlib.sha256()
    for name in sorted(parts):
        digest.update(f"{name}\0{len(parts[name])}\0".encode())
        digest.update(parts[name])
    return digest.hexdigest()[:16]


def shell_urls() -> list[str]:
    return [reverse("offline"), reverse("web_manifest"), *(static(path) for path in SHELL_STATIC)]


def worker_script() -> str:
    parts = {path: _static_bytes(path) for path in (*SHELL_STATIC, WORKER_SOURCE)}
    parts["offline"] = offline_html().encode()
    parts["manifest"] = json.dumps(manifest_data(), sort_keys=True).encode()
    config = {"version": shell_version(parts), "offline": reverse("offline"), "shell": shell_urls()}
    # Computed on each request (a few small files, well under a millisecond):
    # a cached value could outlive a deploy or an edit under runserver.
    return f"const SHELL = {json.dumps(config)};\n" + parts[WORKER_SOURCE].decode()


@require_safe
@never_cache
def service_worker(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(worker_script(), content_type="application/javascript; charset=utf-8")
    # Served from the root so its scope can be the whole site; the header says so
    # for browsers that check it.
    response["Service-Worker-Allowed"] = "/"
    return response


@require_safe
@never_cache
def web_manifest(request: HttpRequest) -> HttpResponse:
    # A view, not a static file: whitenoise has no type for .webmanifest, and
    # static() spells the icons' URLs wherever STATIC_URL points.
    return HttpResponse(json.dumps(manifest_data(), indent=2), content_type="application/manifest+json")


@require_safe
@never_cache
def offline(request: HttpRequest) -> HttpResponse:
    return HttpResponse(offline_html())
