"""The engine's fused and shortcut operations against their unfused references (issue 13, item 5)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from inference.model.decoder import FastDecoder, KVRow, rotate
from inference.model.weights import (
    HalfLinear,
    Projection,
    _fp16_linear_op,
    fp16_linear,
    int4_linear,
    quantize_int4,
)

pytestmark = pytest.mark.skipif(
    "fbgemm" not in torch.backends.quantized.supported_engines, reason="fbgemm's fp16 GEMM is x86-64 only"
)


def test_rotate_matches_the_reference_rotary_embedding() -> None:
    torch.manual_seed(0)
    heads, kv_heads, tokens, head_dim = 4, 2, 3, 16
    q = torch.randn(1, heads, tokens, head_dim)
    k = torch.randn(1, kv_heads, tokens, head_dim)
    angles = torch.randn(1, tokens, head_dim // 2)
    cos = torch.cat((angles, angles), dim=-1).cos()
    sin = torch.cat((angles, angles), dim=-1).sin()
    expected_q, expected_k = apply_rotary_pos_emb(q, k, cos, sin)
    half = head_dim // 2
    signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    # The engine's layout: [tokens, q heads + kv heads, head_dim], rotated in one call.
    qk = torch.cat((q[0].transpose(0, 1), k[0].transpose(0, 1)), dim=1)
    rotated = rotate(qk, cos[0][:, None], signed_sin[0][:, None])
    torch.testing.assert_close(rotated[:, :heads], expected_q[0].transpose(0, 1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rotated[:, heads:], expected_k[0].transpose(0, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 24), (5, 24), (2, 3, 24)])
def test_scripted_fp16_product_equals_the_plain_call(bias: bool, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    weight = torch.randn(40, 24)
    packed = torch.ops.quantized.linear_prepack_fp16(weight, torch.randn(40) if bias else None)
    x = torch.randn(shape)
    assert torch.equal(fp16_linear(x, packed), _fp16_linear_op(x, packed))


@pytest.fixture(scope="module")
def decoder(tiny_model_dir: Path) -> FastDecoder:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    decoder = FastDecoder(model)
    decoder.store_half_weights()
    return decoder


def prefilled(decoder: FastDecoder, prompt: torch.Tensor, capacity: int = 32) -> KVRow:
    row = decoder.new_row(capacity)
    decoder(prompt, [row], [0], [prompt.shape[1]], [])
    return row


def test_a_single_reply_step_equals_the_same_row_in_a_batch(decoder: FastDecoder) -> None:
    """One row of one token (rotary rows sliced from the table) against the same
    row beside another (rotary rows gathered by position)."""
    torch.manual_seed(0)
    vocab = decoder.embed.weight.shape[0]
    prompt = torch.randint(0, vocab, (1, 9))
    with torch.inference_mode():
        alone, batched = prefilled(decoder, prompt), prefilled(decoder, prompt)
        other = prefilled(decoder, torch.randint(0, vocab, (1, 5)))
        for position, token in enumerate([5, 17, 3], start=9):
            one = decoder(torch.tensor([[token]]), [alone], [position], [1], [0])
            both = decoder(torch.tensor([[token, 7]]), [batched, other], [position, position - 4], [1, 1])
            torch.testing.assert_close(one, both[:1], rtol=1e-5, atol=1e-5)
            assert torch.equal(one.argmax(-1), both[:1].argmax(-1))
        held = slice(0, 12)
        torch.testing.assert_close(
            alone.data[:, :, :, held], batched.data[:, :, :, held], rtol=1e-5, atol=1e-5
        )


def test_decode_rows_and_prompt_chunks_in_one_pass_give_what_each_gives_alone(decoder: FastDecoder) -> None:
    """One pass of a one-token row (no mask), a chunk from position 0 (is_causal) and a
    chunk further on (masked) gives each row's logits and keys as a pass of its own."""
    torch.manual_seed(1)
    vocab = decoder.embed.weight.shape[0]
    decoding, first, later = (torch.randint(0, vocab, (1, n)) for n in (7, 6, 11))
    with torch.inference_mode():
        rows = [prefilled(decoder, decoding), decoder.new_row(32), prefilled(decoder, later[:, :4])]
        singles = [decoder.grown(row, 32, held) for row, held in zip(rows, (7, 0, 4), strict=True)]
        pieces = [torch.tensor([[3]]), first, later[:, 4:]]
        starts, counts = [7, 0, 4], [1, 6, 7]
        mixed = decoder(torch.cat(pieces, dim=1), rows, starts, counts)
        alone = torch.cat(
            [
                decoder(piece, [row], [start], [count])
                for piece, row, start, count in zip(pieces, singles, starts, counts, strict=True)
            ]
        )
        torch.testing.assert_close(mixed, alone, rtol=1e-5, atol=1e-5)
        assert torch.equal(mixed.argmax(-1), alone.argmax(-1))
        for row, single, start, count in zip(rows, singles, starts, counts, strict=True):
            held = slice(0, start + count)
            torch.testing.assert_close(
                row.data[:, :, :, held], single.data[:, :, :, held], rtol=1e-5, atol=1e-5
            )
        # The rows asked for, in the order asked; none for a chunk in the middle of its prompt.
        torch.testing.assert_close(
            decoder(torch.cat(pieces, dim=1), rows, starts, counts, [2, 0]),
            mixed[[2, 0]],
            rtol=1e-5,
            atol=1e-5,
        )
        assert decoder(first, [decoder.new_row(8)], [0], [6], []).shape == (0, vocab)


