"""Writes, one module per concern. Views, APIs, consumers and tasks call these.

- `conversations`: create, rename, settings, delete, import.
- `replies`: the one way a reply starts (`reply_submit`), cancel, fail.
- `limits`: the rules a submission must pass (busy conversation, per-user caps).
- `sweeper`: ends replies nobody is working on, within stated bounds.
- `profiles`, `accounts`: profiles and their defaults; sign-up, deletion, API keys.

The worker's side of a reply (claim, generate, save) is `chat.generation`.
"""
