"""The OpenAI-compatible API: /v1/models and /v1/chat/completions.

Validation, authentication and the errors decided before any job runs are
tested in-process; completions, streaming, usage, disconnects and storage go
through the real stack (uvicorn, a Celery worker with a tiny model, embedded
Redis) over HTTP, and through the official `openai` client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from django.test import Client
from pydantic import BaseModel, Field

from chat.models import Conversation, Message
from chat.services import conversations, profiles
from inference import presence, registry
from tests.conftest import exchange
from tests.stack import Stack, stack_on_test_database
from tests.test_structured import WEATHER

URL = "/v1/chat/completions"
MODEL = "tiny"  # the in-process tests' configured model (MODEL_PATH=/models/tiny.gguf)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def ask(content: str = "Hello", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


# --- In-process: everything decided before a job runs ----------------------------


@pytest.fixture
def configured(settings: Any, dead_redis_url: str) -> Any:
    settings.MODEL_REGISTRY = registry.single("/models/tiny.gguf")
    settings.REDIS_URL = dead_redis_url  # no broker, no worker
    return settings


def post(client: Client, body: Any, **headers: str) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, str) else json.dumps(body)
    response = client.post(URL, raw, content_type="application/json", headers=headers)
    assert response["Content-Type"].startswith("application/json")
    return response.status_code, response.json()


def assert_error(
    body: dict[str, Any], *, kind: str, param: str | None = None, code: str | None = None
) -> str:
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == kind and error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert error["message"]
    return error["message"]


@pytest.mark.django_db
def test_models_lists_the_configured_model_while_no_worker_is_up(
    client: Client, owner_key: str, configured: Any
) -> None:
    response = client.get("/v1/models", headers=bearer(owner_key))
    assert response.status_code == 200
    assert response.json() == {
        "object": "list",
        "data": [
            {
                "id": "tiny",
                "object": "model",
                "created": 0,
                "owned_by": "sanjai",
                "kind": "local",
                "state": "no_worker",
                "workers": 0,
            }
        ],
    }
    assert client.get("/v1/models/tiny", headers=bearer(owner_key)).json()["id"] == "tiny"
    missing = client.get("/v1/models/gpt-4", headers=bearer(owner_key))
    assert missing.status_code == 404
    assert_error(missing.json(), kind="invalid_request_error", param="model", code="model_not_found")


@pytest.mark.django_db
def test_models_lists_every_declared_model_with_its_live_state(
    client: Client, owner_key: str, settings: Any, redis_url: str
) -> None:
    settings.REDIS_URL = redis_url
    settings.MODEL_REGISTRY = registry.parse(
        {
            "models": {
                "model-a": {"kind": "local"},
                "model-b": {"kind": "local", "path": "/models/b"},
                "model-c": {"kind": "local", "path": "/models/c"},
                "upstream": {"kind": "remote", "base_url": "http://gpu:8000/v1", "model": "big"},
            }
        }
    )
    beats = [
        presence.Heartbeat(
            redis_url, presence.WorkerInfo(f"{name}/1/x", name, model, "cpu", since, state=state), ttl_s=30
        )
        for name, model, since, state in [
            ("w1", "model-b", 2000.5, "ready"),
            ("w2", "model-a", 1000.0, "loading"),
            ("w3", "model-b", 1500.0, "ready"),
            ("w4", "undeclared", 1200.0, "ready"),
        ]
    ]
    for beat in beats:
        beat.start()
    try:
        body = client.get("/v1/models", headers=bearer(owner_key)).json()
    finally:
        for beat in beats:
            beat.stop()
    assert [(m["id"], m["kind"], m["state"], m["workers"], m["created"]) for m in body["data"]] == [
        ("model-a", "local", "loading", 1, 1000),
        ("model-b", "local", "ready", 2, 1500),
        ("model-c", "local", "no_worker", 0, 0),
        ("upstream", "remote", "no_worker", 0, 0),
    ]


@pytest.mark.django_db
def test_a_missing_or_bad_key_is_401_in_openai_form(client: Client, owner: Any, owner_key: str) -> None:
    for headers in ({}, bearer(owner_key + "x"), {"Authorization": "Basic abc"}):
        status, body = post(client, ask(), **headers)
        assert status == 401
        assert "Authorization: Bearer" in assert_error(
            body, kind="invalid_request_error", code="invalid_api_key"
        )
    assert client.get("/v1/models").status_code == 401
    # The browser session is not enough: this API is for programs with keys.
    client.force_login(owner)
    assert post(client, ask())[0] == 401
    assert not Conversation.objects.exists()


TOOL = {"type": "function", "function": {"name": "f", "parameters": {}}}


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ("{not json", None, "must be a JSON object"),
        ("[1, 2]", None, "must be a JSON object"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model", "model: must name the served model"),
        ({"model": MODEL}, "messages", "messages: must be a non-empty list"),
        ({"model": MODEL, "messages": []}, "messages", "non-empty list"),
        ({"model": MODEL, "messages": ["hi"]}, "messages[0]", "must be an object"),
        (ask(""), "messages[0].content", "must be a non-empty string"),
        (ask("x" * 16001), "messages[0].content", "at most 16000 characters"),
        (ask([{"type": "image_url", "image_url": {"url": "x"}}]), "messages[0].content[0]", "only text"),
        (
            {"model": MODEL, "messages": [{"role": "tool", "content": "42", "tool_call_id": "c"}]},
            "messages[0]",
            "messages[0]: a tool message must follow an assistant message with tool_calls",
        ),
        (
            {"model": MODEL, "messages": [{"role": "robot", "content": "42"}]},
            "messages[0].role",
            "or tool, got",
        ),
        (
            {
                "model": MODEL,
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c", "content": "1"},
                ],
            },
            "messages[1].tool_calls[0].function.arguments",
            "must be a JSON object as text",
        ),
        (
            {
                "model": MODEL,
                "messages": [{"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "x"}],
            },
            "messages[0]",
            "first non-system message must be from the user",
        ),
        (
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}],
            },
            "messages[1]",
            "must come before",
        ),
        (
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
            },
            "messages",
            "last message must be from the user",
        ),
        (ask(n=2), "n", "only n=1"),
        (ask(tool_choice="auto"), "tool_choice", "tool_choice: needs tools to choose from"),
        (
            {
                "model": MODEL,
                "messages": [{"role": ("user", "assistant")[n % 2], "content": "x"} for n in range(503)],
            },
            "messages",
            "messages: at most 500 earlier messages may come with a request, got 502.",
        ),
        (ask(tool_choice="f"), "tool_choice", 'must be "auto", "none", "required" or {"type": "function"'),
        (ask(tools=[TOOL], tool_choice={"type": "function", "function": "f"}), "tool_choice", "got {"),
        (
            ask(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]),
            "tools[0].function.parameters",
            "must be a JSON Schema of an object",
        ),
        (
            ask(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "g"}}),
            "tool_choice",
            "or a declared function (f), got 'g'",
        ),
        (
            ask(tools=[{"type": "function", "function": {"name": "bad name"}}]),
            "tools[0].function.name",
            "tools[0].function.name: String should match pattern",
        ),
        (
            ask(tools=[{"type": "function", "function": {"name": "f", "parameters": {"if": {}}}}]),
            "tools[0].function.parameters",
            'tools[0].function.parameters: this schema cannot be enforced: Unimplemented keys: ["if"]',
        ),
        (ask(tools=[TOOL], response_format={"type": "json_object"}), "tools", "cannot be combined"),
        (ask(tools=[{"type": "retrieval"}]), "tools[0]", 'must be {"type": "function"'),
        (ask(frequency_penalty=0.5), "frequency_penalty", "use repetition_penalty"),
        (ask(presence_penalty=-1), "presence_penalty", "does not support it"),
        (ask(logprobs=True), "logprobs", "not supported"),
        (ask(response_format={"type": "xml"}), "response_format", 'must be {"type": "text"}'),
        (
            ask(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
            "response_format.json_schema",
            "with a name and a schema",
        ),
        (
            ask(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": "{}"}}),
            "response_format.json_schema.schema",
            "must be a JSON Schema object",
        ),
        (
            ask(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object", "if": {"type": "object"}}},
                }
            ),
            "response_format",
            'response_format: this schema cannot be enforced: Unimplemented keys: ["if"]',
        ),
        (
            ask(response_format={"type": "json_object"}, stop=["}"]),
            "stop",
            "cannot be combined with a JSON schema",
        ),
        (ask(temperature=3), "temperature", "temperature: must be a number in [0, 2]"),
        (ask(top_p="high"), "top_p", "top_p: must be a number"),
        (ask(max_tokens=0), "max_tokens", "max_tokens: must be a whole number from 1 to 1024"),
        (
            ask(max_completion_tokens=100_000),
            "max_completion_tokens",
            "max_completion_tokens: must be a whole number from 1",
        ),
        (ask(max_tokens=5, max_completion_tokens=6), "max_completion_tokens", "disagree"),
        (ask(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
        (ask(seed=-1), "seed", "seed: must be a whole number"),
        (ask(stream="yes"), "stream", "stream: must be true or false"),
        (ask(stream_options={"include_usage": True}), "stream_options", "only allowed when stream is true"),
        (
            ask(stream=True, stream_options={"include_usage": 1}),
            "stream_options.include_usage",
            "stream_options.include_usage: must be true or false",
        ),
        (ask(store="no"), "store", "store: must be true or false"),
    ],
)
@pytest.mark.django_db
def test_invalid_requests_are_400_naming_the_field(
    client: Client, owner_key: str, configured: Any, body: Any, param: str | None, fragment: str
) -> None:
    status, answer = post(client, body, **bearer(owner_key))
    assert status == 400, answer
    message = assert_error(answer, kind="invalid_request_error", param=param)
    assert fragment in message
    assert not Conversation.objects.exists()  # nothing stored, nothing queued


@pytest.mark.django_db
def test_an_unknown_model_is_404(client: Client, owner_key: str, configured: Any) -> None:
    status, body = post(client, {**ask(), "model": "gpt-4o"}, **bearer(owner_key))
    assert status == 404
    message = assert_error(body, kind="invalid_request_error", param="model", code="model_not_found")
    assert "'gpt-4o'" in message and "tiny" in message
    assert not Conversation.objects.exists()


@pytest.mark.django_db
def test_too_many_running_replies_is_429(
    client: Client, owner: Any, owner_key: str, configured: Any, settings: Any
) -> None:
    settings.MAX_CONCURRENT_REPLIES = 2
    for _ in range(2):
        conversation = conversations.conversation_create(user=owner)
        exchange(conversation, "busy", "")
    Message.objects.filter(role="assistant").update(status=Message.Status.PENDING)
    status, body = post(client, ask(stream=True), **bearer(owner_key))
    assert status == 429
    message = assert_error(body, kind="rate_limit_error", code="too_many_concurrent_replies")
    assert "at most 2 may run at once" in message
    assert Conversation.objects.count() == 2
    # A finished reply frees its slot: the next request gets past the limit (to 503, no worker here).
    Message.objects.filter(status=Message.Status.PENDING).first().delete()
    assert post(client, ask(), **bearer(owner_key))[0] == 503


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.django_db
def test_no_worker_is_503_and_the_exchange_is_stored_as_a_conversation(
    client: Client, owner: Any, owner_key: str, settings: Any, redis_url: str, stream: bool
) -> None:
    settings.REDIS_URL = redis_url  # a live broker with no worker heartbeat
    settings.MODEL_REGISTRY = registry.single("/models/tiny.gguf")
    body = {
        "model": MODEL,
        "stream": stream,
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "system", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": "Capital of France?", "name": "olivia"},
            # Echoed back from an earlier answer, with the SDK's null fields.
            {"role": "assistant", "content": "Paris.", "refusal": None, "tool_calls": None},
            {"role": "user", "content": "And of Italy?"},
            {"role": "user", "content": [{"type": "text", "text": "Just the name."}]},
        ],
        "frequency_penalty": 0,
        "tools": None,
        "user": "someone-in-my-app",
    }
    status, answer = post(client, body, **bearer(owner_key))
    assert status == 503
    assert "No generation worker serves the model" in assert_error(
        answer, kind="server_error", code="worker_unavailable"
    )
    conversation = Conversation.objects.get(owner=owner)
    assert conversation.system_prompt == "Be brief.\n\nAnswer in English."
    assert conversation.title == "Capital of France?"
    assert [(m.role, m.content, m.status) for m in conversation.messages.all()] == [
        ("user", "Capital of France?", "done"),
        ("assistant", "Paris.", "done"),
        ("user", "And of Italy?\n\nJust the name.", "done"),
        ("assistant", "", "failed"),
    ]
    # An API exchange is not the conversation POST /chat continues.
    assert profiles.profile_get_or_create(user=owner).current_conversation is None


@pytest.mark.django_db
def test_store_false_leaves_nothing_behind_even_on_error(
    client: Client, owner_key: str, settings: Any, redis_url: str
) -> None:
    settings.REDIS_URL = redis_url
    settings.MODEL_REGISTRY = registry.single("/models/tiny.gguf")
    assert post(client, ask(store=False), **bearer(owner_key))[0] == 503
    assert not Conversation.objects.exists() and not Message.objects.exists()


# --- The real stack --------------------------------------------------------------


@pytest.fixture(scope="module")
def long_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose replies run to max_tokens, so that one can run long enough to cancel
    (the plain one may end a greedy reply within a tenth of a second)."""
    from tests.tiny_model import build_endless_model

    return build_endless_model(tmp_path_factory.mktemp("openai") / "tiny-long")