def test_a_pass_calls_no_layer_module(decoder: FastDecoder) -> None:
    """Each layer's products come from plan(): a module call costs more
    than some of a batch-1 step's ops, so one creeping back would slow it."""
    calls: list[str] = []
    hooks = [
        module.register_forward_pre_hook(lambda module, args: calls.append(type(module).__name__))
        for layer in decoder.decoder_layers()
        for module in layer.modules()
    ]
    try:
        with torch.inference_mode():
            row = prefilled(decoder, torch.tensor([[1, 2, 3]]))
            decoder(torch.tensor([[4]]), [row], [3], [1], [0])
            decoder(torch.tensor([[5, 6, 7]]), [row, decoder.new_row(8)], [4, 0], [1, 2])
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == []


def int4_reference(weight: torch.Tensor, group: int) -> torch.Tensor:
    """The 4-bit format written out: each run of `group` columns of a row mapped onto
    0..15 between its min and max, stored as (q - 8) * scale + zero with bf16 scale and zero."""
    rows, columns = weight.shape
    grouped = weight.reshape(rows, columns // group, group)
    low, high = grouped.amin(-1, keepdim=True), grouped.amax(-1, keepdim=True)
    scale = ((high - low) / 15).clamp(min=1e-6)
    q = torch.round((grouped - low) / scale).clamp(0, 15)
    zero = (low + 8 * scale).bfloat16().float()
    return ((q - 8) * scale.bfloat16().float() + zero).reshape(rows, columns)


@pytest.mark.parametrize("shape", [(1, 64), (7, 64), (2, 3, 64)])
def test_int4_product_matches_the_dequantized_weights_within_bf16_rounding(shape: tuple[int, ...]) -> None:
    """The kernel reads bf16 rows and rounds its result to bf16; the reference does the same in fp32."""
    torch.manual_seed(0)
    weight = torch.randn(48, 64) * 0.02
    x = torch.randn(*shape)
    packed, scales_and_zeros = quantize_int4(weight, 32)
    got = int4_linear(x, packed, scales_and_zeros, 32)
    expected = x.bfloat16().float() @ int4_reference(weight, 32).t()
    assert got.shape == (*shape[:-1], 48) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-3)
    # 4 bits cost accuracy: about 4% of the fp32 product here, not more.
    exact = x @ weight.t()
    assert (got - exact).norm() / exact.norm() < 0.1


def test_a_projection_keeps_4_bit_weights_only_where_the_kernel_takes_its_shape() -> None:
    torch.manual_seed(0)
    suits = HalfLinear(torch.nn.Linear(64, 32, bias=True))
    odd = HalfLinear(torch.nn.Linear(64, 24, bias=False))  # 24 output rows: not in sixteens
    for linear in (suits, odd):
        linear.unpacked = (linear.unpacked * 0.02).half()
    projection, unsuited = Projection([suits]), Projection([odd])
    x = torch.randn(3, 64)
    before = projection(x)
    assert projection.store_int4() and projection.int4 is not None and projection.packed_fp16 is None
    assert projection.weight_bytes() == 64 * 32 // 2 + (64 // 32) * 32 * 2 * 2  # 4 bits + bf16 scale and zero
    assert torch.allclose(projection(x), before, rtol=0.1, atol=0.02)  # the bias is still added
    # The plain module computes through the 4-bit weights; its weight reads back as they are used.
    torch.testing.assert_close(suits(x), projection(x))
    # Read back, the weights give the same products (to the kernel's bf16 rounding of its result).
    read_back = x.bfloat16().float() @ suits.half_weight().float().t() + suits.bias
    torch.testing.assert_close(read_back, projection(x), rtol=1e-2, atol=1e-3)
    assert not unsuited.store_int4() and unsuited.packed_fp16 is not None
