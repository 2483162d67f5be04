"""Writes. Views, API endpoints, consumers and tasks call these and nothing else."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from chat import exports, selectors
from chat.events import DeltaCoalescer, send_event
from chat.models import ApiKey, Conversation, Message, Profile
from inference import presence
from inference.params import GenerationParams, InvalidParameter, parse_params
from inference.types import Backend, Completion, GenerationError, GenerationRequest, Turn

logger = logging.getLogger(__name__)

TITLE_LENGTH = 60


class WorkerUnavailable(Exception):
    """No worker can take the job right now. The user's message is already saved."""


# --- Conversations -------------------------------------------------------------


def profile_get_or_create(*, user: User) -> Profile:
    profile, _ = Profile.objects.get_or_create(user=user)
    return profile


def conversation_create(*, user: User, title: str = "", system_prompt: str | None = None) -> Conversation:
    profile = profile_get_or_create(user=user)
    conversation = Conversation.objects.create(
        owner=user,
        title=title,
        system_prompt=profile.default_system_prompt if system_prompt is None else system_prompt,
    )
    profile.current_conversation = conversation
    profile.save(update_fields=["current_conversation"])
    return conversation


def conversation_current(*, user: User) -> Conversation:
    """The conversation a client continues when it names none; created if needed."""
    profile = profile_get_or_create(user=user)
    if profile.current_conversation is not None:
        return profile.current_conversation
    return conversation_create(user=user)


def conversation_update(
    *,
    user: User,
    conversation_id: int,
    title: str | None = None,
    system_prompt: str | None = None,
) -> Conversation:
    """Rename a conversation or change its system prompt; DoesNotExist for others'."""
    conversation = selectors.conversation_get(user=user, conversation_id=conversation_id)
    fields = []
    if title is not None:
        conversation.title = " ".join(title.split())[:200]
        fields.append("title")
    if system_prompt is not None:
        conversation.system_prompt = system_prompt.strip()
        fields.append("system_prompt")
    if fields:
        conversation.save(update_fields=[*fields, "updated"])
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
    conversation = conversation_create(
        user=user, title=imported.title or "Imported conversation", system_prompt=imported.system_prompt
    )
    try:
        conversation.params = _validated(imported.params, default_params()) if imported.params else {}
    except InvalidParameter as exc:
        raise exports.InvalidImport(f"params: {exc}") from None
    conversation.save(update_fields=["params"])
    Message.objects.bulk_create(
        Message(conversation=conversation, role=m.role, content=m.content, status=Message.Status.DONE)
        for m in imported.messages
    )
    return conversation


@transaction.atomic
def account_delete(*, user: User) -> None:
    """Delete the user with every conversation, message, key and profile (cascades)."""
    user.delete()


@dataclass(frozen=True)
class PostedMessage:
    user_message: Message
    reply: Message  # the assistant placeholder, PENDING


@transaction.atomic
def message_post(
    *,
    user: User,
    content: str,
    params: GenerationParams,
    conversation_id: int | None = None,
) -> PostedMessage:
    """Store the user's message and a pending reply. Raises DoesNotExist for others' ids."""
    if conversation_id is None:
        conversation = conversation_current(user=user)
    else:
        conversation = selectors.conversation_get(user=user, conversation_id=conversation_id)
        profile = profile_get_or_create(user=user)
        profile.current_conversation = conversation
        profile.save(update_fields=["current_conversation"])
    user_message = Message.objects.create(
        conversation=conversation, role=Message.Role.USER, content=content, status=Message.Status.DONE
    )
    reply = Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        status=Message.Status.PENDING,
        params=params.as_dict(),
    )
    if not conversation.title:
        conversation.title = " ".join(content.split())[:TITLE_LENGTH]
    conversation.save(update_fields=["title", "updated"])
    for message in (user_message, reply):
        send_event(conversation.pk, _created_event(message))
    return PostedMessage(user_message=user_message, reply=reply)


def _created_event(message: Message) -> dict[str, Any]:
    return {
        "type": "message.created",
        "message_id": message.pk,
        "role": message.role,
        "message": selectors.message_payload(message),
    }


