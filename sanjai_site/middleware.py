from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from django.conf import settings
from django.http import HttpRequest, HttpResponse

# Pages load scripts, styles and images only from this server, and connect
# only back to it: even if something slipped past the Markdown sanitizer, a
# reply could neither run inline script nor load remote content.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy() -> str:
    """The policy, with the sign-in provider's origin among the form targets when single
    sign-on is on: browsers hold a form's redirects to form-action too, and "Sign in with"
    and "Log out" are forms whose answer sends the browser to the provider."""
    if not settings.OIDC_ISSUER:
        return CONTENT_SECURITY_POLICY
    return CONTENT_SECURITY_POLICY.replace(
        "form-action 'self'", f"form-action 'self' {_origin(settings.OIDC_ISSUER)}"
    )


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        # The admin ships its own inline styles; it is for trusted staff only.
        if not request.path.startswith("/admin/"):
            response.headers.setdefault("Content-Security-Policy", content_security_policy())
        return response
