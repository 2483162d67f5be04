"""The chat page in a real browser (Debian's Chromium driven by Playwright)
against the real stack: uvicorn, a Celery worker with the tiny model, embedded Redis.

Run in their own pytest process (see the Makefile): Playwright's sync API runs
an event loop of its own on the main thread.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from chat.models import Conversation, Message
from chat.services import conversations
from inference.presence import live_workers, ready_worker_ids
from tests.browser.conftest import TIMEOUT_MS
from tests.stack import ARTIFACTS, Stack, stack_on_test_database

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

PASSWORD = "a long test passphrase"
expect.set_options(timeout=TIMEOUT_MS)  # shared machines can be slow


@pytest.fixture(scope="module")
def stack(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from tests.tiny_model import build_endless_model

    # Replies that run to their max_new_tokens, so one can run long enough to
    # be stopped by a click (the plain tiny model may end a greedy reply in 0.1 s).
    model = build_endless_model(tmp_path_factory.mktemp("browser-model"))
    env = {"MODEL_PATH": str(model), "GENERATION_MAX_NEW_TOKENS": "4000"}
    with stack_on_test_database(name="browser", env=env) as running:
        yield running


def log_in(page: Page, username: str) -> None:
    page.goto("/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/$"))
    # The page's scripts run just before DOMContentLoaded: a click before then is lost.
    page.wait_for_load_state("domcontentloaded")


def make_user(django_user_model: Any, username: str) -> Any:
    return django_user_model.objects.create_user(username=username, password=PASSWORD)


def last_reply(page: Page):
    return page.locator(".bubble.assistant").last


def send(page: Page, text: str) -> None:
    expect(page.locator("#send")).to_be_enabled()  # the socket is open
    page.fill("#input", text)
    page.press("#input", "Enter")


def test_sign_up_chat_watch_it_stream_and_find_it_after_reload(page: Page) -> None:
    page.goto("/signup/")
    page.fill("#id_username", "newcomer")
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.locator("#input")).to_be_focused()  # signed up, and on a new chat
    # Greedy decoding: a sampled reply from the random test model may end after a token or two.
    # Set as the profile's default, which the home page's new chat takes.
    page.goto("/profile/")
    page.fill("#id_temperature", "0")
    # Long enough to be still streaming once the new chat's socket is open (the
    # first message goes over HTTP; its socket connects when the answer comes).
    page.fill("#id_max_new_tokens", "600")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_text("Profile saved.")).to_be_visible()
    page.goto("/")
    expect(page.locator("#input")).to_be_focused()  # a new chat: type at once

    # Count how many times the reply's text changes while it streams in.
    page.evaluate(
        """() => {
            window.__updates = 0;
            new MutationObserver(() => {
                const reply = [...document.querySelectorAll('.bubble.assistant')].pop();
                if (reply && reply.querySelector('.content').textContent.trim()) window.__updates++;
            }).observe(document.getElementById('messages'),
                       {subtree: true, childList: true, characterData: true});
        }"""
    )
    # Shift+Enter makes a new line instead of sending.
    page.fill("#input", "Hello there")
    page.press("#input", "Shift+Enter")
    page.type("#input", "second line")
    expect(page.locator(".bubble.user")).to_have_count(0)
    page.press("#input", "Enter")
    expect(page.locator(".bubble.user .content")).to_have_text("Hello there\nsecond line")
    expect(last_reply(page)).to_have_attribute("data-status", "done")
    assert page.evaluate("window.__updates") > 1
    reply_html = last_reply(page).locator(".content").inner_html()
    assert last_reply(page).locator(".content").inner_text().strip()
    expect(page.locator("#input")).to_have_value("")

    page.screenshot(path=str(ARTIFACTS / "chat-desktop.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    expect(last_reply(page)).to_have_attribute("data-status", "done")
    expect(page.locator("#sidebar")).not_to_be_in_viewport()  # a drawer at phone width
    page.screenshot(path=str(ARTIFACTS / "chat-phone.png"), full_page=True)
    page.click("#sidebar-toggle")
    expect(page.locator("#sidebar")).to_be_in_viewport()
    page.wait_for_timeout(300)  # the drawer's slide-in
    page.screenshot(path=str(ARTIFACTS / "chat-phone-sidebar.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})

    page.reload()
    expect(page.locator(".bubble.user .content")).to_have_text("Hello there\nsecond line")
    expect(last_reply(page)).to_have_attribute("data-status", "done")
    assert last_reply(page).locator(".content").inner_html() == reply_html
    expect(page.locator(".conversation-link").first).to_have_text("Hello there second line")


def test_empty_input_is_refused_in_the_page(page: Page, django_user_model: Any) -> None:
    owner = make_user(django_user_model, "quiet")
    conversation = conversations.conversation_create(user=owner)
    log_in(page, "quiet")
    page.goto(f"/c/{conversation.pk}/")
    expect(page.locator("#send")).to_be_enabled()
    page.fill("#input", "   ")
    page.press("#input", "Enter")
    expect(page.locator("#banner")).to_have_text("Type a message first.")
    assert not Message.objects.filter(conversation=conversation).exists()


def test_over_budget_the_page_says_when_it_resets_and_keeps_the_message(
    page: Page, django_user_model: Any
) -> None:
    from django.utils import timezone

    from chat.models import Profile, Usage

    owner = make_user(django_user_model, "thrifty")
    Profile.objects.update_or_create(user=owner, defaults={"daily_token_limit": 100})
    Usage.objects.create(
        user=owner, day=timezone.localdate(), model="tiny", prompt_tokens=90, completion_tokens=10
    )
    conversation = conversations.conversation_create(user=owner)
    log_in(page, "thrifty")
    page.goto(f"/c/{conversation.pk}/")
    send(page, "Just one more question")
    expect(page.locator("#banner")).to_contain_text("used 100 of your 100 tokens for this day")
    expect(page.locator("#banner")).to_contain_text("Your budget resets at")
    expect(page.locator("#input")).to_have_value("Just one more question")
    assert not Message.objects.filter(conversation=conversation).exists()


def test_the_settings_panel_picks_the_model_and_shows_its_state(page: Page, django_user_model: Any) -> None:
    owner = make_user(django_user_model, "chooser")
    conversation = conversations.conversation_create(user=owner)
    log_in(page, "chooser")
    page.goto(f"/c/{conversation.pk}/")
    page.click("#settings-toggle")
    choice = page.locator("#model-choice option").first
    expect(choice).to_have_text(re.compile(r"^\S+ \(ready\)$"))  # the one model, with its worker up
    name = choice.get_attribute("value")
    page.select_option("#model-choice", name)
    page.click("text=Save settings")
    expect(page.locator("#settings-status")).to_have_text("Saved.")
    conversation.refresh_from_db()
    assert conversation.model == name


def test_stop_keeps_the_partial_reply_then_regenerate(page: Page, django_user_model: Any) -> None:
    owner = make_user(django_user_model, "stopper")
    conversation = conversations.conversation_create(user=owner)
    log_in(page, "stopper")
    page.goto(f"/c/{conversation.pk}/")
    page.click("#settings-toggle")
    page.fill("input[name=max_new_tokens]", "3900")
    page.fill("input[name=temperature]", "0")  # greedy: sampling could end the reply early
    page.click("text=Save settings")
    expect(page.locator("#settings-status")).to_have_text("Saved.")

    send(page, "Tell me a very long story")
    expect(last_reply(page)).to_have_attribute("data-status", "streaming")
    expect(page.locator("#send")).to_be_disabled()  # no second message while one streams
    expect(last_reply(page).locator(".content")).not_to_have_text("")
    page.click("#stop")
    expect(last_reply(page)).to_have_attribute("data-status", "cancelled")
    expect(page.locator("#send")).to_be_enabled()
    reply = Message.objects.get(conversation=conversation, role="assistant")
    assert reply.status == Message.Status.CANCELLED
    assert reply.content and reply.completion_tokens < 3900

    page.fill("input[name=max_new_tokens]", "20")
    page.click("text=Save settings")
    expect(page.locator("#settings-status")).to_have_text("Saved.")
    last_reply(page).get_by_role("button", name="Regenerate the last reply").click()
    expect(page.locator(f'.bubble[data-id="{reply.pk}"]')).to_have_count(0)
    expect(last_reply(page)).to_have_attribute("data-status", "done")
    regenerated = (
        Message.objects.filter(conversation=conversation, role="assistant").exclude(pk=reply.pk).get()
    )
    assert regenerated.completion_tokens <= 20
    assert Message.objects.filter(pk=reply.pk).exists()  # kept, on its own branch


def test_edit_the_last_message_and_resend(page: Page, django_user_model: Any) -> None:
    owner = make_user(django_user_model, "editor")
    conversation = conversations.conversation_create(user=owner)
    conversations.conversation_settings_update(
        user=owner, conversation_id=conversation.pk, system_prompt="", params={"max_new_tokens": 10}
    )
    log_in(page, "editor")
    page.goto(f"/c/{conversation.pk}/")
    send(page, "First wording")
    expect(last_reply(page)).to_have_attribute("data-status", "done")
    page.get_by_role("button", name="Edit your last message and resend").click()
    page.fill(".edit-box textarea", "Better wording")
    page.click("text=Save and resend")
    expect(page.locator(".bubble.user .content")).to_have_text("Better wording")
    expect(last_reply(page)).to_have_attribute("data-status", "done")
    # The first wording is kept, on its own branch.
    assert [m.content for m in conversation.messages.filter(role="user")] == [
        "First wording",
        "Better wording",
    ]


def test_branches_are_made_switched_between_kept_across_a_reload_and_exported(
    page: Page, django_user_model: Any
) -> None:
    owner = make_user(django_user_model, "brancher")
    conversation = conversations.conversation_create(user=owner, title="Branches")
    conversations.conversation_settings_update(
        user=owner, conversation_id=conversation.pk, system_prompt="", params={"max_new_tokens": 8}
    )
    log_in(page, "brancher")
    page.goto(f"/c/{conversation.pk}/")
    send(page, "First wording")
    expect(last_reply(page)).to_have_attribute("data-status", "done")
    expect(page.locator(".branch-nav")).to_have_count(0)  # one version: no control
    first_reply = Message.objects.get(conversation=conversation, role="assistant")

    last_reply(page).get_by_role("button", name="Regenerate the last reply").click()
    expect(last_reply(page)).not_to_have_attribute("data-id", str(first_reply.pk))
    expect(last_reply(page)).to_have_attribute("data-status", "done")
    expect(last_reply(page).locator(".branch-position")).to_have_text("2/2")
    expect(page.locator(".bubble")).to_have_count(2)  # the old reply is not shown beside it
    second_reply = Message.objects.filter(role="assistant").exclude(pk=first_reply.pk).get()

    last_reply(page).get_by_role("button", name="Previous version of this reply").click()
    expect(last_reply(page)).to_have_attribute("data-id", str(first_reply.pk))
    expect(last_reply(page).locator(".branch-position")).to_have_text("1/2")
    expect(last_reply(page).get_by_role("button", name="Previous version of this reply")).to_be_disabled()
    page.reload()  # the switch was stored
    expect(last_reply(page)).to_have_attribute("data-id", str(first_reply.pk))
    expect(last_reply(page).locator(".branch-position")).to_have_text("1/2")

    page.get_by_role("button", name="Edit your last message and resend").click()
    page.fill(".edit-box textarea", "Better wording")
    page.click("text=Save and resend")
    question = page.locator(".bubble.user")
    expect(question.locator(".content")).to_have_text("Better wording")
    expect(question.locator(".branch-position")).to_have_text("2/2")
    expect(last_reply(page)).to_have_attribute("data-status", "done")
    expect(last_reply(page).locator(".branch-nav")).to_have_count(0)  # the new question's only reply

    question.get_by_role("button", name="Previous version of this message").click()
    expect(question.locator(".content")).to_have_text("First wording")
    expect(question.locator(".branch-position")).to_have_text("1/2")
    # That question's branch goes on down its newest reply.
    expect(last_reply(page)).to_have_attribute("data-id", str(second_reply.pk))
    expect(last_reply(page).locator(".branch-position")).to_have_text("2/2")
    page.screenshot(path=str(ARTIFACTS / "branches-desktop.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()  # at phone width from the start: the sidebar drawer is closed, not sliding shut
    expect(last_reply(page).locator(".branch-position")).to_have_text("2/2")
    expect(question.locator(".branch-position")).to_have_text("1/2")
    page.screenshot(path=str(ARTIFACTS / "branches-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})  # the export links show at desktop width

    with page.expect_download() as download_info:
        page.click("#export-json")
    exported = json.loads(Path(download_info.value.path()).read_text())
    by_id = {m["id"]: m for m in exported["messages"]}
    assert [(m["role"], m["content"]) for m in exported["messages"] if m["role"] == "user"] == [
        ("user", "First wording"),
        ("user", "Better wording"),
    ]
    assert len(exported["messages"]) == 5 and exported["current_id"] == second_reply.pk
    assert by_id[first_reply.pk]["parent_id"] == by_id[second_reply.pk]["parent_id"]
    with page.expect_download() as download_info:
        page.click("#export-md")
    markdown = Path(download_info.value.path()).read_text()
    assert "## Other branches" in markdown and "Better wording" in markdown


def test_rename_and_delete_from_the_sidebar(page: Page, django_user_model: Any) -> None:
    owner = make_user(django_user_model, "tidy")
    keep = conversations.conversation_create(user=owner, title="Keep me")
    doomed = conversations.conversation_create(user=owner, title="Old name")
    log_in(page, "tidy")
    page.goto(f"/c/{doomed.pk}/")
    page.once("dialog", lambda dialog: dialog.accept("New name"))
    page.get_by_role("button", name="Rename Old name").click()
    expect(page.locator("#chat-title")).to_have_text("New name")
    expect(page.locator(f'.conversation-item[data-id="{doomed.pk}"] .conversation-link')).to_have_text(
        "New name"
    )
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete New name").click()
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.locator(".conversation-link")).to_have_text(["Keep me"])
    assert not Conversation.objects.filter(pk=doomed.pk).exists()
    assert Conversation.objects.filter(pk=keep.pk).exists()


def test_another_user_cannot_open_my_conversation(page: Page, django_user_model: Any) -> None:
    owner = make_user(django_user_model, "owner1")
    make_user(django_user_model, "snoop")
    conversation = conversations.conversation_create(user=owner, title="Private")
    log_in(page, "snoop")
    response = page.goto(f"/c/{conversation.pk}/")
    assert response is not None and response.status == 404
    expect(page.get_by_text("Private")).to_have_count(0)


def test_an_import_over_the_limit_returns_to_the_profile_page_saying_why(
    page: Page, django_user_model: Any, tmp_path: Path
) -> None:
    owner = make_user(django_user_model, "importer")
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 21_000_000)  # 1 MB over the 20 MB limit
    log_in(page, "importer")
    page.goto("/profile/")
    page.set_input_files("#import-file", str(big))
    page.get_by_role("button", name="Import", exact=True).click()
    expect(page).to_have_url(re.compile(r"/profile/\?import=too-large$"))
    expect(page.locator(".messages")).to_contain_text(
        "Import failed: The file is larger than 20 MB, the most an import may be."
    )
    assert not Conversation.objects.filter(owner=owner).exists()


def test_model_markdown_renders_but_never_runs_script_or_loads_remote_content(
    page: Page, django_user_model: Any
) -> None:
    owner = make_user(django_user_model, "reader")
    conversation = conversations.conversation_create(user=owner, title="Markdown")
    # Rows written directly: services would publish events from this thread,
    # where Playwright's event loop runs.
    question = Message.objects.create(
        conversation=conversation, role="user", content="<b>hi</b><script>window.__pwned='user'</script>"
    )
    hostile = (
        "Here is **bold** and `code`:\n\n```python\nprint('hi')\n```\n\n"
        "<script>window.__pwned = 'script'</script>\n"
        "<img src=x onerror=\"window.__pwned = 'img'\">\n"
        "![tracker](http://198.51.100.1/pixel.png)\n"
        "[click](javascript:window.__pwned='link') "
        '<a href="http://example.com" onclick="window.__pwned=\'a\'">x</a>\n\n'
        # Markup that would dress up as the app's own interface.
        '<div id="composer" class="banner" style="position:fixed;inset:0">Session expired</div>'
    )
    Message.objects.create(
        conversation=conversation, parent=question, role="assistant", status="done", content=hostile
    )
    remote_requests: list[str] = []
    page.on("request", lambda r: remote_requests.append(r.url) if "127.0.0.1" not in r.url else None)
    log_in(page, "reader")
    page.goto(f"/c/{conversation.pk}/")
    reply = last_reply(page)
    expect(reply.locator("strong")).to_have_text("bold")
    expect(reply.locator("pre code")).to_contain_text("print('hi')")
    expect(reply.locator("img, script")).to_have_count(0)
    expect(reply.locator(".content [id], .content [style]")).to_have_count(0)
    # Classes inside a reply are only the page's own (highlighting, code blocks), never the model's.
    classes = reply.locator(".content [class]").evaluate_all(
        "elements => elements.flatMap(element => [...element.classList])"
    )
    assert classes and all(
        re.fullmatch(r"hljs(-[\w-]+)?|[a-z]+_+|code-(block|head|lang)|copy-code", c) for c in classes
    ), classes
    expect(page.locator("#composer")).to_have_count(1)  # still only the real one
    expect(page.locator(".bubble.user .content")).to_have_text(
        "<b>hi</b><script>window.__pwned='user'</script>"
    )
    for link in reply.locator("a").all():
        assert not (link.get_attribute("href") or "").startswith("javascript:")
        assert link.get_attribute("onclick") is None
    assert page.evaluate("window.__pwned") is None
    assert remote_requests == []


def test_a_down_worker_is_explained_and_the_message_kept(
    page: Page, stack: Stack, django_user_model: Any
) -> None:
    import redis

    from inference.presence import KEY_PREFIX

    owner = make_user(django_user_model, "patient")
    conversation = conversations.conversation_create(user=owner)
    log_in(page, "patient")
    page.goto(f"/c/{conversation.pk}/")
    expect(page.locator("#send")).to_be_enabled()
    stack.pause_worker()  # its heartbeat thread stops too
    try:
        client = redis.Redis.from_url(stack.redis_url)
        client.delete(*client.keys(f"{KEY_PREFIX}*"))
        send(page, "Is anyone there?")
        expect(page.locator("#banner")).to_contain_text("No generation worker serves the model")
        expect(last_reply(page)).to_have_attribute("data-status", "failed")
    finally:
        stack.resume_worker()
        # Back in service once its next heartbeat lands (tests after this one need it).
        deadline = time.monotonic() + 30
        while not ready_worker_ids(stack.redis_url) and time.monotonic() < deadline:
            time.sleep(0.2)
    expect(page.locator(".bubble.user .content")).to_have_text("Is anyone there?")
    assert Message.objects.get(conversation=conversation, role="user").content == "Is anyone there?"


def test_a_message_sent_while_the_model_loads_waits_for_it_showing_the_progress(
    page: Page, stack: Stack, django_user_model: Any
) -> None:
    import redis

    from inference.presence import KEY_PREFIX, Heartbeat, WorkerInfo

    owner = make_user(django_user_model, "early")
    conversation = conversations.conversation_create(user=owner)
    (worker,) = live_workers(stack.redis_url)
    stack.pause_worker()  # its heartbeat thread stops too
    client = redis.Redis.from_url(stack.redis_url)
    client.delete(*client.keys(f"{KEY_PREFIX}*"))
    # What a worker announces while it converts its model, as inference.worker.start() does.
    info = WorkerInfo(
        id="starting/1/a",
        name="starting",
        model=worker.model,
        device="cpu",
        since=time.time(),
        state="loading",
    )
    loading = Heartbeat(stack.redis_url, info, ttl_s=60)
    loading.start()
    try:
        loading.update(progress=40, stage="converting the GGUF file (once)")
        log_in(page, "early")
        page.goto(f"/c/{conversation.pk}/")
        status = page.locator("#model-status")
        expect(status).to_have_text(f"Loading {worker.model} … 40% (converting the GGUF file (once))")
        # A message sent now waits for the model, its reply saying how far the loading is.
        send(page, "Are you there yet?")
        expect(last_reply(page)).to_have_attribute("data-status", "pending")
        expect(last_reply(page).locator(".waiting")).to_contain_text(f"Loading {worker.model} … 40%")
        loading.update(progress=80, stage="loading the weights")
        expect(last_reply(page).locator(".waiting")).to_contain_text("80% (loading the weights)")
        loading.update(state="ready", progress=100, stage="")
        expect(status).to_be_hidden()
    finally:
        loading.stop()
        stack.resume_worker()
        deadline = time.monotonic() + 30
        while not ready_worker_ids(stack.redis_url) and time.monotonic() < deadline:
            time.sleep(0.2)
    # The worker takes the job it has waited for: the reply comes, nothing to regenerate.
    expect(last_reply(page)).to_have_attribute("data-status", "done", timeout=30_000)
    reply = Message.objects.get(conversation=conversation, role="assistant")
    assert reply.status == "done" and reply.error_code == ""


def test_a_lost_connection_is_shown_and_the_page_recovers(
    page: Page, stack: Stack, django_user_model: Any
) -> None:
    owner = make_user(django_user_model, "restarter")
    conversation = conversations.conversation_create(user=owner)
    log_in(page, "restarter")
    page.goto(f"/c/{conversation.pk}/")
    send(page, "Before the restart")
    expect(last_reply(page)).to_have_attribute("data-status", "done")
    stack.web.terminate()  # the server goes away, as in a deploy or a crash
    stack.web.wait(timeout=20)
    expect(page.locator("#banner")).to_contain_text("Connection lost")
    expect(page.locator("#send")).to_be_disabled()
    page.fill("#input", "typed while offline")
    stack.web = stack.start_web()
    expect(page.locator("#banner")).to_be_hidden()  # reconnected by itself
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator(".bubble.user .content")).to_have_text(["Before the restart"])  # snapshot again
    expect(page.locator("#input")).to_have_value("typed while offline")  # nothing typed is lost


def test_the_api_docs_render_offline_under_the_content_security_policy(page: Page) -> None:
    remote_requests: list[str] = []
    blocked: list[str] = []
    page.on("request", lambda r: remote_requests.append(r.url) if "127.0.0.1" not in r.url else None)
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto("/api/v1/docs")
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
    expect(page.locator(".swagger-ui")).to_contain_text("/api/v1/conversations")
    assert remote_requests == []
    assert not [text for text in blocked if "script" in text], blocked


def test_code_is_highlighted_with_a_copy_button_and_math_is_rendered(
    page: Page, stack: Stack, django_user_model: Any
) -> None:
    owner = make_user(django_user_model, "mathematician")
    conversation = conversations.conversation_create(user=owner, title="Reading")
    code = "def add(a, b):\n    return a * b  # costs $5, not $x$\n\n\nprint(add(1, 2))"
    reply = (
        "Inline $a_1 * b_1 = c_*^2$ and \\(x_1 * y_1\\), at $5 and $10 a go.\n\n"
        "$$\n\\sum_{i=1}^{n} i = \\frac{n(n+1)}{2}\n$$\n\n"
        "\\[ E = mc^2 \\]\n\n"
        f"```python\n{code}\n```\n\n"
        "Shell: `echo $HOME$`"
    )
    # Rows written directly: services would publish events from this thread.
    question = Message.objects.create(conversation=conversation, role="user", content="Show me")
    Message.objects.create(
        conversation=conversation, parent=question, role="assistant", status="done", content=reply
    )
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.base_url)
    remote_requests: list[str] = []
    blocked: list[str] = []
    page.on("request", lambda r: remote_requests.append(r.url) if "127.0.0.1" not in r.url else None)
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    log_in(page, "mathematician")
    page.goto(f"/c/{conversation.pk}/")
    bubble = last_reply(page)

    block = bubble.locator(".code-block")
    expect(block).to_have_count(1)
    expect(block.locator(".code-lang")).to_have_text("python")
    expect(block.locator("code.hljs .hljs-keyword").first).to_have_text("def")
    expect(block.locator(".hljs-comment")).to_have_text("# costs $5, not $x$")  # no math inside code
    block.locator(".copy-code").click()
    expect(block.locator(".copy-code")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == code

    inline = bubble.locator(".math-inline math")
    expect(inline).to_have_count(2)
    display = bubble.locator(".math-display math[display=block]")
    expect(display).to_have_count(2)
    # The TeX reached KaTeX untouched by Markdown (no emphasis made of `*` or `_`).
    expect(inline.first.locator("annotation")).to_have_text("a_1 * b_1 = c_*^2")
    expect(display.first.locator("annotation")).to_have_text("\\sum_{i=1}^{n} i = \\frac{n(n+1)}{2}")
    expect(bubble.locator(".content em, .content strong")).to_have_count(0)
    expect(inline.first.locator("msub").first).to_be_visible()
    shown = bubble.locator(".content").inner_text()
    for source in ("$a_1", "\\(", "$$", "\\[", "\\sum", "\\frac"):
        assert source not in shown, (source, shown)
    assert "at $5 and $10 a go." in shown  # prices are not math
    expect(bubble.locator(".content p code").last).to_have_text("echo $HOME$")
    page.screenshot(path=str(ARTIFACTS / "reading-desktop.png"), full_page=True)
    assert remote_requests == []
    assert blocked == []


def test_usage_line_shows_the_stored_tokens_speed_and_wait(page: Page, django_user_model: Any) -> None:
    owner = make_user(django_user_model, "counter")
    conversation = conversations.conversation_create(user=owner)
    conversations.conversation_settings_update(
        user=owner, conversation_id=conversation.pk, system_prompt="", params={"max_new_tokens": 12}
    )
    log_in(page, "counter")
    page.goto(f"/c/{conversation.pk}/")
    send(page, "Count for me")
    expect(last_reply(page)).to_have_attribute("data-status", "done")
    row = Message.objects.get(conversation=conversation, role="assistant")
    assert row.completion_tokens and row.prompt_tokens and row.first_token_at and row.finished_at
    speed = row.completion_tokens / (row.finished_at - row.first_token_at).total_seconds()
    wait = (row.first_token_at - min(t for t in (row.queued_at, row.started_at) if t)).total_seconds()
    usage_line = re.compile(
        rf"^{row.prompt_tokens} prompt \+ {row.completion_tokens} completion tokens · "
        r"([\d.]+) tokens/s · ([\d.]+) s to first token$"
    )
    for source in ("the message.done event", "the snapshot after a reload"):
        line = last_reply(page).locator(".usage")
        expect(line).to_have_text(usage_line)
        shown_speed, shown_wait = map(float, usage_line.match(line.inner_text()).groups())  # type: ignore[union-attr]
        # Within the display's rounding (one decimal, two) plus the payload's (three).
        assert abs(shown_speed - speed) <= 0.0506, (source, shown_speed, speed)
        assert abs(shown_wait - wait) <= 0.0056, (source, shown_wait, wait)
        page.reload()
    expect(page.locator(".bubble.user .usage")).to_have_count(0)


def test_keyboard_shortcuts_stop_edit_and_start_a_new_chat(page: Page, django_user_model: Any) -> None:
    owner = make_user(django_user_model, "typist")
    conversation = conversations.conversation_create(user=owner)
    log_in(page, "typist")
    page.goto(f"/c/{conversation.pk}/")
    # Over this process's limit, within the stack's: set in the page, as test_stop_... does.
    page.click("#settings-toggle")
    page.fill("input[name=max_new_tokens]", "3900")
    page.fill("input[name=temperature]", "0")  # greedy: runs until stopped
    page.click("text=Save settings")
    expect(page.locator("#settings-status")).to_have_text("Saved.")

    send(page, "Write at length")
    expect(last_reply(page)).to_have_attribute("data-status", "streaming")
    expect(last_reply(page).locator(".content")).not_to_have_text("")
    page.keyboard.press("Escape")
    expect(last_reply(page)).to_have_attribute("data-status", "cancelled")
    reply = Message.objects.get(conversation=conversation, role="assistant")
    assert reply.status == Message.Status.CANCELLED and reply.completion_tokens < 3900

    # Up arrow in the empty box edits the last message; Esc leaves the edit.
    page.focus("#input")
    page.keyboard.press("ArrowUp")
    edit = page.locator(".bubble.user .edit-box textarea")
    expect(edit).to_be_focused()
    expect(edit).to_have_value("Write at length")
    page.keyboard.press("Escape")
    expect(edit).to_have_count(0)
    expect(page.locator(".bubble.user .content")).to_have_text("Write at length")
    page.fill("#input", "not empty")
    page.keyboard.press("ArrowUp")
    expect(page.locator(".edit-box")).to_have_count(0)  # only from an empty box
    page.fill("#input", "")

    # The shortcuts are listed in a dialog.
    page.keyboard.press("Control+/")
    help_dialog = page.get_by_role("dialog", name="Keyboard shortcuts")
    expect(help_dialog).to_be_visible()
    expect(help_dialog).to_contain_text("New chat")
    page.keyboard.press("Escape")
    expect(help_dialog).to_be_hidden()
    page.get_by_role("button", name="Keyboard shortcuts").click()
    expect(help_dialog).to_be_visible()
    help_dialog.get_by_role("button", name="Close").click()
    expect(help_dialog).to_be_hidden()

    page.keyboard.press("Control+Shift+O")
    expect(page).to_have_url(re.compile(r"/$"))  # the home page is the new chat: nothing stored yet
    expect(page.locator("#input")).to_be_focused()
    assert Conversation.objects.filter(owner=owner).count() == 1


def test_the_sidebar_opens_at_phone_width_on_the_home_page(page: Page, django_user_model: Any) -> None:
    owner = make_user(django_user_model, "pocket")
    conversations.conversation_create(user=owner, title="On the go")
    log_in(page, "pocket")
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/")
    sidebar = page.locator("#sidebar")
    expect(sidebar).not_to_be_in_viewport()
    toggle = page.get_by_role("button", name="Show conversations")
    expect(toggle).to_be_visible()
    toggle.click()
    expect(sidebar).to_be_in_viewport()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(sidebar.get_by_text("On the go")).to_be_visible()
    page.wait_for_timeout(300)  # the drawer's slide-in
    page.screenshot(path=str(ARTIFACTS / "home-phone-sidebar.png"))
    page.keyboard.press("Escape")
    expect(sidebar).not_to_be_in_viewport()
    toggle.click()
    expect(sidebar).to_be_in_viewport()
    page.mouse.click(370, 600)  # beside the drawer
    expect(sidebar).not_to_be_in_viewport()
    expect(toggle).to_have_attribute("aria-expanded", "false")


def test_the_home_page_is_a_new_chat_stored_with_its_first_message(
    page: Page, django_user_model: Any
) -> None:
    from chat.services import profiles

    owner = make_user(django_user_model, "lander")
    profiles.profile_update(user=owner, display_name="Lee", default_system_prompt="Answer briefly.")
    profiles.profile_defaults_update(user=owner, params={"max_new_tokens": 8, "temperature": 0})
    log_in(page, "lander")
    expect(page.locator("#input")).to_be_focused()  # type at once
    expect(page.locator("#chat-title")).to_have_text("New chat")
    page.goto("/profile/")  # leaving a new chat unused leaves nothing behind
    page.goto("/")
    expect(page.locator("#input")).to_be_focused()
    assert not Conversation.objects.filter(owner=owner).exists()

    page.screenshot(path=str(ARTIFACTS / "home-new-chat.png"))
    page.evaluate("window.__samePage = true")  # gone if the page reloads
    page.keyboard.type("Where do we start")
    page.keyboard.press("Enter")

    expect(page).to_have_url(re.compile(r"/c/\d+/$"))
    conversation = Conversation.objects.get(owner=owner)
    assert page.url.endswith(f"/c/{conversation.pk}/")
    assert page.evaluate("window.__samePage") is True
    assert conversation.system_prompt == "Answer briefly."  # the profile's defaults, as conversation_create
    expect(page.locator(".bubble.user .content")).to_have_text("Where do we start")
    expect(last_reply(page)).to_have_attribute("data-status", "done")
    reply = Message.objects.get(conversation=conversation, role="assistant")
    assert reply.params["max_new_tokens"] == 8 and reply.params["temperature"] == 0
    expect(page.locator("#chat-title")).to_have_text("Where do we start")
    item = page.locator(f'.conversation-item[data-id="{conversation.pk}"]')
    expect(item).to_have_class(re.compile(r"\bactive\b"))
    expect(item.locator(".conversation-link")).to_have_text("Where do we start")
    expect(page.locator("#settings-toggle")).to_be_visible()

    # The page is now the conversation's: the next message goes over its socket.
    send(page, "And then")
    expect(page.locator(".bubble.user")).to_have_count(2)
    expect(last_reply(page)).to_have_attribute("data-status", "done")
    assert page.evaluate("window.__samePage") is True
    assert Conversation.objects.filter(owner=owner).count() == 1
    assert conversation.messages.count() == 4

    # "+ New chat" is the home page again, with nothing stored until a message is sent.
    page.get_by_role("link", name="+ New chat").click()
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.locator("#input")).to_be_focused()
    assert Conversation.objects.filter(owner=owner).count() == 1


def test_a_preset_made_on_the_profile_starts_a_chat_in_one_click_or_from_slash(
    page: Page, django_user_model: Any
) -> None:
    owner = make_user(django_user_model, "assistant-maker")
    log_in(page, "assistant-maker")
    page.goto("/profile/")
    page.get_by_text("New preset").click()
    form = page.locator("#preset-form")
    form.get_by_label("Name").fill("Terse helper")
    form.get_by_label("Description").fill("Answers in a few words")
    form.get_by_label("System prompt").fill("Answer in a few words.")
    form.get_by_label("Max new tokens").fill("5")
    form.get_by_role("button", name="Save the preset").click()
    expect(page.locator("#presets")).to_contain_text("preset:terse-helper")
    page.screenshot(path=str(ARTIFACTS / "presets-profile.png"), full_page=True)

    # One click on the empty chat page, then the first message.
    page.goto("/")
    chip = page.get_by_role("button", name="Terse helper")
    chip.click()
    expect(chip).to_have_attribute("aria-pressed", "true")
    page.screenshot(path=str(ARTIFACTS / "presets-new-chat.png"))
    page.keyboard.type("Hello there")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/c/\d+/$"))
    expect(last_reply(page)).to_have_attribute("data-status", "done")
    conversation = Conversation.objects.get(owner=owner)
    assert conversation.preset is not None and conversation.system_prompt == "Answer in a few words."
    reply = Message.objects.get(conversation=conversation, role="assistant")
    assert reply.params["max_new_tokens"] == 5  # the preset's, not the profile's
    expect(page.locator("#preset-start")).to_have_count(0)
    page.reload()
    expect(page.locator("#preset-of")).to_have_text("From the preset Terse helper")

    # "/" in the empty box lists the presets; Enter picks one instead of sending (at phone width).
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/")
    page.locator("#input").fill("")
    page.keyboard.type("/ters")
    menu = page.get_by_role("listbox", name="Presets")
    expect(menu.get_by_role("option")).to_have_text(["Terse helper — Answers in a few words"])
    page.screenshot(path=str(ARTIFACTS / "presets-slash-phone.png"))
    page.keyboard.press("Enter")
    expect(menu).to_be_hidden()
    expect(page.locator("#input")).to_have_value("")
    expect(chip).to_have_attribute("aria-pressed", "true")
    assert Conversation.objects.filter(owner=owner).count() == 1  # nothing was sent


def test_remember_keeps_a_fact_only_on_a_click_and_the_next_reply_sees_it(
    page: Page, django_user_model: Any
) -> None:
    from chat import selectors
    from chat.models import MemoryFact

    owner = make_user(django_user_model, "rememberer")
    log_in(page, "rememberer")
    expect(page.locator("#send")).to_be_enabled()  # the page's scripts are running
    page.fill("#input", "I write Python and like short answers.")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/c/\d+/$"))
    expect(last_reply(page)).to_have_attribute("data-status", "done")
    mine = page.locator(".bubble.user").last
    expect(mine.get_by_role("button", name="Keep this in your memory")).to_be_visible()
    mine.get_by_role("button", name="Keep this in your memory").click()
    editor = mine.locator("form.remember textarea")
    expect(editor).to_have_value("I write Python and like short answers.")
    assert not MemoryFact.objects.filter(owner=owner).exists()  # suggested, not kept
    editor.fill("I write Python; answer briefly.")
    page.screenshot(path=str(ARTIFACTS / "memory-remember.png"))
    mine.get_by_role("button", name="Keep in memory").click()
    expect(mine.locator(".remembered")).to_have_text("Kept in memory")
    assert list(MemoryFact.objects.filter(owner=owner).values_list("text", flat=True)) == [
        "I write Python; answer briefly."
    ]
    send(page, "And now?")
    expect(page.locator(".bubble.user")).to_have_count(2)
    expect(last_reply(page)).to_have_attribute("data-status", "done")
    reply = Message.objects.filter(conversation__owner=owner, role="assistant").latest("id")
    assert "- I write Python; answer briefly." in selectors.reply_turns(reply=reply)[0].content
    page.goto("/profile/")
    expect(page.locator("#memory")).to_contain_text("I write Python; answer briefly.")


def test_a_refused_first_message_stays_in_the_box_and_stores_nothing(
    page: Page, django_user_model: Any
) -> None:
    from django.utils import timezone

    from chat.models import Profile, Usage

    owner = make_user(django_user_model, "spent")
    Profile.objects.update_or_create(user=owner, defaults={"daily_token_limit": 100})
    Usage.objects.create(user=owner, day=timezone.localdate(), model="tiny", prompt_tokens=100)
    log_in(page, "spent")
    send(page, "One more, please")
    expect(page.locator("#banner")).to_contain_text("used 100 of your 100 tokens for this day")
    expect(page.locator("#input")).to_have_value("One more, please")
    expect(page).to_have_url(re.compile(r"/$"))
    assert not Conversation.objects.filter(owner=owner).exists()


def test_pin_archive_and_page_the_sidebar(page: Page, django_user_model: Any) -> None:
    owner = make_user(django_user_model, "sorter")
    Conversation.objects.bulk_create(Conversation(owner=owner, title=f"Chat {n:02}") for n in range(53))
    pick = Conversation.objects.get(owner=owner, title="Chat 52")  # the newest: on the first page
    log_in(page, "sorter")
    sidebar = page.locator("#sidebar")

    # 50 at a time; More adds the rest into the same day group.
    expect(sidebar.locator(".conversation-item")).to_have_count(50)
    sidebar.get_by_role("link", name="More").click()
    expect(sidebar.locator(".conversation-item")).to_have_count(53)
    expect(sidebar.locator(".conversation-group h2")).to_have_text(["Today"])
    expect(sidebar.get_by_role("link", name="More")).to_have_count(0)

    sidebar.get_by_role("button", name="Pin Chat 10", exact=True).click()
    pinned = sidebar.locator('.conversation-group[data-group="pinned"]')
    expect(pinned.locator(".conversation-link")).to_have_text(["Chat 10"])
    expect(sidebar.locator(".conversation-group h2")).to_have_text(["Pinned", "Today"])
    page.reload()
    expect(pinned.locator(".conversation-link")).to_have_text(["Chat 10"])
    pinned.locator(".conversation-item").hover()
    page.screenshot(path=str(ARTIFACTS / "sidebar-pinned.png"))
    assert Conversation.objects.get(owner=owner, title="Chat 10").pinned_at is not None

    # Archive from inside the conversation: it leaves the list, not the page.
    page.goto(f"/c/{pick.pk}/")
    sidebar.get_by_role("button", name="Archive Chat 52", exact=True).click()
    expect(sidebar.locator(f'.conversation-item[data-id="{pick.pk}"]')).to_have_count(0)
    pick.refresh_from_db()
    assert pick.archived_at is not None
    sidebar.get_by_role("link", name="Archived conversations").click()
    expect(page).to_have_url(re.compile(r"/\?archived=1$"))
    expect(sidebar.locator(".conversation-link")).to_have_text(["Chat 52"])
    sidebar.get_by_role("button", name="Unarchive Chat 52", exact=True).click()
    expect(sidebar.get_by_text("No archived conversations.")).to_be_visible()
    sidebar.get_by_role("link", name="Back to all conversations").click()
    expect(sidebar.locator(f'.conversation-item[data-id="{pick.pk}"]')).to_have_count(1)
    expect(sidebar.locator(".conversation-link").first).to_have_text("Chat 10")  # pinned stays on top


def test_the_theme_toggle_is_kept_across_a_reload(page: Page, django_user_model: Any) -> None:
    from chat.models import Profile

    owner = make_user(django_user_model, "nightowl")
    page.emulate_media(color_scheme="light")
    log_in(page, "nightowl")
    html = page.locator("html")
    background = "() => getComputedStyle(document.body).backgroundColor"
    expect(html).to_have_attribute("data-theme", "system")
    light = page.evaluate(background)

    page.get_by_label("Theme").select_option("dark")
    expect(html).to_have_attribute("data-theme", "dark")
    dark = page.evaluate(background)
    assert dark != light
    for _ in range(50):  # the choice is saved in the background
        if Profile.objects.get(user=owner).theme == "dark":
            break
        time.sleep(0.1)
    assert Profile.objects.get(user=owner).theme == "dark"

    page.reload()
    expect(html).to_have_attribute("data-theme", "dark")  # from the server: no flash of the other theme
    expect(page.get_by_label("Theme")).to_have_value("dark")
    assert page.evaluate(background) == dark
    page.goto("/profile/")  # every page
    expect(html).to_have_attribute("data-theme", "dark")

    # "System" follows the browser; "Light" holds even when the system is dark.
    page.emulate_media(color_scheme="dark")
    page.get_by_label("Theme").select_option("system")
    expect(html).to_have_attribute("data-theme", "system")
    assert page.evaluate(background) == dark
    page.get_by_label("Theme").select_option("light")
    expect(html).to_have_attribute("data-theme", "light")
    assert page.evaluate(background) == light


def test_feedback_on_a_reply_reaches_the_admin_review_queue(
    page: Page, browser: Browser, stack: Stack, django_user_model: Any
) -> None:
    from chat.models import Feedback

    owner = make_user(django_user_model, "critic")
    conversation = conversations.conversation_create(user=owner, title="Capitals")
    question = Message.objects.create(
        conversation=conversation, role="user", content="What is the capital of France?"
    )
    reply = Message.objects.create(
        conversation=conversation, role="assistant", status="done", content="Lyon.", parent=question
    )
    log_in(page, "critic")
    page.goto(f"/c/{conversation.pk}/")
    page.get_by_role("button", name="Bad reply").click()
    expect(page.get_by_role("button", name="Bad reply")).to_have_attribute("aria-pressed", "true")
    page.get_by_role("button", name="Add a comment").click()
    page.get_by_label("What was good or bad about this reply?").fill("The capital is Paris.")
    page.get_by_role("button", name="Save comment").click()
    expect(page.get_by_role("button", name="Edit comment")).to_be_visible()
    page.reload()  # kept: the snapshot carries it
    expect(page.get_by_role("button", name="Bad reply")).to_have_attribute("aria-pressed", "true")
    feedback = Feedback.objects.get(message=reply)
    assert (feedback.rating, feedback.comment) == (Feedback.Rating.DOWN, "The capital is Paris.")

    django_user_model.objects.create_superuser("reviewer", password=PASSWORD)
    admin = browser.new_context(base_url=stack.base_url).new_page()
    admin.goto("/admin/login/")
    admin.fill("#id_username", "reviewer")
    admin.fill("#id_password", PASSWORD)
    admin.click("input[type=submit]")
    admin.goto("/admin/chat/feedback/?rating__exact=-1")
    expect(admin.get_by_text("The capital is Paris.")).to_be_visible()
    admin.goto(f"/admin/chat/feedback/{feedback.pk}/change/")  # the review: the conversation around it
    expect(admin.get_by_text("What is the capital of France?")).to_be_visible()
    expect(admin.get_by_text("(the rated reply)")).to_be_visible()
    admin.context.close()


def test_a_conversation_with_branches_feedback_code_math_and_usage_on_desktop_and_phone(
    page: Page, django_user_model: Any
) -> None:
    """One conversation with everything a reply can show, screenshotted at both widths."""
    from datetime import timedelta

    from django.utils import timezone

    from chat.models import Conversation, Feedback

    owner = make_user(django_user_model, "showcase")
    conversation = conversations.conversation_create(user=owner, title="Sorting and sums")
    question = Message.objects.create(
        conversation=conversation,
        role="user",
        content="How do I sort a list in Python, and what is 1 + 2 + … + n?",
    )
    started = timezone.now() - timedelta(seconds=10)
    timing = {
        "queued_at": started,
        "started_at": started,
        "first_token_at": started + timedelta(milliseconds=180),
        "finished_at": started + timedelta(seconds=3),
    }
    Message.objects.create(
        conversation=conversation,
        parent=question,
        role="assistant",
        status="done",
        content="Use `sorted()`.",
        prompt_tokens=31,
        completion_tokens=6,
        **timing,
    )
    answer = (
        "Use `sorted()` for a new list, or `.sort()` in place:\n\n"
        "```python\nnumbers = [3, 1, 2]\nprint(sorted(numbers))  # [1, 2, 3]\n"
        "numbers.sort(reverse=True)\n```\n\n"
        "And the sum is Gauss's formula, $\\sum_{k=1}^{n} k = \\frac{n(n+1)}{2}$:\n\n"
        "$$1 + 2 + \\dots + 100 = \\frac{100 \\cdot 101}{2} = 5050$$"
    )
    regenerated = Message.objects.create(
        conversation=conversation,
        parent=question,
        role="assistant",
        status="done",
        content=answer,
        prompt_tokens=31,
        completion_tokens=92,
        **timing,
    )
    Conversation.objects.filter(pk=conversation.pk).update(current_leaf=regenerated)
    Feedback.objects.create(
        message=regenerated, rating=Feedback.Rating.UP, comment="Clear, with the formula."
    )
    log_in(page, "showcase")
    page.goto(f"/c/{conversation.pk}/")
    reply = last_reply(page)
    expect(reply.locator(".branch-position")).to_have_text("2/2")
    expect(reply.locator("code.hljs .hljs-built_in").first).to_be_visible()
    expect(reply.locator("math")).to_have_count(2)
    expect(reply.locator(".usage")).to_contain_text("31 prompt + 92 completion tokens")
    expect(reply.get_by_role("button", name="Good reply")).to_have_attribute("aria-pressed", "true")
    page.screenshot(path=str(ARTIFACTS / "showcase-desktop.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    expect(last_reply(page).locator("math")).to_have_count(2)
    expect(page.locator("#sidebar")).not_to_be_in_viewport()  # the drawer is closed at phone width
    page.screenshot(path=str(ARTIFACTS / "showcase-phone.png"), full_page=True)


def test_a_conversation_shared_by_link_reads_anonymously_and_runs_nothing_from_it(
    page: Page, browser: Browser, stack: Stack, django_user_model: Any
) -> None:
    from tests.conftest import exchange

    owner = make_user(django_user_model, "sharer")
    conversation = conversations.conversation_create(user=owner, title="A shared one")
    hostile = (
        "Here is **bold** text.\n\n```python\nprint('hi')\n```\n\n"
        '<img src="x" onerror="window.pwned = 1"><script>window.pwned = 2</script>'
        '<a href="javascript:window.pwned = 3">a link</a>'
    )
    exchange(conversation, "Show me something", hostile)
    log_in(page, "sharer")
    page.goto(f"/c/{conversation.pk}/")
    page.get_by_role("button", name="Share", exact=True).click()
    page.get_by_role("button", name="Create a link").click()
    link = page.locator("#share-url")
    expect(link).to_have_value(re.compile(r"^http://127\.0\.0\.1:\d+/s/[A-Za-z0-9_-]{43}/$"))
    url = link.input_value()

    viewer = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        shared = viewer.new_page()
        errors: list[str] = []
        shared.on("pageerror", lambda error: errors.append(str(error)))
        shared.goto(url)
        reply = shared.locator(".bubble.assistant .content")
        expect(reply.locator("strong")).to_have_text("bold")  # rendered as the chat page renders it
        expect(reply.locator(".code-block .copy-code")).to_be_visible()
        expect(shared.get_by_text("A shared conversation, as it was on")).to_be_visible()  # no name
        assert shared.evaluate("window.pwned") is None
        assert reply.locator("img, script").count() == 0
        assert reply.locator("a").get_attribute("href") is None
        expect(shared.get_by_role("link", name="Log in to continue this conversation")).to_be_visible()
        assert errors == []
        shared.screenshot(path=str(ARTIFACTS / "share-desktop.png"), full_page=True)
        shared.set_viewport_size({"width": 390, "height": 844})
        shared.screenshot(path=str(ARTIFACTS / "share-phone.png"), full_page=True)

        page.get_by_role("button", name="Stop sharing").click()
        expect(link).to_be_hidden()
        assert shared.goto(url).status == 404
    finally:
        viewer.close()


def test_the_usage_page_draws_tokens_per_day_by_model(page: Page, django_user_model: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from chat.models import Usage

    owner = make_user(django_user_model, "counter")
    today = timezone.localdate()
    for back in range(0, 30, 3):
        day = today - timedelta(days=back)
        Usage.objects.create(
            user=owner, day=day, model="SmolLM2-135M-Instruct", prompt_tokens=400 + 90 * back
        )
        Usage.objects.create(user=owner, day=day, model="mistral-7b", completion_tokens=300 + 40 * back)
    log_in(page, "counter")
    page.goto("/usage/")
    chart = page.locator("svg.usage-chart")
    expect(chart).to_be_visible()
    assert chart.locator("rect.chart-bar").count() == 20
    expect(page.locator(".chart-legend")).to_contain_text("SmolLM2-135M-Instruct")
    # Coloured by the stylesheet, under the page's CSP: not the black of an unstyled SVG.
    fill = chart.locator("rect.series-0").first.evaluate("element => getComputedStyle(element).fill")
    assert fill == "rgb(0, 114, 178)"
    page.screenshot(path=str(ARTIFACTS / "usage-chart-desktop.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(ARTIFACTS / "usage-chart-phone.png"), full_page=True)


def test_the_app_installs_and_offline_shows_the_list_last_seen_which_logout_forgets(
    page: Page, django_user_model: Any
) -> None:
    owner = make_user(django_user_model, "traveller")
    lodger = make_user(django_user_model, "lodger")
    packing = conversations.conversation_create(user=owner, title="Packing list for Lisbon")
    conversations.conversation_create(user=owner, title="Train times")
    conversations.conversation_create(user=lodger, title="The lodger's diary")
    csp: list[str] = []
    page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
    log_in(page, "traveller")
    page.goto(f"/c/{packing.pk}/")
    page.wait_for_function("navigator.serviceWorker.controller !== null")  # installed, and in charge

    # Chromium's own reading of the manifest, and what it says stands between the page and installing.
    cdp = page.context.new_cdp_session(page)
    manifest = cdp.send("Page.getAppManifest")
    assert manifest["url"].endswith("/manifest.webmanifest") and manifest["errors"] == []
    blockers = [e["errorId"] for e in cdp.send("Page.getInstallabilityErrors")["installabilityErrors"]]
    assert [e for e in blockers if e != "in-incognito"] == []  # a Playwright context is incognito

    stored = page.evaluate("JSON.parse(localStorage.getItem('sanjai:conversations'))")
    assert stored["user"] == str(owner.pk)
    assert sorted(c["title"] for c in stored["conversations"]) == ["Packing list for Lisbon", "Train times"]
    cached = page.evaluate(
        """async () => {
            const found = [];
            for (const name of await caches.keys()) {
                for (const request of await (await caches.open(name)).keys()) {
                    found.push([name, new URL(request.url).pathname]);
                }
            }
            return found;
        }"""
    )
    assert len({name for name, _ in cached}) == 1 and cached[0][0].startswith("sanjai-shell-")
    paths = {path for _, path in cached}
    assert {"/offline/", "/manifest.webmanifest", "/static/css/app.css", "/static/js/offline.js"} <= paths
    assert not [p for p in paths if p.startswith(("/api/", "/v1/", "/c/", "/s/", "/chat", "/ws/"))], paths

    page.context.set_offline(True)
    page.reload()
    expect(page.get_by_role("heading", name="You are offline")).to_be_visible()
    expect(page).to_have_url(re.compile(rf"/c/{packing.pk}/$"))
    links = page.locator("#offline-list a")
    expect(links).to_have_count(2)
    expect(links.filter(has_text="Packing list for Lisbon")).to_have_attribute("href", f"/c/{packing.pk}/")
    expect(page.locator("#offline-saved")).to_contain_text("As last seen on this device")
    expect(page.locator("#offline")).not_to_contain_text("diary")
    # Never the conversation itself, and nothing to send from.
    assert page.locator(".bubble, textarea, form, #send").count() == 0
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(247, 247, 248)"  # app.css, from the worker's cache
    page.screenshot(path=str(ARTIFACTS / "offline-desktop.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(ARTIFACTS / "offline-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})

    page.context.set_offline(False)
    page.get_by_role("button", name="Try again").click()  # the page asked for, from the server
    expect(page.locator("#messages")).to_be_attached()
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login/"))
    assert page.evaluate("localStorage.getItem('sanjai:conversations')") is None

    page.context.set_offline(True)
    page.goto("/")
    expect(page.get_by_role("heading", name="You are offline")).to_be_visible()
    expect(page.locator("#offline-saved")).to_have_text("No conversation list is kept on this device.")
    expect(page.locator("#offline-list a")).to_have_count(0)
    page.context.set_offline(False)
    page.get_by_role("button", name="Try again").click()
    expect(page).to_have_url(re.compile(r"/login/"))  # "/" sends the logged out to log in

    log_in(page, "lodger")  # another user on the same browser keeps only their own list
    stored = page.evaluate("JSON.parse(localStorage.getItem('sanjai:conversations'))")
    assert stored["user"] == str(lodger.pk)
    assert [c["title"] for c in stored["conversations"]] == ["The lodger's diary"]
    assert csp == []


def test_folders_are_made_filled_by_drag_and_menu_renamed_and_deleted_from_the_sidebar(
    page: Page, django_user_model: Any
) -> None:
    from chat.models import Folder
    from chat.services import presets

    owner = make_user(django_user_model, "filer")
    terse = presets.preset_create(user=owner, name="Terse", system_prompt="Answer in a few words.")
    report = conversations.conversation_create(user=owner, title="Quarterly report")
    recipe = conversations.conversation_create(user=owner, title="Bread recipe")
    conversations.conversation_create(user=owner, title="Loose thoughts")
    log_in(page, "filer")
    page.wait_for_load_state("domcontentloaded")  # folders.js (deferred) has run: its buttons work
    sidebar = page.locator("#sidebar")

    # Made from the sidebar; a name already taken (whatever the case) is refused in the dialog, kept typed.
    sidebar.get_by_role("button", name="+ New folder").click()
    dialog = page.locator("#folder-edit")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Name").fill("Work")
    dialog.get_by_role("button", name="Save").click()
    folder = sidebar.locator('.folder[data-name="Work"]')
    expect(folder).to_be_visible()
    sidebar.get_by_role("button", name="+ New folder").click()
    dialog.get_by_label("Name").fill("WORK")
    dialog.get_by_role("button", name="Save").click()
    expect(page.locator("#folder-edit-error")).to_contain_text("already have a folder named “WORK”")
    expect(dialog.get_by_label("Name")).to_have_value("WORK")
    dialog.get_by_role("button", name="Cancel").click()

    # Dragged in with the mouse.
    item = sidebar.locator(f'.conversation-item[data-id="{report.pk}"]')
    item.drag_to(folder)
    expect(folder.locator(".conversation-link")).to_have_text(["Quarterly report"])
    assert Conversation.objects.get(pk=report.pk).folder == Folder.objects.get(owner=owner)

    # Moved with the keyboard only: the item's move button, a choice, Enter.
    move = sidebar.get_by_role("button", name="Move Bread recipe", exact=True)
    move.focus()
    page.keyboard.press("Enter")
    mover = page.locator("#folder-move")
    expect(mover).to_be_visible()
    mover.get_by_label("Folder").select_option(label="Work")
    page.keyboard.press("Tab")
    expect(mover.get_by_role("button", name="Move", exact=True)).to_be_focused()
    page.keyboard.press("Enter")
    expect(folder.locator(".conversation-link")).to_have_text(["Bread recipe", "Quarterly report"])
    expect(sidebar.locator(".conversation-group:not(.folder) .conversation-link")).to_have_text(
        ["Loose thoughts"]
    )
    page.screenshot(path=str(ARTIFACTS / "folders-desktop.png"), full_page=True)

    # Renamed and given a preset; then "New chat in this folder" starts from it, filed there.
    folder.get_by_role("button", name="Rename folder Work").click()
    dialog.get_by_label("Name").fill("Office")
    dialog.get_by_label("New chats in it start from").select_option(label="Terse")
    dialog.get_by_role("button", name="Save").click()
    renamed = sidebar.locator('.folder[data-name="Office"]')
    expect(renamed.locator(".conversation-link")).to_have_count(2)
    renamed.get_by_role("link", name="New chat in Office").click()
    expect(page.locator("#folder-of")).to_have_text("In the folder Office")
    expect(page.get_by_role("button", name="Terse", exact=True)).to_have_attribute("aria-pressed", "true")
    send(page, "Where is the stapler?")
    expect(page).to_have_url(re.compile(r"/c/\d+/$"))
    expect(renamed.locator(".conversation-link")).to_have_count(3)
    started = Conversation.objects.get(owner=owner, title="Where is the stapler?")
    assert started.folder == Folder.objects.get(owner=owner) and started.preset == terse
    assert started.system_prompt == "Answer in a few words."
    page.goto("/")
    page.set_viewport_size({"width": 390, "height": 844})
    page.click("#sidebar-toggle")
    expect(sidebar).to_be_in_viewport()
    expect(renamed.get_by_text("Bread recipe")).to_be_visible()
    page.wait_for_timeout(300)  # the drawer's slide-in
    page.screenshot(path=str(ARTIFACTS / "folders-phone.png"), full_page=True)
    page.keyboard.press("Escape")
    page.set_viewport_size({"width": 1280, "height": 800})
    asked: list[str] = []

    def accept(prompt: Any) -> None:
        asked.append(prompt.message)
        prompt.accept()

    page.once("dialog", accept)
    renamed.get_by_role("button", name="Delete folder Office").click()
    expect(sidebar.locator(".folder")).to_have_count(0)
    assert "Its conversations are kept: they go back to the main list." in asked[0]
    expect(sidebar.locator(".conversation-link")).to_have_count(4)
    assert not Folder.objects.exists()
    assert Conversation.objects.filter(owner=owner, folder__isnull=True).count() == 4
    assert Conversation.objects.filter(pk=recipe.pk).exists()
