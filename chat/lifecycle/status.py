"""The only writer of a reply's status: each transition of the lifecycle, as one conditional update.

    (created) -> PENDING -> STREAMING -> DONE
                    |           |------> FAILED   (the time limit; the sweeper: worker lost, overrun)
                    |           |------> CANCELLED (the user; the worker stops within a step or two)
                    |           `------> TOOL_WAIT (it called tools: chat/lifecycle/tools.py)
                    |                      |-> PENDING   (every step ended: the next pass is queued)
                    |                      |-> CANCELLED (the user)
                    |                      `-> FAILED    (no worker or broker to continue it)
                    |------> FAILED      (no worker or broker; the sweeper: never started)
                    `------> CANCELLED

Every transition is an UPDATE ... WHERE status IN (the states it may leave),
so two actors racing (a worker finishing, the user cancelling, the sweeper
failing) end a reply once; each ending is announced from the stored row, on
commit (chat.events.send_event).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from chat import selectors
from chat.documents.retrieval import mark_cited
from chat.events import send_event
from chat.models import Conversation, Message
from chat.services.usage import usage_record
from inference.types import Completion

logger = logging.getLogger(__name__)


class NotCancellable(Exception):
    pass


def reply_pending_create(
    *, conversation: Conversation, question: Message, params: dict[str, Any], model: str
) -> Message:
    """A new reply, pending: what the submit path stores beside the question."""
    return Message.objects.create(
        conversation=conversation,
        parent=question,
        role=Message.Role.ASSISTANT,
        status=Message.Status.PENDING,
        params=params,
        model=model,
    )


def reply_claim(*, reply_id: int, worker: str, model: str) -> bool:
    """PENDING -> STREAMING for `worker` (its heartbeat id); False if the reply was not pending."""
    claimed = Message.objects.filter(
        pk=reply_id, role=Message.Role.ASSISTANT, status=Message.Status.PENDING
    ).update(status=Message.Status.STREAMING, worker=worker, model=model, started_at=timezone.now())
    if claimed != 1:
        logger.info("reply %s already claimed, finished or deleted; skipping", reply_id)
    return claimed == 1


def reply_finish(
    *, reply: Message, completion: Completion, first_token_at: float | None, time_limit_s: float | None
) -> None:
    """STREAMING -> DONE (or FAILED at the time limit) with the final text and counts.

    A reply cancelled or failed meanwhile keeps its status and gets the full
    text; one deleted with its conversation is dropped. The tokens count
    against the owner's budget whatever became of it.
    """
    now = timezone.now()
    fields = {
        "content": completion.text,
        # A reply that called tools was generated in several passes: its counts add up.
        "prompt_tokens": (reply.prompt_tokens or 0) + completion.prompt_tokens,
        "completion_tokens": (reply.completion_tokens or 0) + completion.completion_tokens,
        "finish_reason": completion.finish_reason,
        "finished_at": now,
        # A later pass (after tools) keeps the reply's first token.
        "first_token_at": reply.first_token_at
        or (datetime.fromtimestamp(first_token_at, tz=UTC) if first_token_at else None),
    }
    if reply.citations:
        fields["citations"] = mark_cited(reply.citations, completion.text)
    if completion.finish_reason == "timeout":
        outcome = {
            "status": Message.Status.FAILED,
            "error_code": "timeout",
            "error": f"Generation stopped at the {time_limit_s or 0:g} s time limit.",
        }
    else:
        outcome = {"status": Message.Status.DONE}
    with transaction.atomic():
        # Tokens spent count against the owner's budget whatever became of the
        # reply (finished, cancelled, timed out, or its conversation deleted).
        usage_record(
            user_id=reply.conversation.owner_id,
            model=reply.model,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            day=timezone.localdate(now),
        )
        finished = Message.objects.filter(pk=reply.pk, status=Message.Status.STREAMING)
        # Not streaming any more: cancelled (or failed by the sweeper) meanwhile,
        # so keep the status with the full text; or deleted with its conversation.
        if not finished.update(**fields, **outcome) and not Message.objects.filter(pk=reply.pk).update(
            **fields
        ):
            logger.info("reply %s was deleted while generating; dropping it", reply.pk)
            return
        reply.refresh_from_db()
        Conversation.objects.filter(pk=reply.conversation_id).update(updated=now)
        send_event(reply.conversation_id, reply_event(reply))


def reply_cancel(*, user: User, message_id: int) -> Message:
    """Stop a reply. Raises Message.DoesNotExist for anyone else's message.

    A queued reply is cancelled at once (its job will find nothing to claim);
    a streaming one is stopped by its worker within a decode step or two, and
    keeps the text generated so far. Cancelling a finished reply changes nothing.
    """
    reply = selectors.message_get(user=user, message_id=message_id)
    if reply.role != Message.Role.ASSISTANT:
        raise NotCancellable("Only a reply can be cancelled.")
    with transaction.atomic():
        # Pending or waiting on tools: nobody is generating it, so it ends now.
        queued = Message.objects.filter(
            pk=reply.pk, status__in=[Message.Status.PENDING, Message.Status.TOOL_WAIT]
        ).update(status=Message.Status.CANCELLED, finish_reason="cancelled", finished_at=timezone.now())
        if queued:
            reply.refresh_from_db()
            send_event(reply.conversation_id, reply_event(reply))
        else:
            # The worker sees this between decode steps and publishes the end itself.
            Message.objects.filter(pk=reply.pk, status=Message.Status.STREAMING).update(
                status=Message.Status.CANCELLED
            )
    reply.refresh_from_db()
    return reply


def reply_fail(
    *, reply_id: int, code: str, error: str, worker: str | None = None, only_pending: bool = False
) -> bool:
    """Mark an unfinished reply failed with a readable reason; False if it had already ended.

    With `worker`, only while that worker still holds it; with `only_pending`,
    only if no worker has claimed it (a publish that failed, or seemed to,
    must not fail a reply a worker is writing). The text generated so far stays.
    """
    states = (
        [Message.Status.PENDING]
        if only_pending
        else [Message.Status.PENDING, Message.Status.STREAMING, Message.Status.TOOL_WAIT]
    )
    unfinished = Message.objects.filter(pk=reply_id, status__in=states)
    if worker is not None:
        unfinished = unfinished.filter(worker=worker)
    with transaction.atomic():
        updated = unfinished.update(
            status=Message.Status.FAILED, error_code=code, error=error, finished_at=timezone.now()
        )
        if updated:
            reply = Message.objects.get(pk=reply_id)
            send_event(reply.conversation_id, reply_event(reply))
    return bool(updated)


def reply_tool_wait(*, reply: Message, completion: Completion, first_token_at: float | None) -> bool:
    """STREAMING -> TOOL_WAIT: the pass ended in tool calls. Its tokens are counted and
    kept on the reply; False if the reply was cancelled, failed or deleted meanwhile."""
    now = timezone.now()
    with transaction.atomic():
        usage_record(
            user_id=reply.conversation.owner_id,
            model=reply.model,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            day=timezone.localdate(now),
            replies=0,
        )
        waiting = Message.objects.filter(pk=reply.pk, status=Message.Status.STREAMING).update(
            status=Message.Status.TOOL_WAIT,
            content="",
            prompt_tokens=(reply.prompt_tokens or 0) + completion.prompt_tokens,
            completion_tokens=(reply.completion_tokens or 0) + completion.completion_tokens,
            first_token_at=reply.first_token_at
            or (datetime.fromtimestamp(first_token_at, tz=UTC) if first_token_at else None),
        )
    return waiting == 1


def reply_resume(*, reply_id: int) -> bool:
    """TOOL_WAIT -> PENDING, to be queued again for its next pass; False if it was not waiting."""
    return (
        Message.objects.filter(pk=reply_id, status=Message.Status.TOOL_WAIT).update(
            status=Message.Status.PENDING, queued_at=None, worker=""
        )
        == 1
    )


FINISHED_EVENTS = {
    Message.Status.DONE: "message.done",
    Message.Status.FAILED: "message.failed",
    Message.Status.CANCELLED: "message.cancelled",
}


def reply_event(reply: Message) -> dict[str, Any]:
    """The event that announces a finished reply, built from its stored row."""
    payload = selectors.message_payload(reply)
    return {
        "type": FINISHED_EVENTS[Message.Status(reply.status)],
        "message_id": reply.pk,
        **{
            field: payload[field]
            for field in ("content", "finish_reason", "usage", "timing", "code", "error", "citations")
        },
    }
