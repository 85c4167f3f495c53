"""Erasure latency: from a request produced to every store of a process having applied it.

    python -m bench.erasure [--requests 200] [--rate 20] [--background 20000]

Starts a Tansu broker and fills one process's stores as a flow would have: `--background`
other subjects plus one per request, each with a profile, two cached answers and two
conversation replies (with the subject index the LLM stage writes) and a knowledge
document about it. An erasure table (`connectors.reference.ErasureTable` behind a
`ReferenceTable`, bootstrap then follower thread, as every flow process runs it) follows an
erasures topic, and `--requests` requests are produced one by one at `--rate` per second.
For each, the time from the producer's timestamp to the commit of the request's record
after the profile store, the knowledge index and the response cache applied it (the
follower's freshness samples) is recorded; the counts removed are checked.

Baseline, in the same run: the same number of profile updates through a profile table at
the same rate (the freshness `bench.freshness` measures), so the ratio shows what an
erasure costs over a plain reference update. Not included: the flow's own path of the
request through the memory step to the audit record (a dataflow hop, as for any record).

Prints p50/p99/max of both and, as its last line, one JSON object with keys `requests`,
`rate`, `background`, `p50_s`, `p99_s`, `max_s`, `baseline_p50_s`, `baseline_p99_s`,
`removed` (totals per store).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.freshness import run_table, summary
from config.models import SourceConfig
from connectors.reference import (
    ErasureTable,
    ReferenceTable,
    close_knowledge,
    close_references,
    open_knowledge,
)
from state.erasure import close_erasures, open_erasures
from state.knowledge import KnowledgeUpdate, RetrievalSettings
from state.stores import ProfileStore, Reply, ResponseCache, StoreLayout, close_all
from support.broker import TansuBroker, create_topic
from support.ir_metrics import percentile_ms

TENANT = "bench"


def fill(layout: StoreLayout, subjects: int) -> None:
    """Profiles, cached answers, replies (with the subject index) and one document per
    subject `u<i>`, as a flow would have left them."""
    profiles = ProfileStore(layout.profiles)
    cache = ResponseCache(layout.llm_cache)
    index = open_knowledge(layout.knowledge, RetrievalSettings())
    step = 1000
    for lo in range(0, subjects, step):
        ids = [f"u{i}" for i in range(lo, min(subjects, lo + step))]
        profiles.upsert_many(
            (TENANT, s, {"name": f"Customer {s}"}, "profiles[0]", lo + n) for n, s in enumerate(ids)
        )
        answers, replies, owners = {}, [], []
        for s in ids:
            for turn in range(2):
                fp = f"fp-{s}-{turn}"
                answers[fp] = {"reply": f"answer {turn} for {s}"}
                reply = Reply(TENANT, f"sess-{s}", f"{s}-m{turn}", f"reply {turn}")
                replies.append(reply)
                owners += [(fp.encode(), TENANT, s), (reply.key(), TENANT, s)]
        cache.put_many(answers, replies, owners=owners)
        index.apply(
            KnowledgeUpdate(
                TENANT, f"case-{s}", 1, "Case notes", f"notes about {s}", (f"subject:{s}",)
            )
            for s in ids
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--rate", type=float, default=20.0, help="requests per second")
    p.add_argument("--background", type=int, default=20_000, help="subjects not erased")
    args = p.parse_args(argv)
    n = args.requests
    tmp = Path(tempfile.mkdtemp(prefix="erasure-"))
    layout = StoreLayout(tmp / "stores")
    started = time.monotonic()
    fill(layout, args.background + n)
    filled_s = time.monotonic() - started
    with TansuBroker() as broker:
        bootstrap = broker.bootstrap
        settings = {"bootstrap.servers": bootstrap}

        ptopic = create_topic(bootstrap, "profiles", 1)
        updates = [
            json.dumps({"tenant": TENANT, "entity": f"p{i}", "attributes": {"i": i}}).encode()
            for i in range(n)
        ]
        ptable = ReferenceTable(
            SourceConfig(name="profiles", topic=ptopic), tmp / "baseline-profiles", settings
        )
        baseline = run_table(bootstrap, ptable, ptopic, updates, args.rate)

        etopic = create_topic(bootstrap, "erasures", 1)
        subjects = [f"u{args.background + i}" for i in range(n)]
        requests = [
            json.dumps({"request_id": f"r{i}", "tenant": TENANT, "subject": s}).encode()
            for i, s in enumerate(subjects)
        ]

        def build(path: str) -> ErasureTable:
            return ErasureTable(
                path,
                profiles=str(layout.profiles),
                knowledge=lambda: open_knowledge(layout.knowledge),
                cache=lambda: ResponseCache(layout.llm_cache),
            )

        etable = ReferenceTable(
            SourceConfig(name="erasures", topic=etopic), layout.erasures, settings, table=build
        )
        erased = run_table(bootstrap, etable, etopic, requests, args.rate)
        store = open_erasures(layout.erasures)
        removed: dict[str, int] = {}
        for i in range(n):
            rec = store.record(f"r{i}") or {}
            for k, v in rec.get("removed", {}).items():
                removed[k] = removed.get(k, 0) + v
        close_references()
        close_knowledge()
        close_erasures()
        close_all()

    print(
        f"{n} erasure requests at {args.rate:g}/s, produced one by one, over the stores of "
        f"{args.background + n} subjects (filled in {filled_s:.1f} s)"
    )
    print(summary("erasure", erased) + "  (profile + knowledge + cache, committed)")
    print(summary("profiles", baseline) + "  (baseline: a profile update, same rate)")
    p99, base99 = percentile_ms(erased, 99) / 1000, percentile_ms(baseline, 99) / 1000
    print(f"erasure / baseline p99: {p99 / base99 if base99 else float('nan'):.2f}")
    print(f"removed: {removed}")
    result = {
        "requests": len(erased),
        "rate": args.rate,
        "background": args.background,
        "p50_s": round(percentile_ms(erased, 50) / 1000, 4),
        "p99_s": round(p99, 4),
        "max_s": round(max(erased, default=0.0), 4),
        "baseline_p50_s": round(percentile_ms(baseline, 50) / 1000, 4),
        "baseline_p99_s": round(base99, 4),
        "removed": removed,
    }
    print(json.dumps(result))
    return 0 if len(erased) == n else 1


if __name__ == "__main__":
    raise SystemExit(main())
