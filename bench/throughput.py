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
"""

from __future__ import annotations

import argparse
import atexit
import json
import resource
import subprocess
import sys
import tempfile
import time
import zlib
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


def _report_at_exit(started: float) -> None:
    """Print the child's figures when the process ends (after Bytewax returns)."""

    def report() -> None:
        seconds = time.perf_counter() - started
        rss = peak_rss_mb()
        print(RESULT_PREFIX + json.dumps({"seconds": seconds, "peak_rss_mb": rss}), flush=True)

    atexit.register(report)


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


def pipeline_flow(config: str) -> Dataflow:
    """`flows.pipeline.build(config)` (process setup, `-r` check, `tune_gc`), timed."""
    from flows.pipeline import build

    flow = build(config)
    _report_at_exit(time.perf_counter())
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


def _run_child(args: list[str], recovery: Path | None = None) -> dict[str, Any]:
    """Run `["passthrough", bootstrap, topic, out]` or `["pipeline", config]` under
    `python -m bytewax.run`, with recovery in `recovery` (a fresh directory) if given."""
    kind, *rest = args
    factory = "passthrough_flow" if kind == "passthrough" else "pipeline_flow"
    call = f"bench.throughput:{factory}({', '.join(repr(a) for a in rest)})"
    cmd = [sys.executable, "-m", "bytewax.run", call]
    if recovery is not None:
        cmd += ["-r", str(_fresh_recovery(recovery)), "-s", str(SNAPSHOT_INTERVAL_S), "-b", "0"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        msg = f"child {kind} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        raise RuntimeError(msg)
    result: dict[str, Any] = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
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
    args = p.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
