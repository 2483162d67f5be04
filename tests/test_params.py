from __future__ import annotations

import pytest

from inference.params import GenerationParams, InvalidParameter, parse_params


def parse(**raw: object) -> GenerationParams:
    return parse_params(raw, max_new_tokens_cap=512)


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
        ("max_new_tokens", 0, "max_new_tokens: must be from 1 to 512"),
        ("max_new_tokens", 513, "max_new_tokens: must be from 1 to 512"),
        ("max_new_tokens", "100", "max_new_tokens: must be a whole number from 1 to 512"),
        ("max_new_tokens", 1.5, "max_new_tokens: must be a whole number from 1 to 512"),
        ("max_new_tokens", True, "max_new_tokens: must be a whole number from 1 to 512"),
        ("temperature", -0.1, "temperature: must be in [0, 2]"),
        ("temperature", 2.5, "temperature: must be in [0, 2]"),
        ("temperature", "hot", "temperature: must be a number in [0, 2]"),
        ("top_p", 0, "top_p: must be in (0, 1]"),
        ("top_p", 1.01, "top_p: must be in (0, 1]"),
        ("repetition_penalty", 0.5, "repetition_penalty: must be in [1, 2]"),
        ("repetition_penalty", [1.1], "repetition_penalty: must be a number in [1, 2]"),
    ],
)
def test_bad_values_are_refused_naming_the_field_and_range(field: str, value: object, expected: str) -> None:
    with pytest.raises(InvalidParameter) as error:
        parse(**{field: value})
    assert str(error.value).startswith(expected)
    assert error.value.field == field


def test_edges_of_the_ranges_are_allowed() -> None:
    params = parse(max_new_tokens=512, temperature=2, top_p=1, repetition_penalty=2.0)
    assert (params.max_new_tokens, params.temperature, params.top_p, params.repetition_penalty) == (
        512,
        2,
        1,
        2,
    )
    assert parse(max_new_tokens=8.0).max_new_tokens == 8


def test_the_cap_comes_from_the_caller() -> None:
    assert parse_params({"max_new_tokens": 900}, max_new_tokens_cap=1000).max_new_tokens == 900


def test_stop_and_seed_are_validated_and_round_trip_through_storage() -> None:
    params = parse(stop="\n\n", seed=7)
    assert params.stop == ("\n\n",) and params.seed == 7
    assert GenerationParams.from_dict(params.as_dict()) == params
    assert parse(stop=["a", "b"]).stop == ("a", "b")
    for bad in (["a"] * 5, [""], [3], {"a": 1}):
        with pytest.raises(InvalidParameter, match="stop: must be a string or a list of at most 4"):
            parse(stop=bad)
    with pytest.raises(InvalidParameter, match="seed: must be a whole number"):
        parse(seed=-1)
