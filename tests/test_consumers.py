"""The chat websocket, driven with Channels' WebsocketCommunicator."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore

from chat.consumers import CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED, ConversationConsumer
from chat.events import send_event
from chat.lifecycle.run import reply_generate
from chat.models import Message
from chat.routing import websocket_application
from chat.services import conversations
from tests.conftest import exchange, submit

pytestmark = pytest.mark.django_db(transaction=True)

APP = websocket_application
ORIGIN = (b"origin", b"http://127.0.0.1:8000")
HOST = (b"host", b"127.0.0.1:8000")


def session_cookie(user: Any) -> tuple[bytes, bytes]:
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return (b"cookie", f"{settings.SESSION_COOKIE_NAME}={session.session_key}".encode())


def communicator(conversation_id: int, *headers: tuple[bytes, bytes]) -> WebsocketCommunicator:
    return WebsocketCommunicator(APP, f"/ws/conversations/{conversation_id}/", headers=[HOST, *headers])


def run(scenario: Any) -> Any:
    return async_to_sync(scenario)()


@pytest.fixture
def no_broker(settings: Any, dead_redis_url: str) -> None:
    settings.REDIS_URL = dead_redis_url


def test_anonymous_sockets_are_refused(owner: Any) -> None:
    conversation = conversations.conversation_create(user=owner)

    async def scenario() -> Any:
        ws = communicator(conversation.pk, ORIGIN)
        return await ws.connect()

    assert run(scenario) == (False, CLOSE_UNAUTHENTICATED)


def test_another_users_conversation_is_refused(owner: Any, other_user: Any) -> None:
    conversation = conversations.conversation_create(user=owner)
    cookie = session_cookie(other_user)

    async def scenario() -> Any:
        return await communicator(conversation.pk, ORIGIN, cookie).connect()

    assert run(scenario) == (False, CLOSE_NOT_FOUND)


@pytest.mark.parametrize(
    "origin",
    [
        b"https://evil.example",
        b"http://127.0.0.1:9999",  # the same host, another port: another site
        b"https://127.0.0.1:8000",  # another scheme
        b"null",
    ],
)
def test_only_the_sites_own_origin_may_open_a_socket(owner: Any, origin: bytes, settings: Any) -> None:
    conversation = conversations.conversation_create(user=owner)
    cookie = session_cookie(owner)

    async def scenario(origin: bytes) -> Any:
        ws = communicator(conversation.pk, (b"origin", origin), cookie)
        connected, _ = await ws.connect()
        await ws.disconnect()
        return connected

    assert async_to_sync(scenario)(origin) is False
    assert async_to_sync(scenario)(ORIGIN[1]) is True
    # Behind a TLS proxy the page is https while the hop to the ASGI server is not.
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com"]
    assert async_to_sync(scenario)(b"https://chat.example.com") is True


def test_the_owner_gets_a_snapshot_with_the_text_so_far(owner: Any, queued: list[int]) -> None:
    conversation = conversations.conversation_create(user=owner, system_prompt="Be brief.")
    posted = submit(owner, "Hi", conversation_id=conversation.pk)
    Message.objects.filter(pk=posted.reply.pk).update(status="streaming", content="Hel")
    cookie = session_cookie(owner)

    async def scenario() -> Any:
        ws = communicator(conversation.pk, ORIGIN, cookie)
        assert (await ws.connect())[0]
        snapshot = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return snapshot

    snapshot = run(scenario)
    assert snapshot["type"] == "snapshot"
    assert snapshot["conversation"]["system_prompt"] == "Be brief."
    assert snapshot["conversation"]["params"]["temperature"] == 0.7
    assert [(m["role"], m["status"], m["content"]) for m in snapshot["messages"]] == [
        ("user", "done", "Hi"),
        ("assistant", "streaming", "Hel"),
    ]


def test_an_event_published_while_the_snapshot_is_read_follows_it(
    owner: Any, queued: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply's delta sent while the socket reads its snapshot is not lost: the
    socket has joined the conversation's group first, so the delta comes after the snapshot."""
    conversation = conversations.conversation_create(user=owner)
    posted = submit(owner, "Hi", conversation_id=conversation.pk)
    cookie = session_cookie(owner)
    read = ConversationConsumer._snapshot

    def snapshot_with_a_delta_meanwhile(consumer: ConversationConsumer) -> dict[str, Any]:
        delta = {"type": "message.delta", "message_id": posted.reply.pk, "offset": 0, "delta": "Hel"}
        send_event(conversation.pk, delta)  # a worker streaming at that moment
        return read(consumer)

    monkeypatch.setattr(ConversationConsumer, "_snapshot", snapshot_with_a_delta_meanwhile)

    async def scenario() -> list[Any]:
        ws = communicator(conversation.pk, ORIGIN, cookie)
        assert (await ws.connect())[0]
        received = [await ws.receive_json_from(timeout=5), await ws.receive_json_from(timeout=5)]
        await ws.disconnect()
        return received

    snapshot, delta = run(scenario)
    assert snapshot["type"] == "snapshot"
    assert (delta["type"], delta["delta"]) == ("message.delta", "Hel")


