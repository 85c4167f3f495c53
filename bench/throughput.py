"""Throughput of the non-LLM path through a real broker, against a Bytewax passthrough.

    python -m bench.throughput [--events 200000] [--repeat 1] [--no-recovery]

Starts a Tansu broker, writes N events (metric readings, business events, 2 % malformed) to
one input topic, then runs, each in a fresh process on the same data:

- the baseline: Bytewax's own `KafkaSource` → `op.map` → `KafkaSink`;
- the pipeline: `flows.pipeline` on the same topic (decode, validate, redact, dedup, anomaly
  detection, memory, routing, ledger and dead letters to Kafka; alerts are not sent to the LLM,
  so no endpoint is involved).

Both are launched the way production launches the flow, `python -m bytewax.run
"<module>:<factory>(...)"` (one worker), and get the same process setup: the baseline's
factory calls `runtime.process.setup_process` and, after building its flow,
`runtime.process.tune_gc()`, as `flows.pipeline.build` does; both sources read at most
`KafkaConfig.batch_size` (5,000) records per poll with the same bounded read-ahead
(`queued.max.messages.kbytes`). Each pair runs twice: without recovery (Bytewax's default
10 s epochs) and with recovery on, as production runs (`-r DIR -s 10 -b 0`, a fresh directory
per run, created with `python -m bytewax.recovery DIR 1`; the baseline then snapshots its
source offsets, the pipeline all its state). `--no-recovery` skips the second pair.

Each child times its run from the end of its flow factory (flow built, just before Bytewax
starts running it) to the end of the stream and reports its peak RSS (`VmHWM`); the
baseline's output topic is checked to hold all N events. Prints events/s for
both, their ratio and the pipeline's peak RSS, then the same with recovery; the best of
`--repeat` runs of each is reported. The last line is one JSON object with keys `events`,
`pipeline_events_per_s`, `passthrough_events_per_s`, `ratio`, `peak_rss_mb`,
`passthrough_peak_rss_mb` (recovery off), and `pipeline_events_per_s_with_recovery`,
`passthrough_events_per_s_with_recovery`, `ratio_with_recovery`,
`peak_rss_mb_with_recovery`, `passthrough_peak_rss_mb_with_recovery`.

    python -m bench.throughput --context [--events 200000] [--documents 1000 | --corpus FILE]
        [--top-k 3] [--repeat 1] [--no-recovery]

`--context` measures what retrieval costs a chat event. The input then also has chats (10 %
of the events, support questions from 1,000 sessions, so memory is on for them and for the
business events as always), a knowledge topic holds `--documents` generated support articles
of the chats' tenant (or the documents of `--corpus`, JSONL `{"doc_id", "title", "text"}`, as
`bench.retrieval` reads), and chats go to the task `chat_reply`, answered by the LLM
simulator (`llmsim`, in this process, no latency). The same pipeline runs twice on the same
topics: with retrieval (`knowledge = {top_k = --top-k}` on the task) and without (no
`knowledge` on the task, the knowledge input still read), alternating per repeat; no
passthrough. In the pipeline child, `SqliteKnowledgeIndex.search` is wrapped with a timer,
so each search the flow makes is timed where it runs. Every chat must be answered (the
responses topic is counted) and, with retrieval, cite at least one document. Prints events/s
of both, the retrieval cost per chat event (the difference of the run times over the chats,
and the flow's total search time over the chats) and the search latency p50/p99. The last
line is one JSON object with keys `events`, `chats`, `documents`, `top_k`,
`pipeline_events_per_s`, `pipeline_events_per_s_no_retrieval`, `ratio` (with / without),
`retrieval_us_per_chat`, `search_us_per_chat`, `searches`, `search_p50_ms`, `search_p99_ms`,
`peak_rss_mb`, `peak_rss_mb_no_retrieval`, `cited_share`, and the `_with_recovery` twins.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bytewax.dataflow import Dataflow

REPO = Path(__file__).resolve().parents[1]

SNAPSHOT_INTERVAL_S = 10
"""`-s` of the runs with recovery (production's snapshot interval)."""

RESULT_PREFIX = "BENCH_CHILD "
"""Marks the child's result line on its stdout."""


def peak_rss_mb() -> float:
    """This process's peak RSS (`VmHWM`).

    Not `getrusage(RUSAGE_SELF).ru_maxrss`: Linux carries that over `fork` and `exec`, so a
    child would report at least the parent's RSS at the time it was started.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _report_at_exit(started: float, searches: list[float] | None = None) -> None:
    """Print the child's figures when the process ends (after Bytewax returns); with
    `searches`, the count, total and p50/p99 of the knowledge searches timed into it."""

    def report() -> None:
        seconds = time.perf_counter() - started
        out: dict[str, Any] = {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}
        if searches is not None:
            ordered = sorted(searches)

            def pct(p: float) -> float | None:
                return 1000 * ordered[int(p / 100 * (len(ordered) - 1))] if ordered else None

            out["searches"] = len(ordered)
            out["search_s"] = sum(ordered)
            out["search_p50_ms"], out["search_p99_ms"] = pct(50), pct(99)
        print(RESULT_PREFIX + json.dumps(out), flush=True)

    atexit.register(report)


def _time_searches() -> list[float]:
    """Wrap `SqliteKnowledgeIndex.search` so every call appends its seconds to the list
    returned (this child only: the bench's way to see the searches the flow makes)."""
    from state.knowledge import SqliteKnowledgeIndex

    seconds: list[float] = []
    search = SqliteKnowledgeIndex.search

    def timed(self: SqliteKnowledgeIndex, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return search(self, *args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - t0)

    SqliteKnowledgeIndex.search = timed  # type: ignore[method-assign]
    return seconds


def passthrough_flow(bootstrap: str, topic: str, out_topic: str) -> Dataflow:
    """The baseline, for `python -m bytewax.run "bench.throughput:passthrough_flow(...)"`."""
    import bytewax.operators as op
    from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource

    from config.models import AppConfig, KafkaConfig
    from runtime.process import setup_process, tune_gc

    setup_process(AppConfig(name="passthrough"))
    kafka = KafkaConfig()
    flow = Dataflow("passthrough")
    src = op.input(
        "in",
        flow,
        KafkaSource(
            [bootstrap],
            [topic],
            tail=False,
            batch_size=kafka.batch_size,
            add_config={"queued.max.messages.kbytes": str(kafka.queued_max_messages_kbytes)},
        ),
    )
    out = op.map("map", src, lambda m: KafkaSinkMessage(m.key, m.value))  # type: ignore[union-attr]
    op.output("out", out, KafkaSink([bootstrap], out_topic))
    tune_gc()
    _report_at_exit(time.perf_counter())
    return flow


def pipeline_flow(config: str, time_searches: bool = False) -> Dataflow:
    """`flows.pipeline.build(config)` (process setup, `-r` check, `tune_gc`), timed; with
    `time_searches`, every knowledge search is timed too."""
    from flows.pipeline import build

    searches = _time_searches() if time_searches else None
    flow = build(config)
    _report_at_exit(time.perf_counter(), searches)
    return flow


def _fresh_recovery(directory: Path) -> Path:
    """A new recovery directory with one partition, as an operator would create it."""
    directory.mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-m", "bytewax.recovery", str(directory), "1"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    return directory


def _run_child(
    args: list[Any], recovery: Path | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run `["passthrough", bootstrap, topic, out]` or `["pipeline", config(, time_searches)]`
    under `python -m bytewax.run`, with recovery in `recovery` (a fresh directory) if given."""
    kind, *rest = args
    factory = "passthrough_flow" if kind == "passthrough" else "pipeline_flow"
    call = f"bench.throughput:{factory}({', '.join(repr(a) for a in rest)})"
    cmd = [sys.executable, "-m", "bytewax.run", call]
    if recovery is not None:
        cmd += ["-r", str(_fresh_recovery(recovery)), "-s", str(SNAPSHOT_INTERVAL_S), "-b", "0"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        msg = f"child {kind} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        raise RuntimeError(msg)
    result: dict[str, Any] = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    return result


@dataclass(frozen=True)
class Context:
    """What a `--context` run adds to the config: the LLM endpoint, the knowledge topic and
    the chat task's `top_k` (None: the task does not retrieve)."""

    llm_url: str
    knowledge_topic: str
    top_k: int | None


def _config(
    bootstrap: str,
    topic: str,
    outs: dict[str, str],
    workdir: Path,
    context: Context | None = None,
) -> Path:
    knowledge, llm_url, chat_task, tasks = "", "http://127.0.0.1:9/v1", "none", ""
    if context is not None:
        knowledge = f'knowledge = {{ name = "knowledge", topic = "{context.knowledge_topic}" }}'
        llm_url, chat_task = context.llm_url, "chat_reply"
        use = "" if context.top_k is None else f"knowledge = {{ top_k = {context.top_k} }}"
        tasks = f'[[llm.tasks]]\nname = "chat_reply"\nschema_name = "chat_reply"\n{use}\n'
    cfg = workdir / "bench.toml"
    cfg.write_text(
        f"""
[app]
name = "bench"
profile = "dev"
[kafka]
brokers = ["{bootstrap}"]
[input]
kind = "kafka"
tail = false
sources = [{{ name = "events", topic = "{topic}", adapter = "auto" }}]
{knowledge}
[output]
kind = "kafka"
responses = "{outs["responses"]}"
alerts = "{outs["alerts"]}"
dead_letters = "{outs["dead_letters"]}"
audit = "{outs["audit"]}"
ledger = "{outs["ledger"]}"
[stores]
dir = "{workdir / "stores"}"
[llm]
base_url = "{llm_url}"
routes = [
  {{ kind = "chat", task = "{chat_task}" }},
  {{ kind = "alert", task = "none" }},
  {{ kind = "metric", task = "none" }},
  {{ kind = "business", task = "none" }},
]
{tasks}"""
    )
    return cfg


# --- --context: support articles, chats, retrieval on and off ------------------------------

CONTEXT_TENANT = "acme"
"""The tenant of the chats and of the knowledge documents of a `--context` run."""

_PRODUCTS = (
    "billing", "exports", "single sign-on", "the dashboard", "the API", "the mobile app",
    "invoices", "reports", "alerts", "webhooks", "integrations", "workspaces",
)  # fmt: skip
_ACTIONS = (
    "reset", "configure", "enable", "disable", "troubleshoot", "migrate", "schedule", "share",
    "delete", "restore", "rotate", "download",
)  # fmt: skip
_OBJECTS = (
    "password", "two-factor login", "CSV export", "team members", "payment method", "API key",
    "notifications", "data retention", "custom domain", "audit log", "plan", "tax settings",
    "time zone", "dashboards", "webhook secret", "user roles",
)  # fmt: skip
_STEPS = (
    "Open {p} and choose Settings, then {o}.",
    "Only an owner or an admin can {a} the {o}; ask one if the option is greyed out.",
    "To {a} the {o}, select it in the list and confirm with Save.",
    "If {p} shows an error, wait a minute and try again; the change can take a while.",
    "Changes to the {o} are recorded in the audit log with your name and the time.",
    "The {o} of a workspace applies to every member unless a team overrides it.",
    "You can {a} the {o} from the command line too, with the same permissions.",
    "Contact support with the request id shown if the {o} does not update.",
)


def support_articles(n: int, seed: int = 3) -> list[tuple[str, bytes]]:
    """`n` knowledge documents of `CONTEXT_TENANT`: how-to articles, 5-8 steps each."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, o, p = rng.choice(_ACTIONS), rng.choice(_OBJECTS), rng.choice(_PRODUCTS)
        steps = rng.sample(_STEPS, rng.randint(5, 8))
        doc_id = f"kb-{i:05d}"
        doc = {
            "tenant": CONTEXT_TENANT,
            "doc_id": doc_id,
            "version": 1,
            "title": f"How to {a} the {o} in {p}",
            "text": " ".join(t.format(a=a, o=o, p=p) for t in steps),
        }
        out.append((doc_id, json.dumps(doc).encode()))
    return out


def corpus_documents(path: str) -> list[tuple[str, bytes]]:
    """The documents of a JSONL corpus (`{"doc_id", "title", "text"}`) as knowledge
    documents of `CONTEXT_TENANT`, version 0."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                doc_id = str(d["doc_id"])
                doc = {
                    "tenant": CONTEXT_TENANT,
                    "doc_id": doc_id,
                    "version": 0,
                    "title": d.get("title") or "",
                    "text": d.get("text") or "",
                }
                out.append((doc_id, json.dumps(doc).encode()))
    return out


def support_chats(n: int, sessions: int = 1000, seed: int = 5) -> list[tuple[str, bytes]]:
    """`n` chat messages of `CONTEXT_TENANT`: questions about the articles' subjects."""
    rng = random.Random(seed)
    forms = (
        "How do I {a} the {o} in {p}?",
        "I can't {a} my {o}, {p} says something went wrong.",
        "Where can I {a} the {o}?",
        "Is there a way to {a} {o} for the whole team in {p}?",
    )
    t0 = time.time() - n * 0.01
    out = []
    for i in range(n):
        text = rng.choice(forms).format(
            a=rng.choice(_ACTIONS), o=rng.choice(_OBJECTS), p=rng.choice(_PRODUCTS)
        )
        doc = {
            "message_id": f"q-{i:07d}",
            "session_id": f"s-{i % sessions:04d}",
            "tenant": CONTEXT_TENANT,
            "user_id": f"u-{i % sessions:04d}",
            "text": text,
            "sent_at": datetime.fromtimestamp(t0 + i * 0.01, UTC).isoformat(),
        }
        out.append((doc["message_id"], json.dumps(doc).encode()))
    return out


def _topic_size(bootstrap: str, topic: str, expected: int) -> int:
    """Records in `topic`, counted by reading them (Tansu under-reports watermarks)."""
    from support.broker import consume_all

    return len(consume_all(bootstrap, topic, expected=expected, idle_s=5.0, timeout_s=120.0))


def _best(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    return b if a is None or b["seconds"] < a["seconds"] else a


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=1, help="runs of each; the best is reported")
    p.add_argument("--no-recovery", action="store_true", help="skip the runs with recovery")
    p.add_argument("--context", action="store_true", help="retrieval on against off (chats)")
    p.add_argument("--documents", type=int, default=1000, help="--context: support articles")
    p.add_argument("--corpus", help="--context: JSONL documents instead of the articles")
    p.add_argument("--top-k", type=int, default=3, help="--context: the chat task's top_k")
    args = p.parse_args(argv)
    if args.context:
        return context_main(args)

    from support import workload
    from support.broker import TansuBroker, create_topic, produce

    n = args.events
    records = workload.metrics(int(n * 0.7), series=1000)
    records += workload.business(int(n * 0.28), accounts=1000)
    records += workload.malformed(n - len(records))
    # Interleave kinds deterministically, as a mixed topic would have them.
    records.sort(key=lambda r: zlib.crc32(r[1]) % 1000)
    variants = (False,) if args.no_recovery else (False, True)
    best: dict[tuple[str, bool], dict[str, Any]] = {}
    with TansuBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        bootstrap = broker.bootstrap
        topic = create_topic(bootstrap, "bench-in", 1)
        t0 = time.perf_counter()
        produce(bootstrap, topic, [v for _, v in records])
        print(f"produced {n} events in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for i in range(args.repeat):
            # Alternate the four runs, so a change in the machine's load hits them alike.
            for rec in variants:
                tag = f"{i}{'r' if rec else ''}"
                work = Path(tmp) / f"run{tag}"
                work.mkdir()
                out = create_topic(bootstrap, f"bench-pass-{tag}", 1)
                r = _run_child(
                    ["passthrough", bootstrap, topic, out],
                    work / "recovery-pass" if rec else None,
                )
                written = _topic_size(bootstrap, out, n)
                if written != n:
                    msg = f"passthrough wrote {written} of {n} events to {out}"
                    raise RuntimeError(msg)
                best[("passthrough", rec)] = _best(best.get(("passthrough", rec)), r)
                print(f"  run {tag} passthrough {r['seconds']:.1f} s", file=sys.stderr)
                outs = {
                    k: create_topic(bootstrap, f"bench-{k}-{tag}", 1)
                    for k in ("responses", "alerts", "dead_letters", "audit", "ledger")
                }
                r = _run_child(
                    ["pipeline", str(_config(bootstrap, topic, outs, work))],
                    work / "recovery-pipe" if rec else None,
                )
                best[("pipeline", rec)] = _best(best.get(("pipeline", rec)), r)
                print(f"  run {tag} pipeline    {r['seconds']:.1f} s", file=sys.stderr)

    result: dict[str, Any] = {"events": n}
    for rec in variants:
        suffix = "_with_recovery" if rec else ""
        bp, bq = best[("passthrough", rec)], best[("pipeline", rec)]
        pass_rate, pipe_rate = n / bp["seconds"], n / bq["seconds"]
        label = f"recovery on (-r DIR -s {SNAPSHOT_INTERVAL_S})" if rec else "recovery off"
        print(f"{label}:")
        print(f"  passthrough: {pass_rate:10,.0f} events/s   peak RSS {bp['peak_rss_mb']:.0f} MB")
        print(f"  pipeline:    {pipe_rate:10,.0f} events/s   peak RSS {bq['peak_rss_mb']:.0f} MB")
        print(f"  ratio pipeline/passthrough: {pipe_rate / pass_rate:.2f}")
        result.update(
            {
                f"pipeline_events_per_s{suffix}": round(pipe_rate),
                f"passthrough_events_per_s{suffix}": round(pass_rate),
                f"ratio{suffix}": round(pipe_rate / pass_rate, 3),
                f"peak_rss_mb{suffix}": round(bq["peak_rss_mb"], 1),
                f"passthrough_peak_rss_mb{suffix}": round(bp["peak_rss_mb"], 1),
            }
        )
    result["repeat"] = args.repeat
    result["snapshot_interval_s"] = SNAPSHOT_INTERVAL_S
    print(json.dumps(result))
    return 0


def context_main(args: argparse.Namespace) -> int:
    """`--context`: the pipeline with and without retrieval on the same topics."""
    from llmsim import LLMSimulator, SimConfig
    from support import workload
    from support.broker import TansuBroker, consume_all, create_topic, produce

    n = args.events
    chats = support_chats(int(n * 0.1))
    records = workload.metrics(int(n * 0.6), series=1000)
    records += workload.business(int(n * 0.28), accounts=1000)
    records += chats
    records += workload.malformed(n - len(records))
    records.sort(key=lambda r: zlib.crc32(r[1]) % 1000)
    documents = corpus_documents(args.corpus) if args.corpus else support_articles(args.documents)
    variants = (False,) if args.no_recovery else (False, True)
    env = {**os.environ, "OPENAI_API_KEY": "sim-key"}
    best: dict[tuple[bool, bool], dict[str, Any]] = {}
    cited: dict[bool, list[float]] = {False: [], True: []}
    with (
        TansuBroker() as broker,
        LLMSimulator(SimConfig(latency_ms=0, max_concurrency=1024)) as sim,
        tempfile.TemporaryDirectory() as tmp,
    ):
        bootstrap = broker.bootstrap
        topic = create_topic(bootstrap, "bench-in", 1)
        knowledge = create_topic(bootstrap, "bench-knowledge", 1)
        t0 = time.perf_counter()
        produce(bootstrap, knowledge, documents)
        produce(bootstrap, topic, [v for _, v in records])
        print(
            f"produced {len(documents)} documents and {n} events ({len(chats)} chats) "
            f"in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        for i in range(args.repeat):
            for rec in variants:
                for retrieval in (True, False):
                    tag = f"{i}{'r' if rec else ''}{'k' if retrieval else ''}"
                    work = Path(tmp) / f"run{tag}"
                    work.mkdir()
                    outs = {
                        k: create_topic(bootstrap, f"bench-{k}-{tag}", 1)
                        for k in ("responses", "alerts", "dead_letters", "audit", "ledger")
                    }
                    ctx = Context(sim.base_url, knowledge, args.top_k if retrieval else None)
                    cfg = _config(bootstrap, topic, outs, work, ctx)
                    r = _run_child(
                        ["pipeline", str(cfg), retrieval],
                        work / "recovery" if rec else None,
                        env,
                    )
                    answers = [
                        json.loads(m.value)
                        for m in consume_all(
                            bootstrap, outs["responses"], expected=len(chats), idle_s=5.0
                        )
                        if m.value is not None
                    ]
                    if len(answers) != len(chats):
                        msg = f"run {tag}: {len(answers)} responses for {len(chats)} chats"
                        raise RuntimeError(msg)
                    share = sum(1 for a in answers if a["citations"]) / len(answers)
                    if retrieval and share == 0:
                        raise RuntimeError(f"run {tag}: no response cites a document")
                    cited[rec].append(share if retrieval else 0.0)
                    best[(rec, retrieval)] = _best(best.get((rec, retrieval)), r)
                    print(f"  run {tag} pipeline {r['seconds']:.1f} s", file=sys.stderr)

    result: dict[str, Any] = {
        "events": n,
        "chats": len(chats),
        "documents": len(documents),
        "top_k": args.top_k,
    }
    for rec in variants:
        suffix = "_with_recovery" if rec else ""
        on, off = best[(rec, True)], best[(rec, False)]
        on_rate, off_rate = n / on["seconds"], n / off["seconds"]
        us_per_chat = 1e6 * (on["seconds"] - off["seconds"]) / len(chats)
        search_us = 1e6 * on["search_s"] / len(chats)
        label = f"recovery on (-r DIR -s {SNAPSHOT_INTERVAL_S})" if rec else "recovery off"
        print(f"{label}, {len(chats)} chats in {n} events, {len(documents)} documents:")
        print(f"  retrieval on (top {args.top_k}): {on_rate:10,.0f} events/s")
        print(f"  retrieval off:       {off_rate:10,.0f} events/s")
        print(
            f"  retrieval per chat: {us_per_chat:.0f} us (run time difference), "
            f"{search_us:.0f} us searching ({on['searches']} searches, p50 "
            f"{on['search_p50_ms']:.3f} ms, p99 {on['search_p99_ms']:.3f} ms)"
        )
        result.update(
            {
                f"pipeline_events_per_s{suffix}": round(on_rate),
                f"pipeline_events_per_s_no_retrieval{suffix}": round(off_rate),
                f"ratio{suffix}": round(on_rate / off_rate, 3),
                f"retrieval_us_per_chat{suffix}": round(us_per_chat, 1),
                f"search_us_per_chat{suffix}": round(search_us, 1),
                f"searches{suffix}": on["searches"],
                f"search_p50_ms{suffix}": round(on["search_p50_ms"], 3),
                f"search_p99_ms{suffix}": round(on["search_p99_ms"], 3),
                f"peak_rss_mb{suffix}": round(on["peak_rss_mb"], 1),
                f"peak_rss_mb_no_retrieval{suffix}": round(off["peak_rss_mb"], 1),
                f"cited_share{suffix}": round(min(x for x in cited[rec] if x > 0), 4),
            }
        )
    result["repeat"] = args.repeat
    result["snapshot_interval_s"] = SNAPSHOT_INTERVAL_S
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
