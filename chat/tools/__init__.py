"""MCP tools in the chat: servers an admin declares, tools a conversation may call.

- `client`: the MCP client (the official `mcp` SDK), Django-free: list a
  server's tools, call one, within a timeout and an output cap. Every way a
  server can fail (down, slow, hostile) comes back as a `ToolFailure` with a
  readable reason, never a hang.
- `services`: the tool list cache, what a conversation's replies are offered,
  the steps a reply's calls become, approvals, and running one step (the
  "tools" queue's task calls it).

A reply's states (it waits in TOOL_WAIT while its steps run) are the
lifecycle's (chat/lifecycle/status.py); the steps' own are written here.
"""
