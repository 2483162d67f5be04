"""The chat page's websocket: one per open conversation.

Thin: it authenticates, checks ownership, relays the conversation's events and
turns the page's actions into service calls (sending, regenerating and
editing all go through the one submit path; switching to another branch is
stored too). Nothing is kept only here: a page that reconnects gets a fresh
snapshot from the database.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from chat import delivery, selectors
from chat.auth import UNEXPECTED
from chat.events import conversation_group, user_group
from chat.lifecycle.status import NotCancellable, reply_cancel
from chat.lifecycle.submit import Submission, params_for
from chat.lifecycle.tools import step_answer
from chat.models import Conversation, Message, ToolStep
from chat.params import chat_params
from chat.services import policies
from chat.services.conversations import branch_switch
from chat.services.limits import ConversationBusy
from chat.tools import services as tool_services

logger = logging.getLogger(__name__)

# Close codes in the private range, so the page can tell why it was refused.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


class ActionError(Exception):
    """A refusal a person can act on, reported to the page as {"type": "error"}."""

    def __init__(self, message: str, code: str = "invalid_request", retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_s = retry_after_s


class ConversationConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.user = user
        self.conversation_id = int(self.scope["url_route"]["kwargs"]["conversation_id"])
        try:
            # Only the owner joins the conversation's group.
            await database_sync_to_async(selectors.conversation_get)(
                user=user, conversation_id=self.conversation_id
            )
        except Conversation.DoesNotExist:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        # Join, then read the snapshot: an event published between the two is
        # queued for this socket and handled after connect(), so it follows the
        # snapshot (deltas carry offsets: the page skips what it has). Read the
        # other way round, it would be lost until the page's quiet check asks again.
        self.groups_joined = [conversation_group(self.conversation_id), user_group(user.pk)]
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        try:
            snapshot = await database_sync_to_async(self._snapshot)()
        except Conversation.DoesNotExist:  # deleted in between
            await self.disconnect(CLOSE_NOT_FOUND)
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.accept()
        await self.send_json(snapshot)

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def chat_event(self, message: dict[str, Any]) -> None:
        await self.send_json(message["event"])

    async def session_end(self, message: dict[str, Any]) -> None:
        """The user logged out or was deleted: this socket no longer acts for them."""
        await self.close(code=CLOSE_UNAUTHENTICATED)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # Deactivating closes the user's sockets (chat/apps.py); this also
        # catches a deactivation that bypassed the signal (a queryset update).
        if not await database_sync_to_async(selectors.user_is_active)(user_id=self.user.pk):
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        action = content.get("action") if isinstance(content, dict) else None
        if action == "sync":
            # The page asks again when a reply has been quiet for a while: an
            # event lost in a broker outage must not leave it waiting for ever.
            await self.send_json(await database_sync_to_async(self._snapshot)())
            return
        handler = ACTIONS.get(action) if isinstance(action, str) else None
        if handler is None:
            await self.send_json({"type": "error", "error": f"Unknown action {action!r}."})
            return
        try:
            await database_sync_to_async(handler)(self, content)
        except ActionError as exc:
            error: dict[str, Any] = {"type": "error", "action": action, "code": exc.code, "error": str(exc)}
            if exc.retry_after_s is not None:
                error["retry_after"] = exc.retry_after_s
            await self.send_json(error)
        except Exception:
            # Keep the socket: the page puts the unsent text back on an error event.
            logger.exception("action %s failed for conversation %s", action, self.conversation_id)
            await self.send_json({"type": "error", "action": action, "code": "internal", "error": UNEXPECTED})

    def _snapshot(self) -> dict[str, Any]:
        conversation = selectors.conversation_get(user=self.user, conversation_id=self.conversation_id)
        messages = selectors.branch_payloads(selectors.conversation_branch(conversation=conversation))
        return {
            "type": "snapshot",
            "conversation": {
                "id": conversation.pk,
                "title": conversation.title,
                "system_prompt": conversation.system_prompt,
                "params": chat_params(params_for(conversation=conversation)),
                "model": conversation.model or policies.default_model_for(user=self.user),
                "use_memory": conversation.use_memory,
                "documents": selectors.conversation_documents(conversation=conversation),
            },
            # The branch being viewed; each message lists its alternatives.
            "messages": messages,
            # Its replies' tool calls, by reply id (the page's step blocks).
            "tool_steps": tool_services.steps_by_reply(reply_ids=[m["id"] for m in messages]),
        }

    # Actions, run in a worker thread by receive_json.

    def _submit(self, submission: Submission) -> None:
        try:
            delivery.submit_sync(user=self.user, submission=submission)
        except delivery.Problem as problem:
            if problem.status == 503:
                return  # the failed reply reached the page as an event, with its reason
            raise ActionError(problem.message, problem.code, problem.retry_after_s) from None

    def _send(self, content: dict[str, Any]) -> None:
        self._submit(
            Submission(
                content=_text(content),
                conversation_id=self.conversation_id,
                params=_params(content),
                documents=content.get("documents", ()),
            )
        )

    def _regenerate(self, content: dict[str, Any]) -> None:
        self._submit(
            Submission(action="regenerate", conversation_id=self.conversation_id, params=_params(content))
        )

    def _edit(self, content: dict[str, Any]) -> None:
        self._submit(
            Submission(
                action="edit",
                content=_text(content),
                conversation_id=self.conversation_id,
                params=_params(content),
            )
        )

    def _switch(self, content: dict[str, Any]) -> None:
        message_id = content.get("message_id")
        if not isinstance(message_id, int) or isinstance(message_id, bool):
            raise ActionError("message_id must be a number.")
        try:
            branch_switch(user=self.user, message_id=message_id, conversation_id=self.conversation_id)
        except Message.DoesNotExist:
            raise ActionError("No such message in this conversation.") from None
        except ConversationBusy as exc:
            raise ActionError(str(exc), exc.code, exc.retry_after_s) from None

    def _cancel(self, content: dict[str, Any]) -> None:
        message_id = content.get("message_id")
        if not isinstance(message_id, int):
            raise ActionError("message_id must be a number.")
        try:
            reply_cancel(user=self.user, message_id=message_id)
        except (NotCancellable, Message.DoesNotExist) as exc:
            raise ActionError(str(exc) or "No such message.") from None

    def _approve(self, content: dict[str, Any]) -> None:
        """{"action": "approve", "step_id": n, "approve": true | false}: the owner's answer."""
        step_id, approve = content.get("step_id"), content.get("approve")
        if not isinstance(step_id, int) or isinstance(step_id, bool) or not isinstance(approve, bool):
            raise ActionError("step_id must be a number and approve true or false.")
        try:
            if tool_services.step_get(user=self.user, step_id=step_id).reply.conversation_id != (
                self.conversation_id
            ):
                raise ToolStep.DoesNotExist
            step_answer(user=self.user, step_id=step_id, approve=approve)
        except ToolStep.DoesNotExist:
            raise ActionError("No such tool call in this conversation.") from None


def _text(content: dict[str, Any]) -> str:
    text = content.get("content")
    if not isinstance(text, str):
        raise ActionError("message: must be a non-empty string.")
    return text


def _params(content: dict[str, Any]) -> dict[str, Any]:
    """Parameters for this one reply (left out: the conversation's settings)."""
    params = content.get("params", {})
    if not isinstance(params, dict):
        raise ActionError("params: must be an object.")
    return params


ACTIONS = {
    "send": ConversationConsumer._send,
    "cancel": ConversationConsumer._cancel,
    "regenerate": ConversationConsumer._regenerate,
    "edit": ConversationConsumer._edit,
    "switch": ConversationConsumer._switch,
    "approve": ConversationConsumer._approve,
}
