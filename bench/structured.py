"""Structured output on the default model: parse rates with and without the constraint, and its cost.

Twenty tasks (bench/schemas.py), each a question and a JSON Schema, answered
greedily by the engine twice, with the schema in the prompt both times: free,
and constrained to it. A free
answer counts as parsing when its text is a JSON document the schema
accepts; a second, kinder count also takes the first JSON object found in it
(inside a ``` fence, say). Then the decode rate of a constrained reply against
a free one, in the same run and interleaved: one at a time, and a batch of
four of each against a batch of eight free ones.

    .venv/bin/python -m bench.structured [--tokens 64] [--rounds 3]

Then function calling: ten questions, each answered by one of four tools
described in the system prompt (bench/schemas.py TOOLS), with tool_choice
"auto" (the model chooses) and "required" (decoded under the calls' grammar):
the share answered with well-formed calls whose arguments follow their tool.

Targets (issue 21): every constrained answer parses; a constrained reply's
decode rate >= 0.8x a free reply's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import jsonschema_rs

from bench import plots
from bench.engine_bench import ROWS, print_checks, record
from bench.schemas import TASKS, TOOL_QUESTIONS, TOOLS
from inference.engine.config import EngineConfig
from inference.engine.core import Engine
from inference.engine.threads import on_a_thread_of_its_own
from inference.grammar import schema_text
from inference.loading import load_model
from inference.params import GenerationParams
from inference.tools import calls_grammar, parse_calls, tools_block
from inference.types import Completion, GenerationRequest, Turn

# A schema whose one string cannot end within the speed rows' token budget:
# constrained and free replies decode the same number of tokens, in the same passes.
STORY_SCHEMA = {
    "type": "object",
    "properties": {"story": {"type": "string", "minLength": 4000}},
    "required": ["story"],
}
STORY = [Turn("user", "Write a long story about a dragon who learns to fly, as JSON with a 'story' field.")]


def follows(text: str, schema: dict[str, Any]) -> bool:
    try:
        return bool(jsonschema_rs.is_valid(schema, json.loads(text)))
    except ValueError:
        return False


def first_object(text: str) -> str:
    """The first balanced {...} in a reply (JSON the model wrapped in prose or a fence)."""
    start = text.find("{")
    decoder = json.JSONDecoder()
    while start >= 0:
        try:
            _, end = decoder.raw_decode(text, start)
            return text[start:end]
        except ValueError:
            start = text.find("{", start + 1)
    return ""


def answer_all(engine: Engine, constrained: bool, max_new_tokens: int = 256) -> list[Completion]:
    def one(task: tuple[str, dict[str, Any]]) -> Completion:
        question, schema = task
        # The same instruction either way: the free answer is told what to write.
        question = f"{question} Answer with JSON only, following this JSON Schema: {schema_text(schema)}"
        params = GenerationParams(
            max_new_tokens=max_new_tokens,
            temperature=0,
            response_schema=schema_text(schema) if constrained else None,
        )
        return engine.generate(GenerationRequest(turns=[Turn("user", question)], params=params))

    with ThreadPoolExecutor(engine.config.max_batch) as pool:
        return list(pool.map(one, TASKS))


def tool_call_rate(engine: Engine, required: bool) -> float:
    """The share of TOOL_QUESTIONS answered with well-formed calls of the tools whose
    arguments follow their schemas: as the model chooses ("auto"), or under the grammar."""
    names = [tool["name"] for tool in TOOLS]
    schemas = {tool["name"]: tool["parameters"] for tool in TOOLS}
    grammar = calls_grammar(TOOLS) if required else None

    def one(question: str) -> bool:
        turns = [Turn("system", tools_block(TOOLS)), Turn("user", question)]
        params = GenerationParams(max_new_tokens=160, temperature=0, response_grammar=grammar)
        completion = engine.generate(GenerationRequest(turns=turns, params=params))
        _, calls = parse_calls(completion.text, names)
        if required and not calls:
            print(f"    no calls ({completion.finish_reason}): {question!r} -> {completion.text[-160:]!r}")
        return bool(calls) and all(jsonschema_rs.is_valid(schemas[c.name], c.arguments) for c in calls)

    with ThreadPoolExecutor(engine.config.max_batch) as pool:
        return sum(pool.map(one, TOOL_QUESTIONS)) / len(TOOL_QUESTIONS)


def decode_rate(engine: Engine, constrained: bool, tokens: int) -> float:
    """Tokens per second after the first token, of one reply."""
    params = GenerationParams(
        max_new_tokens=tokens,
        temperature=0,
        repetition_penalty=1.0,
        response_schema=schema_text(STORY_SCHEMA) if constrained else None,
    )
    first: list[float] = []
    completion = engine.generate(
        GenerationRequest(turns=STORY, params=params),
        on_text=lambda _: first or first.append(time.perf_counter()),
    )
    done = time.perf_counter()
    return (completion.completion_tokens - 1) / (done - first[0])


def batch_rate(engine: Engine, kinds: list[bool], tokens: int) -> float:
    """Mean decode rate of the constrained replies among `kinds` sharing one batch
    (of all of them, when none is constrained)."""
    with ThreadPoolExecutor(len(kinds)) as pool:
        rates = list(pool.map(lambda constrained: decode_rate(engine, constrained, tokens), kinds))
    chosen = [rate for rate, constrained in zip(rates, kinds, strict=True) if constrained] or rates
    return statistics.mean(chosen)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per reply in the speed rows")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    args = parser.parse_args()
    from django.conf import settings

    # As the worker builds it: no OpenMP team is left beside the engine's (inference.engine.threads).
    engine = on_a_thread_of_its_own(
        lambda: Engine(
            load_model("", device="cpu", cache_dir=settings.MODEL_CACHE_DIR),
            EngineConfig(max_batch=8, max_per_owner=0),
        )
    )

    free = answer_all(engine, constrained=False)
    bound = answer_all(engine, constrained=True)
    free_as_is = sum(follows(c.text, s) for c, (_, s) in zip(free, TASKS, strict=True))
    free_found = sum(follows(first_object(c.text), s) for c, (_, s) in zip(free, TASKS, strict=True))
    constrained_ok = sum(follows(c.text, s) for c, (_, s) in zip(bound, TASKS, strict=True))
    total = len(TASKS)
    record("free answers that parse against their schema, as written", free_as_is / total * 100, "%", kind="")
    record("free answers with a JSON object in them that does", free_found / total * 100, "%", kind="")
    record("constrained answers that parse against their schema", constrained_ok / total * 100, "%", kind="")
    for (question, schema), completion in zip(TASKS, bound, strict=True):
        if not follows(completion.text, schema):
            print(
                f"    did not parse ({completion.finish_reason}): {question!r} -> {completion.text[:120]!r}"
            )

    auto_calls = tool_call_rate(engine, required=False)
    required_calls = tool_call_rate(engine, required=True)
    record("tool questions answered with well-formed calls, tool_choice auto", auto_calls * 100, "%", kind="")
    record(
        "the same, tool_choice required (decoded under the calls' grammar)",
        required_calls * 100,
        "%",
        kind="",
    )

    decode_rate(engine, True, 8)  # warm-up: builds the grammar's view of the vocabulary
    engine.stop_token_ids = []  # the free replies run to --tokens; the constrained ones end with their JSON
    # Rows of one batch decode in the same passes: a constrained row's cost shows as
    # slower passes for all of them, so a batch with constrained rows is compared
    # with a batch of free ones alone, not with the free rows beside them.
    alone_free, alone_bound, eight_free, mixed_bound = [], [], [], []
    for _ in range(args.rounds):
        alone_free.append(decode_rate(engine, False, args.tokens))
        alone_bound.append(decode_rate(engine, True, args.tokens))
        eight_free.append(batch_rate(engine, [False] * 8, args.tokens))
        mixed_bound.append(batch_rate(engine, [False, True] * 4, args.tokens))
    engine.close()
    x1_free = record("free reply x1: decode", statistics.median(alone_free))
    x1_bound = record("constrained reply x1: decode", statistics.median(alone_bound))
    x8_free = record("8 free replies in a batch: a reply's decode", statistics.median(eight_free))
    x8_bound = record("4 free + 4 constrained: a constrained reply's decode", statistics.median(mixed_bound))
    plots.write_results("structured", [asdict(row) for row in ROWS], {})

    print("\nTargets (ratios from this run):")
    print_checks(
        [
            ("every constrained answer parses", constrained_ok / total, 1.0, True),
            ("every required tool call parses against its tool", required_calls, 1.0, True),
            ("constrained x1 decode >= 0.8x free x1", x1_bound / x1_free, 0.8, True),
            ("constrained decode in a batch of 8 >= 0.8x a batch of 8 free", x8_bound / x8_free, 0.8, True),
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
