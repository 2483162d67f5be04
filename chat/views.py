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
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from chat import delivery, exports, i18n, selectors
from chat.auth import AuthenticatedHttpRequest
from chat.consumers import CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED
from chat.forms import ApiKeyForm, DefaultParamsForm, PresetForm, ProfileForm
from chat.lifecycle.submit import TITLE_LENGTH, NewConversation, Submission, params_for
from chat.models import ApiKey, Conversation, Folder, MemoryFact, Message, Preset
from chat.params import CHAT_PARAM_FIELDS, FORM_FIELDS
from chat.routing import conversation_ws_path
from chat.services import accounts, conversations, feedback, memory, policies, presets, profiles
from chat.services.limits import InvalidInput, ModelNotDeclared
from inference.params import (
    REPETITION_PENALTY_RANGE,
    TEMPERATURE_RANGE,
    TOP_P_RANGE,
    InvalidParameter,
)

# What the chat page's script needs from the server, given once (json_script)
# rather than repeated in it: the socket's close codes, the title's length, a memory's length.
PAGE_CONSTANTS = {
    "closeCodes": {"unauthenticated": CLOSE_UNAUTHENTICATED, "notFound": CLOSE_NOT_FOUND},
    "titleLength": TITLE_LENGTH,
    "memoryFactChars": memory.MAX_FACT_CHARS,
}


def _sidebar_view(request: AuthenticatedHttpRequest) -> tuple[str, bool]:
    """The sidebar's search (`?q=`) and which list it shows (`?archived=1`: the archived ones)."""
    return request.GET.get("q", "").strip(), request.GET.get("archived") == "1"


def _sidebar_folders(
    request: AuthenticatedHttpRequest, query: str, archived: bool
) -> list[selectors.SidebarFolder] | None:
    """The folders, above the main list; None (left out) in searches and the Archived view."""
    return None if query or archived else selectors.folder_sidebar(user=request.user)


def _start_folder(request: AuthenticatedHttpRequest) -> Folder | None:
    """The folder a new chat is started in (`?folder=<id>`: "New chat in this folder")."""
    folder_id = request.GET.get("folder", "")
    if not folder_id:
        return None
    try:
        return selectors.folder_get(user=request.user, folder_id=int(folder_id))
    except (ValueError, OverflowError, Folder.DoesNotExist):
        raise Http404("No such folder.") from None