@pytest.fixture(scope="module")
def stack(django_db_setup: None, long_model_dir: Path) -> Iterator[Stack]:
    env = {
        "MODEL_PATH": str(long_model_dir),
        "GENERATION_MAX_NEW_TOKENS": "4000",
        "CHAT_REPLY_TIMEOUT_S": "60",
    }
    with stack_on_test_database(name="openai", env=env) as running:
        yield running


def served_model(stack: Stack, key: str) -> str:
    return httpx.get(f"{stack.base_url}/v1/models", headers=bearer(key)).json()["data"][0]["id"]


def complete(stack: Stack, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{stack.base_url}{URL}", json=body, headers=bearer(key), timeout=60)


def stream_events(stack: Stack, key: str, body: dict[str, Any]) -> tuple[httpx.Response, list[Any]]:
    """The SSE `data:` payloads of a streamed answer, parsed; "[DONE]" kept as a string."""
    events: list[Any] = []
    with httpx.stream(
        "POST", f"{stack.base_url}{URL}", json={**body, "stream": True}, headers=bearer(key), timeout=60
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
            else:
                assert line == "" or line.startswith(":"), line  # blank separators, keep-alive comments
    return response, events


def wait_for(predicate: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_models_names_the_model_the_worker_loaded(stack: Stack, owner_key: str, long_model_dir: Path) -> None:
    response = httpx.get(f"{stack.base_url}/v1/models", headers=bearer(owner_key))
    assert response.status_code == 200
    (model,) = response.json()["data"]
    assert model["id"] == long_model_dir.name and model["object"] == "model"
    assert time.time() - 600 < model["created"] <= time.time()


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_a_completion_is_answered_and_stored(stack: Stack, owner: Any, owner_key: str) -> None:
    model = served_model(stack, owner_key)
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy?"},
        ],
        "temperature": 0,
        "max_tokens": 6,
    }
    response = complete(stack, owner_key, body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"id", "object", "created", "model", "choices", "usage"}
    assert answer["object"] == "chat.completion" and answer["model"] == model
    assert answer["id"].startswith("chatcmpl-") and abs(answer["created"] - time.time()) < 60
    (choice,) = answer["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 20 and 1 <= usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert choice["finish_reason"] == ("length" if usage["completion_tokens"] == 6 else "stop")

    conversation = Conversation.objects.get(pk=int(response.headers["X-SanjAI-Conversation-Id"]))
    assert conversation.owner == owner and conversation.system_prompt == "You are a helpful assistant."
    messages = list(conversation.messages.all())
    assert [(m.role, m.status) for m in messages] == [("user", "done"), ("assistant", "done")] * 2
    reply = messages[-1]
    assert reply.pk == int(response.headers["X-SanjAI-Message-Id"])
    assert reply.content == choice["message"]["content"]
    assert (reply.prompt_tokens, reply.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_a_streamed_completion_has_the_openai_chunk_sequence(stack: Stack, owner_key: str) -> None:
    model = served_model(stack, owner_key)
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Hello"}],
        "temperature": 0,
        "max_completion_tokens": 40,
    }
    plain = complete(stack, owner_key, body).json()
    response, events = stream_events(stack, owner_key, {**body, "stream_options": {"include_usage": True}})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")

    *chunks, usage_chunk, done = events
    assert done == "[DONE]"
    assert len({(c["id"], c["created"]) for c in events[:-1]}) == 1  # one id and created throughout
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == model for c in events[:-1])
    first, *middle, last = chunks
    assert first["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert middle, "the reply's text arrives in content chunks"
    for chunk in middle:
        (choice,) = chunk["choices"]
        assert set(choice["delta"]) == {"content"} and choice["delta"]["content"]
        assert choice["finish_reason"] is None
    assert all(c["usage"] is None for c in chunks)  # only the usage chunk carries usage
    assert last["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == plain["usage"]
    assert usage_chunk["usage"]["completion_tokens"] == 40
    # Greedy decoding: the same text as the non-streaming answer, and as stored.
    text = "".join(c["choices"][0]["delta"]["content"] for c in middle)
    assert text == plain["choices"][0]["message"]["content"]
    assert Message.objects.get(pk=int(response.headers["X-SanjAI-Message-Id"])).content == text


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_a_stream_without_include_usage_has_no_usage(stack: Stack, owner_key: str) -> None:
    body = {"model": served_model(stack, owner_key), "messages": [{"role": "user", "content": "Hi"}]}
    _, events = stream_events(stack, owner_key, {**body, "max_tokens": 3})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all("usage" not in c and len(c["choices"]) == 1 for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in {"stop", "length"}


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_a_client_that_disconnects_cancels_the_generation(stack: Stack, owner_key: str) -> None:
    body = {
        "model": served_model(stack, owner_key),
        "messages": [{"role": "user", "content": "Hello"}],
        "temperature": 0,
        "max_tokens": 4000,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{stack.base_url}{URL}", json=body, headers=bearer(owner_key), timeout=60
    ) as r:
        assert r.status_code == 200
        first = next(r.iter_lines())
        assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
        reply_id = int(r.headers["X-SanjAI-Message-Id"])
    started = time.monotonic()

    def stopped() -> bool:
        reply = Message.objects.get(pk=reply_id)
        return reply.status == Message.Status.CANCELLED and reply.finished_at is not None

    wait_for(stopped, timeout_s=20)
    assert time.monotonic() - started < 10
    reply = Message.objects.get(pk=reply_id)
    assert reply.completion_tokens is None or reply.completion_tokens < 4000
    # The worker is free again: the next request is answered at once.
    quick = complete(stack, owner_key, {**body, "stream": False, "max_tokens": 2})
    assert quick.status_code == 200 and quick.json()["usage"]["completion_tokens"] <= 2


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_store_false_deletes_the_exchange_after_delivering_it(stack: Stack, owner_key: str) -> None:
    body = {
        "model": served_model(stack, owner_key),
        "messages": [{"role": "user", "content": "Keep this between us"}],
        "max_tokens": 3,
        "store": False,
    }
    response = complete(stack, owner_key, body)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] is not None
    assert not Conversation.objects.filter(pk=int(response.headers["X-SanjAI-Conversation-Id"])).exists()

    streamed, events = stream_events(stack, owner_key, body)
    assert events[-1] == "[DONE]"
    conversation_id = int(streamed.headers["X-SanjAI-Conversation-Id"])
    wait_for(lambda: not Conversation.objects.filter(pk=conversation_id).exists(), timeout_s=10)


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_api_exchanges_appear_in_the_rest_history_and_can_go_on_there(stack: Stack, owner_key: str) -> None:
    body = {
        "model": served_model(stack, owner_key),
        "messages": [{"role": "user", "content": "Remember the number 7"}],
        "max_tokens": 3,
    }
    response = complete(stack, owner_key, body)
    conversation_id = int(response.headers["X-SanjAI-Conversation-Id"])
    with httpx.Client(base_url=f"{stack.base_url}/api/v1", headers=bearer(owner_key), timeout=30) as rest:
        listed = rest.get("/conversations").json()
        assert listed["count"] == 1
        assert listed["items"][0]["id"] == conversation_id
        assert listed["items"][0]["title"] == "Remember the number 7"
        messages = rest.get(f"/conversations/{conversation_id}/messages").json()["items"]
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[1]["content"] == response.json()["choices"][0]["message"]["content"]

        # The REST API answers 202 at once; polling the reply shows it finish.
        posted = rest.post(
            f"/conversations/{conversation_id}/messages", json={"content": "Which?", "max_new_tokens": 3}
        )
        assert posted.status_code == 202, posted.text
        reply_id = posted.json()["reply"]["id"]
        assert posted.json()["reply"]["status"] in {"pending", "streaming", "done"}

        def finished() -> bool:
            return rest.get(f"/messages/{reply_id}").json()["status"] == "done"

        wait_for(finished)
        reply = rest.get(f"/messages/{reply_id}").json()
        assert reply["usage"]["completion_tokens"] <= 3 and reply["finish_reason"] in {"stop", "length"}


class Pick(BaseModel):
    """A small structured answer, bounded in every field."""

    colour: Literal["red", "green", "blue"]
    count: int = Field(ge=0, le=9)
    sure: bool


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_the_official_openai_client_works(stack: Stack, owner_key: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=owner_key, max_retries=0, timeout=60)
    (model,) = [m.id for m in client.models.list()]
    messages = [{"role": "user", "content": "Hello"}]
    completion = client.chat.completions.create(model=model, messages=messages, max_tokens=5, temperature=0)
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 5
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == completion.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 5

    # Structured output as the SDK asks for it: parse() sends the model's strict
    # JSON schema and validates the answer. The model's weights are random: the
    # answer parses because decoding followed the schema.
    parsed = client.chat.completions.parse(
        model=model, messages=messages, max_tokens=300, response_format=Pick
    )
    assert parsed.choices[0].finish_reason == "stop"
    assert isinstance(parsed.choices[0].message.parsed, Pick)
    any_object = client.chat.completions.create(
        model=model, messages=messages, max_tokens=300, response_format={"type": "json_object"}
    )
    assert any_object.choices[0].message.content.startswith("{")

    import openai

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=messages)
    with pytest.raises(openai.BadRequestError, match="only n=1"):
        client.chat.completions.create(model=model, messages=messages, n=2)
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{stack.base_url}/v1", api_key="wrong", max_retries=0).models.list()


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_langchains_structured_output_and_tools_get_parsed_answers(stack: Stack, owner_key: str) -> None:
    # LangChain's ChatOpenAI, unchanged: with_structured_output sends the
    # schema as response_format and parses the reply into the model class.
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        base_url=f"{stack.base_url}/v1",
        api_key=owner_key,
        model=served_model(stack, owner_key),
        max_tokens=300,
        max_retries=0,
        timeout=60,
    )
    answer = chat.with_structured_output(Pick, method="json_schema").invoke("Pick a colour and a digit.")
    assert isinstance(answer, Pick)
    # bind_tools: the call comes back parsed into LangChain's tool_calls.
    called = chat.bind_tools([WEATHER_TOOL], tool_choice="required").invoke("The weather in Rome?")
    (call,) = called.tool_calls[:1]
    assert call["name"] == "get_weather" and call["args"]["city"] in ("Paris", "Rome")


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_a_preset_is_a_model_id_whose_prompt_and_parameters_reach_the_reply(
    stack: Stack, owner: Any, owner_key: str
) -> None:
    from openai import OpenAI

    from chat.services import presets

    presets.preset_create(
        user=owner, name="Terse", system_prompt="Answer in three tokens.", params={"max_new_tokens": 3}
    )
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=owner_key, max_retries=0, timeout=60)
    listed = {model.id: model for model in client.models.list()}
    assert "preset:terse" in listed and listed["preset:terse"].model_extra["kind"] == "preset"
    completion = client.chat.completions.create(
        model="preset:terse", messages=[{"role": "user", "content": "Hello"}]
    )
    assert completion.usage.completion_tokens == 3  # the preset's max_new_tokens (this model never stops)
    conversation = Message.objects.latest("id").conversation
    assert conversation.system_prompt == "Answer in three tokens." and conversation.preset is not None
    import openai

    with pytest.raises(openai.NotFoundError, match="your presets are preset:terse"):
        client.chat.completions.create(model="preset:nope", messages=[{"role": "user", "content": "Hi"}])


