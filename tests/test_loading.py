"""Model loading is visible: the worker says so from its start, and the web tells people."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from chat import delivery
from chat.models import Message
from chat.services import conversations
from inference import presence, registry

pytestmark = pytest.mark.django_db


@pytest.fixture
def loading_worker(settings: Any, redis_url: str) -> Iterator[presence.Heartbeat]:
    """A worker's heartbeat as a worker announces itself while it loads its model."""
    settings.REDIS_URL = redis_url
    settings.MODEL_REGISTRY = registry.single("/models/tiny.gguf")
    info = presence.WorkerInfo(
        id="loader/1/a",
        name="loader",
        model="tiny",
        device="cpu",
        since=time.time(),
        state="loading",
        progress=0,
    )
    heartbeat = presence.Heartbeat(redis_url, info, ttl_s=30)
    heartbeat.start()
    heartbeat.update(progress=40, stage="converting the GGUF file (once)")
    yield heartbeat
    heartbeat.stop()


def test_a_message_sent_while_the_model_loads_waits_in_the_queue_for_it(
    client: Client,
    owner: Any,
    owner_key: str,
    loading_worker: presence.Heartbeat,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from celery import current_app

    published: list[tuple[Any, str]] = []  # the broker's part runs in the stack tests
    monkeypatch.setattr(
        current_app, "send_task", lambda name, args, queue, retry: published.append((args, queue))
    )
    conversation = conversations.conversation_create(user=owner)
    posted = client.post(
        f"/api/v1/conversations/{conversation.pk}/messages",
        json.dumps({"content": "Hi"}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {owner_key}"},
    )
    assert posted.status_code == 202
    reply = Message.objects.get(pk=posted.json()["reply"]["id"])
    # Queued for the model's workers, which take it once loaded (the browser test follows it there).
    assert reply.status == Message.Status.PENDING and reply.queued_at is not None and reply.error_code == ""
    assert published == [([reply.pk], registry.queue_for("tiny"))]


def test_a_client_that_asks_not_to_wait_gets_503_with_retry_after_while_the_model_loads(
    client: Client, owner_key: str, loading_worker: presence.Heartbeat
) -> None:
    headers = {"Authorization": f"Bearer {owner_key}", "Prefer": "wait=0"}
    chat = client.post(
        "/chat", json.dumps({"message": "Hi"}), content_type="application/json", headers=headers
    )
    assert chat.status_code == 503 and int(chat["Retry-After"]) > 0
    assert "The model tiny is loading (40%: converting the GGUF file (once))" in chat.json()["error"]
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]}
    v1 = client.post(
        "/v1/chat/completions", json.dumps(body), content_type="application/json", headers=headers
    )
    assert v1.status_code == 503 and int(v1["Retry-After"]) > 0
    error = v1.json()["error"]
    assert error["code"] == "model_loading" and "is loading" in error["message"]
    # The messages are kept; the replies say why they did not run.
    assert Message.objects.filter(role="user").count() == 2
    assert set(Message.objects.filter(role="assistant").values_list("error_code", flat=True)) == {
        "model_loading"
    }


@pytest.mark.parametrize(
    ("prefer", "waits"),
    [("", True), ("wait=0", False), ("respond-async, wait=0", False), ('wait="0"', False), ("wait=10", True)],
)
def test_the_prefer_header_says_whether_a_reply_waits_for_its_model(prefer: str, waits: bool) -> None:
    assert delivery.waits_for_model(prefer) is waits


def test_the_page_status_says_loading_with_the_percentage_then_ready(
    client: Client, owner: Any, loading_worker: presence.Heartbeat
) -> None:
    client.force_login(owner)
    status = client.get("/status/").json()
    assert status == {
        "models": [
            {"name": "tiny", "state": "loading", "progress": 40, "stage": "converting the GGUF file (once)"}
        ]
    }
    loading_worker.update(state="ready", progress=100, stage="")
    assert client.get("/status/").json()["models"][0]["state"] == "ready"
    assert Client().get("/status/").status_code == 302  # to the login page


def test_no_worker_tells_the_redis_url_to_start_one_with(
    client: Client, owner_key: str, settings: Any, redis_url: str
) -> None:
    settings.REDIS_URL = redis_url.replace("redis://", "redis://:s3cret@")
    headers = {"Authorization": f"Bearer {owner_key}"}
    answer = client.post(
        "/chat", json.dumps({"message": "Hi"}), content_type="application/json", headers=headers
    )
    assert answer.status_code == 503
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    assert f"REDIS_URL=redis://127.0.0.1:{port}/0 make worker" in answer.json()["error"]
    assert "s3cret" not in answer.json()["error"]


def test_a_worker_announces_loading_before_ready(
    tiny_model_dir: Path, redis_url: str, tmp_path: Path
) -> None:
    """The real worker start-up: the heartbeat says loading (with stages) before the model is in."""
    from inference import worker

    seen: list[tuple[str, int, str]] = []
    original = presence.Heartbeat._write

    def record(self: presence.Heartbeat, client: Any) -> None:
        info = self._info
        seen.append((info.state, info.progress, info.stage))
        original(self, client)

    config = worker.WorkerConfig(
        name="tiny-one", model_path=str(tiny_model_dir), device="cpu", cache_dir=tmp_path
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(presence.Heartbeat, "_write", record)
        worker.start(config, hostname="loader@test", redis_url=redis_url, heartbeat_ttl_s=30)
    try:
        (live,) = presence.live_workers(redis_url)
        # It goes by its name in the registry, and so do its replies.
        assert live.ready and live.model == "tiny-one" and live.progress == 100
        assert worker.backend().model_name == "tiny-one"
    finally:
        worker.stop()
    assert seen[0] == ("loading", 0, "")
    assert ("loading", 10, "loading the weights") in seen
    assert seen[-1] == ("ready", 100, "")
    assert all(state == "loading" for state, _, _ in seen[:-1])