def _chat_page(request: AuthenticatedHttpRequest, conversation: Conversation | None) -> HttpResponse:
    query, archived = _sidebar_view(request)
    start_folder = None if conversation else _start_folder(request)
    sidebar = selectors.conversation_sidebar(user=request.user, query=query, archived=archived)
    branch = selectors.conversation_branch(conversation=conversation) if conversation else None
    if conversation is not None:
        params = params_for(conversation=conversation)
        system_prompt = conversation.system_prompt
    else:  # the home page: a new chat, made with the first message as conversation_create makes one
        params = profiles.params_for_new_conversations(user=request.user)
        system_prompt = profiles.profile_get_or_create(user=request.user).default_system_prompt
    usable_presets = selectors.preset_list(user=request.user)  # the start buttons and the folder dialog
    context = {
        "conversation": conversation,
        "sidebar": sidebar,
        "conversations": sidebar.conversations,
        "query": query,
        "archived": archived,
        # The branch being viewed; the socket's snapshot adds the "< n/m >" controls.
        "chat_messages": branch.messages if branch else [],
        "params": params,
        "system_prompt": system_prompt,
        "fields": FORM_FIELDS,  # the settings panel's ranges, from the one parameter schema
        # The same ranges as intervals ("(0, 1]"), for the panel's words in the page's language.
        "ranges": {
            "temperature": TEMPERATURE_RANGE.describe(),
            "top_p": TOP_P_RANGE.describe(),
            "repetition_penalty": REPETITION_PENALTY_RANGE.describe(),
        },
        "max_message_chars": settings.CHAT_MAX_MESSAGE_CHARS,
        # The settings panel's model choice; the conversation's own, or the default.
        # Only the models the user's groups allow; their default falls back to their first one.
        "models": policies.models_for(user=request.user),
        "model": (conversation.model if conversation else "")
        or policies.default_model_for(user=request.user),
        "sharing": settings.SHARING,
        # A new chat may start from a preset (a click, or "/" in the empty box); a conversation names its own.
        "presets": [] if conversation else usable_presets,
        "preset": conversation.preset if conversation else None,
        "use_memory": conversation.use_memory if conversation else True,
        "folders": _sidebar_folders(request, query, archived),
        "folder_presets": usable_presets,  # the folder dialog's choice
        # "New chat in this folder": filed there, and started from the folder's preset if it has one.
        "start_folder": start_folder,
        # The conversation's share link, if it has one (the Share panel shows it).
        "share": selectors.conversation_share(conversation=conversation) if conversation else None,
        "ws_path": conversation_ws_path(conversation.pk) if conversation else "",
        "page_constants": PAGE_CONSTANTS,  # static/js/chat/constants.js reads them (json_script)
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
    mine = policies.allowance(user=request.user)
    served = selectors.model_list(registry=settings.MODEL_REGISTRY, redis_url=settings.REDIS_URL)
    models = [m for m in served if mine.allows(m.name)]
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
def sidebar_page(request: AuthenticatedHttpRequest) -> HttpResponse:
    """One page of the sidebar's list, as HTML for the page to put in place (More, refresh)."""
    query, archived = _sidebar_view(request)
    try:
        sidebar = selectors.conversation_sidebar(
            user=request.user, query=query, archived=archived, before=request.GET.get("before")
        )
    except selectors.InvalidCursor as exc:
        return HttpResponse(str(exc), status=400, content_type="text/plain")
    context = {"sidebar": sidebar, "query": query, "archived": archived}
    if request.GET.get("before") is None:  # the first page: the folders come first
        context["folders"] = _sidebar_folders(request, query, archived)
    return render(request, "chat/_sidebar_page.html", context)


def _json_object(request: AuthenticatedHttpRequest) -> dict[str, Any] | None:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _conversation_links(conversation: Conversation) -> dict[str, Any]:
    """What the page needs to become a conversation's page without a reload."""
    kwargs = {"conversation_id": conversation.pk}
    return {
        "id": conversation.pk,
        "title": conversation.title,
        "url": reverse("conversation", kwargs=kwargs),
        "ws_path": conversation_ws_path(conversation.pk),
        "settings_url": reverse("conversation_settings", kwargs=kwargs),
        "export_url": reverse("conversation_export", kwargs=kwargs),
        "share_url": reverse("conversation_share", kwargs=kwargs),
    }


@login_required
@require_POST
def conversation_start(request: AuthenticatedHttpRequest) -> JsonResponse:
    """The home page's first message: the conversation is created with it, never before.

    Through the one submit path, so every rule and limit is the same as for the
    next messages (which go over the conversation's websocket).
    """
    body = _json_object(request)
    if body is None or not isinstance(body.get("content"), str):
        return JsonResponse({"error": "Send the message as a JSON object with a content string."}, status=400)
    model = body.get("model") or ""
    if not isinstance(model, str):
        return JsonResponse({"error": "model: must be the name of a model."}, status=400)
    folder_id = body.get("folder_id")
    if folder_id is not None and (type(folder_id) is not int or not 1 <= folder_id < 2**63):
        return JsonResponse({"error": "folder_id: must be the id of a folder of yours, or null."}, status=400)
    new = NewConversation(system_prompt=None, folder_id=folder_id)
    submission = Submission(
        content=body["content"], new_conversation=new, model=model, documents=body.get("documents", ())
    )
    try:
        posted = delivery.submit_sync(user=request.user, submission=submission)
    except Folder.DoesNotExist:  # deleted meanwhile, or someone else's: nothing was stored
        return JsonResponse({"error": f"Folder {folder_id} not found.", "code": "not_found"}, status=404)
    except delivery.Problem as problem:
        answer: dict[str, Any] = {"error": problem.message, "code": problem.code}
        if problem.conversation_id is not None:  # stored, but no worker took the reply
            conversation = selectors.conversation_get(
                user=request.user, conversation_id=problem.conversation_id
            )
            answer["conversation"] = _conversation_links(conversation)
        response = JsonResponse(answer, status=problem.status)
        if problem.retry_after_s is not None:
            response["Retry-After"] = str(problem.retry_after_s)
        return response
    conversation = selectors.conversation_get(user=request.user, conversation_id=posted.reply.conversation_id)
    return JsonResponse({"conversation": _conversation_links(conversation)}, status=201)


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
def conversation_flags(request: AuthenticatedHttpRequest, conversation_id: int) -> JsonResponse:
    """Pin or unpin, archive or unarchive: a JSON object with `pinned` and/or `archived`."""
    body = _json_object(request)
    flags = {name: body.get(name) for name in ("pinned", "archived")} if body is not None else {}
    if body is None or any(value is not None and not isinstance(value, bool) for value in flags.values()):
        return JsonResponse(
            {"error": "Send a JSON object with pinned and/or archived: true or false."}, status=400
        )
    _own_conversation(request, conversation_id)
    conversation = conversations.conversation_update(
        user=request.user, conversation_id=conversation_id, **flags
    )
    return JsonResponse(
        {"pinned": conversation.pinned_at is not None, "archived": conversation.archived_at is not None}
    )


@login_required
@require_POST
def conversation_delete(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    _own_conversation(request, conversation_id)
    conversations.conversation_delete(user=request.user, conversation_id=conversation_id)
    messages.success(request, _("Conversation deleted."))
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
            use_memory=body.get("use_memory") if isinstance(body.get("use_memory"), bool) else None,
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
            "use_memory": conversation.use_memory,
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
        selectors.conversation_list(user=request.user)
        .select_related("folder")
        .prefetch_related("messages")
        .order_by("created")
    )

    def as_json() -> dict[str, Any]:
        return {
            "format": "sanjai.export",
            "version": exports.VERSION,
            "user": request.user.get_username(),
            "memory": list(selectors.memory_list(user=request.user).values_list("text", flat=True)),
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
            raise exports.InvalidImport(exports.import_too_large(settings.IMPORT_MAX_BYTES))
        try:
            data = json.loads(upload.read())
        except ValueError:
            raise exports.InvalidImport("The file is not valid JSON.") from None
        except RecursionError:  # hostile nesting; no export is deeper than a few levels
            raise exports.InvalidImport("The file is nested too deeply to be an export.") from None
        conversation = conversations.conversation_import(user=request.user, data=data)
    except exports.InvalidImport as exc:
        messages.error(request, _("Import failed: %(reason)s") % {"reason": exc})
        return redirect("profile")  # the import form's page
    messages.success(request, _("Conversation imported."))
    return redirect("conversation", conversation_id=conversation.pk)


# The query the body limit sends a browser back with when its import was too large.
IMPORT_REFUSED = "import=too-large"


@login_required
def profile(request: AuthenticatedHttpRequest) -> HttpResponse:
    if request.method == "POST":
        profile_form = ProfileForm(request.POST)
        params_form = DefaultParamsForm(request.POST)
        if profile_form.is_valid() and params_form.is_valid():
            profiles.profile_update(user=request.user, **profile_form.cleaned_data)
            profiles.profile_defaults_update(user=request.user, params=params_form.cleaned_data)
            i18n.remember_language(request, profile_form.cleaned_data["language"])
            # In the language just chosen: the message shows on the next page, which has it.
            chosen = profile_form.cleaned_data["language"] or translation.get_language_from_request(request)
            with translation.override(chosen):
                messages.success(request, _("Profile saved."))
            return redirect("profile")
        return _render_profile(request, profile_form=profile_form, params_form=params_form, status=400)
    if request.GET.urlencode() == IMPORT_REFUSED:  # sent back by the body limit (sanjai_site/uploads.py)
        messages.error(
            request,
            _("Import failed: %(reason)s") % {"reason": exports.import_too_large(settings.IMPORT_MAX_BYTES)},
        )
    return _render_profile(request)


@login_required
@require_POST
def theme_update(request: AuthenticatedHttpRequest) -> JsonResponse:
    """The theme toggle in every page's header: light, dark or system, kept in the profile."""
    body = _json_object(request)
    try:
        profile = profiles.profile_theme_update(user=request.user, theme=str((body or {}).get("theme")))
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"theme": profile.theme})


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
    messages.success(request, _("API key revoked."))
    return redirect("profile")


