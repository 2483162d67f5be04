"""Sharing a conversation by link: a read-only snapshot of the branch shown.

A share holds a copy of the branch's finished messages at the moment it was
made (or last updated): later messages never appear in it. Its URL carries a
token of 256 random bits, the only way to find it. Revoking deletes it, and
so does deleting the conversation or the account (the row cascades), so a
revoked link is a 404 like one that never existed. The owner's name is shown
only if the owner chose to show it. SHARING=off turns the whole feature off:
no share can be made, and existing links answer 404 while it is off.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction

from chat import exports, selectors
from chat.models import Conversation, Message, Share
from chat.services.conversations import conversation_import

TOKEN_BYTES = 32  # 256 bits: the link is the only secret


class SharingOff(Exception):
    """The site does not share conversations (SHARING=off)."""

    def __str__(self) -> str:
        return "Sharing conversations is turned off on this server."


class NothingToShare(Exception):
    def __str__(self) -> str:
        return "The conversation has no finished message to share yet."


def _check_on() -> None:
    if not settings.SHARING:
        raise SharingOff


def share_save(*, user: User, conversation_id: int, show_owner: bool = False) -> Share:
    """Make the conversation's share, or bring an existing one up to the branch shown now
    (same link). Conversation.DoesNotExist for anyone else's."""
    _check_on()
    conversation = selectors.conversation_get(user=user, conversation_id=conversation_id)
    snapshot = _snapshot(conversation)
    if not snapshot:
        raise NothingToShare
    with transaction.atomic():
        share, _ = Share.objects.select_for_update().get_or_create(
            conversation=conversation,
            defaults={"token": secrets.token_urlsafe(TOKEN_BYTES), "title": "", "messages": []},
        )
        share.title = conversation.title
        share.messages = snapshot
        share.show_owner = show_owner
        share.save()
    return share


def share_revoke(*, user: User, conversation_id: int) -> bool:
    """Delete the conversation's share; False if it had none. DoesNotExist for anyone else's."""
    conversation = selectors.conversation_get(user=user, conversation_id=conversation_id)
    deleted, _ = Share.objects.filter(conversation=conversation).delete()
    return bool(deleted)


def share_continue(*, user: User, token: str) -> Conversation:
    """A new conversation of `user`'s holding the shared messages, to go on from."""
    share = selectors.share_get(token=token)
    data: dict[str, Any] = {
        "format": exports.FORMAT,
        "version": 1,  # one branch, in order
        "title": share.title or "Shared conversation",
        "messages": share.messages,
    }
    return conversation_import(user=user, data=data)


def _snapshot(conversation: Conversation) -> list[dict[str, str]]:
    """The branch being viewed, its finished text only: no reply still being written,
    none that failed (a stopped reply keeps what it had written)."""
    kept = {Message.Status.DONE, Message.Status.CANCELLED}
    branch = selectors.conversation_branch(conversation=conversation)
    return [
        {"role": message.role, "content": message.content}
        for message in branch.messages
        if message.role in (Message.Role.USER, Message.Role.ASSISTANT)
        and (message.role == Message.Role.USER or message.status in kept)
        and message.content
    ]
