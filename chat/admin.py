"""The operator's review screens.

Conversations and messages are a record of what people and the model said:
the admin shows them read-only, so a review can never rewrite history.
Superusers may still delete (for example on a user's request).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from chat.models import ApiKey, Conversation, Message, Profile


class ReadOnlyAdminMixin:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_superuser


class MessageInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Message
    fields = ("created", "role", "status", "content", "error", "completion_tokens")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("display_title", "owner", "created", "updated", "message_count")
    list_select_related = ("owner",)
    # messages__content joins every message; the changelist de-duplicates
    # rows itself (an EXISTS subquery), so the count annotation stays right.
    search_fields = ("owner__username", "title", "messages__content")
    list_filter = ("messages__status", "created")
    date_hierarchy = "created"
    readonly_fields = ("owner", "title", "system_prompt", "created", "updated")
    inlines = [MessageInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        return super().get_queryset(request).annotate(message_count=Count("messages"))

    @admin.display(description="Title", ordering="title")
    def display_title(self, obj: Conversation) -> str:
        return str(obj)

    @admin.display(description="Messages", ordering="message_count")
    def message_count(self, obj: Conversation) -> int:
        return obj.message_count  # type: ignore[attr-defined]


@admin.register(Message)
class MessageAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "conversation", "role", "status", "created", "preview")
    list_select_related = ("conversation",)
    list_filter = ("status", "role", "created")
    search_fields = ("content",)
    date_hierarchy = "created"

    @admin.display(description="Content")
    def preview(self, obj: Message) -> str:
        return obj.content[:80]


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
    list_display = ("user", "display_name")
    list_select_related = ("user",)
    search_fields = ("user__username", "display_name")
    readonly_fields = ("user", "current_conversation")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # profiles are created with their user
