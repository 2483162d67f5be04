"""Who is asking, and how the JSON APIs answer what went wrong.

The typed request of a logged-in page; who may sign in with a password; the
JSON APIs' key and session auth; and the error handlers every JSON API
installs with its own envelope.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import User
from django.core.exceptions import RequestDataTooBig
from django.db import OperationalError
from django.http import HttpRequest, JsonResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError
from ninja.parser import Parser
from ninja.security import APIKeyCookie, HttpBearer

from chat.services.accounts import api_key_authenticate


def client_ip_behind_proxy(request: HttpRequest) -> str | None:
    """The client's address as the proxy saw it (settings.BEHIND_PROXY, TLS_PROXY).

    The right-most X-Forwarded-For entry is the one the proxy itself appended;
    anything left of it came from the client and may be forged.
    """
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if forwarded.strip():
        return forwarded.split(",")[-1].strip()
    return request.META.get("REMOTE_ADDR")


def client_ip(request: HttpRequest) -> str | None:
    """Where the request came from: the direct peer, or behind a proxy the proxy's own entry."""
    behind = settings.BEHIND_PROXY or settings.TLS_PROXY
    return client_ip_behind_proxy(request) if behind else request.META.get("REMOTE_ADDR")


class BreakGlassBackend(ModelBackend):
    """Password sign-in for superusers only (settings.LOCAL_LOGIN=superusers):
    everyone else signs in through the provider. Covers every password form,
    the admin's too; the login page says why (chat.account_views.LoginForm)."""

    def user_can_authenticate(self, user: Any) -> bool:
        return bool(super().user_can_authenticate(user) and user.is_superuser)


def local_login_refusal(username: str) -> str | None:
    """Why `username` may not sign in with a password here, or None if they may.

    Checked before the password, so an account that signs in through the
    provider never has a password tried."""
    if settings.LOCAL_LOGIN == "all":
        return None
    if User.objects.filter(username=username, is_superuser=True, is_active=True).exists():
        return None
    return (
        "Password sign-in is turned off here, except for the site's administrators. "
        f"Use “Sign in with {settings.OIDC_PROVIDER_NAME}”."
    )


class AuthenticatedHttpRequest(HttpRequest):
    """The request of a view behind @login_required, whose user is never anonymous.

    Only a type: Django builds plain HttpRequests. This is the pattern django-stubs documents.
    """

    user: User


def auth_user(request: HttpRequest) -> User:
    """The user a JSON API route's authenticator accepted (django-ninja sets it as `request.auth`)."""
    user = getattr(request, "auth", None)
    if not isinstance(user, User):
        raise TypeError("auth_user() is for routes behind ApiKeyAuth or SessionAuth")
    return user


class ApiKeyAuth(HttpBearer):
    """`Authorization: Bearer <key>` with a key from the profile page."""

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        return api_key_authenticate(key=token)


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


CSRF_FAILED = "CSRF check failed: send the csrftoken cookie's value in the X-CSRFToken header."


logger = logging.getLogger(__name__)

UNEXPECTED = "The server hit an unexpected error (it has been logged); your message may not have been saved."
DATABASE_DOWN = "The database did not answer (it may be restarting). Try again in a few seconds."
DATABASE_RETRY_AFTER_S = 5


class JsonObjectParser(Parser):
    """Request bodies must be JSON objects: an array or a number is refused (400), not half-read."""

    def parse_body(self, request: HttpRequest) -> dict[str, Any]:
        data = json.loads(request.body)
        if not isinstance(data, dict):
            raise ValueError("the request body is not a JSON object")
        return data


# An API's own error envelope: (status, message, code) -> its JSON response.
ErrorFormat = Callable[[int, str, str], JsonResponse]


UNAUTHENTICATED = "Authentication required: log in, or send 'Authorization: Bearer <api key>'."


def json_api(
    *,
    error: ErrorFormat,
    sessions: bool = True,
    unauthenticated: str = UNAUTHENTICATED,
    **options: Any,
) -> NinjaAPI:
    """A JSON API as SanjAI's are made: bodies must be JSON objects; callers send an API
    key, or (with `sessions`) come from a logged-in browser; a refused caller and every
    unexpected error are answered in the API's own envelope (`error`).

    `options` go to NinjaAPI (title, urls_namespace, docs). Each API adds the handlers
    whose wording is its own (ninja's HttpError and ValidationError).
    """
    api = NinjaAPI(
        parser=JsonObjectParser(),
        auth=[api_key_auth, session_auth] if sessions else api_key_auth,
        **options,
    )
    api.add_exception_handler(
        AuthenticationError, lambda request, exc: error(401, unauthenticated, "invalid_api_key")
    )
    install_error_handlers(api, error)
    return api


def install_error_handlers(api: NinjaAPI, error: ErrorFormat) -> None:
    """Answers every JSON API gives in its own envelope: nothing escapes as Django's HTML page."""

    def unexpected(request: HttpRequest, exc: Any) -> JsonResponse:
        logger.error("unexpected error answering %s", request.path, exc_info=exc)
        return error(500, UNEXPECTED, "internal_error")

    def too_large(request: HttpRequest, exc: Any) -> JsonResponse:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        message = f"The request body is larger than {limit} bytes, the most this server accepts."
        return error(413, message, "request_too_large")

    def database_down(request: HttpRequest, exc: Any) -> JsonResponse:
        # A PostgreSQL restart or a network cut: transient, and the client can say so.
        logger.warning("the database did not answer %s: %s", request.path, exc)
        response = error(503, DATABASE_DOWN, "database_unavailable")
        response["Retry-After"] = str(DATABASE_RETRY_AFTER_S)
        return response

    api.add_exception_handler(Exception, unexpected)
    api.add_exception_handler(RequestDataTooBig, too_large)
    api.add_exception_handler(OperationalError, database_down)


def http_error_message(exc: HttpError, *, not_a_json_object: str) -> str:
    """django-ninja's own error wording, made to say what the caller should do."""
    message = str(exc)
    if exc.status_code == 403 and "CSRF" in message:
        return CSRF_FAILED
    if exc.status_code == 400 and message == "Cannot parse request body":
        return not_a_json_object
    return message
