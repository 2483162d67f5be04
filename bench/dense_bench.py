"""Dense search (kNN) latency over 100,000 document chunks, on SQLite and PostgreSQL.

Each database gets a fresh copy of the same synthetic data: `--chunks` chunks
(default 100,000) in documents of 100, 90% of them the searching user's and 10%
another user's, each with a random unit vector of `--dimensions` (default 384,
all-MiniLM-L6-v2's and bge-small's size). No model is loaded: the query is a
random unit vector too, so what is measured is chat.documents.dense.nearest,
the search's whole cost but the query's embedding (ownership filter, the
comparisons, the top 8). Two scopes: a conversation's 20 documents (2,000
chunks, the usual case) and all of the user's documents (90,000, the worst).

Each method this database has is measured: numpy over the stored blobs
(always), sqlite-vec's vec_distance_cosine (SQLite, where Python's sqlite3 can
load extensions: pyenv's builds often cannot), pgvector's `<=>` (PostgreSQL
with the extension installed). Each query runs `--runs` times after three
warm-ups; the median and p95 are printed. PostgreSQL runs in a private cluster
made by scripts/postgres.sh, removed afterwards; each database is measured in a
child process of its own, since Django reads DATABASE_URL once.

    .venv/bin/python -m bench.dense_bench [--chunks 100000] [--runs 30] [--databases sqlite,postgres]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.databases import check, on_each, timings  # noqa: E402 (after the path above)

SEED = 20
PER_DOCUMENT = 100
CONVERSATION_DOCUMENTS = 20
MODEL = "bench"
K = 8


def load(count: int, dimensions: int) -> tuple[Any, list[int], float]:
    """The users, documents, chunks and vectors, written as ingestion would; the searcher's document ids."""
    import numpy as np
    from django.contrib.auth.models import User

    from chat.models import ChunkVector, Document, DocumentChunk

    rng = np.random.default_rng(SEED)
    searcher = User.objects.create_user(username="searcher")
    other = User.objects.create_user(username="other")
    started = time.perf_counter()
    documents = Document.objects.bulk_create(
        Document(
            owner=searcher if n % 10 else other,
            name=f"doc{n}.txt",
            kind="text",
            size_bytes=1,
            sha256="0" * 64,
            path=f"bench/{n}",
            status=Document.Status.READY,
        )
        for n in range(-(-count // PER_DOCUMENT))
    )
    for start in range(0, count, 5_000):
        size = min(5_000, count - start)
        chunks = DocumentChunk.objects.bulk_create(
            DocumentChunk(document=documents[i // PER_DOCUMENT], ordinal=i % PER_DOCUMENT, text=f"chunk {i}")
            for i in range(start, start + size)
        )
        vectors = rng.standard_normal((size, dimensions)).astype("<f4")
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ChunkVector.objects.bulk_create(
            ChunkVector(chunk=c, document_id=c.document_id, model=MODEL, embedding=v.tobytes())
            for c, v in zip(chunks, vectors, strict=True)
        )
    mine = [d.pk for d in documents if d.owner_id == searcher.pk]
    return searcher, mine, time.perf_counter() - started


def timed(method: Any, runs: int, **arguments: Any) -> dict[str, Any]:
    for _ in range(3):
        method(**arguments)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        hits = method(**arguments)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "hits": len(hits),
        **timings(times),
    }


def measure(count: int, dimensions: int, runs: int) -> dict[str, Any]:
    import django

    django.setup()
    import numpy as np
    from django.core.management import call_command
    from django.db import connection

    from chat.documents import dense

    call_command("migrate", verbosity=0)
    searcher, mine, load_s = load(count, dimensions)
    methods: dict[str, Any] = {"numpy": dense._numpy_search}
    if connection.vendor == "sqlite" and dense._sqlite_vec_loaded():
        methods["sqlite-vec"] = dense._sqlite_search
    if connection.vendor == "postgresql" and dense._pgvector_ready():  # fills the vector column
        methods["pgvector"] = dense._pg_search
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    query = np.random.default_rng(SEED + 1).standard_normal(dimensions).astype(np.float32)
    vector = (query / np.linalg.norm(query)).tolist()
    scopes = {
        f"{CONVERSATION_DOCUMENTS} documents ({CONVERSATION_DOCUMENTS * PER_DOCUMENT:,} chunks)": mine[
            :CONVERSATION_DOCUMENTS
        ],
        f"all {len(mine)} of the user's ({len(mine) * PER_DOCUMENT:,} chunks)": mine,
    }
    results: dict[str, Any] = {}
    for scope, ids in scopes.items():
        for name, method in methods.items():
            arguments = {
                "user_id": searcher.pk,
                "document_ids": ids,
                "vector": vector,
                "k": K,
                "model": MODEL,
            }
            results[f"{scope} | {name}"] = timed(method, runs, **arguments)
    return {
        "vendor": connection.vendor,
        "chunks": count,
        "dimensions": dimensions,
        "load_s": round(load_s, 1),
        "queries": results,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['vendor']}: {result['chunks']:,} chunks of {result['dimensions']} dimensions, "
        f"loaded in {result['load_s']} s (Python {sys.version.split()[0]})",
        "| searched | method | hits | median ms | p95 ms |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for kind, row in result["queries"].items():
        lines.append(f"| {kind} | {row['hits']} | {row['median_ms']} | {row['p95_ms']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--dimensions", type=int, default=384)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--pg-port", type=int, default=54359)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.chunks, args.dimensions, args.runs)))
        return 0
    try:
        databases = check(args.databases)
    except ValueError as exc:
        parser.error(str(exc))
    child_args = [f"--chunks={args.chunks}", f"--dimensions={args.dimensions}", f"--runs={args.runs}"]
    for result in on_each(databases, module="bench.dense_bench", child_args=child_args, pg_port=args.pg_port):
        print(table(result), flush=True)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
