"""A fresh SanjAI site for a benchmark: an empty SQLite database, users and their API keys."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fresh_site(data_dir: str, users: int, *, model_cache_dir: str) -> tuple[Path, list[str]]:
    """Migrate a new database in `data_dir` and create `users` users; their API keys, in order."""
    database = Path(data_dir) / "bench.sqlite3"
    env = {
        **os.environ,
        "SANJAI_DATA_DIR": data_dir,
        "DATABASE_URL": f"sqlite:///{database}",
        "MODEL_CACHE_DIR": model_cache_dir,
        "SECRET_KEY": "bench",
    }
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    script = (
        "from django.contrib.auth import get_user_model\n"
        "from chat.services.accounts import api_key_create\n"
        f"for i in range({users}):\n"
        "    user = get_user_model().objects.create_user(f'bench{i}', password='bench-password-1')\n"
        "    print(api_key_create(user=user, name='bench')[1])\n"
    )
    printed = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return database, [word for word in printed if word.startswith("sanjai-")]  # shell may print a banner
