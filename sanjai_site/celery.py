"""The Celery app, and the wiring that turns a Celery worker into a generation worker.

The web process loads this app too, to queue jobs: everything that imports
the model stack is imported inside the worker's hooks.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sanjai_site.settings")

logger = logging.getLogger(__name__)

app = Celery("sanjai")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["chat"])


@signals.worker_init.connect
def _load_model(sender: Any = None, **kwargs: Any) -> None:
    from django.conf import settings

    from chat.events import publish_from_own_loop
    from chat.services.sweeper import sweep
    from inference import worker
    from inference.engine import EngineConfig

    # Job threads have no event loop: publish their streamed text through one kept loop.
    publish_from_own_loop()
    engine = EngineConfig(
        max_batch=settings.ENGINE_MAX_BATCH,
        max_per_owner=settings.ENGINE_MAX_PER_OWNER,
        prefix_cache_mb=settings.ENGINE_PREFIX_CACHE_MB,
        weights=settings.ENGINE_WEIGHTS,
        threads=settings.ENGINE_THREADS,
        prefill_threads=settings.ENGINE_PREFILL_THREADS,
    )
    config = worker.WorkerConfig(
        model_path=settings.MODEL_PATH,
        device=settings.DEVICE,
        cache_dir=settings.MODEL_CACHE_DIR,
        context_tokens=settings.MODEL_CONTEXT_TOKENS,
        engine=engine if settings.ENGINE_ENABLED else None,
    )
    try:
        worker.start(
            config,
            hostname=getattr(sender, "hostname", None),
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


@signals.worker_shutdown.connect
def _unload_model(**kwargs: Any) -> None:
    from inference import worker

    worker.stop()