def test_sending_stores_first_and_reports_a_down_worker(owner: Any, no_broker: None) -> None:
    conversation = conversations.conversation_create(user=owner)
    cookie = session_cookie(owner)

    async def scenario() -> list[dict[str, Any]]:
        ws = communicator(conversation.pk, ORIGIN, cookie)
        await ws.connect()
        await ws.receive_json_from(timeout=5)  # snapshot
        await ws.send_json_to({"action": "send", "content": "   "})
        events = [await ws.receive_json_from(timeout=5)]
        await ws.send_json_to({"action": "send", "content": "Hello there"})
        events += [await ws.receive_json_from(timeout=5) for _ in range(3)]
        await ws.disconnect()
        return events

    events = run(scenario)
    assert events[0] == {
        "type": "error",
        "action": "send",
        "code": "invalid_request",
        "error": "message: must be a non-empty string.",
    }
    assert [e["type"] for e in events[1:]] == ["message.created", "message.created", "message.failed"]
    assert "unreachable" in events[3]["error"]
    user_message = Message.objects.get(conversation=conversation, role="user")
    assert user_message.content == "Hello there"  # kept although no worker took it


def test_events_of_a_generated_reply_reach_the_page_in_order(
    owner: Any, tiny_backend: Any, queued: list[int]
) -> None:
    conversation = conversations.conversation_create(user=owner)
    reply = submit(owner, "Hi", conversation_id=conversation.pk, max_new_tokens=40, temperature=0).reply
    cookie = session_cookie(owner)

    async def scenario() -> list[dict[str, Any]]:
        ws = communicator(conversation.pk, ORIGIN, cookie)
        await ws.connect()
        await ws.receive_json_from(timeout=5)
        # The job body, as the worker runs it.
        await database_sync_to_async(reply_generate)(
            reply_id=reply.pk, backend=tiny_backend, worker="test-worker"
        )
        events = []
        while not events or events[-1]["type"] != "message.done":
            events.append(await ws.receive_json_from(timeout=5))
        await ws.disconnect()
        return events

    events = run(scenario)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message.started" and kinds[-1] == "message.done"
    assert set(kinds[1:-1]) == {"message.delta"} and len(kinds) > 3
    reply.refresh_from_db()
    assert "".join(e["text"] for e in events[1:-1]).strip() == reply.content == events[-1]["content"]


def test_cancel_from_the_page_stops_a_queued_reply(owner: Any, other_user: Any, queued: list[int]) -> None:
    conversation = conversations.conversation_create(user=owner)
    reply = submit(owner, "Hi", conversation_id=conversation.pk).reply
    theirs = conversations.conversation_create(user=other_user)
    their_reply = submit(other_user, "Mine", conversation_id=theirs.pk).reply
    cookie = session_cookie(owner)

    async def scenario() -> list[dict[str, Any]]:
        ws = communicator(conversation.pk, ORIGIN, cookie)
        await ws.connect()
        await ws.receive_json_from(timeout=5)
        await ws.send_json_to({"action": "cancel", "message_id": their_reply.pk})
        refused = await ws.receive_json_from(timeout=5)
        await ws.send_json_to({"action": "cancel", "message_id": reply.pk})
        cancelled = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return [refused, cancelled]

    refused, cancelled = run(scenario)
    assert refused["type"] == "error"
    assert cancelled["type"] == "message.cancelled" and cancelled["message_id"] == reply.pk
    their_reply.refresh_from_db()
    assert their_reply.status == Message.Status.PENDING  # untouched


