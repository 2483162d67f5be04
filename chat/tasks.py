"""Celery tasks. Thin: they take ids and call the code whose rows they claim.

The web process imports this module to queue jobs, so it must not import
torch: the worker's loaded model comes from inference.worker at run time.
"""

from __future__ import annotations

import os
import socket

from celery import shared_task
from django.conf import settings

from chat.lifecycle.dispatch import GENERATE_TASK, release_waiting
from chat.lifecycle.run import reply_generate, reply_generate_remote
from chat.lifecycle.tools import TOOL_TASK, step_done
from chat.models import McpServer
from chat.services.documents import INGEST_TASK, document_ingest
from chat.tools.services import tools_refresh


@shared_task(
    name=GENERATE_TASK,
    acks_late=True,  # safe: reply_generate claims the reply with a conditional update
    # The threads pool these workers run cannot enforce Celery's time limits:
    # the limit is a stopping criterion inside generation, and the sweeper
    # fails a reply that outlives it (chat/lifecycle/sweep.py).
)
def generate_reply(message_id: int) -> None:
    from inference import worker

    remote = worker.remote()
    if remote is not None:
        # Handed to the worker's event loop, and acknowledged: the reply is the
        # worker's once claimed, and the sweeper ends it if the worker dies.
        remote.run(
            reply_generate_remote(
                reply_id=message_id,
                backend=remote.backend,
                worker=worker.worker_id(),
                time_limit_s=settings.GENERATION_TIME_LIMIT_S,
            )
        )
        return
    reply_generate(
        reply_id=message_id,
        backend=worker.backend(),
        worker=worker.worker_id(),
        time_limit_s=settings.GENERATION_TIME_LIMIT_S,
    )


@shared_task(name="inference.generate_reply", acks_late=True)
def generate_reply_queued_before_the_upgrade(message_id: int) -> None:
    """The task's name before it moved to chat/: jobs already queued under it still run."""
    generate_reply(message_id)


@shared_task(
    name=INGEST_TASK,
    acks_late=True,  # safe: document_ingest claims the document with a conditional update
)
def ingest_document(document_id: int) -> None:
    """Read an uploaded document into chunks, on the "documents" queue's worker."""
    document_ingest(document_id=document_id, worker=f"documents@{socket.gethostname()}:{os.getpid()}")
    # Read or failed: the replies that waited for it go on (with it, or without it).
    release_waiting(document_id=document_id)


@shared_task(
    name=TOOL_TASK,
    acks_late=True,  # safe: step_run claims the step with a conditional update
    # Bounded inside: the MCP client's deadline (MCP_TOOL_TIMEOUT_S) covers the whole call.
)
def run_tool_step(step_id: int) -> None:
    """Call one MCP tool for a reply, on the "tools" queue's worker, then move the reply on."""
    step_done(step_id=step_id, worker=f"tools@{socket.gethostname()}:{os.getpid()}")


@shared_task(name="chat.refresh_mcp_tools")
def refresh_mcp_tools(server_id: int) -> None:
    """List a server's tools again (tools/list) on the "tools" queue's worker."""
    server = McpServer.objects.filter(pk=server_id, enabled=True).first()
    if server is not None:
        tools_refresh(server=server)
