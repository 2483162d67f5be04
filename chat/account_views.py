"""Account pages: sign-up, the login lockout, password change and reset, usage, deletion.

Login, logout and the password pages are Django's own views with our
templates (chat/urls.py); this module holds what they do not.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login, logout
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm, UsernameField
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from chat import charts, sso
from chat.auth import AuthenticatedHttpRequest, local_login_refusal
from chat.models import OidcIdentity
from chat.services import accounts, usage


class LoginForm(AuthenticationForm):
    """Django's, saying why a password sign-in is refused under LOCAL_LOGIN=superusers."""

    def clean(self) -> dict[str, Any]:
        refusal = local_login_refusal(self.data.get("username") or "")
        if refusal is not None:
            raise ValidationError(refusal, code="password_login_off")
        return super().clean()


class SignupForm(UserCreationForm):
    email = forms.EmailField(
        label=gettext_lazy("Email"),
        required=False,
        help_text=gettext_lazy("Optional. Lets you reset a forgotten password."),
    )

    class Meta:  # Django's, with the email field
        model = User
        fields = ("username", "email")
        field_classes = {"username": UsernameField}


def signup(request: HttpRequest) -> HttpResponse:
    """Sign-up under settings.SIGNUP: open, by invite (?invite=<code>) or closed."""
    if request.user.is_authenticated:
        return redirect("home")
    invite_code = request.POST.get("invite") or request.GET.get("invite") or None
    if settings.LOCAL_LOGIN == "superusers":  # accounts come from the provider's first sign-in
        reason = _("Accounts here are made by signing in with %(provider)s.") % {
            "provider": settings.OIDC_PROVIDER_NAME
        }
        return render(request, "registration/signup_closed.html", {"reason": reason}, status=403)
    try:
        accounts.signup_check(invite_code=invite_code)
    except accounts.SignupClosed as exc:
        return render(request, "registration/signup_closed.html", {"reason": str(exc)}, status=403)
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = accounts.user_create(
                username=form.cleaned_data["username"],
                password=form.cleaned_data["password1"],
                email=form.cleaned_data["email"],
                invite_code=invite_code,
            )
        except accounts.SignupClosed as exc:  # the invite was used meanwhile
            return render(request, "registration/signup_closed.html", {"reason": str(exc)}, status=403)
        # The account was just created with a password, so the model backend
        # is the one that vouches for it; naming it skips a second password hash.
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, _("Welcome to SanjAI."))
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form, "invite": invite_code})


def locked_out(request: HttpRequest, original_response: Any = None, credentials: Any = None) -> HttpResponse:
    """django-axes' answer once a username has failed too often from one address (429)."""
    minutes = math.ceil(settings.AXES_COOLOFF_TIME.total_seconds() / 60)
    response = render(
        request,
        "registration/locked_out.html",
        {"failure_limit": settings.AXES_FAILURE_LIMIT, "minutes": minutes},
        status=429,
    )
    response["Retry-After"] = str(minutes * 60)
    return response


@login_required
@require_POST
def sso_link(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Link the signed-in account to the provider: a sign-in there follows, and its
    identity opens this account from then on (instead of a new one). A POST, so no
    other site can start it."""
    if not settings.OIDC_ISSUER:
        return redirect("profile")
    if OidcIdentity.objects.filter(user=request.user).exists():
        messages.info(
            request,
            _("Your account is already linked to %(provider)s.") % {"provider": settings.OIDC_PROVIDER_NAME},
        )
        return redirect("profile")
    request.session[sso.LINK_SESSION_KEY] = request.user.pk
    return redirect(f"{reverse('oidc_authentication_init')}?next={reverse('profile')}")


class PasswordChangeView(auth_views.PasswordChangeView):
    """Django's, back to the profile with a message. Other sessions and every open
    socket of the user end (chat.apps closes the sockets on any password change)."""

    template_name = "registration/password_change.html"
    success_url = reverse_lazy("profile")

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        messages.success(self.request, _("Password changed. Your other sessions were signed out."))
        return response


@login_required
def usage_page(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The user's tokens by day and model, and where they stand against their budgets."""
    day, month = usage.budgets(user=request.user)
    rows = usage.usage_by_day(user=request.user, days=30)
    today = timezone.localdate()
    chart = charts.tokens_by_day(
        ((row.day, row.model, row.total_tokens) for row in rows),
        first=today - timedelta(days=29),
        last=today,
        label=_("Your tokens per day over the last 30 days, by model"),
    )
    context = {"rows": rows, "budgets": [day, month], "chart": chart}
    return render(request, "chat/usage.html", context)


@login_required
@require_POST
def account_delete(request: AuthenticatedHttpRequest) -> HttpResponse:
    if not request.user.check_password(request.POST.get("password", "")):
        messages.error(request, _("Your account was not deleted: the password did not match."))
        return redirect("profile")
    user: User = request.user
    accounts.account_delete(user=user)
    logout(request)
    messages.success(request, _("Your account and all its conversations were deleted."))
    return redirect("login")
