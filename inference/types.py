"""The interface between the chat app and a generation backend.

Plain dataclasses and a Protocol: the chat app depends on these, never on
torch or transformers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from inference.params import GenerationParams

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "cancelled", "timeout"]


@dataclass(frozen=True)
class Turn:
    role: Role
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    turns: Sequence[Turn]  # optional system turn first, the newest user turn last
    params: GenerationParams
    time_limit_s: float | None = None
    # Polled between decode steps; True stops generation and keeps the text so far.
    should_stop: Callable[[], bool] | None = None
    # Used by the batching engine (inference/engine/); other backends ignore them.
    # Who asked: the engine caps how many generations one owner runs at once.
    owner: str | None = None
    # Called on the caller's thread with the 1-based queue position while the
    # request waits for a free slot.
    on_queued: Callable[[int], None] | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    dropped_turns: int  # history turns left out to fit the context window


class GenerationError(Exception):
    """Generation could not run. `permanent` says whether a retry could help."""

    code = "generation_failed"
    permanent = True


class ContextOverflow(GenerationError):
    code = "context_overflow"


class Backend(Protocol):
    model_name: str

    def generate(
        self, request: GenerationRequest, on_text: Callable[[str], None] | None = None
    ) -> Completion:
        """Run one request; `on_text` receives the reply's text as it is produced."""
        ...
