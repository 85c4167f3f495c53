"""Retrieval quality and cost of the knowledge index on a BEIR-style collection.

    python -m bench.retrieval --corpus FILE --queries FILE --qrels FILE --out RUN
        [--index PATH] [--top-k 100] [--set NAME=VALUE ...] [--sensitivity] [--cv]
        [--embeddings-url URL --embeddings-model M [--embeddings-key-env VAR] | --embeddings-sim]

`--corpus` is JSONL `{"doc_id", "title", "text"}`, `--queries` JSONL `{"query_id", "text"}`,
`--qrels` TSV `query_id<TAB>doc_id<TAB>relevance` with a header line. Every document goes
through the pipeline's own code: it is written as a knowledge document record (tenant `bench`,
version 0), parsed by `state.knowledge.parse_document`, chunked and indexed by
`SqliteKnowledgeIndex.apply` (batches of 500, with their positions); every query is answered
by `SqliteKnowledgeIndex.search` (one document per hit, scored by its best chunk).

Writes the top `--top-k` documents per query to RUN as a TREC run (`qid Q0 doc_id rank score
tag`, ranked by score, ties by doc id descending as trec_eval orders them) and prints nDCG@10,
Recall@10 and Recall@100 (computed as trec_eval does: gain = relevance, log2 discount, the
ideal ranking from the qrels, every judged query counted), ingestion docs/s and the query
latency p50/p99 (each query timed once, after a warm-up pass over the first 20). The same
index is searched again with `state.knowledge.BASELINE` (plain FTS5 `bm25()`, an OR of every
query term, no weighting or proximity) for comparison, since machines differ and what compares
is the ratio. The last line is one JSON object with keys `ndcg_at_10`, `recall_at_10`,
`recall_at_100`, `docs_per_s`, `query_p50_ms`, `query_p99_ms` (and `baseline_...` twins).

`--set title_weight=2` overrides a `RetrievalSettings` field. `--sensitivity` prints nDCG@10
with each kept parameter at 0.75x and 1.25x its value (chunk sizes re-index the corpus);
`--cv` picks the query-side parameters on one half of the queries (alternate query ids in
sorted order) from a small generic grid and reports them on the other half, both ways.
The index is a temporary file unless `--index` names one (which must not exist yet).

`--embeddings-url URL --embeddings-model M` (the key from the environment variable
`--embeddings-key-env`, default OPENAI_API_KEY) also builds a hybrid index of the same
documents (a second file, every chunk embedded through `inference.embeddings`) and reports
it next to the lexical one: its line `hybrid`, and `hybrid_...` keys in the JSON (ingestion
docs/s including the embedding requests; query latency including each query's embedding
request, but for the 20 of the warm-up pass). `--embeddings-sim` does the same against the
LLM simulator started in this process (its hashed word-stem vectors: a smoke test of the
hybrid path, not a quality claim).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from config.models import EmbeddingsConfig
from inference.embeddings import EmbeddingsClient
from llmsim import LLMSimulator, SimConfig
from state.knowledge import (
    BASELINE,
    KnowledgeUpdate,
    RetrievalSettings,
    SqliteKnowledgeIndex,
    parse_document,
)
from support.ir_metrics import Qrels, Ranking, evaluate, percentile_ms, read_qrels

TENANT = "bench"
ORIGIN = "bench-corpus"
BATCH = 500
TAG = "contextstream"


# --- collection ---------------------------------------------------------------------------


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def corpus_records(corpus: Iterable[Mapping[str, Any]]) -> list[bytes]:
    """Each corpus document as the knowledge document record the pipeline would read."""
    return [
        json.dumps(
            {
                "tenant": TENANT,
                "doc_id": str(d["doc_id"]),
                "version": 0,
                "title": d.get("title") or "",
                "text": d.get("text") or "",
            }
        ).encode()
        for d in corpus
    ]


# --- indexing and search ------------------------------------------------------------------


def ingest(index: SqliteKnowledgeIndex, records: Sequence[bytes]) -> tuple[int, float]:
    """Parse and apply `records` in batches; returns (documents indexed, seconds)."""
    started = time.perf_counter()
    indexed = 0
    for start in range(0, len(records), BATCH):
        updates: list[KnowledgeUpdate] = []
        for offset in range(start, min(start + BATCH, len(records))):
            parsed = parse_document(records[offset], origin=ORIGIN, offset=offset)
            if isinstance(parsed, str):
                print(f"corpus line {offset + 1} skipped: {parsed}", file=sys.stderr)
                continue
            updates.append(parsed)
        end = min(start + BATCH, len(records))
        indexed += index.apply(updates, {(ORIGIN, 0): end})
    return indexed, time.perf_counter() - started


def search_all(
    index: SqliteKnowledgeIndex, queries: Sequence[Mapping[str, Any]], top_k: int
) -> tuple[Ranking, list[float]]:
    """Each query's ranking (doc id, score) in trec_eval order, and each query's seconds."""
    for q in queries[:20]:
        index.search(TENANT, q["text"], top_k)
    ranking: Ranking = {}
    seconds: list[float] = []
    for q in queries:
        started = time.perf_counter()
        hits = index.search(TENANT, q["text"], top_k)
        seconds.append(time.perf_counter() - started)
        ranked = [(h.doc_id, h.score) for h in hits]
        ranked.sort(key=lambda p: (p[1], p[0]), reverse=True)
        ranking[str(q["query_id"])] = ranked
    return ranking, seconds


def write_run(path: str | Path, ranking: Ranking) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for qid, ranked in ranking.items():
            for rank, (doc_id, score) in enumerate(ranked, 1):
                f.write(f"{qid} Q0 {doc_id} {rank} {score:.6f} {TAG}\n")


# --- parameter studies --------------------------------------------------------------------

KEPT = (
    "chunk_tokens",
    "overlap_tokens",
    "title_weight",
    "proximity_weight",
    "proximity_window",
    "rerank_depth",
)
"""The parameters `--sensitivity` varies (integers are rounded)."""

GRID: dict[str, Sequence[Any]] = {
    "title_weight": (1.0, 1.5, 2.0, 3.0),
    "proximity_weight": (0.0, 0.2, 0.3, 0.5),
    "proximity_window": (0, 3, 5, 10),
}
"""The generic grid `--cv` chooses from (query-side parameters: no re-indexing)."""


def halves(qrels: Qrels) -> tuple[list[str], list[str]]:
    qids = sorted(qrels, key=lambda q: (len(q), q))
    return qids[0::2], qids[1::2]


class Study:
    """One collection, an index per chunking, rankings on demand (for `--cv`/`--sensitivity`)."""

    def __init__(
        self,
        workdir: Path,
        records: Sequence[bytes],
        queries: Sequence[Mapping[str, Any]],
        qrels: Qrels,
        top_k: int,
    ) -> None:
        self.workdir, self.records, self.queries, self.qrels = workdir, records, queries, qrels
        self.top_k = top_k
        self._indexes: dict[tuple[int, int], Path] = {}

    def adopt(self, settings: RetrievalSettings, path: Path) -> None:
        """Use the index at `path`, built with `settings`' chunking, for that chunking."""
        self._indexes[(settings.chunk_tokens, settings.overlap_tokens)] = path

    def ranking(self, settings: RetrievalSettings) -> Ranking:
        key = (settings.chunk_tokens, settings.overlap_tokens)
        path = self._indexes.get(key)
        if path is None:
            path = self.workdir / f"index-{key[0]}-{key[1]}.sqlite"
            index = SqliteKnowledgeIndex(path, settings)
            ingest(index, self.records)
            index.close()
            self._indexes[key] = path
        index = SqliteKnowledgeIndex(path, settings)
        try:
            ranked, _ = search_all(index, self.queries, self.top_k)
        finally:
            index.close()
        return ranked

    def ndcg(self, settings: RetrievalSettings, only: Iterable[str] | None = None) -> float:
        return evaluate(self.qrels, self.ranking(settings), only)["ndcg_at_10"]


