from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest

from chat.models import Profile
from inference import speech


def site(request: HttpRequest) -> dict[str, object]:
    """What every page's header needs to know: whether to offer sign-up (settings.SIGNUP),
    the colour theme, set on <html> by the server so a page never flashes the wrong one,
    and which voice features this server has (inference/speech.py)."""
    return {
        # Under LOCAL_LOGIN=superusers accounts come from the provider only.
        "signup_mode": "closed" if settings.LOCAL_LOGIN == "superusers" else settings.SIGNUP,
        "local_login": settings.LOCAL_LOGIN,
        "sso_provider": settings.OIDC_PROVIDER_NAME if settings.OIDC_ISSUER else "",  # chat/sso.py
        "theme": _theme(request),
        "voice": speech.available(),
        "voice_max_seconds": settings.VOICE_MAX_SECONDS,
    }


def _theme(request: HttpRequest) -> str:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return Profile.Theme.SYSTEM
    # One small query per page; the profile's row is read through the user (and cached on it).
    try:
        return user.profile.theme
    except Profile.DoesNotExist:
        return Profile.Theme.SYSTEM
