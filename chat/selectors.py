"""Reads. Every function takes the acting user, so nobody reads another's data."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.utils import timezone

from chat.branches import Tree
from chat.models import (
    ApiKey,
    AuditEntry,
    Conversation,
    Document,
    Feedback,
    Folder,
    MemoryFact,
    Message,
    Preset,
    Share,
)
from inference import presence
from inference.registry import Registry
from inference.types import Turn


def user_is_active(*, user_id: int) -> bool:
    """Whether the account still exists and may act (an admin can deactivate it at any time)."""
    return User.objects.filter(pk=user_id, is_active=True).exists()


def conversation_list(*, user: User) -> QuerySet[Conversation]:
    return Conversation.objects.filter(owner=user).order_by("-updated")


def _matching(query: str) -> Q:
    # Exists rather than a join: no duplicate rows to remove with DISTINCT.
    in_messages = Message.objects.filter(conversation=OuterRef("pk"), content__icontains=query)
    return Q(title__icontains=query) | Q(Exists(in_messages))


def conversation_search(*, user: User, query: str) -> QuerySet[Conversation]:
    """The user's conversations whose title or any message contains `query`."""
    return conversation_list(user=user).filter(_matching(query))


SIDEBAR_PAGE_SIZE = 50


@dataclass(frozen=True)
class SidebarGroup:
    key: str  # pinned, today, yesterday, week, older
    label: str
    conversations: list[Conversation]


@dataclass(frozen=True)
class SidebarPage:
    groups: list[SidebarGroup]
    next_cursor: str | None  # `before` for the next page; None: this is the last

    @property
    def conversations(self) -> list[Conversation]:
        return [c for group in self.groups for c in group.conversations]


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidCursor(ValueError):
    pass


def sidebar_cursor(conversation: Conversation) -> str:
    """Where a page ends: the last row's `updated` (in microseconds) and id.

    A position rather than an offset: a conversation that gets a new message
    moves to the top, and an offset would then skip or repeat rows.
    """
    micros = (conversation.updated - EPOCH) // timedelta(microseconds=1)
    return f"{micros}-{conversation.pk}"


def _parse_cursor(cursor: str) -> Q:
    try:
        micros, pk = (int(part) for part in cursor.split("-", 1))
        updated = EPOCH + timedelta(microseconds=micros)
    except (ValueError, OverflowError):
        raise InvalidCursor(f"Not a position in the list: {cursor!r}.") from None
    return Q(updated__lt=updated) | Q(updated=updated, pk__lt=pk)


def _day_group(day: date, today: date) -> tuple[str, str]:
    if day >= today:
        return "today", "Today"
    if day == today - timedelta(days=1):
        return "yesterday", "Yesterday"
    if day >= today - timedelta(days=7):
        return "week", "Previous 7 days"
    return "older", "Older"


def conversation_sidebar(
    *,
    user: User,
    query: str = "",
    archived: bool = False,
    before: str | None = None,
    limit: int = SIDEBAR_PAGE_SIZE,
) -> SidebarPage:
    """One page of the sidebar: pinned conversations on top (first page only),
    then the rest by last activity, grouped by day in the site's time zone.

    `archived`: the "Archived" view instead, which has no pinned group.
    `query`: only conversations whose title or messages contain it.
    `before`: a page's `next_cursor` (InvalidCursor if it is not one).
    Two queries whatever the number of conversations.
    """
    rows = Conversation.objects.filter(owner=user, archived_at__isnull=not archived)
    if query:
        rows = rows.filter(_matching(query))
    elif not archived:  # filed ones are listed under their folders (folder_sidebar)
        rows = rows.filter(folder__isnull=True)
    groups = []
    if not archived:
        if before is None:
            pinned = list(rows.filter(pinned_at__isnull=False).order_by("-pinned_at", "-pk"))
            if pinned:
                groups.append(SidebarGroup("pinned", "Pinned", pinned))
        rows = rows.filter(pinned_at__isnull=True)
    if before is not None:
        rows = rows.filter(_parse_cursor(before))
    page = list(rows.order_by("-updated", "-pk")[: limit + 1])
    more, page = len(page) > limit, page[:limit]
    today = timezone.localdate()
    for conversation in page:
        key, label = _day_group(timezone.localdate(conversation.updated), today)
        if groups and groups[-1].key == key:
            groups[-1].conversations.append(conversation)
        else:
            groups.append(SidebarGroup(key, label, [conversation]))
    return SidebarPage(groups=groups, next_cursor=sidebar_cursor(page[-1]) if more else None)


