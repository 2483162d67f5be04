"""Search in a real browser: Ctrl+K finds a message and opening it shows the message,
on the branch it sits on (Debian's Chromium driven by Playwright, the real stack)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from chat.models import Conversation, Message
from chat.services import conversations
from tests.browser.test_chat_browser import log_in, make_user
from tests.conftest import exchange
from tests.stack import ARTIFACTS, Stack

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def stack(shared_stack: Stack) -> Stack:
    return shared_stack


def garden(owner: Any) -> tuple[Conversation, Message]:
    """A conversation whose reply mentioning marigolds is the older version, not the one shown."""
    chat = conversations.conversation_create(user=owner, title="Garden plans")
    for n in range(6):  # enough above it that it must be scrolled to
        exchange(chat, f"Question {n} about the soil", "Loam, mostly. " * 30)
    asked, older = exchange(
        chat, "What should I plant by the gate?", "Plant marigolds by the gate: they keep aphids off."
    )
    # Regenerated: the newer version is the one shown.
    shown = Message.objects.create(
        conversation=chat, parent=asked, role="assistant", content="Tulips, in October."
    )
    Conversation.objects.filter(pk=chat.pk).update(current_leaf=shown)
    return chat, older


def test_ctrl_k_finds_a_message_and_opens_it_on_its_branch(page: Page, django_user_model: Any) -> None:
    owner = make_user(django_user_model, "searcher")
    stranger = make_user(django_user_model, "stranger")
    exchange(conversations.conversation_create(user=stranger, title="Theirs"), "marigolds?", "Marigolds.")
    chat, older = garden(owner)
    elsewhere = conversations.conversation_create(user=owner, title="Another chat")
    exchange(elsewhere, "Hello", "Hi there.")
    log_in(page, "searcher")
    page.goto(f"/c/{elsewhere.pk}/")
    expect(page.locator("#send")).to_be_enabled()  # the socket is open

    page.keyboard.press("Control+k")
    dialog = page.get_by_role("dialog", name="Search your messages")
    expect(dialog).to_be_visible()
    page.keyboard.type("marigold")
    hits = dialog.get_by_role("option")
    expect(hits).to_have_count(1)  # the stranger's marigolds stay theirs
    expect(hits.first.locator("mark")).to_have_text("marigolds")
    expect(hits.first).to_contain_text("Garden plans")
    page.screenshot(path=str(ARTIFACTS / "search-desktop.png"))

    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(rf"/c/{chat.pk}/#message-{older.pk}$"))
    found = page.locator(f'.bubble[data-id="{older.pk}"]')
    expect(found).to_have_attribute("data-found", "")  # shown: its branch was chosen
    expect(found).to_contain_text("Plant marigolds by the gate")
    expect(found).to_be_in_viewport()
    expect(found.locator(".branch-position")).to_have_text("1/2")
    page.screenshot(path=str(ARTIFACTS / "search-found-desktop.png"))
    chat.refresh_from_db()
    assert chat.current_leaf_id == older.pk

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"/c/{elsewhere.pk}/")
    expect(page.locator("#send")).to_be_enabled()
    page.get_by_role("button", name="Show conversations").click()
    page.get_by_role("button", name=re.compile("^Search messages")).click()
    page.keyboard.type("aphids")
    expect(hits.first.locator("mark")).to_have_text("aphids")
    page.screenshot(path=str(ARTIFACTS / "search-phone.png"))
    hits.first.click()
    expect(found).to_have_attribute("data-found", "")
    expect(found).to_be_in_viewport()
    page.screenshot(path=str(ARTIFACTS / "search-found-phone.png"))