def reply_enqueue(*, reply: Message) -> None:
    """Queue generation of a committed placeholder; WorkerUnavailable if nobody can run it.

    Publishes at once rather than on commit: the caller needs to know now
    whether the job reached the broker, to answer 503 instead of waiting.
    """
    from inference.tasks import generate_reply  # the task module imports Celery only

    try:
        if not presence.live_workers(settings.REDIS_URL):
            raise WorkerUnavailable("No generation worker is running. Start one with `make worker`.")
        generate_reply.apply_async(args=[reply.pk], retry=False)
    except (redis.RedisError, BrokerError, OSError) as exc:
        logger.warning("broker unreachable while queueing message %s: %s", reply.pk, exc)
        error = WorkerUnavailable(f"The message broker at {settings.REDIS_URL} is unreachable.")
        reply_fail(reply_id=reply.pk, code="worker_unavailable", error=str(error))
        raise error from exc
    except WorkerUnavailable as exc:
        reply_fail(reply_id=reply.pk, code="worker_unavailable", error=str(exc))
        raise
    Message.objects.filter(pk=reply.pk).update(queued_at=timezone.now())


class NotCancellable(Exception):
    pass


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


class ReplyInProgress(Exception):
    """The conversation is still answering; wait for it or stop it first."""


class NothingToRegenerate(Exception):
    pass


# The parameters a person chooses on the chat page and the profile page.
CHAT_PARAM_FIELDS = ("max_new_tokens", "temperature", "top_p", "repetition_penalty")


def _stored_params(stored: dict[str, Any], defaults: GenerationParams) -> GenerationParams:
    try:
        return parse_params(
            {field: stored.get(field) for field in CHAT_PARAM_FIELDS},
            max_new_tokens_cap=settings.GENERATION_MAX_NEW_TOKENS,
            defaults=defaults,
        )
    except InvalidParameter:
        return defaults  # stored before a cap was lowered: fall back rather than fail


def params_for_new_conversations(*, user: User) -> GenerationParams:
    return _stored_params(profile_get_or_create(user=user).default_params, default_params())


def params_for(*, conversation: Conversation) -> GenerationParams:
    """Conversation settings over the owner's profile defaults over the site defaults."""
    return _stored_params(conversation.params, params_for_new_conversations(user=conversation.owner))


def _validated(raw: dict[str, Any], defaults: GenerationParams) -> dict[str, Any]:
    params = parse_params(
        {field: raw.get(field) for field in CHAT_PARAM_FIELDS},
        max_new_tokens_cap=settings.GENERATION_MAX_NEW_TOKENS,
        defaults=defaults,
    )
    return {field: getattr(params, field) for field in CHAT_PARAM_FIELDS}


def conversation_settings_update(
    *, user: User, conversation_id: int, system_prompt: str, params: dict[str, Any]
) -> Conversation:
    """Save a conversation's system prompt and generation parameters.

    Raises InvalidParameter naming the field and its range, DoesNotExist for others'.
    """
    conversation = selectors.conversation_get(user=user, conversation_id=conversation_id)
    profile = profile_get_or_create(user=user)
    conversation.params = _validated(params, _stored_params(profile.default_params, default_params()))
    conversation.system_prompt = system_prompt.strip()
    conversation.save(update_fields=["params", "system_prompt", "updated"])
    return conversation


def profile_defaults_update(*, user: User, params: dict[str, Any]) -> Profile:
    """Save the generation defaults for the user's new conversations (InvalidParameter if bad)."""
    profile = profile_get_or_create(user=user)
    profile.default_params = _validated(params, default_params())
    profile.save(update_fields=["default_params"])
    return profile


def _ensure_idle(conversation: Conversation) -> None:
    if selectors.reply_in_progress(conversation=conversation):
        raise ReplyInProgress("A reply is still being written: wait for it or stop it first.")


def chat_message_post(*, user: User, conversation_id: int, content: str) -> PostedMessage:
    """The chat page's send: refuses while a reply is running, uses the conversation's settings."""
    content = content.strip()
    if not content:
        raise ValueError("The message is empty.")
    if len(content) > settings.CHAT_MAX_MESSAGE_CHARS:
        raise ValueError(f"The message is longer than {settings.CHAT_MAX_MESSAGE_CHARS} characters.")
    with transaction.atomic():
        conversation = selectors.conversation_get(user=user, conversation_id=conversation_id)
        _ensure_idle(conversation)
        return message_post(
            user=user,
            content=content,
            params=params_for(conversation=conversation),
            conversation_id=conversation_id,
        )


@transaction.atomic
def reply_regenerate(*, user: User, conversation_id: int) -> Message:
    """Replace the last reply with a new pending one for the same question."""
    conversation = selectors.conversation_get(user=user, conversation_id=conversation_id)
    _ensure_idle(conversation)
    last = conversation.messages.order_by("-id").first()
    if last is None or last.role != Message.Role.ASSISTANT:
        raise NothingToRegenerate("There is no reply to regenerate yet.")
    return _replace_replies_after(conversation, last.pk - 1)


