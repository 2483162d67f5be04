"""The real stack over real HTTP: ASGI server, Celery worker, embedded Redis, tiny model."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from chat.models import Conversation, Message, Usage
from tests.stack import Stack, stack_on_test_database

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def stack(django_db_setup: None, tiny_model_dir: Path) -> Iterator[Stack]:
    env = {"MODEL_PATH": str(tiny_model_dir), "CHAT_REPLY_TIMEOUT_S": "5", "REQUEST_BODY_TIMEOUT_S": "3"}
    with stack_on_test_database(name="tiny", env=env, documents=True) as running:
        yield running


def post_chat(stack: Stack, key: str, body: dict[str, Any], timeout: float = 60) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/chat", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=timeout
    )


def test_chat_answers_through_the_worker_and_remembers(stack: Stack, owner: Any, owner_key: str) -> None:
    first = post_chat(
        stack,
        owner_key,
        {"message": "What is the capital of France?", "temperature": 0, "max_new_tokens": 16},
    )
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["success"] is True
    assert body["user_message"] == "What is the capital of France?"
    assert isinstance(body["reply"], str)
    assert body["usage"]["completion_tokens"] > 0 and body["usage"]["prompt_tokens"] > 0

    second = post_chat(stack, owner_key, {"message": "And of Italy?", "temperature": 0, "max_new_tokens": 16})
    assert second.status_code == 200, second.text
    follow_up = second.json()
    assert follow_up["conversation_id"] == body["conversation_id"]
    # The first exchange is part of the second prompt.
    assert follow_up["usage"]["prompt_tokens"] > body["usage"]["prompt_tokens"] + 5

    messages = list(Message.objects.filter(conversation_id=body["conversation_id"]))
    assert [(m.role, m.status) for m in messages] == [("user", "done"), ("assistant", "done")] * 2
    reply = messages[1]
    assert reply.pk == body["message_id"] and reply.content == body["reply"]
    assert reply.queued_at and reply.first_token_at and reply.finished_at
    assert reply.queued_at <= reply.first_token_at <= reply.finished_at
    # The worker added both replies' tokens to the owner's usage, under its model.
    usage = Usage.objects.get(user=owner)
    assert usage.replies == 2 and usage.model == reply.model != ""
    assert usage.completion_tokens == sum(m.completion_tokens or 0 for m in messages)


def test_a_browser_session_with_csrf_works_over_http(stack: Stack, owner: Any) -> None:
    with logged_in(stack) as browser:
        token = browser.cookies["csrftoken"]  # rotated at login
        refused = browser.post("/chat", json={"message": "hi"})
        assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
        answered = browser.post(
            "/chat", json={"message": "hi", "max_new_tokens": 4}, headers={"X-CSRFToken": token}
        )
        assert answered.status_code == 200 and answered.json()["success"] is True


def raw_post(
    stack: Stack, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, dict[str, str], bytes]:
    """Send a request head and only `body` (however long the head says it is), then read the answer."""
    address = urlsplit(stack.base_url)
    head = f"POST {path} HTTP/1.1\r\nHost: {address.netloc}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    with socket.create_connection((address.hostname, address.port), timeout=20) as connection:
        # The server may answer before it has read all of `body`, and close: the
        # body goes out beside the reading, and a send cut short by that close
        # is what such a server does, not a failure.
        def send() -> None:
            with suppress(BrokenPipeError, ConnectionResetError):
                connection.sendall(head.encode() + body)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = connection.recv(65536)
            assert chunk, f"the server closed the connection without answering: {received!r}"
            received += chunk
        status_line, _, rest = received.partition(b"\r\n")
        header_block, _, answer = rest.partition(b"\r\n\r\n")
        answer_headers = dict(
            line.decode().lower().split(": ", 1) for line in header_block.split(b"\r\n") if b": " in line
        )
        while len(answer) < int(answer_headers.get("content-length", 0)):
            answer += connection.recv(65536)
        sender.join(timeout=20)
    return int(status_line.split()[1]), answer_headers, answer


@contextmanager
def logged_in(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=60) as browser:
        browser.get("/login/")
        login = browser.post(
            "/login/",
            data={
                "username": "olivia",
                "password": "correct horse battery",
                "csrfmiddlewaretoken": browser.cookies["csrftoken"],
            },
            headers={"Referer": f"{stack.base_url}/login/"},
        )
        assert login.status_code == 302
        yield browser


def test_an_oversized_import_is_turned_away_to_the_profile_page_saying_why(stack: Stack, owner: Any) -> None:
    with logged_in(stack) as browser:
        refused = browser.post(
            "/import/",
            data={"csrfmiddlewaretoken": browser.cookies["csrftoken"]},
            files={"file": ("big.json", b"x" * 21_000_000, "application/json")},
            headers={"Referer": f"{stack.base_url}/profile/"},
        )
        assert refused.status_code == 303 and refused.headers["location"] == "/profile/?import=too-large"
        page = browser.get(refused.headers["location"]).text
    assert "Import failed: The file is larger than 20 MB, the most an import may be." in page
    assert not Conversation.objects.filter(owner=owner).exists()


def test_an_oversized_recording_is_refused_before_its_body_is_read(stack: Stack) -> None:
    # The head promises 50 MB; only 4 bytes follow. An answer now means the
    # server did not wait to store the rest: the refusal came from the head.
    status, _, answer = raw_post(
        stack, "/voice/dictation/", {"Content-Type": "audio/wav", "Content-Length": str(50_000_000)}, b"RIFF"
    )
    assert status == 413 and "the most dictation takes" in answer.decode()


def test_an_oversized_api_body_is_refused_unread_in_the_apis_own_format(stack: Stack, owner_key: str) -> None:
    auth = {"Authorization": f"Bearer {owner_key}", "Content-Type": "application/json"}
    status, _, answer = raw_post(
        stack, "/v1/chat/completions", {**auth, "Content-Length": str(10_000_000)}, b'{"model": '
    )
    assert status == 413
    assert json.loads(answer)["error"]["code"] == "request_too_large"
    # Without a Content-Length the body is counted as it comes, and cut off at the limit.
    chunk = b"x" * 1_000_000
    chunked = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(4))
    status, _, answer = raw_post(
        stack, "/api/v1/conversations", {**auth, "Transfer-Encoding": "chunked"}, chunked
    )
    assert status == 413


def test_a_body_framed_two_ways_is_refused_from_its_head(stack: Stack) -> None:
    # Content-Length says 10 bytes; Transfer-Encoding makes the server read
    # chunks, which could go on for gigabytes uncounted. One chunk is sent and
    # no last one: an answer means the head alone was judged. (The chunk is
    # small enough to sit in the socket's buffers: a bigger body could still be
    # going out when the server answers and closes, and the close reset it.)
    chunk = b"x" * 1_000
    status, _, answer = raw_post(
        stack,
        "/healthz",
        {"Content-Length": "10", "Transfer-Encoding": "chunked"},
        f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n",
    )
    assert status == 400
    assert "Content-Length or Transfer-Encoding, not both" in answer.decode()


def test_a_body_that_drips_in_is_cut_off_at_its_time_limit(stack: Stack, owner_key: str) -> None:
    address = urlsplit(stack.base_url)
    head = (
        f"POST /chat HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: Bearer {owner_key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    with socket.create_connection((address.hostname, address.port), timeout=20) as connection:
        connection.sendall(head.encode() + b'{"message": "')
        connection.settimeout(0.5)
        received = b""
        for _ in range(40):  # a byte every half second, for up to 20 s (the limit is 3 s)
            try:
                received = connection.recv(65536)
                break
            except TimeoutError:
                connection.sendall(b"a")
        connection.settimeout(5)
        with suppress(ConnectionResetError):  # closed with our last drips unread: a reset
            while chunk := connection.recv(65536):  # the rest of the answer, up to its close
                received += chunk
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert b"connection: close" in received.lower()


def test_a_refused_body_that_keeps_coming_is_cut_off_with_its_connection(
    stack: Stack, owner_key: str
) -> None:
    # Refused from its head (a gigabyte declared), answered at once; the client
    # goes on sending. The server drops what comes only until the body's time
    # limit, then closes the connection: it is never held open by a drip.
    address = urlsplit(stack.base_url)
    head = (
        f"POST /api/v1/conversations HTTP/1.1\r\nHost: {address.netloc}\r\n"
        f"Authorization: Bearer {owner_key}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000000000\r\n\r\n"
    )
    with socket.create_connection((address.hostname, address.port), timeout=20) as connection:
        connection.sendall(head.encode() + b"{")
        answer = connection.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"connection: close" in answer.lower()
        connection.settimeout(0.5)
        closed = False
        for _ in range(40):  # a byte every half second, for up to 20 s (the limit is 3 s)
            try:
                connection.sendall(b"x")
                if connection.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:  # reset: closed
                closed = True
                break
    assert closed


def test_a_stalled_worker_gives_504_and_the_reply_arrives_later(
    stack: Stack, owner: Any, owner_key: str
) -> None:
    stack.pause_worker()  # alive (its heartbeat has not expired) but not taking jobs
    try:
        started = time.monotonic()
        response = post_chat(stack, owner_key, {"message": "Are you there?", "max_new_tokens": 4})
        waited = time.monotonic() - started
    finally:
        stack.resume_worker()
    assert response.status_code == 504
    body = response.json()
    assert body["success"] is False and "No reply within 5 s" in body["error"]
    assert 4 < waited < 30
    # The job was queued, so the worker answers once it runs again.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        reply = Message.objects.get(pk=body["message_id"])
        if reply.status == Message.Status.DONE:
            break
        time.sleep(0.2)
    assert reply.status == Message.Status.DONE
    assert (
        Message.objects.get(conversation_id=body["conversation_id"], role="user").content == "Are you there?"
    )


def test_a_question_about_a_file_waits_while_it_is_read_then_cites_it(
    stack: Stack, owner: Any, owner_key: str
) -> None:
    import signal

    api = httpx.Client(
        base_url=f"{stack.base_url}/api/v1", headers={"Authorization": f"Bearer {owner_key}"}, timeout=60
    )
    text = "# Parking\n\nVisitors park in lot C behind the library, free after six.\n"
    # The documents worker is held, so the question surely comes before the file is read.
    assert stack.documents_worker is not None
    stack.documents_worker.send_signal(signal.SIGSTOP)
    try:
        uploaded = api.post("/documents", files={"file": ("campus.md", text.encode(), "text/markdown")})
        assert uploaded.status_code == 201, uploaded.text
        document_id = uploaded.json()["id"]
        conversation = api.post("/conversations", json={"title": "Campus"}).json()
        posted = api.post(
            f"/conversations/{conversation['id']}/messages",
            json={"content": "Where do visitors park?", "documents": [document_id], "max_new_tokens": 8},
        )
        assert posted.status_code == 202, posted.text
        reply_id = posted.json()["reply"]["id"]
        time.sleep(1.0)
        waiting = api.get(f"/messages/{reply_id}").json()
        assert waiting["status"] == "pending" and waiting["citations"] == []
    finally:
        stack.documents_worker.send_signal(signal.SIGCONT)

    deadline = time.monotonic() + 60
    while (reply := api.get(f"/messages/{reply_id}").json())["status"] in {"pending", "streaming"}:
        assert time.monotonic() < deadline, reply
        time.sleep(0.2)
    assert reply["status"] == "done", (reply["error_code"], reply["error"])
    assert api.get(f"/documents/{document_id}").json()["status"] == "ready"
    (citation,) = reply["citations"]
    assert citation["document_id"] == document_id and citation["document"] == "campus.md"
    assert "lot C" in citation["passage"] and citation["heading"] == "Parking"


# --- Documents on /v1 and POST /chat (chat/openai/files.py, chat/api.py) ---------------

LLAMAS = "Llamas hum when curious."
LLAMA_NOTES = f"# Llamas\n\n{LLAMAS}\n".encode()


def read_document(document_id: int, timeout_s: float = 60) -> Any:
    """The uploaded document once the stack's documents worker has read it."""
    from chat.models import Document

    deadline = time.monotonic() + timeout_s
    document = Document.objects.get(pk=document_id)
    while document.status == Document.Status.PROCESSING and time.monotonic() < deadline:
        time.sleep(0.1)
        document.refresh_from_db()
    assert document.status == Document.Status.READY, (document.status, document.error)
    return document


