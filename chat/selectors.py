"""Reads. Every function takes the acting user, so nobody reads another's data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from django.contrib.auth.models import User
from django.db.models import Q, QuerySet

from chat.models import ApiKey, Conversation, Message
from inference import presence
from inference.types import Turn


def conversation_list(*, user: User) -> QuerySet[Conversation]:
    return Conversation.objects.filter(owner=user).order_by("-updated")


def conversation_search(*, user: User, query: str) -> QuerySet[Conversation]:
    """The user's conversations whose title or any message contains `query`."""
    matches = Q(title__icontains=query) | Q(messages__content__icontains=query)
    return conversation_list(user=user).filter(matches).distinct()


def conversation_get(*, user: User, conversation_id: int) -> Conversation:
    """The user's conversation; Conversation.DoesNotExist for anyone else's."""
    return Conversation.objects.get(pk=conversation_id, owner=user)


def message_get(*, user: User, message_id: int) -> Message:
    return Message.objects.select_related("conversation").get(pk=message_id, conversation__owner=user)


def conversation_messages(*, conversation: Conversation) -> QuerySet[Message]:
    return conversation.messages.order_by("created", "id")


def reply_in_progress(*, conversation: Conversation) -> bool:
    return conversation.messages.filter(
        role=Message.Role.ASSISTANT, status__in=[Message.Status.PENDING, Message.Status.STREAMING]
    ).exists()


def message_usage(message: Message) -> dict[str, int]:
    """A reply's token counts, as every surface reports them (0 until known)."""
    return {
        "prompt_tokens": message.prompt_tokens or 0,
        "completion_tokens": message.completion_tokens or 0,
    }


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
        "created": message.created.isoformat(),
    }


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


def api_key_list(*, user: User) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(user=user).order_by("-created", "-id")


def reply_unfinished_count(*, user: User) -> int:
    """The user's replies queued or being generated, on every surface."""
    return Message.objects.filter(
        conversation__owner=user,
        role=Message.Role.ASSISTANT,
        status__in=[Message.Status.PENDING, Message.Status.STREAMING],
    ).count()


# --- Models ------------------------------------------------------------------------


# The name the worker gives the packaged model (inference.loading.DEFAULT_MODEL_NAME,
# repeated here because that module imports torch and the web process must not).
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def model_configured_name(*, model_path: str) -> str:
    """The name a worker started with MODEL_PATH=`model_path` reports, computed without loading it."""
    if not model_path:
        return DEFAULT_MODEL_NAME
    path = Path(model_path).expanduser()
    return path.stem if path.suffix == ".gguf" else path.resolve().name


@dataclass(frozen=True)
class ServedModel:
    name: str
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


def model_list(*, redis_url: str, model_path: str) -> list[ServedModel]:
    """The models live workers serve or are loading; the configured one if no worker is up.

    Listing the configured model while no worker runs lets clients discover
    the name before the first worker is up (a completion then answers 503).
    """
    try:
        workers = presence.live_workers(redis_url)
    except redis.RedisError:
        workers = []
    by_name: dict[str, list[presence.WorkerInfo]] = {}
    for worker in workers:
        by_name.setdefault(worker.model, []).append(worker)
    if not by_name:
        return [ServedModel(name=model_configured_name(model_path=model_path), since=0, workers=0)]
    served = []
    for name, group in sorted(by_name.items()):
        furthest = max(group, key=lambda worker: worker.progress)
        served.append(
            ServedModel(
                name=name,
                since=min(worker.since for worker in group),
                workers=len(group),
                ready=sum(worker.ready for worker in group),
                progress=furthest.progress,
                stage=furthest.stage,
            )
        )
    return served
