"""The chat page's script as ES modules (static/js/chat.js and static/js/chat/*.js), checked
without a browser: a module the server cannot serve as JavaScript, or a name imported that
its module does not export, stops the whole page at link time, before any of it runs.
Their behaviour in a browser is tests/browser/."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

JS = Path(__file__).resolve().parent.parent / "static" / "js"
MODULES = sorted([JS / "chat.js", *(JS / "chat").glob("*.js")])
IMPORT = re.compile(r'^import\s*\{([^}]*)\}\s*from\s*"([^"]+)";', re.M)
EXPORT = re.compile(r"^export\s+(?:async\s+)?(?:function|const|let)\s+(\w+)", re.M)
EXPORT_DESTRUCTURED = re.compile(r"^export\s+const\s*\{([^}]*)\}", re.M)


def _imports(path: Path) -> list[tuple[Path, set[str]]]:
    found = []
    for names, target in IMPORT.findall(path.read_text()):
        imported = {name.strip() for name in names.split(",") if name.strip()}
        found.append(((path.parent / target).resolve(), imported))
    return found


def _exports(path: Path) -> set[str]:
    source = path.read_text()
    names = set(EXPORT.findall(source))
    for group in EXPORT_DESTRUCTURED.findall(source):
        names |= {name.strip() for name in group.split(",")}
    return names


def test_the_chat_page_loads_its_script_as_a_module_after_the_scripts_it_reads(owner: Any) -> None:
    client = Client()
    client.force_login(owner)
    body = client.get("/").content.decode()
    assert '<script type="module" src="/static/js/chat.js"></script>' in body
    entry = body.index('src="/static/js/chat.js"')
    # Classic deferred scripts whose window.Sanjai* globals the modules read: before it.
    for script in ("http.js", "markdown.js", "voice.js", "memory.js", "attachments.js", "citations.js"):
        assert body.index(f'src="/static/js/{script}"') < entry, script
    # After it, as they always were: their document-level key and click listeners
    # run after the page's own (Esc, the drawer's outside tap).
    for script in ("search.js", "presets.js", "folders.js"):
        assert body.index(f'src="/static/js/{script}"') > entry, script


def test_every_module_imported_is_served_as_javascript() -> None:
    reached = {JS / "chat.js"}
    for path in MODULES:
        reached |= {target for target, _names in _imports(path)}
    assert reached == set(MODULES), "a module no one imports, or an import of a file not in static/js/chat/"
    client = Client()
    for path in MODULES:
        response = client.get(f"/static/{path.relative_to(JS.parent).as_posix()}")
        assert response.status_code == 200, path
        # Browsers refuse a module served with any other type.
        assert response["Content-Type"].split(";")[0] in {"text/javascript", "application/javascript"}, path


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.relative_to(JS).as_posix())
def test_every_name_imported_is_exported_by_its_module(path: Path) -> None:
    for target, names in _imports(path):
        missing = names - _exports(target)
        assert not missing, f"{path.name} imports {sorted(missing)} that {target.name} does not export"


def test_the_page_preloads_every_module_so_none_waits_for_the_one_importing_it(owner: Any) -> None:
    client = Client()
    client.force_login(owner)
    body = client.get("/").content.decode()
    preloaded = set(re.findall(r'<link rel="modulepreload" href="/static/js/chat/([\w-]+\.js)">', body))
    assert preloaded == {path.name for path in MODULES if path.parent.name == "chat"}
