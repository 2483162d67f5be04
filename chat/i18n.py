"""The interface's language: the profile's choice where there is one, else the browser's.

Django's LocaleMiddleware has already chosen from the Accept-Language header
(and the language cookie) by the time this runs; a language named on the
profile replaces that choice for the whole request. The choice is kept in the
session, so a page costs no extra query: it is read from the profile once per
session and written again when the profile changes (`remember_language`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import translation

SESSION_KEY = "sanjai_language"  # "" in the session: the profile names none (the browser's applies)


def remember_language(request: HttpRequest, language: str) -> None:
    """After the profile's language changes: this session follows it from the next page on."""
    request.session[SESSION_KEY] = language


def _stored_language(user_id: int) -> str:
    from chat.models import Profile  # imported late: chat.apps imports this module in ready()

    return Profile.objects.filter(user_id=user_id).values_list("language", flat=True).first() or ""


def language_on_login(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """user_logged_in: the new session starts in the profile's language (one query, at login)."""
    if request is not None and hasattr(request, "session"):
        remember_language(request, _stored_language(user.pk))


def _profile_language(request: HttpRequest, user_id: int) -> str:
    if SESSION_KEY not in request.session:  # a session from before this setting existed
        remember_language(request, _stored_language(user_id))
    return str(request.session[SESSION_KEY])


class ProfileLanguageMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.known = {code for code, _name in settings.LANGUAGES}

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # Only where a session already says who is logged in: API calls with a key skip it.
        if hasattr(request, "session") and request.user.is_authenticated:
            language = _profile_language(request, request.user.pk)
            if language in self.known:
                translation.activate(language)
                request.LANGUAGE_CODE = language
        return self.get_response(request)
