"""Creates the provider's tables, its test user and the Application for SanjAI (run once per test session)."""

from __future__ import annotations

import os
import sys

import django


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.oidc_provider.settings")
    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from oauth2_provider.models import Application

    call_command("migrate", verbosity=0)
    username, password, client_id, client_secret, redirect_uri = sys.argv[1:6]
    User.objects.create_user(username, email=f"{username}@provider.test", password=password)
    Application.objects.create(
        name="SanjAI",
        client_id=client_id,
        client_secret=client_secret,
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
        redirect_uris=redirect_uri,
        algorithm=Application.RS256_ALGORITHM,
        skip_authorization=True,  # no consent page: the login form is the provider's step here
    )


if __name__ == "__main__":
    main()
