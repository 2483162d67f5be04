"""MCP servers for the tests, built with the SDK's own server (MCPServer, once FastMCP).

    python -m tests.mcp_servers stdio            the tools over stdio
    python -m tests.mcp_servers http PORT KEY    over streamable HTTP at /mcp, refusing
                                                 requests without "Authorization: Bearer KEY"
    python -m tests.mcp_servers garbage          writes what is not JSON-RPC to stdout

The tools include hostile ones: `huge` answers a megabyte, `sleep` outlives any
timeout, `fail` raises, `die` kills its server in the middle of the call.
"""

from __future__ import annotations

import os
import sys
import time

from mcp.server.mcpserver import MCPServer

server = MCPServer("sanjai-test")


@server.tool()
def echo(text: str) -> str:
    """Repeat the text."""
    return f"echo: {text}"


@server.tool()
def huge(size: int = 1_000_000) -> str:
    """Answer with `size` characters."""
    return "x" * size


@server.tool()
def sleep(seconds: float = 3600) -> str:
    """Sleep, then answer."""
    time.sleep(seconds)
    return "woke up"


@server.tool()
def die() -> str:
    """The server process dies in the middle of the call (as one killed would)."""
    os._exit(1)


@server.tool()
def fail() -> str:
    """Always raise."""
    raise RuntimeError("this tool always fails")


def _http(port: int, key: str) -> None:
    import uvicorn

    app = server.streamable_http_app()

    async def guarded(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization") != f"Bearer {key}".encode():
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"no key"})
                return
        await app(scope, receive, send)

    uvicorn.run(guarded, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "stdio":
        server.run("stdio")
    elif mode == "http":
        _http(int(sys.argv[2]), sys.argv[3])
    elif mode == "garbage":
        print("this is not JSON-RPC", flush=True)
        print("{not json either", flush=True)
        time.sleep(3600)
