"""A lean decoder forward pass over a loaded Llama-family model, with its own KV cache.

The engine's decode loop runs every active conversation through this once per
token. Compared with calling the Hugging Face module tree it does less per
step: q/k/v and gate/up projections are fused into one matrix product each,
each sequence's KV cache is its own preallocated buffer written in place (no
concatenation per step), and the rotary rows are looked up once per pass for
all layers. One pass, FastDecoder.forward, serves a single reply's decode
step, a batch of them, prompt chunks and any mix of these. The weights are
the model's own tensors (the fused matrices are the only copies), so the
Hugging Face model stays usable.

Supported: architectures whose decoder layer is RMSNorm -> GQA attention with
rotary embeddings -> RMSNorm -> SwiGLU MLP (Llama, Mistral, Qwen2, Qwen3).
`supports(model)` says whether a model fits; the worker falls back to the
one-at-a-time backend for anything else.

"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from inference.model.memory import give_back_freed_memory
from inference.model.weights import (
    INT4_GROUP,
    HalfLinear,
    Product,
    Projection,
    can_store_half_on,
    half_stored,
    only_widened,
    plain_product,
)

SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


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
        # (keys, values) of each layer as [1, kv_heads, capacity, head_dim],
        # the shape attention takes: views made once here, not for every layer
        # of every step.
        self.layers = [(data[index, 0:1], data[index, 1:2]) for index in range(data.shape[0])]

    @property
    def capacity(self) -> int:
        return int(self.data.shape[3])

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()


# One layer as FastDecoder.forward reads it: norm1, qkv, o, norm2, gate_up,
# down, q_norm, k_norm (see FastDecoder.plan).
_LayerPlan = tuple[
    torch.Tensor, Product, Product, torch.Tensor, Product, Product, "nn.Module | None", "nn.Module | None"
]


class _Plan(NamedTuple):
    """What a pass reads, looked up once (see FastDecoder.plan)."""

    layers: list[_LayerPlan]
    lm_head: Product


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding x*cos + rotate_half(x)*sin over the last dimension, with
    rotate_half's sign folded into `signed_sin` (see FastDecoder.rotary_of).

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
        # The rotary table, [positions, 1, head_dim] (see rotary_of): filled at the first pass.
        self._cos = torch.empty(0, 1, self.head_dim, dtype=self.dtype, device=self.device)
        self._sin = self._cos
        self._rotary_varies = getattr(self.rotary, "rope_type", "default") in {"dynamic", "longrope"}
        # The token embedding looked up without its module call where it is a
        # plain nn.Embedding whose only hook widens its rows (a half-stored model's).
        self._plain_embed = (
            type(self.embed) is nn.Embedding and self.embed.max_norm is None and only_widened(self.embed)
        )
        self._plan: _Plan | None = None  # built at the first pass; reset when weights change

    def plan(self) -> _Plan:
        """Each layer's weights and products, and the output product, looked up
        once rather than at every pass.

        forward() calls these plain callables (see plain_product) instead of
        the modules: at batch 1 a pass of the default model makes 121 products
        among ~940 ops, and a module call, with its hooks and attribute
        lookups, costs more than some of those ops.
        """
        if self._plan is None:
            layers = [
                (
                    layer.norm1,
                    plain_product(layer.qkv),
                    plain_product(layer.o),
                    layer.norm2,
                    plain_product(layer.gate_up),
                    plain_product(layer.down),
                    layer.q_norm,
                    layer.k_norm,
                )
                for layer in self.decoder_layers()
            ]
            self._plan = _Plan(layers, plain_product(self.lm_head))
        return self._plan

    def rotary_of(self, spans: Sequence[tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin for every token of `spans` ((offset, start, count) of
        each row, as forward() has them), as [total, 1, head_dim].

        Looked up in a table the model's own rotary module filled once (each
        entry is computed elementwise, so a table entry equals what the module
        gives for that position alone), instead of recomputing every step. The
        table is kept as [positions, 1, head_dim], the shape rotate() takes, so
        one row's positions are a slice of it (no position tensor is built and
        no gather runs: all the setup a single reply's step needs) and several
        rows' are one gather.
        """
        half = self.head_dim // 2
        if self._rotary_varies:
            # Rotary variants whose frequencies depend on the sequence length: no table.
            probe = torch.empty((), dtype=self.dtype, device=self.device)
            cos, sin = self.rotary(probe, self._positions(spans)[None])
            sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
            return cos[0].unsqueeze(1), sin[0].unsqueeze(1)
        _, start, count = spans[0]
        needed = start + count if len(spans) == 1 else max(start + count for _, start, count in spans)
        if needed > self._cos.shape[0]:
            size = max(needed, 2 * self._cos.shape[0], 256)
            table = torch.arange(size, device=self.device)[None]
            probe = torch.empty((), dtype=self.dtype, device=self.device)
            cos, sin = self.rotary(probe, table)
            # rotate_half(x) * sin == swap_halves(x) * cat(-sin[:half], sin[half:]).
            sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
            self._cos, self._sin = cos[0, :, None].contiguous(), sin[0, :, None].contiguous()
        if len(spans) == 1:
            return self._cos[start : start + count], self._sin[start : start + count]
        positions = self._positions(spans)
        return self._cos[positions], self._sin[positions]

    def _positions(self, spans: Sequence[tuple[int, int, int]]) -> torch.Tensor:
        """Each token's position in its sequence, [total]."""
        return torch.tensor(
            [position for _, start, count in spans for position in range(start, start + count)],
            device=self.device,
        )

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

    def store_int4_weights(self, group: int = INT4_GROUP, *, keep_fp16: bool = False) -> int:
        """4-bit weights for every layer's projections whose shapes suit the kernel
        (see Projection.store_int4), beside their fp16 ones with `keep_fp16`;
        the output layer keeps its storage (in 4 bits it changed the default
        model's answers: 15% of greedy tokens equal to fp32's). How many were stored."""
        stored = 0
        for layer in self.decoder_layers():
            for projection in (layer.qkv, layer.o, layer.gate_up, layer.down):
                stored += projection.store_int4(group, keep_fp16=keep_fp16)
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
        decoding: int = 0,  # the first rows that are decode rows (one generated token each)
    ) -> torch.Tensor:
        """Logits of the last token of each row in `logits_of`, [len(logits_of), vocab].

        Rows are ragged: a decode step's rows have one token each, a prompt
        being prefilled has a chunk of its tokens, and one pass may mix them
        (the weights are read once for all). Row i's tokens go to positions
        starts[i] .. starts[i]+counts[i]-1 of its KV row, which must have the
        capacity, and attend causally to everything before them.

        One path for every pass: a single reply's decode step, a batch of
        them, prompt chunks, or a mix. At batch 1 a step's time beyond reading
        the weights is the dispatch of ~940 small ops, so the layer loop does
        as little around them as it can, for every pass: each layer's products
        and weights come from plan() (no module calls or attribute lookups;
        the embedding is looked up without its module call too), residual
        adds are in place, and keys and values go straight from the fused
        q/k/v product into each row's KV row. Only the attention is per row,
        and what a one-row pass needs beyond that is setup: its rotary rows are
        a slice of the table, not a gather (see rotary_of).

        Measured against the two copies this path replaced (a batch-1
        decode_one beside a general pass that called the modules), the
        default model with fp16 weights on a shared 2-core Xeon, one process
        per run, medians of 20: one row 40.3 -> 39.8 ms a step (within the
        noise), 8 rows 79.8 -> 78.3 ms, 7 rows and a 12-token chunk 112.9 ->
        109.5 ms, one thread; a 1,000-token prompt on two threads 1183 ->
        1153 ms (medians of 8). Instructions per pass, which the machine's
        load does not change (callgrind, 30 layers of the default model's
        shape at width 72, so dispatch is all a pass does): one row -1.7%, 8
        rows -5.5%, the mix -4.2%, a 64-token prompt -5.0%.

        `decoding`: the first rows are decode rows, whose one token each is a
        generated one; where a projection keeps 4-bit weights beside fp16 ones
        (ENGINE_WEIGHTS=int4-decode) those tokens go through the 4-bit weights
        and the prompt tokens through fp16 (see weights._split_product).

        Attention runs row by row, each over its own length: no row reads (or
        holds) keys for another row's length. Measured on 2 cores, 8 rows of
        ~200 tokens of the default model: ~10 ms a step against ~7.5 ms for one
        masked product over a dense padded batch, which reads and holds every
        row at the longest row's length. A one-token row attends to every key
        so far with no mask; a chunk causally: `is_causal` from position 0,
        else a mask that lets each token see the keys up to its own (is_causal
        would align the chunk with the first keys, not the last).
        """
        total = tokens.shape[1]
        spans: list[tuple[int, int, int]]  # (offset in tokens, start, count) of each row
        if len(counts) == 1:
            spans = [(0, int(starts[0]), int(counts[0]))]
        else:
            spans, offset = [], 0
            for start, count in zip(starts, counts, strict=True):
                spans.append((offset, int(start), int(count)))
                offset += int(count)
        at, _, count = spans[-1]
        assert at + count == total, f"{total} tokens for rows of {list(counts)}"
        cos, sin = self.rotary_of(spans)  # [total, 1, head_dim]
        masks = [self._chunk_mask(start, count) for _, start, count in spans]
        plan = self.plan()
        # [total, hidden], in memory of its own: the residual adds go into it in place.
        if self._plain_embed:  # no module call: its hook only widens fp16 rows
            hidden = torch.embedding(self.embed.weight, tokens[0]).to(self.dtype)
        else:
            hidden = self.embed(tokens)[0]
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        qk_heads = heads + kv_heads
        qk_size, q_size = qk_heads * head_dim, heads * head_dim
        shape = (hidden.shape[-1],)
        eps, scale, gqa = self.eps, self.scale, heads != kv_heads
        rows = [
            (at, start, count, mask, row.layers)
            for (at, start, count), mask, row in zip(spans, masks, cache, strict=True)
        ]
        # torch.rms_norm and torch._C._nn.silu: F.rms_norm and F.silu are Python
        # wrappers over them (a frame and a torch-function check a call, 91 a pass).
        for index, (norm1, qkv, o, norm2, gate_up, down, q_norm, k_norm) in enumerate(plan.layers):
            fused = qkv(torch.rms_norm(hidden, shape, norm1, eps), decoding)  # [total, q + k + v]
            qk = fused[:, :qk_size].view(total, qk_heads, head_dim)
            if q_norm is not None and k_norm is not None:
                qk = torch.cat((q_norm(qk[:, :heads]), k_norm(qk[:, heads:])), dim=1)
            qk = rotate(qk, cos, sin)  # q and k at once
            outputs = []
            for at, start, count, mask, layers in rows:
                keys, values = layers[index]  # [1, kv_heads, capacity, head_dim]
                stop = start + count
                if count == 1:  # a decode row: its token sees every key so far, no mask
                    token = qk[at]  # [heads + kv_heads, head_dim]
                    keys.select(2, start).copy_(token[heads:])
                    values.select(2, start).copy_(fused[at, qk_size:].view(kv_heads, head_dim))
                    out = F.scaled_dot_product_attention(
                        token[:heads].view(1, heads, 1, head_dim),
                        keys.narrow(2, 0, stop),
                        values.narrow(2, 0, stop),
                        scale=scale,
                        enable_gqa=gqa,
                    )  # [1, heads, 1, head_dim]
                    outputs.append(out.view(1, q_size))
                else:  # a prompt chunk: causal
                    end = at + count
                    keys.narrow(2, start, count).copy_(qk[at:end, heads:].transpose(0, 1))
                    values.narrow(2, start, count).copy_(
                        fused[at:end, qk_size:].view(count, kv_heads, head_dim).transpose(0, 1)
                    )
                    out = F.scaled_dot_product_attention(
                        qk[at:end, :heads].transpose(0, 1)[None],
                        keys.narrow(2, 0, stop),
                        values.narrow(2, 0, stop),
                        attn_mask=mask,
                        is_causal=mask is None,
                        scale=scale,
                        enable_gqa=gqa,
                    )  # [1, heads, count, head_dim]
                    outputs.append(out[0].transpose(0, 1).reshape(count, q_size))
            hidden.add_(o(outputs[0] if len(outputs) == 1 else torch.cat(outputs), decoding))
            gate, up = gate_up(torch.rms_norm(hidden, shape, norm2, eps), decoding).chunk(2, dim=-1)
            hidden.add_(down(torch._C._nn.silu(gate).mul_(up), decoding))
        wanted = range(len(spans)) if logits_of is None else logits_of
        lasts = [spans[row][0] + spans[row][2] - 1 for row in wanted]
        if not lasts:  # a chunk in the middle of a prompt: nothing to sample yet
            return hidden.new_empty(0, self.lm_head.out_features)
        final = hidden[-1:] if lasts == [total - 1] else hidden[torch.tensor(lasts, device=hidden.device)]
        final = torch.rms_norm(final, shape, self.final_norm, eps)
        return plan.lm_head(final, 0).float()

    def _chunk_mask(self, start: int, count: int) -> torch.Tensor | None:
        """The attention mask of a row of `count` tokens from `start`: None for
        one token (it sees every key before it) or a chunk from position 0 (plain causal)."""
        if count == 1 or start == 0:
            return None
        columns = torch.arange(start + count, device=self.device)
        rows_at = torch.arange(start, start + count, device=self.device)
        return columns[None, :] <= rows_at[:, None]


def _copy_linear(linear: nn.Linear) -> nn.Linear:
    copy = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    copy.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
    if linear.bias is not None:
        copy.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    return copy
