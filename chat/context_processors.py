from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def site(request: HttpRequest) -> dict[str, str]:
    """What every page's header needs to know: whether to offer sign-up (settings.SIGNUP)."""
    return {"signup_mode": settings.SIGNUP}
