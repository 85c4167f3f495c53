"""`python -m bench.retrieval_pipeline` as a subprocess on a tiny generated collection: the
documents go through the knowledge topic and the queries through the whole flow as chats,
and every response cites exactly the bench's own top k for its query, a query with a phone
number in it included (both search the redacted text)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from support.harness import run_bench

TOPICS = [
    ("reactor", "coolant pressure valve turbine"),
    ("vaccine", "antibody immune response dose"),
    ("glacier", "ice melt climate sea level"),
    ("protein", "folding enzyme amino acid binding"),
    ("neuron", "synapse axon signal brain"),
]

FILLER = ["study", "results", "data", "method", "analysis", "report", "sample", "group", "effect"]


def write_collection(root: Path) -> tuple[Path, Path, Path]:
    """Four documents per topic (one long enough for several chunks), filler documents, and
    one query per topic; the last query carries a phone number, which the flow redacts."""
    rng = random.Random(11)
    corpus, queries, qrels = [], [], ["query_id\tdoc_id\trelevance"]
    for t, (name, words) in enumerate(TOPICS):
        for j in range(4):
            body = [*words.split(), *rng.sample(FILLER, 3 + j)] * (40 if j == 3 else 1 + j)
            rng.shuffle(body)
            corpus.append({"doc_id": f"{name}-{j}", "title": f"{name} {j}", "text": " ".join(body)})
            qrels.append(f"q{t}\t{name}-{j}\t1")
        queries.append({"query_id": f"q{t}", "text": f"What does the {name} {words} show?"})
    queries[-1]["text"] += " Call me at 555-123-4567."
    for i in range(20):
        corpus.append(
            {"doc_id": f"filler-{i}", "title": "", "text": " ".join(rng.sample(FILLER, 6))}
        )
    paths = root / "corpus.jsonl", root / "queries.jsonl", root / "qrels.tsv"
    paths[0].write_text("".join(json.dumps(d) + "\n" for d in corpus))
    paths[1].write_text("".join(json.dumps(q) + "\n" for q in queries))
    paths[2].write_text("\n".join(qrels) + "\n")
    return paths


def test_citations_equal_the_bench_ranking(tmp_path: Path) -> None:
    corpus, queries, qrels = write_collection(tmp_path)
    result, _ = run_bench(
        "bench.retrieval_pipeline",
        *("--corpus", str(corpus), "--queries", str(queries), "--qrels", str(qrels)),
        *("--top-k", "3"),
    )
    n = len(TOPICS)
    assert result["queries"] == result["answered"] == n
    assert result["documents"] == result["pipeline_documents"] == n * 4 + 20
    assert result["redacted_queries"] == 1
    assert result["exact_share"] == 1.0 and result["mean_overlap_at_k"] == 1.0
    assert result["ndcg_at_10_citations"] == result["ndcg_at_10_bench"] > 0.5
    assert result["top_k"] == 3
