"""A lean decoder forward pass over a loaded Llama-family model, with its own KV cache.

The engine's decode loop runs every active conversation through this once per
token. Compared with calling the Hugging Face module tree it does less per
step: q/k/v and gate/up projections are fused into one matrix product each,
each sequence's KV cache is its own preallocated buffer written in place (no
concatenation per step), and the rotary tables are built once per step for
all layers. The weights are the model's own tensors (the fused matrices are
the only copies), so the Hugging Face model stays usable.

Supported: architectures whose decoder layer is RMSNorm -> GQA attention with
rotary embeddings -> RMSNorm -> SwiGLU MLP (Llama, Mistral, Qwen2, Qwen3).
`supports(model)` says whether a model fits; the worker falls back to the
one-at-a-time backend for anything else.

Half storage (CPU): a model loaded in fp16 and passed through
`store_half_model` keeps each projection's weight once, in fp16, and multiplies
in fp32 with fbgemm's fp16 GEMM; the Hugging Face module tree keeps working
from those same weights (its Linear layers become `HalfLinear`), so
`model.generate()` computes what the engine computes. No fp32 copy of a weight
matrix is made at any point (only of one matrix at a time when an engine is
built over a model whose weights were already packed).

4-bit storage (CPU, opt-in): `FastDecoder.store_int4_weights` replaces each
layer's fp16 projections with 4-bit weights in groups of 32 input columns,
each group with its own bf16 scale and offset (asymmetric, as gpt-fast and
torchao quantize), multiplied by torch's own int4 CPU kernel on bf16
activations. A quarter of the fp16 weight bytes plus a sixteenth for the
scales (5/16 in all); the output layer keeps fp16, as llama.cpp keeps it
above 4 bits.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def _fp16_linear_op(x: torch.Tensor, packed: torch.ScriptObject) -> torch.Tensor:
    return torch.ops.quantized.linear_dynamic_fp16(x, packed)


def _fp16_linear_source(
    x: torch.Tensor,
    packed: torch.classes.quantized.LinearPackedParamsBase,  # type: ignore[name-defined]
) -> torch.Tensor:
    return torch.ops.quantized.linear_dynamic_fp16(x, packed)


_Fp16Linear = Callable[[torch.Tensor, torch.ScriptObject], torch.Tensor]
_fp16_linear_scripted: _Fp16Linear | None = None


def fp16_linear(x: torch.Tensor, packed: torch.ScriptObject) -> torch.Tensor:
    """fbgemm's fp16 product, x @ W^T (+ bias), called through TorchScript.

    The same kernel and result as calling torch.ops.quantized.linear_dynamic_fp16
    from Python, but that call spends ~8.5 us converting its packed-weight
    argument (a custom-class object) against ~2 us through a scripted function
    (measured on a 2-core AMD EPYC, one thread): ~0.8 ms of a batch-1 step of
    the default model, which makes 121 of these products.
    """
    return _fp16_linear_impl()(x, packed)


def _fp16_linear_impl() -> _Fp16Linear:
    """The scripted fp16 product, scripted at its first use."""
    global _fp16_linear_scripted
    if _fp16_linear_scripted is None:
        try:
            with warnings.catch_warnings():
                # torch.jit is deprecated in favour of torch.compile, which here
                # costs ~10 us a call (measured): more than the overhead it would save.
                warnings.simplefilter("ignore", DeprecationWarning)
                scripted = torch.jit.script(_fp16_linear_source)
            _fp16_linear_scripted = cast("_Fp16Linear", scripted)
        except Exception:  # no TorchScript (or no fbgemm classes) in this build: the plain call
            _fp16_linear_scripted = _fp16_linear_op
    return _fp16_linear_scripted


# 4-bit weights: input columns per scale and offset. 64 was measured too coarse
# for the default model (greedy tokens equal to fp32's: 25.6% against 100% for 32).
INT4_GROUP = 32


def quantize_int4(weight: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """An [out, in] weight as 4 bits a weight, packed for torch's int4 CPU kernel.

    Each run of `group` input columns of a row is mapped onto 0..15 between
    its own min and max: w ~ q * scale + min, kept as the kernel wants it,
    (q - 8) * scale + zero with zero = min + 8 * scale. Returns the packed
    weights (uint8, two to a byte) and the scales and zeros ([in/group, out, 2], bf16).
    """
    rows, columns = weight.shape
    grouped = weight.float().reshape(rows, columns // group, group)
    low = grouped.amin(-1, keepdim=True)
    scale = ((grouped.amax(-1, keepdim=True) - low) / 15).clamp(min=1e-6)
    levels = torch.round((grouped - low) / scale).clamp(0, 15).to(torch.int32).reshape(rows, columns)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(levels, 1)
    zero = low + 8 * scale
    scales_and_zeros = torch.stack([scale.reshape(rows, -1), zero.reshape(rows, -1)], dim=-1)
    return packed, scales_and_zeros.transpose(0, 1).contiguous().to(torch.bfloat16)


def can_store_int4(out_features: int, in_features: int, group: int = INT4_GROUP) -> bool:
    """The kernel's shape rules: output rows in sixteens, input columns in whole groups."""
    return out_features % 16 == 0 and in_features % group == 0


