"""The image's entry point: one image, a role chosen by the command.

    web                  the ASGI server (pages, APIs, websockets) on HOST:PORT
    worker [MODEL]       a generation worker for a declared model (default: the default one)
    documents            the worker that reads uploaded documents (the "documents" queue)
    tools                the worker that calls MCP tools for replies (the "tools" queue)
    migrate              apply migrations once, then exit (a one-shot job before web starts)
    manage <command...>  any manage.py command (createsuperuser, create_api_key, ...)
    <anything else>      run as given (python, bash, ...)

web, worker, documents and tools replace this process (exec), so the server or worker is PID 1
and gets the container's SIGTERM itself; migrate runs here and exits. The same commands `make run` starts
(sanjai_site.launcher), without its supervisor: in a container, the
container engine restarts what dies.

web, worker and migrate first wait (up to WAIT_FOR_DATABASE_S, 120 s) for
the database to answer, and web and worker for it to have no unapplied
migration: migrations run once, in the migrate job, and the others start
after it even where the compose tool ignores `depends_on` conditions
(podman-compose 1.0.3 does).
"""

from __future__ import annotations

import os
import sys
import time

APP = "/app"
USAGE = (
    "usage: web | worker [MODEL] | documents | tools | migrate | manage <command...> | <program> [args...]"
)


def wait_for_database(*, migrated: bool) -> None:
    """Return once the database answers (and, if `migrated`, has every migration applied)."""
    import django
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor
    from django.db.utils import OperationalError

    django.setup()
    deadline = time.monotonic() + float(os.environ.get("WAIT_FOR_DATABASE_S", "120"))
    said = ""
    while True:
        try:
            connection.ensure_connection()
            if not migrated:
                return
            executor = MigrationExecutor(connection)
            pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
            if not pending:
                return
            why = f"{len(pending)} migrations not applied yet (the migrate job applies them)"
        except OperationalError as error:
            why = f"the database does not answer yet: {str(error).strip().splitlines()[0]}"
        finally:
            connection.close()  # the exec'd server opens its own
        if time.monotonic() > deadline:
            raise SystemExit(f"Gave up waiting: {why}")
        if why != said:
            print(f"waiting: {why}", flush=True)
            said = why
        time.sleep(2)


MIGRATE_ATTEMPTS = 3


def migrate() -> None:
    """manage.py migrate in this process, tried again when the connection fails.

    A connection can fail after the wait succeeded: podman 4.3's DNS for
    container names (aardvark-dns) was seen answering "temporary failure"
    for a while after `podman-compose up` replaced containers. PostgreSQL
    runs each migration in a transaction, so a second try starts where the
    first stopped.
    """
    from django.core.management import call_command
    from django.db import connection
    from django.db.utils import OperationalError

    for attempt in range(1, MIGRATE_ATTEMPTS + 1):
        try:
            call_command("migrate", interactive=False)
            return
        except OperationalError as error:
            connection.close()
            if attempt == MIGRATE_ATTEMPTS:
                raise SystemExit(f"migrate failed {attempt} times; the last: {error}") from None
            print(f"migrate: {error}; trying again in 5 s", flush=True)
            time.sleep(5)


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sanjai_site.settings")
    sys.path.insert(0, APP)
    role, args = (argv[0], argv[1:]) if argv else ("web", [])
    if role == "web" and not os.environ.get("SECRET_KEY"):
        # Without it, settings would make a key in this container's /data: each
        # replica its own, a new one with each container, every session ended.
        raise SystemExit(
            "SECRET_KEY is not set: give the web container one that stays the same "
            "(compose.yaml reads it from deploy/sanjai.env; `make compose-env` makes that file)"
        )
    if role in ("web", "worker", "documents", "tools", "migrate"):
        wait_for_database(migrated=role != "migrate")
    if role == "web":
        from sanjai_site.launcher import web_command

        command = web_command(os.environ.get("HOST", "0.0.0.0"), os.environ.get("PORT", "8000"))  # noqa: S104
    elif role == "worker":
        if len(args) > 1:
            raise SystemExit(USAGE)
        from sanjai_site.launcher import run_worker

        run_worker(args[0] if args else None)  # execs Celery; a model not declared exits with its list
        raise SystemExit(1)
    elif role == "documents":
        from sanjai_site.launcher import documents_worker_command

        os.environ["DOCUMENTS_WORKER"] = "1"  # it loads no model
        command = documents_worker_command("documents@%h")
    elif role == "tools":
        from sanjai_site.launcher import tools_worker_command

        os.environ["TOOLS_WORKER"] = "1"  # it loads no model
        command = tools_worker_command("tools@%h")
    elif role == "migrate":
        migrate()
        return
    elif role == "manage":
        command = [sys.executable, f"{APP}/manage.py", *args]
    elif role in ("-h", "--help", "help"):
        raise SystemExit(USAGE)
    else:
        command = [role, *args]
    os.chdir(APP)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
