"""Writes, one module per concern. Views, APIs, consumers and tasks call these.

- `conversations`: create, rename, settings, delete, import.
- `limits`: the rules a submission must pass (busy conversation, per-user caps).
- `profiles`, `accounts`: profiles and their defaults; sign-up, deletion, API keys.

A reply's lifecycle (submit, dispatch, run, status, sweep) is `chat.lifecycle`.
"""
