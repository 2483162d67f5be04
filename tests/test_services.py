"""Services and selectors, with task bodies called directly on the tiny model."""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from chat import selectors
from chat.lifecycle.run import reply_generate
from chat.lifecycle.status import NotCancellable, reply_cancel, reply_fail
from chat.lifecycle.submit import PostedMessage
from chat.lifecycle.sweep import fail_lost_replies
from chat.models import ApiKey, Conversation, Message
from chat.services import accounts, conversations, limits
from inference.types import Turn
from tests.conftest import captured_events, finish, submit

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("queued")]

GREEDY = {"max_new_tokens": 12, "temperature": 0}


@pytest.fixture
def run_job(tiny_backend: Any, django_capture_on_commit_callbacks: Any):
    """Run the generation job body directly; returns the events it published."""

    def run(reply: Message) -> list[dict[str, Any]]:
        with (
            captured_events(reply.conversation_id) as events,
            django_capture_on_commit_callbacks(execute=True),
        ):
            reply_generate(reply_id=reply.pk, backend=tiny_backend, worker="test-worker")
        return events

    return run


def post(user: Any, content: str = "What is the capital of France?", **fields: Any) -> PostedMessage:
    return submit(user, content, **(GREEDY | fields))


def test_posting_stores_the_message_and_a_pending_reply_first(owner: Any) -> None:
    posted = post(owner)
    conversation = posted.reply.conversation
    assert conversation.owner == owner
    assert conversation.title == "What is the capital of France?"
    assert [(m.role, m.status) for m in conversation.messages.all()] == [
        ("user", "done"),
        ("assistant", "pending"),
    ]
    assert posted.reply.params["max_new_tokens"] == 12 and posted.reply.params["temperature"] == 0
    # Without an id, the next message continues the same conversation.
    finish(posted.reply)
    assert post(owner, "And of Italy?").reply.conversation_id == conversation.pk


def test_another_users_conversation_does_not_exist_for_you(owner: Any, other_user: Any) -> None:
    conversation = conversations.conversation_create(user=owner)
    with pytest.raises(Conversation.DoesNotExist):
        post(other_user, conversation_id=conversation.pk)
    with pytest.raises(Conversation.DoesNotExist):
        selectors.conversation_get(user=other_user, conversation_id=conversation.pk)
    assert conversation.messages.count() == 0


def test_reset_starts_a_new_current_conversation(owner: Any) -> None:
    first = post(owner).reply.conversation_id
    fresh = conversations.conversation_create(user=owner)
    assert fresh.pk != first
    assert post(owner, "hello again").reply.conversation_id == fresh.pk


def test_generating_a_reply_stores_text_tokens_timing_and_streams_events(
    owner: Any, tiny_backend: Any, run_job: Any
) -> None:
    reply = post(owner, max_new_tokens=30).reply
    events = run_job(reply)
    reply.refresh_from_db()
    assert reply.status == Message.Status.DONE
    assert reply.content
    assert reply.prompt_tokens and reply.prompt_tokens > 10
    assert reply.completion_tokens == 30 and reply.finish_reason == "length"
    assert reply.first_token_at is not None and reply.finished_at is not None
    assert reply.first_token_at <= reply.finished_at
    kinds = [event["type"] for event in events]
    assert kinds[0] == "message.started" and kinds[-1] == "message.done"
    assert set(kinds[1:-1]) == {"message.delta"}
    streamed = "".join(event["text"] for event in events if event["type"] == "message.delta")
    assert streamed.strip() == reply.content
    assert events[-1]["usage"] == {"prompt_tokens": reply.prompt_tokens, "completion_tokens": 30}


def test_running_the_same_job_twice_yields_one_reply(owner: Any, tiny_backend: Any, run_job: Any) -> None:
    reply = post(owner).reply
    reply_generate(reply_id=reply.pk, backend=tiny_backend, worker="test-worker")
    reply.refresh_from_db()
    first = (reply.content, reply.finished_at)
    events = run_job(reply)
    reply.refresh_from_db()
    assert (reply.content, reply.finished_at) == first
    assert events == []
    assert reply.conversation.messages.filter(role="assistant").count() == 1


def test_a_job_whose_conversation_was_deleted_does_nothing(owner: Any, tiny_backend: Any) -> None:
    reply = post(owner).reply
    reply.conversation.delete()
    reply_generate(reply_id=reply.pk, backend=tiny_backend, worker="test-worker")  # no error
    assert not Message.objects.filter(pk=reply.pk).exists()


