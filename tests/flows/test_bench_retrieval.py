"""Short run of `python -m bench.retrieval` (a subprocess) on a tiny generated collection:
the run file, the metrics (checked against a hand computation) and the last JSON line. No
timed assertions."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from support import ir_metrics
from support.harness import run_bench

TOPICS = [
    ("reactor", "coolant pressure valve turbine"),
    ("vaccine", "antibody immune response dose"),
    ("glacier", "ice melt climate sea level"),
    ("protein", "folding enzyme amino acid binding"),
    ("neuron", "synapse axon signal brain"),
    ("market", "price inflation demand supply"),
]

FILLER = ["study", "results", "data", "method", "analysis", "report", "sample", "group", "effect"]


def write_collection(root: Path) -> tuple[Path, Path, Path]:
    """Three documents per topic (one of them long enough for several chunks) plus filler
    documents; one query per topic judging its three documents relevant."""
    rng = random.Random(7)
    corpus, queries, qrels = [], [], ["query_id\tdoc_id\trelevance"]
    for t, (name, words) in enumerate(TOPICS):
        for j in range(3):
            body = [*words.split(), *rng.sample(FILLER, 4)] * (40 if j == 2 else 2)
            rng.shuffle(body)
            corpus.append({"doc_id": f"{name}-{j}", "title": f"{name} {j}", "text": " ".join(body)})
            qrels.append(f"q{t}\t{name}-{j}\t{2 if j == 0 else 1}")
        queries.append({"query_id": f"q{t}", "text": f"What does the {name} {words} show?"})
    for i in range(30):
        corpus.append(
            {"doc_id": f"filler-{i}", "title": "", "text": " ".join(rng.sample(FILLER, 6))}
        )
    paths = root / "corpus.jsonl", root / "queries.jsonl", root / "qrels.tsv"
    paths[0].write_text("".join(json.dumps(d) + "\n" for d in corpus))
    paths[1].write_text("".join(json.dumps(q) + "\n" for q in queries))
    paths[2].write_text("\n".join(qrels) + "\n")
    return paths


def test_bench_runs_and_reports(tmp_path: Path) -> None:
    corpus, queries, qrels = write_collection(tmp_path)
    run = tmp_path / "run.trec"
    args = ["--corpus", str(corpus), "--queries", str(queries), "--qrels", str(qrels)]
    result, out = run_bench("bench.retrieval", *args, "--out", str(run), "--cv", "--sensitivity")
    for key in (
        "ndcg_at_10",
        "recall_at_10",
        "recall_at_100",
        "docs_per_s",
        "query_p50_ms",
        "query_p99_ms",
    ):
        assert isinstance(result[key], float | int), key
    assert result["documents"] == len(TOPICS) * 3 + 30
    assert result["ndcg_at_10"] > 0.6 and result["recall_at_10"] >= 0.8
    assert result["recall_at_100"] == 1.0 and result["baseline_recall_at_100"] == 1.0
    assert result["docs_per_s"] > 0 and 0 < result["query_p50_ms"] <= result["query_p99_ms"]
    assert any(line.startswith("baseline") for line in out)
    assert sum(line.startswith("cv: chosen on half") for line in out) == 2
    assert any(line.startswith("cv: held-out nDCG@10 mean") for line in out)
    assert any(line.startswith("title_weight | 1.5 |") for line in out)

    lines = [line.split() for line in run.read_text().splitlines()]
    assert all(len(p) == 6 and p[1] == "Q0" and p[5] == "contextstream" for p in lines)
    by_query: dict[str, list[list[str]]] = {}
    for p in lines:
        by_query.setdefault(p[0], []).append(p)
    assert set(by_query) == {f"q{t}" for t in range(len(TOPICS))}
    for rows in by_query.values():
        assert [int(p[3]) for p in rows] == list(range(1, len(rows) + 1))
        scores = [float(p[4]) for p in rows]
        assert scores == sorted(scores, reverse=True)
        assert len({p[2] for p in rows}) == len(rows)  # one line per document
    ranking = {q: [(p[2], float(p[4])) for p in rows] for q, rows in by_query.items()}
    again = ir_metrics.evaluate(ir_metrics.read_qrels(qrels), ranking)
    assert again["ndcg_at_10"] == pytest.approx(result["ndcg_at_10"], abs=1e-4)


def test_bench_runs_the_hybrid_on_the_simulator(tmp_path: Path) -> None:
    corpus, queries, qrels = write_collection(tmp_path)
    args = ["--corpus", str(corpus), "--queries", str(queries), "--qrels", str(qrels)]
    args += ["--out", str(tmp_path / "run.trec"), "--embeddings-sim", "--embeddings-model", "m"]
    result, out = run_bench("bench.retrieval", *args)
    assert result["hybrid_pending_vectors"] == 0
    assert result["hybrid_recall_at_100"] == 1.0 and result["hybrid_ndcg_at_10"] > 0.6
    assert result["hybrid_docs_per_s"] > 0
    assert 0 < result["hybrid_query_p50_ms"] <= result["hybrid_query_p99_ms"]
    assert result["ndcg_at_10"] > 0.6  # the lexical run is still there
    assert any(line.startswith("hybrid    nDCG@10") for line in out)


def test_metrics_match_trec_eval_definitions() -> None:
    rels = {"a": 2, "b": 1, "c": 0}
    ranked = ["x", "b", "a", "c"]
    dcg = 1 / math.log2(3) + 2 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert ir_metrics.ndcg_at(ranked, rels, 10) == pytest.approx(dcg / idcg)
    assert ir_metrics.recall_at(ranked, rels, 2) == 0.5
    assert ir_metrics.evaluate({"q": rels, "missing": {"a": 1}}, {"q": [("b", 1.0)]}) == {
        "ndcg_at_10": pytest.approx((1 / (2 + 1 / math.log2(3))) / 2),
        "recall_at_10": 0.25,
        "recall_at_100": 0.25,
    }
    assert ir_metrics.percentile_ms([0.001, 0.002, 0.003, 0.004], 50) == pytest.approx(2.0)