def cites_llamas(citations: list[dict[str, Any]], document_id: int) -> bool:
    return any(c["document_id"] == document_id and LLAMAS in c["passage"] for c in citations)


def test_a_file_part_reaches_the_reply_through_the_official_client(stack: Stack, owner_key: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=owner_key, max_retries=0, timeout=60)
    uploaded = client.files.create(file=("llamas.md", LLAMA_NOTES), purpose="user_data")
    assert uploaded.status == "uploaded" and uploaded.filename == "llamas.md"
    document = read_document(int(uploaded.id.removeprefix("file-")))
    assert client.files.retrieve(uploaded.id).status == "processed"

    (model,) = [m.id for m in client.models.list()]
    question = [{"type": "text", "text": "Why do llamas hum?"}]
    messages: Any = [
        {"role": "user", "content": [*question, {"type": "file", "file": {"file_id": uploaded.id}}]}
    ]
    completion = client.chat.completions.create(model=model, messages=messages, max_tokens=4, temperature=0)
    assert completion.choices[0].finish_reason in ("stop", "length")
    citations = completion.model_extra["citations"]  # beside choices: a SanjAI extension
    assert cites_llamas(citations, document.pk) and {c["file_id"] for c in citations} == {uploaded.id}
    conversation = Conversation.objects.get(documents=document)
    assert conversation.messages.get(role="assistant").citations == [
        {k: v for k, v in c.items() if k != "file_id"} for c in citations
    ]

    chunks = list(
        client.chat.completions.create(
            model=model, messages=messages, max_tokens=4, temperature=0, stream=True
        )
    )
    last = next(chunk for chunk in reversed(chunks) if chunk.choices and chunk.choices[0].finish_reason)
    assert cites_llamas(last.model_extra["citations"], document.pk)
    # A completion without files answers as before: no citations field.
    plain = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert "citations" not in (plain.model_extra or {})


