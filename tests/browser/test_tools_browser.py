"""MCP tools on the chat page, in a real browser against the real stack: web, the
generation worker with the tiny model, and the tools worker calling a real MCP
server (tests/mcp_servers.py over stdio).

The tiny model is random, so the reply's call is stored as a worker stores one
(the model's side is tests/test_mcp_lifecycle.py); everything after it is real:
the page shows the step and its buttons, the approval goes over the websocket,
the tools worker runs the call, and the reply continues on the generation worker.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from chat.models import McpServer, Message, ToolStep
from chat.services import conversations
from chat.tools.services import tools_refresh
from tests.browser.conftest import TIMEOUT_MS
from tests.stack import ARTIFACTS, Stack, stack_on_test_database

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

PASSWORD = "a long test passphrase"
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def stack(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from tests.tiny_model import build_tiny_model

    # Room in the prompt for the tools' description and the call's result.
    model = build_tiny_model(tmp_path_factory.mktemp("tools-browser-model"), context_tokens=4096)
    with stack_on_test_database(name="browser-tools", env={"MODEL_PATH": str(model)}, tools=True) as running:
        yield running


@pytest.fixture
def server() -> McpServer:
    server = McpServer.objects.create(
        name="ours",
        description="Test tools",
        command=sys.executable,
        args=["-m", "tests.mcp_servers", "stdio"],
    )
    tools_refresh(server=server)  # every tool asks first: the server's default
    assert server.list_error == "" and server.tools.filter(approval="ask").count() == 5
    return server


def log_in(page: Page, username: str) -> None:
    page.goto("/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/$"))


def paused_reply(user: Any, server: McpServer) -> tuple[Message, ToolStep]:
    """A question and a reply paused on one call of echo that waits for approval."""
    conversation = conversations.conversation_create(user=user, title="Tools")
    conversation.mcp_servers.set([server])
    question = Message.objects.create(
        conversation=conversation, role="user", content="Say hi through the echo tool.", status="done"
    )
    reply = Message.objects.create(
        conversation=conversation,
        parent=question,
        role="assistant",
        status=Message.Status.TOOL_WAIT,
        params={"max_new_tokens": 12, "temperature": 0},
    )
    step = ToolStep.objects.create(
        reply=reply,
        round=1,
        ordinal=1,
        server=server,
        server_name=server.name,
        tool="echo",
        called_as="echo",
        arguments={"text": "hi"},
        approval="ask",
        status=ToolStep.Status.AWAITING_APPROVAL,
    )
    return reply, step


def test_a_tool_step_waits_for_approval_runs_and_the_reply_continues(
    page: Page, stack: Stack, server: McpServer, django_user_model: Any
) -> None:
    user = django_user_model.objects.create_user(username="tina", password=PASSWORD)
    reply, step = paused_reply(user, server)
    log_in(page, "tina")
    page.goto(f"/c/{reply.conversation_id}/")

    bubble = page.locator(f'.bubble.assistant[data-id="{reply.pk}"]')
    block = bubble.locator(f'.tool-step[data-step-id="{step.pk}"]')
    expect(block).to_have_attribute("data-status", "awaiting_approval")
    expect(block.locator("summary")).to_contain_text("ours.echo")
    expect(block).to_contain_text('"text": "hi"')
    expect(bubble).to_contain_text("waiting for your approval of a tool call")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "tools-approval.png"), full_page=True)

    block.get_by_role("button", name="Approve").click()
    # Run on the tools worker, then the reply's next pass on the generation worker.
    expect(block).to_have_attribute("data-status", "done")
    expect(bubble).to_have_attribute("data-status", "done", timeout=60_000)
    block = bubble.locator(".tool-step")
    block.locator("summary").click()
    expect(block).to_contain_text("echo: hi")
    expect(block.locator("summary")).to_contain_text(re.compile(r"done · [\d,.]+ ms"))
    page.screenshot(path=str(ARTIFACTS / "tools-done.png"), full_page=True)

    step.refresh_from_db()
    assert step.status == ToolStep.Status.DONE and step.result == "echo: hi" and step.decided_by == user
    reply.refresh_from_db()
    assert reply.status == Message.Status.DONE


def test_refusing_shows_the_refusal_and_the_reply_still_ends(
    page: Page, stack: Stack, server: McpServer, django_user_model: Any
) -> None:
    user = django_user_model.objects.create_user(username="rufus", password=PASSWORD)
    reply, step = paused_reply(user, server)
    log_in(page, "rufus")
    page.goto(f"/c/{reply.conversation_id}/")
    bubble = page.locator(f'.bubble.assistant[data-id="{reply.pk}"]')
    bubble.get_by_role("button", name="Refuse").click()
    block = bubble.locator(".tool-step")
    expect(block).to_have_attribute("data-status", "refused")
    expect(bubble).to_have_attribute("data-status", "done", timeout=60_000)
    step.refresh_from_db()
    assert step.status == ToolStep.Status.REFUSED and step.error == "The user refused this call."


def test_the_settings_choose_the_conversations_servers(
    page: Page, stack: Stack, server: McpServer, django_user_model: Any
) -> None:
    user = django_user_model.objects.create_user(username="sam", password=PASSWORD)
    conversation = conversations.conversation_create(user=user, title="Pick")
    log_in(page, "sam")
    page.goto(f"/c/{conversation.pk}/")
    expect(page.locator("#send")).to_be_enabled()  # the page's scripts run, its socket is open
    page.click("#settings-toggle")
    choice = page.locator('#tool-servers input[value="ours"]')
    expect(choice).not_to_be_checked()
    listed = "ours Test tools: die (asks first), echo (asks first)"  # by name; all ask first
    expect(page.locator("#tool-servers")).to_contain_text(listed)
    choice.check()
    expect(page.locator("[data-tool-server-status]")).to_have_text("Saved.")
    assert list(conversation.mcp_servers.values_list("name", flat=True)) == ["ours"]
    choice.uncheck()
    # The status already reads "Saved." from the check: wait for the store itself.
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while conversation.mcp_servers.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not conversation.mcp_servers.exists()