def conversation_get(*, user: User, conversation_id: int) -> Conversation:
    """The user's conversation; Conversation.DoesNotExist for anyone else's."""
    return Conversation.objects.get(pk=conversation_id, owner=user)


def share_get(*, token: str) -> Share:
    """A shared conversation, for anyone with its link; Share.DoesNotExist if there is
    none (revoked, or its conversation deleted) or sharing is off."""
    if not settings.SHARING:
        raise Share.DoesNotExist
    return Share.objects.select_related("conversation__owner__profile").get(token=token)


def conversation_share(*, conversation: Conversation) -> Share | None:
    """The conversation's share, if it has one (the caller has checked it is the user's)."""
    return Share.objects.filter(conversation=conversation).first()


def message_get(*, user: User, message_id: int) -> Message:
    return Message.objects.select_related("conversation").get(pk=message_id, conversation__owner=user)


def document_payload(document: Document) -> dict[str, Any]:
    """A document as the page sees it (the REST API's DocumentOut has the same fields)."""
    return {
        "id": document.pk,
        "name": document.name,
        "kind": document.kind,
        "status": document.status,
        "progress": document.progress,
        "error": document.error,
        "size_bytes": document.size_bytes,
        "page_count": document.page_count,
        "created": document.created.isoformat(),
    }


def conversation_documents(*, conversation: Conversation) -> list[dict[str, Any]]:
    """The documents attached to a conversation, in the order they were uploaded."""
    attached = conversation.documents.filter(owner_id=conversation.owner_id).order_by("created", "pk")
    return [document_payload(document) for document in attached]


def conversation_messages(*, conversation: Conversation) -> QuerySet[Message]:
    """Every message, of every branch, oldest first."""
    return conversation.messages.select_related("feedback").order_by("created", "id")


@dataclass(frozen=True)
class Branch:
    """The branch of a conversation being viewed (see chat.branches)."""

    messages: list[Message]  # from the first message to the current leaf
    siblings: dict[int, list[int]]  # each one's own and its alternatives' ids, oldest first


def conversation_branch(*, conversation: Conversation) -> Branch:
    """The branch being viewed: the current leaf and its ancestors. Two queries."""
    tree = Tree.of(conversation.messages.values_list("id", "parent_id"))
    path = tree.path(tree.leaf(conversation.current_leaf_id))
    messages = list(conversation_messages(conversation=conversation).filter(pk__in=path).order_by("id"))
    return Branch(messages=messages, siblings=tree.siblings(path))


def conversation_branch_messages(*, conversation: Conversation) -> QuerySet[Message]:
    """The branch being viewed, as a query (for paging), oldest first."""
    tree = Tree.of(conversation.messages.values_list("id", "parent_id"))
    path = tree.path(tree.leaf(conversation.current_leaf_id))
    return conversation_messages(conversation=conversation).filter(pk__in=path).order_by("id")


def message_branch(*, message: Message) -> list[Message]:
    """The message and its ancestors, oldest first: the conversation as it stood at it."""
    tree = Tree.of(message.conversation.messages.filter(id__lte=message.pk).values_list("id", "parent_id"))
    return list(Message.objects.filter(pk__in=tree.path(message.pk)).order_by("id"))


def branch_payloads(branch: Branch) -> list[dict[str, Any]]:
    """The branch's messages as the page sees them, each with its place in the tree."""
    return [message_branch_payload(m, branch.siblings.get(m.pk, [m.pk])) for m in branch.messages]


def message_branch_payload(message: Message, siblings: list[int]) -> dict[str, Any]:
    """`message_payload` plus its parent and its alternatives (the page's "< n/m >")."""
    return {**message_payload(message), "parent_id": message.parent_id, "siblings": siblings}


def reply_in_progress(*, conversation: Conversation) -> bool:
    return conversation.messages.filter(
        role=Message.Role.ASSISTANT,
        status__in=[Message.Status.PENDING, Message.Status.STREAMING, Message.Status.TOOL_WAIT],
    ).exists()


def message_usage(message: Message) -> dict[str, int]:
    """A reply's token counts, as every surface reports them (0 until known)."""
    return {
        "prompt_tokens": message.prompt_tokens or 0,
        "completion_tokens": message.completion_tokens or 0,
    }


