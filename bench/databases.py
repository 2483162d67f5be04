"""What the database benches share: each database measured in a child process of its own.

Django reads DATABASE_URL once, so every database gets a fresh process: SQLite in
a file, PostgreSQL in a private cluster made by scripts/postgres.sh on 127.0.0.1,
removed afterwards. The child prints its result as one JSON line, last.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATABASES = ("sqlite", "postgres")


def timings(times_ms: list[float]) -> dict[str, float]:
    """The median and p95 of some timings, in milliseconds."""
    ordered = sorted(times_ms)
    return {
        "median_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 2),
    }


def check(databases: str) -> list[str]:
    """The comma-separated names, each one of DATABASES; ValueError naming one that is not."""
    names = databases.split(",")
    for name in names:
        if name not in DATABASES:
            raise ValueError(f"--databases: sqlite and/or postgres, not {name!r}")
    return names


def on_each(
    databases: list[str], *, module: str, child_args: list[str], pg_port: int
) -> Iterator[dict[str, Any]]:
    """Run `python -m <module> --child <child_args>` on each database in turn; yield each result."""
    for database in databases:
        with tempfile.TemporaryDirectory(prefix=f"sanjai-{module.rsplit('.', 1)[-1]}-") as tmp:
            os.chmod(tmp, 0o755)  # noqa: S103 (the postgres user must reach its cluster inside)
            if database == "sqlite":
                yield _child(f"sqlite:///{tmp}/bench.sqlite3", tmp, module, child_args)
                continue
            cluster = Path(tmp) / "pg"
            script = str(ROOT / "scripts" / "postgres.sh")
            subprocess.run([script, "start", str(cluster), str(pg_port)], check=True)
            try:
                url = f"postgres://postgres@127.0.0.1:{pg_port}/postgres"
                result = _child(url, tmp, module, child_args)
            finally:
                subprocess.run([script, "stop", str(cluster)], check=False)
            yield result


def _child(database_url: str, data_dir: str, module: str, child_args: list[str]) -> dict[str, Any]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        # A folder of its own: the settings make the data folder private (0700).
        "SANJAI_DATA_DIR": str(Path(data_dir) / "data"),
        "DJANGO_SETTINGS_MODULE": "sanjai_site.settings",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", module, "--child", *child_args]
    output = subprocess.run(command, env=env, cwd=ROOT, check=True, capture_output=True, text=True)
    return dict(json.loads(output.stdout.strip().splitlines()[-1]))
