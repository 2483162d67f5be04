from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat.services.accounts import api_key_create


class Command(BaseCommand):
    help = "Create an API key for a user and print it. The key cannot be shown again."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="Command-line key", help="a label for the key")

    def handle(self, *args: Any, username: str, name: str, **options: Any) -> None:
        User = get_user_model()
        try:
            user = User._default_manager.get_by_natural_key(username)
        except User.DoesNotExist:
            raise CommandError(
                f"No user named {username!r}. Create one with `manage.py createsuperuser`."
            ) from None
        if not user.is_active:
            raise CommandError(f"User {username!r} is inactive; the API would refuse their keys.")
        api_key, key = api_key_create(user=user, name=name)
        # The key alone on stdout, so `KEY=$(manage.py create_api_key alice)` works.
        self.stdout.write(key)
        self.stderr.write(
            f"Created key {api_key.name!r} ({api_key.prefix}) for {username}. It cannot be shown again."
        )
