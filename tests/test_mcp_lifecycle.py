"""A reply that calls MCP tools: it waits, its steps run on the tools queue, and it continues.

Task bodies are called directly; the tools queue's publish is recorded (as the
`queued` fixture records the generation queue's). The tool server is real
(tests/mcp_servers.py over stdio), and so is the tiny model.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

import pytest
from django.test import TestCase
from django.utils import timezone

from chat.lifecycle import tools as lifecycle_tools
from chat.lifecycle.run import reply_generate, reply_prompt
from chat.lifecycle.status import reply_cancel, reply_claim
from chat.lifecycle.sweep import continue_tool_waits, fail_lost_steps, refuse_unanswered
from chat.models import Conversation, McpServer, McpTool, Message, ToolStep, Usage
from chat.tools.services import tools_offered
from inference.tools import ToolCall, call_text, calls_grammar
from inference.types import Completion
from tests.conftest import captured_events, submit

pytestmark = [pytest.mark.django_db]

PY = sys.executable


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Stands in for the broker of the tools queue: records the step ids queued there."""
    ids: list[int] = []
    monkeypatch.setattr(lifecycle_tools, "_publish", ids.extend)
    return ids


@pytest.fixture(scope="module")
def listed() -> list[Any]:
    """The test server's tools/list, taken once for the module (each listing starts the server)."""
    from chat.tools import client

    spec = client.ServerSpec("ours", "stdio", command=PY, args=["-m", "tests.mcp_servers", "stdio"])
    return client.run(client.list_tools(spec, timeout_s=15, limit=64))  # type: ignore[no-any-return]


@pytest.fixture
def server(listed: list[Any]) -> McpServer:
    server = McpServer.objects.create(
        name="ours", command=PY, args=["-m", "tests.mcp_servers", "stdio"], default_approval="auto"
    )
    for info in listed:  # as tools_refresh keeps them (tests/test_mcp.py lists for real)
        McpTool.objects.create(
            server=server,
            name=info.name,
            description=info.description,
            input_schema=info.input_schema,
            approval="ask" if info.name == "fail" else "auto",
        )
    return server


@pytest.fixture
def reply(owner: Any, server: McpServer, queued: list[int]) -> Message:
    """A pending reply in a conversation that may use the server."""
    posted = submit(owner, "Say hello through the echo tool.", max_new_tokens=60, temperature=0)
    posted.reply.conversation.mcp_servers.set([server])
    return posted.reply


def pass_with(reply: Message, calls: list[ToolCall], preface: str = "") -> None:
    """A generation pass that ended in these calls, as a worker ends one."""
    assert reply_claim(reply_id=reply.pk, worker="test-worker", model="tiny")
    reply.refresh_from_db()
    with committed():
        lifecycle_tools.reply_pass_end(
            reply=reply,
            completion=Completion(call_text(calls, preface), 40, 8, "stop", 0),
            first_token_at=None,
            time_limit_s=None,
            offered=tools_offered(conversation=reply.conversation),
        )
    reply.refresh_from_db()


def committed() -> Any:
    """Run what waits for the commit (events, the tools queue's publish) at the block's end."""
    return TestCase.captureOnCommitCallbacks(execute=True)


