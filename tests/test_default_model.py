"""The packaged SmolLM2-135M-Instruct: converted once from GGUF, then it answers facts.

These load the real default model (about 15 s for the one-time conversion,
then under a second from the cache) and run it on the CPU.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from inference.params import GenerationParams
from inference.types import GenerationRequest, Turn
from tests.stack import Stack, stack_on_test_database

pytestmark = pytest.mark.default_model

GREEDY = GenerationParams(max_new_tokens=24, temperature=0)
FRANCE = "What is the capital of France?"


@pytest.fixture(scope="module")
def default_backend():
    from django.conf import settings

    from inference.backend import TransformersBackend
    from inference.loading import load_model

    return TransformersBackend(load_model("", device="cpu", cache_dir=settings.MODEL_CACHE_DIR))


def test_the_gguf_is_cached_as_plain_safetensors(default_backend: Any) -> None:
    from django.conf import settings

    from inference.loading import gguf_cache_folder
    from inference.sizing import default_source

    folder = gguf_cache_folder(default_source(), settings.MODEL_CACHE_DIR)
    assert (folder / "model.safetensors").exists()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # loads as a plain model, not GGUF again
    assert default_backend.loaded.tokenizer.chat_template
    assert default_backend.loaded.context_tokens == 8192


def test_it_answers_and_follows_up(default_backend: Any) -> None:
    first = default_backend.generate(GenerationRequest(turns=[Turn("user", FRANCE)], params=GREEDY))
    assert "Paris" in first.text
    assert first.finish_reason == "stop"
    follow_up = default_backend.generate(
        GenerationRequest(
            turns=[Turn("user", FRANCE), Turn("assistant", first.text), Turn("user", "And of Italy?")],
            params=GREEDY,
        )
    )
    assert "Rome" in follow_up.text


@pytest.fixture(scope="module")
def default_stack(django_db_setup: None) -> Iterator[Stack]:
    with stack_on_test_database(name="default-model", env={"MODEL_PATH": ""}) as running:
        yield running


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_post_chat_answers_from_the_default_model_and_remembers(
    default_stack: Stack, owner: Any, owner_key: str
) -> None:
    headers = {"Authorization": f"Bearer {owner_key}"}
    first = httpx.post(
        f"{default_stack.base_url}/chat",
        json={"message": FRANCE, "temperature": 0},
        headers=headers,
        timeout=120,
    )
    assert first.status_code == 200, first.text
    assert "Paris" in first.json()["reply"]
    second = httpx.post(
        f"{default_stack.base_url}/chat",
        json={"message": "And of Italy?", "temperature": 0},
        headers=headers,
        timeout=120,
    )
    assert second.status_code == 200, second.text
    assert second.json()["conversation_id"] == first.json()["conversation_id"]
    assert "Rome" in second.json()["reply"]


# --- A saturated machine is not an outage ------------------------------------------


def _page_reply(stack: Stack, user: Any, conversation_id: int, text: str) -> list[dict[str, Any]]:
    """Send from the chat page's websocket; the events until the reply ends."""
    import asyncio

    import websockets

    from tests.test_consumers import session_cookie

    cookie = session_cookie(user)[1].decode()
    url = stack.base_url.replace("http://", "ws://") + f"/ws/conversations/{conversation_id}/"

    async def talk() -> list[dict[str, Any]]:
        headers = {"Cookie": cookie}
        async with websockets.connect(url, origin=stack.base_url, additional_headers=headers) as ws:
            assert json.loads(await ws.recv())["type"] == "snapshot"
            await ws.send(json.dumps({"action": "send", "content": text, "params": {"max_new_tokens": 8}}))
            events: list[dict[str, Any]] = []
            reply_id = None
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 120))
                events.append(event)
                if event["type"] == "error":
                    return events
                if event["type"] == "message.created" and event["role"] == "assistant":
                    reply_id = event["message_id"]
                if event.get("message_id") == reply_id and event["type"] in FINISHED:
                    return events

    return asyncio.run(talk())


FINISHED = {"message.done", "message.failed", "message.cancelled"}


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_while_a_long_prompt_is_prefilled_every_other_surface_still_answers(
    default_stack: Stack, owner: Any, other_user: Any, django_user_model: Any
) -> None:
    """One user's prompt near CHAT_MAX_MESSAGE_CHARS keeps the engine (and both cores) busy for
    seconds, with no event on anyone else's channel meanwhile; that must read as slow, not as down."""
    from concurrent.futures import ThreadPoolExecutor

    from chat.models import Message
    from chat.services.accounts import api_key_create
    from chat.services.conversations import conversation_create

    base = default_stack.base_url
    users = [owner, other_user] + [
        django_user_model.objects.create_user(username=f"user{i}", password="a long password 1")
        for i in range(3)
    ]
    keys = [api_key_create(user=user, name="load")[1] for user in users]
    hog, chat_key, v1_key, stream_key = keys[0], keys[1], keys[2], keys[3]
    long_prompt = ("The capital of France is Paris, and the capital of Italy is Rome. " * 240)[:15_900]
    hog_conversation = conversation_create(user=users[0])
    short = {"temperature": 0}

    def post(key: str, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{base}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=180)

    def stream(key: str) -> list[str]:
        body = {
            "model": served,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 8,
            "stream": True,
        }
        with httpx.stream(
            "POST",
            f"{base}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=180,
        ) as response:
            assert response.status_code == 200
            return [line for line in response.iter_lines() if line.startswith("data: ")]

    served = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {v1_key}"}).json()["data"][0][
        "id"
    ]
    hogged = post(
        hog,
        f"/api/v1/conversations/{hog_conversation.pk}/messages",
        {"content": long_prompt, "max_new_tokens": 1},
    )
    assert hogged.status_code == 202, hogged.text
    page_conversation = conversation_create(user=users[4])
    with ThreadPoolExecutor(4) as pool:
        chat = pool.submit(
            post, chat_key, "/chat", {"message": "Capital of France?", "max_new_tokens": 8, **short}
        )
        plain = pool.submit(
            post, v1_key, "/v1/chat/completions",
            {"model": served, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8},
        )  # fmt: skip
        streamed = pool.submit(stream, stream_key)
        page = pool.submit(_page_reply, default_stack, users[4], page_conversation.pk, "Hello")
        chat_answer, plain_answer, stream_lines, page_events = (
            chat.result(), plain.result(), streamed.result(), page.result()
        )  # fmt: skip

    assert chat_answer.status_code == 200 and chat_answer.json()["success"] is True, chat_answer.text
    assert plain_answer.status_code == 200, plain_answer.text
    assert plain_answer.json()["choices"][0]["finish_reason"] in {"stop", "length"}
    assert stream_lines[-1] == "data: [DONE]", stream_lines[-3:]
    assert not any('"error"' in line for line in stream_lines)
    assert page_events[-1]["type"] == "message.done", page_events[-1]
    # The long prompt itself is answered too, after the short questions asked while it was prefilled:
    # nobody waited behind it.
    hog_reply = Message.objects.get(pk=hogged.json()["reply"]["id"])
    deadline = time.monotonic() + 120
    while hog_reply.status != Message.Status.DONE and time.monotonic() < deadline:
        time.sleep(0.2)
        hog_reply.refresh_from_db()
    assert hog_reply.status == Message.Status.DONE and hog_reply.prompt_tokens > 3000
    others = Message.objects.filter(role="assistant", conversation__owner__in=users[1:])
    assert len(others) == 4
    assert all(other.first_token_at < hog_reply.first_token_at for other in others)
    assert not Message.objects.filter(error_code="worker_unavailable").exists()
