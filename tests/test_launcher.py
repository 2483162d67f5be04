"""`make run` for real: the launcher restarts whatever dies and stops everything on Ctrl-C.

Runs `python -m sanjai_site.launcher` with its own data directory (never the
project's var/), SQLite database and embedded Redis; its log goes to
test-artifacts/launcher.log. Each child is found by the launcher's
"started NAME (pid N)" lines.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from inference import presence
from tests.stack import ARTIFACTS, ROOT, _wait, _web_ready, free_port

pytestmark = pytest.mark.stack

LOG = ARTIFACTS / "launcher.log"
WORKER_READY = r"^worker \| .* celery\.apps\.worker: \S+ ready\.$"
BROKER_CONNECTED = r"^worker \| .* celery\.worker\.consumer\.connection: Connected to redis://"


@dataclass
class Launched:
    process: subprocess.Popen[bytes]
    data_dir: Path
    base_url: str

    env: dict[str, str]

    def wait(self, what: str, ready, timeout_s: float = 60) -> None:
        _wait(what, ready, timeout_s, [self.process])

    def api_key(self, username: str) -> str:
        """A new user of the launched app's database, and an API key of theirs."""
        manage = [sys.executable, "manage.py"]
        make_user = f"from django.contrib.auth.models import User; User.objects.create_user({username!r})"
        subprocess.run([*manage, "shell", "-c", make_user], cwd=ROOT, env=self.env, check=True)
        made = subprocess.run(
            [*manage, "create_api_key", username], cwd=ROOT, env=self.env, check=True, capture_output=True
        )
        return made.stdout.decode().split()[-1]


def log_text() -> str:
    return LOG.read_text(errors="replace")


def count(pattern: str) -> int:
    return len(re.findall(pattern, log_text(), re.M))


def started_pids(name: str) -> list[int]:
    """Every pid the launcher reported for `name`, oldest first."""
    return [int(pid) for pid in re.findall(rf"^started {name} \(pid (\d+)\)$", log_text(), re.M)]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def workers(redis_url: str) -> set[str]:
    try:
        return presence.live_worker_ids(redis_url)
    except redis.RedisError:
        return set()


def pings(redis_url: str) -> bool:
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@pytest.fixture
def launched(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Launched]:
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
    env.update(
        DJANGO_SETTINGS_MODULE="sanjai_site.settings",
        PORT=str(port),
        SANJAI_DATA_DIR=str(tmp_path / "data"),
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        SECRET_KEY="test",
        MODEL_PATH=str(tiny_model_dir),
        DEVICE="cpu",
        HF_HUB_OFFLINE="1",
    )
    with open(LOG, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sanjai_site.launcher"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # out of reach of a Ctrl-C meant for pytest
        )
    try:
        yield Launched(process, tmp_path / "data", f"http://127.0.0.1:{port}", env)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for name in ("web", "worker", "redis"):
            for pid in started_pids(name):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def kill_and_see_restarted(launched: Launched, name: str) -> None:
    """SIGKILL the running `name`; returns once the launcher has said why and started a new one."""
    old = started_pids(name)[-1]
    os.kill(old, signal.SIGKILL)
    said = f"{name} exited (killed by SIGKILL); restarting in 1 s"
    launched.wait(f"{name} reported", lambda: said in log_text(), 30)
    launched.wait(f"{name} restarted", lambda: started_pids(name)[-1] != old, 30)


