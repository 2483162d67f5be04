"""Single sign-on through OpenID Connect, on top of mozilla-django-oidc.

The library does the protocol: the authorization-code flow with PKCE, the
state and nonce checks, the ID token's RS256 signature against the provider's
keys. This module adds what SanjAI decides: where the endpoints come from
(the issuer's discovery document, fetched lazily), which account a sign-in
opens (by the provider's stable issuer and subject, never by email), whether a
first sign-in may create one (settings.SIGNUP), and which groups it is in (the
groups claim, at each sign-in). Tokens are never logged.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any
from urllib.parse import urlencode

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.core.exceptions import SuspiciousOperation
from django.db import IntegrityError, transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render, resolve_url
from django.views.generic import View
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from chat.models import OidcIdentity
from chat.services.accounts import SignupClosed, signup_check
from chat.services.profiles import profile_get_or_create

logger = logging.getLogger(__name__)

# The library's endpoint settings, and the discovery document's names for them.
_ENDPOINTS = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
}
MAX_GROUPS = 100  # groups taken from one sign-in's claim; the rest are ignored
_USERNAME_UNSAFE = re.compile(r"[^\w.@+-]")

_discovered: dict[str, dict[str, Any]] = {}
_discovery_lock = threading.Lock()


class SsoUnavailable(Exception):
    """The provider could not be asked (down, slow, or its discovery document is wrong)."""


class IdentityTaken(Exception):
    """Linking was asked for, but the provider's identity opens another account already."""


# The session key a signed-in user's "link my account" sets before the sign-in
# (chat.account_views.sso_link): the callback then links instead of creating.
LINK_SESSION_KEY = "sso_link_user"


def discovery(timeout_s: float | None = None) -> dict[str, Any]:
    """The issuer's discovery document, fetched on first use and kept (only a good one is kept)."""
    issuer = settings.OIDC_ISSUER
    with _discovery_lock:
        if issuer in _discovered:
            return _discovered[issuer]
        url = f"{issuer}/.well-known/openid-configuration"
        try:
            response = requests.get(url, timeout=timeout_s or settings.OIDC_TIMEOUT_S)
            response.raise_for_status()
            document = response.json()
        except (requests.RequestException, ValueError) as exc:
            raise SsoUnavailable(
                f"The sign-in provider did not answer at {url} ({type(exc).__name__})."
            ) from exc
        # The document must be the issuer's own (OpenID Connect Discovery 1.0, section 4.3).
        if not isinstance(document, dict) or document.get("issuer", "").rstrip("/") != issuer:
            raise SsoUnavailable(f"The discovery document at {url} names another issuer than OIDC_ISSUER.")
        _discovered[issuer] = document
        return document


# /readyz asks at most this often while the provider does not answer, and waits this long.
PROBE_INTERVAL_S = 30.0
PROBE_TIMEOUT_S = 2.0
_last_probe: dict[str, tuple[float, str]] = {}  # issuer -> (when, why it failed)


def discovery_state() -> dict[str, Any]:
    """For /readyz: whether the provider's discovery document could be fetched.

    Informational: a provider that is down stops sign-ins through it, not the
    site (local administrators still sign in). A failure is retried at most
    every PROBE_INTERVAL_S, each try within PROBE_TIMEOUT_S, so probes stay fast."""
    issuer = settings.OIDC_ISSUER
    if issuer in _discovered:
        return {"discovery": "fetched"}
    when, error = _last_probe.get(issuer, (0.0, ""))
    if time.monotonic() - when >= PROBE_INTERVAL_S:
        try:
            discovery(timeout_s=PROBE_TIMEOUT_S)
            return {"discovery": "fetched"}
        except SsoUnavailable as exc:
            # The kind of failure only: the probe's output names no host or URL.
            cause = type(exc.__cause__).__name__ if exc.__cause__ else "another issuer"
            error = f"the provider's discovery document could not be fetched ({cause})"
            _last_probe[issuer] = (time.monotonic(), error)
    return {"discovery": "failed", "error": error}


