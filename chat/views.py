"""HTML pages. Thin: parse the form, call a service or selector, render."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from chat import exports, selectors
from chat.auth import AuthenticatedHttpRequest
from chat.forms import ApiKeyForm, DefaultParamsForm, ProfileForm
from chat.models import ApiKey, Conversation
from chat.params import CHAT_PARAM_FIELDS, FORM_FIELDS
from chat.services import accounts, conversations, profiles
from chat.services.limits import InvalidInput, ModelNotDeclared
from chat.services.replies import params_for
from inference.params import InvalidParameter


def _chat_page(request: AuthenticatedHttpRequest, conversation: Conversation | None) -> HttpResponse:
    query = request.GET.get("q", "").strip()
    sidebar = (
        selectors.conversation_search(user=request.user, query=query)
        if query
        else selectors.conversation_list(user=request.user)
    )
    context = {
        "conversation": conversation,
        "conversations": sidebar,
        "query": query,
        "chat_messages": selectors.conversation_messages(conversation=conversation) if conversation else [],
        "params": params_for(conversation=conversation) if conversation else None,
        "fields": FORM_FIELDS,  # the settings panel's ranges, from the one parameter schema
        "max_message_chars": settings.CHAT_MAX_MESSAGE_CHARS,
        # The settings panel's model choice; the conversation's own, or the default.
        "models": settings.MODEL_REGISTRY.names,
        "model": (conversation.model if conversation else "") or settings.MODEL_REGISTRY.default,
    }
    return render(request, "chat/chat.html", context)


def _own_conversation(request: AuthenticatedHttpRequest, conversation_id: int) -> Conversation:
    try:
        return selectors.conversation_get(user=request.user, conversation_id=conversation_id)
    except Conversation.DoesNotExist:
        # 404, not 403: whether someone else's conversation exists is not ours to tell.
        raise Http404("No such conversation.") from None


@never_cache
@login_required
def model_status(request: AuthenticatedHttpRequest) -> JsonResponse:
    """The models and their state (ready, loading with a percentage, no worker), for the page."""
    models = selectors.model_list(registry=settings.MODEL_REGISTRY, redis_url=settings.REDIS_URL)
    return JsonResponse(
        {
            "models": [
                {"name": m.name, "state": m.state, "progress": m.progress, "stage": m.stage} for m in models
            ]
        }
    )


@login_required
def home(request: AuthenticatedHttpRequest) -> HttpResponse:
    return _chat_page(request, None)


@login_required
@require_POST
def conversation_new(request: AuthenticatedHttpRequest) -> HttpResponse:
    conversation = conversations.conversation_create(user=request.user)
    return redirect("conversation", conversation_id=conversation.pk)


@login_required
def conversation_detail(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    return _chat_page(request, _own_conversation(request, conversation_id))


@login_required
@require_POST
def conversation_rename(request: AuthenticatedHttpRequest, conversation_id: int) -> JsonResponse:
    title = request.POST.get("title", "").strip()
    if not title:
        return JsonResponse({"error": "The title cannot be empty."}, status=400)
    _own_conversation(request, conversation_id)
    conversation = conversations.conversation_update(
        user=request.user, conversation_id=conversation_id, title=title
    )
    return JsonResponse({"title": conversation.title})


@login_required
@require_POST
def conversation_delete(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    _own_conversation(request, conversation_id)
    conversations.conversation_delete(user=request.user, conversation_id=conversation_id)
    messages.success(request, "Conversation deleted.")
    return redirect("home")


@login_required
@require_POST
def conversation_settings(request: AuthenticatedHttpRequest, conversation_id: int) -> JsonResponse:
    _own_conversation(request, conversation_id)
    try:
        body = json.loads(request.body or b"{}")
        if not isinstance(body, dict):
            raise ValueError
    except ValueError:
        return JsonResponse({"error": "Send the settings as a JSON object."}, status=400)
    try:
        conversation = conversations.conversation_settings_update(
            user=request.user,
            conversation_id=conversation_id,
            system_prompt=str(body.get("system_prompt", "")),
            params={field: body.get(field) for field in CHAT_PARAM_FIELDS},
            model=str(body["model"]) if body.get("model") is not None else None,
        )
    except (InvalidParameter, InvalidInput) as exc:
        return JsonResponse({"error": str(exc), "field": exc.field}, status=400)
    except ModelNotDeclared as exc:
        return JsonResponse({"error": str(exc), "field": "model"}, status=400)
    return JsonResponse(
        {
            "system_prompt": conversation.system_prompt,
            "params": conversation.params,
            "model": conversation.model,
        }
    )


@login_required
def conversation_export(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _own_conversation(request, conversation_id)
    chat_messages = list(selectors.conversation_messages(conversation=conversation))
    return _download(
        request.GET.get("format", "json"),
        f"sanjai-conversation-{conversation.pk}",
        lambda: exports.conversation_to_dict(conversation, chat_messages),
        lambda: exports.conversation_to_markdown(conversation, chat_messages),
    )


@login_required
def export_all(request: AuthenticatedHttpRequest) -> HttpResponse:
    conversations = list(
        selectors.conversation_list(user=request.user).prefetch_related("messages").order_by("created")
    )

    def as_json() -> dict[str, Any]:
        return {
            "format": "sanjai.export",
            "version": exports.VERSION,
            "user": request.user.get_username(),
            "conversations": [exports.conversation_to_dict(c, list(c.messages.all())) for c in conversations],
        }

    def as_markdown() -> str:
        return "\n\n---\n\n".join(
            exports.conversation_to_markdown(c, list(c.messages.all())) for c in conversations
        )

    return _download(request.GET.get("format", "json"), "sanjai-export", as_json, as_markdown)


def _download(
    kind: str, stem: str, as_json: Callable[[], dict[str, Any]], as_markdown: Callable[[], str]
) -> HttpResponse:
    if kind == "json":
        response = HttpResponse(
            json.dumps(as_json(), indent=2, ensure_ascii=False), content_type="application/json"
        )
        extension = "json"
    elif kind == "md":
        response = HttpResponse(as_markdown(), content_type="text/markdown; charset=utf-8")
        extension = "md"
    else:
        return HttpResponse("format must be json or md", status=400, content_type="text/plain")
    response["Content-Disposition"] = f'attachment; filename="{stem}.{extension}"'
    return response


@login_required
@require_POST
def conversation_import(request: AuthenticatedHttpRequest) -> HttpResponse:
    upload = request.FILES.get("file")
    try:
        if upload is None:
            raise exports.InvalidImport("Choose an exported .json file to import.")
        if upload.size is not None and upload.size > settings.IMPORT_MAX_BYTES:
            limit_mb = settings.IMPORT_MAX_BYTES / 1_000_000
            raise exports.InvalidImport(
                f"The file is larger than {limit_mb:g} MB, the most an import may be."
            )
        try:
            data = json.loads(upload.read())
        except ValueError:
            raise exports.InvalidImport("The file is not valid JSON.") from None
        except RecursionError:  # hostile nesting; no export is deeper than a few levels
            raise exports.InvalidImport("The file is nested too deeply to be an export.") from None
        conversation = conversations.conversation_import(user=request.user, data=data)
    except exports.InvalidImport as exc:
        messages.error(request, f"Import failed: {exc}")
        return redirect("home")
    messages.success(request, "Conversation imported.")
    return redirect("conversation", conversation_id=conversation.pk)


@login_required
def profile(request: AuthenticatedHttpRequest) -> HttpResponse:
    if request.method == "POST":
        profile_form = ProfileForm(request.POST)
        params_form = DefaultParamsForm(request.POST)
        if profile_form.is_valid() and params_form.is_valid():
            profiles.profile_update(user=request.user, **profile_form.cleaned_data)
            profiles.profile_defaults_update(user=request.user, params=params_form.cleaned_data)
            messages.success(request, "Profile saved.")
            return redirect("profile")
        return _render_profile(request, profile_form=profile_form, params_form=params_form, status=400)
    return _render_profile(request)


@never_cache  # the response carries a secret: no browser or proxy may keep it
@login_required
@require_POST
def api_key_new(request: AuthenticatedHttpRequest) -> HttpResponse:
    key_form = ApiKeyForm(request.POST)
    if not key_form.is_valid():
        return _render_profile(request, key_form=key_form, status=400)
    # Rendered rather than redirected: a redirect would have to park the
    # secret in the session store to show it on the next page.
    api_key, secret = accounts.api_key_create(user=request.user, name=key_form.cleaned_data["name"])
    return _render_profile(request, new_key=secret, new_key_record=api_key)


@login_required
@require_POST
def api_key_revoke(request: AuthenticatedHttpRequest, key_id: int) -> HttpResponse:
    try:
        accounts.api_key_revoke(user=request.user, key_id=key_id)
    except ApiKey.DoesNotExist:
        raise Http404("No such API key.") from None
    messages.success(request, "API key revoked.")
    return redirect("profile")


def _render_profile(
    request: AuthenticatedHttpRequest,
    *,
    profile_form: ProfileForm | None = None,
    params_form: DefaultParamsForm | None = None,
    key_form: ApiKeyForm | None = None,
    new_key: str | None = None,
    new_key_record: ApiKey | None = None,
    status: int = 200,
) -> HttpResponse:
    if profile_form is None:
        current = profiles.profile_get_or_create(user=request.user)
        profile_form = ProfileForm(
            initial={
                "display_name": current.display_name,
                "email": request.user.email,
                "default_system_prompt": current.default_system_prompt,
            }
        )
    if params_form is None:
        defaults = profiles.params_for_new_conversations(user=request.user)
        params_form = DefaultParamsForm(
            initial={field: getattr(defaults, field) for field in CHAT_PARAM_FIELDS}
        )
    context = {
        "profile_form": profile_form,
        "params_form": params_form,
        "key_form": key_form or ApiKeyForm(),
        "api_keys": selectors.api_key_list(user=request.user),
        "new_key": new_key,
        "new_key_record": new_key_record,
    }
    return render(request, "chat/profile.html", context, status=status)