@pytest.fixture(scope="module")
def long_backend(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny model with room for a tools block in its prompt (4096 tokens of context)."""
    from inference.backend import TransformersBackend
    from inference.loading import load_model
    from tests.tiny_model import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("tiny-long"), context_tokens=4096)
    loaded = load_model(str(folder), device="cpu", cache_dir=tmp_path_factory.mktemp("cache"))
    return TransformersBackend(loaded)


def run_step(step_id: int) -> None:
    from chat.tasks import run_tool_step

    run_tool_step(step_id)


def test_the_model_calls_a_tool_and_the_reply_continues_with_the_result_in_its_prompt(
    reply: Message,
    long_backend: Any,
    queued: list[int],
    published: list[int],
    django_capture_on_commit_callbacks: Any,
) -> None:
    tiny_backend = long_backend
    # The tiny model is random: a grammar makes its first pass a call of the echo tool,
    # and a tight schema (as the tool's list could give it) keeps the call short.
    reply.conversation.mcp_servers.get().tools.filter(name="echo").update(
        input_schema={
            "type": "object",
            "properties": {"text": {"type": "string", "maxLength": 12}},
            "required": ["text"],
            "additionalProperties": False,
        }
    )
    offered = tools_offered(conversation=reply.conversation)
    grammar = calls_grammar(offered.functions(), only="echo", parallel=False)
    params = {**reply.params, "max_new_tokens": 200, "temperature": 1.0, "seed": 5}
    Message.objects.filter(pk=reply.pk).update(params={**params, "response_grammar": grammar})
    first_prompt = reply_prompt(reply, tiny_backend, offered)
    assert "<tools>" in first_prompt[0].content and '"name": "echo"' in first_prompt[0].content

    with captured_events(reply.conversation_id) as events, django_capture_on_commit_callbacks(execute=True):
        reply_generate(reply_id=reply.pk, backend=tiny_backend, worker="test-worker")
    reply.refresh_from_db()
    assert reply.status == Message.Status.TOOL_WAIT, (reply.error, reply.finish_reason, reply.content)
    step = reply.tool_steps.get()
    assert (step.tool, step.approval, step.status) == ("echo", "auto", ToolStep.Status.QUEUED)
    assert published == [step.pk]
    tools_event = next(event for event in events if event["type"] == "reply.tools")
    assert tools_event["steps"][0]["arguments"] == step.arguments and not tools_event["waiting"]

    run_step(step.pk)  # on the tools worker
    step.refresh_from_db()
    assert step.status == ToolStep.Status.DONE and step.result == f"echo: {step.arguments['text']}"
    assert step.duration_ms is not None and step.worker.startswith("tools@")
    reply.refresh_from_db()
    assert reply.status == Message.Status.PENDING and queued == [reply.pk, reply.pk]

    prompt = reply_prompt(reply, tiny_backend, offered)
    assert prompt[-2].role == "assistant" and "<tool_call>" in prompt[-2].content
    assert prompt[-1].role == "user"
    assert prompt[-1].content == f"<tool_response>\necho: {step.arguments['text']}\n</tool_response>"
    first_tokens = reply.prompt_tokens or 0

    with django_capture_on_commit_callbacks(execute=True):
        reply_generate(reply_id=reply.pk, backend=tiny_backend, worker="test-worker")
    reply.refresh_from_db()
    assert reply.status == Message.Status.DONE  # the second pass answers freely: no grammar
    assert (reply.prompt_tokens or 0) > 2 * first_tokens  # both passes, the second with the result
    usage = Usage.objects.get(user_id=reply.conversation.owner_id)
    assert (usage.replies, usage.prompt_tokens) == (1, reply.prompt_tokens)  # one reply, every token


def test_an_ask_tool_waits_for_its_owner_and_nobody_else_can_answer(
    reply: Message, other_user: Any, owner: Any, published: list[int], queued: list[int]
) -> None:
    pass_with(reply, [ToolCall("fail", {})], preface="Let me try.")
    step = reply.tool_steps.get()
    assert reply.status == Message.Status.TOOL_WAIT
    assert step.status == ToolStep.Status.AWAITING_APPROVAL and published == []
    assert step.preface == "Let me try."

    with pytest.raises(ToolStep.DoesNotExist):
        lifecycle_tools.step_answer(user=other_user, step_id=step.pk, approve=True)
    step.refresh_from_db()
    assert step.status == ToolStep.Status.AWAITING_APPROVAL

    with committed():
        answered = lifecycle_tools.step_answer(user=owner, step_id=step.pk, approve=True)
    assert answered.status == ToolStep.Status.QUEUED and answered.decided_by == owner
    assert published == [step.pk]
    # A second answer changes nothing: the first stands.
    assert lifecycle_tools.step_answer(user=owner, step_id=step.pk, approve=False).status == "queued"

    run_step(step.pk)
    step.refresh_from_db()
    assert step.status == ToolStep.Status.DONE and step.is_error  # the tool raised: its own error
    reply.refresh_from_db()
    assert reply.status == Message.Status.PENDING


def test_refusing_ends_the_step_with_the_refusal_in_the_prompt(
    reply: Message, owner: Any, published: list[int], queued: list[int]
) -> None:
    pass_with(reply, [ToolCall("fail", {})])
    step = reply.tool_steps.get()
    with committed():
        refused = lifecycle_tools.step_answer(user=owner, step_id=step.pk, approve=False)
    assert refused.status == ToolStep.Status.REFUSED and published == []
    reply.refresh_from_db()
    assert reply.status == Message.Status.PENDING and queued[-1] == reply.pk
    prompt = reply_prompt(reply, None, tools_offered(conversation=reply.conversation))
    assert "Error: The user refused this call." in prompt[-1].content


def test_a_tool_that_never_returns_ends_at_its_timeout_and_the_reply_continues(
    reply: Message, published: list[int], queued: list[int], settings: Any
) -> None:
    settings.MCP_TOOL_TIMEOUT_S = 1
    pass_with(reply, [ToolCall("sleep", {"seconds": 3600})])
    step = reply.tool_steps.get()
    run_step(step.pk)
    step.refresh_from_db()
    assert step.status == ToolStep.Status.ERROR
    assert step.error == "The MCP server ours did not answer within 1 s."
    reply.refresh_from_db()
    assert reply.status == Message.Status.PENDING
    prompt = reply_prompt(reply, None, tools_offered(conversation=reply.conversation))
    assert "Error: The MCP server ours did not answer within 1 s." in prompt[-1].content


def test_a_server_that_went_down_gives_a_step_error(
    reply: Message, server: McpServer, published: list[int], queued: list[int]
) -> None:
    pass_with(reply, [ToolCall("echo", {"text": "hi"})])
    McpServer.objects.filter(pk=server.pk).update(command="/nonexistent/mcp-server")
    run_step(reply.tool_steps.get().pk)
    step = reply.tool_steps.get()
    assert step.status == ToolStep.Status.ERROR and "No such file" in step.error
    reply.refresh_from_db()
    assert reply.status == Message.Status.PENDING


def test_huge_output_is_capped_in_the_step_and_the_prompt(
    reply: Message, published: list[int], queued: list[int], settings: Any
) -> None:
    settings.MCP_TOOL_OUTPUT_MAX_CHARS = 1000
    pass_with(reply, [ToolCall("huge", {"size": 1_000_000})])
    run_step(reply.tool_steps.get().pk)
    step = reply.tool_steps.get()
    assert step.truncated and len(step.result) <= 1000


def test_calls_past_the_step_limit_are_not_run_and_the_next_pass_answers(
    reply: Message, published: list[int], queued: list[int], settings: Any, long_backend: Any
) -> None:
    tiny_backend = long_backend
    settings.MCP_MAX_STEPS_PER_REPLY = 1
    pass_with(reply, [ToolCall("echo", {"text": "one"}), ToolCall("echo", {"text": "two"})])
    first, second = reply.tool_steps.order_by("ordinal")
    assert first.status == ToolStep.Status.QUEUED and published == [first.pk]
    assert second.status == ToolStep.Status.ERROR
    assert second.error.startswith("Not run: a reply may make 1 tool calls.")
    run_step(first.pk)
    reply.refresh_from_db()
    assert reply.status == Message.Status.PENDING

    # The next pass may not call again: even a pass of calls finishes the reply.
    reply_generate(reply_id=reply.pk, backend=tiny_backend, worker="test-worker")
    reply.refresh_from_db()
    assert reply.status == Message.Status.DONE and reply.tool_steps.count() == 2


def test_total_tool_time_is_bounded(reply: Message, published: list[int], settings: Any) -> None:
    pass_with(reply, [ToolCall("echo", {"text": "one"})])
    step = reply.tool_steps.get()
    now = timezone.now()
    ToolStep.objects.filter(pk=step.pk).update(
        status=ToolStep.Status.DONE, started_at=now - timedelta(seconds=500), finished_at=now
    )
    settings.MCP_TOOL_TIME_PER_REPLY_S = 100
    lifecycle_tools.reply_continue(reply_id=reply.pk)
    pass_with(reply, [ToolCall("echo", {"text": "two"})])
    second = reply.tool_steps.get(ordinal=2)
    assert second.status == ToolStep.Status.ERROR and "100 s of tool time" in second.error
    reply.refresh_from_db()
    assert reply.status == Message.Status.PENDING  # nothing to wait for: it continues at once


def test_cancelling_a_waiting_reply_ends_it_and_a_late_result_changes_nothing(
    reply: Message, owner: Any, published: list[int], queued: list[int]
) -> None:
    pass_with(reply, [ToolCall("echo", {"text": "hi"})])
    cancelled = reply_cancel(user=owner, message_id=reply.pk)
    assert cancelled.status == Message.Status.CANCELLED
    run_step(reply.tool_steps.get().pk)
    reply.refresh_from_db()
    assert reply.status == Message.Status.CANCELLED and queued == [reply.pk]


def test_a_waiting_reply_blocks_the_next_message_like_a_running_one(reply: Message, owner: Any) -> None:
    from chat.services.limits import ConversationBusy

    pass_with(reply, [ToolCall("echo", {"text": "hi"})])
    with pytest.raises(ConversationBusy):
        submit(owner, "Another question", conversation_id=reply.conversation_id)


# --- The sweeper ----------------------------------------------------------------


def test_an_approval_nobody_gives_is_refused_after_its_timeout(
    reply: Message, published: list[int], queued: list[int], settings: Any
) -> None:
    pass_with(reply, [ToolCall("fail", {})])
    assert refuse_unanswered() == 0  # not yet
    settings.MCP_APPROVAL_TIMEOUT_S = 60
    ToolStep.objects.update(created=timezone.now() - timedelta(seconds=61))
    assert refuse_unanswered() == 1
    step = reply.tool_steps.get()
    assert step.status == ToolStep.Status.REFUSED
    assert step.error == "Nobody approved this call within 60 s; it was not run."
    reply.refresh_from_db()
    assert reply.status == Message.Status.PENDING and queued[-1] == reply.pk


def test_a_step_whose_tools_worker_died_ends_within_its_bound(
    reply: Message, published: list[int], queued: list[int], settings: Any
) -> None:
    settings.MCP_TOOL_TIMEOUT_S = 30
    pass_with(reply, [ToolCall("echo", {"text": "hi"})])
    step = reply.tool_steps.get()
    # Claimed by a worker that died mid-call: it stays running.
    ToolStep.objects.filter(pk=step.pk).update(status=ToolStep.Status.RUNNING, started_at=timezone.now())
    assert fail_lost_steps() == 0
    ToolStep.objects.filter(pk=step.pk).update(started_at=timezone.now() - timedelta(seconds=91))
    assert fail_lost_steps() == 1
    step.refresh_from_db()
    assert step.status == ToolStep.Status.ERROR and "did not run this call in time" in step.error
    reply.refresh_from_db()
    assert reply.status == Message.Status.PENDING


def test_a_queued_step_no_worker_took_ends_within_its_bound(
    reply: Message, published: list[int], settings: Any
) -> None:
    settings.MCP_TOOL_TIMEOUT_S = 30
    pass_with(reply, [ToolCall("echo", {"text": "hi"})])
    ToolStep.objects.update(created=timezone.now() - timedelta(seconds=91))
    assert fail_lost_steps() == 1
    assert reply.tool_steps.get().status == ToolStep.Status.ERROR


def test_a_waiting_reply_whose_steps_all_ended_is_queued_again(
    reply: Message, published: list[int], queued: list[int]
) -> None:
    pass_with(reply, [ToolCall("echo", {"text": "hi"})])
    # The step ended, but its worker died before moving the reply on.
    ToolStep.objects.update(status=ToolStep.Status.DONE, result="echo: hi")
    assert continue_tool_waits() == 1
    reply.refresh_from_db()
    assert reply.status == Message.Status.PENDING and queued[-1] == reply.pk
    assert continue_tool_waits() == 0


def test_a_conversation_without_servers_never_pauses(owner: Any, queued: list[int]) -> None:
    posted = submit(owner, "Hello")
    reply = posted.reply
    assert reply_claim(reply_id=reply.pk, worker="w", model="tiny")
    reply.refresh_from_db()
    lifecycle_tools.reply_pass_end(
        reply=reply,
        completion=Completion(call_text([ToolCall("echo", {"text": "x"})]), 10, 5, "stop", 0),
        first_token_at=None,
        time_limit_s=None,
        offered=tools_offered(conversation=Conversation.objects.get(pk=reply.conversation_id)),
    )
    reply.refresh_from_db()
    assert reply.status == Message.Status.DONE and "<tool_call>" in reply.content
