"""Voice jobs in processes of their own, so that none runs in the web process's interpreter.

PocketSphinx holds the GIL for as long as it decodes: 60 s of noise, a legal
recording, took 32-58 s, and in a thread of the web process that froze every
request, /healthz included (issue 26). So each job (`speech.transcribe`,
`speech.speak_to_file`) runs in one of a few worker processes:

- pebble's ProcessPool, not concurrent.futures': a job past its timeout has
  its worker killed and replaced (concurrent.futures can only stop waiting for
  it, leaving the worker busy), and so does a job whose caller went away (a
  browser that leaves has its view cancelled, which cancels the job).
- started with 'spawn', never 'fork': the web process has threads and an
  event loop, which a forked child would inherit in whatever state they were.
- each worker loads the PocketSphinx decoder once, when it starts.
- at most `workers` jobs run and `backlog` more wait, per web process; one
  more is refused at once (PoolBusy), never queued without end.

Callers await a job (asyncio.wrap_future), so the event loop never blocks on
one. Knows nothing of users or HTTP: per-user limits are the caller's.
"""

from __future__ import annotations

import asyncio
import atexit
import multiprocessing
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

from pebble import ProcessExpired, ProcessPool

from inference import speech

T = TypeVar("T")

# How long close() waits for the workers to exit before it stops waiting.
CLOSE_TIMEOUT_S = 5
SPEAK_GRACE_S = 2


class PoolBusy(Exception):
    """Every worker is busy and the backlog is full: nothing was queued."""


class JobTimedOut(Exception):
    """The job ran past its timeout; its worker was stopped and is being replaced."""


class JobFailed(Exception):
    """The worker process died under the job (out of memory, a crash in the decoder)."""


class SpeechPool:
    def __init__(self, *, workers: int, backlog: int) -> None:
        self.workers = workers
        self.capacity = workers + backlog
        self._pool = self._start()
        # Jobs running or waiting. Completion callbacks run on pebble's threads.
        self._jobs: set[Future[Any]] = set()
        self._lock = threading.Lock()

    def _start(self) -> ProcessPool:
        return ProcessPool(
            max_workers=self.workers,
            initializer=speech.warm_up,
            context=multiprocessing.get_context("spawn"),
        )

    @property
    def jobs(self) -> int:
        """Jobs running or waiting."""
        with self._lock:
            return len(self._jobs)

    @property
    def running(self) -> int:
        """Jobs a worker has started on."""
        with self._lock:
            return sum(job.running() for job in self._jobs)

    async def transcribe(self, wav: bytes, *, max_seconds: float, timeout_s: float) -> str:
        """speech.transcribe in a worker."""
        return await self._run(timeout_s, speech.transcribe, wav, max_seconds=max_seconds)

    async def speak(self, text: str, *, max_chars: int, timeout_s: float) -> bytes:
        """speech.speak_to_file in a worker; the WAV is read here once, its only copy in memory."""
        # A job cancelled mid-way may leave its eSpeak NG writing here for a moment.
        with tempfile.TemporaryDirectory(prefix="sanjai-speak-", ignore_cleanup_errors=True) as folder:
            path = Path(folder) / "speech.wav"
            # The worker stops eSpeak NG at timeout_s itself; the pool's timeout, a little
            # later, is for a worker that does not, and would leave eSpeak NG running.
            await self._run(
                timeout_s + SPEAK_GRACE_S,
                speech.speak_to_file,
                text,
                path,
                max_chars=max_chars,
                timeout_s=timeout_s,
            )
            return await asyncio.to_thread(path.read_bytes)

    async def _run(self, timeout_s: float, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        with self._lock:
            if len(self._jobs) >= self.capacity:
                raise PoolBusy(
                    f"Every voice worker is busy ({self.workers} running, "
                    f"{self.capacity - self.workers} waiting). Try again in a few seconds."
                )
            if not self._pool.active:
                # pebble gives up on a pool whose worker died between jobs (killed
                # for memory, say): start another. Rare, and stopping takes ~0.1 s.
                self._pool.stop()
                self._pool.join()
                self._pool = self._start()
            job = self._pool.schedule(function, args=args, kwargs=kwargs, timeout=timeout_s)
            self._jobs.add(job)
        job.add_done_callback(self._finished)
        try:
            # Cancelled (the caller went away): pebble stops the job, and its worker if it started.
            return await asyncio.wrap_future(job)
        except TimeoutError:
            raise JobTimedOut(f"The job took longer than {timeout_s:g} s and was stopped.") from None
        except (ProcessExpired, BrokenProcessPool) as exc:
            raise JobFailed(f"The voice worker stopped unexpectedly ({exc}).") from None

    def _finished(self, job: Future[Any]) -> None:
        with self._lock:
            self._jobs.discard(job)

    def close(self) -> None:
        """Stop the workers, and any job they are running."""
        self._pool.stop()
        self._pool.join(timeout=CLOSE_TIMEOUT_S)


_shared: SpeechPool | None = None
_shared_lock = threading.Lock()


def shared(*, workers: int, backlog: int) -> SpeechPool:
    """This process's pool, started on first use and stopped at exit (the first call's sizes hold)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SpeechPool(workers=workers, backlog=backlog)
            atexit.register(_shared.close)
        return _shared
