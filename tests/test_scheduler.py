"""The engine's scheduler on its own: synthetic requests and a step-time model, no model loaded.

Each test runs the scheduler the way the engine does (admit, schedule, run,
update) in simulated time, where a pass costs what a step-time model says.
"""

from __future__ import annotations

import itertools
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from inference.engine.config import EngineConfig
from inference.engine.scheduler import Admission, PassCost, Phase, Request, Scheduler

StepTime = Callable[[int, int], float]  # (decoding rows, prompt tokens) -> seconds


def cpu_135m(rows: int, tokens: int) -> float:
    """Roughly the default model on 2 cores: weights read once a pass, then per row and per prompt token."""
    return 0.012 + 0.002 * rows + 0.002 * tokens


def cpu_7b(rows: int, tokens: int) -> float:
    """Ten times slower a pass, and prompt tokens relatively cheaper."""
    return 0.2 + 0.01 * rows + 0.012 * tokens


@dataclass
class Arrival:
    at: float
    prompt_tokens: int
    new_tokens: int
    owner: str | None = None
    time_limit_s: float | None = None
    cancel_at: float | None = None


@dataclass
class Outcome:
    request: Request
    tokens: list[float] = field(default_factory=list)  # when each token came
    ended: str = ""

    @property
    def first_token(self) -> float:
        return self.tokens[0] - self.request.arrived

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.tokens, self.tokens[1:], strict=False)]


@dataclass
class Run:
    outcomes: list[Outcome]
    passes: list[tuple[float, int, int, int]]  # (seconds, decoding rows, prompt tokens, budget)


def simulate(
    arrivals: list[Arrival], step_time: StepTime = cpu_135m, scheduler: Scheduler | None = None
) -> Run:
    scheduler = scheduler or Scheduler(EngineConfig())
    outcomes = [
        Outcome(Request(id=index, prompt_tokens=a.prompt_tokens, owner=a.owner, time_limit_s=a.time_limit_s,
                        arrived=a.at))
        for index, a in enumerate(arrivals)
    ]  # fmt: skip
    by_id = {outcome.request.id: outcome for outcome in outcomes}
    pending = sorted(range(len(arrivals)), key=lambda index: arrivals[index].at)
    passes: list[tuple[float, int, int, int]] = []
    now = 0.0
    while pending or scheduler.has_work():
        while pending and arrivals[pending[0]].at <= now:
            scheduler.add(outcomes[pending.pop(0)].request)
        for outcome, arrival in zip(outcomes, arrivals, strict=True):
            if arrival.cancel_at is not None and now >= arrival.cancel_at:
                outcome.request.cancelled = True
        admission = scheduler.admit(now)
        for request, reason in admission.ended:
            by_id[request.id].ended = reason
        for request in admission.admitted:
            scheduler.started(request, 0)
        plan = scheduler.schedule(now)
        if plan.empty:
            if not pending:
                break
            now = max(now, arrivals[pending[0]].at)
            continue
        assert plan.prompt_tokens <= plan.budget <= scheduler.config.max_pass_tokens
        assert plan.decode == scheduler.decoding  # every decoding reply gets a token every pass
        sampled = [*plan.decode, *plan.completing]
        seconds = step_time(len(plan.decode), plan.prompt_tokens)
        now += seconds
        scheduler.update(plan, seconds)
        passes.append((seconds, len(plan.decode), plan.prompt_tokens, plan.budget))
        for request in sampled:
            outcome = by_id[request.id]
            outcome.tokens.append(now)
            if len(outcome.tokens) >= arrivals[request.id].new_tokens:
                scheduler.finish(request)
                outcome.ended = "length"
    return Run(outcomes, passes)


def p99(values: list[float]) -> float:
    return sorted(values)[int(0.99 * (len(values) - 1))]


