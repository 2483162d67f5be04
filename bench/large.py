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

    .venv/bin/python -m bench.large [--models 1b,7b] [--tokens 32]
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


def measure(folder: Path, tokens: int, batches: list[int]) -> dict[str, float]:
    """Load as the worker does and decode; runs in a process of its own (peak RSS is per process)."""
    import torch

    from bench.engine_bench import engine_run, memory_bandwidth, summarise
    from inference.engine import Engine
    from inference.loading import load_model
    from inference.sizing import weight_bytes

    stored = weight_bytes(folder, 2)
    read_bw, _ = memory_bandwidth()
    peaks = _PeakMemory()
    started = time.monotonic()
    loaded = load_model(str(folder), device="cpu", cache_dir=MODELS_DIR / "cache", half_weights=True)
    engine = Engine(loaded, max_batch=max(batches), max_per_owner=0)
    load_s = time.monotonic() - started
    streamed = sum(projection.weight_bytes() for projection in engine.decoder.projections())
    engine.stop_token_ids = []  # every request runs to `tokens`
    engine_run(engine, 1, 4)  # warm-up
    results = {
        "load_s": load_s,
        "stored_bytes": stored,
        "bound": read_bw / streamed,
        "threads": torch.get_num_threads(),
    }
    for batch in batches:
        aggregate, per_request, _, _ = summarise(engine_run(engine, batch, tokens))
        results[f"x{batch}_aggregate"] = aggregate
        results[f"x{batch}_per_request"] = per_request
    engine.close()
    peaks.stop()
    results["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results["peak_anon_bytes"] = peaks.anon
    results["peak_file_bytes"] = peaks.file
    return results


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
    parser.add_argument("--models", default="1b,7b")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: measure one folder, print JSON
    parser.add_argument("--batches", default="1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sanjai_site.settings")
    if args.measure:
        batches = [int(b) for b in args.batches.split(",")]
        print(json.dumps(measure(Path(args.measure), args.tokens, batches)))
        return 0

    rows = []
    for name in args.models.split(","):
        build_started = time.monotonic()
        folder = build_checkpoint(name)
        built_s = time.monotonic() - build_started
        batches = "1,8" if name == "1b" else "1"
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.large",
                "--measure",
                str(folder),
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

    print("\n| model | stored | load | peak RSS | of it anon | anon / stored | decode x1 | x1 / bound | x8 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, _, r in rows:
        x8 = f"{r['x8_aggregate']:.1f} tok/s" if "x8_aggregate" in r else ""
        stored, peak, anon = r["stored_bytes"], r["peak_rss_bytes"], r["peak_anon_bytes"]
        print(
            f"| {name} | {stored / 1e9:.2f} GB | {r['load_s']:.1f} s | {peak / 1e9:.2f} GB "
            f"| {anon / 1e9:.2f} GB | {anon / stored:.2f}x | {r['x1_per_request']:.2f} tok/s "
            f"| {r['x1_per_request'] / r['bound']:.2f}x | {x8} |"
        )
    print("\nTargets: peak RSS <= 1.15x weights + KV + 1 GB; 7B decode x1 >= 0.7x its bound")
    for name, _, r in rows:
        limit = 1.15 * r["stored_bytes"] + 2**30
        for what, key in (("peak RSS", "peak_rss_bytes"), ("peak anonymous memory", "peak_anon_bytes")):
            verdict = "met" if r[key] <= limit else "MISSED"
            print(f"  {name}: {what} {r[key] / 1e9:.2f} GB against {limit / 1e9:.2f} GB (+ KV) [{verdict}]")
        if name == "7b":
            ratio = r["x1_per_request"] / r["bound"]
            print(f"  7b: decode x1 {ratio:.2f}x its bound [{'met' if ratio >= 0.7 else 'MISSED'}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
