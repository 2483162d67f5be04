"""The page follows a reply across the death of its web server (static/js/chat/resume.js).

A reply streams; the web process the page's socket is on is killed (SIGKILL,
as a crashed replica) and a new one starts on the same address, as the proxy
sends a reconnecting page to the replica that answers. The page reconnects,
and the reply's text goes on from where it was: it never goes back, and grows
while the worker writes. The snapshot's stored text is up to a second behind
the stream; before resume.js the page replaced its text with it and dropped
every delta past its end, so the reply stood still until it finished.

Run in their own pytest process with the other browser tests (see the Makefile).
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from chat.models import Message
from chat.services import conversations
from tests.browser.conftest import TIMEOUT_MS
from tests.stack import Stack, _wait, _web_ready, stack_on_test_database

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

PASSWORD = "a long test passphrase"
MARKDOWN_SLACK = 5  # characters the rendering of a growing text may take back at its end
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def stack(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from tests.tiny_model import build_endless_model

    # Deeper than the other browser tests' (slower per token): the reply must outlast a
    # server's death, a restart and the seconds sampled after, on a loaded CI machine too
    # (at 64 layers a reply once ended before the restarted server answered).
    model = build_endless_model(tmp_path_factory.mktemp("replica-browser-model"), layers=160)
    env = {"MODEL_PATH": str(model), "GENERATION_MAX_NEW_TOKENS": "4000"}
    with stack_on_test_database(name="browser-replicas", env=env) as running:
        yield running


def shown(page: Page) -> str:
    return page.locator(".bubble.assistant").last.locator(".content").inner_text()


def test_a_reply_goes_on_where_it_was_after_the_pages_server_dies(
    page: Page, stack: Stack, django_user_model: Any
) -> None:
    django_user_model.objects.create_user(username="follower", password=PASSWORD)
    owner = django_user_model.objects.get(username="follower")
    conversation = conversations.conversation_create(user=owner)
    page.goto("/login/")
    page.fill("#id_username", "follower")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/$"))
    page.goto(f"/c/{conversation.pk}/")
    page.wait_for_load_state("domcontentloaded")
    page.click("#settings-toggle")
    page.fill("input[name=max_new_tokens]", "3900")
    page.fill("input[name=temperature]", "0")
    page.click("text=Save settings")
    expect(page.locator("#settings-status")).to_have_text("Saved.")
    expect(page.locator("#send")).to_be_enabled()
    page.fill("#input", "Tell me a very long story")
    page.press("#input", "Enter")
    reply = page.locator(".bubble.assistant").last
    expect(reply).to_have_attribute("data-status", "streaming")
    expect(reply.locator(".content")).not_to_have_text("")

    stack.web.send_signal(signal.SIGKILL)
    stack.web.wait(timeout=20)
    before = shown(page)
    expect(page.locator("#banner")).to_contain_text("Connection lost")
    stack.web = stack.start_web()
    _wait("the web server again", lambda: _web_ready(stack.base_url), 60, [stack.web])
    expect(page.locator("#banner")).to_be_hidden()  # reconnected

    # Sampled while the worker writes: the text only grows, from what was shown.
    # (Lengths of the rendered text: Markdown may redraw a few characters at its end.)
    lengths = []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and reply.get_attribute("data-status") == "streaming":
        lengths.append(len(shown(page)))
        time.sleep(0.25)
    assert len(lengths) >= 12, f"the reply ended {len(lengths) / 4:g} s after the reconnect: too soon"
    for earlier, later in zip([len(before), *lengths], lengths, strict=False):
        assert later >= earlier - MARKDOWN_SLACK, f"the text went back: {earlier} -> {later} characters"
    assert lengths[-1] > len(before) + 20, "the reply stood still after the reconnect"
    assert len(set(lengths)) > 4, "the text grew only in jumps (snapshots), not with the stream"

    if reply.get_attribute("data-status") == "streaming":
        page.click("#stop")
    expect(reply).not_to_have_attribute("data-status", "streaming")
    stored = Message.objects.get(conversation=conversation, role="assistant")
    assert stored.status in {Message.Status.CANCELLED, Message.Status.DONE}
    assert len(stored.content) >= lengths[-1] - MARKDOWN_SLACK
