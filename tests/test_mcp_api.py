"""MCP tools at the edges: the REST API, the websocket's approvals, export and import, the admin's review."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from django.utils import timezone

from chat import exports
from chat.lifecycle import tools as lifecycle_tools
from chat.models import McpServer, McpTool, Message, ToolStep
from chat.services.conversations import conversation_import
from tests.conftest import submit

API = "/api/v1"


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    ids: list[int] = []
    monkeypatch.setattr(lifecycle_tools, "_publish", ids.extend)
    return ids


@pytest.fixture
def server() -> McpServer:
    server = McpServer.objects.create(name="ours", command="unused-here", description="Test tools")
    McpTool.objects.create(server=server, name="echo", description="Repeat the text.", approval="ask")
    McpTool.objects.create(server=server, name="hidden", enabled=False)
    return server


def waiting_reply(owner: Any, server: McpServer) -> tuple[Message, ToolStep]:
    """A reply paused on one "ask" call of echo."""
    reply = submit(owner, "Echo hi").reply
    reply.conversation.mcp_servers.set([server])
    now = timezone.now()
    Message.objects.filter(pk=reply.pk).update(status=Message.Status.TOOL_WAIT)
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
        created=now,
    )
    return reply, step


def call(client: Client, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"headers": {"Authorization": f"Bearer {key}"}}
    if body is not None:
        kwargs |= {"data": json.dumps(body), "content_type": "application/json"}
    response = getattr(client, method)(API + path, **kwargs)
    return response.status_code, response.json() if response.content else None


# --- REST -------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_user_picks_the_servers_a_conversation_may_use(
    client: Client, owner: Any, owner_key: str, server: McpServer, queued: list[int]
) -> None:
    status, servers = call(client, owner_key, "get", "/mcp-servers")
    assert status == 200
    assert servers == [
        {
            "name": "ours",
            "description": "Test tools",
            "tools": [{"name": "echo", "description": "Repeat the text.", "approval": "ask"}],
        }
    ]
    conversation = submit(owner, "Hi").reply.conversation
    path = f"/conversations/{conversation.pk}/mcp-servers"
    assert call(client, owner_key, "get", path) == (200, [])
    assert call(client, owner_key, "put", path, {"servers": ["ours"]}) == (200, ["ours"])
    assert call(client, owner_key, "get", path) == (200, ["ours"])

    status, error = call(client, owner_key, "put", path, {"servers": ["nope"]})
    assert status == 400
    assert error["detail"] == "mcp_servers: 'nope' is not a server here; the servers are ours."
    status, error = call(client, owner_key, "put", path, {"servers": ["ours"], "extra": 1})
    assert status == 400  # an unknown field is refused
    assert call(client, owner_key, "put", path, {"servers": []}) == (200, [])


@pytest.mark.django_db
def test_another_users_conversation_and_steps_answer_404(
    client: Client, owner: Any, other_user: Any, server: McpServer, queued: list[int], published: list[int]
) -> None:
    from chat.services.accounts import api_key_create

    reply, step = waiting_reply(owner, server)
    other_key = api_key_create(user=other_user, name="mallory")[1]
    path = f"/conversations/{reply.conversation_id}/mcp-servers"
    assert call(client, other_key, "put", path, {"servers": ["ours"]})[0] == 404
    assert call(client, other_key, "get", f"/messages/{reply.pk}/tool-steps")[0] == 404
    status, error = call(client, other_key, "post", f"/tool-steps/{step.pk}/approval", {"approve": True})
    assert (status, error["detail"]) == (404, f"Tool call {step.pk} not found.")
    step.refresh_from_db()
    assert step.status == ToolStep.Status.AWAITING_APPROVAL and published == []


@pytest.mark.django_db
def test_the_owner_approves_over_rest_once(
    client: Client, owner: Any, owner_key: str, server: McpServer, queued: list[int], published: list[int]
) -> None:
    reply, step = waiting_reply(owner, server)
    status, steps = call(client, owner_key, "get", f"/messages/{reply.pk}/tool-steps")
    assert status == 200 and [s["status"] for s in steps] == ["awaiting_approval"]
    assert steps[0]["arguments"] == {"text": "hi"} and steps[0]["server"] == "ours"
    status, message = call(client, owner_key, "get", f"/messages/{reply.pk}")
    assert (status, message["status"]) == (200, "tool_wait")

    status, answered = call(client, owner_key, "post", f"/tool-steps/{step.pk}/approval", {"approve": True})
    assert (status, answered["status"]) == (200, "queued")
    status, error = call(client, owner_key, "post", f"/tool-steps/{step.pk}/approval", {"approve": False})
    assert status == 409 and error["detail"].endswith("is not waiting for approval: it is queued.")
    status, _ = call(client, owner_key, "post", f"/tool-steps/{step.pk}/approval", {"approve": "yes"})
    assert status == 400


# --- The websocket ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_approvals_arrive_over_the_conversation_websocket(
    owner: Any, other_user: Any, server: McpServer, queued: list[int], published: list[int]
) -> None:
    from tests.test_consumers import ORIGIN, communicator, session_cookie

    reply, step = waiting_reply(owner, server)
    _, other_step = waiting_reply(other_user, server)
    cookie = session_cookie(owner)

    async def scenario() -> list[dict[str, Any]]:
        ws = communicator(reply.conversation_id, ORIGIN, cookie)
        await ws.connect()
        replies = [await ws.receive_json_from(timeout=5)]  # snapshot
        await ws.send_json_to({"action": "approve", "step_id": other_step.pk, "approve": True})
        replies.append(await ws.receive_json_from(timeout=5))
        await ws.send_json_to({"action": "approve", "step_id": step.pk, "approve": "yes"})
        replies.append(await ws.receive_json_from(timeout=5))
        await ws.send_json_to({"action": "approve", "step_id": step.pk, "approve": False})
        replies.append(await ws.receive_json_from(timeout=5))
        await ws.disconnect()
        return replies

    snapshot, foreign, malformed, event = async_to_sync(scenario)()
    assert snapshot["tool_steps"][str(reply.pk)][0]["status"] == "awaiting_approval"
    assert foreign["error"] == "No such tool call in this conversation."
    assert malformed["error"] == "step_id must be a number and approve true or false."
    assert event["type"] == "reply.tools" and event["steps"][0]["status"] == "refused"
    other_step.refresh_from_db()
    step.refresh_from_db()
    assert other_step.status == ToolStep.Status.AWAITING_APPROVAL
    assert step.status == ToolStep.Status.REFUSED and step.decided_by == owner


# --- Export, import and the admin's review ---------------------------------------


def finished_reply(owner: Any, server: McpServer) -> Message:
    reply, step = waiting_reply(owner, server)
    started = timezone.now() - timedelta(seconds=2)
    ToolStep.objects.filter(pk=step.pk).update(
        status=ToolStep.Status.DONE,
        result="echo: hi",
        decided_by=owner,
        decided_at=started,
        started_at=started,
        finished_at=started + timedelta(milliseconds=250),
    )
    Message.objects.filter(pk=reply.pk).update(status=Message.Status.DONE, content="It said hi.")
    reply.refresh_from_db()
    return reply


@pytest.mark.django_db
def test_steps_are_exported_and_imported_back(owner: Any, server: McpServer, queued: list[int]) -> None:
    reply = finished_reply(owner, server)
    conversation = reply.conversation
    data = exports.conversation_to_dict(conversation, list(conversation.messages.all()))
    exported = data["messages"][-1]["tool_steps"]
    assert [(s["server"], s["tool"], s["arguments"], s["status"], s["result"]) for s in exported] == [
        ("ours", "echo", {"text": "hi"}, "done", "echo: hi")
    ]
    markdown = exports.conversation_to_markdown(conversation, list(conversation.messages.all()))
    assert '- `ours.echo({"text": "hi"})` (done, 250 ms): echo: hi' in markdown

    copy = conversation_import(user=owner, data=json.loads(json.dumps(data)))
    imported = ToolStep.objects.get(reply__conversation=copy)
    assert (imported.tool, imported.arguments, imported.result, imported.server) == (
        "echo",
        {"text": "hi"},
        "echo: hi",
        None,
    )
    assert imported.duration_ms == 250 and imported.status == ToolStep.Status.DONE


@pytest.mark.django_db
@pytest.mark.parametrize(
    "step",
    [
        {"tool": "echo", "status": "queued"},  # unfinished: it would never run
        {"tool": "", "status": "done"},
        {"tool": "echo", "status": "done", "arguments": "hi"},
        {"tool": "echo", "status": "done", "started_at": "yesterday"},
    ],
)
def test_an_import_with_a_bad_step_says_what_is_allowed(owner: Any, step: dict[str, Any]) -> None:
    data = {
        "format": "sanjai.conversation",
        "version": 2,
        "messages": [
            {"id": 1, "parent_id": None, "role": "user", "content": "Hi"},
            {"id": 2, "parent_id": 1, "role": "assistant", "content": "Hello", "tool_steps": [step]},
        ],
    }
    with pytest.raises(exports.InvalidImport, match=r"messages\[1\]\.tool_steps\[0\] needs a tool name"):
        conversation_import(user=owner, data=data)


@pytest.mark.django_db
def test_the_admins_review_shows_the_calls(
    client: Client, owner: Any, server: McpServer, queued: list[int], django_user_model: Any
) -> None:
    reply = finished_reply(owner, server)
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "a long admin secret")
    client.force_login(admin)
    page = client.get(f"/admin/chat/message/{reply.pk}/change/").content.decode()
    assert "echo: hi" in page and "{&quot;text&quot;: &quot;hi&quot;}" in page
    page = client.get(f"/admin/chat/conversation/{reply.conversation_id}/change/").content.decode()
    assert "<code>ours.echo({&quot;text&quot;: &quot;hi&quot;})</code> done, 250 ms: echo: hi" in page
