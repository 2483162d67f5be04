"""Which thread count decode passes run on (inference/engine/threads.py), with synthetic pass times."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import pytest

from inference.engine.threads import ThreadChoice, on_a_thread_of_its_own

PassTime = Callable[[int, int], float]  # (threads, rows) -> seconds


def run(choice: ThreadChoice, passes: int, rows: int, time_of: PassTime) -> Counter[int]:
    """`passes` decode passes of `rows` rows as the engine runs them; how many each thread count took."""
    used: Counter[int] = Counter()
    for _ in range(passes):
        threads = choice.threads(rows)
        used[threads] += 1
        choice.observe(threads, rows, time_of(threads, rows))
    return used


def idle(threads: int, rows: int) -> float:
    """A quiet 2-core machine: two threads decode 1.5x faster (12.5 against 19 ms at one reply)."""
    return (0.019 if threads == 1 else 0.0125) * (1 + 0.1 * rows)


def busy(threads: int, rows: int) -> float:
    """Another process on one core: two threads stall at their barriers."""
    return (0.021 if threads == 1 else 0.034) * (1 + 0.1 * rows)


def test_the_faster_thread_count_runs_nearly_every_pass() -> None:
    choice = ThreadChoice((1, 2))
    assert run(choice, 1000, 1, idle)[2] >= 970
    choice = ThreadChoice((1, 2))
    assert run(choice, 1000, 1, busy)[1] >= 970


def test_it_follows_the_machine_when_its_load_changes() -> None:
    choice = ThreadChoice((1, 2), probe_every=100)
    run(choice, 500, 1, idle)
    assert choice.best(1) == 2
    # Something starts on the other core: within a few probes one thread wins again.
    used = run(choice, 600, 1, busy)
    assert choice.best(1) == 1
    assert used[1] > used[2]


def test_each_row_count_is_judged_on_its_own() -> None:
    def crossover(threads: int, rows: int) -> float:  # two threads pay off only in big batches
        return 0.02 * rows / (1.6 if threads == 2 and rows >= 4 else 1.0) + (0.004 if threads == 2 else 0)

    choice = ThreadChoice((1, 2))
    run(choice, 300, 1, crossover)
    run(choice, 300, 8, crossover)
    assert (choice.best(1), choice.best(8)) == (1, 2)


def test_a_fixed_thread_count_is_kept_whatever_the_times() -> None:
    choice = ThreadChoice((2,))
    assert run(choice, 300, 1, busy) == Counter({2: 300})


def test_thread_counts_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ThreadChoice((0, 1))


def test_work_on_a_thread_of_its_own_returns_its_result_from_a_thread_that_has_ended() -> None:
    """A model loads this way so that its loading thread's OpenMP team ends before the engine runs."""
    ran_on: list[threading.Thread] = []

    def work() -> str:
        ran_on.append(threading.current_thread())
        return "loaded"

    assert on_a_thread_of_its_own(work) == "loaded"
    assert ran_on[0] is not threading.current_thread()
    assert not ran_on[0].is_alive()


def test_what_the_work_raises_reaches_the_caller() -> None:
    def work() -> None:
        raise FileNotFoundError("no model at /nowhere")

    with pytest.raises(FileNotFoundError, match="/nowhere"):
        on_a_thread_of_its_own(work)
