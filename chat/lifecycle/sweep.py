"""Ends replies nobody is working on any more, within stated bounds.

A fault can leave a reply pending or streaming with nobody working on it; a
conversation with such a reply refuses new messages. The sweeper owns those
states. It runs every REPLY_SWEEP_INTERVAL_S (I) in the web process, and once
as each worker starts. Several sweepers (several web processes) are harmless:
each ending is a conditional update, and a job published twice is claimed once.

- Pending, its job never published (the web process died between commit and
  publish): `queued_at` still unset after REPLY_ENQUEUE_GRACE_S (G). Queued
  again, or failed if no worker or broker can take it, within G + I.
- Pending, published but never started (a job lost with a broker's data, or
  no worker came back): `queued_at` older than REPLY_QUEUE_LIMIT_S (Q).
  Failed (`queue_timeout`) within Q + I.
- Streaming, its worker died: the worker id the claim recorded on the row has
  no live heartbeat. Failed (`worker_lost`), with the text so far kept,
  within WORKER_HEARTBEAT_TTL_S (T) + I of the worker's death.
- Streaming for longer than a reply may run (GENERATION_TIME_LIMIT_S plus a
  minute), whatever its worker's heartbeat says: failed (`timeout`). This
  bounds a worker that is alive but stuck.

Sending to a conversation whose reply lost its worker ends that reply at once
(`chat.lifecycle.submit.reply_submit`), without waiting for the next sweep. A missing heartbeat is
only evidence of a death while Redis is reachable and has been up for at
least T: a restarted Redis is empty until every worker's next beat (T / 3).

Documents still processing after DOCUMENT_INGEST_STALE_S are queued again
once, then failed (chat.services.documents.sweep_stale_documents).

Replies waiting on tools (TOOL_WAIT, chat/lifecycle/tools.py) end as follows:

- A step waiting for an approval nobody gives: refused ("nobody approved it")
  MCP_APPROVAL_TIMEOUT_S (A) after it was asked, within A + I; the reply then
  continues with that refusal in its prompt.
- A step queued or running whose tools worker died (or none runs): ended with
  an error MCP_TOOL_TIMEOUT_S (M) + TOOL_STEP_MARGIN (60 s) after it was queued
  or started, within M + 60 s + I; the reply continues with that error.
  A live worker ends its own call within M (plus a few seconds to stop a stdio
  server): the client's one deadline covers connect, handshake and call.
- A waiting reply whose steps have all ended but which was never queued again
  (its process died in between): queued within I.
- The continued pass is then a pending reply like any other (the rules above).
  A reply makes at most MCP_MAX_STEPS_PER_REPLY calls in all, so it waits at
  most that many times: its whole tool time is bounded by
  MCP_MAX_STEPS_PER_REPLY x (A + M + 60 s + I), and in practice by
  MCP_TOOL_TIME_PER_REPLY_S of running tools plus the approvals' waits.

Tool lists older than MCP_TOOLS_CACHE_S are listed again on the tools queue.
"""

from __future__ import annotations

import logging
import threading
from contextlib import suppress
from datetime import timedelta

import redis
from celery import current_app
from django.conf import settings
from django.contrib.auth.models import User
from django.db import close_old_connections, connection
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from chat.lifecycle.dispatch import WorkerUnavailable, reply_enqueue
from chat.lifecycle.status import reply_fail
from chat.lifecycle.tools import reply_continue
from chat.models import McpServer, Message, ToolStep
from chat.services.documents import sweep_stale_documents
from chat.tools import services as tool_services
from inference import presence

logger = logging.getLogger(__name__)

WORKER_LOST = "The worker stopped while writing this reply. Use Regenerate to try again."
# A reply may run GENERATION_TIME_LIMIT_S; past it plus this, nobody is writing it any more.
OVERRUN_MARGIN = timedelta(seconds=60)


def fail_lost_replies(*, conversation_id: int | None = None, user: User | None = None) -> int:
    """Fail streaming replies whose worker has no live heartbeat; returns how many.

    With `conversation_id` (and its owner), only that conversation's.
    """
    streaming = Message.objects.filter(status=Message.Status.STREAMING)
    if conversation_id is not None:
        streaming = streaming.filter(conversation_id=conversation_id, conversation__owner=user)
    held = list(streaming.values_list("pk", "worker", "created"))
    if not held:
        return 0
    try:
        if presence.redis_uptime_s(settings.REDIS_URL) < settings.WORKER_HEARTBEAT_TTL_S:
            return 0  # just restarted: live workers have not all beaten again yet
        live = presence.live_worker_ids(settings.REDIS_URL)
    except redis.RedisError as exc:
        logger.info("sweeper: cannot read worker heartbeats (%s); leaving streaming replies alone", exc)
        return 0
    # Claimed before claims recorded their worker: dead once past the longest a reply may run.
    unnamed_cutoff = timezone.now() - timedelta(seconds=settings.GENERATION_TIME_LIMIT_S) - OVERRUN_MARGIN
    failed = 0
    for reply_id, worker, created in held:
        if (worker and worker not in live) or (not worker and created < unnamed_cutoff):
            failed += reply_fail(reply_id=reply_id, code="worker_lost", error=WORKER_LOST, worker=worker)
    return failed