def test_regenerate_and_edit_make_branches_the_page_can_switch_between(owner: Any, no_broker: None) -> None:
    conversation = conversations.conversation_create(user=owner)
    question, old_reply = exchange(conversation, "First try", "Old answer")
    cookie = session_cookie(owner)

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        ws = communicator(conversation.pk, ORIGIN, cookie)
        await ws.connect()
        await ws.receive_json_from(timeout=5)
        await ws.send_json_to({"action": "regenerate"})
        events = [await ws.receive_json_from(timeout=5) for _ in range(2)]
        await ws.send_json_to({"action": "edit", "content": "Second try"})
        events += [await ws.receive_json_from(timeout=5) for _ in range(3)]
        # Back to the first question's branch, and the page asks for it.
        await ws.send_json_to({"action": "switch", "message_id": question.pk})
        events.append(await ws.receive_json_from(timeout=5))
        await ws.send_json_to({"action": "sync"})
        snapshot = await ws.receive_json_from(timeout=5)
        await ws.send_json_to({"action": "switch", "message_id": "x"})
        refused = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return events, snapshot, refused

    events, snapshot, refused = run(scenario)
    assert [e["type"] for e in events] == [
        "message.created",
        "message.failed",  # regenerate (no worker here)
        "message.created",
        "message.created",
        "message.failed",  # edit
        "branch.switched",
    ]
    regenerated, edited = events[0]["message"], events[2]["message"]
    assert regenerated["parent_id"] == question.pk and regenerated["siblings"] == [
        old_reply.pk,
        regenerated["id"],
    ]
    assert edited["parent_id"] is None and edited["siblings"] == [question.pk, edited["id"]]
    assert events[3]["message"]["parent_id"] == edited["id"]
    # Nothing was deleted: both questions and all three replies are kept.
    assert conversation.messages.count() == 5
    # The first question's branch ends down its newest reply, the regenerated one.
    shown = snapshot["messages"]
    assert [(m["id"], m["parent_id"]) for m in shown] == [
        (question.pk, None),
        (regenerated["id"], question.pk),
    ]
    assert shown[0]["siblings"] == [question.pk, edited["id"]]
    assert shown[1]["siblings"] == [old_reply.pk, regenerated["id"]]
    assert refused["type"] == "error" and refused["action"] == "switch"


def test_switching_to_another_conversations_message_is_refused(owner: Any, other_user: Any) -> None:
    conversation = conversations.conversation_create(user=owner)
    exchange(conversation, "Mine", "Yours")
    theirs = conversations.conversation_create(user=other_user)
    _, their_reply = exchange(theirs, "Theirs", "Private")
    elsewhere = conversations.conversation_create(user=owner)
    _, my_other_reply = exchange(elsewhere, "Elsewhere", "Other")
    cookie = session_cookie(owner)

    async def scenario() -> list[dict[str, Any]]:
        ws = communicator(conversation.pk, ORIGIN, cookie)
        await ws.connect()
        await ws.receive_json_from(timeout=5)
        answers = []
        for message_id in (their_reply.pk, my_other_reply.pk):
            await ws.send_json_to({"action": "switch", "message_id": message_id})
            answers.append(await ws.receive_json_from(timeout=5))
        await ws.disconnect()
        return answers

    answers = run(scenario)
    assert [a["type"] for a in answers] == ["error", "error"]
    assert all("No such message" in a["error"] for a in answers)


def test_a_second_message_waits_for_the_running_reply(owner: Any, queued: list[int]) -> None:
    conversation = conversations.conversation_create(user=owner)
    submit(owner, "Hi", conversation_id=conversation.pk)
    cookie = session_cookie(owner)

    async def scenario() -> dict[str, Any]:
        ws = communicator(conversation.pk, ORIGIN, cookie)
        await ws.connect()
        await ws.receive_json_from(timeout=5)
        await ws.send_json_to({"action": "send", "content": "Again"})
        refused = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return refused

    refused = run(scenario)
    assert refused["type"] == "error" and refused["code"] == "conversation_busy"
    assert "still answering" in refused["error"]
    assert conversation.messages.filter(role="user").count() == 1


