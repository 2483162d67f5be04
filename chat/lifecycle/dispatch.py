"""Dispatch: a committed pending reply's job, to the worker that should run it.

The job goes to the worker that wrote the conversation's last reply while it
is alive and has a free slot (it holds the conversation's prefix cache), else
to the model's queue. A job that cannot be published fails its reply at once
(the caller answers 503); one whose publish never happened is queued again
by the sweeper (chat.lifecycle.sweep).
"""

from __future__ import annotations

import logging
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit

import redis
from celery import current_app
from django.conf import settings
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from chat.events import send_event
from chat.lifecycle.status import reply_fail
from chat.models import Document, Message
from inference import presence
from inference.registry import queue_for

logger = logging.getLogger(__name__)

# chat.tasks.generate_reply's name: published by name, so the tasks module
# (whose document job releases waiting replies here) can import this one.
GENERATE_TASK = "chat.generate_reply"


class WorkerUnavailable(Exception):
    """No worker can take the job now. The user's message is kept; the reply is failed."""

    def __init__(self, message: str, *, reply: Message, code: str = "worker_unavailable") -> None:
        super().__init__(message)
        self.reply = reply
        self.code = code  # worker_unavailable, or model_loading while the workers load the model


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
    model = reply.model or settings.MODEL_REGISTRY.default  # replies from before models had names
    try:
        workers = _check_workers(reply, model, wait_for_model=wait_for_model)
        if waiting := documents_waiting(reply):
            # Queued once they are read (release_waiting), so it is not answered without them.
            send_event(reply.conversation_id, waiting_event(reply, waiting))
            return
        current_app.send_task(
            GENERATE_TASK, args=[reply.pk], queue=_queue(reply, model, workers), retry=False
        )
    except (redis.RedisError, BrokerError, OSError) as exc:
        logger.warning("broker unreachable while queueing reply %s: %s", reply.pk, exc)
        error = WorkerUnavailable(f"The message broker at {broker_name()} is unreachable.", reply=reply)
        reply_fail(reply_id=reply.pk, code=error.code, error=str(error), only_pending=True)
        raise error from exc
    except WorkerUnavailable as exc:
        reply_fail(reply_id=reply.pk, code=exc.code, error=str(exc), only_pending=True)
        raise
    Message.objects.filter(pk=reply.pk, queued_at__isnull=True).update(queued_at=timezone.now())


def documents_waiting(reply: Message) -> list[Document]:
    """The documents attached to the reply's conversation that are still being read."""
    processing = Document.objects.filter(
        conversations=reply.conversation_id, status=Document.Status.PROCESSING
    )
    return list(processing.order_by("created", "pk"))


def waiting_event(reply: Message, documents: list[Document]) -> dict[str, Any]:
    """What the page shows in a reply that waits: "indexing report.pdf, 40%"."""
    return {
        "type": "reply.waiting",
        "message_id": reply.pk,
        "documents": [{"id": d.pk, "name": d.name, "progress": d.progress} for d in documents],
    }


def release_waiting(*, document_id: int) -> int:
    """Queue the pending replies that waited for this document, now read (or failed);
    returns how many were tried. One that still waits for another document stays."""
    waiting = list(
        Message.objects.filter(
            role=Message.Role.ASSISTANT,
            status=Message.Status.PENDING,
            queued_at__isnull=True,
            conversation__documents=document_id,
        )
    )
    for reply in waiting:
        with suppress(WorkerUnavailable):  # failed with the reason by reply_enqueue
            reply_enqueue(reply=reply)
    return len(waiting)


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
