"""The reply lifecycle, web side: the one way a reply starts, and the ways it ends early.

`reply_submit` is the only way in for every surface (the page's send,
regenerate and edit; `POST /chat`; `/v1/chat/completions`; the REST API's
post). It checks the input and the rules (`chat.services.limits`), resolves
the parameters (`chat.params`), stores the user's message and a pending
reply in one transaction, and queues the job once that has committed. The
worker's side is `chat.generation`; replies nobody is working on any more are
ended by `chat.services.sweeper`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from chat import params as chat_params
from chat import selectors
from chat.events import send_event
from chat.models import Conversation, Message, Profile
from chat.services import limits
from chat.services.conversations import conversation_create
from chat.services.profiles import params_for_new_conversations
from inference import presence
from inference.params import GenerationParams
from inference.registry import queue_for
from inference.types import Turn

logger = logging.getLogger(__name__)

TITLE_LENGTH = 60


def conversation_title(text: str) -> str:
    """A conversation's title when nobody named it: the start of its first message."""
    return " ".join(text.split())[:TITLE_LENGTH]


class WorkerUnavailable(Exception):
    """No worker can take the job now. The user's message is kept; the reply is failed."""

    def __init__(self, message: str, *, reply: Message, code: str = "worker_unavailable") -> None:
        super().__init__(message)
        self.reply = reply
        self.code = code  # worker_unavailable, or model_loading while the workers load the model


class NotCancellable(Exception):
    pass


class NothingToRegenerate(Exception):
    pass


Action = Literal["send", "regenerate", "edit"]


@dataclass(frozen=True)
class NewConversation:
    """A conversation the submission itself creates, so none is ever stored empty.

    The OpenAI API's exchange gives a system prompt and earlier turns. The chat
    page's new chat gives `system_prompt=None`: the conversation is made as
    `conversation_create` makes it (the owner's default system prompt and
    parameters), and becomes the one `POST /chat` continues.
    """

    system_prompt: str | None = ""
    history: tuple[Turn, ...] = ()  # alternating user and assistant turns before the question


@dataclass(frozen=True)
class Submission:
    """What a surface asks for, parsed from its own format; `reply_submit` applies the rules."""

    action: Action = "send"
    content: str = ""  # the new message (send) or the changed last message (edit)
    conversation_id: int | None = None  # None: the user's current conversation (POST /chat)
    params: Mapping[str, Any] = field(default_factory=dict)  # as sent; left out = resolved
    new_conversation: NewConversation | None = None  # instead of conversation_id
    model: str = ""  # a declared model, kept for the conversation's next turns; "" = the conversation's
    # While the model's workers are still loading it (or starting), the reply
    # waits in the queue for them; False: refuse it at once (503 model_loading).
    wait_for_model: bool = True


@dataclass(frozen=True)
class PostedMessage:
    user_message: Message  # the question the reply answers
    reply: Message  # the assistant placeholder, pending (failed if no worker could take it)


def params_for(*, conversation: Conversation) -> GenerationParams:
    """Conversation settings over the owner's profile defaults over the site defaults."""
    return chat_params.stored_over(conversation.params, params_for_new_conversations(user=conversation.owner))


