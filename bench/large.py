"""Big models on this machine: random-weight checkpoints of real shapes, served as the worker serves them.

`make bench-large` builds, once, bf16 safetensors checkpoints under
var/bench-models/ (removed by `make clean`):

- `1b`: a ~1.1B Mistral-architecture model (TinyLlama's shape);
- `7b`: Mistral-7B-v0.1's shape (hidden 4096, 32 layers, 32 heads, 8 KV heads,
  intermediate 14336, vocab 32000), about 14.5 GB on disk.

Random weights measure speed and memory truthfully: every weight is read on
every token whatever its value. No weights are downloaded. The tokenizer is
a byte-level BPE trained here on Python's own sources and filled up to the
real vocabulary size of 32,000. The sliding window is left out (as in
Mistral-7B-v0.2 and later): with a context no longer than the window,
attention is the same, and the engine does not implement windowing.

Each model is then loaded in a fresh process exactly as the worker loads it
(`load_model(half_weights=True)`, then the engine) and measured: load time,
peak RSS against the stored weight bytes, and decode tokens/s at batch 1 (and
8 for the 1B) against the bound, read bandwidth / weight bytes read per token.
Batch 1 is measured on the engine's default thread count (every core but one)
and again on every core.

On a GPU (`--device cuda`, bf16 weights and arithmetic, as the worker runs
there) the same rows are measured against the GPU's own read bandwidth, with
peak GPU memory in place of RSS; `default` names the packaged default model:

    .venv/bin/python -m bench.large [--models 1b,7b] [--tokens 32]
    .venv/bin/python -m bench.large --device cuda --models default,1b
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODELS_DIR = ROOT / "var" / "bench-models"
VOCAB = 32_000
SHARD_BYTES = 2 * 2**30
SHAPES = {
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
    },
    "7b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
    },
}


def build_tokenizer(folder: Path) -> Path:
    """A byte-level BPE with exactly VOCAB entries, trained on the standard library's sources."""
    if (folder / "tokenizer.json").exists():
        return folder
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.tiny_model import CHATML_TEMPLATE

    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    sources = sorted(Path(os.__file__).parent.glob("*.py"))
    bpe.train_from_iterator((path.read_text(errors="replace") for path in sources), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    missing = VOCAB - len(tokenizer)
    if missing > 0:  # a corpus this size may not yield every merge: fill up to the real size
        tokenizer.add_tokens([f"<extra_{index}>" for index in range(missing)])
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def build_checkpoint(name: str, seed: int = 0) -> Path:
    """The `name` checkpoint in bf16 safetensors shards, built once, never holding it whole."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    folder = MODELS_DIR / name
    if (folder / "model.safetensors.index.json").exists():
        return folder
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(build_tokenizer(MODELS_DIR / "tokenizer"))
    assert len(tokenizer) == VOCAB, len(tokenizer)
    config = MistralConfig(
        vocab_size=VOCAB,
        max_position_embeddings=8192,
        sliding_window=None,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        dtype="bfloat16",
        **SHAPES[name],
    )
    with torch.device("meta"):
        shapes = [(key, tuple(p.shape)) for key, p in MistralForCausalLM(config).named_parameters()]
    partial = folder.with_name(f"{name}.partial")
    partial.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    shard: dict[str, torch.Tensor] = {}
    weight_map: dict[str, str] = {}
    size = 0
    files = 0

    def flush() -> None:
        nonlocal shard, size, files
        files += 1
        file = f"model-{files:05d}.safetensors"
        save_file(shard, partial / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
        shard, size = {}, 0

    for key, shape in shapes:
        tensor = torch.empty(shape, dtype=torch.bfloat16)
        if key.endswith("norm.weight"):
            tensor.fill_(1.0)
        else:
            tensor.normal_(0.0, 0.02, generator=generator)
        shard[key] = tensor
        size += tensor.numel() * 2
        if size >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    total = sum(torch.Size(shape).numel() * 2 for _, shape in shapes)
    (partial / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
    )
    config.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(folder)
    print(f"built {folder} ({total / 1e9:.1f} GB) in {time.monotonic() - started:.0f} s", flush=True)
    return folder


def measure(
    folder: Path | None, tokens: int, batches: list[int], device: str, weights: str
) -> dict[str, Any]:
    """Load as the worker does and decode; runs in a process of its own (peak RSS is per process).

    `folder` None: the packaged default model.
    """
    import torch
    from django.conf import settings

    from bench.engine_bench import engine_run, memory_bandwidth, rss_bytes, summarise
    from inference.engine.config import EngineConfig
    from inference.engine.core import Engine, available_cores
    from inference.engine.threads import on_a_thread_of_its_own
    from inference.loading import load_model, load_options, pick_device
    from inference.sizing import default_source, gguf_parameters, weight_bytes

    target = pick_device(device)
    if folder is None:
        source = default_source()
        assert source.gguf_file is not None
        stored = 2 * gguf_parameters(source.folder / source.gguf_file)
    else:
        stored = weight_bytes(folder, 2)
    peaks = _PeakMemory()
    started = time.monotonic()
    # The default model's GGUF converts once into the workers' own cache (make run's, the tests').
    cache_dir = MODELS_DIR / "cache" if folder else Path(settings.MODEL_CACHE_DIR)
    half_weights, dtype = load_options(weights)  # as the worker loads for these engine weights

    def build() -> Engine:
        loaded = load_model(
            str(folder or ""), device=device, cache_dir=cache_dir, half_weights=half_weights, dtype=dtype
        )
        return Engine(loaded, EngineConfig(max_batch=max(batches), max_per_owner=0, weights=weights))

    # As the worker builds it: no OpenMP team is left beside the engine's (inference.engine.threads).
    engine = on_a_thread_of_its_own(build)
    load_s = time.monotonic() - started
    streamed = sum(projection.weight_bytes() for projection in engine.decoder.projections())
    engine.stop_token_ids = []  # every request runs to `tokens`
    engine_run(engine, 1, 4)  # warm-up
    results: dict[str, Any] = {
        "load_s": load_s,
        "stored_bytes": stored,
        "streamed_bytes": streamed,
        "threads": engine.threads,
        "weights": engine.weights,
    }
    for batch in batches:
        aggregate, per_request, _, _ = summarise(engine_run(engine, batch, tokens))
        results[f"x{batch}_aggregate"] = aggregate
        results[f"x{batch}_per_request"] = per_request
    if target.type == "cpu" and available_cores() > engine.threads:
        # The engine thread takes up its decode thread count after each prefill.
        engine.threads = available_cores()
        _, results["x1_all_cores"], _, _ = summarise(engine_run(engine, 1, tokens))
    results["rss_serving_bytes"] = rss_bytes()
    engine.close()
    peaks.stop()
    results["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results["peak_anon_bytes"] = peaks.anon
    results["peak_file_bytes"] = peaks.file
    if target.type == "cuda":
        results["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(target)
        results["gpu"] = torch.cuda.get_device_name(target)
    # Last: the probe's own buffers (1 GiB) would otherwise count in the peak.
    del engine
    read_bw, _ = memory_bandwidth(target)
    results["read_bandwidth"] = read_bw
    results["bound"] = read_bw / streamed
    return results


def report(rows: list[tuple[str, float, dict[str, Any]]], device: str) -> None:
    gpu = device != "cpu"
    memory = "peak GPU memory" if gpu else "peak RSS"
    print(
        f"\n| model | weights | stored | load | {memory} | anon / stored | RSS serving | decode x1 "
        "| x1 / bound | x1 all cores | x8 | x8 steps / bound |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, _, r in rows:
        stored, bound = r["stored_bytes"], r["bound"]
        peak = r["peak_gpu_bytes"] if gpu else r["peak_rss_bytes"]
        anon = "" if gpu else f"{r['peak_anon_bytes'] / stored:.2f}x"
        all_cores = (
            f"{r['x1_all_cores']:.2f} tok/s ({r['x1_all_cores'] / bound:.2f}x)" if "x1_all_cores" in r else ""
        )
        x8 = f"{r['x8_aggregate']:.1f} tok/s" if "x8_aggregate" in r else ""
        x8_ratio = f"{r['x8_aggregate'] / 8 / bound:.2f}x" if "x8_aggregate" in r else ""
        print(
            f"| {name} | {r['weights']} | {stored / 1e9:.2f} GB | {r['load_s']:.1f} s | {peak / 1e9:.2f} GB "
            f"| {anon} | {r['rss_serving_bytes'] / 1e9:.2f} GB | {r['x1_per_request']:.2f} tok/s "
            f"| {r['x1_per_request'] / bound:.2f}x "
            f"| {all_cores} | {x8} | {x8_ratio} |"
        )
    first = rows[0][2]
    where = first.get("gpu", "CPU")
    print(
        f"\n{where}: read bandwidth {first['read_bandwidth'] / 1e9:.1f} GB/s; the bound is that / the weight "
        f"bytes a token reads; x1 on {first['threads']} engine thread(s) unless 'all cores'."
    )
    if gpu:
        return
    print("Targets: peak RSS <= 1.15x weights + KV + 1 GB; 7B decode x1 >= 0.7x its bound")
    for name, _, r in rows:
        limit = 1.15 * r["stored_bytes"] + 2**30
        for what, key in (("peak RSS", "peak_rss_bytes"), ("peak anonymous memory", "peak_anon_bytes")):
            verdict = "met" if r[key] <= limit else "MISSED"
            print(f"  {name}: {what} {r[key] / 1e9:.2f} GB against {limit / 1e9:.2f} GB (+ KV) [{verdict}]")
        if name == "7b":
            ratios = [r["x1_per_request"] / r["bound"], r.get("x1_all_cores", 0.0) / r["bound"]]
            verdicts = ["met" if ratio >= 0.7 else "MISSED" for ratio in ratios]
            print(
                f"  7b: decode x1 {ratios[0]:.2f}x its bound [{verdicts[0]}], "
                f"{ratios[1]:.2f}x on every core [{verdicts[1]}]"
            )


class _PeakMemory:
    """The most anonymous memory (what the process allocated) and the most file-backed
    memory (pages of the memory-mapped checkpoint, which the kernel can drop) it held,
    sampled every 20 ms: RSS counts both."""

    def __init__(self) -> None:
        import threading

        self.anon = 0
        self.file = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(0.02):
            fields = dict(
                line.split(":", 1)
                for line in Path("/proc/self/status").read_text().splitlines()
                if ":" in line
            )
            self.anon = max(self.anon, int(fields["RssAnon"].split()[0]) * 1024)
            self.file = max(self.file, int(fields["RssFile"].split()[0]) * 1024)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="1b,7b", help="of 1b, 7b and default (the packaged model)")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--weights", default="auto", help="the engine's weights, as ENGINE_WEIGHTS")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: measure one folder, print JSON
    parser.add_argument("--batches", default="1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sanjai_site.settings")
    if args.measure:
        batches = [int(b) for b in args.batches.split(",")]
        folder = None if args.measure == "default" else Path(args.measure)
        print(json.dumps(measure(folder, args.tokens, batches, args.device, args.weights)))
        return 0

    rows = []
    for name in args.models.split(","):
        build_started = time.monotonic()
        folder = "default" if name == "default" else str(build_checkpoint(name))
        built_s = time.monotonic() - build_started
        batches = "1" if name == "7b" else "1,8"
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.large",
                "--measure",
                folder,
                "--device",
                args.device,
                "--weights",
                args.weights,
                "--tokens",
                str(args.tokens),
                "--batches",
                batches,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            print(run.stderr[-3000:], file=sys.stderr)
            return run.returncode
        result = json.loads(run.stdout.strip().splitlines()[-1])
        rows.append((name, built_s, result))

    report(rows, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
