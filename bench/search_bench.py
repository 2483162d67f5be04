"""Full-text search latency over 100,000 messages, on SQLite (FTS5) and PostgreSQL.

Each database gets a fresh copy of the same synthetic data: `--messages` messages
(default 100,000) in conversations of 100, 90% of them the searching user's and
10% another user's, each 20-80 words drawn from a Zipf-like vocabulary of
invented words, so some words are in a handful of messages and others in
thousands. Then each query kind runs `--runs` times through chat.search.message_search
(the REST route's whole cost but HTTP: ranking, snippets, the rows; 20 hits),
after three warm-up runs, and the median and p95 are printed.

PostgreSQL runs in a private cluster made by scripts/postgres.sh (Debian's
packages), on 127.0.0.1 only, removed afterwards. Each database is measured in a
child process of its own, since Django reads DATABASE_URL once.

    .venv/bin/python -m bench.search_bench [--messages 100000] [--runs 50] [--databases sqlite,postgres]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.databases import check, on_each, timings  # noqa: E402 (after the path above)

SEED = 22
VOCABULARY = 20_000
PER_CONVERSATION = 100
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def words(rng: random.Random) -> list[str]:
    """Invented words (no English stop words, so both engines index all of them)."""
    seen: set[str] = set()
    while len(seen) < VOCABULARY:
        seen.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(seen)


def corpus(count: int) -> tuple[list[str], Counter[str]]:
    """The messages' texts and, per word, how many messages hold it."""
    rng = random.Random(SEED)  # noqa: S311 (made-up text, the same on every run)
    vocabulary = words(rng)
    rng.shuffle(vocabulary)
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(vocabulary))]
    texts = []
    frequency: Counter[str] = Counter()
    for _ in range(count):
        text = rng.choices(vocabulary, weights=weights, k=rng.randint(20, 80))
        frequency.update(set(text))
        texts.append(" ".join(text).capitalize() + ".")
    return texts, frequency


def with_frequency(frequency: Counter[str], target: int) -> str:
    """The word in about `target` messages. Never the start of another word (the last
    word of a query also matches as a prefix), though its stem may be: the table
    counts the messages each query really matches."""
    starts = {word[:n] for word in frequency for n in range(1, len(word))}
    candidates = [word for word in frequency if word not in starts]
    return min(candidates, key=lambda word: (abs(frequency[word] - target), word))


def queries(frequency: Counter[str]) -> dict[str, str]:
    """One query per kind, picked by how many messages hold its words."""
    rare = with_frequency(frequency, 10)
    medium = with_frequency(frequency, 1_000)
    common = with_frequency(frequency, 20_000)
    second = with_frequency(Counter({w: n for w, n in frequency.items() if w != medium}), 1_000)
    prefix = medium[:3]
    return {
        "rare word": rare,
        "medium word": medium,
        "common word": common,
        "two medium words": f"{medium} {second}",
        "prefix, 3 letters (as typed)": prefix,
        "no match": "zzzzqx",
    }


def matches(query: str) -> int:
    """How many messages the query matches, all users' (the ranking's work, before the owner's filter)."""
    from django.db import connection

    from chat import search

    terms = search.search_terms(query)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT count(*) FROM chat_message WHERE search_vector @@ to_tsquery('english', %s)",
                [search.tsquery(terms)],
            )
        else:
            cursor.execute(
                "SELECT count(*) FROM chat_message_fts WHERE chat_message_fts MATCH %s",
                [search.fts5_query(terms)],
            )
        return int(cursor.fetchone()[0])


# --- One database, in a child process ---------------------------------------------------


def load(count: int) -> tuple[Any, Counter[str], float]:
    """The users and messages, inserted as the app would (the index kept by the database)."""
    from django.contrib.auth.models import User

    from chat.models import Conversation, Message

    texts, frequency = corpus(count)
    searcher = User.objects.create_user(username="searcher")
    other = User.objects.create_user(username="other")
    started = time.perf_counter()
    conversations = Conversation.objects.bulk_create(
        Conversation(owner=searcher if n % 10 else other, title=f"Conversation {n}")
        for n in range(-(-count // PER_CONVERSATION))
    )
    batch = []
    for index, text in enumerate(texts):
        role = Message.Role.USER if index % 2 == 0 else Message.Role.ASSISTANT
        batch.append(Message(conversation=conversations[index // PER_CONVERSATION], role=role, content=text))
        if len(batch) == 5_000:
            Message.objects.bulk_create(batch)
            batch = []
    Message.objects.bulk_create(batch)
    return searcher, frequency, time.perf_counter() - started


def measure(count: int, runs: int) -> dict[str, Any]:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from chat.search import message_search

    call_command("migrate", verbosity=0)
    searcher, frequency, load_s = load(count)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    results = {}
    for kind, query in queries(frequency).items():
        for _ in range(3):
            message_search(user=searcher, query=query)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            hits = message_search(user=searcher, query=query).hits
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        results[kind] = {
            "query": query,
            "matches": matches(query),
            "hits": len(hits),
            **timings(times),
        }
    return {"vendor": connection.vendor, "messages": count, "load_s": round(load_s, 1), "queries": results}


# --- The parent: a database each ---------------------------------------------------------


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['vendor']}: {result['messages']:,} messages, loaded in {result['load_s']} s",
        "| query | messages matched | hits shown | median ms | p95 ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for kind, row in result["queries"].items():
        lines.append(
            f"| {kind} | {row['matches']:,} | {row['hits']} | {row['median_ms']} | {row['p95_ms']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--pg-port", type=int, default=54349)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.messages, args.runs)))
        return 0
    try:
        databases = check(args.databases)
    except ValueError as exc:
        parser.error(str(exc))
    child_args = [f"--messages={args.messages}", f"--runs={args.runs}"]
    for result in on_each(
        databases, module="bench.search_bench", child_args=child_args, pg_port=args.pg_port
    ):
        print(table(result), flush=True)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
