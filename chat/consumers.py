"""The chat page's websocket: one per open conversation.

Thin: it authenticates, checks ownership, relays the conversation's events and
turns the page's actions into service calls. Nothing is kept only here: a
page that reconnects gets a fresh snapshot from the database.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from chat import selectors, services
from chat.events import conversation_group
from chat.models import Conversation, Message
from inference.params import InvalidParameter

logger = logging.getLogger(__name__)

# Close codes in the private range, so the page can tell why it was refused.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404

# Refusals a person can act on, reported to the page as {"type": "error"}.
USER_ERRORS = (
    ValueError,
    InvalidParameter,
    services.ReplyInProgress,
    services.NothingToRegenerate,
    services.NotCancellable,
    Message.DoesNotExist,
)


class ConversationConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.user = user
        self.conversation_id = int(self.scope["url_route"]["kwargs"]["conversation_id"])
        try:
            snapshot = await database_sync_to_async(self._snapshot)()
        except Conversation.DoesNotExist:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        # Join before sending the snapshot: events from now on reach this
        # socket, and deltas carry offsets so the page skips what it has.
        self.group = conversation_group(self.conversation_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json(snapshot)

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def chat_event(self, message: dict[str, Any]) -> None:
        await self.send_json(message["event"])

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        action = content.get("action") if isinstance(content, dict) else None
        handler = ACTIONS.get(action) if isinstance(action, str) else None
        if handler is None:
            await self.send_json({"type": "error", "error": f"Unknown action {action!r}."})
            return
        try:
            await database_sync_to_async(handler)(self, content)
        except USER_ERRORS as exc:
            await self.send_json({"type": "error", "action": action, "error": str(exc)})
        except services.WorkerUnavailable:
            pass  # the failed reply was published to the group with its reason

    def _snapshot(self) -> dict[str, Any]:
        conversation = selectors.conversation_get(user=self.user, conversation_id=self.conversation_id)
        params = services.params_for(conversation=conversation)
        return {
            "type": "snapshot",
            "conversation": {
                "id": conversation.pk,
                "title": conversation.title,
                "system_prompt": conversation.system_prompt,
                "params": {field: getattr(params, field) for field in services.CHAT_PARAM_FIELDS},
            },
            "messages": [
                selectors.message_payload(m)
                for m in selectors.conversation_messages(conversation=conversation)
            ],
        }

    # Actions, run in a worker thread by receive_json.

    def _send(self, content: dict[str, Any]) -> None:
        text = content.get("content")
        if not isinstance(text, str):
            raise ValueError("The message is empty.")
        posted = services.chat_message_post(
            user=self.user, conversation_id=self.conversation_id, content=text
        )
        services.reply_enqueue(reply=posted.reply)

    def _cancel(self, content: dict[str, Any]) -> None:
        message_id = content.get("message_id")
        if not isinstance(message_id, int):
            raise ValueError("message_id must be a number.")
        services.reply_cancel(user=self.user, message_id=message_id)

    def _regenerate(self, content: dict[str, Any]) -> None:
        reply = services.reply_regenerate(user=self.user, conversation_id=self.conversation_id)
        services.reply_enqueue(reply=reply)

    def _edit(self, content: dict[str, Any]) -> None:
        text = content.get("content")
        if not isinstance(text, str):
            raise ValueError("The message is empty.")
        reply = services.message_edit_last(user=self.user, conversation_id=self.conversation_id, content=text)
        services.reply_enqueue(reply=reply)


ACTIONS = {
    "send": ConversationConsumer._send,
    "cancel": ConversationConsumer._cancel,
    "regenerate": ConversationConsumer._regenerate,
    "edit": ConversationConsumer._edit,
}
