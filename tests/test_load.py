"""Fairness on the real stack: one user's flood does not hold up everyone else.

Asserts the order of events from the stored rows (claim, first token,
finish), never a wall-clock time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from chat.models import Message
from chat.services.accounts import api_key_create
from chat.services.conversations import conversation_create
from tests.stack import Stack, stack_on_test_database

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

FLOOD = 40
CAP = 4  # MAX_CONCURRENT_REPLIES' default


@pytest.fixture(scope="module")
def stack(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from tests.tiny_model import build_endless_model

    model = build_endless_model(tmp_path_factory.mktemp("load") / "tiny-endless")
    env = {"MODEL_PATH": str(model), "GENERATION_MAX_NEW_TOKENS": "4000", "CHAT_REPLY_TIMEOUT_S": "120"}
    with stack_on_test_database(name="load", env=env) as running:
        yield running


def test_a_flood_from_one_user_does_not_hold_up_another(stack: Stack, owner: Any, other_user: Any) -> None:
    flooder, key = owner, api_key_create(user=owner, name="flood")[1]
    patient_key = api_key_create(user=other_user, name="patient")[1]
    targets = [conversation_create(user=flooder).pk for _ in range(FLOOD)]
    # Replies that run to max_new_tokens: long enough for a backlog to queue behind them.
    long = {"message": "Hello", "temperature": 0, "max_new_tokens": 300}

    def chat(api_key: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(
            f"{stack.base_url}/chat", json=body, headers={"Authorization": f"Bearer {api_key}"}, timeout=180
        )

    with ThreadPoolExecutor(FLOOD) as pool:
        flood = [pool.submit(chat, key, {**long, "conversation_id": target}) for target in targets]
        deadline = time.monotonic() + 60
        while not Message.objects.filter(conversation__owner=flooder, status="streaming").exists():
            assert time.monotonic() < deadline, "the flood never started"
            time.sleep(0.05)
        patient = chat(patient_key, {"message": "Hi", "temperature": 0, "max_new_tokens": 8})
        answers = [future.result() for future in flood]

    assert patient.status_code == 200, patient.text
    refused = [answer for answer in answers if answer.status_code == 429]
    accepted = [answer for answer in answers if answer.status_code == 200]
    assert len(refused) + len(accepted) == FLOOD, {answer.status_code for answer in answers}
    assert refused and all(int(answer.headers["Retry-After"]) > 0 for answer in refused)
    assert "at most 4 may run at once" in refused[0].json()["error"]

    flood_replies = list(Message.objects.filter(conversation__owner=flooder, role="assistant"))
    assert len(flood_replies) == len(accepted)  # a refused request stores nothing
    # Never more than the cap of one user's replies in the works at once.
    moments = sorted(
        [(reply.created, 1) for reply in flood_replies] + [(reply.finished_at, -1) for reply in flood_replies]
    )
    in_flight = peak = 0
    for _, change in moments:
        in_flight += change
        peak = max(peak, in_flight)
    assert peak <= CAP
    # The other user's reply started while the flood's first replies were still being written.
    mine = Message.objects.get(pk=patient.json()["message_id"])
    finished_first = [reply for reply in flood_replies if reply.finished_at < mine.first_token_at]
    assert len(finished_first) < CAP, (len(finished_first), len(flood_replies))
