"""What each pass of the engine runs, decided without a model.

Pure Python, no torch: the scheduler sees requests as token counts and passes
as measured seconds, so thousands of schedules can be tested in milliseconds
(tests/test_scheduler.py). The engine (core.py) executes its decisions. As
in vLLM V1's scheduler, each pass is:

1. `admit(now)`: the requests to end before the pass (cancelled, or past their
   time limit), and the waiting requests that take a free slot, oldest first,
   within each owner's cap. The engine gives each admitted request a KV row,
   copies in the cached blocks of its prefix and says how many prompt tokens
   they hold with `started()`.
2. `schedule(now)`: a SchedulerOutput, the pass's plan: every decoding reply's
   next token, and prompt tokens for prefilling requests within the pass's
   budget.
3. `update(output, seconds)` once the engine has run it: prompt progress,
   prompts that reached their first token (they decode from the next pass),
   and the pass's measured time, which the cost model learns from.

`finish()` ends a request for any other reason (a stop token, its length).

The policy:
- **Decoding replies never wait**: each running reply gets one token every
  pass.
- **The budget comes from measured pass times**: while replies decode, a pass
  may carry as many prompt tokens as keep it within `gap_ratio` times a pass
  of the replies alone (Sarathi-Serve's stall-free batching); so it adapts to
  the machine and the model. With nobody decoding (or when more prompts wait
  for a first token than replies decode: a burst), a pass carries what fits
  in `prefill_pass_s`, and whole prompts up to `burst_pass_s`: a burst of
  short prompts is prefilled in one pass (the weights read once, every first
  token at once), while a long prompt is cut into pieces, so a question
  arriving meanwhile waits for one piece at most.
- **Short prompts first, fairly between owners**: prompts are served in order
  of how much work is ahead of them: within one owner shortest first, and
  across owners by each owner's running total, so one user's many prompts do
  not starve another's one. Waiting earns credit (at the measured prefill
  rate), so a long prompt is never starved by a stream of short ones.
- **Nobody waits behind a long prompt**: a prompt that gets its first token in
  this pass shares it with at most `short_first_ratio` times its own tokens
  of longer prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from inference.engine.config import EngineConfig

EndReason = Literal["cancelled", "timeout"]

# The fewest prompt tokens a pass may carry (where max_pass_tokens allows), so
# every pass still measures what a prompt token costs: one slow pass (a first
# call, a machine busy for a moment) must not shrink the budget for good.
MIN_BUDGET = 16


class Phase(Enum):
    WAITING = "waiting"
    PREFILLING = "prefilling"
    DECODING = "decoding"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    """The scheduler's view of one request: who asked, and how far its prompt is."""

    id: int
    prompt_tokens: int
    owner: str | None = None
    time_limit_s: float | None = None  # counted from admission
    arrived: float = 0.0
    # Set by the job's own thread; read at the start of the next pass.
    cancelled: bool = False
    phase: Phase = Phase.WAITING
    computed: int = 0  # prompt tokens whose keys and values are in place (cached ones included)
    uncached: int = 0  # prompt tokens the prefix cache did not hold at admission: the prefill's size
    deadline: float | None = None

    @property
    def remaining(self) -> int:
        """Prompt tokens still to prefill."""
        return self.prompt_tokens - self.computed


@dataclass(frozen=True)
class Admission:
    admitted: list[Request]
    ended: list[tuple[Request, EndReason]]
    waiting: list[Request]  # still waiting, in queue order: position = index + 1


@dataclass(frozen=True)
class SchedulerOutput:
    decode: list[Request]  # one token each
    prefill: list[tuple[Request, int]]  # prompt tokens each, in pass order
    budget: int  # the pass's prompt-token budget

    @property
    def prompt_tokens(self) -> int:
        return sum(count for _, count in self.prefill)

    @property
    def completing(self) -> list[Request]:
        """The requests whose prompt this pass completes: they sample their first token."""
        return [request for request, count in self.prefill if count == request.remaining]

    @property
    def empty(self) -> bool:
        return not self.decode and not self.prefill