def cross_validate(study: Study, base: RetrievalSettings) -> list[str]:
    """Choose the GRID point with the best nDCG@10 on each half, report it on the other."""
    a, b = halves(study.qrels)
    points = []
    for values in itertools.product(*GRID.values()):
        point = dict(zip(GRID, values, strict=True))
        if point["proximity_weight"] == 0 and point["proximity_window"] != 0:
            continue  # without proximity the window does nothing
        points.append(point)
    scored = []
    for point in points:
        ranked = study.ranking(dataclasses.replace(base, **point))
        scored.append((point, evaluate(study.qrels, ranked, a), evaluate(study.qrels, ranked, b)))
    lines, held_out = [], []
    for train, test in (("A", "B"), ("B", "A")):
        ti, si = (1, 2) if train == "A" else (2, 1)
        best = max(scored, key=lambda t: t[ti]["ndcg_at_10"])
        held_out.append(best[si]["ndcg_at_10"])
        lines.append(
            f"cv: chosen on half {train} ({best[ti]['ndcg_at_10']:.4f}): "
            f"{json.dumps(best[0])} -> half {test} nDCG@10 {best[si]['ndcg_at_10']:.4f}"
        )
    both = max(scored, key=lambda t: t[1]["ndcg_at_10"] + t[2]["ndcg_at_10"])
    mean = (both[1]["ndcg_at_10"] + both[2]["ndcg_at_10"]) / 2
    lines.append(
        f"cv: held-out nDCG@10 mean {statistics.fmean(held_out):.4f}; best on both halves: "
        f"{json.dumps(both[0])} ({mean:.4f})"
    )
    return lines


