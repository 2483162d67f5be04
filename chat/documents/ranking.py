"""A search's results, and how two rankings of them are fused into one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    score: float  # higher is better; comparable only within one ranking


def fuse(rankings: Sequence[Sequence[Hit]], *, k: int, constant: int = 60) -> list[Hit]:
    """Reciprocal rank fusion: each chunk scores the sum of 1 / (constant + its rank) over the rankings.

    Only ranks count, so a BM25 score and a cosine similarity need no common
    scale; `constant` (60, as in Cormack et al.) damps the weight of the very top.
    """
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (constant + rank)
    best = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]
    return [Hit(chunk_id=chunk_id, score=score) for chunk_id, score in best]