def reply_submit(*, user: User, submission: Submission) -> PostedMessage:
    """Store a question and its pending reply within the rules, then queue the job.

    Raises, with nothing stored: InvalidInput or InvalidParameter (bad input,
    naming the field), Conversation.DoesNotExist (not the user's),
    NothingToRegenerate, ModelNotDeclared, ConversationBusy, TooManyReplies, QuotaExceeded,
    RateLimited.
    Raises WorkerUnavailable after storing, with the reply marked failed.
    """
    content = submission.content
    if submission.action != "regenerate":
        content = limits.check_message("message", content)
    given = chat_params.params_in(submission.params)
    if (new := submission.new_conversation) is not None:
        limits.check_length("system_prompt", new.system_prompt or "")
        for index, turn in enumerate(new.history):
            limits.check_length(f"history[{index}]", turn.content)

    if new is None and submission.conversation_id is not None:
        # A reply whose worker died blocks its conversation only until the
        # sweeper ends it; end it now rather than answer 409. Outside the
        # transaction: it asks Redis, and the write lock must not wait on that.
        from chat.services.sweeper import fail_lost_replies

        # Looked up first: a foreign key filter with an id past the database's
        # integers fails in the driver instead of matching nothing (a 500).
        continued = selectors.conversation_get(user=user, conversation_id=submission.conversation_id)
        fail_lost_replies(conversation_id=continued.pk, user=user)

    with transaction.atomic():
        profile = limits.lock_profile(user=user)
        if new is not None:
            conversation = _new_conversation(user, new, content)  # rolled back if refused below
        else:
            conversation = _conversation(user, profile, submission.conversation_id)
            limits.check_idle(conversation=conversation)
        model = limits.check_model(submission.model or conversation.model)
        if submission.model:
            conversation.model = model
        limits.check_concurrency(user=user)
        now = timezone.now()
        limits.check_quota(user=user, profile=profile, now=now)
        limits.take_rate_token(profile=profile, now=now)
        question, earlier = _question(conversation, submission.action, content)
        reply = Message.objects.create(
            conversation=conversation,
            parent=question,
            role=Message.Role.ASSISTANT,
            status=Message.Status.PENDING,
            params=chat_params.over(given, params_for(conversation=conversation)).as_dict(),
            model=model,
        )
        if not conversation.title:
            conversation.title = conversation_title(question.content)
        conversation.current_leaf = reply  # the new reply's branch is the one shown
        conversation.save(update_fields=["title", "model", "current_leaf", "updated"])
        for message in (*earlier, reply):
            send_event(conversation.pk, created_event(message))
    reply_enqueue(reply=reply, wait_for_model=submission.wait_for_model)
    return PostedMessage(user_message=question, reply=reply)


def _conversation(user: User, profile: Profile, conversation_id: int | None) -> Conversation:
    """The conversation to continue; it becomes the one `POST /chat` continues next."""
    if conversation_id is None:
        if profile.current_conversation_id is not None:
            return selectors.conversation_get(user=user, conversation_id=profile.current_conversation_id)
        conversation = Conversation.objects.create(owner=user, system_prompt=profile.default_system_prompt)
    else:
        conversation = selectors.conversation_get(user=user, conversation_id=conversation_id)
    if profile.current_conversation_id != conversation.pk:
        profile.current_conversation = conversation
        profile.save(update_fields=["current_conversation"])
    return conversation


def _new_conversation(user: User, new: NewConversation, content: str) -> Conversation:
    """The page's new chat, or the OpenAI API's exchange (which does not become the
    conversation `POST /chat` continues)."""
    if new.system_prompt is None:
        return conversation_create(user=user)  # titled from the question by the caller
    first = new.history[0].content if new.history else content
    conversation = Conversation.objects.create(
        owner=user, title=conversation_title(first), system_prompt=new.system_prompt.strip()
    )
    parent = None
    for turn in new.history:  # one branch; the question follows its last turn
        parent = Message.objects.create(
            conversation=conversation, parent=parent, role=turn.role, content=turn.content
        )
    conversation.current_leaf = parent
    return conversation


def _question(conversation: Conversation, action: Action, content: str) -> tuple[Message, list[Message]]:
    """The user message the new reply answers, and the new messages to announce.

    Nothing is replaced: a regenerated reply becomes a sibling of the one on
    the branch being viewed, an edited question a sibling of the question
    (with its new reply below it), and both versions stay in the tree.
    """
    branch = selectors.conversation_branch(conversation=conversation).messages
    if action == "send":
        question = Message.objects.create(
            conversation=conversation,
            parent=branch[-1] if branch else None,
            role=Message.Role.USER,
            content=content,
            status=Message.Status.DONE,
        )
        return question, [question]
    found = next((m for m in reversed(branch) if m.role == Message.Role.USER), None)
    if action == "regenerate":
        if found is None or branch[-1].role != Message.Role.ASSISTANT:
            raise NothingToRegenerate("There is no reply to regenerate yet.")
        return found, []
    if found is None:
        raise NothingToRegenerate("There is no message to edit yet.")
    question = Message.objects.create(
        conversation=conversation,
        parent_id=found.parent_id,
        role=Message.Role.USER,
        content=content,
        status=Message.Status.DONE,
    )
    return question, [question]


