"""The installable app: the manifest, the icons, the service worker's script and the offline page.

The worker running in a browser (install, offline shell, what it stores) is
tested in tests/browser/test_chat_browser.py.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.test.utils import override_settings

from chat import pwa_views
from chat.services import conversations

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent


def body(response: Any) -> bytes:
    # Whitenoise answers static files with a streaming response.
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content)
    return bytes(response.content)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def css_colour(name: str) -> tuple[str, str]:
    """A colour variable of static/css/app.css as (light, dark)."""
    css = (ROOT / "static" / "css" / "app.css").read_text()
    found = re.search(rf"--{name}:\s*light-dark\((#[0-9a-fA-F]{{6}}),\s*(#[0-9a-fA-F]{{6}})\)", css)
    assert found, f"--{name} not found in app.css"
    return found.group(1).lower(), found.group(2).lower()


def shell_config(client: Client) -> dict[str, Any]:
    script = client.get("/sw.js").content.decode()
    first = script.splitlines()[0]
    assert first.startswith("const SHELL = ") and first.endswith(";")
    config: dict[str, Any] = json.loads(first.removeprefix("const SHELL = ").removesuffix(";"))
    return config


def test_the_manifest_has_what_an_install_needs_and_every_icon_resolves(client: Client) -> None:
    response = client.get("/manifest.webmanifest")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/manifest+json"
    manifest = json.loads(response.content)
    assert manifest["name"] == "SanjAI" and manifest["short_name"] == "SanjAI"
    assert manifest["start_url"] == "/" and manifest["scope"] == "/"
    assert manifest["display"] == "standalone"
    assert manifest["background_color"] == css_colour("bg")[0]
    assert manifest["theme_color"] == css_colour("surface")[0]

    sizes: set[tuple[str, str]] = set()
    for icon in manifest["icons"]:
        fetched = client.get(icon["src"])
        assert fetched.status_code == 200, icon["src"]
        assert fetched["Content-Type"].split(";")[0] == icon["type"], icon["src"]
        data = body(fetched)
        if icon["type"] == "image/png":
            width, height = png_size(data)
            assert icon["sizes"] == f"{width}x{height}", icon["src"]
        else:
            assert icon["type"] == "image/svg+xml" and icon["sizes"] == "any"
            assert data.startswith(b"<svg ") and b'viewBox="0 0 512 512"' in data
        sizes.add((icon["sizes"], icon["purpose"]))
    # Chromium's install criteria: 192 and 512; Android masks a maskable one to its own shape.
    assert {("192x192", "any"), ("512x512", "any"), ("512x512", "maskable")} <= sizes


def test_the_maskable_icon_is_opaque_edge_to_edge() -> None:
    from PIL import Image

    with Image.open(ROOT / "static" / "icons" / "icon-maskable-512.png") as image:
        assert image.mode == "RGB"  # no transparent corners for the mask to show
        assert image.getpixel((0, 0)) == image.getpixel((511, 511)) == (0x2F, 0x6F, 0xDF)


@pytest.mark.parametrize("theme", ["system", "light", "dark"])
def test_pages_link_the_manifest_icons_worker_and_the_themes_colours(
    client: Client, owner: Any, theme: str
) -> None:
    from chat.models import Profile

    Profile.objects.update_or_create(user=owner, defaults={"theme": theme})
    client.force_login(owner)
    page = client.get("/").content.decode()
    assert '<link rel="manifest" href="/manifest.webmanifest">' in page
    assert '<link rel="icon" href="/static/icons/icon.svg" type="image/svg+xml">' in page
    assert f'id="pwa-script" data-service-worker="/sw.js" data-user-id="{owner.pk}"' in page
    light, dark = css_colour("surface")
    colours = re.findall(r'<meta name="theme-color" content="(#\w+)"', page)
    assert colours == {"system": [light, dark], "light": [light], "dark": [dark]}[theme]


def test_a_logged_out_page_names_no_user(client: Client) -> None:
    page = client.get("/login/").content.decode()
    assert '<link rel="manifest"' in page
    assert "data-user-id" not in page  # so pwa.js drops any list it kept


def test_the_worker_is_served_from_the_root_uncached_as_javascript(client: Client) -> None:
    response = client.get("/sw.js")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/javascript; charset=utf-8"
    assert response["Service-Worker-Allowed"] == "/"
    assert "no-cache" in response["Cache-Control"]
    assert "default-src 'self'" in response["Content-Security-Policy"]
    assert client.post("/sw.js").status_code == 405


def test_the_shell_is_only_shared_static_files_and_the_offline_page(client: Client) -> None:
    config = shell_config(client)
    assert re.fullmatch(r"[0-9a-f]{16}", config["version"])
    assert config["offline"] == "/offline/" and "/offline/" in config["shell"]
    for url in config["shell"]:
        assert not url.startswith(("/api/", "/v1/", "/chat", "/c/", "/s/", "/ws/", "/admin/")), url
        anonymous = Client()  # the worker fetches the shell without cookies
        assert anonymous.get(url).status_code == 200, url
    static = [url for url in config["shell"] if url.startswith(settings.STATIC_URL)]
    assert "/static/js/chat.js" not in static  # no chat page is served from the cache
    assert set(static) >= {"/static/css/app.css", "/static/js/offline.js", "/static/icons/icon-192.png"}


def test_the_version_changes_when_a_shell_file_changes(client: Client, tmp_path: Path) -> None:
    before = shell_config(client)["version"]
    assert shell_config(client)["version"] == before  # stable while nothing changes
    copy = tmp_path / "static"
    shutil.copytree(ROOT / "static", copy, ignore=shutil.ignore_patterns("vendor"))
    with override_settings(STATICFILES_DIRS=[copy]):
        assert shell_config(client)["version"] == before  # the same files, copied
        (copy / "css" / "offline.css").write_text((copy / "css" / "offline.css").read_text() + "\n/* v2 */\n")
        assert shell_config(client)["version"] != before


def test_the_version_hash_covers_names_and_contents() -> None:
    version = pwa_views.shell_version({"a": b"1", "b": b"2"})
    assert pwa_views.shell_version({"b": b"2", "a": b"1"}) == version
    assert pwa_views.shell_version({"a": b"1", "b": b"3"}) != version
    assert pwa_views.shell_version({"a": b"12", "b": b""}) != version  # not just the bytes joined


def test_the_offline_page_holds_nothing_of_whoever_fetched_it(client: Client, owner: Any) -> None:
    conversations.conversation_create(user=owner, title="Olivia's secret plans")
    doomed = conversations.conversation_create(user=owner, title="To delete")
    client.force_login(owner)
    # A flash message now waits for the owner's next page ...
    assert client.post(f"/c/{doomed.pk}/delete/").status_code == 302

    response = client.get("/offline/")
    assert response.status_code == 200
    assert "no-cache" in response["Cache-Control"]
    page = response.content.decode()
    assert "You are offline" in page
    assert "olivia" not in page.lower() and "secret plans" not in page
    assert "csrfmiddlewaretoken" not in page and "data-user-id" not in page
    # Nothing to send from: no message box, no form at all.
    assert "<textarea" not in page and "<form" not in page and 'id="composer"' not in page
    assert page == Client().get("/offline/").content.decode()  # the same for everybody
    # ... and is still there after the offline page: it was neither shown nor spent.
    assert "Conversation deleted." not in page
    assert "Conversation deleted." in client.get("/").content.decode()
