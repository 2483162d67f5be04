from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sanjai_site.settings")

app = Celery("sanjai")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["inference"])


@signals.worker_init.connect
def _load_model(sender: Any = None, **kwargs: Any) -> None:
    # Imported here so that the web process, which also loads this app to
    # queue jobs, never pulls in the model stack.
    from datetime import timedelta

    from django.conf import settings

    from chat.events import publish_from_own_loop
    from chat.services import reply_fail_abandoned
    from inference.worker import start

    # Job threads have no event loop: publish their streamed text through one kept loop.
    publish_from_own_loop()
    start(hostname=getattr(sender, "hostname", None))
    # A reply some dead worker left half-written would block its conversation.
    reply_fail_abandoned(older_than=timedelta(seconds=settings.GENERATION_TIME_LIMIT_S + 60))


@signals.worker_shutdown.connect
def _unload_model(**kwargs: Any) -> None:
    from inference.worker import stop

    stop()
