"""MCP tools: the tool list cache, what a reply is offered, and its steps.

A step's status is written here only; a reply's status only in
chat/lifecycle/status.py. Each step transition is one conditional update, so
a tool worker, the owner approving and the sweeper racing end a step once:

    AWAITING_APPROVAL -> QUEUED (approved) -> RUNNING -> DONE | ERROR
            `-> REFUSED (refused, or not approved in time)
    QUEUED (automatic) -> RUNNING -> ...
    QUEUED | RUNNING -> ERROR (the sweeper: its worker stopped)
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from chat.models import Conversation, McpServer, McpTool, Message, ToolStep
from chat.tools import client
from inference.tools import ToolCall, call_text, result_text, tools_block
from inference.types import Turn

logger = logging.getLogger(__name__)

REFUSED_TEXT = "The user refused this call."
FINISHED = [ToolStep.Status.DONE, ToolStep.Status.ERROR, ToolStep.Status.REFUSED]
# The Hermes format's function names: what a model writes back reliably.
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


# --- Servers and their tools --------------------------------------------------------


def server_spec(server: McpServer) -> client.ServerSpec:
    """How to reach `server`, with its secrets read from this process's environment now."""
    if server.transport == McpServer.Transport.HTTP:
        key = client.environment([server.key_env]).get(server.key_env, "") if server.key_env else ""
        return client.ServerSpec(server.name, "http", url=server.url, api_key=key)
    return client.ServerSpec(
        server.name,
        "stdio",
        command=server.command,
        args=[str(arg) for arg in server.args],
        env=client.environment([str(name) for name in server.env_names]),
    )


def tools_refresh(*, server: McpServer) -> list[McpTool]:
    """List the server's tools now (tools/list) and keep them; a failure is kept as
    `list_error` with the last good list left in place. New tools start as the
    server's `default_approval`; tools it no longer lists are removed."""
    try:
        listed = client.run(
            client.list_tools(
                server_spec(server),
                timeout_s=settings.MCP_TOOL_TIMEOUT_S,
                limit=settings.MCP_MAX_TOOLS_PER_SERVER,
            )
        )
    except client.ToolFailure as exc:
        McpServer.objects.filter(pk=server.pk).update(tools_listed_at=timezone.now(), list_error=str(exc))
        server.refresh_from_db()
        return list(server.tools.all())
    with transaction.atomic():
        for info in listed:
            McpTool.objects.update_or_create(
                server=server,
                name=info.name,
                defaults={"description": info.description[:2000], "input_schema": info.input_schema},
                create_defaults={
                    "description": info.description[:2000],
                    "input_schema": info.input_schema,
                    "approval": server.default_approval,
                },
            )
        server.tools.exclude(name__in=[info.name for info in listed]).delete()
        McpServer.objects.filter(pk=server.pk).update(tools_listed_at=timezone.now(), list_error="")
    server.refresh_from_db()
    return list(server.tools.all())


def stale_servers() -> list[McpServer]:
    """Enabled servers whose tool list is older than MCP_TOOLS_CACHE_S (or never taken)."""
    cutoff = timezone.now() - timedelta(seconds=settings.MCP_TOOLS_CACHE_S)
    return list(
        McpServer.objects.filter(enabled=True).filter(
            Q(tools_listed_at__isnull=True) | Q(tools_listed_at__lt=cutoff)
        )
    )


def servers_offered(*, user: User) -> list[McpServer]:
    """The servers a user may give a conversation: every enabled one (an admin declared them)."""
    return list(McpServer.objects.filter(enabled=True).prefetch_related("tools"))


def conversation_servers_set(*, conversation: Conversation, names: list[str]) -> list[McpServer]:
    """Let the conversation's replies use exactly these servers; ValueError names an unknown one."""
    servers = {server.name: server for server in McpServer.objects.filter(enabled=True, name__in=names)}
    unknown = [name for name in names if name not in servers]
    if unknown:
        offered = ", ".join(McpServer.objects.filter(enabled=True).values_list("name", flat=True))
        raise ValueError(
            f"mcp_servers: {', '.join(map(repr, unknown))} is not a server here; "
            f"the servers are {offered or 'none yet (an admin declares them)'}."
        )
    conversation.mcp_servers.set(servers.values())
    return list(servers.values())


@dataclass(frozen=True)
class Offered:
    """The tools a reply may call, by the name the model calls each one."""

    tools: dict[str, McpTool]

    def names(self) -> list[str]:
        return list(self.tools)

    def functions(self) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "description": tool.description,
                "parameters": tool.input_schema or {"type": "object", "properties": {}},
            }
            for name, tool in self.tools.items()
        ]