def created_event(message: Message) -> dict[str, Any]:
    """A new message, with its parent and its siblings: a page showing the parent hides
    what followed it there (another branch now) and shows this one, "n/m"."""
    siblings = Message.objects.filter(conversation_id=message.conversation_id, parent_id=message.parent_id)
    return {
        "type": "message.created",
        "message_id": message.pk,
        "role": message.role,
        "message": selectors.message_branch_payload(
            message, list(siblings.order_by("id").values_list("id", flat=True))
        ),
    }


def broker_name() -> str:
    """The broker's address for messages people read: no password."""
    parts = urlsplit(settings.REDIS_URL)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"


def reply_enqueue(*, reply: Message, wait_for_model: bool = True) -> None:
    """Queue generation of a committed pending reply; WorkerUnavailable if nobody can run it.

    A worker that is still loading the model (or one a launcher has started
    and that has not announced itself yet) takes the job once it is ready;
    until then the job waits in the model's queue, within REPLY_QUEUE_LIMIT_S
    (the sweeper fails it past that). With `wait_for_model` False a loading
    model is refused at once instead.

    Publishes at once rather than on commit: the caller needs to know now
    whether the job reached the broker, to answer 503 instead of waiting. A
    reply whose publish never happened (the process died first) is queued
    again by the sweeper.
    """
    from chat.tasks import generate_reply  # the task module imports Celery, not torch

    model = reply.model or settings.MODEL_REGISTRY.default  # replies from before models had names
    try:
        workers = _check_workers(reply, model, wait_for_model=wait_for_model)
        generate_reply.apply_async(args=[reply.pk], queue=_queue(reply, model, workers), retry=False)
    except (redis.RedisError, BrokerError, OSError) as exc:
        logger.warning("broker unreachable while queueing reply %s: %s", reply.pk, exc)
        error = WorkerUnavailable(f"The message broker at {broker_name()} is unreachable.", reply=reply)
        reply_fail(reply_id=reply.pk, code=error.code, error=str(error), only_pending=True)
        raise error from exc
    except WorkerUnavailable as exc:
        reply_fail(reply_id=reply.pk, code=exc.code, error=str(exc), only_pending=True)
        raise
    Message.objects.filter(pk=reply.pk, queued_at__isnull=True).update(queued_at=timezone.now())


def _queue(reply: Message, model: str, workers: list[presence.WorkerInfo]) -> str:
    """Where the job goes: to the worker that wrote the conversation's last reply while it
    is alive and has a free slot (it holds the conversation's prefix cache, so the new
    turn prefills only what is new); else to the model's queue, for any of its workers."""
    if settings.CACHE_AFFINITY:
        last = (
            Message.objects.filter(conversation_id=reply.conversation_id, role=Message.Role.ASSISTANT)
            .exclude(pk=reply.pk)
            .exclude(worker="")
            .order_by("-id")
            .values_list("worker", flat=True)
            .first()
        )
        holder = next((w for w in workers if w.id == last and w.ready and w.queue), None)
        if holder is not None:
            busy = Message.objects.filter(worker=holder.id, status=Message.Status.STREAMING).count()
            if busy < holder.capacity:
                return holder.queue
    return queue_for(model)


def _check_workers(reply: Message, model: str, *, wait_for_model: bool) -> list[presence.WorkerInfo]:
    """The model's live workers, loading or ready; WorkerUnavailable if there are none,
    or if none is ready and the caller will not wait."""
    workers = [worker for worker in presence.live_workers(settings.REDIS_URL) if worker.model == model]
    if not workers:
        # Nobody is running or starting one (a launcher announces the workers it starts).
        raise WorkerUnavailable(
            f"No generation worker serves the model {model}. "
            f"Start one with `REDIS_URL={broker_name()} make worker MODEL={model}`.",
            reply=reply,
        )
    if not wait_for_model and not any(worker.ready for worker in workers):
        furthest = max(workers, key=lambda worker: worker.progress)
        raise WorkerUnavailable(
            f"The model {model} is loading ({furthest.progress}%: {furthest.stage or 'starting'}). "
            "Try again in a few seconds.",
            reply=reply,
            code="model_loading",
        )
    return workers


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
        queued = Message.objects.filter(pk=reply.pk, status=Message.Status.PENDING).update(
            status=Message.Status.CANCELLED, finish_reason="cancelled", finished_at=timezone.now()
        )
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
    states = [Message.Status.PENDING] if only_pending else [Message.Status.PENDING, Message.Status.STREAMING]
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
            for field in ("content", "finish_reason", "usage", "timing", "code", "error")
        },
    }
