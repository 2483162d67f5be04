"""`make drill-compose`: the drill of `make drill`, across the containers of compose.replicas.yaml.

Brings the two-replica deployment up with podman-compose (or docker compose)
under a project name of its own (`sanjai-drill`: its own containers, network
and volumes, removed at the end), with fresh secrets and the drill's bounds,
PostgreSQL and Redis published on free 127.0.0.1 ports for the drill's own
reads. Every client goes through the proxy, as users do. It makes USERS users
and runs six rounds of `make drill`'s mix (the page's websocket, `POST /chat`,
streamed `/v1`, `/api/v1` with polling); in each but the first, once replies
are streaming:

1. load: nothing else happens;
2. web replica killed: SIGKILL to web-a's server (the engine restarts it);
3. worker killed: SIGKILL to the worker's (the engine restarts it);
4. PostgreSQL restarted (`restart`: SIGTERM, then a new start);
5. worker cut off: `network disconnect` for WORKER_CUT_S, past the heartbeat's
   TTL, then `network connect` again;
6. Redis restarted.

Then the same table and totals as `make drill`: user messages lost, replies
stuck after the sweeper's bounds, 5xx answers without a documented reason.
Target: 0, 0, 0. A proxy's own 502 (the replica behind it died mid-request)
reads as the connection lost, as it would without a proxy.

    .venv/bin/python -m bench.drill_compose [--users 20] [--tokens 24] [--keep]

It needs the image (`make image`) and the base images (`make base-images
BASES="postgres redis nginx"`); `make drill-compose` makes both first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "sanjai-drill"
NETWORK = f"{PROJECT}_default"
# The drill's bounds for the containers, as `make drill` gives its launcher.
BOUNDS = {"REPLY_QUEUE_LIMIT_S": "60", "CHAT_REPLY_TIMEOUT_S": "120"}
WORKER_CUT_S = 25.0  # past WORKER_HEARTBEAT_TTL_S (15 s): the sweeper must notice
START_S = 600  # the first `up` converts the default model in a fresh volume


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def compose_tool() -> list[str]:
    for tool in (["podman-compose"], ["docker", "compose"]):
        if shutil.which(tool[0]):
            return tool
    raise SystemExit(
        "neither podman-compose nor docker is on PATH: apt-get install podman podman-compose runc"
    )


ENGINE = "podman" if shutil.which("podman") else "docker"


def run(*command: str, check: bool = True, quiet: bool = False) -> str:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if check and done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    if not quiet:
        print(f"  $ {' '.join(command)}", flush=True)
    return done.stdout.strip()


def container(service: str) -> str:
    return f"{PROJECT}_{service}_1"


class Deployment:
    """compose.replicas.yaml under the drill's project name, with its env file and ports."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.pg_port = free_port()
        self.redis_port = free_port()
        env = subprocess.run(
            ["deploy/make-env.sh"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        env += "".join(f"{key}={value}\n" for key, value in BOUNDS.items())
        self.env_file = work / "sanjai.env"
        self.env_file.write_text(env)
        self.env_file.chmod(0o600)
        self.values = dict(line.split("=", 1) for line in env.splitlines() if re.match(r"^[A-Z_]+=", line))
        # The drill reads the database and Redis itself: published on 127.0.0.1 only.
        ports = work / "ports.yaml"
        ports.write_text(
            "services:\n"
            f'  postgres:\n    ports: ["127.0.0.1:{self.pg_port}:5432"]\n'
            f'  redis:\n    ports: ["127.0.0.1:{self.redis_port}:6379"]\n'
        )
        self.compose = [*compose_tool(), "-p", PROJECT, "-f", "compose.replicas.yaml", "-f", str(ports)]
        os.environ.update({"SANJAI_ENV_FILE": str(self.env_file), "SANJAI_PORT": str(self.port)})

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database_url(self) -> str:
        v = self.values
        return f"postgres://{v['POSTGRES_USER']}:{v['POSTGRES_PASSWORD']}@127.0.0.1:{self.pg_port}/{v['POSTGRES_DB']}"

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.values['REDIS_PASSWORD']}@127.0.0.1:{self.redis_port}/0"

    def up(self) -> None:
        with (self.work / "up.log").open("w") as log:
            subprocess.run(
                [*self.compose, "up", "-d"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True
            )

    def down(self) -> None:
        with (self.work / "down.log").open("w") as log:
            subprocess.run(
                [*self.compose, "down", "-v"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False
            )

    def save_logs(self) -> None:
        for service in ("web-a", "web-b", "worker", "postgres", "redis", "proxy", "migrate"):
            logs = subprocess.run(
                [ENGINE, "logs", container(service)], capture_output=True, text=True, check=False
            )
            (self.work / f"{service}.log").write_text(logs.stdout + logs.stderr)


# --- Faults, as the machine or an operator makes them ----------------------------------


def crash(service: str) -> None:
    """SIGKILL to the container's main process, from the host: a crash, not a stop."""
    pid = int(run(ENGINE, "inspect", "--format", "{{.State.Pid}}", container(service), quiet=True))
    print(f"  SIGKILL to {service} (pid {pid} on the host)", flush=True)
    os.kill(pid, signal.SIGKILL)


def restart(service: str) -> None:
    run(ENGINE, "restart", "--time", "10", container(service))


def cut_off(service: str, seconds: float) -> None:
    run(ENGINE, "network", "disconnect", NETWORK, container(service))

    def reconnect() -> None:
        time.sleep(seconds)
        run(ENGINE, "network", "connect", "--alias", service, NETWORK, container(service))

    import threading

    threading.Thread(target=reconnect, daemon=True).start()


def healthy(service: str) -> bool:
    """The container's own health check passes (podman runs it on demand: no systemd here)."""
    if ENGINE == "podman":
        check = subprocess.run([ENGINE, "healthcheck", "run", container(service)], capture_output=True)
        return check.returncode == 0
    status = run(ENGINE, "inspect", "--format", "{{.State.Health.Status}}", container(service), quiet=True)
    return status == "healthy"


def ensure_running(service: str) -> None:
    """Start the container if the engine did not restart it (it does, with `unless-stopped`)."""
    state = run(ENGINE, "inspect", "--format", "{{.State.Status}}", container(service), quiet=True)
    if state != "running":
        print(f"  {service} is {state}: starting it", flush=True)
        run(ENGINE, "start", container(service))


ROUNDS: dict[str, Callable[[], None] | None] = {
    "load": None,
    "web replica killed": lambda: crash("web-a"),
    "worker killed": lambda: crash("worker"),
    "postgres restarted": lambda: restart("postgres"),
    "worker cut off": lambda: cut_off("worker", WORKER_CUT_S),
    "redis restarted": lambda: restart("redis"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=24, help="max_new_tokens of each reply")
    parser.add_argument("--keep", action="store_true", help="leave the deployment up (and its volumes)")
    args = parser.parse_args()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="sanjai-drill-compose-"))
    deployment = Deployment(work)
    # bench.drill reads these as it sets Django up: the deployment's database and key.
    os.environ.update(
        {
            "DRILL_DATABASE_URL": deployment.database_url,
            "DRILL_SECRET_KEY": deployment.values["SECRET_KEY"],
            "DRILL_REDIS_URL": deployment.redis_url,
            **BOUNDS,
        }
    )
    from django.db import connection

    from bench import drill
    from inference import presence

    drill.TOKENS = args.tokens
    try:
        print(f"up: {PROJECT} from compose.replicas.yaml, the proxy on {deployment.base_url}", flush=True)
        deployment.up()
        ready = lambda: presence.ready_worker_ids(deployment.redis_url)  # noqa: E731
        # Both replicas, each by its own health check, and the proxy in front of them.
        web = lambda: (  # noqa: E731
            healthy("web-a")
            and healthy("web-b")
            and drill.httpx.get(f"{deployment.base_url}/login/").status_code == 200
        )
        drill.wait_until("the web replicas behind the proxy", web, START_S)
        drill.wait_until("a ready worker", ready, START_S)
        print(f"serving after {time.monotonic() - started:.0f} s", flush=True)
        drill.MODEL_NAME = presence.live_workers(deployment.redis_url)[0].model
        users = drill.make_users(args.users)
        results: dict[str, Any] = {}
        for name, fault in ROUNDS.items():
            began = time.monotonic()
            print(f"round: {name}", flush=True)
            results[name] = asyncio.run(drill.one_round(name, users, deployment.base_url, fault))
            for service in ("web-a", "web-b", "worker", "postgres", "redis", "proxy"):
                ensure_running(service)
            drill.wait_until("a ready worker", ready, 300)
            drill.wait_until("the web replicas behind the proxy", web, 120)
            connection.close()  # the drill's own: PostgreSQL may have restarted under it
            print(f"  {time.monotonic() - began:.0f} s", flush=True)
        bound = float(BOUNDS["REPLY_QUEUE_LIMIT_S"]) + 5 + 15  # + the sweep interval and slack
        print(f"waiting up to {bound:g} s for the sweeper's bounds", flush=True)
        deadline = time.monotonic() + bound
        unfinished = drill.Message.objects.filter(status__in=["pending", "streaming"])
        while unfinished.exists() and time.monotonic() < deadline:
            time.sleep(1)
        code = drill.report(results, started)
        print(f"Container logs: {work}")
        return code
    finally:
        deployment.save_logs()
        if not args.keep:
            deployment.down()
        else:
            print(f"left up: {' '.join(deployment.compose)} down -v  (env file {deployment.env_file})")


if __name__ == "__main__":
    sys.exit(main())