class PassCost:
    """What a pass costs, learned from measured passes.

    Two quantities, each an exponential moving average:
    - a decode pass's time, by its number of rows;
    - the marginal cost of a prompt token, in two regimes: beside decoding
      replies (small chunks, where a token costs more) and alone (large passes).
    A prompt token's cost grows with its position (attention reads every key
    before it); the averages follow it as a long prompt advances.
    """

    # A pass with fewer prompt tokens than this says little about their cost.
    MIN_TOKENS_TO_LEARN = 4

    def __init__(self, decode_s: float = 0.02, token_s: float = 0.002, smoothing: float = 0.25) -> None:
        self.smoothing = smoothing
        self.default_decode_s = decode_s
        self._decode: dict[int, float] = {}
        self.token_s_beside = token_s
        self.token_s_alone = token_s

    def decode_time(self, rows: int) -> float:
        """Seconds of a pass of `rows` decoding replies: as measured, else the nearest measured size."""
        if rows in self._decode:
            return self._decode[rows]
        if not self._decode:
            return self.default_decode_s
        nearest = min(self._decode, key=lambda known: (abs(known - rows), -known))
        return self._decode[nearest]

    def predict(self, rows: int, tokens: int) -> float:
        if not tokens:
            return self.decode_time(rows)
        if not rows:
            return tokens * self.token_s_alone
        return self.decode_time(rows) + tokens * self.token_s_beside

    def observe(self, rows: int, tokens: int, seconds: float) -> None:
        if tokens == 0:
            if rows:
                self._decode[rows] = self._average(self._decode.get(rows), seconds)
        elif tokens >= self.MIN_TOKENS_TO_LEARN:
            if rows:
                marginal = max(seconds - self.decode_time(rows), 0.0) / tokens
                self.token_s_beside = self._average(self.token_s_beside, marginal)
            else:
                self.token_s_alone = self._average(self.token_s_alone, seconds / tokens)

    def budget_beside(self, rows: int, gap_ratio: float) -> int:
        """Prompt tokens that keep a pass of `rows` replies within gap_ratio times their own pass."""
        room = (gap_ratio - 1.0) * self.decode_time(rows)
        return int(room / max(self.token_s_beside, 1e-9))

    def budget_alone(self, seconds: float) -> int:
        """Prompt tokens a pass with no reply decoding prefills in about `seconds`."""
        return int(seconds / max(self.token_s_alone, 1e-9))

    def _average(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.smoothing * (new - old)


@dataclass
class Scheduler:
    config: EngineConfig = field(default_factory=EngineConfig)
    cost: PassCost = field(default_factory=PassCost)
    waiting: list[Request] = field(default_factory=list)
    prefilling: list[Request] = field(default_factory=list)
    decoding: list[Request] = field(default_factory=list)

    def add(self, request: Request) -> None:
        request.phase = Phase.WAITING
        self.waiting.append(request)

    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.decoding)

    @property
    def running(self) -> list[Request]:
        """The requests holding a slot."""
        return [*self.decoding, *self.prefilling]

    def admit(self, now: float) -> Admission:
        ended: list[tuple[Request, EndReason]] = []
        for request in [*self.waiting, *self.prefilling, *self.decoding]:
            if request.cancelled:
                ended.append((request, "cancelled"))
            elif request.deadline is not None and now >= request.deadline:
                ended.append((request, "timeout"))
        for request, _ in ended:
            self.finish(request)
        held: dict[str | None, int] = {}
        for request in self.running:
            held[request.owner] = held.get(request.owner, 0) + 1
        free = self.config.max_batch - len(self.running)
        cap = self.config.owner_cap
        admitted: list[Request] = []
        still: list[Request] = []
        for request in self.waiting:
            if free > 0 and (request.owner is None or held.get(request.owner, 0) < cap):
                admitted.append(request)
                held[request.owner] = held.get(request.owner, 0) + 1
                free -= 1
                request.phase = Phase.PREFILLING
                request.deadline = now + request.time_limit_s if request.time_limit_s else None
                self.prefilling.append(request)
            else:
                still.append(request)
        self.waiting = still
        return Admission(admitted=admitted, ended=ended, waiting=list(still))

    def started(self, request: Request, cached_tokens: int) -> None:
        """The engine copied `cached_tokens` of the request's prompt from the prefix cache."""
        if not 0 <= cached_tokens < request.prompt_tokens:
            raise ValueError(f"{cached_tokens} cached tokens of a {request.prompt_tokens}-token prompt")
        request.computed = cached_tokens
        request.uncached = request.prompt_tokens - cached_tokens

    def schedule(self, now: float) -> SchedulerOutput:
        """The plan of the next pass; changes nothing (see update())."""
        config = self.config
        decode = list(self.decoding)
        beside = bool(decode) and len(self.prefilling) <= len(decode)
        if beside:
            budget = self.cost.budget_beside(len(decode), config.gap_ratio)
            whole = budget
        else:
            budget = self.cost.budget_alone(config.prefill_pass_s)
            whole = self.cost.budget_alone(config.burst_pass_s)
        budget, whole = (
            max(min(MIN_BUDGET, config.max_pass_tokens), min(limit, config.max_pass_tokens))
            for limit in (budget, whole)
        )
        whole = max(whole, budget)
        plan: list[tuple[Request, int]] = []
        taken = 0
        limit = whole  # whole prompts may fill a pass up to `whole`; once a piece is in it, `budget`
        for request in self.prefill_order(now):
            if request.uncached <= whole and request.remaining <= limit - taken:
                # A short prompt, whole: in a burst every one that fits gets its first token in
                # this pass. A long prompt's last piece is no such prompt: it stays a piece.
                count = request.remaining
            elif taken < budget:
                count = min(request.remaining, budget - taken)  # a piece of a longer prompt
                limit = budget
            else:
                continue
            plan.append((request, count))
            taken += count
        return SchedulerOutput(decode=decode, prefill=self._short_first(plan), budget=whole)

    def prefill_order(self, now: float) -> list[Request]:
        """Prefilling requests by the work ahead of them (see the module docstring)."""
        rate = 1.0 / max(self.cost.token_s_alone, 1e-9)  # prompt tokens a second
        by_owner: dict[str | None, list[Request]] = {}
        for request in self.prefilling:
            by_owner.setdefault(request.owner, []).append(request)
        keyed: list[tuple[float, float, int, Request]] = []
        for owner, requests in by_owner.items():
            ahead = 0
            for request in sorted(requests, key=lambda r: (r.remaining, r.arrived, r.id)):
                # Requests without an owner are each their own.
                ahead = ahead + request.remaining if owner is not None else request.remaining
                credit = rate * max(now - request.arrived, 0.0)
                keyed.append((ahead - credit, request.arrived, request.id, request))
        keyed.sort(key=lambda entry: entry[:3])
        return [request for *_, request in keyed]

    def _short_first(self, plan: list[tuple[Request, int]]) -> list[tuple[Request, int]]:
        """Trim longer prompts' shares so a pass that completes prompts stays short for them."""
        completing = sum(count for request, count in plan if count == request.remaining)
        if not completing:
            return plan
        room = int(completing * self.config.short_first_ratio)
        trimmed: list[tuple[Request, int]] = []
        for request, count in plan:
            if count == request.remaining:
                trimmed.append((request, count))
            elif room > 0:
                trimmed.append((request, min(count, room)))
                room -= min(count, room)
        return trimmed

    def update(self, output: SchedulerOutput, seconds: float) -> None:
        """Record what the engine ran: prompt progress and the pass's measured time."""
        for request, count in output.prefill:
            if request.phase is not Phase.PREFILLING:
                continue
            request.computed += count
            if request.remaining == 0:
                self.prefilling.remove(request)
                request.phase = Phase.DECODING
                self.decoding.append(request)
        self.cost.observe(len(output.decode), output.prompt_tokens, seconds)

    def finish(self, request: Request) -> None:
        for queue in (self.waiting, self.prefilling, self.decoding):
            if request in queue:
                queue.remove(request)
        request.phase = Phase.FINISHED

    def finish_all(self) -> list[Request]:
        """End every request (the engine failed or closed); returns them."""
        every = [*self.decoding, *self.prefilling, *self.waiting]
        for request in every:
            self.finish(request)
        return every
