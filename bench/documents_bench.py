"""Chatting with documents: retrieval quality, ingestion speed, search latency, and the
first token of a question that carries passages.

1. Recall@5. The bench writes a small corpus itself: 40 invented places, each
   described by four passages (a lighthouse's height, a bridge's designer, a
   museum's opening hours, a river's length) and mentioned by eight more (its
   market, its trains...), 480 passages over eight documents, so every fact
   has 39 others of its shape and eleven of its place beside it. Each of the
   160 questions names the place and asks for one fact, half in the words of
   its passage, half in others ("the height of the beacon" for "the
   lighthouse rises ... metres"). Recall@5 is the share of questions whose
   passage is among the five first results: lexical, and hybrid (fused with
   dense search) when an embedding model is configured (EMBEDDING_MODEL or
   EMBEDDING_URL).
2. Ingestion: a `--pages`-page PDF (fpdf2) read by the ingestion job as the
   documents worker runs it (a child process parses, then the chunks and their
   index are written): pages per second, whole job.
3. Lexical search latency over `--chunks` chunks (default 100,000) in documents
   of 100, 90% the searching user's: a conversation's 20 documents, and all of
   the user's. Median and p95 of `--runs` runs after three warm-ups. On
   SQLite, and on PostgreSQL in a private cluster (scripts/postgres.sh).
4. Time to first token on the default model (the engine, in this process) of a
   question alone, then with 4 passages of about 1,000 characters: cold (the
   passages never seen), and warm (a second question on the same passages,
   whose prefix the engine's block cache holds).

Each database is measured in a child process of its own (Django reads
DATABASE_URL once).

    .venv/bin/python -m bench.documents_bench [--chunks 100000] [--databases sqlite,postgres] [--skip-ttft]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.databases import check, on_each, timings  # noqa: E402 (after the path above)
from bench.search_bench import corpus  # noqa: E402 (after the path above)

SEED = 20
PER_DOCUMENT = 100
PLACES = [
    "Arvenholm", "Brisca", "Caldmoor", "Dunveil", "Elderwick", "Farrowgate", "Glimmerby", "Hollowmere",
    "Istrana", "Jadeport", "Kestrelton", "Lunmarsh", "Mirefold", "Nettlebay", "Oakhurst", "Pellucid",
    "Quillon", "Ravensend", "Saltbrook", "Thornwick", "Umberlee", "Vantmoor", "Wexcombe", "Yarrowdale",
    "Zephyrine", "Ashgrove", "Bramblecote", "Cindervale", "Driftmere", "Emberly", "Fennick", "Gorsewood",
    "Hartwell", "Ivybridge", "Juniper", "Kingsreach", "Larkspur", "Marrowby", "Northam", "Orchardine",
]  # fmt: skip


MENTIONS = [
    "Visitors to {place} often try the smoked fish sold at the Saturday market.",
    "The annual fair of {place} draws crowds from the whole coast every August.",
    "Trains to {place} leave twice an hour from the central station.",
    "Most houses in {place} are built of grey slate from the nearby quarry.",
    "The school in {place} teaches three languages from the first year.",
    "A ferry links {place} with the islands during the summer months.",
    "The council of {place} meets on the first Monday of each month.",
    "Cyclists reach {place} by a path along the old canal.",
]


def facts(rng: random.Random) -> tuple[list[tuple[str, str]], list[str]]:
    """(passage, question) pairs, four kinds of fact per place, and the passages that only
    mention a place (twelve passages name each one). Half the questions are asked in
    words of their passage's ("How tall is the lighthouse"), half in other words
    ("the height of the beacon"): only the place's name is sure to match."""
    pairs, mentions = [], []
    for place in PLACES:
        metres, year, opens, km = (
            rng.randint(20, 90),
            rng.randint(1700, 1990),
            rng.randint(7, 11),
            rng.randint(40, 900),
        )
        builder = rng.choice(["Ada Pell", "Tomas Vey", "Ines Marl", "Oskar Brun", "Lena Sorr"])
        kinds = [
            (
                f"The lighthouse of {place} rises {metres} metres above the harbour, first lit in {year}.",
                f"How tall is the {place} lighthouse?",
                f"What is the height of the beacon at {place}?",
            ),
            (
                f"{place}'s stone bridge was designed by the engineer {builder}; it carries the post road.",
                f"Who designed the bridge in {place}?",
                f"Which architect planned the crossing over the water at {place}?",
            ),
            (
                f"The {place} museum opens its doors at {opens} in the morning, except on public holidays.",
                f"When does the museum of {place} open?",
                f"From what time can I visit the exhibitions in {place}?",
            ),
            (
                f"The river through {place} flows for {km} kilometres before it reaches the sea.",
                f"How long is the {place} river?",
                f"What distance does the stream at {place} cover to the coast?",
            ),
        ]
        for passage, literal, paraphrase in kinds:
            pairs.append((passage, rng.choice([literal, paraphrase])))
        mentions += [mention.format(place=place) for mention in MENTIONS]
    rng.shuffle(pairs)
    rng.shuffle(mentions)
    return pairs, mentions


