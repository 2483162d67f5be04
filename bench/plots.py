"""The benchmark's figures as pictures, drawn by the bench itself into the docs.

Each run of `make bench` writes docs/benchmarks/results/engine.json (every row,
with the commit, the machine and the date) and draws from it
docs/benchmarks/img/engine-throughput.svg: tokens per second against
concurrent replies, for each series the run measured, beside the raw
generate() baseline and the memory-bandwidth bound of the same run. A peer
measured on the same machine (`make bench-peer`, when it exists) adds its
own series to the same picture.

matplotlib, with text kept as text and no timestamp in the file, so the SVG
only changes when the figures do.
"""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "benchmarks" / "results"
IMAGES = ROOT / "docs" / "benchmarks" / "img"

Series = Mapping[int, float]  # concurrent replies -> tokens/s


def provenance() -> dict[str, Any]:
    """Which code, on which machine, when: every figure says where it comes from."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    return {
        "commit": commit + ("+changes" if dirty else ""),
        "machine": machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    cores = os.cpu_count() or 0
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{model or platform.processor() or platform.machine()}, {cores} cores{memory}"


def write_results(
    name: str, rows: list[dict[str, Any]], series: Mapping[str, Series], **lines: float
) -> Path:
    """docs/benchmarks/results/<name>.json: the run's rows, its series and reference lines."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    document = {
        **provenance(),
        "rows": rows,
        "series": {label: {str(k): v for k, v in points.items()} for label, points in series.items()},
        "lines": lines,
    }
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path


def throughput_plot(results: Path, out: Path, *, title: str) -> Path:
    """Tokens/s against concurrent replies, one line a series, the reference lines dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    document = json.loads(results.read_text())
    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "sanjai", "font.size": 10})
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for label, points in document["series"].items():
        xs = sorted(int(x) for x in points)
        axes.plot(xs, [points[str(x)] for x in xs], marker="o", label=label)
    for (label, value), style in zip(document["lines"].items(), ("--", ":", "-."), strict=False):
        axes.axhline(value, linestyle=style, color="grey", linewidth=1)
        axes.annotate(
            f"{label} ({value:.0f})",
            (1, value),
            xytext=(2, 3),
            textcoords="offset points",
            fontsize=8,
            color="dimgrey",
        )
    concurrency = sorted({int(x) for points in document["series"].values() for x in points})
    axes.set_xscale("log", base=2)
    axes.set_xticks(concurrency, [str(x) for x in concurrency])
    axes.set_xlabel("replies at once")
    axes.set_ylabel("tokens/s, all replies together")
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    axes.set_title(
        f"{title}\n{document['machine']} · commit {document['commit']} · {document['date']}", fontsize=9
    )
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="svg", metadata={"Date": None})
    plt.close(figure)
    return out
