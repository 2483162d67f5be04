"""How many torch threads the engine's decode passes run on, chosen by their measured times.

Pure Python, no torch: the engine reports each decode pass's threads, rows
and seconds (`observe`) and asks which thread count the next pass of that
many rows takes (`threads`); tests/test_engine_threads.py drives it with
synthetic times.

Why measured, not fixed: on a 2-core machine a decode step of the default
model with 4-bit weights takes 9.3 ms on two threads and 14.7 ms on one when
nothing else runs, while with the web process, its job threads or anything
else busy on the other core two threads can stall at their barriers and one
thread is then the faster. Which holds changes as the machine's load does,
so each candidate's pass time is kept as a moving average by row count and
the faster one runs; every `probe_every` passes of a row count the other
candidates run `probe_passes` passes so their figures stay current.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


def on_a_thread_of_its_own(work: Callable[[], T], name: str = "model-loading") -> T:
    """`work()` run on a new thread that ends when it returns: its result, or its exception.

    Load a model and build its engine this way, so that the engine thread's
    OpenMP team is the only one in the process. torch's OpenMP (libgomp)
    gives each thread that runs a parallel op a team of worker threads of its
    own, which lives as long as that thread, and once the process has more
    such workers than cores, every team's workers stop spinning between ops
    and sleep instead (libgomp's "throttled" spin count). A decode pass is
    hundreds of small parallel ops, so each then waits for a wake-up: the
    default model's decode step on two threads took 22.9 ms on the engine
    thread when the loading thread's team was alive, against 9.3 ms without
    it (and 14.7 ms on one thread), 2 cores. A thread that has ended takes its
    team with it.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # raised again on the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


@dataclass
class ThreadChoice:
    candidates: tuple[int, ...]
    probe_every: int = 200
    probe_passes: int = 4
    smoothing: float = 0.2
    # (threads, rows) -> moving average of a decode pass's seconds
    _times: dict[tuple[int, int], float] = field(default_factory=dict)
    # rows -> passes since that row count's last probe
    _since_probe: dict[int, int] = field(default_factory=dict)
    # rows -> (candidate being probed, passes it has left)
    _probing: dict[int, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.candidates or min(self.candidates) < 1:
            raise ValueError(
                f"thread candidates {self.candidates!r}: expected one or more counts of at least 1"
            )
        self.candidates = tuple(sorted(set(self.candidates)))

    def threads(self, rows: int) -> int:
        """The thread count for the next decode pass of `rows` rows."""
        if len(self.candidates) == 1:
            return self.candidates[0]
        probing = self._probing.get(rows)
        if probing is not None:
            return probing[0]
        unmeasured = [t for t in self.candidates if (t, rows) not in self._times]
        if unmeasured:
            return unmeasured[0]
        return self.best(rows)

    def best(self, rows: int) -> int:
        """The candidate with the shortest measured pass at `rows` (the fewest threads on a tie)."""
        return min(self.candidates, key=lambda t: (self._times.get((t, rows), float("inf")), t))

    def observe(self, threads: int, rows: int, seconds: float) -> None:
        """A decode pass of `rows` rows took `seconds` on `threads` threads."""
        if threads not in self.candidates or len(self.candidates) == 1:
            return
        key = (threads, rows)
        old = self._times.get(key)
        self._times[key] = seconds if old is None else old + self.smoothing * (seconds - old)
        probing = self._probing.get(rows)
        if probing is not None:
            candidate, left = probing
            if candidate == threads:
                if left > 1:
                    self._probing[rows] = (candidate, left - 1)
                else:
                    del self._probing[rows]
            return
        passes = self._since_probe.get(rows, 0) + 1
        self._since_probe[rows] = passes
        if passes >= self.probe_every:
            self._since_probe[rows] = 0
            # The engine offers two candidates (every core but one, every core): the other one.
            other = next(t for t in self.candidates if t != self.best(rows))
            self._probing[rows] = (other, self.probe_passes)
