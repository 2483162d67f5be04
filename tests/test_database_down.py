"""An API answered while the database does not answer: 503 in the API's own envelope, with
Retry-After, not an unexplained 500 (a PostgreSQL restart, `make drill-compose`).

The database is made unreachable for real: the connection is closed and its
settings name a file that cannot be opened, so the driver raises its own error.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test import Client

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def database_gone(tmp_path: Any) -> Iterator[None]:
    name = connection.settings_dict["NAME"]
    connection.close()
    connection.settings_dict["NAME"] = str(tmp_path / "no-such-folder" / "db.sqlite3")
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["NAME"] = name


@pytest.mark.parametrize(
    ("path", "message_of"),
    [
        ("/api/v1/conversations", lambda body: body["detail"]),
        ("/v1/models", lambda body: body["error"]["message"]),
    ],
    ids=["rest", "openai"],
)
def test_an_api_says_the_database_did_not_answer_and_when_to_try_again(
    owner_key: str, database_gone: None, path: str, message_of: Any
) -> None:
    answer = Client().get(path, headers={"Authorization": f"Bearer {owner_key}"})
    assert answer.status_code == 503, answer.content[:300]
    assert answer.headers["Retry-After"] == "5"
    assert "database did not answer" in message_of(answer.json())


def test_the_api_answers_again_once_the_database_is_back(owner_key: str) -> None:
    answer = Client().get("/api/v1/conversations", headers={"Authorization": f"Bearer {owner_key}"})
    assert answer.status_code == 200
