"""Celery tasks. Thin: they take ids and call a service.

This module is imported by the web process to queue jobs, so it must not
import torch; the worker's model comes from inference.worker at run time.
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings


@shared_task(
    name="inference.generate_reply",
    acks_late=True,  # safe: the service claims the reply with a conditional update
    # Enforced inside generation (a stopping criterion) for every pool; these
    # are the backstop where the pool supports them (prefork).
    soft_time_limit=settings.GENERATION_TIME_LIMIT_S + 30,
    time_limit=settings.GENERATION_TIME_LIMIT_S + 60,
)
def generate_reply(message_id: int) -> None:
    from chat.services import reply_generate
    from inference.worker import backend

    reply_generate(reply_id=message_id, backend=backend())