def sensitivity(study: Study, base: RetrievalSettings) -> list[str]:
    """nDCG@10 (all queries, half A, half B) with each kept parameter at 0.75x, 1x, 1.25x."""
    a, b = halves(study.qrels)
    lines = ["parameter | value | nDCG@10 all | half A | half B"]
    for name in KEPT:
        value = getattr(base, name)
        if not value:
            continue
        for factor in (0.75, 1.0, 1.25):
            v: Any = value * factor if isinstance(value, float) else max(1, round(value * factor))
            change: dict[str, Any] = {name: v}
            try:
                settings = dataclasses.replace(base, **change)
            except ValueError:
                continue
            ranked = study.ranking(settings)
            figures = [evaluate(study.qrels, ranked, only)["ndcg_at_10"] for only in (None, a, b)]
            lines.append(f"{name} | {v:g} | " + " | ".join(f"{x:.4f}" for x in figures))
    return lines


# --- main ---------------------------------------------------------------------------------


def _override(settings: RetrievalSettings, assignments: Sequence[str]) -> RetrievalSettings:
    fields = {f.name: f for f in dataclasses.fields(RetrievalSettings)}
    changes: dict[str, Any] = {}
    for item in assignments:
        name, _, raw = item.partition("=")
        if name not in fields:
            msg = f"--set {item!r}: no RetrievalSettings field {name!r} (one of {list(fields)})"
            raise SystemExit(msg)
        kind = type(getattr(settings, name))
        changes[name] = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw)
    return dataclasses.replace(settings, **changes)


def _figures(name: str, m: Mapping[str, float]) -> str:
    return (
        f"{name:<9} nDCG@10 {m['ndcg_at_10']:.4f}  Recall@10 {m['recall_at_10']:.4f}  "
        f"Recall@100 {m['recall_at_100']:.4f}"
    )


