"""Throughput of the non-LLM path through a real broker, against a Bytewax passthrough.

    python -m bench.throughput [--events 200000] [--repeat 1]

Starts a Tansu broker, writes N events (metric readings, business events, 2 % malformed) to
one input topic, then runs, each in a fresh process on the same data:

- the baseline: Bytewax's own `KafkaSource` → `op.map` → `KafkaSink` (reading up to 5,000
  records per poll, as the pipeline's source does by default);
- the pipeline: `flows.pipeline` on the same topic (decode, validate, redact, dedup, anomaly
  detection, memory, routing, ledger and dead letters to Kafka; alerts are not sent to the LLM,
  so no endpoint is involved).

Each child times its run from the first input to the end of the stream and reports its peak
RSS. Prints events/s for both, their ratio and the pipeline's peak RSS; the last line is one
JSON object with keys `events`, `pipeline_events_per_s`, `passthrough_events_per_s`, `ratio`,
`peak_rss_mb`, `passthrough_peak_rss_mb`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _child_passthrough(bootstrap: str, topic: str, out_topic: str) -> dict[str, Any]:
    import bytewax.operators as op
    from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
    from bytewax.dataflow import Dataflow
    from bytewax.testing import run_main

    flow = Dataflow("passthrough")
    src = op.input("in", flow, KafkaSource([bootstrap], [topic], tail=False, batch_size=5000))
    out = op.map("map", src, lambda m: KafkaSinkMessage(m.key, m.value))  # type: ignore[union-attr]
    op.output("out", out, KafkaSink([bootstrap], out_topic))
    started = time.perf_counter()
    run_main(flow)
    return {"seconds": time.perf_counter() - started}


def _child_pipeline(config: str) -> dict[str, Any]:
    from bytewax.testing import run_main

    from flows.pipeline import build

    flow = build(config)
    started = time.perf_counter()
    run_main(flow)
    return {"seconds": time.perf_counter() - started}


def _run_child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.throughput", "--child", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        msg = f"child {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        raise RuntimeError(msg)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _config(bootstrap: str, topic: str, outs: dict[str, str], workdir: Path) -> Path:
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
base_url = "http://127.0.0.1:9/v1"
routes = [
  {{ kind = "chat", task = "none" }},
  {{ kind = "alert", task = "none" }},
  {{ kind = "metric", task = "none" }},
  {{ kind = "business", task = "none" }},
]
"""
    )
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=1, help="runs of each; the best is reported")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        kind, *rest = args.child
        result = _child_passthrough(*rest) if kind == "passthrough" else _child_pipeline(*rest)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return 0

    from support import workload
    from support.broker import TansuBroker, create_topic, produce

    n = args.events
    records = workload.metrics(int(n * 0.7), series=1000)
    records += workload.business(int(n * 0.28), accounts=1000)
    records += workload.malformed(n - len(records))
    # Interleave kinds deterministically, as a mixed topic would have them.
    records.sort(key=lambda r: zlib.crc32(r[1]) % 1000)
    with TansuBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        bootstrap = broker.bootstrap
        topic = create_topic(bootstrap, "bench-in", 1)
        t0 = time.perf_counter()
        produce(bootstrap, topic, [v for _, v in records])
        print(f"produced {n} events in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        best_pass: dict[str, Any] | None = None
        best_pipe: dict[str, Any] | None = None
        for i in range(args.repeat):
            out = create_topic(bootstrap, f"bench-pass-{i}", 1)
            r = _run_child(["passthrough", bootstrap, topic, out])
            best_pass = r if best_pass is None or r["seconds"] < best_pass["seconds"] else best_pass
            outs = {
                k: create_topic(bootstrap, f"bench-{k}-{i}", 1)
                for k in ("responses", "alerts", "dead_letters", "audit", "ledger")
            }
            work = Path(tmp) / f"run{i}"
            work.mkdir()
            r = _run_child(["pipeline", str(_config(bootstrap, topic, outs, work))])
            best_pipe = r if best_pipe is None or r["seconds"] < best_pipe["seconds"] else best_pipe
    assert best_pass is not None and best_pipe is not None
    pass_rate = n / best_pass["seconds"]
    pipe_rate = n / best_pipe["seconds"]
    print(f"passthrough: {pass_rate:10,.0f} events/s   peak RSS {best_pass['peak_rss_mb']:.0f} MB")
    print(f"pipeline:    {pipe_rate:10,.0f} events/s   peak RSS {best_pipe['peak_rss_mb']:.0f} MB")
    print(f"ratio pipeline/passthrough: {pipe_rate / pass_rate:.2f}")
    print(
        json.dumps(
            {
                "events": n,
                "pipeline_events_per_s": round(pipe_rate),
                "passthrough_events_per_s": round(pass_rate),
                "ratio": round(pipe_rate / pass_rate, 3),
                "peak_rss_mb": round(best_pipe["peak_rss_mb"], 1),
                "passthrough_peak_rss_mb": round(best_pass["peak_rss_mb"], 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
