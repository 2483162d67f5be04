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
    env = {
        "MODEL_PATH": str(model),
        "GENERATION_MAX_NEW_TOKENS": "4000",
        "CHAT_REPLY_TIMEOUT_S": "120",
        # Short passes while nobody decodes, so a long prompt takes many of them.
        "ENGINE_PREFILL_PASS_S": "0.02",
    }
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


def test_a_short_question_after_another_users_long_prompt_gets_its_first_token_first(
    stack: Stack, owner: Any, other_user: Any
) -> None:
    long_key = api_key_create(user=owner, name="long")[1]
    short_key = api_key_create(user=other_user, name="short")[1]
    document = " ".join(f"Paragraph {i}: the {i % 7}th river runs past {i % 11} towns." for i in range(80))

    def chat(api_key: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(
            f"{stack.base_url}/chat", json=body, headers={"Authorization": f"Bearer {api_key}"}, timeout=180
        )

    with ThreadPoolExecutor(1) as pool:
        long = pool.submit(
            chat, long_key, {"message": f"Summarise: {document}", "temperature": 0, "max_new_tokens": 4}
        )
        deadline = time.monotonic() + 60
        streaming = Message.objects.filter(conversation__owner=owner, role="assistant", status="streaming")
        while not streaming.exists() and not long.done():
            assert time.monotonic() < deadline, "the long prompt never started"
            time.sleep(0.01)
        short = chat(short_key, {"message": "Hi", "temperature": 0, "max_new_tokens": 4})
        answered = long.result()
    assert answered.status_code == short.status_code == 200, (answered.text, short.text)
    assert answered.json()["usage"]["prompt_tokens"] > 2000
    long_reply = Message.objects.get(pk=answered.json()["message_id"])
    short_reply = Message.objects.get(pk=short.json()["message_id"])
    # Asked after the long prompt was being worked on, answered before it.
    assert long_reply.first_token_at is not None and short_reply.first_token_at is not None
    assert short_reply.first_token_at < long_reply.first_token_at
