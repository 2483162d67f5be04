"""Two web replicas on one Redis and one database, as compose.replicas.yaml runs them.

Two real ASGI servers (replica A and replica B, the launcher's command), one
Celery worker with a model whose replies run until their max_new_tokens, and,
where Debian's nginx is installed, the repository's deploy/nginx.conf in front
of both. What one replica does must hold on the other: a socket on B hears
what A stored, a rate limit and a login lockout counted on A refuse on B, two
sweepers end a lost reply once, and a page whose replica dies reconnects
through the proxy to the other and follows the reply it was showing.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from chat.models import Conversation, Message
from tests.stack import ARTIFACTS, ROOT, Stack, _wait, _web_ready, database_url, free_port, running_stack

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

RATE_PER_MINUTE = 2
LOGIN_FAILURES = 3
SWEEP_INTERVAL_S = 1
HEARTBEAT_TTL_S = 3
TIMEOUT_S = 60  # any one wait on a busy two-core machine
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@dataclass
class Replicas:
    stack: Stack  # replica A, the worker and Redis
    b_url: str
    proxy_url: str | None  # nginx in front of both, if it is installed

    @property
    def a_url(self) -> str:
        return self.stack.base_url


@pytest.fixture(scope="module")
def endless_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_model import build_endless_model

    return build_endless_model(tmp_path_factory.mktemp("replicas") / "tiny-endless")


@pytest.fixture(scope="module")
def replicas(django_db_setup: None, endless_model_dir: Path, redis_server: Any) -> Iterator[Replicas]:
    from django.conf import settings
    from django.db import connection

    env = {
        "MODEL_PATH": str(endless_model_dir),
        "GENERATION_MAX_NEW_TOKENS": "4000",
        "MAX_REPLIES_PER_MINUTE": str(RATE_PER_MINUTE),
        "LOGIN_FAILURE_LIMIT": str(LOGIN_FAILURES),
        "REPLY_SWEEP_INTERVAL_S": str(SWEEP_INTERVAL_S),
        "WORKER_HEARTBEAT_TTL_S": str(HEARTBEAT_TTL_S),
        "BEHIND_PROXY": "true",  # as compose.replicas.yaml sets it
    }
    database = database_url(connection.settings_dict)
    redis_url = f"{redis_server.connection_url}/0"
    with running_stack(
        name="replica-a", database=database, redis_url=redis_url, secret_key=settings.SECRET_KEY, env=env
    ) as stack:
        b_port = free_port()
        b_env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "sanjai_site.settings",
            "DATABASE_URL": database,
            "REDIS_URL": redis_url,
            "SECRET_KEY": settings.SECRET_KEY,
            "HF_HUB_OFFLINE": "1",
            **env,
        }
        from sanjai_site.launcher import web_command

        with open(ARTIFACTS / "replica-b-web.log", "wb") as log:
            b = subprocess.Popen(
                web_command("127.0.0.1", str(b_port)),
                cwd=ROOT,
                env=b_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            proxy = None
            try:
                b_url = f"http://127.0.0.1:{b_port}"
                _wait("replica B", lambda: _web_ready(b_url), TIMEOUT_S, [b])
                proxy, proxy_url = _start_proxy(stack.base_url, b_url) if NGINX else (None, None)
                yield Replicas(stack=stack, b_url=b_url, proxy_url=proxy_url)
            finally:
                for process in (proxy, b):
                    if process is not None:
                        process.terminate()
                        process.wait(timeout=20)


def _start_proxy(a_url: str, b_url: str) -> tuple[subprocess.Popen[bytes], str]:
    """Debian's nginx with deploy/nginx.conf, its upstreams pointed at the two test replicas."""
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    port = free_port()
    conf = conf.replace("web-a:8000", a_url.removeprefix("http://")).replace(
        "web-b:8000", b_url.removeprefix("http://")
    )
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    work = ARTIFACTS / "replica-proxy"
    work.mkdir(parents=True, exist_ok=True)
    conf = conf.replace("/tmp/nginx", str(work / "nginx"))  # noqa: S108 (the text replaced)
    (work / "nginx.conf").write_text(conf)
    log = open(ARTIFACTS / "replica-proxy.log", "wb")  # noqa: SIM115 (open for the process's life)
    process = subprocess.Popen(
        [NGINX, "-c", str(work / "nginx.conf"), "-p", str(work), "-g", "daemon off;"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    _wait("nginx", lambda: _web_ready(url), TIMEOUT_S, [process])
    return process, url


# --- Clients, as the page and API users are -----------------------------------------


def session_cookie(user: Any) -> str:
    """A logged-in browser's cookie: a session row in the shared database, valid on any replica."""
    from django.conf import settings
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session.update(
        {
            "_auth_user_id": str(user.pk),
            "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
            "_auth_user_hash": user.get_session_auth_hash(),
        }
    )
    session.save()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


def socket(base_url: str, conversation_id: int, cookie: str) -> Any:
    url = base_url.replace("http://", "ws://") + f"/ws/conversations/{conversation_id}/"
    return websockets.connect(url, origin=base_url, additional_headers={"Cookie": cookie})


async def next_event(ws: Any, kind: str, timeout_s: float = TIMEOUT_S, **match: Any) -> dict[str, Any]:
    """The next event of type `kind` (and with the fields in `match`), skipping the others."""
    deadline = time.monotonic() + timeout_s
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), max(deadline - time.monotonic(), 0.1)))
        if event["type"] == kind and all(event.get(k) == v for k, v in match.items()):
            return event