def message_timing(message: Message) -> dict[str, float | None]:
    """A reply's speed and wait, from its stored timestamps (None where not known).

    Speed is completion tokens per second from the first token to the finish;
    the wait runs from when the reply was queued (or claimed, if that came
    first) to its first token.
    """
    tokens_per_second = None
    if message.first_token_at and message.finished_at and message.completion_tokens:
        seconds = (message.finished_at - message.first_token_at).total_seconds()
        if seconds > 0:
            tokens_per_second = round(message.completion_tokens / seconds, 3)
    waiting_since = min((t for t in (message.queued_at, message.started_at) if t), default=None)
    first_token_s = None
    if waiting_since and message.first_token_at:
        first_token_s = round(max(0.0, (message.first_token_at - waiting_since).total_seconds()), 3)
    return {"tokens_per_second": tokens_per_second, "time_to_first_token_s": first_token_s}


def message_payload(message: Message) -> dict[str, Any]:
    """A message as the chat page and the websocket see it."""
    return {
        "id": message.pk,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "finish_reason": message.finish_reason,
        "error": message.error,
        "code": message.error_code,
        "usage": message_usage(message),
        "timing": message_timing(message),
        "feedback": message_feedback(message),
        "citations": message.citations,
        "created": message.created.isoformat(),
    }


def message_feedback(message: Message) -> dict[str, Any] | None:
    """The owner's rating of a reply ({"rating": "up" or "down", "comment"}), or None."""
    try:
        feedback = message.feedback
    except Feedback.DoesNotExist:
        return None
    return {"rating": "up" if feedback.rating > 0 else "down", "comment": feedback.comment}


def reply_turns(*, reply: Message) -> list[Turn]:
    """The prompt for an assistant placeholder: system prompt and the turns of its branch before it.

    Failed or empty replies are left out together with the user message they
    answered, so roles keep alternating (many chat templates insist on it);
    the newest user message is always kept.
    """
    # Only the reply's own branch: its ancestors, not the alternatives beside them.
    earlier = [m for m in message_branch(message=reply)[:-1] if m.role != Message.Role.SYSTEM]
    turns: list[Turn] = []
    for index, message in enumerate(earlier):
        if message.role == Message.Role.USER:
            answered = index + 1 < len(earlier) and _usable_reply(earlier[index + 1])
            if answered or index == len(earlier) - 1:
                turns.append(Turn("user", message.content))
        elif _usable_reply(message) and turns and turns[-1].role == "user":
            turns.append(Turn("assistant", message.content))
    conversation = reply.conversation
    parts = [conversation.system_prompt.strip()]
    if conversation.use_memory:
        parts.append(memory_block(user_id=conversation.owner_id, budget_chars=settings.MEMORY_PROMPT_CHARS))
    system = "\n\n".join(part for part in parts if part)
    return ([Turn("system", system)] if system else []) + turns


def _usable_reply(message: Message) -> bool:
    return (
        message.role == Message.Role.ASSISTANT
        and message.status in {Message.Status.DONE, Message.Status.CANCELLED}
        and bool(message.content.strip())
    )


def api_key_list(*, user: User) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(user=user).order_by("-created", "-id")


def reply_unfinished_count(*, user: User) -> int:
    """The user's replies queued or being generated, on every surface."""
    return Message.objects.filter(
        conversation__owner=user,
        role=Message.Role.ASSISTANT,
        status__in=[Message.Status.PENDING, Message.Status.STREAMING, Message.Status.TOOL_WAIT],
    ).count()


# --- Models ------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedModel:
    name: str
    kind: str  # local or remote
    since: float  # when the oldest worker serving it started; 0 if none is up
    workers: int  # live workers, ready or loading
    ready: int = 0  # of which ready to take jobs
    progress: int = 0  # the most advanced loading worker's percentage, while none is ready
    stage: str = ""  # and what it is doing

    @property
    def state(self) -> str:
        """ready, loading, or no_worker."""
        if self.ready:
            return "ready"
        return "loading" if self.workers else "no_worker"


def model_list(*, registry: Registry, redis_url: str) -> list[ServedModel]:
    """Every declared model with its live state, from the workers' heartbeats.

    Redis being down reads as no worker anywhere: the models are still
    listed, so clients can discover their names (a completion then answers 503).
    """
    try:
        workers = presence.live_workers(redis_url)
    except redis.RedisError:
        workers = []
    served = []
    for model in registry.models:
        group = [worker for worker in workers if worker.model == model.name]
        furthest = max(group, key=lambda worker: worker.progress, default=None)
        served.append(
            ServedModel(
                name=model.name,
                kind=model.kind,
                since=min((worker.since for worker in group), default=0),
                workers=len(group),
                ready=sum(worker.ready for worker in group),
                progress=furthest.progress if furthest else 0,
                stage=furthest.stage if furthest else "",
            )
        )
    return served