def hybrid_run(
    args: argparse.Namespace,
    settings: RetrievalSettings,
    workdir: Path,
    records: Sequence[bytes],
    queries: Sequence[Mapping[str, Any]],
    qrels: Qrels,
) -> dict[str, float]:
    """Index and search the collection again with embeddings; prints and returns the
    `hybrid_...` figures."""
    with contextlib.ExitStack() as stack:
        url = args.embeddings_url
        if args.embeddings_sim:
            sim = stack.enter_context(LLMSimulator(SimConfig(latency_ms=1, max_concurrency=256)))
            url = sim.base_url
        cfg = EmbeddingsConfig(
            base_url=url, model=args.embeddings_model, api_key_env=args.embeddings_key_env
        )
        client = EmbeddingsClient(cfg)
        stack.callback(client.close)
        index = SqliteKnowledgeIndex(workdir / "hybrid.sqlite", settings, embedder=client)
        stack.callback(index.close)
        indexed, ingest_s = ingest(index, records)
        pending = index.pending_vectors()
        ranking, seconds = search_all(index, queries, args.top_k)
    figures = evaluate(qrels, ranking)
    docs_per_s = indexed / ingest_s if ingest_s > 0 else 0.0
    p50, p99 = percentile_ms(seconds, 50), percentile_ms(seconds, 99)
    where = "the in-process simulator" if args.embeddings_sim else url
    print(f"hybrid: embeddings {cfg.model} at {where}; chunks left without a vector: {pending}")
    print(f"hybrid: {indexed} documents in {ingest_s:.2f} s ({docs_per_s:.0f} docs/s)")
    print(_figures("hybrid", figures))
    print(f"hybrid query latency p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    return {
        **{f"hybrid_{k}": round(v, 4) for k, v in figures.items()},
        "hybrid_docs_per_s": round(docs_per_s, 1),
        "hybrid_query_p50_ms": round(p50, 3),
        "hybrid_query_p99_ms": round(p99, 3),
        "hybrid_pending_vectors": pending,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.retrieval", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--corpus", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--qrels", required=True)
    p.add_argument("--out", required=True, help="the TREC run file to write")
    p.add_argument("--index", help="index file to build (default: a temporary file)")
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--sensitivity", action="store_true")
    p.add_argument("--cv", action="store_true")
    p.add_argument("--embeddings-url", help="also a hybrid run with this embeddings endpoint")
    p.add_argument("--embeddings-model", default="text-embedding-3-small")
    p.add_argument("--embeddings-key-env", default="OPENAI_API_KEY")
    p.add_argument(
        "--embeddings-sim", action="store_true", help="hybrid run on the in-process simulator"
    )
    args = p.parse_args(argv)
    if args.embeddings_url and args.embeddings_sim:
        raise SystemExit("give --embeddings-url or --embeddings-sim, not both")

    settings = _override(RetrievalSettings(), args.set)
    records = corpus_records(read_jsonl(args.corpus))
    queries = read_jsonl(args.queries)
    qrels = read_qrels(args.qrels)
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as tmp:
        path = Path(args.index) if args.index else Path(tmp) / "knowledge.sqlite"
        if path.exists():
            raise SystemExit(f"--index {path} exists already: name a new file")
        index = SqliteKnowledgeIndex(path, settings)
        indexed, ingest_s = ingest(index, records)
        ranking, seconds = search_all(index, queries, args.top_k)
        index.close()
        write_run(args.out, ranking)
        plain = dataclasses.replace(
            BASELINE, chunk_tokens=settings.chunk_tokens, overlap_tokens=settings.overlap_tokens
        )
        baseline_index = SqliteKnowledgeIndex(path, plain)
        base_ranking, base_seconds = search_all(baseline_index, queries, args.top_k)
        baseline_index.close()

        metrics = evaluate(qrels, ranking)
        base = evaluate(qrels, base_ranking)
        docs_per_s = indexed / ingest_s if ingest_s > 0 else 0.0
        print(f"settings: {json.dumps(dataclasses.asdict(settings))}")
        print(f"documents indexed: {indexed} in {ingest_s:.2f} s ({docs_per_s:.0f} docs/s)")
        print(f"queries: {len(queries)} (judged {len(qrels)}), top {args.top_k} documents each")
        print(_figures("knowledge", metrics))
        print(_figures("baseline", base))
        p50, p99 = percentile_ms(seconds, 50), percentile_ms(seconds, 99)
        bp50, bp99 = percentile_ms(base_seconds, 50), percentile_ms(base_seconds, 99)
        print(f"query latency p50 {p50:.2f} ms, p99 {p99:.2f} ms (baseline {bp50:.2f}, {bp99:.2f})")
        print(f"mean query {1000 * statistics.fmean(seconds or [0.0]):.2f} ms; run: {args.out}")
        hybrid: dict[str, float] = {}
        if args.embeddings_url or args.embeddings_sim:
            hybrid = hybrid_run(args, settings, Path(tmp), records, queries, qrels)
        if args.cv or args.sensitivity:
            study = Study(Path(tmp), records, queries, qrels, args.top_k)
            study.adopt(settings, path)
            if args.cv:
                print("\n".join(cross_validate(study, settings)))
            if args.sensitivity:
                print("\n".join(sensitivity(study, settings)))
    result = {
        **{k: round(v, 4) for k, v in metrics.items()},
        "docs_per_s": round(docs_per_s, 1),
        "query_p50_ms": round(p50, 3),
        "query_p99_ms": round(p99, 3),
        **{f"baseline_{k}": round(v, 4) for k, v in base.items()},
        "baseline_query_p50_ms": round(bp50, 3),
        "baseline_query_p99_ms": round(bp99, 3),
        **hybrid,
        "documents": indexed,
        "queries": len(queries),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
