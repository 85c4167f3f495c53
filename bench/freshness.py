"""Knowledge freshness: from a document produced to its chunks being searchable.

    python -m bench.freshness [--rate 100] [--seconds 30] [--corpus corpus.jsonl]

Starts a Tansu broker, a knowledge topic of 2 partitions and a `ReferenceTable` on a fresh
knowledge index, exactly as a flow process runs it (bootstrap, then the follower thread).
Then it produces `--rate` documents per second for `--seconds` (each document's text from
`--corpus`, a BEIR-style `{"doc_id","title","text"}` file, or generated), one at a time with
the producer's timestamp, and records for each the time from that timestamp to the commit of
the transaction that made its chunks searchable (the follower's `freshness` samples, also the
`contextstream_reference_freshness_seconds` histogram). A second check polls the index
from another thread and times when a search finds each document, so the figure is seen from
the reader's side too.

Baseline, in the same run: the same rate of profile updates through a profile table (a
rocksdict upsert; no chunking or full-text indexing), so the ratio shows what the index costs.

Prints p50/p99/max per table and as its last line one JSON object with keys `rate`,
`documents`, `p50_s`, `p99_s`, `max_s`, `search_p99_s`, `baseline_p99_s`.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from config.models import SourceConfig
from connectors.reference import (
    KnowledgeTable,
    ReferenceTable,
    close_knowledge,
    open_knowledge,
)
from state.knowledge import RetrievalSettings
from state.stores import close_all
from support.broker import TansuBroker, create_topic
from support.ir_metrics import percentile_ms

TENANT = "bench"
WORDS = [
    "protein",
    "cell",
    "gene",
    "expression",
    "tumor",
    "receptor",
    "signal",
    "pathway",
    "immune",
    "response",
    "dose",
    "trial",
    "patients",
    "cohort",
    "risk",
    "outcome",
    "mutation",
    "enzyme",
    "binding",
    "membrane",
    "kinase",
    "therapy",
]


def documents(corpus: str | None, n: int) -> Iterator[dict[str, Any]]:
    """`n` documents: the corpus's, cycled, or generated ones of about 200 words."""
    if corpus is not None:
        with open(corpus, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        for i in range(n):
            row = rows[i % len(rows)]
            yield {"doc_id": f"d{i}", "title": row.get("title", ""), "text": row["text"]}
        return
    rng = random.Random(3)
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(200))
        yield {"doc_id": f"d{i}", "title": f"document {i}", "text": f"{text} marker{i}"}