def preset_list(*, user: User) -> list[Preset]:
    """The presets a user may start from: their own, then the published ones of others,
    except a published one whose slug the user's own has (preset:<slug> names theirs)."""
    own = list(Preset.objects.filter(owner=user).order_by("name", "pk"))
    taken = {preset.slug for preset in own}
    published = Preset.objects.filter(published=True).exclude(owner=user).exclude(slug__in=taken)
    return own + list(published.order_by("name", "pk"))


def preset_own(*, user: User, preset_id: int) -> Preset:
    """One of the user's own presets; Preset.DoesNotExist for anyone else's."""
    return Preset.objects.get(pk=preset_id, owner=user)


def _usable(user: User) -> QuerySet[Preset]:
    return Preset.objects.filter(Q(owner=user) | Q(published=True))


def preset_usable(*, user: User, preset_id: int) -> Preset:
    """A preset the user may start from (theirs or published); Preset.DoesNotExist otherwise."""
    return _usable(user).get(pk=preset_id)


def preset_by_slug(*, user: User, slug: str) -> Preset:
    """`preset:<slug>` on /v1: the user's own preset of that slug, else the published one."""
    found = next((preset for preset in preset_list(user=user) if preset.slug == slug), None)
    if found is None:
        raise Preset.DoesNotExist(slug)
    return found


MEMORY_HEADING = "What the user asked you to remember about them:"


def memory_list(*, user: User) -> QuerySet[MemoryFact]:
    return MemoryFact.objects.filter(owner=user).order_by("created", "pk")


def memory_fact(*, user: User, fact_id: int) -> MemoryFact:
    """One of the user's facts; MemoryFact.DoesNotExist for anyone else's."""
    return MemoryFact.objects.get(pk=fact_id, owner=user)


def memory_block(*, user_id: int, budget_chars: int) -> str:
    """The user's facts as a system prompt section within `budget_chars`: the newest
    that fit, in the order they were kept; "" when there are none (or none fit)."""
    kept: list[str] = []
    used = len(MEMORY_HEADING)
    for text in (
        MemoryFact.objects.filter(owner_id=user_id).order_by("-created", "-pk").values_list("text", flat=True)
    ):
        line = f"- {text}"
        if used + 1 + len(line) > budget_chars:
            break
        kept.append(line)
        used += 1 + len(line)
    return "\n".join([MEMORY_HEADING, *reversed(kept)]) if kept else ""


# --- Folders -----------------------------------------------------------------------


def folder_list(*, user: User) -> QuerySet[Folder]:
    """The user's folders, by name whatever the case."""
    return Folder.objects.filter(owner=user).select_related("preset")


def folder_get(*, user: User, folder_id: int) -> Folder:
    """One of the user's folders; Folder.DoesNotExist for anyone else's."""
    return Folder.objects.select_related("preset").get(pk=folder_id, owner=user)


@dataclass(frozen=True)
class SidebarFolder:
    folder: Folder
    conversations: list[Conversation]  # not archived; pinned first, then by last activity


def folder_sidebar(*, user: User) -> list[SidebarFolder]:
    """The sidebar's folders, each with its conversations (archived ones stay in Archived).

    Two queries whatever the number of folders.
    """
    folders = list(folder_list(user=user))
    filed: dict[int, list[Conversation]] = {folder.pk: [] for folder in folders}
    rows = Conversation.objects.filter(owner=user, folder__isnull=False, archived_at__isnull=True)
    for conversation in rows.order_by(F("pinned_at").desc(nulls_last=True), "-updated", "-pk"):
        filed.setdefault(conversation.folder_id or 0, []).append(conversation)
    return [SidebarFolder(folder, filed[folder.pk]) for folder in folders]


# How many audit entries a user's profile lists: the latest, the rest stay in the admin.
AUDIT_NOTICE_ENTRIES = 20


def audit_notice_list(*, user: User, limit: int = AUDIT_NOTICE_ENTRIES) -> list[AuditEntry]:
    """The latest times someone else opened or exported one of the user's conversations."""
    return list(AuditEntry.objects.filter(owner=user).order_by("-created", "-pk")[:limit])