WEATHER_TOOL = {"type": "function", "function": WEATHER}


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_a_tool_loop_through_the_official_client(stack: Stack, owner_key: str) -> None:
    # The SDK's own tool loop: a required call, its result sent back, a named
    # call, then "auto", whose noise (random weights) comes back as text.
    import jsonschema_rs
    from openai import OpenAI

    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=owner_key, max_retries=0, timeout=60)
    model = served_model(stack, owner_key)
    schema = WEATHER_TOOL["function"]["parameters"]
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris this week?"}]
    first = client.chat.completions.create(
        model=model, messages=messages, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=300
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema_rs.validate(schema, json.loads(call.function.arguments))

    messages += [choice.message, {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 C."}]
    named = client.chat.completions.create(
        model=model,
        messages=messages,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        max_tokens=300,
    )
    assert len(named.choices[0].message.tool_calls) == 1
    free = client.chat.completions.create(
        model=model, messages=messages, tools=[WEATHER_TOOL], tool_choice="auto", max_tokens=8
    )
    assert free.choices[0].finish_reason == "length" and free.choices[0].message.tool_calls is None
    assert isinstance(free.choices[0].message.content, str)

    # Streamed: the call arrives as tool_calls deltas, assembled as the SDK's users do.
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=messages[:1],
            tools=[WEATHER_TOOL],
            tool_choice="required",
            max_tokens=300,
            stream=True,
        )
    )
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.index == 0)
    jsonschema_rs.validate(schema, json.loads(arguments))
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert all(not (c.choices and c.choices[0].delta.content) for c in chunks)  # no call text leaks


