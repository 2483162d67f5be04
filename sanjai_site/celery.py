"""The Celery app, and the wiring that turns a Celery worker into a generation worker.

The web process loads this app too, to queue jobs: everything that imports
the model stack is imported inside the worker's hooks.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sanjai_site.settings")

app = Celery("sanjai")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["chat"])


@signals.worker_init.connect
def _load_model(sender: Any = None, **kwargs: Any) -> None:
    from django.conf import settings

    from chat.events import publish_from_own_loop
    from chat.services.sweeper import start_sweeper, sweep
    from inference import worker

    # Job threads have no event loop: publish their streamed text through one kept loop.
    publish_from_own_loop()
    config = worker.WorkerConfig(
        model_path=settings.MODEL_PATH,
        device=settings.DEVICE,
        cache_dir=settings.MODEL_CACHE_DIR,
        context_tokens=settings.MODEL_CONTEXT_TOKENS,
        engine_enabled=settings.ENGINE_ENABLED,
        engine_max_batch=settings.ENGINE_MAX_BATCH,
        engine_max_per_owner=settings.ENGINE_MAX_PER_OWNER,
        engine_prefix_cache_mb=settings.ENGINE_PREFIX_CACHE_MB,
        engine_weights=settings.ENGINE_WEIGHTS,
        engine_threads=settings.ENGINE_THREADS,
        engine_prefill_threads=settings.ENGINE_PREFILL_THREADS,
    )
    worker.start(
        config,
        hostname=getattr(sender, "hostname", None),
        redis_url=settings.REDIS_URL,
        heartbeat_ttl_s=settings.WORKER_HEARTBEAT_TTL_S,
    )
    # Replies a dead worker left behind would block their conversations.
    sweep()
    start_sweeper()


@signals.worker_shutdown.connect
def _unload_model(**kwargs: Any) -> None:
    from inference import worker

    worker.stop()
