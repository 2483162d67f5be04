"""Reads. Every function takes the acting user, so nobody reads another's data."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet

from chat.models import ApiKey, Conversation, Message
from inference.types import Turn


def conversation_list(*, user: AbstractBaseUser) -> QuerySet[Conversation]:
    return Conversation.objects.filter(owner=user).order_by("-updated")


def conversation_search(*, user: AbstractBaseUser, query: str) -> QuerySet[Conversation]:
    """The user's conversations whose title or any message contains `query`."""
    matches = Q(title__icontains=query) | Q(messages__content__icontains=query)
    return conversation_list(user=user).filter(matches).distinct()


def conversation_get(*, user: AbstractBaseUser, conversation_id: int) -> Conversation:
    """The user's conversation; Conversation.DoesNotExist for anyone else's."""
    return Conversation.objects.get(pk=conversation_id, owner=user)


def message_get(*, user: AbstractBaseUser, message_id: int) -> Message:
    return Message.objects.select_related("conversation").get(pk=message_id, conversation__owner=user)


def conversation_messages(*, conversation: Conversation) -> QuerySet[Message]:
    return conversation.messages.order_by("created", "id")


def reply_turns(*, reply: Message) -> list[Turn]:
    """The prompt for an assistant placeholder: system prompt and the turns before it.

    Failed or empty replies are left out together with the user message they
    answered, so roles keep alternating (many chat templates insist on it);
    the newest user message is always kept.
    """
    earlier = list(
        reply.conversation.messages.filter(id__lt=reply.id)
        .exclude(role=Message.Role.SYSTEM)
        .order_by("created", "id")
    )
    turns: list[Turn] = []
    for index, message in enumerate(earlier):
        if message.role == Message.Role.USER:
            answered = index + 1 < len(earlier) and _usable_reply(earlier[index + 1])
            if answered or index == len(earlier) - 1:
                turns.append(Turn("user", message.content))
        elif _usable_reply(message) and turns and turns[-1].role == "user":
            turns.append(Turn("assistant", message.content))
    system = reply.conversation.system_prompt.strip()
    return ([Turn("system", system)] if system else []) + turns


def _usable_reply(message: Message) -> bool:
    return (
        message.role == Message.Role.ASSISTANT
        and message.status in {Message.Status.DONE, Message.Status.CANCELLED}
        and bool(message.content.strip())
    )


def api_key_list(*, user: AbstractBaseUser) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(user=user).order_by("-created", "-id")
