"""Loading straight into the engine's storage format, and refusing what cannot fit.

Tiny real models saved in bf16, fp16 and fp32 are loaded with half_weights=True
(what the worker asks for when its engine stores fp16). What is asserted:
- every weight matrix the model holds is fp16 (the embedding's lookup rows) or
  packed for fbgemm (the Linear layers, as HalfLinear); the only fp32 tensors
  are vectors (norm weights, rotary frequencies), and no nn.Linear is left;
- once an engine is built, each weight lives once: the engine's packed
  projections, with the plain model computing through them;
- greedy output of the engine and of plain generate() on the same model object
  (the one-at-a-time fallback) equal an fp32 model whose weights are rounded to fp16.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from inference import loading, sizing
from inference.backend import TransformersBackend
from inference.engine.config import EngineConfig
from inference.engine.core import Engine
from inference.loading import LoadedModel, load_model, weight_bytes
from inference.model.weights import HalfLinear
from inference.params import GenerationParams
from inference.registry import LocalModel
from inference.sizing import ModelTooLarge, memory_needed
from inference.types import GenerationRequest, Turn
from tests.tiny_model import greedy_reference

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
HELLO = [Turn("user", "Hello! What is the capital of France?")]


def greedy(max_new_tokens: int) -> GenerationParams:
    return GenerationParams(max_new_tokens=max_new_tokens, temperature=0, repetition_penalty=1.0)


@pytest.fixture(scope="module", params=list(DTYPES))
def saved_in(
    request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny model's checkpoint saved in one dtype (tokenizer files copied alongside)."""
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=DTYPES[request.param])
    model.save_pretrained(folder)
    for path in tiny_model_dir.iterdir():
        if "token" in path.name or path.suffix == ".jinja":
            shutil.copy(path, folder / path.name)
    return folder


def load_half(folder: Path, tmp_path: Path) -> LoadedModel:
    return load_model(str(folder), device="cpu", cache_dir=tmp_path / "cache", half_weights=True)


def rounded_reference(folder: Path, tmp_path: Path) -> LoadedModel:
    """The checkpoint in fp32 with every weight rounded to fp16: what half storage computes."""
    loaded = load_model(str(folder), device="cpu", cache_dir=tmp_path / "cache")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    with torch.no_grad():
        for param in loaded.model.parameters():
            param.copy_(param.half().float())
    return loaded


def reference_ids(loaded: LoadedModel, max_new_tokens: int) -> list[int]:
    return greedy_reference(loaded, HELLO, max_new_tokens)