@transaction.atomic
def message_edit_last(*, user: User, conversation_id: int, content: str) -> Message:
    """Change the last user message and ask again; returns the new pending reply."""
    content = content.strip()
    if not content:
        raise ValueError("The message is empty.")
    conversation = selectors.conversation_get(user=user, conversation_id=conversation_id)
    _ensure_idle(conversation)
    question = conversation.messages.filter(role=Message.Role.USER).order_by("-id").first()
    if question is None:
        raise NothingToRegenerate("There is no message to edit yet.")
    Message.objects.filter(pk=question.pk).update(content=content)
    send_event(conversation.pk, {"type": "message.edited", "message_id": question.pk, "content": content})
    return _replace_replies_after(conversation, question.pk)


def _replace_replies_after(conversation: Conversation, message_id: int) -> Message:
    for stale in conversation.messages.filter(id__gt=message_id).values_list("id", flat=True):
        send_event(conversation.pk, {"type": "message.deleted", "message_id": stale})
    conversation.messages.filter(id__gt=message_id).delete()
    reply = Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        status=Message.Status.PENDING,
        params=params_for(conversation=conversation).as_dict(),
    )
    conversation.save(update_fields=["updated"])
    send_event(conversation.pk, _created_event(reply))
    return reply


def reply_fail(*, reply_id: int, code: str, error: str) -> None:
    """Mark an unfinished reply failed with a readable reason."""
    with transaction.atomic():
        updated = Message.objects.filter(
            pk=reply_id, status__in=[Message.Status.PENDING, Message.Status.STREAMING]
        ).update(status=Message.Status.FAILED, error_code=code, error=error, finished_at=timezone.now())
        if updated:
            reply = Message.objects.get(pk=reply_id)
            send_event(reply.conversation_id, reply_event(reply))


def reply_fail_abandoned(*, older_than: timedelta) -> int:
    """Fail replies left STREAMING by a worker that died; returns how many.

    A streaming reply older than the generation time limit has no live worker:
    generation stops at that limit. Without this, such a reply would stay
    "streaming" forever and the chat page would refuse new messages.
    """
    cutoff = timezone.now() - older_than
    abandoned = list(
        Message.objects.filter(status=Message.Status.STREAMING, created__lt=cutoff).values_list(
            "pk", flat=True
        )
    )
    for reply_id in abandoned:
        reply_fail(
            reply_id=reply_id,
            code="worker_lost",
            error="The worker stopped while writing this reply. Use Regenerate to try again.",
        )
    return len(abandoned)


# --- Generation (worker side) --------------------------------------------------


class _CancelWatch:
    """Polls the reply's status between decode steps, at most every `interval_s`."""

    def __init__(self, reply_id: int, interval_s: float = 0.25) -> None:
        self._reply_id = reply_id
        self._interval_s = interval_s
        self._next = 0.0
        self._cancelled = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now >= self._next:
            self._next = now + self._interval_s
            self._cancelled = not Message.objects.filter(
                pk=self._reply_id, status=Message.Status.STREAMING
            ).exists()
        return self._cancelled


class _Progress:
    """Receives streamed text: publishes deltas and saves the text so far now and then.

    The saved partial text is what a page that reconnects mid-reply shows
    before the next deltas arrive.
    """

    SAVE_INTERVAL_S = 1.0

    def __init__(self, reply_id: int, publish: DeltaCoalescer) -> None:
        self.reply_id = reply_id
        self.publish = publish
        self.first_token_at: float | None = None
        self._parts: list[str] = []
        self._saved_at = time.monotonic()

    def __call__(self, text: str) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.time()
        self._parts.append(text)
        self.publish(text)
        if time.monotonic() - self._saved_at >= self.SAVE_INTERVAL_S:
            self._saved_at = time.monotonic()
            Message.objects.filter(pk=self.reply_id, status=Message.Status.STREAMING).update(
                content="".join(self._parts)
            )


