from __future__ import annotations

import os
from contextlib import suppress
from typing import Any

from django.apps import AppConfig
from django.contrib.auth.signals import user_logged_out
from django.db.backends.signals import connection_created


def _private_sqlite_files(sender: Any, connection: Any, **kwargs: Any) -> None:
    """An SQLite database (and its WAL files) is readable by its owner only: it holds every conversation."""
    if connection.vendor != "sqlite":
        return
    name = str(connection.settings_dict["NAME"])
    for path in (name, f"{name}-wal", f"{name}-shm"):
        with suppress(OSError):  # not created yet, or in memory
            os.chmod(path, 0o600)


def _close_sockets(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """Logging out closes the user's open chat sockets: they must not go on acting for them."""
    from chat.events import end_sessions

    if user is not None:
        end_sessions(user.pk)


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        connection_created.connect(_private_sqlite_files, dispatch_uid="sanjai-private-sqlite")
        user_logged_out.connect(_close_sockets, dispatch_uid="sanjai-logout-closes-sockets")
