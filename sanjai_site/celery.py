"""The Celery app, and the wiring that turns a Celery worker into a generation worker.

The web process loads this app too, to queue jobs: everything that imports
the model stack is imported inside the worker's hooks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sanjai_site.settings")

logger = logging.getLogger(__name__)

app = Celery("sanjai")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["chat"])


_own_queue: str | None = None


@signals.worker_ready.connect
def _take_own_jobs(sender: Any = None, **kwargs: Any) -> None:
    """Consume the worker's own queue too (sender: its Celery consumer)."""
    if _own_queue and sender is not None:
        sender.add_task_queue(_own_queue)


@signals.worker_init.connect
def _load_model(sender: Any = None, **kwargs: Any) -> None:
    from django.conf import settings

    if settings.DOCUMENTS_WORKER or settings.TOOLS_WORKER:
        return  # it reads uploaded documents or calls MCP tools (its own queue) and loads no model

    from chat.events import publish_from_own_loop
    from chat.lifecycle.sweep import sweep
    from inference import worker
    from inference.registry import LocalModel, RemoteModel, own_queue

    # Job threads have no event loop: publish their streamed text through one kept loop.
    publish_from_own_loop()
    model = settings.MODEL_REGISTRY.get(settings.WORKER_MODEL or settings.MODEL_REGISTRY.default)
    if isinstance(model, RemoteModel):
        _start_remote(model, getattr(sender, "hostname", None))
        return
    assert isinstance(model, LocalModel)
    engine = replace(
        settings.ENGINE,
        max_batch=model.max_batch or settings.ENGINE.max_batch,
        weights=model.weights or settings.ENGINE.weights,
    )
    config = worker.WorkerConfig(
        name=model.name,
        model_path=model.path,
        device=model.device,
        cache_dir=settings.MODEL_CACHE_DIR,
        context_tokens=model.context_tokens,
        engine=engine if model.engine and settings.ENGINE_ENABLED else None,
    )
    global _own_queue
    hostname = getattr(sender, "hostname", None)
    # Its own queue beside the model's: a conversation's next turn comes here
    # while this worker holds its prefix cache (chat.lifecycle.dispatch.reply_enqueue).
    _own_queue = own_queue(model.name, hostname) if hostname else None
    try:
        worker.start(
            config,
            queue=_own_queue or "",
            hostname=hostname,
            redis_url=settings.REDIS_URL,
            heartbeat_ttl_s=settings.WORKER_HEARTBEAT_TTL_S,
            metrics_interval_s=settings.WORKER_METRICS_INTERVAL_S,
        )
    except BaseException:
        # Celery only logs what a worker_init receiver raises and would go on
        # taking jobs it cannot run (its heartbeat saying "loading" for ever).
        logger.critical("the model could not be loaded; this worker exits", exc_info=True)
        worker.stop()
        os._exit(1)
    # Replies a dead worker left behind would block their conversations. The
    # periodic sweeper runs in the web process (sanjai_site/asgi.py): one per
    # site is enough, and a worker that is paused or stuck while it holds an
    # SQLite lock would stall everyone else's writes.
    sweep()


def _start_remote(model: Any, hostname: str | None) -> None:
    """A worker for a remote model streams its replies from the upstream; it loads nothing."""
    from django.conf import settings

    from inference import worker
    from inference.remote import RemoteConfig

    config = RemoteConfig(
        name=model.name,
        base_url=model.base_url,
        upstream_model=model.upstream_model,
        api_key_env=model.api_key_env,
        send_repetition_penalty=model.repetition_penalty,
        connect_timeout_s=settings.REMOTE_CONNECT_TIMEOUT_S,
        read_timeout_s=settings.REMOTE_READ_TIMEOUT_S,
        retries=settings.REMOTE_RETRIES,
        max_concurrent=settings.REMOTE_MAX_CONCURRENT,
    )
    try:
        worker.start_remote(
            config,
            hostname=hostname,
            redis_url=settings.REDIS_URL,
            heartbeat_ttl_s=settings.WORKER_HEARTBEAT_TTL_S,
        )
    except RuntimeError as exc:
        logger.critical("%s; this worker exits", exc)
        worker.stop()
        os._exit(1)


@signals.worker_shutdown.connect
def _unload_model(**kwargs: Any) -> None:
    from inference import worker

    worker.stop()
