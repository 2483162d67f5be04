"""The real loading and generation code, driven by the tiny model."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from inference.backend import TransformersBackend
from inference.loading import dtype_for, load_model, pick_device
from inference.params import GenerationParams
from inference.prompt import build_prompt
from inference.sizing import ModelNotFound, source_from_path
from inference.types import GenerationRequest, Turn

HELLO = [
    Turn("system", "You are a helpful assistant."),
    Turn("user", "Hello! What is the capital of France?"),
]


def greedy(max_new_tokens: int = 12) -> GenerationParams:
    return GenerationParams(max_new_tokens=max_new_tokens, temperature=0, repetition_penalty=1.0)


def test_loads_a_model_folder_on_cpu_in_fp32_with_left_padding(tiny_backend: TransformersBackend) -> None:
    loaded = tiny_backend.loaded
    assert loaded.device == torch.device("cpu")
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.tokenizer.pad_token_id == loaded.tokenizer.eos_token_id  # fell back to eos
    assert loaded.context_tokens == 256  # the model's max_position_embeddings
    assert not loaded.uses_fallback_template


def test_device_choice_and_dtypes() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto") == torch.device("cpu")  # no accelerator on CI
    with pytest.raises(ValueError, match="DEVICE='tpu'"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            pick_device("cuda")
    assert dtype_for(torch.device("cpu")) == torch.float32
    assert dtype_for(torch.device("mps")) == torch.float16


def test_a_bad_model_path_says_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match=r"neither a \.gguf file nor a model folder"):
        source_from_path(str(tmp_path))


def test_default_model_is_found_in_its_package_without_importing_it() -> None:
    source = source_from_path("")
    assert source.name == "SmolLM2-135M-Instruct"
    assert source.gguf_file is not None and source.gguf_file.endswith(".gguf")
    assert (source.folder / source.gguf_file).stat().st_size > 50_000_000


def test_greedy_generation_matches_plain_generate(tiny_backend: TransformersBackend) -> None:
    completion = tiny_backend.generate(GenerationRequest(turns=HELLO, params=greedy()))
    loaded = tiny_backend.loaded
    prompt = loaded.tokenizer.apply_chat_template(
        [{"role": t.role, "content": t.content} for t in HELLO], add_generation_prompt=True, tokenize=False
    )
    ids = loaded.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    expected = loaded.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=tiny_backend.stop_token_ids,
        pad_token_id=loaded.tokenizer.pad_token_id,
    )[0, ids.shape[1] :]
    assert completion.prompt_tokens == ids.shape[1]
    assert completion.completion_tokens == len(expected)
    assert completion.text == loaded.tokenizer.decode(expected, skip_special_tokens=True).strip()
    assert completion.finish_reason == "length"


def test_streamed_text_adds_up_to_the_reply(tiny_backend: TransformersBackend) -> None:
    pieces: list[str] = []
    completion = tiny_backend.generate(
        GenerationRequest(turns=HELLO, params=greedy(30)), on_text=pieces.append
    )
    assert len(pieces) > 1
    assert "".join(pieces).strip() == completion.text


def test_generation_stops_when_the_model_ends_its_turn(tiny_backend: TransformersBackend) -> None:
    loaded = tiny_backend.loaded
    # Both the end of a turn and the start of the next one stop generation.
    for token in ("<|im_end|>", "<|im_start|>"):
        assert loaded.tokenizer.convert_tokens_to_ids(token) in tiny_backend.stop_token_ids
    # Find what the greedy model emits unhindered, then make its third token a
    # turn boundary: generation must stop right there.
    ids = build_prompt(loaded.tokenizer, HELLO, context_tokens=256, max_new_tokens=20).input_ids
    free_run = loaded.model.generate(
        torch.tensor([ids]),
        max_new_tokens=5,
        do_sample=False,
        eos_token_id=tiny_backend.stop_token_ids,
        pad_token_id=loaded.tokenizer.pad_token_id,
    )[0, len(ids) :].tolist()
    boundary = free_run[2]
    original = tiny_backend.stop_token_ids
    try:
        tiny_backend.stop_token_ids = [*original, boundary]
        completion = tiny_backend.generate(GenerationRequest(turns=HELLO, params=greedy(20)))
    finally:
        tiny_backend.stop_token_ids = original
    assert completion.finish_reason == "stop"
    assert completion.completion_tokens == free_run.index(boundary) + 1


def test_should_stop_cancels_between_steps_and_keeps_partial_text(tiny_backend: TransformersBackend) -> None:
    seen: list[str] = []
    completion = tiny_backend.generate(
        GenerationRequest(turns=HELLO, params=greedy(100), should_stop=lambda: len(seen) >= 2),
        on_text=seen.append,
    )
    assert completion.finish_reason == "cancelled"
    assert 0 < completion.completion_tokens < 100
    assert completion.text


def test_the_time_limit_stops_generation(tiny_backend: TransformersBackend) -> None:
    started = time.monotonic()
    completion = tiny_backend.generate(
        GenerationRequest(turns=HELLO, params=greedy(100_000 // 1000), time_limit_s=1e-9)
    )
    assert completion.finish_reason == "timeout"
    assert completion.completion_tokens < 100
    assert time.monotonic() - started < 30


def test_sampling_uses_the_parameters(tiny_backend: TransformersBackend) -> None:
    params = GenerationParams(max_new_tokens=15, temperature=1.5, top_p=0.95, repetition_penalty=1.2)
    torch.manual_seed(1)
    first = tiny_backend.generate(GenerationRequest(turns=HELLO, params=params))
    torch.manual_seed(2)
    second = tiny_backend.generate(GenerationRequest(turns=HELLO, params=params))
    assert first.completion_tokens == second.completion_tokens == 15
    assert first.text != second.text  # sampled, not greedy


def test_a_model_without_chat_template_uses_the_inst_fallback(tmp_path: Path) -> None:
    from tests.tiny_model import build_tiny_model

    folder = build_tiny_model(tmp_path / "plain", chat_template=False)
    backend = TransformersBackend(load_model(str(folder), device="cpu", cache_dir=tmp_path / "cache"))
    assert backend.loaded.uses_fallback_template
    assert backend.stop_strings == ["[INST]"]
    completion = backend.generate(GenerationRequest(turns=HELLO, params=greedy(8)))
    assert completion.prompt_tokens > 0
    assert "[INST]" not in completion.text


def test_stop_strings_end_the_reply_before_them(tiny_backend: TransformersBackend) -> None:
    free = tiny_backend.generate(GenerationRequest(turns=HELLO, params=greedy(30)))
    assert len(free.text) > 6
    marker = free.text[3:6]
    params = GenerationParams(max_new_tokens=30, temperature=0, repetition_penalty=1.0, stop=(marker,))
    stopped = tiny_backend.generate(GenerationRequest(turns=HELLO, params=params))
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(marker)].strip()


def test_a_seed_makes_sampling_repeatable(tiny_backend: TransformersBackend) -> None:
    params = GenerationParams(max_new_tokens=15, temperature=1.5, seed=1234)
    runs = [tiny_backend.generate(GenerationRequest(turns=HELLO, params=params)).text for _ in range(2)]
    assert runs[0] == runs[1]