# --- In a child process, on one database -------------------------------------------------


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    result: dict[str, Any] = {"vendor": connection.vendor}
    result["recall"] = recall(User.objects.create_user(username="reader"))
    result["ingestion"] = ingestion(User.objects.create_user(username="uploader"), args.pages)
    result["latency"] = latency(args.chunks, args.runs)
    return result


def recall(user: Any) -> dict[str, Any]:
    from chat.documents import dense
    from chat.documents.search import lexical_search, search
    from chat.models import Document, DocumentChunk

    pairs, mentions = facts(random.Random(SEED))  # noqa: S311 (made-up text, the same on every run)
    documents = [
        Document.objects.create(owner=user, name=f"guide-{n}.md", kind="markdown", size_bytes=1, sha256="-")
        for n in range(8)
    ]
    # Facts and mentions shuffled together: no database may find a fact by its row's age
    # (PostgreSQL's ranking ties, broken by id, did, before this).
    rows: list[tuple[str, str | None]] = [*pairs, *((text, None) for text in mentions)]
    random.Random(SEED + 1).shuffle(rows)  # noqa: S311
    passages = [text for text, _ in rows]
    chunks = DocumentChunk.objects.bulk_create(
        DocumentChunk(document=documents[index % 8], ordinal=index, text=text, heading="Guide")
        for index, text in enumerate(passages)
    )
    if not all(chunk.pk for chunk in chunks):  # a database that returns no ids from bulk inserts
        chunks = list(DocumentChunk.objects.filter(document__in=documents).order_by("ordinal"))
    chunk_of = {question: chunks[index].pk for index, (_, question) in enumerate(rows) if question}
    if dense.enabled():
        for document in documents:
            dense.index_document(document_id=document.pk)
    ids = [d.pk for d in documents]
    rows: dict[str, Any] = {"questions": len(pairs), "passages": len(passages)}
    rankers = {"lexical": lexical_search, **({"hybrid": search} if dense.enabled() else {})}
    for name, rank in rankers.items():
        found = sum(
            chunk_of[question]
            in [h.chunk_id for h in rank(user_id=user.pk, document_ids=ids, query=question, k=5)]
            for _, question in pairs
        )
        rows[f"{name}_recall_at_5"] = round(found / len(pairs), 3)
    return rows


def ingestion(user: Any, pages: int) -> dict[str, Any]:
    from fpdf import FPDF

    from chat.models import Document
    from chat.services import documents

    texts, _ = corpus(pages * 6)
    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for page in range(pages):
        pdf.add_page()
        pdf.multi_cell(0, 6, "\n\n".join(texts[page * 6 : page * 6 + 6]))
    data = bytes(pdf.output())
    documents.document_enqueue = lambda *, document_id: True  # type: ignore[assignment] (the job runs here)
    document = documents.document_upload(user=user, name="report.pdf", data=data)
    started = time.perf_counter()
    documents.document_ingest(document_id=document.pk, worker="bench")
    seconds = time.perf_counter() - started
    document.refresh_from_db()
    if document.status != Document.Status.READY:
        raise RuntimeError(f"the bench PDF failed: {document.error}")
    return {
        "pages": document.page_count,
        "bytes": len(data),
        "chunks": document.chunks.count(),
        "seconds": round(seconds, 2),
        "pages_per_s": round((document.page_count or 0) / seconds, 1),
    }