def send(text: str, tokens: int = 3000) -> str:
    return json.dumps({"action": "send", "content": text, "params": {"max_new_tokens": tokens}})


# --- Events ------------------------------------------------------------------------------


def test_a_socket_on_one_replica_hears_what_the_other_stores_and_the_worker_writes(
    replicas: Replicas, owner: Any
) -> None:
    conversation = Conversation.objects.create(owner=owner)
    cookie = session_cookie(owner)

    async def run() -> None:
        async with socket(replicas.b_url, conversation.pk, cookie) as on_b:
            await next_event(on_b, "snapshot")
            async with socket(replicas.a_url, conversation.pk, cookie) as on_a:
                await next_event(on_a, "snapshot")
                await on_a.send(send("Heard on B?"))
                asked = await next_event(on_b, "message.created")
                assert asked["message"]["role"] == "user" and asked["message"]["content"] == "Heard on B?"
                reply = (await next_event(on_b, "message.created"))["message"]
                assert reply["role"] == "assistant"
                delta = await next_event(on_b, "message.delta", message_id=reply["id"])
                assert delta["text"]
                # Stopped from A: B hears the end, with the text as stored.
                await on_a.send(json.dumps({"action": "cancel", "message_id": reply["id"]}))
                ended = await next_event(on_b, "message.cancelled", message_id=reply["id"])
            stored = await asyncio.to_thread(lambda: Message.objects.get(pk=reply["id"]))
            assert stored.status == Message.Status.CANCELLED
            assert ended["content"] == stored.content and stored.content.startswith(delta["text"])

    asyncio.run(run())


# --- Limits ------------------------------------------------------------------------------


def test_a_rate_limit_counted_on_one_replica_refuses_on_the_other(
    replicas: Replicas, owner: Any, owner_key: str
) -> None:
    headers = {"Authorization": f"Bearer {owner_key}"}
    answers = []
    for url in (replicas.a_url, replicas.b_url, replicas.b_url, replicas.a_url):
        conversation = Conversation.objects.create(owner=owner)  # one each: no "still answering"
        answers.append(
            httpx.post(
                f"{url}/api/v1/conversations/{conversation.pk}/messages",
                json={"content": "Hello", "max_new_tokens": 1},
                headers=headers,
                timeout=TIMEOUT_S,
            )
        )
    assert [a.status_code for a in answers] == [202, 202, 429, 429], [a.text for a in answers]
    assert f"at most {RATE_PER_MINUTE} replies a minute" in answers[2].json()["detail"]
    assert int(answers[3].headers["Retry-After"]) > 0


def login(client: httpx.Client, password: str, address: str = "203.0.113.7") -> httpx.Response:
    client.get("/login/")
    return client.post(
        "/login/",
        data={"username": "olivia", "password": password, "csrfmiddlewaretoken": client.cookies["csrftoken"]},
        headers={"Referer": f"{client.base_url}/login/", "X-Forwarded-For": address},
    )


def test_a_login_lockout_counted_on_one_replica_holds_on_the_other(replicas: Replicas, owner: Any) -> None:
    with httpx.Client(base_url=replicas.a_url, timeout=TIMEOUT_S) as on_a:
        for _ in range(LOGIN_FAILURES - 1):
            assert login(on_a, "not the password").status_code == 200  # the form again, with its error
    with httpx.Client(base_url=replicas.b_url, timeout=TIMEOUT_S) as on_b:
        # B's first failure is the pair's last allowed one: it counted A's.
        assert login(on_b, "not the password").status_code == 429
        locked = login(on_b, "correct horse battery")
        assert locked.status_code == 429, locked.text[:300]
        assert "sessionid" not in on_b.cookies
    # Another client address (behind the proxy: the one it appends) is not locked out.
    with httpx.Client(base_url=replicas.a_url, timeout=TIMEOUT_S) as elsewhere:
        assert login(elsewhere, "correct horse battery", address="198.51.100.9").status_code == 302


