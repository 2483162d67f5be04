"""The MCP client: a declared server's tools, and one call of one of them.

Django-free and stateless: each operation opens its own session (a stdio
server is started for it and stopped after it), so a server that crashed, hung
or was restarted between two calls costs nothing but that call. The whole
operation, connect and handshake included, runs under one deadline: a server
that never answers, or a tool that never returns, ends as a `ToolFailure`
within `timeout_s` (plus the SDK's few seconds to stop a stdio process).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

logger = logging.getLogger(__name__)

Transport = Literal["stdio", "http"]


class ToolFailure(Exception):
    """A server or tool that did not give a usable answer; the message says why, for people."""


@dataclass(frozen=True)
class ServerSpec:
    """How to reach one server. Secrets (env values, the HTTP key) are resolved by the
    caller from the environment at call time; they are never stored."""

    name: str
    transport: Transport
    command: str = ""
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    url: str = ""
    api_key: str = ""


@dataclass(frozen=True)
class ToolInfo:
    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class ToolOutput:
    text: str  # what goes back into the prompt, at most `max_chars`
    is_error: bool  # the tool itself reported an error (its text says what)
    truncated: bool  # the output was longer than `max_chars` and was cut


def run(coroutine: Any) -> Any:
    """Run one client operation to the end on a loop of its own: here when this thread
    has none (a worker's thread), else in a thread of its own (a caller inside a loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def list_tools(spec: ServerSpec, *, timeout_s: float, limit: int) -> list[ToolInfo]:
    """The server's tools (tools/list, every page), at most `limit` of them."""

    async def operation(client: Client) -> list[ToolInfo]:
        tools: list[ToolInfo] = []
        cursor: str | None = None
        while len(tools) < limit:
            page = await client.list_tools(cursor=cursor)
            tools += [
                ToolInfo(tool.name, tool.description or "", dict(tool.input_schema or {}))
                for tool in page.tools
            ]
            cursor = page.next_cursor
            if not cursor:
                break
        return tools[:limit]

    return await _session(spec, timeout_s, operation)


async def call_tool(
    spec: ServerSpec, name: str, arguments: Mapping[str, Any], *, timeout_s: float, max_chars: int
) -> ToolOutput:
    """Call one tool; its text content (or structured content as JSON), cut at `max_chars`."""

    async def operation(client: Client) -> ToolOutput:
        result = await client.call_tool(name, dict(arguments))
        return _output(result, max_chars)

    return await _session(spec, timeout_s, operation)


def _output(result: Any, max_chars: int) -> ToolOutput:
    parts = [block.text for block in result.content if getattr(block, "type", "") == "text"]
    if not parts and result.structured_content is not None:
        parts = [json.dumps(result.structured_content, ensure_ascii=False)]
    other = [block.type for block in result.content if getattr(block, "type", "") != "text"]
    if other:  # images, audio, resources: the model reads text only
        parts.append(f"[{len(other)} non-text part(s) left out: {', '.join(sorted(set(other)))}]")
    text = "\n".join(parts)
    truncated = len(text) > max_chars
    if truncated:
        note = f"\n[output cut at {max_chars} of {len(text)} characters]"
        text = text[: max(0, max_chars - len(note))] + note
    return ToolOutput(text=text, is_error=bool(result.is_error), truncated=truncated)


async def _session(spec: ServerSpec, timeout_s: float, operation: Any) -> Any:
    """Open a session, run `operation` on it and close it, all within `timeout_s`."""
    with tempfile.TemporaryFile(mode="w+") as errlog:
        try:
            with anyio.fail_after(timeout_s):
                async with AsyncExitStack() as stack:
                    transport = await _transport(stack, spec, errlog, timeout_s)
                    client = await stack.enter_async_context(
                        Client(transport, read_timeout_seconds=timeout_s, cache=None)
                    )
                    return await operation(client)
        except TimeoutError:
            raise ToolFailure(f"The MCP server {spec.name} did not answer within {timeout_s:g} s.") from None
        except ToolFailure:
            raise
        except MCPError as exc:
            raise ToolFailure(f"The MCP server {spec.name} refused the request: {exc}") from None
        except Exception as exc:  # the SDK's, httpx's, OS and validation errors: all mean "no answer"
            logger.info("MCP server %s failed: %r", spec.name, exc)
            raise ToolFailure(f"The MCP server {spec.name} failed: {_reason(exc, errlog)}") from None


async def _transport(stack: AsyncExitStack, spec: ServerSpec, errlog: Any, timeout_s: float) -> Any:
    if spec.transport == "stdio":
        parameters = StdioServerParameters(command=spec.command, args=list(spec.args), env=dict(spec.env))
        return stdio_client(parameters, errlog=errlog)
    headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
    # The SDK's own HTTP client (httpx2, its dependency), as its docs say to pass headers;
    # closed with the session (a client passed in is the caller's to close). No
    # redirects: the transport follows same-origin ones itself.
    http = await stack.enter_async_context(
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(timeout_s), follow_redirects=False)
    )
    return streamable_http_client(spec.url, http_client=http)


def _reason(exc: BaseException, errlog: Any) -> str:
    """A short readable reason: the innermost error of a task group, or the server's last words."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    reason = str(exc) or type(exc).__name__
    errlog.seek(0)
    tail = errlog.read()[-300:].strip()
    if tail:
        reason += f" (its last output: {tail.splitlines()[-1][:200]})"
    return reason[:500]


def environment(names: Sequence[str]) -> dict[str, str]:
    """The named variables' values from this process's environment (unset ones left out)."""
    return {name: os.environ[name] for name in names if name in os.environ}
