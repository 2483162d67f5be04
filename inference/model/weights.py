"""How a model's weights are stored and multiplied: fp16 and 4-bit storage on a CPU.

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

import warnings
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn


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
    if x.dim() == 2:
        return _int4_mm(x.to(torch.bfloat16), packed, group, scales_and_zeros).float()
    rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
    out = _int4_mm(rows, packed, group, scales_and_zeros)
    return out.float().view(*x.shape[:-1], out.shape[-1])


# The kernel through torch's own binding: torch.ops.aten's Python dispatch
# costs a few microseconds more a call, and a decode pass makes 120 of them.
_int4_mm = torch._weight_int4pack_mm_for_cpu


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

    def store_int4(self, group: int = INT4_GROUP, *, keep_fp16: bool = False) -> bool:
        """Keep the weight in 4 bits (see quantize_int4) and use it from now on,
        dropping the fp16 one; False, keeping it as it is, where the shape does not suit the kernel.

        `keep_fp16`: keep fbgemm's fp16 weight as well, for prompt tokens (see
        forward): the int4 kernel reads a decode step's weights faster, fp16 prefills faster.

        From fp16 weights: the fp32 matrix fbgemm unpacks to is the only
        transient, one projection at a time.
        """
        if self.int4 is not None or not can_store_int4(self.out_features, self.in_features, group):
            return self.int4 is not None
        if keep_fp16 and self.packed_fp16 is None:
            self.store_half()
        if self.packed_fp16 is not None:
            weight, _ = torch.ops.quantized.linear_unpack_fp16(self.packed_fp16)
        else:
            weight = self.weight_t.detach().t()
        packed, scales_and_zeros = quantize_int4(weight, group)
        del weight
        self.int4 = (packed, scales_and_zeros, group)
        self.packed, self.packed_rows = None, 0
        if keep_fp16:
            return True
        self.packed_fp16 = None
        if self.private:
            self.weight_t = nn.Parameter(torch.empty(0), requires_grad=False)
        return True

    @property
    def both(self) -> bool:
        """4-bit weights for decode tokens and fp16 for prompt tokens (store_int4(keep_fp16=True))."""
        return self.int4 is not None and self.packed_fp16 is not None

    def weight_bytes(self) -> int:
        """Bytes of weight one decode product reads."""
        if self.int4 is not None:
            packed, scales_and_zeros, _ = self.int4
            return packed.numel() * packed.element_size() + scales_and_zeros.numel() * 2
        return (
            self.in_features
            * self.out_features
            * (2 if self.packed_fp16 is not None else self.weight_t.element_size())
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W^T (+ bias). Holding both formats, one new token per sequence
        (x [..., 1, in]: a decode step of the plain model) goes through the
        4-bit weights and anything longer (a prompt) through fp16, as the
        engine's pass splits its tokens (see plain_product)."""
        if self.both and x.dim() > 1 and x.shape[-2] == 1:
            assert self.int4 is not None
            out = int4_linear(x, *self.int4)
            return out if self.bias is None else out + self.bias
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


def can_store_half_on(device: torch.device) -> bool:
    """fbgemm's fp16 GEMM (fp16 weights, fp32 arithmetic) runs on x86-64 CPUs, AVX2 and up."""
    return device.type == "cpu" and "fbgemm" in torch.backends.quantized.supported_engines


def _upcast_output(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    return output.float()


def only_widened(module: nn.Module) -> bool:
    """Whether the only hook on `module` is the one store_half_model adds, which widens its output to fp32."""
    hooks = list(module._forward_hooks.values())
    return not module._forward_pre_hooks and all(hook is _upcast_output for hook in hooks)


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


# A product as a pass calls it: (x [tokens, in], decoding) -> [tokens, out], where
# the first `decoding` rows of x are decode tokens (one generated token of a
# reply each) and the rest are prompt tokens.
Product = Callable[[torch.Tensor, int], torch.Tensor]


def _fp16_product(packed: torch.ScriptObject) -> Product:
    linear = _fp16_linear_impl()

    def product(x: torch.Tensor, decoding: int) -> torch.Tensor:
        return linear(x, packed)

    return product


def _int4_product(int4: tuple[torch.Tensor, torch.Tensor, int]) -> Product:
    packed, scales_and_zeros, group = int4
    bf16, mm = torch.bfloat16, _int4_mm

    def product(x: torch.Tensor, decoding: int) -> torch.Tensor:  # x: [rows, in]
        return mm(x.to(bf16), packed, group, scales_and_zeros).float()

    return product


def _split_product(
    int4: tuple[torch.Tensor, torch.Tensor, int], fp16: torch.ScriptObject, bias: torch.Tensor | None
) -> Product:
    """Decode tokens through the 4-bit weights, prompt tokens through fp16
    (whose packing holds the bias).

    Split by what each token is, not by the size of the pass, so a reply's
    tokens do not depend on what else shares its pass: its prompt is always
    computed in fp16 and every token it generates in 4 bits, alone or in any
    batch, as the plain model computes them (see Projection.forward).
    """
    packed, scales_and_zeros, group = int4
    linear = _fp16_linear_impl()
    bf16, mm = torch.bfloat16, _int4_mm

    def decode(x: torch.Tensor) -> torch.Tensor:  # x: [rows, in], as the engine's pass holds it
        out = mm(x.to(bf16), packed, group, scales_and_zeros).float()
        return out if bias is None else out + bias

    def product(x: torch.Tensor, decoding: int) -> torch.Tensor:
        if decoding == x.shape[0]:
            return decode(x)
        if not decoding:
            return linear(x, fp16)
        return torch.cat((decode(x[:decoding]), linear(x[decoding:], fp16)))

    return product


def plain_product(projection: Projection) -> Product:
    """A projection's forward as a plain callable: no module call and, for fbgemm's
    fp16 or 4-bit weights, no branches beyond the decode/prompt split
    (FastDecoder.forward calls 4 per layer)."""
    if projection.int4 is not None and projection.packed_fp16 is not None:
        bias = None if projection.bias is None else projection.bias.detach()
        return _split_product(projection.int4, projection.packed_fp16, bias)
    if projection.packed_fp16 is not None:
        return _fp16_product(projection.packed_fp16)
    if projection.int4 is not None and projection.bias is None:
        return _int4_product(projection.int4)

    def product(x: torch.Tensor, decoding: int) -> torch.Tensor:
        return projection(x)

    return product
