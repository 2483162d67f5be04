"""The model a generation worker holds, loaded once when the worker starts.

The worker's wiring (`sanjai_site/celery.py`) reads the settings and passes
them in as a `WorkerConfig`: nothing here reads Django settings. Once the
model is loaded the worker announces itself with a heartbeat, so the web can
tell when none is up and the sweeper can tell whose replies lost their worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference import metrics
from inference.presence import Heartbeat, WorkerInfo
from inference.types import Backend, Completion, GenerationRequest

if TYPE_CHECKING:  # these import torch (or the openai client): the web process must not
    from inference.engine.config import EngineConfig
    from inference.loading import Progress
    from inference.remote import RemoteBackend, RemoteConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    name: str  # the model's name in the registry: what the worker announces and replies record
    model_path: str  # a model folder or a .gguf file; empty: the packaged default
    device: str  # auto | cuda | mps | cpu
    cache_dir: Path
    context_tokens: int = 0  # 0: the model's own context window
    engine: EngineConfig | None = None  # None: one reply at a time with model.generate()


_backend: Backend | None = None
_heartbeat: Heartbeat | None = None
_publisher: metrics.Publisher | None = None
_worker_id = ""


def backend() -> Backend:
    """The backend this worker loaded in `start()`."""
    if _backend is None:
        raise RuntimeError("no model loaded: inference.worker.start() runs when a worker starts")
    return _backend


def worker_id() -> str:
    """This worker process's identity, as its heartbeat announces it ("" before `start()`)."""
    return _worker_id


def _quiet(stage: str, percent: int) -> None:
    pass


def load_backend(config: WorkerConfig, on_progress: Progress = _quiet) -> Backend:
    """The worker's model and its engine, loaded on a thread that ends once they
    are built, so the engine thread's OpenMP team is the process's only one
    (see inference.engine.threads.on_a_thread_of_its_own)."""
    from inference.engine.threads import on_a_thread_of_its_own

    return on_a_thread_of_its_own(lambda: _load_backend(config, on_progress))


def _load_backend(config: WorkerConfig, on_progress: Progress) -> Backend:
    import torch

    from inference.backend import TransformersBackend
    from inference.engine.core import Engine, EngineUnsupported
    from inference.loading import load_model, load_options

    if config.engine is not None and config.engine.threads:
        torch.set_num_threads(config.engine.threads)
    # The engine's weights, loaded as it keeps them: no fp32 originals beside fp16 ones.
    half_weights, dtype = load_options(config.engine.weights if config.engine is not None else "fp32")
    loaded = load_model(
        config.model_path,
        device=config.device,
        cache_dir=config.cache_dir,
        context_tokens=config.context_tokens,
        on_progress=on_progress,
        half_weights=half_weights,
        dtype=dtype,
    )
    loaded = replace(loaded, name=config.name)
    if config.engine is not None:
        on_progress("starting the engine", 90)
        try:
            return Engine(loaded, config.engine)
        except EngineUnsupported as exc:
            logger.warning("%s; generating one reply at a time instead", exc)
    return metrics.InstrumentedBackend(_OneAtATime(TransformersBackend(loaded)))


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


def start(
    config: WorkerConfig,
    *,
    hostname: str | None,
    redis_url: str,
    heartbeat_ttl_s: int,
    metrics_interval_s: float = 5.0,
    queue: str = "",
) -> None:
    """Announce the worker, load the model with its progress visible, then take jobs.

    `queue`: the worker's own queue, announced so that a conversation's next
    turn can be sent to the worker that holds its prefix cache.

    The heartbeat says "loading" (with a stage and a percentage) from the
    start, so the web can tell people the model is on its way rather than
    that no worker runs; it says "ready" once the model is loaded.
    """
    global _backend, _heartbeat, _publisher, _worker_id
    name = hostname or socket.gethostname()
    # Unique per process start: a worker restarted under the same name must
    # not vouch for replies its previous run left half-written.
    _worker_id = f"{name}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
    model = config.name
    info = WorkerInfo(
        id=_worker_id,
        name=name,
        model=model,
        device=config.device,
        since=time.time(),
        state="loading",
        progress=0,
        queue=queue,
        capacity=config.engine.max_batch if config.engine is not None else 1,
        pid=os.getpid(),
    )
    _heartbeat = Heartbeat(redis_url, info, ttl_s=heartbeat_ttl_s)
    _heartbeat.start()
    logger.info("worker %s starting: loading %s", _worker_id, model)

    def progress(stage: str, percent: int) -> None:
        logger.info("loading %s: %s (%d%%)", model, stage, percent)
        if _heartbeat is not None:
            _heartbeat.update(stage=stage, progress=percent)

    _backend = load_backend(config, progress)
    loaded = getattr(_backend, "loaded", None)
    _heartbeat.update(
        state="ready",
        progress=100,
        stage="",
        device=str(getattr(loaded, "device", "")),
    )
    _publisher = metrics.start_publisher(redis_url, _worker_id, _backend.model_name, metrics_interval_s)
    logger.info("worker %s ready with %s", _worker_id, _backend.model_name)


class _RemoteRuntime:
    """A remote model's replies: coroutines on one event loop in a thread of its own."""

    def __init__(self, backend: RemoteBackend) -> None:
        self.backend = backend
        self.loop = asyncio.new_event_loop()
        self.slots = asyncio.Semaphore(backend.config.max_concurrent)
        self.thread = threading.Thread(target=self.loop.run_forever, name="sanjai-remote", daemon=True)
        self.thread.start()

    def run(self, reply: Coroutine[Any, Any, None]) -> None:
        async def in_turn() -> None:
            async with self.slots:
                await reply

        asyncio.run_coroutine_threadsafe(in_turn(), self.loop)

    def stop(self) -> None:
        async def close() -> None:
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()  # replies in flight: the sweeper fails them once this heartbeat is gone
            await self.backend.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


_remote: _RemoteRuntime | None = None


def start_remote(config: RemoteConfig, *, hostname: str | None, redis_url: str, heartbeat_ttl_s: int) -> None:
    """Announce a worker for a remote model; its replies stream on an event loop.

    Raises RuntimeError when the key's environment variable is declared but unset.
    """
    global _heartbeat, _remote, _worker_id
    from inference.remote import RemoteBackend

    api_key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
    if config.api_key_env and not api_key:
        variable = config.api_key_env
        raise RuntimeError(f"the model {config.name} needs its key in ${variable}, which is not set")
    name = hostname or socket.gethostname()
    _worker_id = f"{name}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
    _remote = _RemoteRuntime(RemoteBackend(config, api_key=api_key or None))
    info = WorkerInfo(
        id=_worker_id,
        name=name,
        model=config.name,
        device=f"remote: {config.base_url}",
        since=time.time(),
        pid=os.getpid(),
    )
    _heartbeat = Heartbeat(redis_url, info, ttl_s=heartbeat_ttl_s)
    _heartbeat.start()
    logger.info("worker %s ready for %s at %s", _worker_id, config.name, config.base_url)


def remote() -> _RemoteRuntime | None:
    """The remote model this worker streams from, if it serves one."""
    return _remote


def stop() -> None:
    global _remote
    if _remote is not None:
        _remote.stop()
        _remote = None
    if _publisher is not None:
        _publisher.stop()
    if _heartbeat is not None:
        _heartbeat.stop()
