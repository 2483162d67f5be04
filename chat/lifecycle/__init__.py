"""The reply lifecycle, one module per step.

- `submit`: the one way a reply starts (every surface calls `reply_submit`):
  input and rules checked, the question and a pending reply stored.
- `dispatch`: the pending reply's job, published to the worker that should
  run it (or failed at once when none can).
- `run`: a worker claims the reply, generates it, streams it and saves it.
- `tools`: a pass that ended in MCP tool calls pauses the reply (TOOL_WAIT);
  its steps run on the tools worker, and the reply is dispatched again once
  each has a result, an error or a refusal.
- `status`: the only writer of a reply's status. Every transition (pending,
  claimed, tool wait, finished, cancelled, failed) is one conditional update there.
- `sweep`: ends replies nobody is working on any more, within stated bounds
  (tool steps whose worker died, approvals nobody gives, included).

Dependencies run one way, status <- dispatch <- tools <- run,
tools <- sweep <- submit (tests/test_layout.py holds it): `chat.tasks` (the
Celery entry point) imports `run` and `tools`, and `dispatch` and `tools`
publish by task name.
"""
