"""Conversations: create, rename, change settings, switch branches, delete, import."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from chat import exports, selectors
from chat import params as chat_params
from chat.branches import Tree
from chat.events import send_event
from chat.models import Conversation, Message, Preset, ToolStep
from chat.services.folders import folder_for_import
from chat.services.limits import InvalidInput, check_idle, check_length, check_model
from chat.services.profiles import params_for_new_conversations, profile_get_or_create
from inference.params import InvalidParameter


def conversation_create(
    *,
    user: User,
    title: str = "",
    system_prompt: str | None = None,
    model: str = "",
    preset: Preset | None = None,
) -> Conversation:
    """A new conversation; it becomes the one `POST /chat` continues.

    `model`: a declared model's name (ModelNotDeclared otherwise); "" = the default one.
    `preset`: one the user may use (see selectors.preset_usable), whose system
    prompt, model and parameters are copied, unless `system_prompt` or `model` say otherwise.
    """
    if preset is not None:
        model = model or preset.model
        system_prompt = preset.system_prompt if system_prompt is None else system_prompt
    model = check_model(model, user=user) if model else ""
    profile = profile_get_or_create(user=user)
    if system_prompt is None:
        prompt = profile.default_system_prompt  # checked when it was saved
    else:
        prompt = check_length("system_prompt", system_prompt.strip())
    conversation = Conversation.objects.create(
        owner=user,
        title=title,
        system_prompt=prompt,
        model=model,
        preset=preset,
        params=dict(preset.params) if preset is not None else {},
    )
    profile.current_conversation = conversation
    profile.save(update_fields=["current_conversation"])
    return conversation


def conversation_update(
    *,
    user: User,
    conversation_id: int,
    title: str | None = None,
    system_prompt: str | None = None,
    model: str | None = None,
    pinned: bool | None = None,
    archived: bool | None = None,
    use_memory: bool | None = None,
) -> Conversation:
    """Rename a conversation, change its system prompt or its model, pin or archive it,
    let its replies see the owner's memory or not; DoesNotExist for others'.

    Pinning and archiving leave `updated` alone: they are not activity, and the
    sidebar's date groups go by activity. Archiving unpins.
    """
    conversation = selectors.conversation_get(user=user, conversation_id=conversation_id)
    flags = _flags(conversation, pinned=pinned, archived=archived)
    if flags:
        Conversation.objects.filter(pk=conversation.pk).update(**flags)
        for name, value in flags.items():
            setattr(conversation, name, value)
    fields = []
    if model is not None:
        conversation.model = check_model(model, user=user)
        fields.append("model")
    if title is not None:
        conversation.title = " ".join(title.split())[:200]
        fields.append("title")
    if system_prompt is not None:
        conversation.system_prompt = check_length("system_prompt", system_prompt.strip())
        fields.append("system_prompt")
    if use_memory is not None:
        conversation.use_memory = use_memory
        fields.append("use_memory")
    if fields:
        conversation.save(update_fields=[*fields, "updated"])
    return conversation


def _flags(conversation: Conversation, *, pinned: bool | None, archived: bool | None) -> dict[str, Any]:
    """The pin and archive timestamps to change; one already in the asked state keeps its time."""
    now = timezone.now()
    flags: dict[str, Any] = {}
    if archived is not None and archived != (conversation.archived_at is not None):
        flags["archived_at"] = now if archived else None
    if archived and conversation.pinned_at is not None:
        flags["pinned_at"] = None
    elif pinned is not None and pinned != (conversation.pinned_at is not None):
        flags["pinned_at"] = now if pinned else None
    return flags


def conversation_settings_update(
    *,
    user: User,
    conversation_id: int,
    system_prompt: str,
    params: dict[str, Any],
    model: str | None = None,
    use_memory: bool | None = None,
) -> Conversation:
    """Save a conversation's system prompt, generation parameters, model and whether its
    replies see the owner's memory (the page's settings panel).

    Raises InvalidParameter or InvalidInput naming the field, ModelNotDeclared,
    DoesNotExist for others'.
    """
    conversation = selectors.conversation_get(user=user, conversation_id=conversation_id)
    if model is not None:
        conversation.model = check_model(model, user=user)
    given = chat_params.params_in({field: params.get(field) for field in chat_params.CHAT_PARAM_FIELDS})
    resolved = chat_params.over(given, params_for_new_conversations(user=user))
    conversation.params = chat_params.chat_params(resolved)
    conversation.system_prompt = check_length("system_prompt", system_prompt.strip())
    if use_memory is not None:
        conversation.use_memory = use_memory
    conversation.save(update_fields=["params", "system_prompt", "model", "use_memory", "updated"])
    return conversation


def branch_switch(*, user: User, message_id: int, conversation_id: int | None = None) -> Conversation:
    """Show the branch through a message (one of the "< n/m >" alternatives): it ends
    down that message's newest replies, and stays chosen until the next switch or message.

    Message.DoesNotExist for anyone else's message, or one outside `conversation_id`;
    ConversationBusy while a reply is being written (it would go on in a branch not shown).
    """
    message = selectors.message_get(user=user, message_id=message_id)
    conversation = message.conversation
    if conversation_id is not None and conversation.pk != conversation_id:
        raise Message.DoesNotExist("No such message in this conversation.")
    with transaction.atomic():
        check_idle(conversation=conversation)
        tree = Tree.of(conversation.messages.values_list("id", "parent_id"))
        leaf = tree.newest_leaf_under(message.pk)
        # Not activity: `updated` (the sidebar's order) stays as it is.
        Conversation.objects.filter(pk=conversation.pk).update(current_leaf_id=leaf)
        conversation.current_leaf_id = leaf
        send_event(conversation.pk, {"type": "branch.switched", "leaf_id": leaf})
    return conversation


def conversation_delete(*, user: User, conversation_id: int) -> None:
    """Delete a conversation and its messages; DoesNotExist for others'.

    A job still queued for it finds nothing to claim and does nothing.
    """
    selectors.conversation_get(user=user, conversation_id=conversation_id).delete()


@transaction.atomic
def conversation_import(*, user: User, data: Any) -> Conversation:
    """Create a conversation from an exported JSON file (InvalidImport if it is not one)."""
    imported = exports.parse_import(data)
    try:
        check_length("system_prompt", imported.system_prompt or "")
        for index, message in enumerate(imported.messages):
            if message.role == "user":  # replies are bounded by the model's own limits
                check_length(f"messages[{index}].content", message.content)
        given = chat_params.params_in(
            {field: imported.params.get(field) for field in chat_params.CHAT_PARAM_FIELDS}
        )
    except (InvalidInput, InvalidParameter) as exc:
        raise exports.InvalidImport(str(exc)) from None
    conversation = conversation_create(
        user=user, title=imported.title or "Imported conversation", system_prompt=imported.system_prompt
    )
    if imported.folder:  # its folder of that name, made if missing (none if no room: still imported)
        conversation.folder = folder_for_import(user=user, name=imported.folder)
        conversation.save(update_fields=["folder"])
    if imported.params:
        conversation.params = chat_params.chat_params(chat_params.over(given, chat_params.site_defaults()))
        conversation.save(update_fields=["params"])
    rows = Message.objects.bulk_create(
        Message(
            conversation=conversation,
            role=m.role,
            content=m.content,
            status=Message.Status.DONE,
            citations=list(m.citations),
        )
        for m in imported.messages
    )
    if any(row.pk is None for row in rows):  # a database that does not return ids from bulk inserts
        rows = list(conversation.messages.order_by("id"))
    # Parents come before children in an export, so ids grow along every branch here too.
    for row, message in zip(rows, imported.messages, strict=True):
        row.parent_id = None if message.parent is None else rows[message.parent].pk
    linked = [row for row in rows if row.parent_id is not None]
    Message.objects.bulk_update(linked, ["parent"], batch_size=500)
    ToolStep.objects.bulk_create(  # a reply's tool calls: a record, never run again
        ToolStep(reply=row, **step)
        for row, message in zip(rows, imported.messages, strict=True)
        for step in message.tool_steps
    )
    if rows:
        chosen = rows[-1] if imported.current is None else rows[imported.current]
        tree = Tree.of((row.pk, row.parent_id) for row in rows)
        conversation.current_leaf_id = tree.newest_leaf_under(chosen.pk)
        conversation.save(update_fields=["current_leaf"])
    return conversation
