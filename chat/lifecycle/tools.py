"""Tool wait: a reply that called MCP tools pauses, its steps run, and it continues.

A generation pass whose text is nothing but well-formed calls of the tools
offered to the conversation (inference.tools.parse_calls) does not finish the
reply: it moves to TOOL_WAIT (chat.lifecycle.status.reply_tool_wait) and each
call becomes a step (chat.tools.services.steps_create). Automatic steps are
queued on the "tools" queue at once; "ask" steps wait for the owner's answer
(`step_answer`, from the websocket or REST). When every step of the pass has
ended (a result, an error or a refusal), the reply goes back to PENDING and is
dispatched again; the next pass reads the results in its prompt.

Nothing here waits: each event (a pass ending, a step ending, an answer) moves
the reply on, and the sweeper (chat.lifecycle.sweep) ends what a fault left
behind within its stated bounds.
"""

from __future__ import annotations

import logging
from contextlib import suppress

import redis
from celery import current_app
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from kombu.exceptions import OperationalError as BrokerError

from chat.events import send_event
from chat.lifecycle import dispatch
from chat.lifecycle.status import reply_finish, reply_resume, reply_tool_wait
from chat.models import Message, ToolStep
from chat.tools import services
from inference.tools import ToolCall, parse_calls
from inference.types import Completion

logger = logging.getLogger(__name__)

# chat.tasks.run_tool_step's name: published by name, as the generation task is.
TOOL_TASK = "chat.run_tool_step"


def reply_pass_end(
    *,
    reply: Message,
    completion: Completion,
    first_token_at: float | None,
    time_limit_s: float | None,
    offered: services.Offered,
) -> None:
    """End one generation pass: tool calls pause the reply, anything else finishes it."""
    preface, calls = "", list[ToolCall]()
    if offered.tools and completion.finish_reason == "stop":
        preface, calls = parse_calls(completion.text, offered.names())
    if not calls:
        reply_finish(
            reply=reply, completion=completion, first_token_at=first_token_at, time_limit_s=time_limit_s
        )
        return
    with transaction.atomic():
        if not reply_tool_wait(reply=reply, completion=completion, first_token_at=first_token_at):
            return  # cancelled, failed or deleted meanwhile: its calls are not run
        steps = services.steps_create(reply=reply, preface=preface, calls=calls, offered=offered)
        steps_event(reply)
        queued = [step.pk for step in steps if step.status == ToolStep.Status.QUEUED]
        transaction.on_commit(lambda: _publish(queued))
    if all(step.is_finished for step in steps):  # every call refused by a limit
        reply_continue(reply_id=reply.pk)


def step_answer(*, user: User, step_id: int, approve: bool) -> ToolStep:
    """The owner approves or refuses a waiting step. ToolStep.DoesNotExist for anyone else's;
    an answer to a step already decided changes nothing."""
    with transaction.atomic():
        before = services.step_get(user=user, step_id=step_id).status
        step = services.step_decide(user=user, step_id=step_id, approve=approve)
        changed = before == ToolStep.Status.AWAITING_APPROVAL and step.status != before
        if changed:
            steps_event(step.reply)
            if step.status == ToolStep.Status.QUEUED:
                transaction.on_commit(lambda: _publish([step.pk]))
    if changed and step.is_finished:
        reply_continue(reply_id=step.reply_id)
    return step


def step_done(*, step_id: int, worker: str) -> None:
    """Run a queued step (the tools worker's task), then move its reply on."""
    step = services.step_run(step_id=step_id, worker=worker)
    if step is None:
        return
    steps_event(step.reply)
    reply_continue(reply_id=step.reply_id)


def reply_continue(*, reply_id: int) -> bool:
    """Queue the reply's next pass once every step of this one has ended; False if not yet
    (or it is not waiting). A reply no worker can take is failed by reply_enqueue."""
    if not services.round_finished(reply_id=reply_id) or not reply_resume(reply_id=reply_id):
        return False
    reply = Message.objects.get(pk=reply_id)
    with suppress(dispatch.WorkerUnavailable):  # failed with the reason
        dispatch.reply_enqueue(reply=reply)
    return True


def steps_event(reply: Message) -> None:
    """The reply's steps, as the page shows them (after commit)."""
    steps = [services.step_payload(step) for step in reply.tool_steps.order_by("ordinal")]
    send_event(
        reply.conversation_id,
        {
            "type": "reply.tools",
            "message_id": reply.pk,
            "steps": steps,
            "waiting": any(step["status"] == ToolStep.Status.AWAITING_APPROVAL for step in steps),
        },
    )


def _publish(step_ids: list[int]) -> None:
    """Queue each step on the tools queue; one that cannot be queued ends with the reason."""
    for step_id in step_ids:
        try:
            current_app.send_task(TOOL_TASK, args=[step_id], queue=settings.TOOL_QUEUE, retry=False)
        except (redis.RedisError, BrokerError, OSError) as exc:
            logger.warning("broker unreachable while queueing tool step %s: %s", step_id, exc)
            if services.step_fail(step_id=step_id, error="The tool could not be queued: the broker is down."):
                reply_id = ToolStep.objects.values_list("reply_id", flat=True).get(pk=step_id)
                reply_continue(reply_id=reply_id)