def test_launcher_restarts_each_child_and_stops_cleanly(launched: Launched) -> None:
    launched.wait("the banner", lambda: "SanjAI is starting at" in log_text(), 240)
    assert "More workers:       make worker (they find this Redis through" in log_text()
    redis_url = (launched.data_dir / "redis.url").read_text().strip()
    assert redis_url.startswith("redis://127.0.0.1:")
    key = launched.api_key("early")
    launched.wait("the web server", lambda: _web_ready(launched.base_url), 120)
    # Sent the moment the site serves, while the worker still imports or loads:
    # it waits for the worker instead of being told to start one.
    first = httpx.post(
        f"{launched.base_url}/chat",
        json={"message": "Hello?", "max_new_tokens": 4},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    assert first.status_code == 200 and first.json()["success"] is True, first.text
    launched.wait("the worker", lambda: count(WORKER_READY) == 1 and bool(workers(redis_url)), 120)
    launched.wait("the ready line", lambda: f"ready: {launched.base_url}" in log_text())

    before = workers(redis_url)
    kill_and_see_restarted(launched, "worker")
    launched.wait("a new worker", lambda: count(WORKER_READY) == 2 and bool(workers(redis_url) - before), 120)

    kill_and_see_restarted(launched, "web")
    launched.wait("the web server again", lambda: _web_ready(launched.base_url))

    connections = count(BROKER_CONNECTED)
    kill_and_see_restarted(launched, "redis")
    launched.wait("Redis on the same URL", lambda: pings(redis_url), 30)
    # The worker stays up and reconnects by itself; its heartbeat, lost with Redis's data, returns.
    launched.wait("the worker back on the broker", lambda: count(BROKER_CONNECTED) > connections)
    launched.wait("the worker's heartbeat again", lambda: bool(workers(redis_url)))
    assert _web_ready(launched.base_url)
    assert len(started_pids("worker")) == 2
    log = log_text()
    assert "web    | " in log and "worker | " in log and "redis  | " in log
    assert launched.process.poll() is None

    # Only the launcher is told (a terminal's Ctrl-C would reach the children too): it stops them.
    launched.process.send_signal(signal.SIGINT)
    assert launched.process.wait(timeout=30) == 0
    pids = [pid for name in ("web", "worker", "redis") for pid in started_pids(name)]
    assert len(pids) == 6
    assert not [pid for pid in pids if alive(pid)]
    assert not (launched.data_dir / "redis.url").exists()


def test_make_run_starts_the_workers_whose_models_fit_and_says_which_do_not(tiny_model_dir: Path) -> None:
    from inference import registry
    from inference.sizing import estimate_need
    from sanjai_site.launcher import plan_workers

    declared = registry.parse(
        {
            "models": {
                "first": {"kind": "local", "path": str(tiny_model_dir)},
                "second": {"kind": "local", "path": str(tiny_model_dir), "engine": False},
                "upstream": {"kind": "remote", "base_url": "http://gpu:8000/v1", "model": "big"},
            }
        }
    )
    first, second = (estimate_need(model) for model in declared.local)
    assert first < second  # the second keeps fp32 weights: no engine to store them in fp16

    started, left_out = plan_workers(declared, available=first + second)
    assert [model.name for model in started] == ["first", "second", "upstream"] and left_out == []

    started, left_out = plan_workers(declared, available=first + second - 1)
    assert [model.name for model in started] == ["first", "upstream"]
    (line,) = left_out
    assert line.startswith("Not starting a worker for second: it needs about")
    assert line.endswith("make worker MODEL=second")

    # Where the memory cannot be read (not Linux), every worker starts and checks for itself.
    assert len(plan_workers(declared, available=None)[0]) == 3


def test_the_web_servers_log_leaves_out_a_line_per_websocket() -> None:
    import logging

    from sanjai_site.log import QuietWebsockets

    def kept(message: str, *args: object) -> bool:
        return QuietWebsockets().filter(
            logging.LogRecord("uvicorn.error", logging.INFO, "", 0, message, args, None)
        )

    assert not kept("connection open") and not kept("connection closed")
    assert not kept('%s - "WebSocket %s" [accepted]', "127.0.0.1:50312", "/ws/conversations/3/")
    assert kept("Uvicorn running on %s://%s:%d (Press CTRL+C to quit)", "http", "127.0.0.1", 8000)
    assert kept("Cancel %s running task(s), timeout graceful shutdown exceeded", 3)
