"""Retrieval metrics as trec_eval computes them (nDCG@k with graded gains and a log2
discount, Recall@k), qrels files, latency percentiles: shared by `bench.retrieval` and the
tests that check it."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

Ranking = dict[str, list[tuple[str, float]]]
"""Per query id, (doc id, score) best first."""
Qrels = dict[str, dict[str, int]]
"""Per query id, doc id -> relevance."""


def read_qrels(path: str | Path) -> Qrels:
    qrels: Qrels = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3:
                msg = f"{path}:{n + 1}: expected query_id, doc_id, relevance; got {line!r}"
                raise ValueError(msg)
            try:
                rel = int(parts[2])
            except ValueError:
                if n == 0:
                    continue  # the header
                raise
            qrels.setdefault(parts[0], {})[parts[1]] = rel
    return qrels


def ndcg_at(ranked: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    dcg = sum(
        rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if rels.get(d, 0) > 0
    )
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranked: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    relevant = {d for d, r in rels.items() if r > 0}
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def evaluate(qrels: Qrels, ranking: Ranking, only: Iterable[str] | None = None) -> dict[str, float]:
    """Mean nDCG@10, Recall@10, Recall@100 over the judged queries (`only` a subset of them);
    a judged query missing from `ranking` scores 0."""
    qids = [q for q in qrels if only is None or q in set(only)]
    sums = {"ndcg_at_10": 0.0, "recall_at_10": 0.0, "recall_at_100": 0.0}
    for q in qids:
        ranked = [d for d, _ in ranking.get(q, [])]
        sums["ndcg_at_10"] += ndcg_at(ranked, qrels[q], 10)
        sums["recall_at_10"] += recall_at(ranked, qrels[q], 10)
        sums["recall_at_100"] += recall_at(ranked, qrels[q], 100)
    return {m: v / len(qids) if qids else 0.0 for m, v in sums.items()}


def percentile_ms(seconds: Sequence[float], p: float) -> float:
    """The `p`-th percentile (nearest rank) in milliseconds."""
    ordered = sorted(seconds)
    if not ordered:
        return 0.0
    return 1000 * ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]
