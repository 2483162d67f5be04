"""Several models at once: each conversation's replies come from its own model's workers.

The stack here runs two local models from one models file, each with its own
worker and Celery queue, as `make run` starts them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat.models import Conversation, Message, Usage
from chat.services import conversations
from inference import presence, registry
from tests.stack import Stack, stack_on_test_database

MODELS = """
default = "tiny-a"

[models.tiny-a]
kind = "local"
path = "{a}"
max_batch = 2

[models.tiny-b]
kind = "local"
path = "{b}"
engine = false

[models.upstream]
kind = "remote"
base_url = "http://127.0.0.1:9/v1"
model = "nothing-listens-here"
"""


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def models_file(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_model import build_endless_model

    other = build_endless_model(tmp_path_factory.mktemp("tiny-b"), layers=2)
    path = tmp_path_factory.mktemp("models") / "models.toml"
    path.write_text(MODELS.format(a=tiny_model_dir, b=other))
    return path


@pytest.fixture(scope="module")
def stack(django_db_setup: None, models_file: Path) -> Iterator[Stack]:
    env = {"MODELS_FILE": str(models_file), "MODEL_PATH": "", "CHAT_REPLY_TIMEOUT_S": "60"}
    with stack_on_test_database(name="models", env=env) as running:
        yield running


@pytest.fixture
def declared(settings: Any, models_file: Path, stack: Stack) -> None:
    """This process reads the same models file as the stack's."""
    settings.MODEL_REGISTRY = registry.load(models_file)
    settings.REDIS_URL = stack.redis_url


pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("declared")]


def worker_names(stack: Stack) -> dict[str, str]:
    """Each live worker's id -> the model it serves."""
    return {worker.id: worker.model for worker in presence.live_workers(stack.redis_url)}


def test_each_conversation_is_answered_by_its_own_models_worker(
    stack: Stack, owner: Any, owner_key: str
) -> None:
    listed = httpx.get(f"{stack.base_url}/v1/models", headers=bearer(owner_key)).json()["data"]
    assert [(m["id"], m["state"]) for m in listed] == [
        ("tiny-a", "ready"),
        ("tiny-b", "ready"),
        ("upstream", "ready"),  # its worker is up; its upstream is not (see below)
    ]
    answers = {}
    for model in ("tiny-a", "tiny-b"):
        httpx.post(f"{stack.base_url}/reset", headers=bearer(owner_key))  # a new conversation for each
        response = httpx.post(
            f"{stack.base_url}/chat",
            json={"message": f"Hello {model}", "model": model, "max_new_tokens": 4, "conversation_id": None},
            headers=bearer(owner_key),
            timeout=90,
        )
        assert response.status_code == 200, response.text
        answers[model] = response.json()
        # The next turn stays with the conversation's model without naming it.
        again = httpx.post(
            f"{stack.base_url}/chat",
            json={
                "message": "And again?",
                "max_new_tokens": 4,
                "conversation_id": answers[model]["conversation_id"],
            },
            headers=bearer(owner_key),
            timeout=90,
        )
        assert again.status_code == 200, again.text
    workers = worker_names(stack)
    for model, answer in answers.items():
        conversation = Conversation.objects.get(pk=answer["conversation_id"])
        assert conversation.model == model
        replies = list(conversation.messages.filter(role="assistant"))
        assert len(replies) == 2
        for reply in replies:
            assert reply.model == model
            assert workers[reply.worker] == model  # claimed by a worker of that model
    assert {row.model for row in Usage.objects.filter(user=owner)} == {"tiny-a", "tiny-b"}


def test_the_openai_api_routes_by_model(stack: Stack, owner_key: str) -> None:
    response = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json={"model": "tiny-b", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
        headers=bearer(owner_key),
        timeout=90,
    )
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "tiny-b"
    reply = Message.objects.filter(role="assistant").latest("id")
    assert reply.model == "tiny-b" and worker_names(stack)[reply.worker] == "tiny-b"


def test_a_remote_model_whose_upstream_is_down_is_503_and_an_undeclared_one_404(
    stack: Stack, owner: Any, owner_key: str
) -> None:
    httpx.post(f"{stack.base_url}/reset", headers=bearer(owner_key))
    down = httpx.post(
        f"{stack.base_url}/chat",
        json={"message": "Anyone?", "model": "upstream"},
        headers=bearer(owner_key),
        timeout=60,
    )
    assert down.status_code == 503
    assert "The model server at http://127.0.0.1:9/v1 cannot be reached" in down.json()["error"]
    # The message is kept, as for any outage.
    kept = Message.objects.get(conversation_id=down.json()["conversation_id"], role="user")
    assert kept.content == "Anyone?"

    undeclared = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]},
        headers=bearer(owner_key),
        timeout=30,
    )
    assert undeclared.status_code == 404
    assert undeclared.json()["error"]["code"] == "model_not_found"
    assert "tiny-a, tiny-b, upstream" in undeclared.json()["error"]["message"]