def test_a_stream_cleans_up_as_soon_as_django_stops_reading_it() -> None:
    """Django closes its own iterator over a streaming response when the client goes away;
    the stream's clean-up (cancelling the reply) must run then, not whenever the GC gets to it."""
    import asyncio
    import gc

    from chat.openai.serving import _ClosingStream

    cleaned: list[str] = []

    async def stream():  # type: ignore[no-untyped-def]
        try:
            while True:
                yield "data: x\n\n"
        finally:
            cleaned.append("closed")

    async def django_reads_one_chunk_then_the_client_leaves() -> None:
        response = _ClosingStream(stream(), content_type="text/event-stream")
        content = aiter(response)
        assert await anext(content) == b"data: x\n\n"
        await content.aclose()  # what contextlib.aclosing() in Django's send_response does

    gc.disable()  # no help from the garbage collector
    try:
        asyncio.run(django_reads_one_chunk_then_the_client_leaves())
    finally:
        gc.enable()
    assert cleaned == ["closed"]


@pytest.mark.parametrize("seed", range(40))
def test_streamed_text_goes_out_up_to_where_a_call_may_begin_whatever_the_pieces(seed: int) -> None:
    # The stream with tools: text before a call goes out as it comes; nothing of
    # the call's own text does, however the reply is cut into pieces; and text
    # that turns out not to be a call goes out at the end, whole.
    import random

    from chat.openai.serving import _HeldBack
    from inference.tools import CALL_START

    rng = random.Random(seed)  # noqa: S311 - where the pieces are cut, not a secret
    before = "Let me check <that> for you. "
    for final, sendable in (
        (before + CALL_START + '\n{"name": "f", "arguments": {}}\n</tool_call>', before),
        (before + "<tool_cal and no call", before + "<tool_cal and no call"),
    ):
        held = _HeldBack(CALL_START)
        cuts = sorted(rng.sample(range(1, len(final)), 6))
        pieces = [final[a:b] for a, b in zip([0, *cuts], [*cuts, len(final)], strict=True)]
        out = "".join(held.take(piece) for piece in pieces)
        assert CALL_START not in out and sendable.startswith(out)
        if CALL_START not in final:
            assert out + held.rest(final) == final
        else:
            assert out == before  # all of it, once the call's start has come
