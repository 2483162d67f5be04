"""The rules of the one submit path, driven through all four surfaces with the same scenarios.

Each surface parses its own input and formats its own answer; the rules
(busy conversation, per-user limits, sizes, parameter resolution and
validation) live once in `reply_submit`, so each scenario must end the same
way on the page's websocket, `POST /chat`, `/v1/chat/completions` and the
REST API. The broker is stood in for by `queued` (the real publish runs in
the stack tests); nothing here waits for a worker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from django.utils import timezone

from chat.models import Conversation, Message, Profile, Usage
from chat.services import conversations
from inference import registry
from tests.conftest import exchange, finish
from tests.test_consumers import ORIGIN, communicator, session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("queued", "quick")]

SURFACES = ["page", "chat", "v1", "rest"]
# The page has no HTTP status: its error events carry the refusal's code.
CODE_STATUS = {
    "invalid_request": 400,
    "conversation_busy": 409,
    "too_many_concurrent_replies": 429,
    "rate_limited": 429,
    "quota_exceeded": 429,
}


@pytest.fixture
def quick(settings: Any) -> None:
    settings.CHAT_REPLY_TIMEOUT_S = 0.2  # /chat and /v1 stop waiting at once: no worker runs here
    settings.MODEL_REGISTRY = registry.single("/models/tiny.gguf")  # the model /v1 requests name


@dataclass
class Outcome:
    status: int  # HTTP status; for the page, the status its error code stands for (200: accepted)
    error: str = ""
    retry_after: str | None = None


class Surfaces:
    """Sends one message through a named surface, as its own clients do."""

    def __init__(self, user: Any, key: str) -> None:
        self.user = user
        self.key = key

    def send(self, surface: str, conversation: Conversation | None, content: str, **params: Any) -> Outcome:
        return getattr(self, surface)(conversation, content, params)

    def _http(self, url: str, body: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        response = Client().post(
            url,
            json.dumps(body),
            content_type="application/json",
            headers={"Authorization": f"Bearer {self.key}"},
        )
        assert response["Content-Type"].startswith("application/json")
        return response, response.json()

    def page(self, conversation: Conversation | None, content: str, params: dict[str, Any]) -> Outcome:
        return self.page_action(conversation, {"action": "send", "content": content, "params": params})

    def page_action(self, conversation: Conversation | None, action: dict[str, Any]) -> Outcome:
        assert conversation is not None
        cookie = session_cookie(self.user)

        async def scenario() -> dict[str, Any]:
            ws = communicator(conversation.pk, ORIGIN, cookie)
            assert (await ws.connect())[0]
            await ws.receive_json_from(timeout=5)  # snapshot
            await ws.send_json_to(action)
            event = await ws.receive_json_from(timeout=5)
            await ws.disconnect()
            return event

        event = async_to_sync(scenario)()
        if event["type"] == "error":
            retry = event.get("retry_after")
            return Outcome(CODE_STATUS[event["code"]], event["error"], None if retry is None else str(retry))
        return Outcome(200)

    def chat(self, conversation: Conversation | None, content: str, params: dict[str, Any]) -> Outcome:
        body = {"message": content, **params}
        if conversation is not None:
            body["conversation_id"] = conversation.pk
        response, answer = self._http("/chat", body)
        return Outcome(response.status_code, answer.get("error", ""), response.get("Retry-After"))

    def v1(self, conversation: Conversation | None, content: str, params: dict[str, Any]) -> Outcome:
        body = {"model": "tiny", "messages": [{"role": "user", "content": content}], **params}
        if "max_new_tokens" in body:
            body["max_tokens"] = body.pop("max_new_tokens")
        response, answer = self._http("/v1/chat/completions", body)
        error = answer.get("error", {}).get("message", "") if isinstance(answer.get("error"), dict) else ""
        return Outcome(response.status_code, error, response.get("Retry-After"))

    def rest(self, conversation: Conversation | None, content: str, params: dict[str, Any]) -> Outcome:
        assert conversation is not None
        response, answer = self._http(
            f"/api/v1/conversations/{conversation.pk}/messages", {"content": content, **params}
        )
        return Outcome(response.status_code, answer.get("detail", ""), response.get("Retry-After"))


@pytest.fixture
def surfaces(owner: Any, owner_key: str) -> Surfaces:
    return Surfaces(owner, owner_key)


ACCEPTED = {"page": 200, "chat": 504, "v1": 504, "rest": 202}  # /chat and /v1 then wait in vain


def accepted(surface: str, outcome: Outcome) -> bool:
    return outcome.status == ACCEPTED[surface]


def user_messages(owner: Any) -> int:
    return Message.objects.filter(conversation__owner=owner, role="user").count()


@pytest.mark.parametrize("surface", ["page", "chat", "rest"])  # /v1 always starts a new conversation
def test_a_busy_conversation_refuses_a_second_message(surfaces: Surfaces, owner: Any, surface: str) -> None:
    conversation = conversations.conversation_create(user=owner)
    assert accepted(surface, surfaces.send(surface, conversation, "First"))
    before = user_messages(owner)
    outcome = surfaces.send(surface, conversation, "Second")
    assert outcome.status == 409 and "still answering" in outcome.error
    assert outcome.retry_after is not None
    assert user_messages(owner) == before
    # Once the reply has ended, the conversation takes the next message.
    finish(Message.objects.filter(conversation=conversation, role="assistant").get())
    assert accepted(surface, surfaces.send(surface, conversation, "Second"))


@pytest.mark.parametrize("surface", SURFACES)
def test_over_the_concurrent_cap_is_429_everywhere(
    surfaces: Surfaces, owner: Any, surface: str, settings: Any
) -> None:
    settings.MAX_CONCURRENT_REPLIES = 1
    elsewhere = conversations.conversation_create(user=owner)
    _, running = exchange(elsewhere, "Running", "")
    Message.objects.filter(pk=running.pk).update(status=Message.Status.PENDING)
    conversation = conversations.conversation_create(user=owner)
    before = user_messages(owner)
    outcome = surfaces.send(surface, conversation, "One more")
    assert outcome.status == 429 and "at most 1 may run at once" in outcome.error
    assert outcome.retry_after is not None and int(outcome.retry_after) > 0
    assert user_messages(owner) == before


@pytest.mark.parametrize("surface", SURFACES)
def test_over_the_rate_is_429_with_when_to_retry(
    surfaces: Surfaces, owner: Any, surface: str, settings: Any
) -> None:
    settings.MAX_REPLIES_PER_MINUTE = 3
    Profile.objects.update_or_create(
        user=owner, defaults={"rate_allowance": 0.0, "rate_checked_at": timezone.now()}
    )
    conversation = conversations.conversation_create(user=owner)
    before = user_messages(owner)
    outcome = surfaces.send(surface, conversation, "Too soon")
    assert outcome.status == 429 and "at most 3 replies a minute" in outcome.error
    # One reply's worth of the bucket refills in 60 / 3 s.
    assert outcome.retry_after is not None and 15 <= int(outcome.retry_after) <= 20
    assert user_messages(owner) == before


@pytest.mark.parametrize("surface", SURFACES)
def test_over_the_daily_token_budget_is_429_with_the_reset_time(
    surfaces: Surfaces, owner: Any, surface: str, settings: Any
) -> None:
    settings.QUOTA_DAILY_TOKENS = 1000
    today = timezone.localdate()
    Usage.objects.create(
        user=owner, day=today, model="tiny", replies=3, prompt_tokens=900, completion_tokens=100
    )
    conversation = conversations.conversation_create(user=owner)
    before = user_messages(owner)
    outcome = surfaces.send(surface, conversation, "One more?")
    assert outcome.status == 429
    assert "used 1,000 of your 1,000 tokens for this day" in outcome.error
    midnight = timezone.make_aware(datetime.combine(today + timedelta(days=1), time.min))
    assert f"resets at {midnight.isoformat(timespec='minutes')}" in outcome.error
    wait_s = (midnight - timezone.now()).total_seconds()
    assert outcome.retry_after is not None and abs(int(outcome.retry_after) - wait_s) <= 5
    assert user_messages(owner) == before


@pytest.mark.parametrize("surface", SURFACES)
def test_a_users_own_monthly_budget_overrides_the_sites(
    surfaces: Surfaces, owner: Any, surface: str, settings: Any
) -> None:
    settings.QUOTA_MONTHLY_TOKENS = 0  # no site limit...
    Profile.objects.update_or_create(user=owner, defaults={"monthly_token_limit": 500})  # ...but theirs
    month_start = timezone.localdate().replace(day=1)
    Usage.objects.create(user=owner, day=month_start, model="tiny", prompt_tokens=400, completion_tokens=150)
    conversation = conversations.conversation_create(user=owner)
    outcome = surfaces.send(surface, conversation, "Still there?")
    assert outcome.status == 429 and "550 of your 500 tokens for this month" in outcome.error
    Profile.objects.filter(user=owner).update(monthly_token_limit=0)  # 0: no limit for this user
    assert surfaces.send(surface, conversation, "And now?").status in {200, 201, 202, 504}


@pytest.mark.parametrize("surface", SURFACES)
def test_an_oversized_message_is_400_naming_the_limit(
    surfaces: Surfaces, owner: Any, surface: str, settings: Any
) -> None:
    settings.CHAT_MAX_MESSAGE_CHARS = 50
    conversation = conversations.conversation_create(user=owner)
    outcome = surfaces.send(surface, conversation, "x" * 51)
    assert outcome.status == 400 and "must be at most 50 characters, got 51" in outcome.error
    assert user_messages(owner) == 0
    assert accepted(surface, surfaces.send(surface, conversation, "x" * 50))


def test_an_oversized_edit_is_refused_and_changes_nothing(
    surfaces: Surfaces, owner: Any, settings: Any
) -> None:
    settings.CHAT_MAX_MESSAGE_CHARS = 50
    conversation = conversations.conversation_create(user=owner)
    question, _ = exchange(conversation, "Short question", "Answer")
    outcome = surfaces.page_action(conversation, {"action": "edit", "content": "y" * 51})
    assert outcome.status == 400 and "must be at most 50 characters, got 51" in outcome.error
    question.refresh_from_db()
    assert question.content == "Short question"
    assert conversation.messages.count() == 2


@pytest.mark.parametrize("surface", ["page", "v1", "rest"])  # /chat takes no system prompt
def test_an_oversized_system_prompt_is_400(
    surfaces: Surfaces, owner: Any, owner_key: str, surface: str, settings: Any
) -> None:
    settings.CHAT_MAX_MESSAGE_CHARS = 50
    prompt = "s" * 51
    api = {"Authorization": f"Bearer {owner_key}"}
    if surface == "page":
        conversation = conversations.conversation_create(user=owner)
        browser = Client()
        browser.force_login(owner)
        response = browser.post(
            f"/c/{conversation.pk}/settings/",
            json.dumps({"system_prompt": prompt, "max_new_tokens": 20, "temperature": 0.5, "top_p": 0.9,
                        "repetition_penalty": 1.1}),
            content_type="application/json",
        )  # fmt: skip
        status, error = response.status_code, response.json()["error"]
    elif surface == "v1":
        body = {
            "model": "tiny",
            "messages": [{"role": "system", "content": prompt}, {"role": "user", "content": "Hi"}],
        }
        response = Client().post(
            "/v1/chat/completions", json.dumps(body), content_type="application/json", headers=api
        )
        status, error = response.status_code, response.json()["error"]["message"]
    else:
        response = Client().post(
            "/api/v1/conversations",
            json.dumps({"system_prompt": prompt}),
            content_type="application/json",
            headers=api,
        )
        status, error = response.status_code, response.json()["detail"]
    assert (status == 400 and "system_prompt" in error) or "messages" in error
    assert "must be at most 50 characters, got 51" in error
    assert not Conversation.objects.filter(system_prompt=prompt).exists()


@pytest.mark.parametrize("surface", SURFACES)
def test_parameters_left_out_resolve_request_then_conversation_then_profile_then_site(
    surfaces: Surfaces, owner: Any, surface: str
) -> None:
    Profile.objects.update_or_create(
        user=owner, defaults={"default_params": {"temperature": 0.3, "top_p": 0.5}}
    )
    conversation = conversations.conversation_create(user=owner)
    Conversation.objects.filter(pk=conversation.pk).update(params={"top_p": 0.8})
    assert accepted(surface, surfaces.send(surface, conversation, "Hello", max_new_tokens=7))
    reply = Message.objects.filter(conversation__owner=owner, role="assistant").get()
    params = reply.params
    # The request's max_new_tokens, the profile's temperature, the site's repetition penalty;
    # top_p from the conversation's settings, or for /v1 (a new conversation each time) the profile's.
    assert params["max_new_tokens"] == 7 and params["temperature"] == 0.3
    assert params["repetition_penalty"] == 1.05
    assert params["top_p"] == (0.5 if surface == "v1" else 0.8)


@pytest.mark.parametrize("surface", SURFACES)
def test_an_invalid_parameter_is_400_naming_the_field_and_range(
    surfaces: Surfaces, owner: Any, surface: str
) -> None:
    conversation = conversations.conversation_create(user=owner)
    outcome = surfaces.send(surface, conversation, "Hello", temperature=5)
    assert outcome.status == 400
    assert "temperature: must be a number in [0, 2]" in outcome.error and "got 5" in outcome.error
    assert user_messages(owner) == 0


@pytest.mark.parametrize("surface", ["chat", "v1", "rest"])
def test_an_unexpected_failure_is_still_json_on_the_http_surfaces(
    surfaces: Surfaces, owner: Any, surface: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chat import delivery

    def broken(**kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(delivery, "reply_submit", broken)
    outcome = surfaces.send(surface, conversations.conversation_create(user=owner), "Hello")
    assert outcome.status == 500 and "unexpected error" in outcome.error


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("/chat", lambda body: body["error"]),
        ("/v1/chat/completions", lambda body: body["error"]["message"]),
        ("/api/v1/conversations", lambda body: body["detail"]),
    ],
)
def test_a_body_over_the_upload_limit_is_413_in_each_apis_json(
    owner_key: str, settings: Any, url: str, error: Any
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = Client().post(
        url,
        json.dumps({"message": "x" * 2000}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {owner_key}"},
    )
    assert response.status_code == 413 and response["Content-Type"].startswith("application/json")
    assert "larger than 1000 bytes" in error(response.json())


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("/chat", lambda body: body["error"]),
        ("/v1/chat/completions", lambda body: body["error"]["message"]),
        ("/api/v1/conversations", lambda body: body["detail"]),
    ],
)
@pytest.mark.parametrize("sent", ["[1, 2]", '"text"', "7", "[" * 100_000 + "]" * 100_000])
def test_a_body_that_is_not_a_json_object_is_400_in_each_apis_json(
    owner_key: str, url: str, error: Any, sent: str
) -> None:
    response = Client().post(
        url, sent, content_type="application/json", headers={"Authorization": f"Bearer {owner_key}"}
    )
    assert response.status_code == 400 and response["Content-Type"].startswith("application/json")
    assert "must be a JSON object" in error(response.json())
    assert not Conversation.objects.exists()
