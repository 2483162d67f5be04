"""The reply lifecycle, one module per step.

- `submit`: the one way a reply starts (every surface calls `reply_submit`):
  input and rules checked, the question and a pending reply stored.
- `dispatch`: the pending reply's job, published to the worker that should
  run it (or failed at once when none can).
- `run`: a worker claims the reply, generates it, streams it and saves it.
- `status`: the only writer of a reply's status. Every transition (pending,
  claimed, finished, cancelled, failed) is one conditional update there.
- `sweep`: ends replies nobody is working on any more, within stated bounds.

Dependencies run one way, status <- dispatch <- sweep <- submit and
status <- run (tests/test_layout.py holds it): `chat.tasks` (the Celery entry
point) imports `run`, and `dispatch` publishes through `chat.tasks`.
"""