def tools_offered(*, conversation: Conversation) -> Offered:
    """The enabled tools of the conversation's enabled servers, as listed last. A tool
    keeps its own name unless another server's tool has it (then `server__tool`)."""
    tools = list(
        McpTool.objects.filter(
            enabled=True, server__enabled=True, server__conversations=conversation
        ).select_related("server")
    )
    seen: dict[str, int] = {}
    for tool in tools:
        seen[tool.name] = seen.get(tool.name, 0) + 1
    named: dict[str, McpTool] = {}
    for tool in tools:
        name = tool.name if seen[tool.name] == 1 else f"{tool.server.name}__{tool.name}"
        named[_UNSAFE.sub("_", name)[:64]] = tool
    return Offered(named)


# --- The prompt -----------------------------------------------------------------


def prompt_turns(*, reply: Message, turns: list[Turn], offered: Offered) -> list[Turn]:
    """The reply's turns with its tools described in the system turn, followed by each
    finished pass of calls: what the model wrote, then the results (Hermes format)."""
    if offered.tools:
        block = tools_block(offered.functions())
        if turns and turns[0].role == "system":
            turns = [Turn("system", f"{turns[0].content}\n\n{block}"), *turns[1:]]
        else:
            turns = [Turn("system", block), *turns]
    rounds: dict[int, list[ToolStep]] = {}
    for step in reply.tool_steps.order_by("ordinal"):
        rounds.setdefault(step.round, []).append(step)
    for steps in rounds.values():
        calls = [ToolCall(step.called_as, step.arguments) for step in steps]
        turns.append(Turn("assistant", call_text(calls, steps[0].preface)))
        turns.append(Turn("user", result_text([step_result_text(step) for step in steps])))
    return turns


def step_result_text(step: ToolStep) -> str:
    """What the model reads for a step: the tool's answer, or why there is none."""
    if step.status == ToolStep.Status.DONE:
        return f"Error: {step.result}" if step.is_error else step.result
    return f"Error: {step.error or step.result or 'the call did not run'}"


# --- Steps -------------------------------------------------------------------------


def steps_create(*, reply: Message, preface: str, calls: list[ToolCall], offered: Offered) -> list[ToolStep]:
    """The calls of one generation pass, as steps. Past MCP_MAX_STEPS_PER_REPLY, or once
    the reply has spent MCP_TOOL_TIME_PER_REPLY_S on tools, a call is not run: its step
    ends at once with that reason, which the model reads."""
    earlier = list(reply.tool_steps.all())
    round_ = max((step.round for step in earlier), default=0) + 1
    spent = tool_time_spent(earlier)
    steps = []
    for index, call in enumerate(calls, start=len(earlier) + 1):
        tool = offered.tools[call.name]
        limit = _limit_reached(index, spent)
        ask = tool.approval == McpTool.Approval.ASK
        steps.append(
            ToolStep.objects.create(
                reply=reply,
                round=round_,
                ordinal=index,
                preface=preface if index == len(earlier) + 1 else "",
                server=tool.server,
                server_name=tool.server.name,
                tool=tool.name,
                called_as=call.name,
                arguments=call.arguments,
                approval=tool.approval,
                # A call past a limit ends at once; an "ask" one waits for its owner.
                status=ToolStep.Status.ERROR
                if limit
                else (ToolStep.Status.AWAITING_APPROVAL if ask else ToolStep.Status.QUEUED),
                error=limit,
                finished_at=timezone.now() if limit else None,
            )
        )
    return steps


def tool_time_spent(steps: list[ToolStep]) -> float:
    return sum((step.duration_ms or 0) / 1000 for step in steps)


def _limit_reached(ordinal: int, spent_s: float) -> str:
    if ordinal > settings.MCP_MAX_STEPS_PER_REPLY:
        return (
            f"Not run: a reply may make {settings.MCP_MAX_STEPS_PER_REPLY} tool calls. "
            "Answer with what you have."
        )
    if spent_s >= settings.MCP_TOOL_TIME_PER_REPLY_S:
        return (
            f"Not run: this reply has used its {settings.MCP_TOOL_TIME_PER_REPLY_S:g} s of tool time. "
            "Answer with what you have."
        )
    return ""


def tools_allowed(*, reply: Message) -> bool:
    """Whether the reply's next pass may still call tools (a limit past: it answers instead)."""
    steps = list(reply.tool_steps.all())
    return not _limit_reached(len(steps) + 1, tool_time_spent(steps))


def step_get(*, user: User, step_id: int) -> ToolStep:
    """The step, if it belongs to one of `user`'s conversations; ToolStep.DoesNotExist otherwise."""
    return ToolStep.objects.select_related("reply").get(pk=step_id, reply__conversation__owner=user)


