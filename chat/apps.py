from __future__ import annotations

import os
from contextlib import suppress
from typing import Any

from django.apps import AppConfig
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out
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


def _note_credentials_change(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    if instance.pk is None:
        return
    watched = {"password", "is_active"}
    if update_fields is not None and not watched & set(update_fields):
        return
    stored = sender.objects.filter(pk=instance.pk).values("password", "is_active").first()
    instance._sanjai_sessions_end = stored is not None and (
        stored["password"] != instance.password or (stored["is_active"] and not instance.is_active)
    )


def _close_sockets_on_credentials_change(sender: Any, instance: Any, **kwargs: Any) -> None:
    """A changed password (by the user, a reset or an admin) or a deactivated account
    closes the user's open sockets: other sessions stop working for HTTP, and must
    for the sockets too."""
    from chat.events import end_sessions

    if getattr(instance, "_sanjai_sessions_end", False):
        instance._sanjai_sessions_end = False
        end_sessions(instance.pk)


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        connection_created.connect(_private_sqlite_files, dispatch_uid="sanjai-private-sqlite")
        user_logged_out.connect(_close_sockets, dispatch_uid="sanjai-logout-closes-sockets")
        from chat.i18n import language_on_login

        user_logged_in.connect(language_on_login, dispatch_uid="sanjai-login-language")
        user_model = get_user_model()
        uid = "sanjai-credentials-change"
        pre_save.connect(_note_credentials_change, sender=user_model, dispatch_uid=uid)
        post_save.connect(_close_sockets_on_credentials_change, sender=user_model, dispatch_uid=uid)