def test_a_prompt_too_long_for_the_model_fails_with_a_readable_reason(
    owner: Any, tiny_backend: Any, run_job: Any
) -> None:
    conversation = conversations.conversation_create(user=owner, system_prompt="be verbose " * 200)
    reply = post(owner, conversation_id=conversation.pk).reply
    events = run_job(reply)
    reply.refresh_from_db()
    assert reply.status == Message.Status.FAILED
    assert reply.error_code == "context_overflow"
    assert "context of 256 tokens" in reply.error
    assert events[-1]["type"] == "message.failed" and events[-1]["error"] == reply.error
    # The user's words are still there.
    assert conversation.messages.get(role="user").content == "What is the capital of France?"


def test_history_skips_failed_replies_and_their_questions(owner: Any) -> None:
    conversation = conversations.conversation_create(user=owner, system_prompt="Be brief.")
    first = post(owner, "first question", conversation_id=conversation.pk).reply
    finish(first, "first answer")
    failed = post(owner, "question that failed", conversation_id=conversation.pk).reply
    reply_fail(reply_id=failed.pk, code="internal", error="boom")
    newest = post(owner, "newest question", conversation_id=conversation.pk).reply
    assert selectors.reply_turns(reply=newest) == [
        Turn("system", "Be brief."),
        Turn("user", "first question"),
        Turn("assistant", "first answer"),
        Turn("user", "newest question"),
    ]


def test_api_keys_are_stored_hashed_shown_once_and_revocable(owner: Any, other_user: Any) -> None:
    api_key, secret = accounts.api_key_create(user=owner, name="laptop")
    assert secret.startswith("sanjai-")
    assert secret not in {api_key.hashed_secret, api_key.prefix} and len(api_key.hashed_secret) == 64
    assert accounts.api_key_authenticate(key=secret) == owner
    assert accounts.api_key_authenticate(key=secret + "x") is None
    assert accounts.api_key_authenticate(key="sanjai-nothing") is None
    with pytest.raises(ApiKey.DoesNotExist):
        accounts.api_key_revoke(user=other_user, key_id=api_key.pk)
    accounts.api_key_revoke(user=owner, key_id=api_key.pk)
    assert accounts.api_key_authenticate(key=secret) is None


def test_cancelling_a_queued_reply_stops_it_before_it_runs(owner: Any, other_user: Any, run_job: Any) -> None:
    reply = post(owner).reply
    with pytest.raises(Message.DoesNotExist):
        reply_cancel(user=other_user, message_id=reply.pk)
    cancelled = reply_cancel(user=owner, message_id=reply.pk)
    assert cancelled.status == Message.Status.CANCELLED
    assert run_job(reply) == []  # the job finds nothing to claim
    reply.refresh_from_db()
    assert reply.status == Message.Status.CANCELLED and reply.content == ""
    with pytest.raises(NotCancellable):
        reply_cancel(user=owner, message_id=reply.pk - 1)  # the user's own message