def step_decide(*, user: User, step_id: int, approve: bool) -> ToolStep:
    """The owner's answer to a step that waits for approval. Raises ToolStep.DoesNotExist for
    anyone else's step; a step already decided (or timed out) keeps its first answer."""
    step = step_get(user=user, step_id=step_id)
    waiting = ToolStep.objects.filter(pk=step.pk, status=ToolStep.Status.AWAITING_APPROVAL)
    now = timezone.now()
    if approve:
        waiting.update(status=ToolStep.Status.QUEUED, decided_by=user, decided_at=now)
    else:
        waiting.update(
            status=ToolStep.Status.REFUSED,
            decided_by=user,
            decided_at=now,
            finished_at=now,
            error=REFUSED_TEXT,
        )
    step.refresh_from_db()
    return step


def step_run(*, step_id: int, worker: str) -> ToolStep | None:
    """Run one queued step (the "tools" queue's task); None if it was not queued any more.

    Its timeout is MCP_TOOL_TIMEOUT_S, or what is left of the reply's tool time.
    """
    claimed = ToolStep.objects.filter(pk=step_id, status=ToolStep.Status.QUEUED).update(
        status=ToolStep.Status.RUNNING, worker=worker, started_at=timezone.now()
    )
    if claimed != 1:
        return None
    step = ToolStep.objects.select_related("server").get(pk=step_id)
    spent = tool_time_spent([s for s in ToolStep.objects.filter(reply_id=step.reply_id) if s.pk != step.pk])
    timeout_s = max(1.0, min(settings.MCP_TOOL_TIMEOUT_S, settings.MCP_TOOL_TIME_PER_REPLY_S - spent))
    running = ToolStep.objects.filter(pk=step_id, status=ToolStep.Status.RUNNING)
    if step.server is None or not step.server.enabled:
        running.update(
            status=ToolStep.Status.ERROR,
            error=f"The MCP server {step.server_name} is not available any more.",
            finished_at=timezone.now(),
        )
    else:
        try:
            output = client.run(
                client.call_tool(
                    server_spec(step.server),
                    step.tool,
                    step.arguments,
                    timeout_s=timeout_s,
                    max_chars=settings.MCP_TOOL_OUTPUT_MAX_CHARS,
                )
            )
        except client.ToolFailure as exc:
            running.update(status=ToolStep.Status.ERROR, error=str(exc), finished_at=timezone.now())
        else:
            running.update(
                status=ToolStep.Status.DONE,
                result=output.text,
                is_error=output.is_error,
                truncated=output.truncated,
                finished_at=timezone.now(),
            )
    step.refresh_from_db()
    return step


def step_fail(*, step_id: int, error: str, refuse: bool = False) -> bool:
    """End an unfinished step (the sweeper): refused if it awaited approval, else an error."""
    now = timezone.now()
    if refuse:
        return bool(
            ToolStep.objects.filter(pk=step_id, status=ToolStep.Status.AWAITING_APPROVAL).update(
                status=ToolStep.Status.REFUSED, error=error, finished_at=now
            )
        )
    return bool(
        ToolStep.objects.filter(
            pk=step_id, status__in=[ToolStep.Status.QUEUED, ToolStep.Status.RUNNING]
        ).update(status=ToolStep.Status.ERROR, error=error, finished_at=now)
    )


def round_finished(*, reply_id: int) -> bool:
    """Whether every step of the reply's latest pass has ended."""
    steps = ToolStep.objects.filter(reply_id=reply_id)
    latest = steps.order_by("-round").values_list("round", flat=True).first()
    if latest is None:
        return True
    return not steps.filter(round=latest).exclude(status__in=FINISHED).exists()


def steps_by_reply(*, reply_ids: list[int]) -> dict[str, list[dict[str, Any]]]:
    """The tool calls of these replies, in one query, keyed by reply id (as JSON keys are)."""
    steps: dict[str, list[dict[str, Any]]] = {}
    for step in ToolStep.objects.filter(reply_id__in=reply_ids).order_by("reply_id", "ordinal"):
        steps.setdefault(str(step.reply_id), []).append(step_payload(step))
    return steps


def step_payload(step: ToolStep) -> dict[str, Any]:
    """A step as the page, the REST API and the export show it."""
    return {
        "id": step.pk,
        "round": step.round,
        "ordinal": step.ordinal,
        "server": step.server_name,
        "tool": step.tool,
        "called_as": step.called_as,
        "arguments": step.arguments,
        "approval": step.approval,
        "status": step.status,
        "result": step.result,
        "is_error": step.is_error,
        "truncated": step.truncated,
        "error": step.error,
        "decided_at": step.decided_at.isoformat() if step.decided_at else None,
        "started_at": step.started_at.isoformat() if step.started_at else None,
        "finished_at": step.finished_at.isoformat() if step.finished_at else None,
        "duration_ms": step.duration_ms,
    }