@login_required
@require_POST
def preset_new(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = PresetForm(request.POST, user=request.user)
    if form.is_valid():
        data = dict(form.cleaned_data)
        fields = {name: data.pop(name) for name in ("name", "description", "system_prompt", "model")}
        try:
            preset = presets.preset_create(user=request.user, params=data, **fields)
        except (InvalidInput, InvalidParameter, ModelNotDeclared) as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(
                request,
                _("Preset %(name)s saved: start a chat from it on the chat page.") % {"name": preset.name},
            )
            return redirect("profile")
    # Shown again with what was typed and why it was refused.
    return _render_profile(request, preset_form=form, status=400)


@login_required
@require_POST
def memory_new(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Keep a fact: from the profile page's form (back to it), or the chat page's Remember (JSON)."""
    as_json = request.content_type == "application/json"
    body = _json_object(request) if as_json else request.POST
    text = body.get("text") if body is not None else None
    try:
        fact = memory.memory_add(user=request.user, text=text if isinstance(text, str) else "")
    except InvalidInput as exc:
        if as_json:
            return JsonResponse({"error": str(exc), "field": "text"}, status=400)
        # Shown again with what was typed and why it was refused.
        return _render_profile(request, memory_text=str(text or ""), memory_error=str(exc), status=400)
    if as_json:
        return JsonResponse({"id": fact.pk, "text": fact.text}, status=201)
    messages.success(request, _("Kept in your memory."))
    return redirect(f"{reverse('profile')}#memory")


@login_required
@require_POST
def memory_forget(request: AuthenticatedHttpRequest, fact_id: int) -> HttpResponse:
    try:
        memory.memory_delete(user=request.user, fact_id=fact_id)
    except MemoryFact.DoesNotExist:
        raise Http404("No such fact.") from None
    messages.success(request, _("Forgotten."))
    return redirect(f"{reverse('profile')}#memory")


@login_required
@require_POST
def preset_delete(request: AuthenticatedHttpRequest, preset_id: int) -> HttpResponse:
    try:
        presets.preset_delete(user=request.user, preset_id=preset_id)
    except Preset.DoesNotExist:
        raise Http404("No such preset.") from None
    messages.success(request, _("Preset deleted. Conversations started from it keep what they had."))
    return redirect("profile")


def _render_profile(
    request: AuthenticatedHttpRequest,
    *,
    profile_form: ProfileForm | None = None,
    params_form: DefaultParamsForm | None = None,
    key_form: ApiKeyForm | None = None,
    preset_form: PresetForm | None = None,
    memory_text: str = "",
    memory_error: str = "",
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
                "language": current.language,
            }
        )
    if params_form is None:
        defaults = profiles.params_for_new_conversations(user=request.user)
        params_form = DefaultParamsForm(
            initial={field: getattr(defaults, field) for field in CHAT_PARAM_FIELDS}
        )
    if preset_form is None:
        defaults = profiles.params_for_new_conversations(user=request.user)
        preset_form = PresetForm(
            user=request.user, initial={field: getattr(defaults, field) for field in CHAT_PARAM_FIELDS}
        )
    context = {
        "profile_form": profile_form,
        "params_form": params_form,
        "preset_form": preset_form,
        "presets": selectors.preset_list(user=request.user),
        "memory": selectors.memory_list(user=request.user),
        "memory_max_facts": settings.MEMORY_MAX_FACTS,
        "memory_text": memory_text,
        "memory_max_chars": memory.MAX_FACT_CHARS,
        "memory_error": memory_error,
        "key_form": key_form or ApiKeyForm(),
        "api_keys": selectors.api_key_list(user=request.user),
        "new_key": new_key,
        "new_key_record": new_key_record,
        # Who opened the user's conversations in the admin (AUDIT_NOTICE off: the admin's log only).
        "audit_notices": selectors.audit_notice_list(user=request.user) if settings.AUDIT_NOTICE else None,
        "audit_notice_entries": selectors.AUDIT_NOTICE_ENTRIES,
    }
    return render(request, "chat/profile.html", context, status=status)


@login_required
@require_POST
def message_feedback(request: AuthenticatedHttpRequest, message_id: int) -> JsonResponse:
    """Thumbs up or down on a reply, with an optional comment: `{"rating": "up" | "down" | null,
    "comment": "..."}`; a null rating takes it back."""
    body = _json_object(request)
    if body is None or not isinstance(body.get("comment", ""), str):
        expected = 'Send {"rating": "up" or "down" or null, "comment": "..."}.'
        return JsonResponse({"error": expected}, status=400)
    try:
        if body.get("rating") is None:
            feedback.feedback_clear(user=request.user, message_id=message_id)
        else:
            comment = body.get("comment", "")
            feedback.feedback_set(
                user=request.user, message_id=message_id, rating=body["rating"], comment=comment
            )
    except Message.DoesNotExist:
        raise Http404("No such reply.") from None
    except InvalidInput as exc:
        return JsonResponse({"error": str(exc), "field": exc.field}, status=400)
    message = selectors.message_get(user=request.user, message_id=message_id)
    return JsonResponse({"feedback": selectors.message_feedback(message)})