def produce_paced(bootstrap: str, topic: str, records: list[bytes], rate: float) -> None:
    """Produce `records` one by one at `rate` per second (keyed by position)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})
    start = time.monotonic()
    for i, value in enumerate(records):
        wait = start + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        producer.produce(topic, value=value, key=str(i).encode())
        producer.poll(0)
    producer.flush(30)


def run_table(
    bootstrap: str, table: ReferenceTable, topic: str, records: list[bytes], rate: float
) -> list[float]:
    """Follow `topic` with `table` while `records` are produced; the freshness samples."""
    table.bootstrap()
    table.follow()
    produce_paced(bootstrap, topic, records, rate)
    deadline = time.monotonic() + 60
    while len(table.freshness) < len(records) and time.monotonic() < deadline:
        time.sleep(0.05)
    table.close()
    return list(table.freshness)


def search_times(
    index_path: Path, n: int, produced: dict[int, float], stop: threading.Event
) -> dict[int, float]:
    """Poll the index until document `marker<i>` is found for each i; seconds after its
    produce call (a reader's view, within the poll interval)."""
    index = open_knowledge(index_path)
    found: dict[int, float] = {}
    nxt = 0
    while nxt < n and not stop.is_set():
        if nxt in produced and index.search(TENANT, f"marker{nxt}", 1):
            found[nxt] = time.time() - produced[nxt]
            nxt += 1
            continue
        time.sleep(0.002)
    return found


def summary(name: str, samples: list[float]) -> str:
    return (
        f"{name:<10} {len(samples):>6} records  p50 {percentile_ms(samples, 50):7.1f} ms  "
        f"p99 {percentile_ms(samples, 99):7.1f} ms  max {1000 * max(samples, default=0):7.1f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=100.0, help="documents per second")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--corpus", help="BEIR-style corpus.jsonl for the documents' text")
    args = p.parse_args(argv)
    n = max(1, int(args.rate * args.seconds))
    tmp = Path(tempfile.mkdtemp(prefix="freshness-"))
    with TansuBroker() as broker:
        bootstrap = broker.bootstrap
        settings = {"bootstrap.servers": bootstrap}

        # Baseline: profile updates through the profile table.
        ptopic = create_topic(bootstrap, "profiles", 2)
        profiles = [
            json.dumps({"tenant": TENANT, "entity": f"e{i}", "attributes": {"i": i}}).encode()
            for i in range(n)
        ]
        ptable = ReferenceTable(
            SourceConfig(name="profiles", topic=ptopic), tmp / "profiles", settings
        )
        baseline = run_table(bootstrap, ptable, ptopic, profiles, args.rate)
        close_all()

        ktopic = create_topic(bootstrap, "knowledge", 2)
        docs = [
            json.dumps({"tenant": TENANT, "version": 1, **d}).encode()
            for d in documents(args.corpus, n)
        ]
        index_path = tmp / "knowledge.sqlite"
        retrieval = RetrievalSettings()
        ktable = ReferenceTable(
            SourceConfig(name="knowledge", topic=ktopic),
            index_path,
            settings,
            table=lambda path: KnowledgeTable(path, retrieval, 1 << 20),
        )
        produced: dict[int, float] = {}
        stop = threading.Event()
        seen: dict[int, float] = {}
        reader = None
        if args.corpus is None:  # generated documents carry a marker word to search for
            open_knowledge(index_path, retrieval)

            def poll() -> None:
                seen.update(search_times(index_path, n, produced, stop))

            reader = threading.Thread(target=poll, daemon=True)
        # Produce with the send times recorded (for the reader's view).
        ktable.bootstrap()
        ktable.follow()
        if reader is not None:
            reader.start()
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})
        start = time.monotonic()
        for i, value in enumerate(docs):
            wait = start + i / args.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            produced[i] = time.time()
            producer.produce(ktopic, value=value, key=str(i).encode())
            producer.poll(0)
        producer.flush(30)
        deadline = time.monotonic() + 60
        while len(ktable.freshness) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        if reader is not None:
            reader.join(timeout=30)
        stop.set()
        ktable.close()
        fresh = list(ktable.freshness)
        close_knowledge()
        close_all()

    print(f"{n} records at {args.rate:g}/s, produced one by one (linger 0)")
    print(summary("knowledge", fresh))
    if seen:
        print(summary("search", list(seen.values())) + "  (reader polling every 2 ms)")
    print(summary("profiles", baseline) + "  (baseline: rocksdict upsert, no index)")
    p99, base99 = percentile_ms(fresh, 99) / 1000, percentile_ms(baseline, 99) / 1000
    print(f"knowledge / baseline p99: {p99 / base99 if base99 else float('nan'):.2f}")
    result = {
        "rate": args.rate,
        "documents": len(fresh),
        "p50_s": round(percentile_ms(fresh, 50) / 1000, 4),
        "p99_s": round(p99, 4),
        "max_s": round(max(fresh, default=0.0), 4),
        "search_p99_s": round(percentile_ms(list(seen.values()), 99) / 1000, 4) if seen else None,
        "baseline_p99_s": round(base99, 4),
    }
    print(json.dumps(result))
    return 0 if len(fresh) == n else 1


if __name__ == "__main__":
    raise SystemExit(main())