def reply_generate(*, reply_id: int, backend: Backend) -> None:
    """Generate and store one reply. Safe to run twice: only the run that claims it works.

    The claim is a conditional update PENDING -> STREAMING; a second delivery
    of the same job, or a job whose conversation was deleted, finds no row to
    claim and returns quietly.
    """
    claimed = Message.objects.filter(
        pk=reply_id, role=Message.Role.ASSISTANT, status=Message.Status.PENDING
    ).update(status=Message.Status.STREAMING)
    if claimed != 1:
        logger.info("reply %s already claimed, finished or deleted; skipping", reply_id)
        return
    reply = Message.objects.select_related("conversation").get(pk=reply_id)
    conversation_id = reply.conversation_id
    send_event(conversation_id, {"type": "message.started", "message_id": reply_id})

    progress = _Progress(reply_id, DeltaCoalescer(conversation_id, reply_id))
    request = GenerationRequest(
        turns=selectors.reply_turns(reply=reply),
        params=GenerationParams.from_dict(reply.params),
        time_limit_s=settings.GENERATION_TIME_LIMIT_S,
        should_stop=_CancelWatch(reply_id),
        # For the batching engine: a per-user cap on running replies, KV cache
        # reuse across the conversation's turns, and the queue position.
        owner=f"user:{reply.conversation.owner_id}",
        cache_key=f"conversation:{conversation_id}",
        on_queued=lambda position: send_event(
            conversation_id, {"type": "message.queued", "message_id": reply_id, "position": position}
        ),
    )
    try:
        completion = backend.generate(request, on_text=progress)
    except GenerationError as exc:
        reply_fail(reply_id=reply_id, code=exc.code, error=str(exc))
        return
    except Exception:
        logger.exception("generation failed for reply %s", reply_id)
        reply_fail(
            reply_id=reply_id, code="internal", error="The worker hit an internal error while generating."
        )
        raise
    progress.publish.flush()
    _reply_finish(reply, completion, progress.first_token_at)


FINISHED_EVENTS = {
    Message.Status.DONE: "message.done",
    Message.Status.FAILED: "message.failed",
    Message.Status.CANCELLED: "message.cancelled",
}


def _reply_finish(reply: Message, completion: Completion, first_token_at: float | None) -> None:
    now = timezone.now()
    fields = {
        "content": completion.text,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "finish_reason": completion.finish_reason,
        "finished_at": now,
        "first_token_at": datetime.fromtimestamp(first_token_at, tz=UTC) if first_token_at else None,
    }
    if completion.finish_reason == "timeout":
        limit = settings.GENERATION_TIME_LIMIT_S
        outcome = {
            "status": Message.Status.FAILED,
            "error_code": "timeout",
            "error": f"Generation stopped at the {limit:g} s time limit.",
        }
    else:
        outcome = {"status": Message.Status.DONE}
    with transaction.atomic():
        finished = Message.objects.filter(pk=reply.pk, status=Message.Status.STREAMING)
        # Not streaming any more: cancelled meanwhile, so keep the partial text
        # and the status; or deleted with its conversation, so drop it.
        if not finished.update(**fields, **outcome) and not Message.objects.filter(pk=reply.pk).update(
            **fields
        ):
            logger.info("reply %s was deleted while generating; dropping it", reply.pk)
            return
        reply.refresh_from_db()
        Conversation.objects.filter(pk=reply.conversation_id).update(updated=now)
        send_event(reply.conversation_id, reply_event(reply))


def reply_event(reply: Message) -> dict[str, Any]:
    """The event that announces a finished reply, built from its stored row."""
    payload = selectors.message_payload(reply)
    return {
        "type": FINISHED_EVENTS[Message.Status(reply.status)],
        "message_id": reply.pk,
        **{field: payload[field] for field in ("content", "finish_reason", "usage", "code", "error")},
    }


# --- API keys ------------------------------------------------------------------

API_KEY_PREFIX = "sanjai-"
LAST_USED_RESOLUTION = timedelta(minutes=1)


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_create(*, user: User, name: str) -> tuple[ApiKey, str]:
    """Create a key; the returned secret is shown once and never stored."""
    prefix = secrets.token_hex(4)
    key = f"{API_KEY_PREFIX}{prefix}-{secrets.token_urlsafe(32)}"
    api_key = ApiKey.objects.create(
        user=user, name=name.strip() or "API key", prefix=prefix, hashed_secret=_hash_key(key)
    )
    return api_key, key


def api_key_revoke(*, user: User, key_id: int) -> None:
    """Revoke one of the user's keys; DoesNotExist for anyone else's."""
    api_key = ApiKey.objects.get(pk=key_id, user=user)
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])


def api_key_authenticate(*, key: str) -> User | None:
    """The active user a presented key belongs to, or None."""
    if not key.startswith(API_KEY_PREFIX):
        return None
    prefix = key[len(API_KEY_PREFIX) :].split("-", 1)[0]
    api_key = ApiKey.objects.select_related("user").filter(prefix=prefix, revoked_at__isnull=True).first()
    if api_key is None or not hmac.compare_digest(api_key.hashed_secret, _hash_key(key)):
        return None
    if not api_key.user.is_active:
        return None
    now = timezone.now()
    if api_key.last_used is None or now - api_key.last_used > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used=now)  # not on every request
    return api_key.user