def test_a_short_question_behind_a_long_prompt_gets_its_first_token_within_3x_its_time_alone() -> None:
    short = Arrival(at=1.0, prompt_tokens=40, new_tokens=8, owner="bob")
    (alone,) = simulate([short]).outcomes
    run = simulate([Arrival(at=0.0, prompt_tokens=2500, new_tokens=8, owner="alice"), short])
    long, behind = run.outcomes
    longest_pass = max(seconds for seconds, *_ in run.passes)
    assert behind.first_token <= 3 * alone.first_token + longest_pass
    assert behind.tokens[0] < long.tokens[0]  # it did not wait for the long prompt
    # The long prompt lost little: about the short one's own work.
    (long_alone,) = simulate([Arrival(at=0.0, prompt_tokens=2500, new_tokens=8)]).outcomes
    assert long.first_token <= long_alone.first_token + 3 * alone.first_token


def test_the_pass_that_gives_a_short_question_its_first_token_is_short_too() -> None:
    # Long passes while nobody decodes (a fast machine, or a long prefill_pass_s).
    config = EngineConfig(prefill_pass_s=1.0)
    short = Arrival(at=1.0, prompt_tokens=40, new_tokens=2, owner="bob")
    (alone,) = simulate([short], scheduler=Scheduler(config)).outcomes
    run = simulate(
        [Arrival(at=0.0, prompt_tokens=4000, new_tokens=2, owner="alice"), short], scheduler=Scheduler(config)
    )
    ends = list(itertools.accumulate(seconds for seconds, *_ in run.passes))
    pass_in_progress_ends = next(end for end in ends if end >= short.at)
    assert run.outcomes[1].tokens[0] - pass_in_progress_ends <= 3 * alone.first_token


def test_a_short_question_while_replies_decode_and_a_long_prompt_prefills() -> None:
    running = [Arrival(at=0.0, prompt_tokens=30, new_tokens=400, owner=f"user{i}") for i in range(6)]
    short = Arrival(at=2.0, prompt_tokens=40, new_tokens=4, owner="bob")
    (alone,) = simulate([*running, short]).outcomes[-1:]
    run = simulate([*running, Arrival(at=1.5, prompt_tokens=1500, new_tokens=4, owner="alice"), short])
    *_, long, behind = run.outcomes
    assert behind.tokens[0] < long.tokens[0]
    assert behind.first_token <= 3 * alone.first_token + max(seconds for seconds, *_ in run.passes)


def test_replies_keep_a_smooth_gap_while_a_long_prompt_is_prefilled_beside_them() -> None:
    config = EngineConfig(gap_ratio=3.0)
    running = [Arrival(at=0.0, prompt_tokens=30, new_tokens=300, owner=f"user{i}") for i in range(7)]
    prompt = Arrival(at=1.0, prompt_tokens=1500, new_tokens=2, owner="alice")
    run = simulate([*running, prompt], scheduler=Scheduler(config))
    gaps = [gap for outcome in run.outcomes[:7] for gap in outcome.gaps()]
    assert p99(gaps) <= config.gap_ratio * statistics.median(gaps) * 1.05
    # Prefill still moves at a good share of its speed alone: well within 2x its unchunked time.
    unchunked = cpu_135m(0, 1500)
    assert run.outcomes[7].first_token <= 2 * unchunked


def test_the_budget_follows_the_measured_pass_times_of_each_machine() -> None:
    for step_time in (cpu_135m, cpu_7b):
        config = EngineConfig(gap_ratio=3.0)
        scheduler = Scheduler(config)
        running = [Arrival(at=0.0, prompt_tokens=20, new_tokens=200, owner=f"u{i}") for i in range(4)]
        prompt = Arrival(at=3.0 if step_time is cpu_135m else 30.0, prompt_tokens=3000, new_tokens=2)
        run = simulate([*running, prompt], step_time, scheduler)
        beside = [(seconds, rows, tokens) for seconds, rows, tokens, _ in run.passes[-40:] if rows and tokens]
        assert beside, step_time.__name__
        for seconds, rows, _ in beside:
            # Each pass beside the replies takes close to, and never much over, the target.
            assert seconds <= config.gap_ratio * step_time(rows, 0) * 1.05, step_time.__name__
            assert seconds >= 0.7 * config.gap_ratio * step_time(rows, 0), step_time.__name__
    # The slow machine's passes carry fewer prompt tokens per second of decode pass, not a fixed count.
    assert PassCost().budget_beside(4, 3.0) > 0


