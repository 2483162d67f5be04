"""The chat in German, end to end: a browser whose language is German gets the pages
and the page scripts' words in German (Django's JavaScript catalog), against the
real stack (uvicorn, a worker with the tiny model, embedded Redis).
Run in their own pytest process (see the Makefile), as the other browser tests.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from chat.models import Profile
from tests.browser.conftest import TIMEOUT_MS
from tests.stack import ARTIFACTS, Stack

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

PASSWORD = "a long test passphrase"
expect.set_options(timeout=TIMEOUT_MS)  # shared machines can be slow


@pytest.fixture(scope="module")
def stack(shared_stack: Stack) -> Stack:
    return shared_stack


@pytest.fixture
def german(browser: Browser, stack: Stack) -> Iterator[Page]:
    # The browser's own language: Chromium sends it as Accept-Language.
    context = browser.new_context(
        base_url=stack.base_url, locale="de-DE", viewport={"width": 1280, "height": 800}
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def test_a_german_browser_chats_in_german(german: Page, django_user_model: Any) -> None:
    user = django_user_model.objects.create_user(username="greta", password=PASSWORD)
    Profile.objects.update_or_create(
        user=user, defaults={"default_params": {"max_new_tokens": 12, "temperature": 0}}
    )
    page = german
    page.goto("/login/")
    expect(page.locator("h1")).to_have_text("Anmelden")
    page.fill("#id_username", "greta")
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Anmelden").click()
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.locator("html")).to_have_attribute("lang", "de")

    # The server's words (the template) and the script's (the catalog) alike.
    expect(page.locator("#chat-title")).to_have_text("Neuer Chat")
    expect(page.locator("#input")).to_have_attribute("placeholder", re.compile("^Nachricht an SanjAI"))
    expect(page.locator("#send")).to_be_enabled()  # the page's scripts are ready
    page.fill("#input", "Wie heißt die Hauptstadt von Frankreich?")
    page.press("#input", "Enter")
    reply = page.locator(".bubble.assistant").last
    expect(reply).to_have_attribute("data-status", "done")
    actions = reply.locator(".actions")
    expect(actions.get_by_role("button", name="Diese Antwort kopieren")).to_have_text("Kopieren")
    expect(actions.get_by_role("button", name="Die letzte Antwort neu erzeugen")).to_be_visible()
    expect(actions.get_by_role("button", name="Gute Antwort")).to_be_visible()
    expect(reply.locator(".usage")).to_contain_text("Antwort-Tokens")
    page.locator(".bubble.user .actions").get_by_role("button", name="Bearbeiten").click()
    expect(page.get_by_role("button", name="Speichern und erneut senden")).to_be_visible()
    page.get_by_role("button", name="Abbrechen").click()

    # Nothing of the page is left in English.
    shown = page.locator("body").inner_text()
    for english in [
        "New chat",
        "Settings",
        "Copy",
        "Regenerate",
        "Search messages",
        "Keyboard shortcuts",
        "Send",
    ]:
        assert not re.search(rf"\b{english}\b", shown), f"{english!r} is shown in English"
    page.get_by_role("button", name="Einstellungen", exact=True).click()
    expect(page.locator("#settings")).to_contain_text("Wiederholungsstrafe")
    page.screenshot(path=str(ARTIFACTS / "german-desktop.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    expect(page.locator(".bubble.assistant").last).to_have_attribute("data-status", "done")
    page.screenshot(path=str(ARTIFACTS / "german-phone.png"), full_page=True)

    # The profile's choice outranks the browser's: French from the next page on.
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto("/profile/")
    page.get_by_label("Sprache").select_option("fr")
    page.get_by_role("button", name="Speichern", exact=True).click()
    expect(page.get_by_text("Profil enregistré.")).to_be_visible()
    expect(page.locator("html")).to_have_attribute("lang", "fr")
    page.goto("/")
    expect(page.locator("#new-chat")).to_have_text("+ Nouvelle discussion")
