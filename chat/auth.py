"""Authentication for the JSON APIs: an API key, or the browser session with CSRF."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from ninja.security import APIKeyCookie, HttpBearer

from chat import services


class ApiKeyAuth(HttpBearer):
    """`Authorization: Bearer <key>` with a key from the profile page."""

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        return services.api_key_authenticate(key=token)


class SessionAuth(APIKeyCookie):
    """The logged-in browser session. CSRF applies, since browsers send cookies by themselves."""

    param_name = settings.SESSION_COOKIE_NAME

    def _get_key(self, request: HttpRequest) -> str | None:
        # No session cookie: not logged in (401), rather than a CSRF failure (403).
        if self.param_name not in request.COOKIES:
            return None
        return super()._get_key(request)

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        return request.user if request.user.is_authenticated else None


api_key_auth = ApiKeyAuth()
session_auth = SessionAuth()