def test_a_burst_with_nobody_decoding_is_prefilled_together_at_full_speed() -> None:
    burst = [Arrival(at=0.0, prompt_tokens=44, new_tokens=33, owner=f"user{i}") for i in range(8)]
    run = simulate(burst)
    firsts = [outcome.tokens[0] for outcome in run.outcomes]
    # Every pass until the last first token carried prompt tokens at the full (alone) budget.
    elapsed = 0.0
    for seconds, _, tokens, _ in run.passes:
        elapsed += seconds
        if elapsed <= max(firsts):
            assert tokens > 0
    assert max(rows_tokens[2] for rows_tokens in run.passes) > 44  # several prompts shared a pass
    # In total about the time of prefilling them all in one pass.
    assert max(firsts) <= 1.3 * cpu_135m(0, 8 * 44) + 3 * cpu_135m(8, 0)
    # They fit in burst_pass_s, so one pass gives all eight their first token (not 125-token passes in turn).
    assert len(set(firsts)) == 1


def test_a_burst_arriving_over_a_few_milliseconds_gets_its_first_tokens_from_two_passes() -> None:
    """Requests sent at once reach the engine one by one: the first pass takes
    what has arrived, the next every other whole prompt, beside the first ones' decode rows."""
    burst = [Arrival(at=0.004 * i, prompt_tokens=55, new_tokens=64, owner=f"user{i}") for i in range(8)]
    run = simulate(burst)
    firsts = [outcome.tokens[0] for outcome in run.outcomes]
    assert len(set(firsts)) <= 2
    assert max(firsts) <= cpu_135m(0, 55) + cpu_135m(1, 7 * 55) + 0.01


def test_a_long_prompt_is_cut_into_pieces_even_with_nobody_decoding() -> None:
    """Whole prompts may fill a pass up to burst_pass_s, a long prompt never:
    its pieces stay within prefill_pass_s, so a question arriving meanwhile waits for one piece at most."""
    config = EngineConfig()
    run = simulate([Arrival(at=0.0, prompt_tokens=2400, new_tokens=2)], scheduler=Scheduler(config))
    pieces = [seconds for seconds, rows, tokens, _ in run.passes if tokens]
    assert len(pieces) > 3
    assert max(pieces) <= 1.5 * config.prefill_pass_s


def test_one_owner_s_many_prompts_do_not_starve_another_owner_s_one() -> None:
    alice = [Arrival(at=0.0, prompt_tokens=800, new_tokens=2, owner="alice") for _ in range(4)]
    bob = Arrival(at=0.1, prompt_tokens=800, new_tokens=2, owner="bob")
    run = simulate([*alice, bob], scheduler=Scheduler(EngineConfig(max_per_owner=4)))
    firsts = sorted(outcome.tokens[0] for outcome in run.outcomes)
    assert run.outcomes[4].tokens[0] <= firsts[1]  # bob is among the first two served


def test_a_stream_of_short_prompts_never_starves_a_long_one() -> None:
    long = Arrival(at=0.0, prompt_tokens=1200, new_tokens=2, owner="alice")
    # One-token answers to short questions from other users, taking ~85% of what prefill can do alone.
    shorts = [Arrival(at=0.07 * i, prompt_tokens=30, new_tokens=1, owner=f"u{i % 3}") for i in range(300)]
    run = simulate([long, *shorts], scheduler=Scheduler(EngineConfig(max_batch=8)))
    (alone,) = simulate([long]).outcomes
    # It waits for a while, then its wait earns it the budget: served within a few times its time alone.
    assert run.outcomes[0].first_token <= 3 * alone.first_token
    assert run.outcomes[0].tokens[0] < max(outcome.tokens[-1] for outcome in run.outcomes[1:]) / 2