def test_a_quiet_page_can_ask_for_the_conversation_again(owner: Any, queued: list[int]) -> None:
    """Events lost in a broker outage: the page asks again and gets the stored state."""
    conversation = conversations.conversation_create(user=owner)
    reply = submit(owner, "Hi", conversation_id=conversation.pk).reply
    cookie = session_cookie(owner)

    async def scenario() -> dict[str, Any]:
        ws = communicator(conversation.pk, ORIGIN, cookie)
        await ws.connect()
        await ws.receive_json_from(timeout=5)
        # The reply finished while its events were lost.
        await database_sync_to_async(Message.objects.filter(pk=reply.pk).update)(
            status=Message.Status.DONE, content="Paris."
        )
        await ws.send_json_to({"action": "sync"})
        snapshot = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return snapshot

    snapshot = run(scenario)
    assert snapshot["type"] == "snapshot"
    assert [(m["role"], m["status"], m["content"]) for m in snapshot["messages"]] == [
        ("user", "done", "Hi"),
        ("assistant", "done", "Paris."),
    ]


@pytest.mark.parametrize(
    "ending",
    ["logout", "password change", "password set by an admin", "account deletion", "deactivation"],
)
def test_logging_out_a_new_password_deactivating_or_deleting_the_account_closes_the_users_sockets(
    owner: Any, ending: str
) -> None:
    from django.test import Client

    from chat.services.accounts import account_delete

    conversation = conversations.conversation_create(user=owner)
    cookie = session_cookie(owner)

    def end() -> None:
        browser = Client()
        browser.cookies[settings.SESSION_COOKIE_NAME] = cookie[1].decode().split("=", 1)[1]
        if ending == "logout":
            assert browser.post("/logout/").status_code == 302
        elif ending == "password change":
            new = "a brand new passphrase"
            form = {"old_password": "correct horse battery", "new_password1": new, "new_password2": new}
            assert browser.post("/profile/password/", form).status_code == 302
        elif ending == "password set by an admin":
            owner.set_password("reset by the admin")
            owner.save()
        elif ending == "deactivation":
            owner.is_active = False  # as the admin's "active" checkbox saves it
            owner.save()
        else:
            account_delete(user=owner)

    async def scenario() -> dict[str, Any]:
        ws = communicator(conversation.pk, ORIGIN, cookie)
        assert (await ws.connect())[0]
        await ws.receive_json_from(timeout=5)
        await database_sync_to_async(end)()
        return await ws.receive_output(timeout=5)

    assert run(scenario) == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}


def test_a_socket_of_an_account_deactivated_without_signals_stores_nothing(owner: Any) -> None:
    # A queryset update sends no signal, so the socket stays open: the consumer
    # itself must see that the account may no longer act.
    conversation = conversations.conversation_create(user=owner)
    cookie = session_cookie(owner)

    async def scenario() -> dict[str, Any]:
        ws = communicator(conversation.pk, ORIGIN, cookie)
        assert (await ws.connect())[0]
        await ws.receive_json_from(timeout=5)
        await database_sync_to_async(User.objects.filter(pk=owner.pk).update)(is_active=False)
        await ws.send_json_to({"action": "send", "content": "Still here?"})
        return await ws.receive_output(timeout=5)

    assert run(scenario) == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}
    assert not Message.objects.filter(conversation=conversation).exists()


def test_ids_past_the_databases_integers_are_not_found_on_the_socket(owner: Any) -> None:
    conversation = conversations.conversation_create(user=owner)
    cookie = session_cookie(owner)

    async def scenario() -> tuple[Any, dict[str, Any], dict[str, Any]]:
        refused = communicator(2**70, ORIGIN, cookie)
        closed = await refused.connect()
        ws = communicator(conversation.pk, ORIGIN, cookie)
        assert (await ws.connect())[0]
        await ws.receive_json_from(timeout=5)
        await ws.send_json_to({"action": "switch", "message_id": 2**70})
        switched = await ws.receive_json_from(timeout=5)
        await ws.send_json_to({"action": "cancel", "message_id": 2**70})
        cancelled = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return closed, switched, cancelled

    closed, switched, cancelled = run(scenario)
    assert closed == (False, CLOSE_NOT_FOUND)
    assert switched["error"] == "No such message in this conversation."
    assert cancelled["type"] == "error" and cancelled["code"] == "invalid_request"
