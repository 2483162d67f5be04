"""Security settings that no request shows: who else on the machine can read the data."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_data_directory_and_the_secret_key_are_private() -> None:
    assert mode(settings.DATA_DIR) == 0o700
    assert mode(settings.DATA_DIR / "secret_key") == 0o600


@pytest.mark.django_db
def test_the_sqlite_database_is_readable_by_its_owner_only() -> None:
    if connection.vendor != "sqlite":
        pytest.skip("this run's database is not an SQLite file")
    connection.ensure_connection()
    database = Path(connection.settings_dict["NAME"])
    assert mode(database) == 0o600
    for companion in (Path(f"{database}-wal"), Path(f"{database}-shm")):
        if companion.exists():
            assert mode(companion) == 0o600
