"""Generation parameters: defaults and allowed ranges.

Shared by the web and the worker; torch-free on purpose. Input from people
and programs is validated against these ranges by the web's one parameter
schema (chat/params.py) before anything is stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9
DEFAULT_REPETITION_PENALTY = 1.05


class InvalidParameter(ValueError):
    """A generation parameter is missing its type or range; the message says which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


MAX_STOP_STRINGS = 4
MAX_STOP_LENGTH = 100
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 200
    temperature: float = DEFAULT_TEMPERATURE  # 0 means greedy decoding
    top_p: float = DEFAULT_TOP_P
    repetition_penalty: float = DEFAULT_REPETITION_PENALTY
    stop: tuple[str, ...] = ()  # the reply ends before the first of these
    seed: int | None = None  # makes sampling repeatable
    # The reply must be a JSON document this schema accepts (JSON text; see
    # inference/grammar.py): local models decode under its grammar, remote
    # ones are asked for it. None: free text.
    response_schema: str | None = None
    # Or a grammar the reply must follow (llguidance's Lark dialect): a reply
    # that must call a tool (inference/tools.py). Set by the submit path, never sent.
    response_grammar: str | None = None

    @property
    def constrained(self) -> bool:
        return self.response_schema is not None or self.response_grammar is not None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for storing with a message."""
        data = asdict(self)
        data["stop"] = list(self.stop)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationParams:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["stop"] = tuple(known.get("stop") or ())
        return cls(**known)


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    low_inclusive: bool = True

    def describe(self) -> str:
        left = "[" if self.low_inclusive else "("
        return f"{left}{self.low:g}, {self.high:g}]"


TEMPERATURE_RANGE = Range(0.0, 2.0)
TOP_P_RANGE = Range(0.0, 1.0, low_inclusive=False)
REPETITION_PENALTY_RANGE = Range(1.0, 2.0)
