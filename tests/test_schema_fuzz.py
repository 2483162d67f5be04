"""Schema-driven fuzzing of the REST API over real HTTP.

Schemathesis reads the OpenAPI schema the running server serves and
generates requests for every operation, valid ones (with random ids, and
with ids of the caller's real conversation and messages) and invalid ones.
No answer may be a 5xx, have a status the schema does not list, or break the
schema it documents. Bounded: a few dozen examples per operation and mode.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from chat.services import conversations, documents, folders, memory, presets
from tests.conftest import exchange
from tests.stack import Stack, stack_on_test_database

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 15}
VALID_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Invalid requests answer 400 with the documented error body; a 5xx is the failure looked for.
INVALID_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def stack(django_db_setup: None, tiny_model_dir: Path) -> Iterator[Stack]:
    # Short replies keep the single worker's queue short under fuzzing.
    env = {"MODEL_PATH": str(tiny_model_dir), "GENERATION_MAX_NEW_TOKENS": "8"}
    with stack_on_test_database(name="fuzz", env=env) as running:
        yield running


def fuzz(
    strategy: Any, examples: int, checks: list[Any], base_url: str, session: requests.Session
) -> list[tuple[str, int]]:
    """Run `examples` generated cases; each response must pass `checks`. Returns (operation, status)s."""
    seen: list[tuple[str, int]] = []

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,  # no .hypothesis folder in the work tree
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def call(case: Any) -> None:
        response = case.call_and_validate(base_url=base_url, session=session, checks=checks)
        seen.append((case.operation.label, response.status_code))

    call()
    return seen


def test_the_rest_api_survives_schema_fuzzing(stack: Stack, owner: Any, owner_key: str) -> None:
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{stack.base_url}/api/v1/openapi.json")
    conversation = conversations.conversation_create(user=owner, title="Fuzzed")
    _, reply = exchange(conversation, "Hello", "Hi.")
    preset = presets.preset_create(user=owner, name="Fuzzed")
    folder = folders.folder_create(user=owner, name="Fuzzed")
    fact = memory.memory_add(user=owner, text="I am being fuzzed.")
    document = documents.document_upload(user=owner, name="fuzzed.txt", data=b"Fuzzed text.")
    from chat.models import McpServer, ToolStep

    server = McpServer.objects.create(name="fuzzed", command="unused")
    step = ToolStep.objects.create(
        reply=reply, round=1, ordinal=1, server=server, server_name="fuzzed", tool="echo",
        called_as="echo", approval="ask", status=ToolStep.Status.AWAITING_APPROVAL,
    )  # fmt: skip
    real_ids = {
        "conversation_id": conversation.pk,
        "message_id": reply.pk,
        "preset_id": preset.pk,
        "folder_id": folder.pk,
        "fact_id": fact.pk,
        "document_id": document.pk,
        "step_id": step.pk,
    }
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {owner_key}"

    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 40, [op.label for op in operations]
    # Deleting the real conversation early would turn every later real-id case into a 404.
    operations.sort(key=lambda op: op.method.upper() == "DELETE")
    tried: dict[str, set[int]] = {}
    for operation in operations:
        for mode, examples in EXAMPLES.items():
            fixed_ids = [None]
            if mode == GenerationMode.POSITIVE and operation.path_parameters:
                fixed_ids.append({p.name: real_ids[p.name] for p in operation.path_parameters})
            for path_parameters in fixed_ids:
                strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
                checks = VALID_CHECKS if mode == GenerationMode.POSITIVE else INVALID_CHECKS
                for label, status in fuzz(strategy, examples, checks, stack.base_url, session):
                    tried.setdefault(label, set()).add(status)
    elapsed = time.monotonic() - started
    assert elapsed < 90, f"fuzzing took {elapsed:.0f} s"
    # The real ids reached real rows: the fuzz did not only see 404s.
    assert 200 in tried["GET /api/v1/conversations/{conversation_id}/messages"]
    assert 202 in tried["POST /api/v1/conversations/{conversation_id}/messages"]
    assert 200 in tried["GET /api/v1/messages/{message_id}"]
    assert 200 in tried["GET /api/v1/documents/{document_id}"]
