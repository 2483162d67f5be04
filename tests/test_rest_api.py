"""The REST API under /api/v1/: conversations, messages, replies; auth, isolation, CORS.

In-process with Django's test client. Queueing is replaced by a stand-in
where a test needs a 202 (the real worker path is covered over HTTP in
test_openai_api.py and test_schema_fuzz.py).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from chat.models import Conversation, Message
from chat.services import conversations, profiles
from tests.conftest import submit

pytestmark = pytest.mark.django_db

API = "/api/v1"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Rest:
    """A client that speaks JSON to the REST API with one key."""

    def __init__(self, client: Client, key: str) -> None:
        self.client = client
        self.headers = bearer(key)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"headers": self.headers}
        if body is not None:
            kwargs |= {
                "data": body if isinstance(body, str) else json.dumps(body),
                "content_type": "application/json",
            }
        response = getattr(self.client, method)(f"{API}{path}", **kwargs)
        return response.status_code, (response.json() if response.content else None)


@pytest.fixture
def rest(client: Client, owner_key: str) -> Rest:
    return Rest(client, owner_key)


def test_conversations_can_be_created_read_renamed_and_deleted(rest: Rest, owner: Any) -> None:
    profiles.profile_update(user=owner, display_name="", default_system_prompt="Be kind.")
    status, created = rest.call("post", "/conversations", {"title": "  Trip   plans "})
    assert status == 201
    assert created["title"] == "Trip plans" and created["system_prompt"] == "Be kind."
    cid = created["id"]
    assert rest.call("get", f"/conversations/{cid}") == (200, created)

    status, renamed = rest.call("patch", f"/conversations/{cid}", {"title": "Holiday"})
    assert status == 200 and renamed["title"] == "Holiday" and renamed["system_prompt"] == "Be kind."
    status, changed = rest.call("patch", f"/conversations/{cid}", {"system_prompt": "Be brief."})
    assert changed["title"] == "Holiday" and changed["system_prompt"] == "Be brief."

    assert rest.call("post", "/conversations", {"system_prompt": ""})[1]["system_prompt"] == ""
    assert rest.call("delete", f"/conversations/{cid}") == (204, None)
    assert rest.call("get", f"/conversations/{cid}")[0] == 404
    assert not Conversation.objects.filter(pk=cid).exists()


def test_conversation_lists_are_paginated_newest_first_and_searchable(
    rest: Rest, owner: Any, other_user: Any, django_assert_max_num_queries: Any
) -> None:
    made = [conversations.conversation_create(user=owner, title=f"Chat {n}").pk for n in range(25)]
    conversations.conversation_create(user=other_user, title="Chat secret")
    with django_assert_max_num_queries(4):  # the key, its last use, the count, the page
        status, page = rest.call("get", "/conversations?limit=10&offset=20")
    assert status == 200
    assert (page["count"], page["limit"], page["offset"]) == (25, 10, 20)
    assert [item["id"] for item in page["items"]] == made[4::-1]
    assert len(rest.call("get", "/conversations")[1]["items"]) == 20  # the default page size
    assert [item["title"] for item in rest.call("get", "/conversations?q=chat 1")[1]["items"]] == [
        f"Chat {n}" for n in (19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 1)
    ]
    for bad in ("limit=0", "limit=101", "offset=-1", "limit=ten"):
        status, body = rest.call("get", f"/conversations?{bad}")
        assert status == 400 and body["detail"].startswith("Invalid request."), bad


def test_conversations_can_be_pinned_and_archived(rest: Rest, owner: Any) -> None:
    cid = rest.call("post", "/conversations", {"title": "Keep"})[1]["id"]
    other = rest.call("post", "/conversations", {"title": "Other"})[1]["id"]
    status, created = rest.call("get", f"/conversations/{cid}")
    assert status == 200 and (created["pinned"], created["archived"]) == (False, False)

    status, pinned = rest.call("patch", f"/conversations/{cid}", {"pinned": True})
    assert status == 200 and (pinned["pinned"], pinned["archived"], pinned["title"]) == (True, False, "Keep")
    assert pinned["updated"] == created["updated"]  # pinning is not activity
    status, archived = rest.call("patch", f"/conversations/{cid}", {"archived": True})
    assert (archived["pinned"], archived["archived"]) == (False, True)  # archiving unpins

    def ids(query: str) -> list[int]:
        return [item["id"] for item in rest.call("get", f"/conversations{query}")[1]["items"]]

    assert ids("?archived=true") == [cid]
    assert ids("?archived=false") == [other]
    assert sorted(ids("")) == sorted([cid, other])
    assert rest.call("patch", f"/conversations/{cid}", {"archived": "soon"})[0] == 400
    status, restored = rest.call("patch", f"/conversations/{cid}", {"archived": False})
    assert (restored["pinned"], restored["archived"]) == (False, False)
    assert Conversation.objects.get(pk=cid).archived_at is None


def test_messages_are_listed_oldest_first_with_pagination(rest: Rest, owner: Any, queued: list[int]) -> None:
    cid = rest.call("post", "/conversations", {})[1]["id"]
    status, posted = rest.call("post", f"/conversations/{cid}/messages", {"content": "First"})
    assert status == 202
    Message.objects.filter(pk=posted["reply"]["id"]).update(status=Message.Status.DONE, content="One")
    rest.call("post", f"/conversations/{cid}/messages", {"content": "Second"})
    status, page = rest.call("get", f"/conversations/{cid}/messages?limit=3")
    assert status == 200 and page["count"] == 4
    assert [(m["role"], m["content"], m["status"]) for m in page["items"]] == [
        ("user", "First", "done"),
        ("assistant", "One", "done"),
        ("user", "Second", "done"),
    ]
    assert [m["status"] for m in rest.call("get", f"/conversations/{cid}/messages?offset=3")[1]["items"]] == [
        "pending"
    ]


def test_messages_are_the_branch_viewed_unless_all_branches_are_asked_for(
    rest: Rest, owner: Any, queued: list[int]
) -> None:
    cid = rest.call("post", "/conversations", {})[1]["id"]
    first = rest.call("post", f"/conversations/{cid}/messages", {"content": "Tell me a joke"})[1]
    Message.objects.filter(pk=first["reply"]["id"]).update(status=Message.Status.DONE, content="Joke one")
    again = submit(owner, "", action="regenerate", conversation_id=cid).reply
    Message.objects.filter(pk=again.pk).update(status=Message.Status.DONE, content="Joke two")
    question = first["user_message"]["id"]

    status, page = rest.call("get", f"/conversations/{cid}/messages")
    assert status == 200 and page["count"] == 2
    assert [(m["content"], m["parent_id"]) for m in page["items"]] == [
        ("Tell me a joke", None),
        ("Joke two", question),
    ]
    status, page = rest.call("get", f"/conversations/{cid}/messages?branches=all")
    assert status == 200 and page["count"] == 3
    assert [(m["content"], m["parent_id"]) for m in page["items"]] == [
        ("Tell me a joke", None),
        ("Joke one", question),
        ("Joke two", question),
    ]
    assert rest.call("get", f"/conversations/{cid}/messages?branches=some")[0] == 400

    # Switching is stored: the default view follows it.
    status, conversation = rest.call("post", f"/messages/{first['reply']['id']}/branch")
    assert status == 200 and conversation["id"] == cid
    items = rest.call("get", f"/conversations/{cid}/messages")[1]["items"]
    assert [m["content"] for m in items] == ["Tell me a joke", "Joke one"]
    rest.call("post", f"/conversations/{cid}/messages", {"content": "Another"})
    status, answer = rest.call("post", f"/messages/{again.pk}/branch")
    assert status == 409 and "still answering" in answer["detail"]


def test_posting_a_message_answers_202_with_ids_and_the_reply_can_be_polled_and_cancelled(
    rest: Rest, owner: Any, queued: list[int]
) -> None:
    cid = rest.call("post", "/conversations", {})[1]["id"]
    body = {"content": "Hello there", "temperature": 0, "max_new_tokens": 5, "stop": ["\n"], "seed": 3}
    status, posted = rest.call("post", f"/conversations/{cid}/messages", body)
    assert status == 202
    assert posted["conversation_id"] == cid
    assert posted["user_message"]["content"] == "Hello there" and posted["user_message"]["role"] == "user"
    reply = posted["reply"]
    assert reply["status"] == "pending" and reply["role"] == "assistant" and reply["usage"] is None
    assert queued == [reply["id"]]
    stored = Message.objects.get(pk=reply["id"])
    assert (
        stored.params["temperature"] == 0 and stored.params["stop"] == ["\n"] and stored.params["seed"] == 3
    )
    assert rest.call("get", f"/messages/{reply['id']}")[1]["status"] == "pending"

    # One reply at a time per conversation.
    status, busy = rest.call("post", f"/conversations/{cid}/messages", {"content": "Again"})
    assert status == 409 and "still answering" in busy["detail"]

    status, cancelled = rest.call("post", f"/messages/{reply['id']}/cancel")
    assert status == 200 and cancelled["status"] == "cancelled" and cancelled["finish_reason"] == "cancelled"
    status, refused = rest.call("post", f"/messages/{posted['user_message']['id']}/cancel")
    assert status == 400 and "Only a reply" in refused["detail"]
    assert rest.call("post", f"/conversations/{cid}/messages", {"content": "Again"})[0] == 202


def test_parameters_left_out_come_from_the_conversations_settings(
    rest: Rest, owner: Any, queued: list[int]
) -> None:
    cid = rest.call("post", "/conversations", {})[1]["id"]
    conversations.conversation_settings_update(
        user=owner, conversation_id=cid, system_prompt="", params={"temperature": 0.2, "max_new_tokens": 50}
    )
    reply_id = rest.call("post", f"/conversations/{cid}/messages", {"content": "hi", "max_new_tokens": 7})[1][
        "reply"
    ]["id"]
    params = Message.objects.get(pk=reply_id).params
    assert (params["temperature"], params["max_new_tokens"]) == (0.2, 7)


def test_too_many_running_replies_is_429(rest: Rest, owner: Any, queued: list[int], settings: Any) -> None:
    settings.MAX_CONCURRENT_REPLIES = 1
    first, second = (rest.call("post", "/conversations", {})[1]["id"] for _ in range(2))
    assert rest.call("post", f"/conversations/{first}/messages", {"content": "one"})[0] == 202
    status, body = rest.call("post", f"/conversations/{second}/messages", {"content": "two"})
    assert status == 429 and "at most 1 may run at once" in body["detail"]
    assert not Message.objects.filter(conversation_id=second).exists()


def test_no_worker_is_503_and_the_message_is_kept(
    rest: Rest, owner: Any, settings: Any, dead_redis_url: str
) -> None:
    settings.REDIS_URL = dead_redis_url
    cid = rest.call("post", "/conversations", {})[1]["id"]
    status, body = rest.call("post", f"/conversations/{cid}/messages", {"content": "Anyone?"})
    assert status == 503 and "Your message was saved" in body["detail"]
    assert [(m.role, m.status) for m in Message.objects.filter(conversation_id=cid)] == [
        ("user", "done"),
        ("assistant", "failed"),
    ]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("{oops", "must be a JSON object"),
        ({}, "content"),
        ({"content": "   "}, "content"),
        ({"content": "x" * 16001}, "content"),
        ({"content": "hi", "temperature": 3}, "temperature"),
        ({"content": "hi", "top_p": 0}, "top_p"),
        ({"content": "hi", "max_new_tokens": 5000}, "max_new_tokens"),
        ({"content": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"content": "hi", "stop": [""]}, "stop"),
        ({"content": "hi", "seed": -1}, "seed"),
    ],
)
def test_invalid_messages_are_400_naming_the_field(
    rest: Rest, owner: Any, queued: list[int], body: Any, fragment: str
) -> None:
    cid = rest.call("post", "/conversations", {})[1]["id"]
    status, answer = rest.call("post", f"/conversations/{cid}/messages", body)
    assert status == 400 and fragment in answer["detail"]
    assert queued == [] and not Message.objects.exists()


@pytest.mark.parametrize(
    "path", ["/conversations/0", "/conversations/-3", f"/conversations/{2**64}", "/messages/x"]
)
def test_ids_out_of_range_are_400_not_500(rest: Rest, path: str) -> None:
    assert rest.call("get", path)[0] == 400


def test_another_users_ids_are_404_and_stay_untouched(
    rest: Rest, owner: Any, other_user: Any, queued: list[int]
) -> None:
    theirs = conversations.conversation_create(user=other_user, title="Private")
    posted = submit(other_user, "secret", conversation_id=theirs.pk)
    reply = posted.reply.pk
    for method, path, body in [
        ("get", f"/conversations/{theirs.pk}", None),
        ("patch", f"/conversations/{theirs.pk}", {"title": "Mine now"}),
        ("delete", f"/conversations/{theirs.pk}", None),
        ("get", f"/conversations/{theirs.pk}/messages", None),
        ("post", f"/conversations/{theirs.pk}/messages", {"content": "hi"}),
        ("get", f"/messages/{reply}", None),
        ("post", f"/messages/{reply}/cancel", None),
        ("post", f"/messages/{reply}/branch", None),
        ("get", "/messages/999999", None),
    ]:
        status, answer = rest.call(method, path, body)
        assert status == 404, (method, path)
        assert answer["detail"].endswith("not found.")
    theirs.refresh_from_db()
    assert theirs.title == "Private" and theirs.messages.count() == 2
    assert Message.objects.get(pk=reply).status == Message.Status.PENDING
    assert rest.call("get", "/conversations")[1]["count"] == 0
    assert queued == [reply]  # only their own message's


def test_anonymous_callers_get_401(client: Client) -> None:
    for method, path in [("get", "/conversations"), ("post", "/conversations"), ("get", "/messages/1")]:
        response = getattr(client, method)(f"{API}{path}")
        assert response.status_code == 401 and "Authorization: Bearer" in response.json()["detail"]
    assert client.get(f"{API}/conversations", headers=bearer("sanjai-nope-x")).status_code == 401


def test_the_browser_session_works_with_csrf_for_writes(owner: Any) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(owner)
    assert browser.get(f"{API}/conversations").status_code == 200  # reads need no token
    refused = browser.post(f"{API}/conversations", "{}", content_type="application/json")
    assert refused.status_code == 403 and "X-CSRFToken" in refused.json()["detail"]
    browser.get("/profile/")  # a page with a form sets the csrftoken cookie
    token = browser.cookies["csrftoken"].value
    created = browser.post(
        f"{API}/conversations", "{}", content_type="application/json", headers={"X-CSRFToken": token}
    )
    assert created.status_code == 201


def test_the_openapi_schema_and_docs_are_served(client: Client) -> None:
    schema = client.get(f"{API}/openapi.json").json()
    assert schema["info"]["title"] == "SanjAI REST API"
    assert set(schema["paths"]) == {
        f"{API}/conversations",
        f"{API}/conversations/{{conversation_id}}",
        f"{API}/conversations/{{conversation_id}}/messages",
        f"{API}/conversations/{{conversation_id}}/share",
        f"{API}/folders",
        f"{API}/folders/{{folder_id}}",
        f"{API}/messages/{{message_id}}",
        f"{API}/messages/{{message_id}}/cancel",
        f"{API}/messages/{{message_id}}/branch",
        f"{API}/messages/{{message_id}}/feedback",
        f"{API}/memory",
        f"{API}/memory/{{fact_id}}",
        f"{API}/presets",
        f"{API}/presets/{{preset_id}}",
        f"{API}/search",
        f"{API}/documents",
        f"{API}/documents/{{document_id}}",
        f"{API}/conversations/{{conversation_id}}/documents",
        f"{API}/conversations/{{conversation_id}}/documents/{{document_id}}",
        f"{API}/documents/{{document_id}}/passages",
        f"{API}/mcp-servers",
        f"{API}/conversations/{{conversation_id}}/mcp-servers",
        f"{API}/messages/{{message_id}}/tool-steps",
        f"{API}/tool-steps/{{step_id}}/approval",
    }
    post = schema["paths"][f"{API}/conversations/{{conversation_id}}/messages"]["post"]
    assert set(post["responses"]) >= {"202", "400", "401", "404", "409", "429", "503"}
    assert client.get(f"{API}/docs").status_code == 200


# --- CORS --------------------------------------------------------------------------


def preflight(client: Client, path: str, origin: str) -> Any:
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def test_cors_allows_only_listed_origins_and_only_on_the_api_prefixes(client: Client, settings: Any) -> None:
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example"]
    for path in ("/v1/chat/completions", f"{API}/conversations"):
        allowed = preflight(client, path, "https://app.example")
        assert allowed["Access-Control-Allow-Origin"] == "https://app.example"
        assert allowed["Access-Control-Allow-Credentials"] == "true"
        assert "authorization" in allowed["Access-Control-Allow-Headers"]
        other = preflight(client, path, "https://evil.example")
        assert "Access-Control-Allow-Origin" not in other
        assert "Access-Control-Allow-Credentials" not in other
    assert "Access-Control-Allow-Origin" not in preflight(client, "/chat", "https://app.example")
    assert "Access-Control-Allow-Origin" not in preflight(client, "/login/", "https://app.example")


def test_cors_is_closed_by_default(client: Client) -> None:
    assert "Access-Control-Allow-Origin" not in preflight(
        client, f"{API}/conversations", "https://app.example"
    )