# --- Faults -------------------------------------------------------------------------------


def test_two_sweepers_end_a_reply_whose_worker_died_once(replicas: Replicas, owner: Any) -> None:
    """Each web replica runs a sweeper; both see the lost reply, one update wins."""
    conversation = Conversation.objects.create(owner=owner)
    cookie = session_cookie(owner)
    stack = replicas.stack

    async def run() -> list[dict[str, Any]]:
        async with socket(replicas.b_url, conversation.pk, cookie) as ws:
            await next_event(ws, "snapshot")
            await ws.send(send("Until the worker dies"))
            reply = (await next_event(ws, "message.created", timeout_s=TIMEOUT_S))["message"]
            while reply["role"] != "assistant":
                reply = (await next_event(ws, "message.created"))["message"]
            await next_event(ws, "message.delta", message_id=reply["id"])
            stack.worker.kill()
            failed = [await next_event(ws, "message.failed", message_id=reply["id"])]
            # Both sweepers have passed again by now: a second ending would have come.
            await asyncio.sleep(3 * SWEEP_INTERVAL_S)
            with_more = []
            while True:
                try:
                    with_more.append(json.loads(await asyncio.wait_for(ws.recv(), 0.5)))
                except TimeoutError:
                    break
            return failed + [
                e
                for e in with_more
                if e["type"].startswith("message.") and e.get("message_id") == reply["id"]
            ]

    try:
        endings = asyncio.run(run())
    finally:
        stack.worker.wait(timeout=20)
        stack.restart_worker()
    assert [e["type"] for e in endings] == ["message.failed"]
    assert endings[0]["code"] == "worker_lost"
    assert re.search("worker stopped", endings[0]["error"])


@pytest.mark.skipif(NGINX is None, reason="Debian's nginx is not installed (apt-get install nginx-light)")
def test_a_page_whose_replica_dies_reconnects_through_the_proxy_and_follows_its_reply(
    replicas: Replicas, owner: Any
) -> None:
    """As static/js/chat/socket.js and events.js do: reconnect, take the snapshot's text,
    then add only what each delta has beyond it (a delta past it: ask for a snapshot again)."""
    assert replicas.proxy_url is not None
    conversation = Conversation.objects.create(owner=owner)
    cookie = session_cookie(owner)
    stack = replicas.stack

    async def run() -> tuple[int, str, str]:
        async with socket(replicas.a_url, conversation.pk, cookie) as on_a:
            await next_event(on_a, "snapshot")
            await on_a.send(send("Follow me across"))
            reply = (await next_event(on_a, "message.created", timeout_s=TIMEOUT_S))["message"]
            while reply["role"] != "assistant":
                reply = (await next_event(on_a, "message.created"))["message"]
            await next_event(on_a, "message.delta", message_id=reply["id"])
            stack.web.send_signal(signal.SIGKILL)  # replica A crashes mid-reply
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(next_event(on_a, "never"), TIMEOUT_S)
        # The page's next try goes to the proxy's address, which only B answers now.
        async with socket(replicas.proxy_url, conversation.pk, cookie) as again:
            shown = ""
            snapshot = await next_event(again, "snapshot")
            [mine] = [m for m in snapshot["messages"] if m["id"] == reply["id"]]
            assert mine["status"] == "streaming"  # still being written, by the worker
            shown = mine["content"]
            synced_at = 0.0
            while len(shown) < 200:
                event = json.loads(await asyncio.wait_for(again.recv(), TIMEOUT_S))
                if event["type"] == "snapshot":
                    [mine] = [m for m in event["messages"] if m["id"] == reply["id"]]
                    shown = mine["content"] if len(mine["content"]) > len(shown) else shown
                elif event["type"] == "message.delta" and event["message_id"] == reply["id"]:
                    offset, text = event["offset"], event["text"]
                    if offset <= len(shown) < offset + len(text):
                        shown += text[len(shown) - offset :]
                    elif offset > len(shown) and time.monotonic() - synced_at > 1:
                        synced_at = time.monotonic()  # a gap: the stored text is behind
                        await again.send(json.dumps({"action": "sync"}))
            await again.send(json.dumps({"action": "cancel", "message_id": reply["id"]}))
            ended = await next_event(again, "message.cancelled", message_id=reply["id"])
        return reply["id"], shown, ended["content"]

    try:
        reply_id, shown, final = asyncio.run(run())
    finally:
        stack.web.wait(timeout=20)
        stack.web = stack.start_web()
        _wait("replica A again", lambda: _web_ready(stack.base_url), TIMEOUT_S, [stack.web])
    stored = Message.objects.get(pk=reply_id).content
    assert final == stored and stored.startswith(shown) and len(shown) >= 200
