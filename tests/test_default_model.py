"""The packaged SmolLM2-135M-Instruct: converted once from GGUF, then it answers facts.

These load the real default model (about 15 s for the one-time conversion,
then under a second from the cache) and run it on the CPU.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from inference.params import GenerationParams
from inference.types import GenerationRequest, Turn
from tests.stack import Stack, stack_on_test_database

pytestmark = pytest.mark.default_model

GREEDY = GenerationParams(max_new_tokens=24, temperature=0)
FRANCE = "What is the capital of France?"


@pytest.fixture(scope="module")
def default_backend():
    from django.conf import settings

    from inference.backend import TransformersBackend
    from inference.loading import load_model

    return TransformersBackend(load_model("", device="cpu", cache_dir=settings.MODEL_CACHE_DIR))


def test_the_gguf_is_cached_as_plain_safetensors(default_backend: Any) -> None:
    from django.conf import settings

    from inference.loading import default_source, gguf_cache_folder

    folder = gguf_cache_folder(default_source(), settings.MODEL_CACHE_DIR)
    assert (folder / "model.safetensors").exists()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # loads as a plain model, not GGUF again
    assert default_backend.loaded.tokenizer.chat_template
    assert default_backend.loaded.context_tokens == 8192


def test_it_answers_and_follows_up(default_backend: Any) -> None:
    first = default_backend.generate(GenerationRequest(turns=[Turn("user", FRANCE)], params=GREEDY))
    assert "Paris" in first.text
    assert first.finish_reason == "stop"
    follow_up = default_backend.generate(
        GenerationRequest(
            turns=[Turn("user", FRANCE), Turn("assistant", first.text), Turn("user", "And of Italy?")],
            params=GREEDY,
        )
    )
    assert "Rome" in follow_up.text


@pytest.fixture(scope="module")
def default_stack(django_db_setup: None) -> Iterator[Stack]:
    with stack_on_test_database(name="default-model", env={"MODEL_PATH": ""}) as running:
        yield running


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_post_chat_answers_from_the_default_model_and_remembers(
    default_stack: Stack, owner: Any, owner_key: str
) -> None:
    headers = {"Authorization": f"Bearer {owner_key}"}
    first = httpx.post(
        f"{default_stack.base_url}/chat",
        json={"message": FRANCE, "temperature": 0},
        headers=headers,
        timeout=120,
    )
    assert first.status_code == 200, first.text
    assert "Paris" in first.json()["reply"]
    second = httpx.post(
        f"{default_stack.base_url}/chat",
        json={"message": "And of Italy?", "temperature": 0},
        headers=headers,
        timeout=120,
    )
    assert second.status_code == 200, second.text
    assert second.json()["conversation_id"] == first.json()["conversation_id"]
    assert "Rome" in second.json()["reply"]
