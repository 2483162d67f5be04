"""The model a Celery worker holds, loaded once when the worker starts.

Generation workers load the model as they start (the app's `worker_init`
hook), before they take any job, and announce themselves with a heartbeat so
the web can tell when none is up.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

from django.conf import settings

from inference.presence import Heartbeat, WorkerInfo
from inference.types import Backend, Completion, GenerationRequest

logger = logging.getLogger(__name__)

_backend: Backend | None = None
_heartbeat: Heartbeat | None = None


def backend() -> Backend:
    """The worker's loaded backend; loads it on first use outside a worker (shell, tests)."""
    global _backend
    if _backend is None:
        _backend = load_backend()
    return _backend


def load_backend() -> Backend:
    from inference.backend import TransformersBackend
    from inference.engine import EngineUnsupported, engine_from_settings
    from inference.loading import load_model

    if settings.ENGINE_THREADS:
        import torch

        torch.set_num_threads(settings.ENGINE_THREADS)
    loaded = load_model(
        settings.MODEL_PATH,
        device=settings.DEVICE,
        cache_dir=settings.MODEL_CACHE_DIR,
        context_tokens=settings.MODEL_CONTEXT_TOKENS,
    )
    if settings.ENGINE_ENABLED:
        try:
            return engine_from_settings(loaded, settings)
        except EngineUnsupported as exc:
            logger.warning("%s; generating one reply at a time instead", exc)
    return _OneAtATime(TransformersBackend(loaded))


class _OneAtATime:
    """The worker runs several job threads; model.generate() serves them in turn."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self.model_name = backend.model_name
        self.loaded = getattr(backend, "loaded", None)

    def generate(
        self, request: GenerationRequest, on_text: Callable[[str], None] | None = None
    ) -> Completion:
        with self._lock:
            return self._backend.generate(request, on_text)


def start(*, hostname: str | None) -> None:
    """Load the model and announce the worker; called once as the worker starts."""
    global _backend, _heartbeat
    _backend = load_backend()
    name = hostname or socket.gethostname()
    loaded = getattr(_backend, "loaded", None)
    info = WorkerInfo(
        name=name,
        model=_backend.model_name,
        device=str(getattr(loaded, "device", "unknown")),
        since=time.time(),
    )
    _heartbeat = Heartbeat(settings.REDIS_URL, info, ttl_s=settings.WORKER_HEARTBEAT_TTL_S)
    _heartbeat.start()
    logger.info("worker %s ready with %s", name, _backend.model_name)


def stop() -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
