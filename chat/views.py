"""HTML pages. Thin: parse the form, call a service or selector, render."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from chat import selectors, services
from chat.forms import ApiKeyForm, ProfileForm
from chat.models import ApiKey, Conversation


@login_required
def home(request: HttpRequest) -> HttpResponse:
    conversations = selectors.conversation_list(user=request.user)
    return render(request, "chat/home.html", {"conversations": conversations})


@login_required
@require_POST
def conversation_new(request: HttpRequest) -> HttpResponse:
    conversation = services.conversation_create(user=request.user)
    return redirect("conversation", conversation_id=conversation.pk)


@login_required
def conversation_detail(request: HttpRequest, conversation_id: int) -> HttpResponse:
    try:
        conversation = selectors.conversation_get(user=request.user, conversation_id=conversation_id)
    except Conversation.DoesNotExist:
        # 404, not 403: whether someone else's conversation exists is not ours to tell.
        raise Http404("No such conversation.") from None
    context = {
        "conversation": conversation,
        "chat_messages": selectors.conversation_messages(conversation=conversation),
    }
    return render(request, "chat/conversation.html", context)


def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("home")
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = services.user_create(
            username=form.cleaned_data["username"], password=form.cleaned_data["password1"]
        )
        # The account was just created with a password, so the model backend
        # is the one that vouches for it; naming it skips a second password hash.
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, "Welcome to SanjAI.")
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form})


@login_required
def profile(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        profile_form = ProfileForm(request.POST)
        if profile_form.is_valid():
            services.profile_update(user=request.user, **profile_form.cleaned_data)
            messages.success(request, "Profile saved.")
            return redirect("profile")
        return _render_profile(request, profile_form=profile_form, status=400)
    return _render_profile(request)


@never_cache  # the response carries a secret: no browser or proxy may keep it
@login_required
@require_POST
def api_key_new(request: HttpRequest) -> HttpResponse:
    key_form = ApiKeyForm(request.POST)
    if not key_form.is_valid():
        return _render_profile(request, key_form=key_form, status=400)
    # Rendered rather than redirected: a redirect would have to park the
    # secret in the session store to show it on the next page.
    api_key, secret = services.api_key_create(user=request.user, name=key_form.cleaned_data["name"])
    return _render_profile(request, new_key=secret, new_key_record=api_key)


@login_required
@require_POST
def api_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    try:
        services.api_key_revoke(user=request.user, key_id=key_id)
    except ApiKey.DoesNotExist:
        raise Http404("No such API key.") from None
    messages.success(request, "API key revoked.")
    return redirect("profile")


def _render_profile(
    request: HttpRequest,
    *,
    profile_form: ProfileForm | None = None,
    key_form: ApiKeyForm | None = None,
    new_key: str | None = None,
    new_key_record: ApiKey | None = None,
    status: int = 200,
) -> HttpResponse:
    if profile_form is None:
        current = services.profile_get_or_create(user=request.user)
        profile_form = ProfileForm(
            initial={
                "display_name": current.display_name,
                "default_system_prompt": current.default_system_prompt,
            }
        )
    context = {
        "profile_form": profile_form,
        "key_form": key_form or ApiKeyForm(),
        "api_keys": selectors.api_key_list(user=request.user),
        "new_key": new_key,
        "new_key_record": new_key_record,
    }
    return render(request, "chat/profile.html", context, status=status)
