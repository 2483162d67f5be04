"""The operator's review screens.

Conversations and messages are a record of what people and the model said:
the admin shows them read-only, so a review can never rewrite history.
Superusers may still delete (for example on a user's request).

Other users' conversations and messages open only with the permission
chat.read_others_conversations (chat.models.READ_OTHERS_CONVERSATIONS), which
running the site (staff, other model permissions) does not give; every view and
export of one is written to the append-only audit log (AuditEntry, below).
Superusers hold it implicitly, as Django gives them every permission: a superuser
can grant any permission to anyone, themselves included, so withholding it would
protect nothing; the log is what makes their reading visible. Staff without it
keep the feedback queue: the replies people rated, which they asked to be read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import date, timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.defaultfilters import linebreaksbr
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from chat import charts, exports, selectors
from chat.models import ENV_NAME as ENV_NAME_PATTERN
from chat.models import (
    READ_OTHERS_CONVERSATIONS,
    ApiKey,
    AuditEntry,
    Conversation,
    Feedback,
    GroupPolicy,
    Invite,
    McpServer,
    McpTool,
    Message,
    OidcIdentity,
    Preset,
    Profile,
    Share,
    ToolStep,
    Usage,
)
from chat.services import audit, presets, usage
from chat.spreadsheets import csv_response
from chat.tools import services as tool_services


class ReadOnlyAdminMixin:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_superuser


def shown_object(response: HttpResponse) -> Any:
    """The object a change view showed, or None when it refused or redirected."""
    if isinstance(response, TemplateResponse) and response.status_code == 200:
        return (response.context_data or {}).get("original")
    return None


class ReadsOthersMixin:
    """Conversations' content: opened only with READ_OTHERS_CONVERSATIONS, each view audited."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        allowed = super().has_view_permission(request, obj)  # type: ignore[misc]
        return bool(allowed) and request.user.has_perm(READ_OTHERS_CONVERSATIONS)

    def shown_conversations(self, obj: Any) -> Iterable[Conversation]:
        raise NotImplementedError

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        response = super().change_view(request, object_id, form_url, extra_context)  # type: ignore[misc]
        self._record_view(request, shown_object(response))
        return response

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: Any = None) -> HttpResponse:
        """The confirmation lists the messages to go, each by its start: a view too."""
        response = super().delete_view(request, object_id, extra_context)  # type: ignore[misc]
        if isinstance(response, TemplateResponse) and response.status_code == 200:
            self._record_view(request, (response.context_data or {}).get("object"))
        return response

    def _record_view(self, request: HttpRequest, obj: Any) -> None:
        if obj is not None:  # shown, not refused or redirected
            audit.audit_record(
                request=request, conversations=self.shown_conversations(obj), action=AuditEntry.Action.VIEW
            )


def follows(obj: Message) -> str:
    """The message's parent, by id: messages that follow the same one are alternatives
    (a regenerated reply, an edited question), each on its own branch."""
    return "—" if obj.parent_id is None else f"#{obj.parent_id}"


def sources(obj: Message) -> str:
    """What the reply was given from its conversation's documents, cited or not: a reviewer
    tells "retrieval missed" (nothing relevant here) from "the model ignored it"."""
    if not obj.citations:
        return "—"
    return format_html_join(
        "",
        "<p><b>[{}]</b> {}{}{} <i>{}</i><br>{}</p>",
        (
            (
                c["n"],
                c["document"],
                f", page {c['page']}" if c.get("page") is not None else "",
                f" (score {c['score']:.3g})" if c.get("score") is not None else " (whole document)",
                "cited" if c.get("cited") else "not cited",
                c["passage"][:400],
            )
            for c in obj.citations
        ),
    )


class MessageInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Message
    fields = (
        "id",
        "follows",
        "created",
        "role",
        "status",
        "model",
        "content",
        "sources",
        "tools",
        "error",
        "completion_tokens",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    @admin.display(description="Tool calls")
    def tools(self, obj: Message) -> str:
        return tool_steps_summary(obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Follows")
    def follows(self, obj: Message) -> str:
        return follows(obj)

    @admin.display(description="Sources")
    def sources(self, obj: Message) -> str:
        return sources(obj)


@admin.register(Conversation)
class ConversationAdmin(ReadsOthersMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("display_title", "owner", "model", "created", "updated", "message_count")
    list_select_related = ("owner",)
    # messages__content joins every message; the changelist de-duplicates
    # rows itself (an EXISTS subquery), so the count annotation stays right.
    search_fields = ("owner__username", "title", "messages__content")
    list_filter = ("model", "messages__status", "created")
    date_hierarchy = "created"
    readonly_fields = (
        "owner",
        "title",
        "model",
        "system_prompt",
        "documents",
        "current_leaf",
        "created",
        "updated",
    )
    inlines = [MessageInline]
    actions = ["export_json"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        return super().get_queryset(request).annotate(message_count=Count("messages"))

    def shown_conversations(self, obj: Conversation) -> Iterable[Conversation]:
        return [obj]

    @admin.action(description="Export the selected conversations as JSON", permissions=["view"])
    def export_json(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> HttpResponse:
        """The format of a user's own export (chat/exports.py), one document for the selection;
        every conversation of someone else in it is audited as exported."""
        chosen = list(
            queryset.select_related("owner", "folder").prefetch_related("messages").order_by("created", "pk")
        )
        audit.audit_record(request=request, conversations=chosen, action=AuditEntry.Action.EXPORT)
        body = {
            "format": "sanjai.admin-export",
            "version": exports.VERSION,
            "conversations": [
                {"owner": c.owner.get_username(), **exports.conversation_to_dict(c, list(c.messages.all()))}
                for c in chosen
            ],
        }
        response = HttpResponse(
            json.dumps(body, ensure_ascii=False, indent=2), content_type="application/json"
        )
        response["Content-Disposition"] = 'attachment; filename="sanjai-conversations.json"'
        return response

    @admin.display(description="Title", ordering="title")
    def display_title(self, obj: Conversation) -> str:
        return str(obj)

    @admin.display(description="Messages", ordering="message_count")
    def message_count(self, obj: Conversation) -> int:
        return obj.message_count  # type: ignore[attr-defined]


def tool_steps_summary(message: Message) -> str:
    """One line a call: the tool, its arguments, its approval and what came back."""
    rows = [
        (
            f"{step.server_name}.{step.tool}",
            json.dumps(step.arguments, ensure_ascii=False)[:200],
            step.status,
            f", {step.duration_ms} ms" if step.duration_ms is not None else "",
            (step.error or step.result)[:200],
        )
        for step in message.tool_steps.all()
    ]
    return format_html_join("", "<div><code>{}({})</code> {}{}: {}</div>", rows) if rows else "—"


class ToolStepInline(ReadOnlyAdminMixin, admin.TabularInline):
    """A reply's tool calls, read-only: arguments, approval, result or error, times."""

    model = ToolStep
    fields = (
        "ordinal",
        "round",
        "server_name",
        "tool",
        "arguments",
        "approval",
        "decided_by",
        "decided_at",
        "status",
        "result",
        "is_error",
        "truncated",
        "error",
        "started_at",
        "finished_at",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Message)
class MessageAdmin(ReadsOthersMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "follows", "conversation", "role", "status", "model", "created", "preview")
    list_select_related = ("conversation__owner",)
    exclude = ("citations",)  # shown readable, as "Sources"
    readonly_fields = ("sources",)
    inlines = [ToolStepInline]

    def shown_conversations(self, obj: Message) -> Iterable[Conversation]:
        return [obj.conversation]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        """The list shows the start of each message: every conversation on the page is audited."""
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:
            audit.audit_record(
                request=request,
                conversations=(m.conversation for m in changelist.result_list),
                action=AuditEntry.Action.VIEW,
            )
        return response

    list_filter = ("status", "role", "model", "created")
    search_fields = ("content",)
    date_hierarchy = "created"

    @admin.display(description="Content")
    def preview(self, obj: Message) -> str:
        return obj.content[:80]

    @admin.display(description="Follows")
    def follows(self, obj: Message) -> str:
        return follows(obj)

    @admin.display(description="Sources")
    def sources(self, obj: Message) -> str:
        return sources(obj)


@admin.register(OidcIdentity)
class OidcIdentityAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Which account each provider identity opens (chat/sso.py). Deleting one unlinks it:
    that identity's next sign-in makes a new account (or is refused, per SIGNUP)."""

    list_display = ("user", "issuer", "subject", "created_at")
    list_select_related = ("user",)
    search_fields = ("user__username", "subject")
    list_filter = ("issuer",)
    fields = ("user", "issuer", "subject", "created_at")
    readonly_fields = fields


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("name", "user", "prefix", "created", "last_used", "revoked_at")
    list_select_related = ("user",)
    list_filter = ("created", "revoked_at")
    search_fields = ("user__username", "name", "prefix")
    # hashed_secret is left out on purpose: nothing in the admin needs it.
    fields = ("user", "name", "prefix", "created", "last_used", "revoked_at")
    readonly_fields = fields


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ("user", "display_name", "daily_token_limit", "monthly_token_limit")
    list_select_related = ("user",)
    search_fields = ("user__username", "display_name")
    fields = (
        "user",
        "display_name",
        "default_system_prompt",
        "default_params",
        "daily_token_limit",
        "monthly_token_limit",
        "current_conversation",
    )
    readonly_fields = ("user", "current_conversation")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # profiles are created with their user


@admin.register(Usage)
class UsageAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The token ledger, one row per user, day and model; `report/` sums it per user and model."""

    list_display = ("day", "user", "model", "replies", "prompt_tokens", "completion_tokens", "total")
    list_select_related = ("user",)
    list_filter = ("model", "day")
    search_fields = ("user__username", "model")
    date_hierarchy = "day"

    @admin.display(description="Total tokens")
    def total(self, obj: Usage) -> int:
        return obj.total_tokens

    def get_urls(self) -> list[URLPattern]:
        report = path("report/", self.admin_site.admin_view(self.report_view), name="chat_usage_report")
        return [report, *super().get_urls()]

    def report_view(self, request: HttpRequest) -> HttpResponse:
        """Usage per user and model between two days (default: this month so far), as a page or CSV."""
        today = timezone.localdate()
        form = UsageReportForm(request.GET or None, initial={"since": today.replace(day=1), "until": today})
        since, until = today.replace(day=1), today
        if form.is_bound and form.is_valid():
            since = form.cleaned_data["since"] or since
            until = form.cleaned_data["until"] or until
        rows = usage.usage_report(since=since, until=until)
        groups = usage.usage_by_group(since=since, until=until)
        if request.GET.get("format") == "csv":
            if request.GET.get("by") == "group":
                return _group_csv(groups, since, until)
            return _report_csv(rows, since, until)
        drawn_from = max(since, until - timedelta(days=CHART_MAX_DAYS - 1))  # a bar a day: at most a year
        chart = charts.tokens_by_day(
            usage.usage_per_day(since=drawn_from, until=until),
            first=drawn_from,
            last=until,
            label=f"Tokens per day by model, {drawn_from:%Y-%m-%d} to {until:%Y-%m-%d}, every user",
        )
        context = {
            **self.admin_site.each_context(request),
            "title": f"Usage per user and model, {since:%Y-%m-%d} to {until:%Y-%m-%d}",
            "opts": self.model._meta,
            "form": form,
            "rows": rows,
            "groups": groups,
            "chart": chart,
            "csv_query": urlencode({"since": since.isoformat(), "until": until.isoformat(), "format": "csv"}),
        }
        return TemplateResponse(request, "admin/chat/usage/report.html", context)


CHART_MAX_DAYS = 366


class UsageReportForm(forms.Form):
    since = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))


def _report_csv(rows: list[usage.ReportRow], since: date, until: date) -> HttpResponse:
    return _tokens_csv(f"sanjai-usage-{since}-to-{until}.csv", "user", [(r.username, r) for r in rows])


def _group_csv(rows: list[usage.GroupRow], since: date, until: date) -> HttpResponse:
    return _tokens_csv(f"sanjai-usage-by-group-{since}-to-{until}.csv", "group", [(r.group, r) for r in rows])


def _tokens_csv(
    filename: str, who: str, rows: list[tuple[str, usage.ReportRow | usage.GroupRow]]
) -> HttpResponse:
    """One row per (who, model): its replies and tokens."""
    return csv_response(
        filename,
        [who, "model", "replies", "prompt_tokens", "completion_tokens", "total_tokens"],
        (
            [name, row.model, row.replies, row.prompt_tokens, row.completion_tokens, row.total_tokens]
            for name, row in rows
        ),
    )


@admin.register(Share)
class ShareAdmin(admin.ModelAdmin):
    """Conversations shared by link: who shares what since when. Deleting one revokes its link."""

    list_display = ("__str__", "owner", "show_owner", "created", "updated", "link")
    list_select_related = ("conversation__owner",)
    list_filter = ("show_owner", "updated")
    search_fields = ("title", "conversation__owner__username")
    fields = ("conversation", "owner", "title", "show_owner", "created", "updated", "link")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # only its owner shares a conversation

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="owner")
    def owner(self, share: Share) -> str:
        return share.conversation.owner.get_username()

    @admin.display(description="link")
    def link(self, share: Share) -> str:
        url = reverse("shared", kwargs={"token": share.token})
        return format_html('<a href="{}" rel="noreferrer">{}</a>', url, url)


@admin.register(Preset)
class PresetAdmin(admin.ModelAdmin):
    """Users' presets. An admin publishes one to everybody (or stops); their owners edit them."""

    list_display = ("name", "slug", "owner", "model", "published", "updated")
    list_select_related = ("owner",)
    list_filter = ("published",)
    search_fields = ("name", "slug", "owner__username")
    fields = ("name", "slug", "owner", "description", "system_prompt", "model", "params", "published")
    readonly_fields = fields
    actions = ["publish", "unpublish"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # made by their owners, on the page or through the API

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the actions below are the admin's one change

    @admin.action(description="Publish the selected presets to everybody", permissions=["view"])
    def publish(self, request: HttpRequest, queryset: QuerySet[Preset]) -> None:
        self._publish(request, queryset, published=True)

    @admin.action(description="Stop offering the selected presets to everybody", permissions=["view"])
    def unpublish(self, request: HttpRequest, queryset: QuerySet[Preset]) -> None:
        self._publish(request, queryset, published=False)

    def _publish(self, request: HttpRequest, queryset: QuerySet[Preset], *, published: bool) -> None:
        if not request.user.is_superuser:
            self.message_user(request, "Only a superuser publishes presets.", level="error")
            return
        refused = [p.name for p in queryset if not presets.preset_publish(preset=p, published=published)]
        if refused:
            self.message_user(
                request, f"Another published preset has the slug of: {', '.join(refused)}.", level="error"
            )


@admin.register(Invite)
class InviteAdmin(admin.ModelAdmin):
    """Sign-up invites for SIGNUP=invite: add one, then send its link."""

    list_display = ("__str__", "link", "created", "expires_at", "used_by", "used_at")
    list_select_related = ("used_by",)
    fields = ("note", "link", "created_by", "created", "expires_at", "used_by", "used_at")
    readonly_fields = ("link", "created_by", "created", "expires_at", "used_by", "used_at")

    @admin.display(description="Sign-up link")
    def link(self, obj: Invite) -> str:
        if not obj.pk:
            return "Saved invites show their link here."
        if obj.used_at:
            return "used"
        return f"{reverse('signup')}?{urlencode({'invite': obj.code})}"

    def save_model(self, request: HttpRequest, obj: Invite, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = request.user  # type: ignore[assignment]
        obj.save()

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None or obj.used_at is None


# Whether the request being served may open the whole conversation (the feedback review's
# link to it): the admin instance is shared by every request, a context variable is not.
READS_OTHERS: ContextVar[bool] = ContextVar("reads_others", default=False)

# How many messages before the rated reply the review shows.
CONTEXT_MESSAGES = 4


@admin.register(Feedback)
class FeedbackAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The review queue: replies people rated, newest first, with the conversation around each."""

    list_display = ("updated", "rating", "user", "reply_model", "reply", "comment")
    list_select_related = ("message__conversation__owner",)
    list_filter = (
        "rating",
        "message__model",
        ("message__conversation__owner", admin.RelatedOnlyFieldListFilter),
        "updated",
    )
    search_fields = ("comment", "message__content", "message__conversation__owner__username")
    date_hierarchy = "updated"
    fields = ("rating", "comment", "user", "reply_model", "updated", "context")
    readonly_fields = fields
    actions = ["export_csv"]

    @admin.display(description="User", ordering="message__conversation__owner__username")
    def user(self, obj: Feedback) -> str:
        return str(obj.message.conversation.owner)

    @admin.display(description="Model", ordering="message__model")
    def reply_model(self, obj: Feedback) -> str:
        return obj.message.model

    @admin.display(description="Reply")
    def reply(self, obj: Feedback) -> str:
        return obj.message.content[:80]

    @admin.display(description="The conversation up to the reply")
    def context(self, obj: Feedback) -> str:
        reply = obj.message
        shown = selectors.message_branch(message=reply)[-(CONTEXT_MESSAGES + 1) :]  # its own branch only
        rows = format_html_join(
            "",
            '<div class="review-turn"><p><strong>{}</strong>{}</p><p>{}</p></div>',
            (
                (m.role, " (the rated reply)" if m.pk == reply.pk else "", linebreaksbr(m.content or m.error))
                for m in shown
            ),
        )
        if not READS_OTHERS.get():
            return rows  # the whole conversation is not theirs to open
        link = reverse("admin:chat_conversation_change", args=[reply.conversation_id])
        return format_html('{}<p><a href="{}">The whole conversation</a></p>', rows, link)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        """One rated reply with the turns before it: content of its owner's conversation, audited.
        (The queue's list shows only the rated replies' starts, which their owners handed in.)"""
        token = READS_OTHERS.set(request.user.has_perm(READ_OTHERS_CONVERSATIONS))
        try:
            response = super().change_view(request, object_id, form_url, extra_context)
            if isinstance(response, TemplateResponse):
                response.render()  # now: the context column reads READS_OTHERS
        finally:
            READS_OTHERS.reset(token)
        feedback = shown_object(response)
        if feedback is not None:
            audit.audit_record(
                request=request, conversations=[feedback.message.conversation], action=AuditEntry.Action.VIEW
            )
        return response

    @admin.action(description="Export the selected feedback as CSV")
    def export_csv(self, request: HttpRequest, queryset: QuerySet[Feedback]) -> HttpResponse:
        chosen = list(queryset.select_related("message__conversation__owner").order_by("-updated"))
        audit.audit_record(
            request=request,
            conversations=(feedback.message.conversation for feedback in chosen),
            action=AuditEntry.Action.EXPORT,
        )
        return csv_response(
            "sanjai-feedback.csv",
            ["updated", "rating", "user", "model", "conversation_id", "message_id", "reply", "comment"],
            (
                [
                    feedback.updated.isoformat(),
                    "up" if feedback.rating > 0 else "down",
                    feedback.message.conversation.owner.get_username(),
                    feedback.message.model,
                    feedback.message.conversation_id,
                    feedback.message.pk,
                    feedback.message.content,
                    feedback.comment,
                ]
                for feedback in chosen
            ),
        )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # people's own ratings: they take them back themselves


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """The append-only log of who viewed or exported whose conversation: filtered here, exported as CSV."""

    list_display = ("created", "actor_username", "action", "owner_username", "conversation_id", "ip", "path")
    list_filter = (
        "action",
        ("actor", admin.RelatedOnlyFieldListFilter),
        ("owner", admin.RelatedOnlyFieldListFilter),
        "created",
    )
    search_fields = ("actor_username", "owner_username", "=conversation_id", "ip")
    date_hierarchy = "created"
    fields = (
        "created",
        "actor",
        "actor_username",
        "action",
        "owner",
        "owner_username",
        "conversation_id",
        "ip",
        "path",
    )
    readonly_fields = fields
    actions = ["export_csv"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # written only by the views they record

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # append-only: not even a superuser removes a trace

    def get_urls(self) -> list[URLPattern]:
        export = path("export/", self.admin_site.admin_view(self.export_view), name="chat_auditentry_export")
        return [export, *super().get_urls()]

    def export_view(self, request: HttpRequest) -> HttpResponse:
        """The whole log as CSV, narrowed by the same filters as the list (its query string)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        changelist = self.get_changelist_instance(request)
        return self._csv(changelist.get_queryset(request))

    @admin.action(description="Export the selected entries as CSV", permissions=["view"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet[AuditEntry]) -> HttpResponse:
        return self._csv(queryset)

    def _csv(self, queryset: QuerySet[AuditEntry]) -> HttpResponse:
        return csv_response(
            "sanjai-audit.csv",
            ["created", "actor", "action", "owner", "conversation_id", "ip", "path"],
            (
                [
                    e.created.isoformat(),
                    e.actor_username,
                    e.action,
                    e.owner_username,
                    e.conversation_id,
                    e.ip or "",
                    e.path,
                ]
                for e in queryset.order_by("-created", "-pk").iterator()
            ),
        )


# --- Groups --------------------------------------------------------------------


class GroupPolicyForm(forms.ModelForm):
    """Names only declared models: a misspelt one would silently allow nothing."""

    class Meta:
        model = GroupPolicy
        fields = ["allowed_models", "daily_token_limit", "monthly_token_limit", "max_concurrent_replies"]

    def clean_allowed_models(self) -> list[str]:
        names = self.cleaned_data["allowed_models"] or []
        declared = list(settings.MODEL_REGISTRY.names)
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise forms.ValidationError(
                f'A JSON list of model names, e.g. ["{declared[0]}"]; [] for every model.'
            )
        unknown = [name for name in names if name not in declared]
        if unknown:
            raise forms.ValidationError(
                f"Not declared here: {', '.join(unknown)}. The models are {', '.join(declared)}."
            )
        return names


class GroupPolicyInline(admin.StackedInline):
    model = GroupPolicy
    form = GroupPolicyForm
    can_delete = True
    verbose_name = "policy"
    verbose_name_plural = "policy (what members may use; a member of several groups gets the most generous)"


# Django's own Group admin, with the group's policy on the same page.
admin.site.unregister(Group)


@admin.register(Group)
class PolicyGroupAdmin(GroupAdmin):
    inlines = [GroupPolicyInline]


_ENV_NAME = re.compile(ENV_NAME_PATTERN)


class McpServerForm(forms.ModelForm):
    """A declaration that can run: the fields its transport needs, variable names only."""

    url = forms.URLField(
        required=False,
        max_length=500,
        assume_scheme="https",
        help_text=McpServer._meta.get_field("url").help_text,
    )

    class Meta:
        model = McpServer
        fields = (
            "name",
            "description",
            "transport",
            "command",
            "args",
            "env_names",
            "url",
            "key_env",
            "enabled",
            "default_approval",
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("transport") == McpServer.Transport.STDIO:
            if not data.get("command"):
                self.add_error("command", "A stdio server needs the program to run.")
            if not isinstance(data.get("args"), list) or not all(isinstance(a, str) for a in data["args"]):
                self.add_error(
                    "args", 'Arguments are a JSON list of strings, e.g. ["-m", "mcp_server_time"].'
                )
        elif not data.get("url"):
            self.add_error("url", "A streamable-HTTP server needs its URL.")
        names = data.get("env_names")
        if not isinstance(names, list) or not all(isinstance(n, str) and _ENV_NAME.match(n) for n in names):
            self.add_error("env_names", 'Variable names are a JSON list, e.g. ["TZ", "API_TOKEN"].')
        key_env = data.get("key_env") or ""
        if key_env and not _ENV_NAME.match(key_env):
            self.add_error(
                "key_env", "The name of an environment variable (letters, digits, _), not its value."
            )
        return data


class McpToolInline(admin.TabularInline):
    """The tools the server listed: the admin chooses which need approval, and which are offered."""

    model = McpTool
    fields = ("name", "description", "approval", "enabled")
    readonly_fields = ("name", "description")
    extra = 0

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # tools come from the server's own list


@admin.register(McpServer)
class McpServerAdmin(admin.ModelAdmin):
    form = McpServerForm
    list_display = ("name", "transport", "enabled", "tool_count", "tools_listed_at", "list_error")
    readonly_fields = ("tools_listed_at", "list_error")
    inlines = [McpToolInline]
    actions = ["list_tools"]

    @admin.display(description="Tools")
    def tool_count(self, obj: McpServer) -> int:
        return obj.tools.count()

    def save_model(self, request: HttpRequest, obj: McpServer, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if obj.enabled:
            self._list(request, obj)

    @admin.action(description="List their tools now (tools/list)")
    def list_tools(self, request: HttpRequest, queryset: QuerySet[McpServer]) -> None:
        for server in queryset:
            self._list(request, server)

    def _list(self, request: HttpRequest, server: McpServer) -> None:
        # In the admin's request, bounded by MCP_TOOL_TIMEOUT_S: the admin asked, and waits to see it.
        tools = tool_services.tools_refresh(server=server)
        if server.list_error:
            self.message_user(request, f"{server.name}: {server.list_error}", level="error")
        else:
            self.message_user(request, f"{server.name}: {len(tools)} tools.")
