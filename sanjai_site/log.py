"""Logging helpers for settings.LOGGING."""

from __future__ import annotations

import logging

# uvicorn logs every websocket's opening and closing at INFO on its error
# logger (--no-access-log covers HTTP only): two lines per page load.
WEBSOCKET_CHATTER = ("connection open", "connection closed")


class QuietWebsockets(logging.Filter):
    """Drops uvicorn's per-websocket lines; keeps its start-up, shutdown and error lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in WEBSOCKET_CHATTER:
            return False
        return not (message.startswith('"WebSocket ') or '- "WebSocket ' in message)
