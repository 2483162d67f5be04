"""How an engine is set up: the one place its settings and their defaults live.

Torch-free on purpose: the site's settings (sanjai_site/settings.py) read the
defaults from here and the worker builds an EngineConfig from them. Nothing
here reads Django settings or the environment.
"""

from __future__ import annotations

from dataclasses import dataclass

from inference.registry import WEIGHT_CHOICES


@dataclass(frozen=True)
class EngineConfig:
    # Rows decoded together: replies generating at once on one model copy.
    max_batch: int = 8
    # Rows one owner may hold at once, so nobody takes every slot. None: half
    # of max_batch (at least one); 0: no cap.
    max_per_owner: int | None = None
    # KV kept after replies finish, by token blocks, so anything that starts
    # with the same tokens (the next turn, a regenerated branch, a shared
    # system prompt or document) prefills only what is new.
    prefix_cache_mb: int = 512
    # Tokens per block of the prefix cache: the granularity of reuse.
    prefix_block_tokens: int = 32
    # How the projection weights are stored: one of registry.WEIGHT_CHOICES
    # (see docs/models/weights.md).
    weights: str = "auto"
    # torch intra-op threads for decode passes (0: every core but one, which is
    # left to the job threads, the web process and Redis, or every core,
    # whichever the engine measures faster: see threads.py).
    threads: int = 0
    # torch threads for passes that carry prompt tokens (0: every core):
    # prefill is compute-bound.
    prefill_threads: int = 0
    # The latency target between tokens of running replies: a pass that also
    # carries prompt tokens may take at most this many times a pass of the
    # replies alone, as the engine measures them. The prompt-token budget of
    # each pass follows from it (see scheduler.PassCost). Higher: prompts
    # reach their first token sooner, running replies stutter more. Measured
    # trade-off: docs/models/engine.md.
    gap_ratio: float = 3.0
    # With no reply decoding, a pass carries as many prompt tokens as fit in
    # about this long (by the measured cost of a prompt token): large enough
    # that the weights are read once for many tokens, short enough that a
    # prompt arriving meanwhile soon gets its turn.
    prefill_pass_s: float = 0.25
    # ... and prompts that each finish in the pass, as many as fit in about
    # this long: a burst of short prompts gets every first token from one
    # pass (llama-server's way), instead of one after another. Measured: docs/models/engine.md.
    burst_pass_s: float = 1.0
    # The most prompt tokens of any one pass: bounds its activations.
    max_pass_tokens: int = 2048
    # A prompt about to get its first token shares its pass with at most this
    # many times its own prompt tokens of longer prompts, so a short question
    # never waits behind a long prompt (0: it has the pass to itself).
    short_first_ratio: float = 1.0
    # How often a job thread checks for cancellation and events, and the
    # least time between two pieces of streamed text handed to it (the first
    # piece goes at once): fewer wake-ups of job threads competing with the
    # engine thread for the interpreter.
    poll_interval_s: float = 0.05
    stream_interval_s: float = 0.05
    # ... and the pieces of text the engine hands out in a second, across all
    # its replies, at most about this many: with many replies streaming each
    # gets its text less often (every replies / this seconds), so relaying it
    # through job threads, Redis and the web process takes less of the cores
    # the passes need (0: no cap). Measured at 8 replies on 2 cores through
    # the stack: 186 tok/s with a piece every 50 ms, 205 every 150 ms.
    stream_pieces_per_s: float = 40.0

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_CHOICES:
            raise ValueError(f"weights={self.weights!r}: expected one of {', '.join(WEIGHT_CHOICES)}")
        at_least = {
            "max_batch": (self.max_batch, 1),
            "prefix_cache_mb": (self.prefix_cache_mb, 0),
            "prefix_block_tokens": (self.prefix_block_tokens, 1),
            "threads": (self.threads, 0),
            "prefill_threads": (self.prefill_threads, 0),
            "max_pass_tokens": (self.max_pass_tokens, 1),
            "gap_ratio": (self.gap_ratio, 1.0),
            "prefill_pass_s": (self.prefill_pass_s, 0.001),
            "burst_pass_s": (self.burst_pass_s, 0.001),
            "short_first_ratio": (self.short_first_ratio, 0.0),
            "stream_pieces_per_s": (self.stream_pieces_per_s, 0.0),
        }
        if self.max_per_owner is not None:
            at_least["max_per_owner"] = (self.max_per_owner, 0)
        for name, (value, low) in at_least.items():
            if value < low:
                raise ValueError(f"{name}={value}: expected at least {low}")

    def stream_interval(self, streaming: int) -> float:
        """The least time between two pieces of one reply's text while `streaming` replies stream."""
        if not self.stream_pieces_per_s:
            return self.stream_interval_s
        return max(self.stream_interval_s, streaming / self.stream_pieces_per_s)

    @property
    def owner_cap(self) -> int:
        """Rows one owner may hold (max_per_owner resolved)."""
        if self.max_per_owner is None:
            return max(1, self.max_batch // 2)
        return self.max_per_owner or self.max_batch
