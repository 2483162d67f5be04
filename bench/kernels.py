"""Which weight formats have a CPU matrix-product kernel that reads weights faster than fbgemm fp16.

The engine decodes a token by reading every weight of the model once, so on a
CPU a decode step is bound by how fast its projections' matrix products stream
their weights from memory. Storing weights in fewer bits only helps where a
kernel for that format turns the saved bytes into saved time. This measures,
for the projections of every decoder layer of a model, each kernel as the
engine would call it (fp32 activations in and out) against fbgemm's fp16 GEMM,
the engine's CPU default:

- fbgemm fp16: fp16 weights, fp32 arithmetic (`inference.model.weights.fp16_linear`);
- int8 weight-only: torch's `_weight_int8pack_mm`, int8 weights with one bf16
  scale per output channel, on bf16 activations;
- fbgemm dynamic int8: int8 weights with one scale per output channel; each
  call quantizes its activations to 8 bits (one scale for all its rows) and
  sums in int32;
- int4 g32: the engine's opt-in 4-bit storage, groups of 32 input columns
  (`inference.model.weights.quantize_int4` and `int4_linear`).

The weights are cold, as in a decode step: each kernel cycles through copies of
a weight that total at least 128 MB (one copy where the weight alone is that
big), 4x the 32 MB L3 of the 2-core AMD EPYC this was written on. Each shape is
timed at 1 and 8 rows, `--repeats` rounds interleaved across the kernels (the
machine may be shared); a model's figure is the sum over its shapes of the
median time per product times the layers (at 8 rows, one step that yields 8
tokens), with the weight bytes read per second and the speed against fbgemm
fp16 (x fp16: above 1 is faster). The output layer is left out: the engine
keeps it in fp16 whatever the layers' storage. The CPU time other processes
used while timing is printed with the table; rerun if it is not near 0.

Accuracy: each kernel's output over all of a model's shapes against the fp64
product of the same fp32 weights, N(0, 0.02) weights and N(0, 1) activations,
and again with 1% of the input channels scaled x20, like the outlier channels
of real activations.

    .venv/bin/python -m bench.kernels [--models 135m,7b] [--threads 1] [--repeats 5]

On that machine, one thread: about 15 s for 135m (peak RSS 0.9 GB) and 30 s
for 7b (2.5 GB: one shape's weights at a time, freed before the next).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from inference.model.memory import give_back_freed_memory
from inference.model.weights import INT4_GROUP, fp16_linear, int4_linear, quantize_int4

Product = Callable[[torch.Tensor], torch.Tensor]
# Makes a copy of a kernel's weight in fresh memory, ready to multiply by.
Copy = Callable[[], Product]

# The weight bytes each kernel cycles through per shape: several times the L3 cache.
POOL_BYTES = 128 << 20
# The least time one timed sample runs, so timer and loop overheads do not count.
SAMPLE_S = 0.05
ROWS = (1, 8)
OUTLIER_SHARE, OUTLIER_SCALE = 0.01, 20.0
# What torch's dynamic quantized Linear passes on x86: activations in 7 bits, so
# CPUs without VNNI cannot saturate the int16 sums. False halves the error (measured).
REDUCE_RANGE = True


@dataclass(frozen=True)
class Model:
    name: str
    layers: int
    shapes: tuple[tuple[int, int], ...]  # each decoder-layer projection's weight: (out, in)


MODELS = {
    # fused q/k/v, o, fused gate/up, down
    "135m": Model("SmolLM2-135M", 30, ((1600, 576), (576, 576), (3072, 576), (576, 1536))),
    "7b": Model("Mistral-7B", 32, ((6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336))),
}


@dataclass(frozen=True)
class Kernel:
    name: str
    # fp32 [out, in] weight -> a maker of copies of it in the kernel's format, and the bytes of one
    prepare: Callable[[torch.Tensor], tuple[Copy, int]]


def prepare_fp16(weight: torch.Tensor) -> tuple[Copy, int]:
    half = weight.half()

    # fbgemm pads the input columns to a multiple of 512 in memory (1.78x the bytes for 576), but
    # a product's time follows the real columns (measured), so those are the bytes counted.
    def copy() -> Product:
        packed = torch.ops.quantized.linear_prepack_fp16(half, None)
        return lambda x: fp16_linear(x, packed)

    return copy, half.numel() * 2


def channel_scales(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 scales, one per output channel: w ~ round(w / scale) * scale."""
    return (weight.abs().amax(dim=1) / 127).clamp(min=1e-12)


