"""Structured output in the inference layer: schemas checked, and every constrained reply parses.

The tiny model's weights are random, so whatever it says unconstrained is
noise: a reply that parses against its schema here does so because of the
grammar, not the model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from inference.backend import TransformersBackend
from inference.engine.config import EngineConfig
from inference.engine.core import Engine
from inference.grammar import JSON_OBJECT_SCHEMA, GrammarFailed, schema_problem, schema_text
from inference.loading import LoadedModel, load_model
from inference.params import GenerationParams
from inference.types import GenerationRequest, Turn
from tests.test_engine import PROMPTS, greedy, in_thread, reference_text

# Bounded in every part, so a random model's document ends well within the token budget.
PERSON = {
    "type": "object",
    "properties": {
        "colour": {"enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"},
        "name": {"type": "string", "maxLength": 6},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["colour", "count", "ok", "name", "tags"],
    "additionalProperties": False,
}


def constrained(schema: dict[str, Any] | str, **fields: Any) -> GenerationParams:
    text = schema if isinstance(schema, str) else schema_text(schema)
    values = {"max_new_tokens": 200, "temperature": 0, "repetition_penalty": 1.0, **fields}
    return GenerationParams(response_schema=text, **values)


def assert_parses(text: str, schema: dict[str, Any]) -> Any:
    document = json.loads(text)
    jsonschema_rs.validate(schema, document)
    return document


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(str(tiny_model_dir), device="cpu", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def engine(loaded: LoadedModel) -> Iterator[Engine]:
    # Its turn-boundary tokens stay: a constrained reply ends on one once its document is complete.
    engine = Engine(loaded, EngineConfig(max_batch=4, stream_interval_s=0.0, stream_pieces_per_s=0))
    yield engine
    engine.close()


def test_a_schema_the_grammar_cannot_enforce_is_named_and_a_usual_one_passes() -> None:
    assert schema_problem(schema_text({"type": "object", "if": {"type": "object"}})) == (
        'Unimplemented keys: ["if"]'
    )
    assert "does not exist" in str(schema_problem(schema_text({"$ref": "#/$defs/Missing"})))
    assert "strin" in str(schema_problem(schema_text({"type": "strin"})))
    assert "at most 32,000" in str(schema_problem(schema_text({"enum": ["x" * 33_000]})))
    # What pydantic's model_json_schema() gives for a nested, optional model.
    pydantic_like = {
        "$defs": {
            "City": {"properties": {"name": {"type": "string"}}, "required": ["name"], "type": "object"}
        },
        "properties": {
            "city": {"$ref": "#/$defs/City"},
            "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        },
        "required": ["city"],
        "title": "Person",
        "type": "object",
    }
    assert schema_problem(schema_text(pydantic_like)) is None
    assert schema_problem(schema_text(PERSON)) is None


def test_a_constrained_reply_of_a_random_model_parses_and_ends_with_its_document(engine: Engine) -> None:
    pieces: list[str] = []
    completion = engine.generate(
        GenerationRequest(turns=PROMPTS[0], params=constrained(PERSON)), on_text=pieces.append
    )
    assert_parses(completion.text, PERSON)
    assert completion.finish_reason == "stop"
    assert completion.completion_tokens < 200
    assert "".join(pieces).strip() == completion.text


def test_constrained_and_free_rows_share_a_batch_and_each_answers_as_alone(
    engine: Engine, loaded: LoadedModel
) -> None:
    # A free row batched with constrained ones is unchanged by them; the
    # constrained ones, sampled with seeds, all parse; and a constrained
    # greedy row answers the same batched as alone (its grammar state is its own).
    alone = engine.generate(GenerationRequest(turns=PROMPTS[1], params=constrained(PERSON))).text
    requests = [
        GenerationRequest(turns=PROMPTS[0], params=greedy(30)),
        GenerationRequest(turns=PROMPTS[1], params=constrained(PERSON)),
        GenerationRequest(turns=PROMPTS[2], params=constrained(PERSON, temperature=1.0, top_p=0.95, seed=7)),
        GenerationRequest(turns=PROMPTS[3], params=constrained(JSON_OBJECT_SCHEMA, max_new_tokens=60)),
    ]
    threads = [in_thread(lambda request=request: engine.generate(request)) for request in requests]
    for thread, _ in threads:
        thread.join(timeout=120)
    free, batched, sampled, any_object = (result[0] for _, result in threads)
    assert engine.stats.max_batch_seen >= 3
    assert free.text == reference_text(loaded, PROMPTS[0], 30)
    assert batched.text == alone
    assert_parses(sampled.text, PERSON)
    if any_object.finish_reason == "stop":  # an open object may run to the token limit
        assert isinstance(json.loads(any_object.text), dict)
    else:
        assert any_object.text.startswith("{")


def test_a_grammar_that_breaks_while_decoding_fails_the_reply_instead_of_ending_it(engine: Engine) -> None:
    # Within the submit path's checks, but past a limit llguidance's parser only
    # meets while decoding (at most 2,000 items in a row): the reply must fail,
    # never end as text that does not follow its schema.
    wide = {"type": "object", "properties": {f"p{n}": {"type": "string"} for n in range(500)}}
    assert schema_problem(schema_text(wide)) is None
    with pytest.raises(GrammarFailed, match="could not follow its response format"):
        engine.generate(GenerationRequest(turns=PROMPTS[0], params=constrained(wide)))
    # The engine goes on serving.
    assert_parses(
        engine.generate(GenerationRequest(turns=PROMPTS[0], params=constrained(PERSON))).text, PERSON
    )


def test_the_one_at_a_time_backend_constrains_the_same_way(tiny_backend: TransformersBackend) -> None:
    completion = tiny_backend.generate(
        GenerationRequest(turns=[Turn("user", "Describe a colour.")], params=constrained(PERSON))
    )
    assert_parses(completion.text, PERSON)
    assert completion.finish_reason == "stop"


@pytest.mark.default_model
def test_the_default_model_answers_twenty_schemas_and_every_answer_parses() -> None:
    # bench/structured.py measures the same tasks free: the 135M model's free
    # answers mostly echo the schema or write prose, and none of them parse.
    from concurrent.futures import ThreadPoolExecutor

    from django.conf import settings

    from bench.schemas import TASKS

    loaded = load_model("", device="cpu", cache_dir=settings.MODEL_CACHE_DIR)
    engine = Engine(loaded, EngineConfig(max_batch=8, max_per_owner=0))

    def answer(task: tuple[str, dict[str, Any]]) -> tuple[Any, dict[str, Any]]:
        question, schema = task
        completion = engine.generate(
            GenerationRequest(turns=[Turn("user", question)], params=constrained(schema, max_new_tokens=256))
        )
        return completion, schema

    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(answer, TASKS))
    finally:
        engine.close()
    assert len(answers) == 20
    for completion, schema in answers:
        assert completion.finish_reason == "stop", completion.text
        assert_parses(completion.text, schema)


# --- Function calling ------------------------------------------------------------

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"enum": ["Paris", "Rome"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["city", "days"],
        "additionalProperties": False,
    },
}
TIME = {"name": "get_time", "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}


def test_calls_are_parsed_only_when_every_one_is_a_well_formed_call_of_a_declared_tool() -> None:
    from inference.tools import ToolCall, call_text, parse_calls

    names = ["get_weather", "get_time"]
    calls = [ToolCall("get_weather", {"city": "Paris", "days": 2}), ToolCall("get_time", {})]
    assert parse_calls(call_text(calls, "Let me look."), names) == ("Let me look.", calls)
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>'
    assert parse_calls(broken, names) == (broken, [])
    undeclared = '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>'
    assert parse_calls(undeclared, names) == (undeclared, [])
    assert parse_calls("Just words.", names) == ("Just words.", [])


# What pydantic writes for a nested model: the arguments refer to their own $defs.
BOOKING = {
    "name": "book_table",
    "parameters": {
        "$defs": {
            "Guest": {
                "type": "object",
                "properties": {"name": {"enum": ["Ana", "Bo"]}},
                "required": ["name"],
                "additionalProperties": False,
            }
        },
        "type": "object",
        "properties": {
            "guest": {"$ref": "#/$defs/Guest"},
            "seats": {"type": "integer", "minimum": 1, "maximum": 8},
        },
        "required": ["guest", "seats"],
        "additionalProperties": False,
    },
}


@pytest.mark.parametrize(("only", "parallel"), [(None, True), ("get_weather", False), ("book_table", True)])
def test_a_required_call_of_a_random_model_always_parses_against_its_tool(
    engine: Engine, only: str | None, parallel: bool
) -> None:
    from inference.tools import calls_grammar, parse_calls

    grammar = calls_grammar([WEATHER, TIME, BOOKING], only=only, parallel=parallel)
    params = GenerationParams(max_new_tokens=200, temperature=1.0, seed=5, response_grammar=grammar)
    for prompt in PROMPTS[:2]:
        completion = engine.generate(GenerationRequest(turns=prompt, params=params))
        text, calls = parse_calls(completion.text, ["get_weather", "get_time", "book_table"])
        assert calls and text == "", completion.text
        assert completion.finish_reason == "stop"
        if not parallel:
            assert len(calls) == 1
        for call in calls:
            assert only is None or call.name == only
            schema = {"get_weather": WEATHER, "get_time": TIME, "book_table": BOOKING}[call.name][
                "parameters"
            ]
            jsonschema_rs.validate(schema, call.arguments)