# --- Profiles --------------------------------------------------------------------


def profile_update(*, user: User, display_name: str, default_system_prompt: str) -> Profile:
    """Save the user's profile; the system prompt applies to conversations created later."""
    profile = profile_get_or_create(user=user)
    profile.display_name = display_name.strip()
    profile.default_system_prompt = default_system_prompt.strip()
    profile.save(update_fields=["display_name", "default_system_prompt"])
    return profile


def default_params() -> GenerationParams:
    """Generation defaults; settings may change max_new_tokens."""
    return GenerationParams(max_new_tokens=settings.GENERATION_DEFAULT_MAX_NEW_TOKENS)


@transaction.atomic
def user_create(*, username: str, password: str) -> User:
    """Sign a person up. The caller validates the password (UserCreationForm does)."""
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username=username, password=password)
    profile_get_or_create(user=user)
    return user


# --- The OpenAI-compatible and REST APIs -----------------------------------------


class TooManyReplies(Exception):
    """The user already has as many replies in the works as the API allows."""


class ConversationBusy(Exception):
    """The conversation is still answering its previous message."""


def _unfinished_since() -> datetime:
    # A reply still unfinished after the longest wait plus the generation limit
    # belongs to a worker that died; it must not hold a slot for ever.
    window = settings.CHAT_REPLY_TIMEOUT_S + settings.GENERATION_TIME_LIMIT_S
    return timezone.now() - timedelta(seconds=window)


def reply_limit_check(*, user: User) -> None:
    """Raise TooManyReplies when the user has API_MAX_CONCURRENT_REPLIES replies running.

    Call inside a transaction: the profile row lock makes two requests of one
    user take turns on PostgreSQL (SQLite's IMMEDIATE transactions already do).
    """
    limit = settings.API_MAX_CONCURRENT_REPLIES
    if not limit:
        return
    profile_get_or_create(user=user)
    Profile.objects.select_for_update().filter(user=user).first()
    running = selectors.reply_unfinished_count(user=user, since=_unfinished_since())
    if running >= limit:
        raise TooManyReplies(
            f"You have {running} replies being generated; at most {limit} may run at once. "
            "Wait for one to finish, or cancel one."
        )


@transaction.atomic
def message_submit(
    *, user: User, conversation_id: int, content: str, params: GenerationParams
) -> PostedMessage:
    """The REST API's post: a message to one of the user's conversations, within the limits.

    Raises Conversation.DoesNotExist for others' ids, ConversationBusy while
    the conversation's previous reply runs, TooManyReplies over the limit.
    """
    conversation = selectors.conversation_get(user=user, conversation_id=conversation_id)
    if selectors.reply_unfinished_count(user=user, since=_unfinished_since(), conversation=conversation):
        raise ConversationBusy("This conversation is still answering: wait for the reply or cancel it.")
    reply_limit_check(user=user)
    return message_post(user=user, content=content, params=params, conversation_id=conversation_id)


@transaction.atomic
def completion_post(
    *, user: User, system_prompt: str, turns: Sequence[Turn], params: GenerationParams
) -> PostedMessage:
    """Store an OpenAI-style request as a new conversation of `user`, with a pending reply.

    `turns` alternate user and assistant and end with the user's question; the
    earlier ones are stored as finished messages. The conversation does not
    become the one `POST /chat` continues. Raises TooManyReplies over the limit.
    """
    if not turns or turns[-1].role != "user" or any(turn.role == "system" for turn in turns):
        raise ValueError("turns must be user and assistant turns ending with a user turn")
    reply_limit_check(user=user)
    conversation = Conversation.objects.create(
        owner=user,
        title=" ".join(turns[0].content.split())[:TITLE_LENGTH],
        system_prompt=system_prompt.strip(),
    )
    *history, question = turns
    for turn in history:
        Message.objects.create(
            conversation=conversation, role=turn.role, content=turn.content, status=Message.Status.DONE
        )
    user_message = Message.objects.create(
        conversation=conversation,
        role=Message.Role.USER,
        content=question.content,
        status=Message.Status.DONE,
    )
    reply = Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        status=Message.Status.PENDING,
        params=params.as_dict(),
    )
    return PostedMessage(user_message=user_message, reply=reply)
