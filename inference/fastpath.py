"""A lean decoder forward pass over a loaded Llama-family model, with its own KV cache.

The engine's decode loop runs every active conversation through this once per
token. Compared with calling the Hugging Face module tree it does less per
step: q/k/v and gate/up projections are fused into one matrix product each,
the KV cache is a preallocated buffer written in place (no concatenation per
step), and the attention mask and rotary tables are built once per step for
all layers. The weights are the model's own tensors (the fused matrices are
the only copies), so the Hugging Face model stays usable.

Supported: architectures whose decoder layer is RMSNorm -> GQA attention with
rotary embeddings -> RMSNorm -> SwiGLU MLP (Llama, Mistral, Qwen2, Qwen3).
`supports(model)` says whether a model fits; the worker falls back to the
one-at-a-time backend for anything else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def supports(model: Any) -> bool:
    config = model.config
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

    def __init__(self, modules: list[nn.Linear]) -> None:
        super().__init__()
        # One [in, sum(out)] matrix for several projections that read the same input.
        weight_t = torch.cat([m.weight.detach().t() for m in modules], dim=1).contiguous()
        self.weight_t = nn.Parameter(weight_t, requires_grad=False)
        self.bias: nn.Parameter | None = None
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = torch.matmul(x, self.weight_t)
        return out if self.bias is None else out + self.bias

    def as_linear(self) -> nn.Linear:
        linear = nn.Linear(*self.weight_t.shape, bias=self.bias is not None, device=self.weight_t.device)
        linear.weight = nn.Parameter(self.weight_t.t(), requires_grad=False)
        if self.bias is not None:
            linear.bias = self.bias
        return linear


class _Layer(nn.Module):
    def __init__(self, layer: Any) -> None:
        super().__init__()
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv: nn.Module = Projection([attn.q_proj, attn.k_proj, attn.v_proj])
        self.o: nn.Module = Projection([attn.o_proj])
        self.gate_up: nn.Module = Projection([mlp.gate_proj, mlp.up_proj])
        self.down: nn.Module = Projection([mlp.down_proj])
        self.norm1 = layer.input_layernorm.weight.detach()
        self.norm2 = layer.post_attention_layernorm.weight.detach()
        self.q_norm = getattr(attn, "q_norm", None)  # Qwen3 normalises q and k per head
        self.k_norm = getattr(attn, "k_norm", None)


@dataclass
class KVBuffer:
    """Per-row KV cache: keys[layer] is [rows, kv_heads, capacity, head_dim]."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    @property
    def rows(self) -> int:
        return self.keys[0].shape[0]


class FastDecoder(nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        config = model.config
        inner = model.model
        self.embed = inner.embed_tokens
        self.layers = nn.ModuleList(_Layer(layer) for layer in inner.layers)
        self.final_norm = inner.norm.weight.detach()
        if model.lm_head.weight is self.embed.weight:
            # Tied: transposing in place would change the embedding's layout,
            # which the lookup wants row-major. One extra copy of the vocabulary matrix.
            self.lm_head: nn.Module = Projection([_copy_linear(model.lm_head)])
        else:
            self.lm_head = Projection([model.lm_head])
        self.rotary = inner.rotary_emb
        self.eps = float(getattr(config, "rms_norm_eps", 1e-6))
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.dtype = self.embed.weight.dtype
        self.device = self.embed.weight.device

    def new_buffer(self, rows: int, capacity: int) -> KVBuffer:
        shape = (rows, self.kv_heads, capacity, self.head_dim)
        return KVBuffer(
            keys=[torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers],
            values=[torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers],
        )

    def kv_bytes_per_token(self) -> int:
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * len(self.layers) * self.kv_heads * self.head_dim * element

    def forward(  # type: ignore[override]
        self,
        tokens: torch.Tensor,  # [rows, steps]
        positions: torch.Tensor,  # [rows, steps]: where each token sits in its sequence
        cache: KVBuffer,
        row_start: int,  # the tokens belong to cache rows row_start .. row_start+rows
        attend: int,  # keys 0..attend-1 are read (the longest sequence after this step)
        mask: torch.Tensor | None,  # [rows, 1, steps, attend] bool, or None for plain causal
    ) -> torch.Tensor:
        """Logits of the last token of each row, [rows, vocab]; writes the new keys and values."""
        rows, steps = tokens.shape
        hidden = self.embed(tokens)
        cos, sin = self.rotary(hidden, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [rows, 1, steps, head_dim]
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        q_size, kv_size = heads * head_dim, kv_heads * head_dim
        # Where the new keys go in the flattened [rows*kv_heads*capacity, head_dim] buffer.
        capacity = cache.capacity
        row_ids = torch.arange(row_start, row_start + rows, device=tokens.device)
        head_ids = torch.arange(kv_heads, device=tokens.device)
        slots = ((row_ids[:, None, None] * kv_heads + head_ids[None, :, None]) * capacity) + positions[
            :, None, :
        ]
        slots = slots.reshape(-1)
        rows_end = row_start + rows
        for index, layer in enumerate(self.layers):
            x = F.rms_norm(hidden, (hidden.shape[-1],), layer.norm1, self.eps)
            qkv = layer.qkv(x)
            q = qkv[..., :q_size].view(rows, steps, heads, head_dim).transpose(1, 2)
            k = qkv[..., q_size : q_size + kv_size].view(rows, steps, kv_heads, head_dim).transpose(1, 2)
            v = qkv[..., q_size + kv_size :].view(rows, steps, kv_heads, head_dim).transpose(1, 2)
            if layer.q_norm is not None:
                q, k = layer.q_norm(q), layer.k_norm(k)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            keys, values = cache.keys[index], cache.values[index]
            keys.view(-1, head_dim).index_copy_(0, slots, k.reshape(-1, head_dim))
            values.view(-1, head_dim).index_copy_(0, slots, v.reshape(-1, head_dim))
            attn = F.scaled_dot_product_attention(
                q,
                keys[row_start:rows_end, :, :attend],
                values[row_start:rows_end, :, :attend],
                attn_mask=mask,
                is_causal=mask is None and steps > 1,
                scale=self.scale,
                enable_gqa=heads != kv_heads,
            )
            hidden = hidden + layer.o(attn.transpose(1, 2).reshape(rows, steps, q_size))
            x = F.rms_norm(hidden, (hidden.shape[-1],), layer.norm2, self.eps)
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
            hidden = hidden + layer.down(F.silu(gate) * up)
        last = F.rms_norm(hidden[:, -1], (hidden.shape[-1],), self.final_norm, self.eps)
        return self.lm_head(last).float()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _copy_linear(linear: nn.Linear) -> nn.Linear:
    copy = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    copy.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
    if linear.bias is not None:
        copy.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    return copy


def quantize_int8(decoder: FastDecoder) -> FastDecoder:
    """Dynamic int8 quantization of every projection (int8 weights, activations quantized per step).

    CPU only (fbgemm/onednn kernels). The embedding and norms stay fp32; the
    Hugging Face model keeps its fp32 layers.
    """
    from torch.ao.quantization import quantize_dynamic

    for layer in decoder.layers:
        for name in ("qkv", "o", "gate_up", "down"):
            setattr(layer, name, getattr(layer, name).as_linear())
    decoder.lm_head = decoder.lm_head.as_linear()
    return quantize_dynamic(decoder, {nn.Linear}, dtype=torch.qint8, inplace=True)