def latency(count: int, runs: int) -> dict[str, Any]:
    from django.contrib.auth.models import User
    from django.db import connection

    from chat.documents.search import lexical_search
    from chat.models import Document, DocumentChunk

    texts, frequency = corpus(count)
    searcher, other = (
        User.objects.create_user(username="searcher"),
        User.objects.create_user(username="other"),
    )
    started = time.perf_counter()
    documents = Document.objects.bulk_create(
        Document(
            owner=searcher if n % 10 else other, name=f"doc-{n}.txt", kind="text", size_bytes=1, sha256="-"
        )
        for n in range(-(-count // PER_DOCUMENT))
    )
    batch = []
    for index, text in enumerate(texts):
        batch.append(
            DocumentChunk(document=documents[index // PER_DOCUMENT], ordinal=index % PER_DOCUMENT, text=text)
        )
        if len(batch) == 5_000:
            DocumentChunk.objects.bulk_create(batch)
            batch = []
    DocumentChunk.objects.bulk_create(batch)
    load_s = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    # A question's words: two of middling frequency and two rarer ones, as a question names its topic.
    common = sorted(frequency, key=lambda w: abs(frequency[w] - 2_000))[:2]
    rare = sorted(frequency, key=lambda w: abs(frequency[w] - 50))[:2]
    question = f"What does the {common[0]} say about {rare[0]} and {common[1]} {rare[1]}?"
    own = [d.pk for d in documents if d.owner_id == searcher.pk]
    scopes = {"a conversation's 20 documents": own[:20], f"all {len(own)} of the user's documents": own}
    rows = {}
    for scope, ids in scopes.items():
        for _ in range(3):
            lexical_search(user_id=searcher.pk, document_ids=ids, query=question, k=8)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            hits = lexical_search(user_id=searcher.pk, document_ids=ids, query=question, k=8)
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        rows[scope] = {
            "chunks": len(ids) * PER_DOCUMENT,
            "hits": len(hits),
            **timings(times),
        }
    return {"chunks": count, "load_s": round(load_s, 1), "question": question, "scopes": rows}


# --- The parent -----------------------------------------------------------------------------


def first_tokens() -> dict[str, float]:
    """Time to first token on the default model: a question alone, then with 4 passages, cold and warm."""
    from django.conf import settings

    from bench.engine_bench import first_token
    from chat.documents.retrieval import Citation, question_with_passages
    from inference.engine.config import EngineConfig
    from inference.engine.core import Engine
    from inference.loading import load_model
    from inference.params import GenerationParams
    from inference.types import Turn

    texts, _ = corpus(40)
    passages = [
        Citation(
            n + 1, n, "handbook.pdf", n + 3, "Policies", n, " ".join(texts[n * 8 : n * 8 + 8])[:1000], 0.5
        )
        for n in range(4)
    ]
    loaded = load_model("", device="cpu", cache_dir=settings.MODEL_CACHE_DIR)
    engine = Engine(loaded, EngineConfig(max_batch=8, max_per_owner=0))
    params = GenerationParams(max_new_tokens=4, temperature=0)
    try:
        first_token(engine, [Turn("user", "Warm the engine up.")], params)
        alone, _ = first_token(engine, [Turn("user", "What is the travel policy?")], params)
        asked = question_with_passages("What is the travel policy?", passages)
        cold, completion = first_token(engine, [Turn("user", asked)], params)
        again = question_with_passages("Who approves a trip abroad?", passages)
        warm, _ = first_token(engine, [Turn("user", again)], params)
    finally:
        engine.close()
    return {
        "prompt_tokens_with_passages": completion.prompt_tokens,
        "question_alone_s": round(alone, 3),
        "with_4_passages_cold_s": round(cold, 3),
        "with_4_passages_warm_s": round(warm, 3),
    }


def report(result: dict[str, Any]) -> str:
    recall_rows = {k: v for k, v in result["recall"].items() if k.endswith("recall_at_5")}
    lines = [
        f"{result['vendor']}: recall@5 over {result['recall']['questions']} questions "
        f"({result['recall']['passages']} passages): "
        + ", ".join(f"{k.removesuffix('_recall_at_5')} {v:.3f}" for k, v in recall_rows.items()),
        "ingestion: {pages} pages ({bytes:,} bytes, {chunks} chunks) in {seconds} s: "
        "{pages_per_s} pages/s".format(**result["ingestion"]),
        "lexical search over {chunks:,} chunks (loaded in {load_s} s):".format(**result["latency"]),
        "| scope | chunks searched | hits | median ms | p95 ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for scope, row in result["latency"]["scopes"].items():
        lines.append(
            f"| {scope} | {row['chunks']:,} | {row['hits']} | {row['median_ms']} | {row['p95_ms']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--pages", type=int, default=40)
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--pg-port", type=int, default=54351)
    parser.add_argument("--skip-ttft", action="store_true", help="leave out the first-token rows (no model)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return 0
    results: dict[str, Any] = {}
    try:
        databases = check(args.databases)
    except ValueError as exc:
        parser.error(str(exc))
    child_args = [f"--chunks={args.chunks}", f"--runs={args.runs}", f"--pages={args.pages}"]
    for database, result in zip(
        databases,
        on_each(databases, module="bench.documents_bench", child_args=child_args, pg_port=args.pg_port),
        strict=True,
    ):
        print(report(result), flush=True)
        results[database] = result
    if not args.skip_ttft:
        import django

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sanjai_site.settings")
        django.setup()
        results["first_token"] = ttft = first_tokens()
        print(
            "time to first token, default model: question alone {question_alone_s} s; with 4 passages "
            "({prompt_tokens_with_passages} prompt tokens) cold {with_4_passages_cold_s} s, "
            "warm {with_4_passages_warm_s} s".format(**ttft)
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