def _setting(attr: str, *args: Any) -> Any:
    """The library's settings lookup, with the provider's endpoints taken from discovery."""
    if attr in _ENDPOINTS:
        value = discovery().get(_ENDPOINTS[attr])
        if not value:
            raise SsoUnavailable(f"The provider's discovery document has no {_ENDPOINTS[attr]}.")
        return value
    return import_from_settings(attr, *args)


def _username_for(claims: dict[str, Any]) -> str:
    """A free username from the configured claim (the subject when it is missing)."""
    wanted = str(claims.get(settings.OIDC_USERNAME_CLAIM) or claims["sub"])
    base = _USERNAME_UNSAFE.sub("-", wanted)[:140] or "user"
    users = get_user_model().objects
    candidate, n = base, 1
    while users.filter(username__iexact=candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def _groups_sync(*, user: User, claims: dict[str, Any]) -> None:
    """Make the user's groups exactly the claim's, creating groups that do not exist yet."""
    raw = claims.get(settings.OIDC_GROUPS_CLAIM, [])
    names = [raw] if isinstance(raw, str) else list(raw) if isinstance(raw, list) else []
    wanted = sorted({str(name)[:150] for name in names if str(name).strip()})[:MAX_GROUPS]
    user.groups.set([Group.objects.get_or_create(name=name)[0] for name in wanted])


class SsoBackend(OIDCAuthenticationBackend):
    """Opens the account linked to the provider's (issuer, subject); makes one on first sign-in."""

    get_settings = staticmethod(_setting)

    def get_userinfo(self, access_token: str, id_token: str, payload: dict[str, Any]) -> dict[str, Any]:
        userinfo: dict[str, Any] = super().get_userinfo(access_token, id_token, payload)
        # UserInfo's sub must be the ID token's (OpenID Connect Core 1.0, 5.3.2).
        if userinfo.get("sub") != payload.get("sub"):
            raise SuspiciousOperation("The provider's userinfo names another subject than its ID token.")
        return {**payload, **userinfo}

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        return bool(claims.get("sub"))  # no email needed: accounts are not found by it

    def filter_users_by_claims(self, claims: dict[str, Any]) -> Any:
        linked = self.UserModel.objects.filter(
            oidc_identity__issuer=settings.OIDC_ISSUER, oidc_identity__subject=str(claims["sub"])
        )
        linking = self.request.session.pop(LINK_SESSION_KEY, None)
        user = self.request.user
        if linking is None or not user.is_authenticated or linking != user.pk:
            return linked
        if linked.exists():
            if linked.filter(pk=user.pk).exists():
                return linked
            raise IdentityTaken(
                f"This {settings.OIDC_PROVIDER_NAME} account already opens another SanjAI account;"
                " it was not linked to yours."
            )
        # The signed-in account (its password sign-in proved it) and the provider's identity, now one.
        OidcIdentity.objects.create(user=user, issuer=settings.OIDC_ISSUER, subject=str(claims["sub"]))
        logger.info("sso: linked user %s to a provider subject", user.pk)
        return self.UserModel.objects.filter(pk=user.pk)

    def create_user(self, claims: dict[str, Any]) -> User:
        """The account of a first sign-in. Two first sign-ins of one subject at once (two
        tabs) make one account: the second finds the first's identity and opens it."""
        if settings.SIGNUP == "invite":  # invite links are for the password sign-up form
            raise SignupClosed(
                "Sign-up here is by invitation, which single sign-on cannot use."
                " Ask the administrator of this server for an account."
            )
        signup_check(invite_code=None)  # raises SignupClosed under "closed"
        subject = str(claims["sub"])
        for _ in range(3):  # a username taken meanwhile by someone else: pick the next one
            try:
                with transaction.atomic():
                    user = get_user_model().objects.create_user(
                        username=_username_for(claims),
                        password=None,
                        email=str(claims.get("email", ""))[:254],
                    )
                    OidcIdentity.objects.create(user=user, issuer=settings.OIDC_ISSUER, subject=subject)
                    profile_get_or_create(user=user)
                    _groups_sync(user=user, claims=claims)
            except IntegrityError:
                won = OidcIdentity.objects.filter(issuer=settings.OIDC_ISSUER, subject=subject).first()
                if won is not None:  # the other sign-in made the account: this one opens it
                    return self.update_user(won.user, claims)
                continue
            logger.info("sso: created user %s for a new subject", user.pk)
            return user
        raise IntegrityError("no free username for this sign-in after three tries")

    def update_user(self, user: User, claims: dict[str, Any]) -> User:
        _groups_sync(user=user, claims=claims)
        return user


def _failure(request: HttpRequest, reason: str, status: int) -> HttpResponse:
    context = {"reason": reason, "provider": settings.OIDC_PROVIDER_NAME}
    return render(request, "registration/sso_failed.html", context, status=status)


class SsoAuthenticateView(OIDCAuthenticationRequestView):
    """Sends the browser to the provider; 404 while single sign-on is off."""

    get_settings = staticmethod(_setting)

    def __init__(self, **kwargs: Any) -> None:
        View.__init__(self, **kwargs)  # the library's asks for the endpoints here: see get()

    def get(self, request: HttpRequest) -> HttpResponse:
        if not settings.OIDC_ISSUER:
            raise Http404("Single sign-on is off on this server.")
        try:
            self.OIDC_OP_AUTH_ENDPOINT = _setting("OIDC_OP_AUTHORIZATION_ENDPOINT")
        except SsoUnavailable as exc:
            return _failure(request, str(exc), 502)
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        response: HttpResponse = super().get(request)
        return response


class SsoCallbackView(OIDCAuthenticationCallbackView):
    """Where the provider sends the browser back; every refusal is a page that says why."""

    get_settings = staticmethod(_setting)

    def get(self, request: HttpRequest) -> HttpResponse:
        if not settings.OIDC_ISSUER:
            raise Http404("Single sign-on is off on this server.")
        try:
            response: HttpResponse = super().get(request)
        except SignupClosed as exc:
            return render(request, "registration/signup_closed.html", {"reason": str(exc)}, status=403)
        except IdentityTaken as exc:
            return _failure(request, str(exc), 409)
        except SuspiciousOperation:
            reason = (
                "This sign-in could not be checked: it was not started from this browser,"
                " or it was already used. Start again from the login page."
            )
            return _failure(request, reason, 400)
        except SsoUnavailable as exc:
            return _failure(request, str(exc), 502)
        except requests.RequestException as exc:
            # The exception's text can hold the token endpoint's answer: only its kind is shown.
            return _failure(
                request, f"The sign-in provider did not answer ({type(exc).__name__}). Try again later.", 502
            )
        return response

    def login_failure(self) -> HttpResponse:
        reason = "The sign-in provider refused this sign-in, or the account is disabled here."
        return _failure(self.request, reason, 403)


def provider_logout_url(request: HttpRequest) -> str:
    """The provider's end_session_endpoint when it has one (so its session ends too), else the login page.

    Only for a session the provider opened: a local sign-in (the break-glass
    admin) logs out here alone, as it signed in."""
    local = str(resolve_url(settings.LOGOUT_REDIRECT_URL))
    id_token = request.session.get("oidc_id_token")
    if not settings.OIDC_ISSUER or not id_token:
        return local
    try:
        endpoint = discovery().get("end_session_endpoint")
    except SsoUnavailable:
        return local
    if not endpoint:
        return local
    query = {"client_id": settings.OIDC_CLIENT_ID, "id_token_hint": id_token}
    return f"{endpoint}?{urlencode(query)}"
