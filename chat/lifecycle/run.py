"""Run: a worker claims a pending reply, generates it and saves it.

Safe to run twice: only the run that claims the reply works. The claim
(chat.lifecycle.status.reply_claim) is a conditional update PENDING ->
STREAMING that records this worker's id, so the sweeper can tell whether a
streaming reply still has a live worker.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from asgiref.sync import sync_to_async
from django.db import DatabaseError, connection

from chat import selectors
from chat.documents.retrieval import Citation, passages_for, question_with_passages
from chat.events import DeltaCoalescer, send_event
from chat.lifecycle.status import reply_claim, reply_fail
from chat.lifecycle.tools import reply_pass_end
from chat.models import Message
from chat.tools import services as tool_services
from inference.params import GenerationParams
from inference.prompt import fits as prompt_fits
from inference.types import Backend, GenerationError, GenerationRequest, Turn

if TYPE_CHECKING:  # it imports the openai client: the web process need not
    from inference.remote import RemoteBackend

logger = logging.getLogger(__name__)


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
            try:
                self._cancelled = not Message.objects.filter(
                    pk=self._reply_id, status=Message.Status.STREAMING
                ).exists()
            except DatabaseError:
                # The database restarted or is away for a moment: keep generating, and
                # drop the dead connection so the next check (and the final write) opens
                # a new one instead of failing on it until the overrun rule ends the reply.
                logger.warning("reply %s: the database is unreachable for its cancel check", self._reply_id)
                connection.close_if_unusable_or_obsolete()
        return self._cancelled


class _Progress:
    """Receives streamed text: publishes deltas and saves the text so far now and then.

    The saved partial text is what a page that reconnects mid-reply shows
    before the next deltas arrive, and what a reply keeps if its worker dies.
    Backends store their final text stripped, so whitespace is passed on only
    once text follows it: the deltas then always add up to the stored text.
    """

    SAVE_INTERVAL_S = 1.0

    def __init__(self, reply_id: int, publish: DeltaCoalescer) -> None:
        self.reply_id = reply_id
        self.publish = publish
        self.first_token_at: float | None = None
        self._parts: list[str] = []
        self._blank = ""  # whitespace not passed on yet
        self._saved_at = time.monotonic()

    def __call__(self, text: str) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.time()
        text = self._blank + text
        kept = text.rstrip()
        self._blank = text[len(kept) :]
        if not self._parts:
            kept = kept.lstrip()
        if not kept:
            return
        self._parts.append(kept)
        self.publish(kept)
        if time.monotonic() - self._saved_at >= self.SAVE_INTERVAL_S:
            self._saved_at = time.monotonic()
            Message.objects.filter(pk=self.reply_id, status=Message.Status.STREAMING).update(
                content="".join(self._parts)
            )


def reply_prompt(
    reply: Message, backend: object = None, offered: tool_services.Offered | None = None
) -> list[Turn]:
    """The turns a reply is generated from: its branch, with its question given the
    passages of the conversation's documents that fit the model's context, which
    are stored as its citations. A remote model's context is its server's to judge.
    With `offered` tools, they are described, and the passes of calls it made so far
    follow with their results (chat.tools.services.prompt_turns)."""
    turns = selectors.reply_turns(reply=reply)
    if turns and turns[-1].role == "user":
        turns = _with_passages(reply, turns, backend)
    if offered is not None:
        turns = tool_services.prompt_turns(reply=reply, turns=turns, offered=offered)
    return turns


def _with_passages(reply: Message, turns: list[Turn], backend: object) -> list[Turn]:
    question = turns[-1].content
    loaded = getattr(backend, "loaded", None)  # a local model's tokenizer and context

    def fits(given: list[Citation]) -> bool:
        if loaded is None:
            return True
        asked = Turn("user", question_with_passages(question, given))
        return prompt_fits(
            loaded.tokenizer,
            [*turns[:-1], asked],
            context_tokens=loaded.context_tokens,
            max_new_tokens=GenerationParams.from_dict(reply.params).max_new_tokens,
        )

    citations = passages_for(conversation=reply.conversation, question=question, fits=fits)
    if citations:
        reply.citations = [citation.as_dict() for citation in citations]
        Message.objects.filter(pk=reply.pk).update(citations=reply.citations)
        turns[-1] = Turn("user", question_with_passages(turns[-1].content, citations))
    return turns


def reply_generate(
    *, reply_id: int, backend: Backend, worker: str, time_limit_s: float | None = None
) -> None:
    """Generate and store one reply, as `worker` (its heartbeat id).

    A second delivery of the same job, or a job whose reply was cancelled,
    failed or deleted meanwhile, finds no row to claim and returns quietly.
    """
    if not reply_claim(reply_id=reply_id, worker=worker, model=backend.model_name):
        return
    try:
        _generate(reply_id, backend, time_limit_s)
    except GenerationError as exc:
        reply_fail(reply_id=reply_id, code=exc.code, error=str(exc))
    except Exception:
        # Whatever broke (the backend, the database, the broker), the reply
        # must not stay streaming behind a live worker's heartbeat. A connection
        # a database restart cut would fail this too: a new one is opened.
        logger.exception("generation failed for reply %s", reply_id)
        connection.close_if_unusable_or_obsolete()
        reply_fail(
            reply_id=reply_id, code="internal", error="The worker hit an internal error while generating."
        )
        raise


async def reply_generate_remote(
    *, reply_id: int, backend: RemoteBackend, worker: str, time_limit_s: float | None = None
) -> None:
    """`reply_generate` for a remote model, as a coroutine on the remote worker's loop.

    It holds no thread while it waits for the upstream; its database writes
    and events go through sync_to_async, one at a time.
    """
    claimed = await sync_to_async(reply_claim)(reply_id=reply_id, worker=worker, model=backend.model_name)
    if not claimed:
        return
    try:
        reply = await Message.objects.select_related("conversation").aget(pk=reply_id)
        await sync_to_async(send_event)(
            reply.conversation_id, {"type": "message.started", "message_id": reply_id}
        )
        progress = _Progress(reply_id, DeltaCoalescer(reply.conversation_id, reply_id))
        offered = await sync_to_async(_offered)(reply)
        request = GenerationRequest(
            turns=await sync_to_async(reply_prompt)(reply, backend, offered),
            params=await sync_to_async(_params)(reply),
            time_limit_s=time_limit_s,
        )
        completion = await backend.generate(
            request, on_text=sync_to_async(progress), should_stop=sync_to_async(_CancelWatch(reply_id))
        )
        await sync_to_async(progress.publish.flush)()
        await sync_to_async(reply_pass_end)(
            reply=reply,
            completion=completion,
            first_token_at=progress.first_token_at,
            time_limit_s=time_limit_s,
            offered=await sync_to_async(_callable)(reply, offered),
        )
    except GenerationError as exc:
        await sync_to_async(reply_fail)(reply_id=reply_id, code=exc.code, error=str(exc))
    except Exception:
        logger.exception("generation failed for reply %s", reply_id)
        await sync_to_async(reply_fail)(
            reply_id=reply_id, code="internal", error="The worker hit an internal error while generating."
        )


def _generate(reply_id: int, backend: Backend, time_limit_s: float | None) -> None:
    reply = Message.objects.select_related("conversation").get(pk=reply_id)
    conversation_id = reply.conversation_id
    send_event(conversation_id, {"type": "message.started", "message_id": reply_id})

    progress = _Progress(reply_id, DeltaCoalescer(conversation_id, reply_id))
    offered = _offered(reply)
    request = GenerationRequest(
        turns=reply_prompt(reply, backend, offered),
        params=_params(reply),
        time_limit_s=time_limit_s,
        should_stop=_CancelWatch(reply_id),
        # For the batching engine: a per-user cap on running replies, fair
        # shares of prefill, and the queue position.
        owner=f"user:{reply.conversation.owner_id}",
        on_queued=lambda position: send_event(
            conversation_id, {"type": "message.queued", "message_id": reply_id, "position": position}
        ),
    )
    completion = backend.generate(request, on_text=progress)
    progress.publish.flush()
    reply_pass_end(
        reply=reply,
        completion=completion,
        first_token_at=progress.first_token_at,
        time_limit_s=time_limit_s,
        offered=_callable(reply, offered),
    )


def _offered(reply: Message) -> tool_services.Offered:
    return tool_services.tools_offered(conversation=reply.conversation)


def _callable(reply: Message, offered: tool_services.Offered) -> tool_services.Offered:
    """The tools this pass's calls are run for: none once a limit is past, so the reply
    ends with this pass (its prompt told it why)."""
    if offered.tools and not tool_services.tools_allowed(reply=reply):
        return tool_services.Offered({})
    return offered


def _params(reply: Message) -> GenerationParams:
    """The reply's parameters; a grammar that forces a call binds its first pass only
    (a pass after tool results answers in words, as OpenAI's tool_choice does per request)."""
    params = GenerationParams.from_dict(reply.params)
    if params.response_grammar is not None and reply.tool_steps.exists():
        params = replace(params, response_grammar=None)
    return params
