"""The interface in German, French and Spanish: chosen by the browser or the profile,
formatted for the language, every marked string translated, no string left unmarked."""

from __future__ import annotations

import ast
import gettext
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils.translation.template import templatize

from chat.models import ApiKey, Profile
from chat.services import accounts, conversations, sharing
from tests.conftest import exchange
from tests.i18n_check import _literals, script_unmarked, template_unmarked

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
LANGUAGES = ["de", "fr", "es"]
# The Django admin keeps Django's own translations; the service worker shows no words.
TEMPLATES = sorted(path for path in (ROOT / "templates").rglob("*.html") if "admin" not in path.parts)
SCRIPTS = sorted(path for path in (ROOT / "static/js").rglob("*.js") if path.name != "sw.js")


def _login(client: Client, user: Any) -> Client:
    client.force_login(user)
    return client


# --- The language of a page ----------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "heading", "button"),
    [("en", "Log in", "Forgot your password?"), ("de", "Anmelden", "Passwort vergessen?"),
     ("fr", "Se connecter", "Mot de passe oublié ?"), ("es", "Iniciar sesión", "¿Olvidaste tu contraseña?")],
)  # fmt: skip
def test_the_browser_language_picks_the_page_language(language: str, heading: str, button: str) -> None:
    response = Client().get(reverse("login"), HTTP_ACCEPT_LANGUAGE=f"{language},en;q=0.5")
    body = response.content.decode()
    assert response["Content-Language"] == language
    assert f'<html lang="{language}"' in body
    assert f"<h1>{heading}</h1>" in body and button in body.replace("\u202f", " ")


def test_a_language_without_a_translation_falls_back_to_english() -> None:
    body = Client().get(reverse("login"), HTTP_ACCEPT_LANGUAGE="ja,zh;q=0.8").content.decode()
    assert '<html lang="en"' in body and "<h1>Log in</h1>" in body


def test_the_chat_page_in_german(owner: Any) -> None:
    chat = conversations.conversation_create(user=owner, title="")
    client = _login(Client(), owner)
    body = client.get(
        reverse("conversation", kwargs={"conversation_id": chat.pk}), HTTP_ACCEPT_LANGUAGE="de"
    ).content.decode()
    shown = ["Neuer Chat", "Neue Unterhaltung", "Deine Dokumente", "Einstellungen speichern", "Senden"]
    for words in [*shown, "Tastenkürzel", "Nachricht an SanjAI \N{EN DASH} Enter zum Senden"]:
        assert words in body, words
    assert "New chat" not in body and "Save settings" not in body
    # Number inputs keep the dot whatever the language: "0,7" would not be a number to the browser.
    assert re.search(r'name="temperature" min="0(\.0)?" max="2(\.0)?" step="0\.05"', body)
    assert "eine Zahl in (0, 1]" in body


def test_the_profile_language_wins_over_the_browser(owner: Any) -> None:
    client = _login(Client(), owner)
    form = {"display_name": "", "email": "", "default_system_prompt": "", "language": "fr",
            "max_new_tokens": 256, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1}  # fmt: skip
    response = client.post(reverse("profile"), form, HTTP_ACCEPT_LANGUAGE="de", follow=True)
    body = response.content.decode()
    assert Profile.objects.get(user=owner).language == "fr"
    assert (
        '<html lang="fr"' in body and "Profil enregistré." in body
    )  # the message, in the language just chosen
    assert '<option value="fr" selected>Français</option>' in body
    # Back to "the browser's language": Accept-Language decides again.
    response = client.post(
        reverse("profile"), {**form, "language": ""}, HTTP_ACCEPT_LANGUAGE="es", follow=True
    )
    assert '<html lang="es"' in response.content.decode() and "Perfil guardado." in response.content.decode()


def test_a_language_not_offered_is_refused_on_the_profile(owner: Any) -> None:
    client = _login(Client(), owner)
    form = {"display_name": "", "email": "", "default_system_prompt": "", "language": "xx",
            "max_new_tokens": 256, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1}  # fmt: skip
    response = client.post(reverse("profile"), form)
    assert response.status_code == 400
    assert "xx is not one of the available choices" in response.content.decode()
    assert Profile.objects.get(user=owner).language == ""


def test_a_new_session_starts_in_the_profile_language(owner: Any, other_user: Any) -> None:
    Profile.objects.update_or_create(user=owner, defaults={"language": "es"})
    client = Client()
    login = client.post(reverse("login"), {"username": "olivia", "password": "correct horse battery"})
    assert login.status_code == 302
    body = client.get(reverse("home"), HTTP_ACCEPT_LANGUAGE="de").content.decode()
    assert '<html lang="es"' in body and "Nuevo chat" in body
    # Another user's choice is theirs alone: this one has none, so the browser decides.
    other = _login(Client(), other_user)
    assert '<html lang="de"' in other.get(reverse("home"), HTTP_ACCEPT_LANGUAGE="de").content.decode()