def test_a_conversation_changes_model_through_the_rest_api(stack: Stack, owner: Any, owner_key: str) -> None:
    created = httpx.post(
        f"{stack.base_url}/api/v1/conversations", json={"model": "tiny-b"}, headers=bearer(owner_key)
    )
    assert created.status_code == 201 and created.json()["model"] == "tiny-b"
    conversation_id = created.json()["id"]
    changed = httpx.patch(
        f"{stack.base_url}/api/v1/conversations/{conversation_id}",
        json={"model": "tiny-a"},
        headers=bearer(owner_key),
    )
    assert changed.status_code == 200 and changed.json()["model"] == "tiny-a"
    refused = httpx.patch(
        f"{stack.base_url}/api/v1/conversations/{conversation_id}",
        json={"model": "nope"},
        headers=bearer(owner_key),
    )
    assert refused.status_code == 404 and "'nope' does not exist here" in refused.json()["detail"]
    posted = httpx.post(
        f"{stack.base_url}/api/v1/conversations/{conversation_id}/messages",
        json={"content": "Hi", "max_new_tokens": 3},
        headers=bearer(owner_key),
    )
    assert posted.status_code == 202
    reply_id = posted.json()["reply"]["id"]
    deadline = time.monotonic() + 60
    while not Message.objects.get(pk=reply_id).is_finished and time.monotonic() < deadline:
        time.sleep(0.2)
    reply = Message.objects.get(pk=reply_id)
    assert reply.status == "done" and reply.model == "tiny-a"


def test_the_page_settings_change_a_conversations_model(stack: Stack, owner: Any) -> None:
    from django.test import Client

    conversation = conversations.conversation_create(user=owner)
    browser = Client()
    browser.force_login(owner)
    page = browser.get(f"/c/{conversation.pk}/")
    assert page.context["models"] == ["tiny-a", "tiny-b", "upstream"] and page.context["model"] == "tiny-a"
    url = f"/c/{conversation.pk}/settings/"
    params = {"max_new_tokens": 50, "temperature": 0.5, "top_p": 0.9, "repetition_penalty": 1.0}
    saved = browser.post(
        url, {"system_prompt": "", "model": "tiny-b", **params}, content_type="application/json"
    )
    assert saved.status_code == 200 and saved.json()["model"] == "tiny-b"
    refused = browser.post(
        url, {"system_prompt": "", "model": "nope", **params}, content_type="application/json"
    )
    assert refused.status_code == 400 and refused.json()["field"] == "model"
    conversation.refresh_from_db()
    assert conversation.model == "tiny-b"


def test_the_admin_shows_and_filters_by_model(stack: Stack, owner: Any, admin_client: Any) -> None:
    conversations.conversation_create(user=owner, title="On model B", model="tiny-b")
    conversations.conversation_create(user=owner, title="On the default", model="")
    listing = admin_client.get("/admin/chat/conversation/", {"model": "tiny-b"}).content.decode()
    assert "On model B" in listing and "On the default" not in listing


def test_a_new_chat_on_the_home_page_starts_on_the_chosen_model(stack: Stack, owner: Any) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=60) as browser:
        browser.get("/login/")
        login = {
            "username": "olivia",
            "password": "correct horse battery",
            "csrfmiddlewaretoken": browser.cookies["csrftoken"],
        }
        assert (
            browser.post("/login/", data=login, headers={"Referer": f"{stack.base_url}/login/"}).status_code
            == 302
        )
        home = browser.get("/").text
        assert 'id="start-model"' in home and '<option value="tiny-b">' in home
        csrf = {"X-CSRFToken": browser.cookies["csrftoken"]}
        started = browser.post("/new/", json={"content": "Hello B", "model": "tiny-b"}, headers=csrf)
        assert started.status_code == 201, started.text
        refused = browser.post("/new/", json={"content": "Hello?", "model": "nope"}, headers=csrf)
        assert refused.status_code == 404 and "'nope' does not exist here" in refused.json()["error"]
    conversation = Conversation.objects.get(pk=started.json()["conversation"]["id"])
    assert conversation.model == "tiny-b"
    reply = conversation.messages.get(role="assistant")
    deadline = time.monotonic() + 60
    while not reply.is_finished and time.monotonic() < deadline:
        time.sleep(0.2)
        reply.refresh_from_db()
    assert reply.status == "done" and reply.model == "tiny-b"