def fail_overrun() -> int:
    """Fail replies streaming for longer than a reply may run, even on a live worker."""
    limit = settings.GENERATION_TIME_LIMIT_S
    cutoff = timezone.now() - timedelta(seconds=limit) - OVERRUN_MARGIN
    failed = 0
    for reply_id, worker in Message.objects.filter(
        status=Message.Status.STREAMING, started_at__lt=cutoff
    ).values_list("pk", "worker"):
        failed += reply_fail(
            reply_id=reply_id,
            code="timeout",
            error=f"The worker did not finish this reply within the {limit:g} s time limit.",
            worker=worker,
        )
    return failed


def requeue_unpublished() -> int:
    """Queue again pending replies whose job never reached the broker; returns how many were tried."""
    cutoff = timezone.now() - timedelta(seconds=settings.REPLY_ENQUEUE_GRACE_S)
    stale = list(
        Message.objects.filter(status=Message.Status.PENDING, queued_at__isnull=True, created__lt=cutoff)
    )
    for reply in stale:
        # A job that was published after all is claimed only once; one that
        # cannot be published is failed by reply_enqueue with the reason.
        with suppress(WorkerUnavailable):
            reply_enqueue(reply=reply)
    return len(stale)


def fail_unstarted() -> int:
    """Fail queued replies no worker started within REPLY_QUEUE_LIMIT_S; returns how many."""
    limit = settings.REPLY_QUEUE_LIMIT_S
    cutoff = timezone.now() - timedelta(seconds=limit)
    stale = Message.objects.filter(status=Message.Status.PENDING, queued_at__lt=cutoff)
    failed = 0
    for reply_id in list(stale.values_list("pk", flat=True)):
        failed += reply_fail(
            reply_id=reply_id,
            code="queue_timeout",
            error=f"No worker started this reply within {limit:g} s. Use Regenerate to try again.",
            only_pending=True,
        )
    return failed


# A tool call's worker ends it within MCP_TOOL_TIMEOUT_S; past it plus this, nobody is running it.
TOOL_STEP_MARGIN = timedelta(seconds=60)


def refuse_unanswered() -> int:
    """Refuse steps nobody approved within MCP_APPROVAL_TIMEOUT_S; returns how many."""
    limit = settings.MCP_APPROVAL_TIMEOUT_S
    cutoff = timezone.now() - timedelta(seconds=limit)
    stale = ToolStep.objects.filter(status=ToolStep.Status.AWAITING_APPROVAL, created__lt=cutoff)
    ended = 0
    for step_id, reply_id in list(stale.values_list("pk", "reply_id")):
        error = f"Nobody approved this call within {limit:g} s; it was not run."
        if tool_services.step_fail(step_id=step_id, error=error, refuse=True):
            ended += 1
            _moved_on(reply_id)
    return ended


def fail_lost_steps() -> int:
    """End steps queued or running past MCP_TOOL_TIMEOUT_S plus a margin; returns how many."""
    cutoff = timezone.now() - timedelta(seconds=settings.MCP_TOOL_TIMEOUT_S) - TOOL_STEP_MARGIN
    queued = Q(status=ToolStep.Status.QUEUED) & (
        Q(decided_at__lt=cutoff) | Q(decided_at__isnull=True, created__lt=cutoff)
    )
    running = Q(status=ToolStep.Status.RUNNING, started_at__lt=cutoff)
    ended = 0
    for step_id, reply_id in list(ToolStep.objects.filter(queued | running).values_list("pk", "reply_id")):
        error = "The tool worker did not run this call in time (it stopped, or none is running)."
        if tool_services.step_fail(step_id=step_id, error=error):
            ended += 1
            _moved_on(reply_id)
    return ended


def continue_tool_waits() -> int:
    """Queue again waiting replies whose steps have all ended; returns how many."""
    waiting = Message.objects.filter(status=Message.Status.TOOL_WAIT).values_list("pk", flat=True)
    return sum(reply_continue(reply_id=reply_id) for reply_id in list(waiting))


def refresh_tool_lists() -> int:
    """Queue a new tools/list for each server whose list is older than MCP_TOOLS_CACHE_S."""
    stale = tool_services.stale_servers()
    for server in stale:
        with suppress(redis.RedisError, OSError, BrokerError):
            # Marked as listed now, so the next sweeps do not queue it again meanwhile.
            McpServer.objects.filter(pk=server.pk).update(tools_listed_at=timezone.now())
            current_app.send_task("chat.refresh_mcp_tools", args=[server.pk], queue=settings.TOOL_QUEUE)
    return len(stale)


def _moved_on(reply_id: int) -> None:
    with suppress(WorkerUnavailable):
        reply_continue(reply_id=reply_id)


RULES = (
    fail_lost_replies,
    fail_overrun,
    requeue_unpublished,
    fail_unstarted,
    sweep_stale_documents,
    refuse_unanswered,
    fail_lost_steps,
    continue_tool_waits,
    refresh_tool_lists,
)


def sweep() -> None:
    """One pass over every rule; errors are logged, never raised (the next pass tries again)."""
    for rule in RULES:
        try:
            if count := rule():
                logger.warning("sweeper: %s handled %d replies", rule.__name__, count)
        except Exception:
            logger.exception("sweeper: %s failed", rule.__name__)


class Sweeper:
    """Runs `sweep` every `interval_s` in a daemon thread of this process."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sanjai-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            close_old_connections()
            sweep()
        connection.close()


_sweeper: Sweeper | None = None
_lock = threading.Lock()


def start_sweeper() -> None:
    """Start this process's sweeper, once; the web process calls it."""
    global _sweeper
    with _lock:
        if _sweeper is None and settings.REPLY_SWEEP_INTERVAL_S > 0:
            _sweeper = Sweeper(settings.REPLY_SWEEP_INTERVAL_S)
            _sweeper.start()