def held_tensors(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor the model keeps: parameters, buffers and HalfLinear's unpacked weights."""
    yield from model.named_parameters()
    yield from model.named_buffers()
    for name, module in model.named_modules():
        if isinstance(module, HalfLinear) and module.unpacked is not None:
            yield f"{name}.unpacked", module.unpacked


def test_weights_load_in_fp16_and_no_fp32_matrix_is_kept(saved_in: Path, tmp_path: Path) -> None:
    loaded = load_half(saved_in, tmp_path)
    model = loaded.model
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    linears = [m for m in model.modules() if isinstance(m, HalfLinear)]
    assert len(linears) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the output layer
    for name, tensor in held_tensors(model):
        if tensor.is_floating_point() and tensor.dim() >= 2:
            assert tensor.dtype == torch.float16, name
        elif tensor.is_floating_point():
            assert tensor.dtype == torch.float32, name  # norm weights and rotary frequencies: vectors
    matrices = sum(t.numel() for _, t in held_tensors(model) if t.dim() >= 2)
    vectors = sum(t.numel() for _, t in held_tensors(model) if t.dim() < 2)
    assert vectors * 20 < matrices
    # The embedding's lookups are widened to fp32: what the layers compute in.
    assert model.get_input_embeddings()(torch.tensor([[1, 2]])).dtype == torch.float32


def test_the_engine_keeps_each_weight_once_and_both_paths_answer_as_rounded_fp32(
    saved_in: Path, tmp_path: Path
) -> None:
    expected = reference_ids(rounded_reference(saved_in, tmp_path), 30)
    loaded = load_half(saved_in, tmp_path)
    fallback = TransformersBackend(loaded)
    fallback.stop_token_ids = []  # every reply runs to max_new_tokens
    before = fallback.generate(GenerationRequest(turns=HELLO, params=greedy(30)))
    assert before.completion_tokens == 30
    assert loaded.tokenizer.decode(expected, skip_special_tokens=True).strip() == before.text
    engine = Engine(loaded, EngineConfig(stream_interval_s=0.0, stream_pieces_per_s=0))
    engine.stop_token_ids = []
    try:
        assert engine.weights == "fp16"
        for projection in engine.decoder.projections():
            assert projection.packed_fp16 is not None and projection.weight_t.numel() == 0
        # The plain model's layers compute through the engine's packed weights: no second copy.
        for module in loaded.model.modules():
            if isinstance(module, HalfLinear):
                assert module.source is not None and module.unpacked is None and module.packed is None
        assert engine.decoder.dtype == torch.float32  # activations and KV cache
        alone = engine.generate(GenerationRequest(turns=HELLO, params=greedy(30)))
        after = fallback.generate(GenerationRequest(turns=HELLO, params=greedy(30)))
        assert alone.text == before.text == after.text
        assert reference_ids(loaded, 30) == expected
    finally:
        engine.close()


@pytest.mark.parametrize("weights", ["int4", "int4-decode"])
def test_int4_weights_take_under_a_third_of_fp16_and_the_engine_batched_answers_as_generate(
    tiny_model_dir: Path, tmp_path: Path, weights: str
) -> None:
    """ENGINE_WEIGHTS=int4: the worker loads fp16, the engine keeps each layer's
    weights in 4 bits only; int4-decode keeps the fp16 ones beside them for
    prompt tokens. The plain model computes through the same weights, so
    generate() (the fallback) is the reference the engine must equal token for
    token, batched and with prompts prefilled in chunks: with int4-decode,
    passes that mix decode rows and prompt chunks must still give each token
    its own format (prompt fp16, generated 4 bits), whatever shares its pass."""
    from inference import worker

    config = worker.WorkerConfig(
        name="tiny",
        model_path=str(tiny_model_dir),
        device="cpu",
        cache_dir=tmp_path,
        engine=EngineConfig(max_batch=3, weights=weights, max_pass_tokens=8),
    )
    engine = worker.load_backend(config)
    assert isinstance(engine, Engine)
    engine.stop_token_ids = []
    try:
        assert engine.weights == weights
        layers = [
            p
            for layer in engine.decoder.decoder_layers()
            for p in (layer.qkv, layer.o, layer.gate_up, layer.down)
        ]
        for projection in layers:
            assert projection.int4 is not None
            assert (projection.packed_fp16 is not None) is (weights == "int4-decode")
            assert projection.weight_t.numel() == 0
        fp16_bytes = sum(p.in_features * p.out_features * 2 for p in layers)
        assert sum(p.weight_bytes() for p in layers) == fp16_bytes * 5 // 16  # 4 bits + a bf16 pair per 32
        fallback = TransformersBackend(engine.loaded)
        fallback.stop_token_ids = []
        prompts = [HELLO, [Turn("user", "Tell me a short story about a cat who learns to fly.")], HELLO * 3]
        expected = [fallback.generate(GenerationRequest(turns=t, params=greedy(30))).text for t in prompts]
        results: dict[int, str] = {}

        def run(index: int) -> None:
            results[index] = engine.generate(GenerationRequest(turns=prompts[index], params=greedy(30))).text

        threads = [threading.Thread(target=run, args=(index,)) for index in range(len(prompts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [results[index] for index in range(len(prompts))] == expected
        assert engine.stats.max_batch_seen > 1
        assert engine.stats.steps_while_prefilling > 0  # some passes mixed decode rows and prompt chunks
    finally:
        engine.close()


def test_auto_weights_keep_a_4_bit_gguf_in_4_bits_for_decoding(tiny_model_dir: Path, tmp_path: Path) -> None:
    """ENGINE_WEIGHTS=auto reads the source file's precision: a GGUF whose layer
    matrices are Q4_1 decodes through 4-bit weights (prompts through fp16),
    any other source keeps fp16."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter, quants

    path = tmp_path / "q4.gguf"
    writer = GGUFWriter(path, "llama")
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((64, 64)).astype(np.float32)
    q4 = GGMLQuantizationType.Q4_1
    writer.add_tensor("blk.0.attn_q.weight", quants.quantize(matrix, q4), raw_dtype=q4)
    writer.add_tensor("blk.0.ffn_up.weight", quants.quantize(matrix, q4), raw_dtype=q4)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    q8 = GGMLQuantizationType.Q8_0
    writer.add_tensor("token_embd.weight", quants.quantize(matrix, q8), raw_dtype=q8)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert sizing.gguf_layer_bits(path) == 4
    # The launcher counts the 4-bit copy when it judges whether a worker fits.
    auto, fp16 = (sizing.estimate_need(LocalModel("q4", path=str(path), weights=w)) for w in (None, "fp16"))
    assert auto - fp16 == sizing.gguf_parameters(path) * 2 * 5 // 16

    loaded = load_half(tiny_model_dir, tmp_path)
    assert loaded.source_bits is None  # a folder of float weights
    for bits, expected in ((None, "fp16"), (8, "fp16"), (4, "int4-decode")):
        loaded = load_half(tiny_model_dir, tmp_path)
        loaded.source_bits = bits
        engine = Engine(loaded, EngineConfig(max_batch=2))
        engine.close()
        assert engine.weights == expected


def test_the_worker_loads_half_weights_for_an_fp16_engine_only(tiny_model_dir: Path, tmp_path: Path) -> None:
    from inference import worker

    def loaded_with(weights: str) -> LoadedModel:
        config = worker.WorkerConfig(
            name="tiny",
            model_path=str(tiny_model_dir),
            device="cpu",
            cache_dir=tmp_path,
            engine=EngineConfig(max_batch=2, weights=weights),
        )
        backend = worker.load_backend(config)
        assert isinstance(backend, Engine)
        backend.close()
        return backend.loaded

    assert {p.dtype for p in loaded_with("fp32").model.parameters()} == {torch.float32}
    half = loaded_with("auto")
    assert any(isinstance(m, HalfLinear) for m in half.model.modules())
    assert half.model.get_input_embeddings().weight.dtype == torch.float16


def test_the_worker_loads_its_model_on_a_thread_that_has_ended_when_the_engine_runs(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loading thread's OpenMP team must be gone before the engine decodes:
    two teams on two cores make every team's workers sleep between ops
    (inference.engine.threads.on_a_thread_of_its_own)."""
    from inference import worker

    loaded_on: list[threading.Thread] = []
    real_load = loading.load_model

    def load_model(*args: Any, **kwargs: Any) -> Any:
        loaded_on.append(threading.current_thread())
        return real_load(*args, **kwargs)

    monkeypatch.setattr(loading, "load_model", load_model)
    config = worker.WorkerConfig(
        name="tiny",
        model_path=str(tiny_model_dir),
        device="cpu",
        cache_dir=tmp_path,
        engine=EngineConfig(max_batch=1),
    )
    backend = worker.load_backend(config)
    try:
        assert isinstance(backend, Engine)
        assert loaded_on and loaded_on[0] is not threading.current_thread()
        assert not loaded_on[0].is_alive()
        assert backend.generate(GenerationRequest(turns=HELLO, params=greedy(4))).completion_tokens > 0
    finally:
        backend.close()


def test_weight_bytes_count_the_checkpoint_in_the_storage_dtype(saved_in: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(saved_in)
    # The tied output layer is stored once in the file.
    elements = sum(p.numel() for p in model.parameters())
    assert weight_bytes(saved_in, torch.float16) == 2 * elements
    assert weight_bytes(saved_in, torch.float32) == 4 * elements


def test_a_model_too_big_for_the_memory_is_refused_before_any_weight_is_read(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the weights were read")

    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", never)
    weights = weight_bytes(tiny_model_dir, torch.float16)
    tied_output = 400 * 32 * 2  # vocab x hidden, fp16: packed apart from the embedding
    needed = memory_needed(weights, tied_output)
    available = needed - 1
    with pytest.raises(ModelTooLarge) as refused:
        load_model(
            str(tiny_model_dir),
            device="cpu",
            cache_dir=tmp_path,
            half_weights=True,
            available_bytes=available,
        )
    message = str(refused.value)
    assert f"{needed:,} bytes" in message and f"{available:,} bytes" in message
    assert refused.value.needed == needed and refused.value.available == available


def test_a_model_that_fits_loads_against_the_same_figure(tiny_model_dir: Path, tmp_path: Path) -> None:
    needed = memory_needed(weight_bytes(tiny_model_dir, torch.float16), 400 * 32 * 2)
    loaded = load_model(
        str(tiny_model_dir), device="cpu", cache_dir=tmp_path, half_weights=True, available_bytes=needed
    )
    assert loaded.model.get_input_embeddings().weight.dtype == torch.float16


def test_available_memory_reads_the_kernels_figure() -> None:
    available = sizing.available_memory()
    if Path("/proc/meminfo").exists():
        assert available is not None and available > 0
    else:
        assert available is None


@pytest.mark.default_model
def test_the_default_model_loads_in_fp16_and_answers_as_before(tmp_path: Path) -> None:
    from django.conf import settings

    loaded = load_model("", device="cpu", cache_dir=settings.MODEL_CACHE_DIR, half_weights=True)
    assert loaded.model.get_input_embeddings().weight.dtype == torch.float16
    engine = Engine(loaded)
    try:
        params = GenerationParams(max_new_tokens=24, temperature=0)
        request = GenerationRequest(turns=[Turn("user", "What is the capital of France?")], params=params)
        answer = engine.generate(request)
        assert "Paris" in answer.text
        assert TransformersBackend(loaded).generate(request) == answer
    finally:
        engine.close()


def mapped_resident_bytes(path: Path) -> int:
    """Resident bytes of this process's mappings of `path`, from /proc/self/smaps."""
    resident, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
            inside = len(fields) >= 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            resident += int(fields[1]) * 1024
    return resident


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads Linux's /proc/self/smaps")
def test_read_checkpoint_pages_are_reclaimed_while_loading_and_still_read_the_same(tmp_path: Path) -> None:
    """transformers keeps the shards mapped for most of a load; the pages it has
    read must not stay in RSS beside the converted weights."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = (tmp_path / "model.safetensors").resolve()
    weights = torch.randn(4096, 2048, dtype=torch.bfloat16)  # 16 MiB
    save_file({"w": weights}, path)
    with safe_open(str(path), framework="pt") as checkpoint:  # mapped, as transformers opens it
        with loading.paging_out_read_pages([path], interval_s=0.05):
            first = checkpoint.get_slice("w")[:2048].float()
            assert mapped_resident_bytes(path) >= 8 * 2**20  # what was just read is resident
            for _ in range(100):  # the periodic pass, while the body runs
                if mapped_resident_bytes(path) < 2**20:
                    break
                time.sleep(0.05)
            assert mapped_resident_bytes(path) < 2**20
        # The mapping stays valid: reading again gives the same values.
        assert torch.equal(checkpoint.get_slice("w")[:2048].float(), first)
        assert torch.equal(checkpoint.get_tensor("w"), weights)


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads Linux's /proc/self/smaps")
def test_a_page_this_process_wrote_keeps_what_was_written(tmp_path: Path) -> None:
    """A copy-on-write page of a private file mapping holds the only copy of what was written."""
    import mmap

    path = (tmp_path / "written.bin").resolve()
    path.write_bytes(bytes(4 * mmap.PAGESIZE))
    with path.open("r+b") as file:
        mapped = mmap.mmap(file.fileno(), 0, flags=mmap.MAP_PRIVATE)
        mapped[0] = 7  # this process's own copy of the first page
        assert loading.page_out_read_pages({str(path)}) == 4 * mmap.PAGESIZE
        assert mapped[0] == 7 and mapped[1:4] == bytes(3)
        mapped.close()


def test_a_load_reclaims_the_pages_of_its_own_checkpoint_files(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passed: list[set[str]] = []
    real = loading.page_out_read_pages
    monkeypatch.setattr(
        loading, "page_out_read_pages", lambda files: passed.append(set(files)) or real(files)
    )
    load_half(tiny_model_dir, tmp_path)
    expected = {str(path.resolve()) for path in tiny_model_dir.glob("*.safetensors")}
    assert expected and passed and all(files == expected for files in passed)