def test_the_profile_page_and_its_forms_are_translated(owner: Any) -> None:
    body = _login(Client(), owner).get(reverse("profile"), HTTP_ACCEPT_LANGUAGE="de").content.decode()
    shown = ["Anzeigename", "Sprache", "Die Sprache des Browsers", "Wiederholungsstrafe", "Voreinstellungen"]
    for words in [*shown, "Gedächtnis", "API-Schlüssel erstellen", "Mein Konto löschen"]:
        assert words in body, words


# --- Dates and numbers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "number", "created"),
    [("en", "1,234,567", "12/02/2026"), ("de", "1.234.567", "02.12.2026"),
     ("fr", "1\u00a0234\u00a0567", "02/12/2026"), ("es", "1\u00a0234\u00a0567", "02/12/2026")],
)  # fmt: skip
def test_numbers_and_dates_follow_the_language(owner: Any, language: str, number: str, created: str) -> None:
    Profile.objects.update_or_create(user=owner, defaults={"daily_token_limit": 1234567})
    key, _secret = accounts.api_key_create(user=owner, name="laptop")
    ApiKey.objects.filter(pk=key.pk).update(created="2026-12-02T15:04:00Z")
    client = _login(Client(), owner)
    usage = client.get(reverse("usage"), HTTP_ACCEPT_LANGUAGE=language).content.decode()
    assert f"<td>{number}</td>" in usage
    profile = client.get(reverse("profile"), HTTP_ACCEPT_LANGUAGE=language).content.decode()
    assert f"<td>{created}" in profile


def test_a_shared_page_gives_its_date_in_the_reader_language(owner: Any) -> None:
    chat = conversations.conversation_create(user=owner, title="Trip")
    exchange(chat, "Where to?", "Lisbon.")
    share = sharing.share_save(user=owner, conversation_id=chat.pk)
    type(share).objects.filter(pk=share.pk).update(updated="2026-12-02T10:00:00Z")
    url = reverse("shared", kwargs={"token": share.token})
    assert "2. Dezember 2026" in Client().get(url, HTTP_ACCEPT_LANGUAGE="de").content.decode()
    assert "2 de diciembre de 2026" in Client().get(url, HTTP_ACCEPT_LANGUAGE="es").content.decode()


# --- The page scripts' catalog -------------------------------------------------------


def test_the_javascript_catalog_is_served_in_the_page_language() -> None:
    response = Client().get(reverse("javascript-catalog"), HTTP_ACCEPT_LANGUAGE="fr")
    assert response.status_code == 200 and "javascript" in response["Content-Type"]
    body = response.content.decode()
    assert '"New conversation": "Nouvelle conversation"' in body
    assert "django.interpolate" in body and "(n > 1)" in body  # French plural rule
    # Only our own catalog: not the admin's script strings.
    assert "Show all" not in body and "Tout afficher" not in body


def test_every_page_loads_the_catalog_before_its_scripts(owner: Any) -> None:
    body = _login(Client(), owner).get(reverse("home")).content.decode()
    catalog = body.index(f'src="{reverse("javascript-catalog")}"')
    assert catalog < body.index("js/http.js") < body.index("js/chat.js")


# --- Complete translations -----------------------------------------------------------


def _catalog(language: str, domain: str) -> gettext.GNUTranslations:
    with open(ROOT / "locale" / language / "LC_MESSAGES" / f"{domain}.mo", "rb") as compiled:
        return gettext.GNUTranslations(compiled)


def _marked_in_templates() -> set[str]:
    found: set[str] = set()
    for path in TEMPLATES:
        code = templatize(path.read_text(), origin=str(path))
        for call in re.finditer(r"\b(n?gettext)\((u'(?:[^'\\]|\\.)*')", code):
            found.add(ast.literal_eval(call.group(2)))
    return found


def _marked_in_python() -> set[str]:
    names = {"_", "gettext", "gettext_lazy", "ngettext"}
    found: set[str] = set()
    for path in (ROOT / "chat").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            called = isinstance(node, ast.Call) and getattr(node.func, "id", None) in names and node.args
            if called and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def _marked_in_scripts() -> set[str]:
    found: set[str] = set()
    for path in SCRIPTS:
        source = path.read_text()
        for literal in _literals(source):
            if re.search(r"\bn?gettext\(\s*$", source[max(0, literal.start - 20) : literal.start]):
                found.add(ast.literal_eval(f'"{literal.text}"'))
    return found


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_marked_string_has_a_translation(language: str) -> None:
    django_catalog = _catalog(language, "django")._catalog  # type: ignore[attr-defined]
    script_catalog = _catalog(language, "djangojs")._catalog  # type: ignore[attr-defined]
    keys = {key[0] if isinstance(key, tuple) else key for key in django_catalog}
    script_keys = {key[0] if isinstance(key, tuple) else key for key in script_catalog}
    missing = sorted((_marked_in_templates() | _marked_in_python()) - keys)
    assert not missing, f"{language}: not in locale/{language}/LC_MESSAGES/django.po: {missing}"
    missing = sorted(_marked_in_scripts() - script_keys)
    assert not missing, f"{language}: not in locale/{language}/LC_MESSAGES/djangojs.po: {missing}"