def int8_linear(x: torch.Tensor, levels: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x @ W^T for W ~ levels * scales[:, None]: the kernel takes bf16 rows, the result is widened to fp32."""
    rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
    out = torch.ops.aten._weight_int8pack_mm(rows, levels, scales)
    return out.float().view(*x.shape[:-1], out.shape[-1])


def prepare_int8(weight: torch.Tensor) -> tuple[Copy, int]:
    scale = channel_scales(weight)
    levels = torch.round(weight / scale[:, None]).clamp(-128, 127).to(torch.int8)
    scales = scale.to(torch.bfloat16)  # the kernel wants them in the activations' dtype

    def copy() -> Product:
        levels_copy, scales_copy = levels.clone(), scales.clone()
        return lambda x: int8_linear(x, levels_copy, scales_copy)

    return copy, levels.numel() + scales.numel() * 2


def _dynamic_int8_source(
    x: torch.Tensor,
    packed: torch.classes.quantized.LinearPackedParamsBase,  # type: ignore[name-defined]
    reduce_range: bool,
) -> torch.Tensor:
    return torch.ops.quantized.linear_dynamic(x, packed, reduce_range)


_DynamicInt8 = Callable[[torch.Tensor, torch.ScriptObject, bool], torch.Tensor]


def dynamic_int8_linear() -> _DynamicInt8:
    """fbgemm's dynamic int8 product through TorchScript, as the engine calls the fp16 one:
    from Python its packed-weight argument costs ~8 us a call (see model.weights.fp16_linear)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(_dynamic_int8_source)


def prepare_dynamic_int8(weight: torch.Tensor, linear: _DynamicInt8) -> tuple[Copy, int]:
    out_features = weight.shape[0]
    zero_points = torch.zeros(out_features, dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated in torch 2.13, not yet removed
        warnings.simplefilter("ignore", UserWarning)
        levels = torch.quantize_per_channel(
            weight, channel_scales(weight).double(), zero_points, 0, torch.qint8
        )

    def copy() -> Product:
        packed = torch.ops.quantized.linear_prepack(levels, None)
        return lambda x: linear(x, packed, REDUCE_RANGE)

    # fbgemm keeps an fp32 scale and an int32 column offset per output channel.
    return copy, weight.numel() + out_features * 8


def prepare_int4(weight: torch.Tensor) -> tuple[Copy, int]:
    packed, scales_and_zeros = quantize_int4(weight, INT4_GROUP)

    def copy() -> Product:
        packed_copy, scales_and_zeros_copy = packed.clone(), scales_and_zeros.clone()
        return lambda x: int4_linear(x, packed_copy, scales_and_zeros_copy, INT4_GROUP)

    return copy, packed.numel() * packed.element_size() + scales_and_zeros.numel() * 2


def kernels() -> list[Kernel]:
    """The baseline first: the ratios are taken against it."""
    dynamic = dynamic_int8_linear()
    return [
        Kernel("fbgemm fp16", prepare_fp16),
        Kernel("int8 weight-only (bf16)", prepare_int8),
        Kernel("fbgemm dynamic int8", lambda weight: prepare_dynamic_int8(weight, dynamic)),
        Kernel("int4 g32 (bf16)", prepare_int4),
    ]


@dataclass
class Pool:
    """One kernel's copies of one weight, called in turn so each product reads its weight from memory."""

    products: list[Product]
    weight_bytes: int  # of one copy
    _turn: Iterator[Product] = field(init=False)

    def __post_init__(self) -> None:
        self._turn = itertools.cycle(self.products)

    @classmethod
    def build(cls, kernel: Kernel, weight: torch.Tensor) -> Pool:
        copy, weight_bytes = kernel.prepare(weight)
        return cls([copy() for _ in range(math.ceil(POOL_BYTES / weight_bytes))], weight_bytes)

    def seconds_per_call(self, x: torch.Tensor, calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            next(self._turn)(x)
        return (time.perf_counter() - start) / calls


def _busy_cpu_s() -> float:
    """CPU seconds all processes have run (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as stat:
        ticks = [int(t) for t in stat.readline().split()[1:8]]
    return (ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]) / os.sysconf("SC_CLK_TCK")


@dataclass
class OutsideLoad:
    """CPU time other processes take while timed blocks run, in cores."""

    cpu_s: float = 0.0
    wall_s: float = 0.0

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        busy, own, start = _busy_cpu_s(), time.process_time(), time.perf_counter()
        yield
        self.wall_s += time.perf_counter() - start
        self.cpu_s += (_busy_cpu_s() - busy) - (time.process_time() - own)

    @property
    def cores(self) -> float:
        return max(self.cpu_s, 0.0) / self.wall_s if self.wall_s else 0.0


def median_seconds(pools: list[Pool], x: torch.Tensor, repeats: int) -> list[float]:
    """Each pool's median time per product, `repeats` samples interleaved across the pools."""
    calls = []
    for pool in pools:
        pool.seconds_per_call(x, len(pool.products))  # warm-up: one pass over the copies
        estimate = pool.seconds_per_call(x, 3)
        calls.append(max(3, math.ceil(SAMPLE_S / estimate)))
    samples: list[list[float]] = [[] for _ in pools]
    for _ in range(repeats):
        for pool, n, times in zip(pools, calls, samples, strict=True):
            times.append(pool.seconds_per_call(x, n))
    return [statistics.median(times) for times in samples]


def inputs(columns: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """max(ROWS) rows of N(0, 1) activations, and the same with outlier channels."""
    normal = torch.randn(max(ROWS), columns, generator=generator)
    outliers = normal.clone()
    channels = torch.randperm(columns, generator=generator)[: max(1, round(columns * OUTLIER_SHARE))]
    outliers[:, channels] *= OUTLIER_SCALE
    return normal, outliers


@dataclass
class Tally:
    """One kernel at one row count, summed over a model's layers."""

    seconds: float = 0.0
    weight_bytes: int = 0
    # squared norms over all shapes' outputs: error and fp64 reference, for normal and outlier inputs
    error_sq: list[float] = field(default_factory=lambda: [0.0, 0.0])
    reference_sq: list[float] = field(default_factory=lambda: [0.0, 0.0])

    def relative_error(self, case: int) -> float:
        return math.sqrt(self.error_sq[case] / self.reference_sq[case])


def measure_shape(
    shape: tuple[int, int],
    layers: int,
    kernels: list[Kernel],
    tallies: dict[tuple[str, int], Tally],
    repeats: int,
    load: OutsideLoad,
) -> None:
    """Time and check every kernel on one weight shape, adding to the model's tallies."""
    generator = torch.Generator().manual_seed(sum(shape))
    weight = torch.randn(*shape, generator=generator) * 0.02
    cases = inputs(shape[1], generator)
    references = [x.double() @ weight.double().t() for x in cases]
    pools = [Pool.build(kernel, weight) for kernel in kernels]
    del weight
    for rows in ROWS:
        with load.watch():
            seconds = median_seconds(pools, cases[0][:rows], repeats)
        for kernel, pool, median in zip(kernels, pools, seconds, strict=True):
            tally = tallies.setdefault((kernel.name, rows), Tally())
            tally.seconds += median * layers
            tally.weight_bytes += pool.weight_bytes * layers
            for case, (x, reference) in enumerate(zip(cases, references, strict=True)):
                out = pool.products[0](x[:rows]).double()
                tally.error_sq[case] += (out - reference[:rows]).norm().item() ** 2
                tally.reference_sq[case] += reference[:rows].norm().item() ** 2


def measure_model(
    model: Model, kernels: list[Kernel], repeats: int
) -> tuple[dict[tuple[str, int], Tally], float]:
    """Tallies per (kernel, rows), and the outside load in cores while timing."""
    tallies: dict[tuple[str, int], Tally] = {}
    load = OutsideLoad()
    for shape in model.shapes:
        measure_shape(shape, model.layers, kernels, tallies, repeats, load)
        give_back_freed_memory()  # that shape's weights
    return tallies, load.cores


def table_rows(model: Model, kernels: list[Kernel], tallies: dict[tuple[str, int], Tally]) -> list[str]:
    lines = []
    for rows in ROWS:
        baseline = tallies[(kernels[0].name, rows)].seconds
        for kernel in kernels:
            tally = tallies[(kernel.name, rows)]
            lines.append(
                f"| {kernel.name} | {model.name} | {rows} | {tally.seconds * 1e3:.2f} "
                f"| {tally.weight_bytes / tally.seconds / 1e9:.1f} | {baseline / tally.seconds:.2f} "
                f"| {tally.relative_error(0):.4f} / {tally.relative_error(1):.4f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="135m,7b", help="comma-separated, of: " + ", ".join(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    models = [MODELS[name.strip()] for name in args.models.split(",")]
    torch.set_num_threads(args.threads)
    chosen = kernels()
    lines = [
        "| kernel | model | rows | ms per token (projections) | GB/s | x fp16 "
        "| rel. error (normal / outliers) |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for model in models:
        tallies, outside_cores = measure_model(model, chosen, args.repeats)
        lines += table_rows(model, chosen, tallies)
        notes.append(f"{model.name}: other processes used {outside_cores:.2f} cores on average while timing")
    print(
        f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, {args.threads} thread(s), "
        f"median of {args.repeats}; decoder-layer projections only (the output layer stays fp16); "
        f"8 rows: one step of 8 tokens\n"
    )
    print("\n".join(lines))
    print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
