"""The engine's GPU path, run on the CPU: everything but the kernels.

On CUDA the worker loads the weights in bf16 and the engine computes in bf16
(no fbgemm packing, no fp32 copies), with the same batching, KV rows and
chunked prefill as on a CPU. `ENGINE_WEIGHTS=bf16` takes that path on any
device, so these tests run it here on the tiny model.

bf16 rounds differently from one kernel to the next (a product over 1 row or
8, a whole prompt or a chunk of it), so bf16 greedy tokens are not expected to
equal transformers' bf16 generate() token for token, on a GPU or here.
What is asserted instead, as vLLM's model tests do for half precision: the
engine's logits, in every mix of decode rows and prefill chunks, are as close
to the fp32 model's as transformers' own bf16 forward pass is.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from inference import worker
from inference.engine.config import EngineConfig
from inference.engine.core import Engine
from inference.loading import LoadedModel, load_model
from inference.model.weights import HalfLinear
from inference.params import GenerationParams
from inference.prompt import build_prompt
from inference.types import Completion, GenerationRequest, Turn

HELLO = [Turn("user", "Hello! What is the capital of France?")]
LONG = [Turn("user", "Please repeat these words back to me: " + " ".join(f"item{i}" for i in range(15)))]
STORY = [Turn("user", "Tell me a short story about a cat who learns to fly.")]


@pytest.fixture(scope="module")
def bf16_engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """An engine loaded as the worker loads one for ENGINE_WEIGHTS=bf16 (what a GPU gets by default)."""
    config = worker.WorkerConfig(
        name="tiny",
        model_path=str(tiny_model_dir),
        device="cpu",
        cache_dir=tmp_path_factory.mktemp("cache"),
        engine=EngineConfig(max_batch=3, weights="bf16", max_pass_tokens=8),
    )
    engine = worker.load_backend(config)
    assert isinstance(engine, Engine)
    engine.stop_token_ids = []  # every reply runs to its max_new_tokens
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def fp32(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(str(tiny_model_dir), device="cpu", cache_dir=tmp_path_factory.mktemp("cache"))


def prompt(loaded: LoadedModel, turns: list[Turn]) -> list[int]:
    return build_prompt(loaded.tokenizer, turns, context_tokens=256, max_new_tokens=16).input_ids


def logits_of(loaded: LoadedModel, ids: list[int]) -> torch.Tensor:
    """transformers' own forward pass over the whole sequence: logits at every position, in fp32."""
    with torch.inference_mode():
        return loaded.model(torch.tensor([ids])).logits[0].float()  # type: ignore[operator]


def test_bf16_weights_are_loaded_kept_and_computed_in_bf16(bf16_engine: Engine) -> None:
    model = bf16_engine.loaded.model
    assert bf16_engine.weights == "bf16"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(isinstance(m, HalfLinear) for m in model.modules())  # no fbgemm packing
    decoder = bf16_engine.decoder
    assert decoder.dtype == torch.bfloat16
    assert all(p.packed_fp16 is None and p.packed is None for p in decoder.projections())
    assert decoder.new_row(8).data.dtype == torch.bfloat16
    # Half the KV bytes of an fp32 engine's.
    assert decoder.kv_bytes_per_token() == 2 * 2 * 2 * 8 * 2  # layers, k and v, kv heads, head dim, bytes


def test_decode_rows_and_prefill_chunks_in_bf16_are_as_close_to_fp32_as_transformers_bf16(
    bf16_engine: Engine, fp32: LoadedModel
) -> None:
    """One row decodes while another's prompt is prefilled in chunks of 8, both in the same passes."""
    loaded = bf16_engine.loaded
    assert not bf16_engine.kv_row_bytes()  # the engine is idle: its decoder is this test's to run
    decoder = bf16_engine.decoder
    running, chunked = prompt(loaded, HELLO), prompt(loaded, LONG)
    continuation = [5, 17, 42, 99, 7, 250]
    rows = [decoder.new_row(256), decoder.new_row(256)]
    engine_logits: list[torch.Tensor] = []
    positions: list[int] = []
    with torch.inference_mode():
        decoder(torch.tensor([running]), [rows[0]], [0], [len(running)], [])
        sequence = running + continuation
        done = 0
        for step, token in enumerate(continuation):
            piece = chunked[done : done + 8]
            logits = decoder(
                torch.tensor([[token, *piece]]),
                rows,
                [len(running) + step, done],
                [1, len(piece)],
                [0, 1],
            )
            engine_logits.append(logits)
            done += len(piece)
            positions.append(done - 1)
    decoded = torch.stack([row[0] for row in engine_logits]).float()
    prefilled = torch.stack([row[1] for row in engine_logits]).float()
    decode_at = [len(running) + step for step in range(len(continuation))]
    for got, ids, at in ((decoded, sequence, decode_at), (prefilled, chunked, positions)):
        truth = logits_of(fp32, ids)[at]
        theirs = logits_of(loaded, ids)[at]
        engine_error = (got - truth).abs().max()
        transformers_error = (theirs - truth).abs().max()
        # A wrong position, mask or cache row is off by the logits' own size (~10 here).
        assert engine_error <= 2 * transformers_error + 0.05, (engine_error, transformers_error)
        assert engine_error < 0.1 * truth.abs().max()


def test_a_bf16_engine_serves_concurrent_replies_while_a_long_prompt_is_chunked(bf16_engine: Engine) -> None:
    greedy = GenerationParams(max_new_tokens=40, temperature=0, repetition_penalty=1.0)
    results: dict[str, Completion] = {}
    started = threading.Event()

    def run(name: str, turns: list[Turn]) -> None:
        results[name] = bf16_engine.generate(
            GenerationRequest(turns=turns, params=greedy), on_text=lambda _: started.set()
        )

    threads = [
        threading.Thread(target=run, args=(name, turns)) for name, turns in (("a", HELLO), ("b", STORY))
    ]
    for thread in threads:
        thread.start()
    started.wait(30)
    chunks_before = bf16_engine.stats.steps_while_prefilling
    run("long", LONG)
    for thread in threads:
        thread.join(60)
    assert {name: c.finish_reason for name, c in results.items()} == dict.fromkeys(
        ("a", "b", "long"), "length"
    )
    assert all(c.completion_tokens == 40 and c.text for c in results.values())
    assert bf16_engine.stats.steps_while_prefilling > chunks_before  # replies kept decoding meanwhile
    # Seeded sampling repeats itself in bf16 too.
    sampled = GenerationParams(max_new_tokens=20, temperature=0.8, top_p=0.9, seed=7)
    first, second = (bf16_engine.generate(GenerationRequest(turns=HELLO, params=sampled)) for _ in range(2))
    assert first.text == second.text