class PausingBackend:
    """The real tiny backend, paused after its first streamed text until released."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.model_name = backend.model_name
        self.streaming = threading.Event()
        self.release = threading.Event()

    def generate(self, request: Any, on_text: Any = None) -> Any:
        def hook(text: str) -> None:
            on_text(text)
            if not self.streaming.is_set():
                self.streaming.set()
                self.release.wait(30)

        return self.backend.generate(request, on_text=hook)


@contextmanager
def paused_mid_reply(reply: Message, tiny_backend: Any) -> Iterator[list[BaseException]]:
    """Run the job in a thread as a worker would, paused after its first text.

    The block runs while the reply is streaming; on leaving it, the job goes on
    (after its next status check falls due) and is joined. Yields the errors the job raised.
    """
    from django.db import connection

    backend = PausingBackend(tiny_backend)
    failures: list[BaseException] = []

    def work() -> None:
        try:
            reply_generate(reply_id=reply.pk, backend=backend, worker="test-worker")
        except BaseException as exc:  # reported to the test instead of lost in the thread
            failures.append(exc)
        finally:
            connection.close()

    worker = threading.Thread(target=work)
    worker.start()
    assert backend.streaming.wait(30)
    try:
        yield failures
    finally:
        time.sleep(0.3)  # let the worker's next status check fall due
        backend.release.set()
        worker.join(30)


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_streaming_reply_keeps_the_partial_text(owner: Any, tiny_backend: Any) -> None:
    reply = post(owner, max_new_tokens=200).reply
    with paused_mid_reply(reply, tiny_backend):
        reply_cancel(user=owner, message_id=reply.pk)
    reply.refresh_from_db()
    assert reply.status == Message.Status.CANCELLED
    assert reply.finish_reason == "cancelled"
    assert reply.content and 0 < reply.completion_tokens < 200


def test_deltas_carry_offsets_that_rebuild_the_text(owner: Any, run_job: Any) -> None:
    reply = post(owner, max_new_tokens=40).reply
    events = run_job(reply)
    text = ""
    for event in (e for e in events if e["type"] == "message.delta"):
        assert event["offset"] == len(text)
        text += event["text"]
    reply.refresh_from_db()
    assert text.strip() == reply.content


def test_rename_delete_and_search_are_per_user(owner: Any, other_user: Any) -> None:
    mine = conversations.conversation_create(user=owner, title="Trip plans")
    post(owner, "Which train goes to Lyon?", conversation_id=mine.pk)
    theirs = conversations.conversation_create(user=other_user, title="Lyon secrets")
    assert list(selectors.conversation_search(user=owner, query="lyon")) == [mine]  # content match
    assert list(selectors.conversation_search(user=owner, query="trip")) == [mine]  # title match
    with pytest.raises(Conversation.DoesNotExist):
        conversations.conversation_update(user=owner, conversation_id=theirs.pk, title="mine now")
    with pytest.raises(Conversation.DoesNotExist):
        conversations.conversation_delete(user=owner, conversation_id=theirs.pk)
    renamed = conversations.conversation_update(
        user=owner, conversation_id=mine.pk, title="  Lyon   by train "
    )
    assert renamed.title == "Lyon by train"
    conversations.conversation_delete(user=owner, conversation_id=mine.pk)
    assert not Message.objects.filter(conversation_id=mine.pk).exists()
    assert Conversation.objects.filter(pk=theirs.pk).exists()


def test_replies_held_by_a_dead_worker_are_failed_and_free_their_conversation(
    owner: Any, settings: Any, redis_url: str
) -> None:
    from inference import presence

    settings.REDIS_URL = redis_url
    settings.WORKER_HEARTBEAT_TTL_S = 0  # Redis has been up for longer: heartbeats are to be trusted
    alive = presence.WorkerInfo(id="alive/1/a", name="alive", model="tiny", device="cpu", since=time.time())
    heartbeat = presence.Heartbeat(redis_url, alive, ttl_s=30)
    heartbeat.start()
    try:
        orphan = post(owner, "question of a dead worker").reply
        Message.objects.filter(pk=orphan.pk).update(status="streaming", worker="dead/9/z", content="Half")
        held = post(owner, "new", conversation_id=conversations.conversation_create(user=owner).pk).reply
        Message.objects.filter(pk=held.pk).update(status="streaming", worker=alive.id)
        assert fail_lost_replies() == 1
    finally:
        heartbeat.stop()
    orphan.refresh_from_db()
    held.refresh_from_db()
    assert orphan.status == Message.Status.FAILED and orphan.error_code == "worker_lost"
    assert orphan.content == "Half"  # the text written before the worker died stays
    assert held.status == Message.Status.STREAMING  # its worker is alive: it may still be generating
    # The conversation takes new messages again.
    post(owner, "again", conversation_id=orphan.conversation_id)


def test_sending_to_a_conversation_whose_reply_lost_its_worker_ends_that_reply_at_once(
    owner: Any, settings: Any, redis_url: str
) -> None:
    settings.REDIS_URL = redis_url  # reachable, and no worker's heartbeat in it
    settings.WORKER_HEARTBEAT_TTL_S = 0
    orphan = post(owner, "question of a dead worker").reply
    Message.objects.filter(pk=orphan.pk).update(status="streaming", worker="dead/9/z")
    again = post(owner, "again", conversation_id=orphan.conversation_id)
    orphan.refresh_from_db()
    assert orphan.status == Message.Status.FAILED and orphan.error_code == "worker_lost"
    assert again.reply.status == Message.Status.PENDING


def test_a_missing_heartbeat_right_after_a_redis_restart_is_not_a_death(
    owner: Any, settings: Any, redis_url: str
) -> None:
    settings.REDIS_URL = redis_url
    settings.WORKER_HEARTBEAT_TTL_S = 3600  # "Redis came up less than a heartbeat TTL ago"
    reply = post(owner).reply
    Message.objects.filter(pk=reply.pk).update(status="streaming", worker="busy/1/a")
    assert fail_lost_replies() == 0
    reply.refresh_from_db()
    assert reply.status == Message.Status.STREAMING  # its worker may not have beaten again yet


def test_a_reply_streaming_past_the_time_limit_is_failed_even_on_a_live_worker(
    owner: Any, settings: Any
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from chat.lifecycle.sweep import fail_overrun

    settings.GENERATION_TIME_LIMIT_S = 60
    stuck, fresh = (
        post(owner).reply,
        post(owner, conversation_id=conversations.conversation_create(user=owner).pk).reply,
    )
    long_ago = timezone.now() - timedelta(seconds=60 + 61)
    Message.objects.filter(pk=stuck.pk).update(status="streaming", worker="alive/1/a", started_at=long_ago)
    Message.objects.filter(pk=fresh.pk).update(
        status="streaming", worker="alive/1/a", started_at=timezone.now()
    )
    assert fail_overrun() == 1
    stuck.refresh_from_db()
    fresh.refresh_from_db()
    assert stuck.status == Message.Status.FAILED and stuck.error_code == "timeout"
    assert fresh.status == Message.Status.STREAMING


def test_a_publish_that_fails_never_fails_a_reply_a_worker_has_claimed(owner: Any) -> None:
    reply = post(owner).reply
    Message.objects.filter(pk=reply.pk).update(status="streaming", worker="alive/1/a")
    assert not reply_fail(
        reply_id=reply.pk, code="worker_unavailable", error="broker blip", only_pending=True
    )
    reply.refresh_from_db()
    assert reply.status == Message.Status.STREAMING


@pytest.mark.django_db(transaction=True)
def test_deleting_the_conversation_mid_reply_stops_the_job_quietly(owner: Any, tiny_backend: Any) -> None:
    reply = post(owner, max_new_tokens=200).reply
    with paused_mid_reply(reply, tiny_backend) as failures:
        conversations.conversation_delete(user=owner, conversation_id=reply.conversation_id)
    assert failures == []
    assert not Message.objects.filter(pk=reply.pk).exists()


# --- Branches ----------------------------------------------------------------------


def branch_of(conversation: Conversation) -> list[tuple[str, str]]:
    conversation.refresh_from_db()
    return [(m.role, m.content) for m in selectors.conversation_branch(conversation=conversation).messages]


def test_regenerating_keeps_the_old_reply_as_a_sibling(
    owner: Any, django_capture_on_commit_callbacks: Any
) -> None:
    conversation = conversations.conversation_create(user=owner)
    first = post(owner, "Capital of France?", conversation_id=conversation.pk)
    finish(first.reply, "Lyon")
    with captured_events(conversation.pk) as events, django_capture_on_commit_callbacks(execute=True):
        again = post(owner, "", action="regenerate", conversation_id=conversation.pk)
    assert again.user_message.pk == first.user_message.pk  # the same question, answered again
    assert again.reply.parent_id == first.user_message.pk == first.reply.parent_id
    assert Message.objects.filter(pk=first.reply.pk, content="Lyon").exists()  # nothing deleted
    assert branch_of(conversation) == [("user", "Capital of France?"), ("assistant", "")]
    branch = selectors.conversation_branch(conversation=conversation)
    assert branch.siblings[again.reply.pk] == [first.reply.pk, again.reply.pk]
    created = [e for e in events if e["type"] == "message.created"]
    assert [e["message"]["siblings"] for e in created] == [[first.reply.pk, again.reply.pk]]
    assert not [e for e in events if e["type"] == "message.deleted"]


def test_editing_keeps_the_old_question_and_its_reply(owner: Any) -> None:
    conversation = conversations.conversation_create(user=owner)
    one = post(owner, "Hello", conversation_id=conversation.pk)
    finish(one.reply, "Hi!")
    two = post(owner, "Capital of Frnace?", conversation_id=conversation.pk)
    finish(two.reply, "Which country?")
    edited = post(owner, "Capital of France?", action="edit", conversation_id=conversation.pk)
    # A sibling of the edited question, under the same earlier reply, with its own new reply.
    assert edited.user_message.pk != two.user_message.pk
    assert edited.user_message.parent_id == two.user_message.parent_id == one.reply.pk
    assert edited.reply.parent_id == edited.user_message.pk
    two.user_message.refresh_from_db()
    assert two.user_message.content == "Capital of Frnace?"
    assert Message.objects.get(pk=two.reply.pk).content == "Which country?"
    assert branch_of(conversation) == [
        ("user", "Hello"),
        ("assistant", "Hi!"),
        ("user", "Capital of France?"),
        ("assistant", ""),
    ]
    assert conversation.messages.count() == 6
    # Editing a first message makes a second first message.
    fresh = conversations.conversation_create(user=owner)
    finish(post(owner, "Bonjour", conversation_id=fresh.pk).reply)
    root = post(owner, "Hello", action="edit", conversation_id=fresh.pk)
    assert root.user_message.parent_id is None
    assert branch_of(fresh) == [("user", "Hello"), ("assistant", "")]
    assert fresh.messages.count() == 4


def test_the_prompt_of_a_reply_holds_only_its_own_branch(owner: Any) -> None:
    conversation = conversations.conversation_create(user=owner, system_prompt="Be brief.")
    one = post(owner, "Q1", conversation_id=conversation.pk)
    finish(one.reply, "A1")
    two = post(owner, "Q2", conversation_id=conversation.pk)
    finish(two.reply, "A2")
    edited = post(owner, "Q2 again", action="edit", conversation_id=conversation.pk)
    assert selectors.reply_turns(reply=edited.reply) == [
        Turn("system", "Be brief."),
        Turn("user", "Q1"),
        Turn("assistant", "A1"),
        Turn("user", "Q2 again"),
    ]
    finish(edited.reply, "A2 again")
    # Back on the first version of Q2, the next question continues that branch.
    conversations.branch_switch(user=owner, message_id=two.user_message.pk)
    three = post(owner, "Q3", conversation_id=conversation.pk)
    assert three.user_message.parent_id == two.reply.pk
    assert selectors.reply_turns(reply=three.reply) == [
        Turn("system", "Be brief."),
        Turn("user", "Q1"),
        Turn("assistant", "A1"),
        Turn("user", "Q2"),
        Turn("assistant", "A2"),
        Turn("user", "Q3"),
    ]


def test_switching_branches_is_stored_and_refused_while_a_reply_runs(
    owner: Any, other_user: Any, django_capture_on_commit_callbacks: Any
) -> None:
    conversation = conversations.conversation_create(user=owner)
    first = post(owner, "Tell me a joke", conversation_id=conversation.pk)
    finish(first.reply, "Joke one")
    second = post(owner, "", action="regenerate", conversation_id=conversation.pk)
    with pytest.raises(limits.ConversationBusy):  # the new reply would go on out of sight
        conversations.branch_switch(user=owner, message_id=first.reply.pk)
    finish(second.reply, "Joke two")
    before = Conversation.objects.get(pk=conversation.pk).updated
    with captured_events(conversation.pk) as events, django_capture_on_commit_callbacks(execute=True):
        conversations.branch_switch(user=owner, message_id=first.reply.pk, conversation_id=conversation.pk)
    assert events == [{"type": "branch.switched", "leaf_id": first.reply.pk}]
    fresh = Conversation.objects.get(pk=conversation.pk)  # as a reload reads it
    assert fresh.current_leaf_id == first.reply.pk and fresh.updated == before  # not activity
    assert branch_of(fresh) == [("user", "Tell me a joke"), ("assistant", "Joke one")]
    # Switching at the question goes down its newest reply.
    conversations.branch_switch(user=owner, message_id=first.user_message.pk)
    assert branch_of(conversation)[-1] == ("assistant", "Joke two")
    elsewhere = conversations.conversation_create(user=owner)
    for user, kwargs in [(other_user, {}), (owner, {"conversation_id": elsewhere.pk})]:
        with pytest.raises(Message.DoesNotExist):
            conversations.branch_switch(user=user, message_id=first.reply.pk, **kwargs)


def test_the_migration_keeps_each_existing_conversation_as_one_branch(owner: Any) -> None:
    from django.apps import apps

    migration = importlib.import_module("chat.migrations.0008_branches")
    a = conversations.conversation_create(user=owner)
    b = conversations.conversation_create(user=owner)
    rows = [  # interleaved, and unlinked, as they were before branches
        Message.objects.create(conversation=conversation, role=role, content=content)
        for conversation, role, content in [
            (a, "user", "a1"),
            (b, "user", "b1"),
            (a, "assistant", "a2"),
            (a, "user", "a3"),
            (b, "assistant", "b2"),
        ]
    ]
    empty = conversations.conversation_create(user=owner)
    for _ in range(2):  # safe to run twice
        migration.link_as_single_branch(apps, None)
    parents = {m.content: m.parent_id for m in Message.objects.all()}
    assert parents == {"a1": None, "a2": rows[0].pk, "a3": rows[2].pk, "b1": None, "b2": rows[1].pk}
    assert branch_of(a) == [("user", "a1"), ("assistant", "a2"), ("user", "a3")]
    assert branch_of(b) == [("user", "b1"), ("assistant", "b2")]
    assert (a.current_leaf_id, b.current_leaf_id) == (rows[3].pk, rows[4].pk)
    empty.refresh_from_db()
    assert empty.current_leaf_id is None
