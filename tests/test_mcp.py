"""MCP tools: the client against real servers, the admin's declaration, and the tool list cache.

Servers: the protocol's own reference server `mcp-server-time` over stdio, and
one built with the SDK's MCPServer (tests/mcp_servers.py) over stdio and over
streamable HTTP, with hostile tools (a megabyte of output, a call that never
returns, one that raises), a server that speaks garbage, and one that is down.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from chat.tools import client
from chat.tools.client import ServerSpec, ToolFailure

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TIME = ServerSpec("time", "stdio", command=PY, args=["-m", "mcp_server_time", "--local-timezone", "UTC"])
OURS = ServerSpec("ours", "stdio", command=PY, args=["-m", "tests.mcp_servers", "stdio"])
KEY = "s3cret-key-for-tests"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    """Our test server over streamable HTTP, refusing requests without the bearer key."""
    port = _free_port()
    process = subprocess.Popen([PY, "-m", "tests.mcp_servers", "http", str(port), KEY], cwd=ROOT)
    _wait_for_port(port)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.kill()  # a tool still sleeping would hold a graceful shutdown for ever
        process.wait()


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)


def call(spec: ServerSpec, name: str, arguments: dict[str, Any], **limits: Any) -> client.ToolOutput:
    limits = {"timeout_s": 15.0, "max_chars": 2000, **limits}
    return client.run(client.call_tool(spec, name, arguments, **limits))  # type: ignore[no-any-return]


# --- The client, against real servers ---------------------------------------------


def test_the_reference_time_server_lists_its_tools_and_answers_over_stdio() -> None:
    tools = client.run(client.list_tools(TIME, timeout_s=15, limit=64))
    assert {tool.name for tool in tools} == {"get_current_time", "convert_time"}
    schema = next(tool for tool in tools if tool.name == "get_current_time").input_schema
    assert schema["required"] == ["timezone"]

    output = call(TIME, "get_current_time", {"timezone": "Europe/Paris"})
    assert not output.is_error and '"timezone": "Europe/Paris"' in output.text


def test_a_tools_own_error_comes_back_as_its_text() -> None:
    output = call(TIME, "get_current_time", {"timezone": "Nowhere/Land"})
    assert output.is_error and "Nowhere/Land" in output.text


def test_the_tool_list_is_bounded() -> None:
    assert len(client.run(client.list_tools(OURS, timeout_s=15, limit=2))) == 2


def test_huge_output_is_cut_at_the_cap_and_says_so() -> None:
    output = call(OURS, "huge", {"size": 1_000_000}, max_chars=500)
    assert output.truncated and len(output.text) <= 500
    assert output.text.endswith("[output cut at 500 of 1000000 characters]")


def test_a_tool_that_never_returns_ends_at_the_timeout_with_a_readable_error() -> None:
    started = time.monotonic()
    with pytest.raises(ToolFailure, match=r"did not answer within 1 s"):
        call(OURS, "sleep", {"seconds": 3600}, timeout_s=1)
    assert time.monotonic() - started < 10  # the timeout, plus the SDK's stop of a stdio server


def test_a_server_that_writes_garbage_ends_at_the_timeout() -> None:
    garbage = ServerSpec("garbage", "stdio", command=PY, args=["-m", "tests.mcp_servers", "garbage"])
    with pytest.raises(ToolFailure, match=r"The MCP server garbage did not answer within 1 s"):
        call(garbage, "echo", {"text": "hi"}, timeout_s=1)


def test_a_server_that_cannot_start_or_crashes_says_so_at_once() -> None:
    with pytest.raises(ToolFailure, match=r"The MCP server gone failed: .*No such file"):
        call(ServerSpec("gone", "stdio", command="/nonexistent/mcp-server"), "echo", {})
    crash = ServerSpec(
        "crash", "stdio", command=PY, args=["-c", "import sys; print('boom', file=sys.stderr)"]
    )
    started = time.monotonic()
    with pytest.raises(ToolFailure, match=r"The MCP server crash failed: .*boom"):
        call(crash, "echo", {})
    assert time.monotonic() - started < 5


def test_a_stdio_server_killed_mid_call_gives_a_readable_error_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(ToolFailure, match=r"The MCP server ours failed: Connection closed"):
        call(OURS, "die", {}, timeout_s=15)
    assert time.monotonic() - started < 5


def test_an_http_server_killed_mid_call_ends_within_the_timeout() -> None:
    port = _free_port()
    process = subprocess.Popen([PY, "-m", "tests.mcp_servers", "http", str(port), KEY], cwd=ROOT)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        _wait_for_port(port)
        spec = ServerSpec("web", "http", url=url, api_key=KEY)
        with ThreadPoolExecutor(1) as pool:
            calling = pool.submit(call, spec, "sleep", {"seconds": 3600}, timeout_s=6)
            time.sleep(1.5)
            process.kill()
            started = time.monotonic()
            with pytest.raises(ToolFailure, match=r"The MCP server web (failed|did not answer within 6 s)"):
                calling.result(timeout=30)
            assert time.monotonic() - started < 6
    finally:
        process.kill()
        process.wait()


def test_streamable_http_with_its_key(http_url: str) -> None:
    output = call(ServerSpec("web", "http", url=http_url, api_key=KEY), "echo", {"text": "bonjour"})
    assert output.text == "echo: bonjour"


def test_streamable_http_without_the_key_is_refused(http_url: str) -> None:
    with pytest.raises(ToolFailure, match=r"The MCP server web failed"):
        call(ServerSpec("web", "http", url=http_url, api_key="wrong"), "echo", {"text": "x"})


def test_streamable_http_hostile_tools(http_url: str) -> None:
    spec = ServerSpec("web", "http", url=http_url, api_key=KEY)
    assert call(spec, "huge", {"size": 100_000}, max_chars=300).truncated
    with pytest.raises(ToolFailure, match=r"did not answer within 1 s"):
        call(spec, "sleep", {"seconds": 3600}, timeout_s=1)
    failed = call(spec, "fail", {})
    assert failed.is_error


def test_a_server_that_is_down_gives_a_readable_error() -> None:
    down = ServerSpec("down", "http", url=f"http://127.0.0.1:{_free_port()}/mcp")
    started = time.monotonic()
    with pytest.raises(ToolFailure, match=r"The MCP server down failed"):
        call(down, "echo", {"text": "x"}, timeout_s=5)
    assert time.monotonic() - started < 6


# --- The admin's declaration and the tool list cache -------------------------------


@pytest.fixture
def admin_client(client: Any, django_user_model: Any) -> Any:
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "a long admin secret")
    client.force_login(admin)
    return client


def _form(**fields: Any) -> dict[str, Any]:
    data = {
        "name": "time",
        "description": "",
        "transport": "stdio",
        "command": PY,
        "args": '["-m", "mcp_server_time", "--local-timezone", "UTC"]',
        "env_names": '["TZ"]',
        "url": "",
        "key_env": "",
        "enabled": "on",
        "default_approval": "ask",
        "tools-TOTAL_FORMS": "0",
        "tools-INITIAL_FORMS": "0",
    }
    return {**data, **fields}


@pytest.mark.django_db
def test_an_admin_declares_a_stdio_server_and_its_tools_are_listed(admin_client: Any) -> None:
    from chat.models import McpServer

    response = admin_client.post("/admin/chat/mcpserver/add/", _form())
    assert response.status_code == 302, response.content.decode()[:2000]
    server = McpServer.objects.get(name="time")
    assert server.list_error == "" and server.tools_listed_at is not None
    tools = {tool.name: tool.approval for tool in server.tools.all()}
    assert tools == {"get_current_time": "ask", "convert_time": "ask"}  # the server's default


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"command": ""}, "A stdio server needs the program to run."),
        ({"transport": "http", "command": ""}, "A streamable-HTTP server needs its URL."),
        ({"env_names": '["NOT A NAME"]'}, "Variable names are a JSON list"),
        ({"key_env": "sk-live-1234 5678"}, "The name of an environment variable"),
        ({"args": '"-m x"'}, "Arguments are a JSON list of strings"),
    ],
)
def test_a_declaration_that_cannot_run_is_refused_with_the_reason(
    admin_client: Any, fields: dict[str, str], message: str
) -> None:
    response = admin_client.post("/admin/chat/mcpserver/add/", _form(**fields))
    assert response.status_code == 200
    assert message in response.content.decode()


@pytest.mark.django_db
def test_the_http_key_is_read_from_the_named_variable_never_stored(
    http_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chat.models import McpServer
    from chat.tools.services import tools_refresh

    server = McpServer.objects.create(name="web", transport="http", url=http_url, key_env="WEB_MCP_KEY")
    tools_refresh(server=server)
    assert "refused" in server.list_error or "failed" in server.list_error  # no key in the environment

    monkeypatch.setenv("WEB_MCP_KEY", KEY)
    tools = tools_refresh(server=server)
    assert server.list_error == ""
    assert {tool.name for tool in tools} == {"echo", "huge", "sleep", "fail", "die"}
    stored = McpServer.objects.filter(pk=server.pk).values().get()
    assert KEY not in repr(stored)


@pytest.mark.django_db
def test_a_failed_listing_keeps_the_last_good_list_and_says_why() -> None:
    from chat.models import McpServer
    from chat.tools.services import tools_refresh

    server = McpServer.objects.create(name="ours", command=PY, args=["-m", "tests.mcp_servers", "stdio"])
    assert len(tools_refresh(server=server)) == 5
    McpServer.objects.filter(pk=server.pk).update(command="/nonexistent/mcp-server")
    server.refresh_from_db()
    assert len(tools_refresh(server=server)) == 5
    assert "No such file" in server.list_error


@pytest.mark.django_db
def test_tools_of_two_servers_with_one_name_are_told_apart(owner: Any) -> None:
    from chat.models import Conversation, McpServer, McpTool
    from chat.tools.services import tools_offered

    one = McpServer.objects.create(name="one", command="x")
    two = McpServer.objects.create(name="two", command="x")
    McpTool.objects.create(server=one, name="search")
    McpTool.objects.create(server=two, name="search")
    McpTool.objects.create(server=two, name="fetch", enabled=False)
    conversation = Conversation.objects.create(owner=owner)
    assert tools_offered(conversation=conversation).names() == []
    conversation.mcp_servers.set([one, two])
    assert sorted(tools_offered(conversation=conversation).names()) == ["one__search", "two__search"]


@pytest.mark.django_db
def test_stale_tool_lists_are_listed_again_on_the_tools_queue(settings: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from chat.models import McpServer
    from chat.tasks import refresh_mcp_tools
    from chat.tools.services import stale_servers

    settings.MCP_TOOLS_CACHE_S = 300
    server = McpServer.objects.create(name="ours", command=PY, args=["-m", "tests.mcp_servers", "stdio"])
    McpServer.objects.create(name="off", command="x", enabled=False)
    assert stale_servers() == [server]  # never listed; a disabled one is left alone
    refresh_mcp_tools(server.pk)  # the task body, as the tools worker runs it
    server.refresh_from_db()
    assert server.tools.count() == 5 and stale_servers() == []
    McpServer.objects.filter(pk=server.pk).update(tools_listed_at=timezone.now() - timedelta(seconds=301))
    assert stale_servers() == [server]


def test_the_tools_worker_takes_only_the_tools_queue() -> None:
    from sanjai_site.launcher import tools_worker_command

    command = tools_worker_command("tools@%h")
    assert command[command.index("--queues") + 1] == "tools"
    assert "--pool" in command and command[command.index("--pool") + 1] == "threads"