def test_chat_answers_with_the_citations_of_its_documents(stack: Stack, owner_key: str) -> None:
    auth = {"Authorization": f"Bearer {owner_key}"}
    uploaded = httpx.post(
        f"{stack.base_url}/api/v1/documents", files={"file": ("llamas.md", LLAMA_NOTES)}, headers=auth
    )
    assert uploaded.status_code == 201, uploaded.text
    document_id = read_document(uploaded.json()["id"]).pk
    body = post_chat(
        stack, owner_key, {"message": "Why do llamas hum?", "documents": [document_id], "max_new_tokens": 4}
    ).json()
    assert body["success"] is True and cites_llamas(body["citations"], document_id), body
    assert body["citations"] == Message.objects.get(pk=body["message_id"]).citations
    # The conversation keeps the document: a follow-up searches it too.
    again = post_chat(stack, owner_key, {"message": "Do llamas hum?", "max_new_tokens": 4}).json()
    assert again["conversation_id"] == body["conversation_id"] and cites_llamas(
        again["citations"], document_id
    )
    httpx.post(f"{stack.base_url}/reset", headers=auth)
    plain = post_chat(stack, owner_key, {"message": "Hi", "max_new_tokens": 2}).json()
    assert plain["success"] is True and plain["citations"] == []


def test_an_oversized_file_is_refused_from_the_requests_head(stack: Stack, owner_key: str) -> None:
    from chat.models import Document

    # The head promises 50 MB; only a few bytes follow. An answer now means the
    # server did not wait to store the rest.
    headers = {
        "Authorization": f"Bearer {owner_key}",
        "Content-Type": "multipart/form-data; boundary=b",
        "Content-Length": "50000000",
    }
    status, _, answer = raw_post(stack, "/v1/files", headers, b"--b\r\n")
    assert status == 413
    # In /v1's own envelope, as the SDK reads errors; the REST API's in its own.
    error = json.loads(answer)["error"]
    assert error["code"] == "file_too_large" and "the most a document may be" in error["message"]
    status, _, answer = raw_post(stack, "/api/v1/documents", headers, b"--b\r\n")
    assert status == 413 and "the most a document may be" in json.loads(answer)["detail"]
    assert not Document.objects.exists()


def test_an_inline_file_is_read_before_its_question_is_answered(
    stack: Stack, owner: Any, owner_key: str
) -> None:
    import base64

    from openai import OpenAI

    from chat.models import Document

    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=owner_key, max_retries=0, timeout=60)
    (model,) = [m.id for m in client.models.list()]
    data = "data:text/markdown;base64," + base64.b64encode(LLAMA_NOTES).decode()
    inline = {"type": "file", "file": {"file_data": data, "filename": "llamas.md"}}
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": "Why do llamas hum?"}, inline]}]
    # Sent at once: the reply waits for the new document to be read, then cites it.
    completion = client.chat.completions.create(model=model, messages=messages, max_tokens=4, temperature=0)
    document = Document.objects.get(owner=owner)
    assert document.status == Document.Status.READY and document.name == "llamas.md"
    assert cites_llamas(completion.model_extra["citations"], document.pk)
