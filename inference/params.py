"""Generation parameters: defaults, allowed ranges and validation.

Shared by the web (to refuse bad input with a clear message before anything is
queued) and the worker. Torch-free on purpose.
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

    def contains(self, value: float) -> bool:
        above = value >= self.low if self.low_inclusive else value > self.low
        return above and value <= self.high


TEMPERATURE_RANGE = Range(0.0, 2.0)
TOP_P_RANGE = Range(0.0, 1.0, low_inclusive=False)
REPETITION_PENALTY_RANGE = Range(1.0, 2.0)


def _number(field: str, value: Any, allowed: Range) -> float:
    # bool is an int in Python; `true` is never a sensible temperature.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParameter(field, f"must be a number in {allowed.describe()}, got {value!r}")
    if not allowed.contains(float(value)):
        raise InvalidParameter(field, f"must be in {allowed.describe()}, got {value!r}")
    return float(value)


def _whole(field: str, value: Any, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidParameter(field, f"must be a whole number from 1 to {high}, got {value!r}")
    if not 1 <= value <= high:
        raise InvalidParameter(field, f"must be from 1 to {high}, got {value!r}")
    return value


def _stop(value: Any) -> tuple[str, ...]:
    field = "stop"
    items = [value] if isinstance(value, str) else value
    allowed = f"a string or a list of at most {MAX_STOP_STRINGS} non-empty strings"
    if not isinstance(items, list) or len(items) > MAX_STOP_STRINGS:
        raise InvalidParameter(field, f"must be {allowed}, got {value!r}")
    for item in items:
        if not isinstance(item, str) or not item or len(item) > MAX_STOP_LENGTH:
            raise InvalidParameter(
                field, f"must be {allowed} of at most {MAX_STOP_LENGTH} characters, got {item!r}"
            )
    return tuple(items)


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise InvalidParameter("seed", f"must be a whole number from 0 to {MAX_SEED}, got {value!r}")
    return value


def parse_params(
    raw: Mapping[str, Any],
    *,
    max_new_tokens_cap: int,
    defaults: GenerationParams | None = None,
) -> GenerationParams:
    """Build parameters from untrusted input; absent or null fields take the defaults."""
    base = defaults or GenerationParams()
    given = {key: value for key, value in raw.items() if value is not None}
    return GenerationParams(
        max_new_tokens=_whole(
            "max_new_tokens", given.get("max_new_tokens", base.max_new_tokens), max_new_tokens_cap
        ),
        temperature=_number("temperature", given.get("temperature", base.temperature), TEMPERATURE_RANGE),
        top_p=_number("top_p", given.get("top_p", base.top_p), TOP_P_RANGE),
        repetition_penalty=_number(
            "repetition_penalty",
            given.get("repetition_penalty", base.repetition_penalty),
            REPETITION_PENALTY_RANGE,
        ),
        stop=_stop(given["stop"]) if "stop" in given else base.stop,
        seed=_seed(given["seed"]) if "seed" in given else base.seed,
    )