def test_cancelled_and_timed_out_prompts_end_mid_prefill_and_free_their_slot() -> None:
    config = EngineConfig(max_batch=2)
    arrivals = [
        Arrival(at=0.0, prompt_tokens=5000, new_tokens=2, cancel_at=0.5),
        Arrival(at=0.0, prompt_tokens=5000, new_tokens=2, time_limit_s=1.0),
        Arrival(at=0.1, prompt_tokens=20, new_tokens=3),
    ]
    run = simulate(arrivals, scheduler=Scheduler(config))
    cancelled, timed_out, waiting = run.outcomes
    assert cancelled.ended == "cancelled" and not cancelled.tokens
    assert 0 < cancelled.request.computed < 5000  # ended part-way through its prompt
    assert timed_out.ended == "timeout" and not timed_out.tokens
    assert waiting.ended == "length" and len(waiting.tokens) == 3  # it got the freed slot
    assert waiting.tokens[0] < 1.0 + 2 * cpu_135m(0, 512)


def test_thousands_of_random_schedules_keep_every_rule() -> None:
    rng = random.Random(7)  # noqa: S311  # repeatable, not secret
    for _ in range(40):
        config = EngineConfig(max_batch=rng.choice([1, 2, 4, 8]), max_per_owner=rng.choice([None, 0, 1, 2]))
        arrivals = [
            Arrival(
                at=rng.uniform(0, 3),
                prompt_tokens=rng.choice([5, 40, 300, 2000]),
                new_tokens=rng.randint(1, 30),
                owner=rng.choice(["a", "b", "c", None]),
                cancel_at=rng.choice([None, None, None, rng.uniform(0, 5)]),
            )
            for _ in range(rng.randint(1, 25))
        ]
        scheduler = Scheduler(config)

        def admit(
            now: float,
            scheduler: Scheduler = scheduler,
            original: Callable[[float], Admission] = scheduler.admit,
        ) -> Admission:
            admission = original(now)
            held: dict[str | None, int] = {}
            for request in scheduler.running:
                held[request.owner] = held.get(request.owner, 0) + 1
            assert len(scheduler.running) <= scheduler.config.max_batch
            assert all(
                count <= scheduler.config.owner_cap for owner, count in held.items() if owner is not None
            )
            return admission

        scheduler.admit = admit  # type: ignore[method-assign]
        run = simulate(arrivals, step_time=cpu_135m, scheduler=scheduler)
        for outcome, arrival in zip(run.outcomes, arrivals, strict=True):
            assert outcome.request.phase is Phase.FINISHED
            if outcome.ended == "length":
                assert len(outcome.tokens) == arrival.new_tokens
            else:
                assert outcome.ended == "cancelled"
        assert not scheduler.has_work()


def test_one_slow_pass_does_not_shrink_the_budget_for_good() -> None:
    slow_first = [True]

    def step_time(rows: int, tokens: int) -> float:
        # The first pass is 1,000 times slower (a cold start, a machine busy for a moment).
        seconds = cpu_135m(rows, tokens) * (1000 if slow_first[0] else 1)
        slow_first[0] = False
        return seconds

    run = simulate([Arrival(at=0.0, prompt_tokens=3000, new_tokens=2)], step_time)
    (alone,) = simulate([Arrival(at=0.0, prompt_tokens=3000, new_tokens=2)]).outcomes
    first_pass = run.passes[0][0]
    assert run.outcomes[0].first_token <= first_pass + 1.5 * alone.first_token


def test_with_many_replies_streaming_each_hands_out_its_text_less_often() -> None:
    """The engine's pieces of text a second stay near stream_pieces_per_s in total,
    so relaying them takes less of the machine; one reply still streams smoothly."""
    config = EngineConfig(stream_interval_s=0.05, stream_pieces_per_s=40.0)
    assert config.stream_interval(1) == 0.05
    assert config.stream_interval(2) == 0.05
    assert config.stream_interval(8) == 8 / 40.0
    assert [round(n / config.stream_interval(n)) for n in (4, 8, 16)] == [40, 40, 40]
    assert EngineConfig(stream_interval_s=0.05, stream_pieces_per_s=0).stream_interval(8) == 0.05
