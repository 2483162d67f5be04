"""Cache affinity: with two workers of one model, a conversation stays with the worker
that holds its prefix cache, and moves on when that worker dies."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat.models import Message
from inference import presence
from tests.stack import Stack, stack_on_test_database

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def stack(django_db_setup: None, tiny_model_dir: Path) -> Iterator[Stack]:
    env = {"MODEL_PATH": str(tiny_model_dir), "WORKER_HEARTBEAT_TTL_S": "3", "CHAT_REPLY_TIMEOUT_S": "60"}
    with stack_on_test_database(name="affinity", env=env, copies=2) as running:
        yield running


def turn(stack: Stack, key: str, conversation_id: int | None, text: str) -> Message:
    response = httpx.post(
        f"{stack.base_url}/chat",
        json={"message": text, "conversation_id": conversation_id, "max_new_tokens": 4},
        headers={"Authorization": f"Bearer {key}"},
        timeout=90,
    )
    assert response.status_code == 200, response.text
    return Message.objects.get(pk=response.json()["message_id"])


def test_a_conversation_stays_with_its_worker_and_moves_on_when_it_dies(
    stack: Stack, owner: Any, owner_key: str
) -> None:
    workers = presence.live_workers(stack.redis_url)
    assert len(workers) == 2 and all(worker.queue for worker in workers)
    first = turn(stack, owner_key, None, "Hello there")
    holder = first.worker
    for text in ("Second turn", "Third turn", "Fourth turn"):
        assert turn(stack, owner_key, first.conversation_id, text).worker == holder

    # A second conversation may start anywhere, and then stays where it started.
    httpx.post(f"{stack.base_url}/reset", headers={"Authorization": f"Bearer {owner_key}"})
    other = turn(stack, owner_key, None, "Another chat")
    assert turn(stack, owner_key, other.conversation_id, "More").worker == other.worker

    # The holder dies: once its heartbeat is gone, the conversation moves to the other worker.
    (dead,) = [w for w in workers if w.id == holder]
    process = stack.workers[0] if dead.name.split("@")[0] == "affinity" else stack.workers[1]
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 30
    while holder in presence.live_worker_ids(stack.redis_url) and time.monotonic() < deadline:
        time.sleep(0.2)
    moved = turn(stack, owner_key, first.conversation_id, "Still there?")
    assert moved.status == "done" and moved.worker not in {holder, ""}
    assert turn(stack, owner_key, first.conversation_id, "And now?").worker == moved.worker