def int4_linear(
    x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group: int
) -> torch.Tensor:
    """x @ W^T for 4-bit W (see quantize_int4): the kernel takes bf16 rows
    (measured ~25x slower fed fp32), sums in fp32 and rounds its result to
    bf16, which is widened back to fp32."""
    rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
    out = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, packed, group, scales_and_zeros)
    return out.float().view(*x.shape[:-1], out.shape[-1])


def supports(model: Any) -> bool:
    return supports_config(model.config)


def supports_config(config: Any) -> bool:
    """Whether the engine's forward pass implements a model with this config."""
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    if getattr(config, "hidden_act", "silu") != "silu":
        return False
    # A sliding window shorter than the context changes which keys a query
    # sees; this pass attends to everything, so it would answer differently.
    window = getattr(config, "sliding_window", None)
    use_window = getattr(config, "use_sliding_window", True)
    context = int(getattr(config, "max_position_embeddings", 0) or 0)
    return not (window and use_window and context and window < context)


class Projection(nn.Module):
    """x @ W^T with W stored transposed ([in, out], contiguous).

    Measured on a 2-core AVX2 CPU: a batch-1 product streams weights that do
    not fit in cache at ~21 GB/s in this layout against ~11 GB/s for
    F.linear on the usual [out, in] layout (prefill and batches are unaffected).
    """

    def __init__(
        self, modules: list[nn.Linear] | list[HalfLinear], *, private: bool = False, int4_group: int = 0
    ) -> None:
        """`private`: the modules are this projection's own copies, which nothing
        else reads, so storing the weight in fp16 may free the fp32 one.

        HalfLinear modules (a half-stored model) are packed for fbgemm at once
        (or, with `int4_group`, quantized to 4 bits straight from fp16 where the
        shape suits: see store_int4) and then compute through this projection:
        the weights stay in one place.
        """
        super().__init__()
        self.bias: nn.Parameter | None = None
        self.packed: torch.Tensor | None = None
        self.packed_rows = 0
        # fbgemm's prepacked fp16 weight and bias (an opaque handle, see store_half).
        # Not `half`: that would shadow nn.Module.half().
        self.packed_fp16: torch.ScriptObject | None = None
        # 4-bit weights (see store_int4): packed, scales and zeros, group size.
        self.int4: tuple[torch.Tensor, torch.Tensor, int] | None = None
        self.private = private
        if modules and all(isinstance(m, HalfLinear) for m in modules):
            self._pack_half(cast("list[HalfLinear]", modules), int4_group)
            return
        modules = cast("list[nn.Linear]", modules)
        # One [in, sum(out)] matrix for several projections that read the same input.
        weight_t = torch.cat([m.weight.detach().t() for m in modules], dim=1).contiguous()
        self.weight_t = nn.Parameter(weight_t, requires_grad=False)
        self.in_features, self.out_features = weight_t.shape
        if any(m.bias is not None for m in modules):
            parts = [
                m.bias.detach() if m.bias is not None else weight_t.new_zeros(m.out_features) for m in modules
            ]
            self.bias = nn.Parameter(torch.cat(parts), requires_grad=False)
        # The originals become views of this storage: the model keeps working
        # and the weights are not held twice.
        start = 0
        for m in modules:
            end = start + m.out_features
            m.weight.data = weight_t[:, start:end].t()
            if m.bias is not None and self.bias is not None:
                m.bias.data = self.bias.data[start:end]
            start = end

    def _pack_half(self, modules: list[HalfLinear], int4_group: int) -> None:
        # [sum(out), in] in fp16 is the layout fbgemm packs from: no fp32 step.
        weight = torch.cat([m.half_weight() for m in modules], dim=0)
        self.out_features, self.in_features = weight.shape
        if any(m.bias is not None for m in modules):
            parts = [m.bias if m.bias is not None else weight.new_zeros(m.out_features) for m in modules]
            self.bias = nn.Parameter(torch.cat(parts).float(), requires_grad=False)
        if int4_group and can_store_int4(self.out_features, self.in_features, int4_group):
            # Measured on a 7B gate/up matrix: 0.9 s against 2.7 s through fbgemm's packing and back.
            self.int4 = (*quantize_int4(weight, int4_group), int4_group)
        else:
            self.packed_fp16 = torch.ops.quantized.linear_prepack_fp16(weight, self.bias)
        self.weight_t = nn.Parameter(weight.new_empty(0), requires_grad=False)
        del weight
        start = 0
        for m in modules:
            m.compute_through(self, start, start + m.out_features)
            start += m.out_features

    def unpacked_half(self) -> torch.Tensor:
        """The packed weight as [out, in] fp16 (via one fp32 matrix: fbgemm unpacks to fp32).

        4-bit weights come back as the kernel computes with them: its products
        with the identity, a block of input columns at a time.
        """
        if self.int4 is not None:
            blocks = []
            for start in range(0, self.in_features, 1024):
                width = min(1024, self.in_features - start)
                identity = torch.zeros(width, self.in_features)
                identity[:, start : start + width] = torch.eye(width)
                blocks.append(int4_linear(identity, *self.int4).half())  # [width, out]
            return torch.cat(blocks).t().contiguous()
        assert self.packed_fp16 is not None
        weight, _ = torch.ops.quantized.linear_unpack_fp16(self.packed_fp16)
        return weight.half()

    def pack_for_batches(self, rows: int) -> None:
        """Keep a oneDNN-blocked copy of the weight for products over a few rows.

        Measured on a 2-core AMD EPYC (AVX-512), one thread: for 2-8 rows MKL's
        sgemm reaches 7 GB/s on these shapes and oneDNN's packed weights 14-21
        GB/s; for one row MKL on the transposed layout stays the faster (16-17
        against 14 GB/s), so both are kept: more memory, but each path its best kernel.
        """
        weight = self.weight_t.detach().t()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        self.packed_rows = rows

    def store_half(self) -> None:
        """Keep an fp16 copy of the weight for fbgemm's fp16 GEMM and use it from now on.

        The products and their sums stay in fp32: the kernel widens each
        weight to fp32 in registers, so the only change is each weight rounded
        to fp16 (a relative error of at most 2^-11). What it buys is half the
        bytes read per token, which is what bounds decoding. Measured on a
        2-core AMD EPYC, one thread, the default model's 211 projections:
        13 ms a pass at one row against 33-40 ms for fp32 (MKL or oneDNN), and
        still the fastest at 2-8 rows and in prefill.
        """
        if self.int4 is not None or (self.packed_fp16 is not None and not self.weight_t.numel()):
            return  # packed from half storage already, or kept in 4 bits
        weight = self.weight_t.detach().t().contiguous()
        self.packed_fp16 = torch.ops.quantized.linear_prepack_fp16(weight, self.bias)
        self.packed, self.packed_rows = None, 0
        if self.private:
            self.weight_t = nn.Parameter(weight.new_empty(0), requires_grad=False)

    def store_int4(self, group: int = INT4_GROUP) -> bool:
        """Keep the weight in 4 bits (see quantize_int4) and use it from now on,
        dropping the fp16 one; False, keeping it as it is, where the shape does not suit the kernel.

        From fp16 weights: the fp32 matrix fbgemm unpacks to is the only
        transient, one projection at a time.
        """
        if self.int4 is not None or not can_store_int4(self.out_features, self.in_features, group):
            return self.int4 is not None
        if self.packed_fp16 is not None:
            weight, _ = torch.ops.quantized.linear_unpack_fp16(self.packed_fp16)
        else:
            weight = self.weight_t.detach().t()
        packed, scales_and_zeros = quantize_int4(weight, group)
        del weight
        self.int4 = (packed, scales_and_zeros, group)
        self.packed_fp16, self.packed, self.packed_rows = None, None, 0
        if self.private:
            self.weight_t = nn.Parameter(torch.empty(0), requires_grad=False)
        return True

    def weight_bytes(self) -> int:
        """Bytes of weight one product reads."""
        if self.int4 is not None:
            packed, scales_and_zeros, _ = self.int4
            return packed.numel() * packed.element_size() + scales_and_zeros.numel() * 2
        return (
            self.in_features
            * self.out_features
            * (2 if self.packed_fp16 is not None else self.weight_t.element_size())
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed_fp16 is not None:
            return fp16_linear(x, self.packed_fp16)
        if self.int4 is not None:
            out = int4_linear(x, *self.int4)
            return out if self.bias is None else out + self.bias
        if self.packed is not None and 1 < x.numel() // x.shape[-1] <= self.packed_rows:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        out = torch.matmul(x, self.weight_t)
        return out if self.bias is None else out + self.bias


class HalfLinear(nn.Module):
    """An nn.Linear of a half-stored model: fp16 weight, fp32 input and output.

    Until an engine packs it together with its siblings, it holds its own fp16
    weight ([out, in]) and packs it for fbgemm at its first product, dropping
    the unpacked one. Once an engine's Projection holds the weight, this module
    computes through it and keeps its rows of the output (for a fused q/k/v
    projection, the plain model then computes the fused product for each of
    the three: fallback work only, while the engine's own pass does it once).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        # A plain attribute, not a parameter: the same tensor may be a tied
        # embedding's, and nothing should train or move it through this module.
        self.unpacked: torch.Tensor | None = linear.weight.detach()
        self.bias: nn.Parameter | None = None
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self.packed: torch.ScriptObject | None = None
        self.source: Projection | None = None
        self.rows = slice(0, self.out_features)

    def half_weight(self) -> torch.Tensor:
        """The weight as [out, in] fp16, wherever it lives now."""
        if self.unpacked is not None:
            return self.unpacked.half()  # no copy when it is fp16 already
        if self.source is not None:
            return self.source.unpacked_half()[self.rows]
        assert self.packed is not None
        weight, _ = torch.ops.quantized.linear_unpack_fp16(self.packed)
        return weight.half()

    def compute_through(self, source: Projection, start: int, end: int) -> None:
        self.source, self.rows = source, slice(start, end)
        self.unpacked = self.packed = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.source is not None:
            out = self.source(x)
            return out if self.rows.stop - self.rows.start == out.shape[-1] else out[..., self.rows]
        if self.packed is None:
            assert self.unpacked is not None
            self.packed = torch.ops.quantized.linear_prepack_fp16(self.unpacked.half(), self.bias)
            self.unpacked = None
        return fp16_linear(x.float(), self.packed)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp16 storage"


def give_back_freed_memory() -> None:
    """Return freed heap to the operating system (glibc keeps it for reuse otherwise).

    Loading converts and packs tensor by tensor; glibc keeps what those
    transients freed in its arenas, where RSS still counts it (measured: about
    0.6x the packed weights after fbgemm's packing). A no-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def can_store_half_on(device: torch.device) -> bool:
    """fbgemm's fp16 GEMM (fp16 weights, fp32 arithmetic) runs on x86-64 CPUs, AVX2 and up."""
    return device.type == "cpu" and "fbgemm" in torch.backends.quantized.supported_engines


def _upcast_output(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    return output.float()


def store_half_model(model: Any) -> None:
    """Make a model loaded in fp16 on a CPU compute in fp32 from its fp16 weights.

    Every nn.Linear becomes a HalfLinear (fbgemm's fp16 GEMM: fp16 weights,
    fp32 products and sums). The token embedding stays fp16 and its lookups
    are widened to fp32 (exact). Everything else that is floating point
    (norm weights, biases: vectors) becomes fp32, so activations, attention
    and logits are fp32 as in an fp32 model. The weight matrices are kept
    once, in fp16; `model.generate()` keeps working.
    """
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, HalfLinear(child))
    embeddings = model.get_input_embeddings()
    embeddings.register_forward_hook(_upcast_output)
    matrices = {id(embeddings.weight)}
    with torch.no_grad():
        # Its own memory: loaded from an fp16 file, every weight is a view of
        # the memory-mapped file, whose pages count as this process's memory
        # for as long as any view lives. Once the Linear weights are packed,
        # nothing else keeps the mapping.
        embeddings.weight.data = embeddings.weight.data.clone()
        for param in model.parameters():
            if id(param) not in matrices and param.is_floating_point() and param.dtype != torch.float32:
                param.data = param.data.float()
        for module in model.modules():
            for name, buffer in list(module.named_buffers(recurse=False)):
                if buffer.is_floating_point() and buffer.dtype != torch.float32:
                    setattr(module, name, buffer.float())
    # What the model computes in, for code that reads it (masks, caches).
    model.config.dtype = torch.float32


def half_stored(model: Any) -> bool:
    """Whether `store_half_model` has made this model's Linear layers HalfLinear."""
    return any(isinstance(m, HalfLinear) for m in model.modules())


class _Layer(nn.Module):
    def __init__(self, layer: Any, int4_group: int = 0) -> None:
        super().__init__()
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv = Projection([attn.q_proj, attn.k_proj, attn.v_proj], int4_group=int4_group)
        self.o = Projection([attn.o_proj], int4_group=int4_group)
        self.gate_up = Projection([mlp.gate_proj, mlp.up_proj], int4_group=int4_group)
        self.down = Projection([mlp.down_proj], int4_group=int4_group)
        self.norm1: torch.Tensor = layer.input_layernorm.weight.detach()
        self.norm2: torch.Tensor = layer.post_attention_layernorm.weight.detach()
        # Qwen3 normalises q and k per head.
        self.q_norm: nn.Module | None = getattr(attn, "q_norm", None)
        self.k_norm: nn.Module | None = getattr(attn, "k_norm", None)


class KVRow:
    """One sequence's keys and values, in one allocation of [layers, 2, kv_heads, capacity, head_dim]
    (2: keys, then values).

    Each sequence has its own, sized to what it holds: a long prompt grows
    only its own row, and a finished row frees all of its memory at once.
    """

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data
        # (keys, values) of each layer, [kv_heads, capacity, head_dim]: made
        # once here, not for every layer of every step.
        self.layers = [(data[index, 0], data[index, 1]) for index in range(data.shape[0])]
        # The same as [1, kv_heads, capacity, head_dim], the shape attention
        # takes, for the single-reply decode step (FastDecoder.decode_one).
        self.batched = [(data[index, 0:1], data[index, 1:2]) for index in range(data.shape[0])]

    @property
    def capacity(self) -> int:
        return int(self.data.shape[3])

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()


def _fp16_product(packed: torch.ScriptObject) -> Callable[[torch.Tensor], torch.Tensor]:
    linear = _fp16_linear_impl()

    def product(x: torch.Tensor) -> torch.Tensor:
        return linear(x, packed)

    return product


def _int4_product(int4: tuple[torch.Tensor, torch.Tensor, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    packed, scales_and_zeros, group = int4

    def product(x: torch.Tensor) -> torch.Tensor:
        return int4_linear(x, packed, scales_and_zeros, group)

    return product


def _product(projection: Projection) -> Callable[[torch.Tensor], torch.Tensor]:
    """A projection's forward as a plain callable: no module call and, for fbgemm's
    fp16 or 4-bit weights without a bias, no branches (the decode step calls 4 per layer)."""
    if projection.packed_fp16 is not None:
        return _fp16_product(projection.packed_fp16)
    if projection.int4 is not None and projection.bias is None:
        return _int4_product(projection.int4)
    return projection.forward


# One layer as the single-reply decode step reads it: norm1, qkv, o, norm2,
# gate_up, down, q_norm, k_norm (see FastDecoder.decode_one).
_LayerPlan = tuple[
    torch.Tensor,
    Callable[[torch.Tensor], torch.Tensor],
    Callable[[torch.Tensor], torch.Tensor],
    torch.Tensor,
    Callable[[torch.Tensor], torch.Tensor],
    Callable[[torch.Tensor], torch.Tensor],
    "nn.Module | None",
    "nn.Module | None",
]


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding x*cos + rotate_half(x)*sin over the last dimension, with
    rotate_half's sign folded into `signed_sin` (see FastDecoder.rotary_at).

    rotate_half(x) is the two halves swapped and the first negated; swapping
    halves is a roll by half the dimension: one op instead of two slices and a cat.
    """
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), signed_sin)


class FastDecoder(nn.Module):
    def __init__(self, model: Any, *, int4_group: int = 0) -> None:
        """`int4_group`: a half-stored model's layer weights go straight to 4 bits
        (see Projection.store_int4) instead of fbgemm's fp16 packing."""
        super().__init__()
        config = model.config
        inner = model.model
        self.embed = inner.embed_tokens
        # Half storage: fp16 weights, fp32 arithmetic (the embedding widens its lookups).
        self.half_stored = half_stored(model)
        self.layers = nn.ModuleList()
        for layer in inner.layers:
            self.layers.append(_Layer(layer, int4_group))
            if self.half_stored:
                give_back_freed_memory()  # packing's transients, layer by layer: a flat peak
        self.final_norm = inner.norm.weight.detach()
        if isinstance(model.lm_head, HalfLinear):
            # Packed by now (tied or not): a tied embedding keeps its own fp16 rows for lookups.
            self.lm_head = Projection([model.lm_head])
        elif model.lm_head.weight is self.embed.weight:
            # Tied: transposing in place would change the embedding's layout,
            # which the lookup wants row-major. One extra copy of the vocabulary
            # matrix (in fp16 where the weights are stored so).
            self.lm_head = Projection([_copy_linear(model.lm_head)], private=True)
        else:
            self.lm_head = Projection([model.lm_head])
        self.rotary = inner.rotary_emb
        self.eps = float(getattr(config, "rms_norm_eps", 1e-6))
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.scale = 1.0 / math.sqrt(self.head_dim)
        # What activations, the KV cache and the rotary tables are computed in.
        self.dtype = torch.float32 if self.half_stored else self.embed.weight.dtype
        self.device = self.embed.weight.device
        self._cos = torch.empty(0, self.head_dim, dtype=self.dtype, device=self.device)
        self._sin = self._cos
        self._rotary_varies = getattr(self.rotary, "rope_type", "default") in {"dynamic", "longrope"}
        self._plan: list[_LayerPlan] | None = None  # built at the first decode_one; reset when weights move

    def decode_plan(self) -> list[_LayerPlan]:
        """Each layer's weights and products, looked up once rather than at every step."""
        if self._plan is None:
            self._plan = [
                (
                    layer.norm1,
                    _product(layer.qkv),
                    _product(layer.o),
                    layer.norm2,
                    _product(layer.gate_up),
                    _product(layer.down),
                    layer.q_norm,
                    layer.k_norm,
                )
                for layer in self.decoder_layers()
            ]
        return self._plan

    def rotary_at(
        self, positions: torch.Tensor, last: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin for `positions` [rows, steps], as [rows, steps, 1, head_dim].

        `last`: the highest of the positions, where the caller knows it (on a
        GPU, reading it from the tensor would wait for the device once more).

        Looked up in a table the model's own rotary module filled once (each
        entry is computed elementwise, so a table entry equals what the module
        gives for that position alone), instead of recomputing every step.
        """
        half = self.head_dim // 2
        if self._rotary_varies:
            # Rotary variants whose frequencies depend on the sequence length: no table.
            probe = torch.empty((), dtype=self.dtype, device=self.device)
            cos, sin = self.rotary(probe, positions)
            sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
            return cos.unsqueeze(2), sin.unsqueeze(2)
        needed = (int(positions.max()) if last is None else last) + 1
        if needed > self._cos.shape[0]:
            size = max(needed, 2 * self._cos.shape[0], 256)
            table = torch.arange(size, device=self.device)[None]
            probe = torch.empty((), dtype=self.dtype, device=self.device)
            cos, sin = self.rotary(probe, table)
            # rotate_half(x) * sin == swap_halves(x) * cat(-sin[:half], sin[half:]).
            sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
            self._cos, self._sin = cos[0].contiguous(), sin[0].contiguous()
        return self._cos[positions].unsqueeze(2), self._sin[positions].unsqueeze(2)

    def decoder_layers(self) -> Iterable[_Layer]:
        """self.layers, typed: a ModuleList of _Layer (nn.ModuleList only says Module)."""
        return cast("Iterable[_Layer]", self.layers)

    def projections(self) -> list[Projection]:
        return [
            p for layer in self.decoder_layers() for p in (layer.qkv, layer.o, layer.gate_up, layer.down)
        ] + [self.lm_head]

    def pack_for_batches(self, rows: int) -> None:
        """oneDNN-packed weight copies for decode steps of 2..rows rows (see Projection)."""
        if self.device.type == "cpu" and self.dtype == torch.float32 and torch.backends.mkldnn.is_available():
            for projection in self.projections():
                projection.pack_for_batches(rows)
            self._plan = None

    def can_store_half(self) -> bool:
        """fbgemm's fp16 GEMM runs on x86-64 CPUs (AVX2 and up), for an fp32 model."""
        return can_store_half_on(self.device) and self.dtype == torch.float32

    def store_int4_weights(self, group: int = INT4_GROUP) -> int:
        """4-bit weights for every layer's projections whose shapes suit the kernel
        (see Projection.store_int4); the output layer keeps its storage. How many were stored."""
        stored = 0
        for layer in self.decoder_layers():
            for projection in (layer.qkv, layer.o, layer.gate_up, layer.down):
                stored += projection.store_int4(group)
            give_back_freed_memory()  # the fp16 weights and the transients, layer by layer
        self._plan = None
        return stored

    def store_half_weights(self) -> None:
        """fp16 weights, fp32 arithmetic, for every projection (see Projection.store_half)."""
        for projection in self.projections():
            projection.store_half()
        self._plan = None

    def new_row(self, capacity: int) -> KVRow:
        """An uninitialised KV row: nothing reads a position before it is written,
        and pages never written are never touched (a large allocation is mapped lazily)."""
        shape = (len(self.layers), 2, self.kv_heads, capacity, self.head_dim)
        return KVRow(torch.empty(shape, dtype=self.dtype, device=self.device))

    def grown(self, row: KVRow, capacity: int, keep: int) -> KVRow:
        """A row of `capacity` holding the first `keep` positions of `row`."""
        new = self.new_row(capacity)
        new.data[:, :, :, :keep] = row.data[:, :, :, :keep]
        return new

    def kv_bytes_per_token(self) -> int:
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * len(self.layers) * self.kv_heads * self.head_dim * element

    def forward(
        self,
        tokens: torch.Tensor,  # [1, total]: each row's tokens in turn
        cache: Sequence[KVRow],  # each row's own KV row
        starts: Sequence[int],  # where each row's first token sits in its sequence
        counts: Sequence[int],  # how many of `tokens` each row has
        logits_of: Sequence[int] | None = None,  # the rows whose last token's logits to return; None = all
    ) -> torch.Tensor:
        """Logits of the last token of each row in `logits_of`, [len(logits_of), vocab].

        Rows are ragged: a decode step's rows have one token each, a prompt
        being prefilled has a chunk of its tokens, and one pass may mix them
        (the weights are read once for all). Row i's tokens go to positions
        starts[i] .. starts[i]+counts[i]-1 of its KV row, which must have the
        capacity, and attend causally to everything before them.

        Attention runs row by row, each over its own length: no row reads (or
        holds) keys for another row's length. Measured on 2 cores, 8 rows of
        ~200 tokens of the default model: ~10 ms a step against ~7.5 ms for one
        masked product over a dense padded batch, which reads and holds every
        row at the longest row's length.
        """
        single = len(counts) == 1 and counts[0] == 1 and (logits_of is None or list(logits_of) == [0])
        if single and not self._rotary_varies:
            return self.decode_one(tokens, cache[0], int(starts[0]))
        device = tokens.device
        total = tokens.shape[1]
        rows = len(counts)
        spans: list[tuple[int, int, int]] = []  # (offset in tokens, start, count) of each row
        offset = 0
        for start, count in zip(starts, counts, strict=True):
            spans.append((offset, int(start), int(count)))
            offset += int(count)
        assert offset == total, f"{total} tokens for rows of {list(counts)}"
        positions = torch.tensor(
            [position for _, start, count in spans for position in range(start, start + count)], device=device
        )[None]
        hidden = self.embed(tokens)[0]  # [total, hidden]
        last = max(start + count - 1 for _, start, count in spans)
        cos, sin = self.rotary_at(positions, last)  # [1, total, 1, head_dim]
        cos, sin = cos[0], sin[0]
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        q_size, kv_size = heads * head_dim, kv_heads * head_dim
        qk_heads = heads + kv_heads
        # Per row: the attention mask; None for plain causal attention from
        # position 0, or for one token (which sees every key before it).
        masks: list[torch.Tensor | None] = []
        for _, start, count in spans:
            if count == 1 or start == 0:
                masks.append(None)
            else:
                columns = torch.arange(start + count, device=device)
                rows_at = torch.arange(start, start + count, device=device)
                masks.append(columns[None, :] <= rows_at[:, None])
        gqa = heads != kv_heads
        for index, layer in enumerate(self.decoder_layers()):
            x = F.rms_norm(hidden, (hidden.shape[-1],), layer.norm1, self.eps)
            qkv = layer.qkv(x)
            qk = qkv[:, : q_size + kv_size].view(total, qk_heads, head_dim)
            if layer.q_norm is not None and layer.k_norm is not None:
                qk = torch.cat((layer.q_norm(qk[:, :heads]), layer.k_norm(qk[:, heads:])), dim=1)
            # Rotary embedding of q and k at once.
            qk = rotate(qk, cos, sin)
            q, k = qk[:, :heads], qk[:, heads:]  # [total, heads or kv_heads, head_dim]
            v = qkv[:, q_size + kv_size :].view(total, kv_heads, head_dim)
            outputs = []
            for row, (at, start, count) in enumerate(spans):
                keys, values = cache[row].layers[index]
                if count == 1:
                    keys.select(1, start).copy_(k[at])
                    values.select(1, start).copy_(v[at])
                else:
                    keys[:, start : start + count].copy_(k[at : at + count].transpose(0, 1))
                    values[:, start : start + count].copy_(v[at : at + count].transpose(0, 1))
                mask = masks[row]
                out = F.scaled_dot_product_attention(
                    q[at : at + count].transpose(0, 1)[None],
                    keys[None, :, : start + count],
                    values[None, :, : start + count],
                    attn_mask=mask,
                    is_causal=mask is None and count > 1,
                    scale=self.scale,
                    enable_gqa=gqa,
                )  # [1, heads, count, head_dim]
                outputs.append(out[0].transpose(0, 1).reshape(count, q_size))
            attn = outputs[0] if rows == 1 else torch.cat(outputs)
            hidden = hidden + layer.o(attn)
            x = F.rms_norm(hidden, (hidden.shape[-1],), layer.norm2, self.eps)
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
            hidden = hidden + layer.down(F.silu(gate) * up)
        wanted = range(rows) if logits_of is None else logits_of
        lasts = [spans[row][0] + spans[row][2] - 1 for row in wanted]
        if not lasts:  # a chunk in the middle of a prompt: nothing to sample yet
            return hidden.new_empty(0, self.lm_head.out_features)
        final = hidden[-1:] if lasts == [total - 1] else hidden[torch.tensor(lasts, device=device)]
        final = F.rms_norm(final, (hidden.shape[-1],), self.final_norm, self.eps)
        return self.lm_head(final).float()

    def decode_one(self, tokens: torch.Tensor, row: KVRow, start: int) -> torch.Tensor:
        """forward() for one row and one token (a single reply's decode step), [1, vocab].

        The same arithmetic as forward() with less around it, since at batch 1
        the step's time not spent reading weights is the dispatch of small ops:
        each layer's products and weights come from decode_plan() (no module
        calls or attribute lookups), the rotary rows are slices of the table,
        keys and values go straight from the fused q/k/v product into the KV
        row, and residual adds are in place.
        """
        hidden = self.embed(tokens)[0]  # [1, hidden]
        if start >= self._cos.shape[0]:
            self.rotary_at(torch.tensor([[start]], device=self.device), start)  # grows the table
        cos, sin = self._cos[start], self._sin[start]  # [head_dim]
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        qk_size = (heads + kv_heads) * head_dim
        q_size = heads * head_dim
        shape = (hidden.shape[-1],)
        eps, scale, gqa = self.eps, self.scale, heads != kv_heads
        stop = start + 1
        for (norm1, qkv, o, norm2, gate_up, down, q_norm, k_norm), (keys, values) in zip(
            self.decode_plan(), row.batched, strict=True
        ):
            fused = qkv(F.rms_norm(hidden, shape, norm1, eps))  # [1, q + k + v]
            qk = fused[0, :qk_size].view(heads + kv_heads, head_dim)
            if q_norm is not None and k_norm is not None:
                qk = torch.cat((q_norm(qk[:heads]), k_norm(qk[heads:])))
            qk = rotate(qk, cos, sin)
            keys.select(2, start).copy_(qk[heads:])
            values.select(2, start).copy_(fused[0, qk_size:].view(kv_heads, head_dim))
            out = F.scaled_dot_product_attention(
                qk[:heads].view(1, heads, 1, head_dim),
                keys.narrow(2, 0, stop),
                values.narrow(2, 0, stop),
                scale=scale,
                enable_gqa=gqa,
            )  # [1, heads, 1, head_dim]
            hidden.add_(o(out.reshape(1, q_size)))
            gate, up = gate_up(F.rms_norm(hidden, shape, norm2, eps)).chunk(2, dim=-1)
            hidden.add_(down(F.silu(gate).mul_(up)))
        final = F.rms_norm(hidden, shape, self.final_norm, self.eps)
        return self.lm_head(final).float()


def _copy_linear(linear: nn.Linear) -> nn.Linear:
    copy = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    copy.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
    if linear.bias is not None:
        copy.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    return copy
