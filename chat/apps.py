from __future__ import annotations

import os
from contextlib import suppress
from typing import Any

from django.apps import AppConfig
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db.backends.signals import connection_created
from django.db.models.signals import post_save, pre_save


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


def _note_password_change(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    if instance.pk is None or (update_fields is not None and "password" not in update_fields):
        return
    stored = sender.objects.filter(pk=instance.pk).values_list("password", flat=True).first()
    instance._sanjai_password_changed = stored is not None and stored != instance.password


def _close_sockets_on_password_change(sender: Any, instance: Any, **kwargs: Any) -> None:
    """A changed password (by the user, a reset or an admin) closes the user's open
    sockets: other sessions stop working for HTTP, and must for the sockets too."""
    from chat.events import end_sessions

    if getattr(instance, "_sanjai_password_changed", False):
        instance._sanjai_password_changed = False
        end_sessions(instance.pk)


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        connection_created.connect(_private_sqlite_files, dispatch_uid="sanjai-private-sqlite")
        user_logged_out.connect(_close_sockets, dispatch_uid="sanjai-logout-closes-sockets")
        user_model = get_user_model()
        pre_save.connect(_note_password_change, sender=user_model, dispatch_uid="sanjai-password-change")
        post_save.connect(
            _close_sockets_on_password_change, sender=user_model, dispatch_uid="sanjai-password-change"
        )