def _po_entries(path: Path) -> list[tuple[str, list[str]]]:
    """(msgid, its translations) for each entry of a .po file, its header left out."""
    entries: list[tuple[list[str], list[str]]] = []
    target: list[str] = []  # where a continued string ("...") belongs
    for line in path.read_text().splitlines():
        match = re.match(r'(msgid|msgid_plural|msgstr(\[\d\])?) (".*")$', line)
        if match and match.group(1) == "msgid":
            entries.append(([ast.literal_eval(match.group(3))], []))
            target = entries[-1][0]
        elif match and match.group(1) == "msgid_plural":
            target = [ast.literal_eval(match.group(3))]  # the plural's English: not kept
        elif match:
            entries[-1][1].append(ast.literal_eval(match.group(3)))
            target = entries[-1][1]
        elif line.startswith('"'):
            target[-1] += ast.literal_eval(line)
    return [(msgid[0], translations) for msgid, translations in entries if msgid[0]]


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("domain", ["django", "djangojs"])
def test_translations_keep_their_placeholders_and_the_compiled_files_match(
    language: str, domain: str
) -> None:
    po = ROOT / "locale" / language / "LC_MESSAGES" / f"{domain}.po"
    compiled = _catalog(language, domain)
    entries = _po_entries(po)
    assert len(entries) > 100
    assert "#, fuzzy" not in po.read_text(), (
        f"{po}: a fuzzy entry is a guess to check, and msgfmt leaves it out"
    )
    for msgid, translations in entries:
        holes = sorted(re.findall(r"%\(\w+\)s|\{\w+\}|</?\w+", msgid))
        for text in translations:
            assert text, f"{po}: {msgid!r} is not translated"
            assert sorted(re.findall(r"%\(\w+\)s|\{\w+\}|</?\w+", text)) == holes, (
                f"{po}: {msgid!r} -> {text!r}"
            )
        # The committed .mo says what the .po says: it was compiled after the last edit.
        assert compiled.gettext(msgid) == translations[0] or len(translations) > 1, (
            f"{po}: stale .mo for {msgid!r}"
        )


@pytest.mark.skipif(shutil.which("msgfmt") is None, reason="GNU gettext's msgfmt is not installed")
def test_the_catalogs_pass_msgfmt_check(tmp_path: Path) -> None:
    for po in sorted((ROOT / "locale").rglob("*.po")):
        checked = subprocess.run(
            ["msgfmt", "--check", "-o", str(tmp_path / "out.mo"), str(po)], capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stderr


def test_the_languages_offered_are_the_ones_translated() -> None:
    offered = {code for code, _name in settings.LANGUAGES} - {"en"}
    assert offered == {path.name for path in (ROOT / "locale").iterdir() if path.is_dir()} == set(LANGUAGES)


# --- Nothing shown is left unmarked -----------------------------------------------------


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_template_shows_a_string_not_marked_for_translation(path: Path) -> None:
    unmarked = template_unmarked(path, ROOT)
    assert not unmarked, "mark these with {% translate %} or {% blocktranslate %}:\n" + "\n".join(
        map(str, unmarked)
    )


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_page_script_shows_a_string_not_marked_for_translation(path: Path) -> None:
    unmarked = script_unmarked(path, ROOT)
    assert not unmarked, "wrap these in gettext() (interpolate() for values):\n" + "\n".join(
        map(str, unmarked)
    )


def test_the_template_check_finds_unmarked_words(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text(
        '{% load i18n %}<h1>{% translate "Fine" %}</h1>\n<p>Left in English</p>\n'
        '<button title="Close">✕</button>\n{{ title|default:"Untitled chat" }}\n'
        "<p>{% blocktranslate %}Marked {{ name }}{% endblocktranslate %} <kbd>Ctrl</kbd> SanjAI</p>\n"
    )
    found = [(item.line, item.text) for item in template_unmarked(page, tmp_path)]
    assert found == [(2, "Left in English"), (3, "Close"), (4, "Untitled chat")]


def test_the_script_check_finds_unmarked_words(tmp_path: Path) -> None:
    script = tmp_path / "page.js"
    script.write_text(
        '"use strict";\n'
        'el.textContent = "Left in English";\n'
        "b.title = `Delete ${name}?`;\n"
        'el.className = "muted empty-chat"; el.querySelector(".bubble .content");\n'
        'el.textContent = gettext("Marked");\n'
        'n.textContent = interpolate(ngettext("%(n)s file", "%(n)s files", count), { n: count }, true);\n'
        "const re = /Not a string/; // A comment in English\n"
        'el.setAttribute("aria-label", "Unmarked label");\n'
    )
    found = [(item.line, item.text) for item in script_unmarked(script, tmp_path)]
    assert found == [(2, "Left in English"), (3, "Delete ${…}?"), (8, "Unmarked label")]
