"""Celery tasks. Thin: they take ids and call the code whose rows they claim.

The web process imports this module to queue jobs, so it must not import
torch: the worker's loaded model comes from inference.worker at run time.
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from chat.generation import reply_generate


@shared_task(
    name="chat.generate_reply",
    acks_late=True,  # safe: reply_generate claims the reply with a conditional update
    # Enforced inside generation (a stopping criterion) for every pool; these
    # are the backstop where the pool supports them (prefork).
    soft_time_limit=settings.GENERATION_TIME_LIMIT_S + 30,
    time_limit=settings.GENERATION_TIME_LIMIT_S + 60,
)
def generate_reply(message_id: int) -> None:
    from inference import worker

    reply_generate(
        reply_id=message_id,
        backend=worker.backend(),
        worker=worker.worker_id(),
        time_limit_s=settings.GENERATION_TIME_LIMIT_S,
    )
