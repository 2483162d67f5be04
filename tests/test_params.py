"""The one parameter schema (chat.params): validation wording, defaults and resolution."""

from __future__ import annotations

from typing import Any

import pytest

from chat.params import over, params_in, site_defaults, stored_over
from inference.params import GenerationParams, InvalidParameter

CAP = 1024  # GENERATION_MAX_NEW_TOKENS' default


def parse(**raw: object) -> GenerationParams:
    return over(params_in(raw), site_defaults())


def test_absent_fields_take_the_documented_defaults() -> None:
    assert parse() == GenerationParams(
        max_new_tokens=200, temperature=0.7, top_p=0.9, repetition_penalty=1.05
    )
    assert parse(temperature=None).temperature == 0.7


def test_temperature_zero_means_greedy() -> None:
    assert parse(temperature=0).greedy
    assert not parse(temperature=0.2).greedy


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("max_new_tokens", 0, f"max_new_tokens: must be a whole number from 1 to {CAP}, got 0"),
        ("max_new_tokens", CAP + 1, f"max_new_tokens: must be a whole number from 1 to {CAP}, got {CAP + 1}"),
        ("max_new_tokens", "100", f"max_new_tokens: must be a whole number from 1 to {CAP}, got '100'"),
        ("max_new_tokens", 1.5, "max_new_tokens: must be a whole number"),
        ("max_new_tokens", True, "max_new_tokens: must be a whole number"),
        ("temperature", -0.1, "temperature: must be a number in [0, 2] (0 is greedy), got -0.1"),
        ("temperature", 2.5, "temperature: must be a number in [0, 2]"),
        ("temperature", "hot", "temperature: must be a number in [0, 2]"),
        ("temperature", True, "temperature: must be a number in [0, 2]"),
        ("top_p", 0, "top_p: must be a number in (0, 1], got 0"),
        ("top_p", 1.01, "top_p: must be a number in (0, 1]"),
        ("repetition_penalty", 0.5, "repetition_penalty: must be a number in [1, 2]"),
        ("repetition_penalty", [1.1], "repetition_penalty: must be a number in [1, 2]"),
        ("seed", -1, "seed: must be a whole number from 0 to"),
    ],
)
def test_bad_values_are_refused_naming_the_field_and_range(field: str, value: object, expected: str) -> None:
    with pytest.raises(InvalidParameter) as error:
        parse(**{field: value})
    assert str(error.value).startswith(expected)
    assert error.value.field == field


def test_edges_of_the_ranges_are_allowed() -> None:
    params = parse(max_new_tokens=CAP, temperature=2, top_p=1, repetition_penalty=2.0)
    assert (params.max_new_tokens, params.temperature, params.top_p, params.repetition_penalty) == (
        CAP,
        2,
        1,
        2,
    )


def test_stop_and_seed_are_validated_and_round_trip_through_storage() -> None:
    params = parse(stop="\n\n", seed=7)
    assert params.stop == ("\n\n",) and params.seed == 7
    assert GenerationParams.from_dict(params.as_dict()) == params
    assert parse(stop=["a", "b"]).stop == ("a", "b")
    for bad in (["a"] * 5, [""], [3], {"a": 1}, "x" * 101):
        with pytest.raises(InvalidParameter, match="stop: must be a string or a list of at most 4"):
            parse(stop=bad)


def test_stored_values_resolve_over_defaults_and_bad_ones_are_skipped() -> None:
    profile = stored_over({"temperature": 0.3, "top_p": 0.5}, site_defaults())
    conversation: dict[str, Any] = {"top_p": 0.8, "max_new_tokens": 10_000_000, "temperature": "hot"}
    resolved = stored_over(conversation, profile)
    # The conversation's top_p over the profile's; its out-of-range values fall through.
    assert (resolved.top_p, resolved.temperature, resolved.max_new_tokens) == (0.8, 0.3, 200)
    # The request's own values come first.
    assert over(params_in({"temperature": 1.5}), resolved).temperature == 1.5
