"""POST /chat and POST /reset: authentication, validation, isolation and errors.

The happy path needs a worker and lives in test_stack.py; everything here is
decided before a job would run.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from chat.models import Conversation, Message
from chat.services import accounts, conversations

pytestmark = pytest.mark.django_db


def chat(client: Client, body: Any, **headers: str) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, str) else json.dumps(body)
    response = client.post("/chat", raw, content_type="application/json", headers=headers)
    assert response["Content-Type"] == "application/json"
    return response.status_code, response.json()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def no_broker(settings: Any, dead_redis_url: str) -> None:
    settings.REDIS_URL = dead_redis_url


def test_anonymous_callers_get_401(client: Client) -> None:
    status, body = chat(client, {"message": "hi"})
    assert status == 401
    assert body["success"] is False and "Authorization: Bearer" in body["error"]


def test_a_wrong_or_revoked_key_gets_401(client: Client, owner: Any, owner_key: str) -> None:
    assert chat(client, {"message": "hi"}, **bearer(owner_key + "x"))[0] == 401
    accounts.api_key_revoke(user=owner, key_id=owner.api_keys.get().pk)
    assert chat(client, {"message": "hi"}, **bearer(owner_key))[0] == 401


def test_a_browser_session_needs_the_csrf_token(owner: Any, no_broker: None) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(owner)
    status, body = chat(browser, {"message": "hi"})
    assert status == 403 and "CSRF" in body["error"]
    browser.get("/profile/")  # a page with a form sets the csrftoken cookie
    token = browser.cookies["csrftoken"].value
    status, body = chat(browser, {"message": "hi"}, **{"X-CSRFToken": token})
    assert status == 503  # past authentication; no broker in this test


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("{not json", "must be a JSON object"),
        ("[1, 2]", "must be a JSON object"),
        ({}, "message: must be a non-empty string"),
        ({"message": "   "}, "message: must be a non-empty string"),
        ({"message": 42}, "message: must be a non-empty string"),
        ({"message": "x" * 16001}, "message: must be at most 16000 characters"),
        ({"message": "hi", "temperature": "warm"}, "temperature: must be a number in [0, 2]"),
        ({"message": "hi", "top_p": 0}, "top_p: must be a number in (0, 1], got 0"),
        ({"message": "hi", "max_new_tokens": 100000}, "max_new_tokens: must be a whole number from 1 to"),
        ({"message": "hi", "conversation_id": "abc"}, "conversation_id: must be a positive whole number"),
        ({"message": "hi", "modle": "tiny"}, "Unknown field(s): modle"),
        ({"message": "hi", "model": 7}, "model: must be the name of a model"),
    ],
)
def test_invalid_input_gets_400_saying_what_is_wrong(
    client: Client, owner: Any, owner_key: str, body: Any, fragment: str
) -> None:
    status, answer = chat(client, body, **bearer(owner_key))
    assert status == 400
    assert answer["success"] is False and fragment in answer["error"]
    assert not Message.objects.exists()  # nothing was queued


def test_another_users_conversation_is_404_and_untouched(
    client: Client, owner: Any, other_user: Any, no_broker: None
) -> None:
    theirs = conversations.conversation_create(user=other_user)
    key = accounts.api_key_create(user=owner, name="k")[1]
    status, body = chat(client, {"message": "let me in", "conversation_id": theirs.pk}, **bearer(key))
    assert status == 404 and body == {"success": False, "error": f"Conversation {theirs.pk} not found."}
    assert theirs.messages.count() == 0
    status, _ = chat(client, {"message": "x", "conversation_id": 999_999}, **bearer(key))
    assert status == 404


def test_broker_down_is_503_and_the_message_is_kept(
    client: Client, owner: Any, owner_key: str, no_broker: None
) -> None:
    status, body = chat(client, {"message": "Remember me"}, **bearer(owner_key))
    assert status == 503
    assert "unreachable" in body["error"] and "Your message was saved" in body["error"]
    conversation = Conversation.objects.get(pk=body["conversation_id"], owner=owner)
    user_message, reply = conversation.messages.all()
    assert user_message.content == "Remember me"
    assert reply.pk == body["message_id"]
    assert reply.status == Message.Status.FAILED and reply.error_code == "worker_unavailable"


def test_no_worker_running_is_503_at_once(
    client: Client, owner: Any, owner_key: str, settings: Any, redis_url: str
) -> None:
    settings.REDIS_URL = redis_url  # a live broker with no worker heartbeat
    status, body = chat(client, {"message": "anyone there?"}, **bearer(owner_key))
    assert status == 503 and "No generation worker serves the model" in body["error"]
    assert Message.objects.get(role="user").content == "anyone there?"


def test_reset_starts_a_new_conversation_for_the_next_message(
    client: Client, owner: Any, owner_key: str, no_broker: None
) -> None:
    first = chat(client, {"message": "one"}, **bearer(owner_key))[1]["conversation_id"]
    response = client.post("/reset", headers=bearer(owner_key))
    assert response.status_code == 200
    fresh = response.json()["conversation_id"]
    assert fresh != first
    assert chat(client, {"message": "two"}, **bearer(owner_key))[1]["conversation_id"] == fresh
    assert client.post("/reset").status_code == 401


def test_a_model_that_is_not_declared_is_404_naming_the_ones_that_are(
    client: Client, owner: Any, owner_key: str
) -> None:
    status, answer = chat(client, {"message": "hi", "model": "gpt-4"}, **bearer(owner_key))
    assert status == 404
    assert "'gpt-4' does not exist here; the models are SmolLM2-135M-Instruct" in answer["error"]
    assert not Message.objects.exists()


@pytest.mark.parametrize("conversation_id", [2**63, 2**70])
def test_an_id_past_the_databases_integers_is_not_found(
    client: Client, owner_key: str, conversation_id: int
) -> None:
    # Such a number breaks the database driver (SQLite's OverflowError,
    # PostgreSQL's "integer out of range"); it names no conversation.
    status, body = chat(client, {"message": "hi", "conversation_id": conversation_id}, **bearer(owner_key))
    assert status == 404
    assert body["error"] == f"Conversation {conversation_id} not found."
    assert not Message.objects.exists()  # nothing stored on the way
