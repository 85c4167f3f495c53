"""The bounded LLM stage under a slow endpoint: pending items and RSS stay bounded, nothing lost.

    python -m bench.backpressure [--chats 50000] [--latency-s 2] [--server-concurrency 1]
                                 [--max-pending 1024] [--batch-size 128] [--read-batch 128]
                                 [--baseline-latency-s 0] [--no-baseline] [--recovery]

Writes `--chats` chat messages (`support.workload.chats`) to one JSON-lines file and runs the
whole pipeline on it (`flows.pipeline.build`, file input, file outputs), the way production
launches it: `python -m bytewax.run "bench.backpressure:pipeline_flow(...)"`, one worker, a
fresh process per run (`--recovery`: with a fresh recovery directory, `-s --snapshot-s -b 0`,
so the LLM stage's pending items are snapshotted every epoch as in production). The LLM
endpoint is the simulator (`llmsim`, in this process) with a fixed service time of
`--latency-s` per request and `max_concurrency = --server-concurrency` (it answers 429 to a
request beyond that); the client runs with `llm.concurrency` equal to it, not adaptive, so no
request is refused and none is wasted.

Settings of the run (all in the generated TOML, printed by `--print-config`):

- `llm.max_pending_items = --max-pending`: the bound under test;
- the chat task packs `--batch-size` items per request (`max_batch`; `max_batch_tokens` high
  enough that batches are cut by count), so the endpoint's throughput is
  `server concurrency x batch size / latency` items/s. The production default (16) would take
  50,000 x 2 s / 16 = 104 min for the default run; 128 takes 391 requests x 2 s = 13 min;
- `kafka.batch_size = --read-batch`, the lines the file source reads per poll: the bound's
  overshoot (see `runtime.backpressure`) is one read batch per input partition, here one
  file, and with read batch = batch size every read fills one request;
- `max_pending / batch_size` (8) requests' worth may wait, so a full batch is always ready
  when the endpoint frees a slot (2 would do); the queueing an item sees is at most that many
  service times.

The child samples, on a thread, every `--sample-s`: `runtime.backpressure.pending()` (items
the LLM stage holds) and `VmRSS` from `/proc/self/status`; at exit it reports the highest of
each, `VmHWM` (the peak RSS; not `ru_maxrss`, which Linux carries over fork and exec), the
highest count the sources saw and the reads they skipped (`backpressure.stats()`), and a
timeline. Afterwards the outputs are counted: every chat must be answered exactly once
(`responses`, task `chat_reply`) or be a dead letter; `lost` counts chats that are neither,
`repeated` answers beyond the first.

A baseline runs the same pipeline with the same settings on the same chats against a fast
endpoint (`--baseline-latency-s`, default 0): there the stage drains as fast as the pipeline
feeds it. Its peak RSS is the reference: with the bound, a slow endpoint leaves its backlog in
the input, not in memory, so `rss_ratio` (slow / fast) should be close to 1.

Targets: `lost == 0`, `repeated == 0`, `answered + dead letters == chats`,
`max_pending_seen <= max_pending_limit + read batch` (the documented overshoot) and
`rss_ratio <= --max-rss-ratio` (1.25). The last line is one JSON object with keys `chats`,
`answered`, `lost`, `max_pending_seen`, `max_pending_limit`, `peak_rss_mib`,
`baseline_peak_rss_mib`, `rss_ratio`, `seconds` (the slow run, process start to exit), and
more (`repeated`, `dead_letters`, `overshoot_allowed`, `requests`, `requests_429`,
`mean_batch`, `paused_reads`, `baseline_*`, `targets_met`).

Measured (the defaults, on a busy 2-core machine): the slow run took 790 s for 391 requests of
127.9 items on average (the endpoint alone needs 782 s), no 429; every one of the 50,000 chats
answered once, none lost or dead-lettered; pending at most 1,024 (the bound, reached within
seconds and held to the end; 37,886 reads skipped); peak RSS 110.2 MiB against 106.8 MiB for
the fast run (10 s, pending at most 640, never paused): ratio 1.03. RSS grows with the events
processed in both runs alike (76 to about 107 MiB over 50,000 chats), not with the backlog.
For contrast, 10,000 chats at 0.2 s with the bound lifted (`--max-pending 100000`) put 9,616
items in the stage and peaked at 146.6 MiB, against 95.5 MiB with the bound of 1,024.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bytewax.dataflow import Dataflow

from llmsim import LLMSimulator, SimConfig
from support import workload

REPO = Path(__file__).resolve().parents[1]
MODEL = "sim-1"
TASK = "chat_reply"
TIMELINE_POINTS = 12
"""Rows of the printed timeline per run."""


# --------------------------------------------------------------------------- the child


def proc_status_kib(key: str) -> int:
    """A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`); 0 where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler:
    """Samples the LLM stage's pending items and this process's RSS on a daemon thread."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.started = time.monotonic()
        self.max_pending = 0
        self.max_rss_kib = 0
        self.samples = 0
        self.timeline: list[tuple[float, int, int]] = []  # (seconds, pending, rss kib)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        from runtime import backpressure

        next_point = 0.0
        while not self._stop.wait(self.every_s):
            self.sample(backpressure.pending())
            t = time.monotonic() - self.started
            if t >= next_point:
                self.timeline.append((round(t, 2), self.last_pending, self.last_rss_kib))
                next_point = t + 1.0

    def sample(self, pending: int) -> None:
        self.last_pending = pending
        self.last_rss_kib = proc_status_kib("VmRSS")
        self.max_pending = max(self.max_pending, pending)
        self.max_rss_kib = max(self.max_rss_kib, self.last_rss_kib)
        self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def pipeline_flow(config: str, result_path: str, sample_s: float) -> Dataflow:
    """`flows.pipeline.build(config)`, sampled; writes the figures to `result_path` at exit.

    For `python -m bytewax.run "bench.backpressure:pipeline_flow('cfg.toml', 'r.json', 0.01)"`.
    """
    from flows.pipeline import build
    from runtime import backpressure

    flow = build(config)
    sampler = Sampler(sample_s).start()

    def report() -> None:
        sampler.stop()
        seen = backpressure.stats()
        sampler.sample(seen.pending)
        result = {
            "seconds": time.monotonic() - sampler.started,
            "max_pending_sampled": sampler.max_pending,
            "max_pending_at_reads": seen.high_water,
            "pending_at_exit": seen.pending,
            "paused_reads": seen.paused_reads,
            "limit": seen.limit,
            "samples": sampler.samples,
            "max_rss_kib": sampler.max_rss_kib,
            "vm_hwm_kib": proc_status_kib("VmHWM"),
            "timeline": sampler.timeline,
        }
        Path(result_path).write_text(json.dumps(result))

    atexit.register(report)
    return flow


# --------------------------------------------------------------------------- the parent


def config_toml(
    *,
    base_url: str,
    input_path: Path,
    workdir: Path,
    concurrency: int,
    max_pending: int,
    batch_size: int,
    read_batch: int,
    latency_s: float,
) -> str:
    """The deployment of one run: file in, files out, the simulator as the endpoint."""
    # Batches are cut by count: the chat items here estimate well under 1,000 tokens each.
    max_batch_tokens = batch_size * 1000
    # The simulator's packed answers are about 25 tokens per item; leave room for twice that.
    max_tokens = max(1024, 64 * batch_size)
    timeout_s = max(30.0, 10 * latency_s)
    return f"""
[app]
name = "bench-backpressure"
profile = "dev"
progress_every_s = 30

[kafka]
batch_size = {read_batch}

[input]
kind = "file"
sources = [{{ name = "chats", path = "{input_path}", adapter = "auto" }}]

[output]
kind = "file"
dir = "{workdir / "out"}"

[stores]
dir = "{workdir / "stores"}"

[llm]
base_url = "{base_url}"
concurrency = {concurrency}
adaptive_concurrency = false
max_pending_items = {max_pending}
timeout_s = {timeout_s}

[[llm.tasks]]
name = "{TASK}"
schema_name = "chat_reply"
model = "{MODEL}"
mode = "pack"
max_batch = {batch_size}
max_batch_tokens = {max_batch_tokens}
max_wait_ms = 200
max_tokens = {max_tokens}

[[llm.tasks]]
name = "explain_anomaly"
schema_name = "anomaly_explanation"
model = "{MODEL}"
mode = "pack"
max_batch = 4
max_wait_ms = 0
urgent = true
"""


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


@dataclass
class RunResult:
    name: str
    latency_s: float
    chats: int
    answered: int
    repeated: int
    dead_letters: int
    lost: int
    other_responses: int
    requests: int
    requests_429: int
    mean_batch: float
    child: dict[str, Any]
    wall_seconds: float

    @property
    def max_pending_seen(self) -> int:
        return max(int(self.child["max_pending_sampled"]), int(self.child["max_pending_at_reads"]))

    @property
    def peak_rss_mib(self) -> float:
        return max(int(self.child["vm_hwm_kib"]), int(self.child["max_rss_kib"])) / 1024

    @property
    def seconds(self) -> float:
        return float(self.child["seconds"])

    def figures(self, prefix: str = "") -> dict[str, Any]:
        return {
            f"{prefix}latency_s": self.latency_s,
            f"{prefix}answered": self.answered,
            f"{prefix}repeated": self.repeated,
            f"{prefix}dead_letters": self.dead_letters,
            f"{prefix}lost": self.lost,
            f"{prefix}max_pending_seen": self.max_pending_seen,
            f"{prefix}max_pending_sampled": self.child["max_pending_sampled"],
            f"{prefix}max_pending_at_reads": self.child["max_pending_at_reads"],
            f"{prefix}pending_at_exit": self.child["pending_at_exit"],
            f"{prefix}paused_reads": self.child["paused_reads"],
            f"{prefix}peak_rss_mib": round(self.peak_rss_mib, 1),
            f"{prefix}seconds": round(self.seconds, 1),
            f"{prefix}requests": self.requests,
            f"{prefix}requests_429": self.requests_429,
            f"{prefix}mean_batch": round(self.mean_batch, 1),
            f"{prefix}samples": self.child["samples"],
        }


def count_outputs(out: Path, ids: set[str]) -> dict[str, int]:
    """Answers, repeats, dead letters and losses of the chats `ids` in the run's outputs."""
    answers: Counter[str] = Counter()
    other = 0
    for r in _jsonl(out / "responses.jsonl"):
        if r.get("task") == TASK and r.get("item_id") in ids:
            answers[r["item_id"]] += 1
        else:
            other += 1
    dead = {d.get("event_id") for d in _jsonl(out / "dead_letters.jsonl")} & ids
    answered = set(answers)
    return {
        "answered": len(answered),
        "repeated": sum(answers.values()) - len(answered),
        "dead_letters": len(dead - answered),
        "lost": len(ids - answered - dead),
        "other_responses": other,
    }


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


def run_case(
    name: str,
    args: argparse.Namespace,
    latency_s: float,
    input_path: Path,
    ids: set[str],
    root: Path,
) -> RunResult:
    """One fresh simulator, one fresh pipeline process on the input; its counted outputs."""
    workdir = root / name
    workdir.mkdir()
    sim_cfg = SimConfig(latency_ms=latency_s * 1000, max_concurrency=args.server_concurrency)
    with LLMSimulator(sim_cfg) as sim:
        cfg = workdir / "bench.toml"
        cfg.write_text(
            config_toml(
                base_url=sim.base_url,
                input_path=input_path,
                workdir=workdir,
                concurrency=args.server_concurrency,
                max_pending=args.max_pending,
                batch_size=args.batch_size,
                read_batch=args.read_batch,
                latency_s=latency_s,
            )
        )
        result_path = workdir / "result.json"
        factory = "bench.backpressure:pipeline_flow"
        call = f"{factory}({str(cfg)!r}, {str(result_path)!r}, {args.sample_s!r})"
        cmd = [sys.executable, "-m", "bytewax.run", call]
        if args.recovery:
            recovery = _fresh_recovery(workdir / "recovery")
            cmd += ["-r", str(recovery), "-s", str(args.snapshot_s), "-b", "0"]
        flow_log = workdir / "flow.log"
        started = time.monotonic()
        with flow_log.open("wb") as out:
            proc = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=False)
        wall = time.monotonic() - started
        if proc.returncode != 0 or not result_path.exists():
            tail = flow_log.read_text(errors="replace")[-3000:]
            msg = f"{name}: pipeline exited with {proc.returncode}:\n{tail}"
            raise RuntimeError(msg)
        requests = sim.requests()
    child: dict[str, Any] = json.loads(result_path.read_text())
    counts = count_outputs(workdir / "out", ids)
    statuses = Counter(int(r["status"]) for r in requests)
    sizes = [len(json.loads(body)) for r in requests if r["status"] == 200 and (body := _events(r))]
    return RunResult(
        name=name,
        latency_s=latency_s,
        chats=len(ids),
        answered=counts["answered"],
        repeated=counts["repeated"],
        dead_letters=counts["dead_letters"],
        lost=counts["lost"],
        other_responses=counts["other_responses"],
        requests=len(requests),
        requests_429=statuses[429],
        mean_batch=sum(sizes) / max(1, len(sizes)),
        child=child,
        wall_seconds=wall,
    )


def _events(entry: dict[str, Any]) -> str:
    """The JSON array of items in a logged request's `<events>` user message."""
    content = (entry.get("messages") or [{}])[-1].get("content") or ""
    if not content.startswith("<events>"):
        return ""
    return str(content).removeprefix("<events>\n").removesuffix("\n</events>")


def _timeline(r: RunResult) -> list[str]:
    points = r.child["timeline"]
    if not points:
        return []
    step = max(1, math.ceil(len(points) / TIMELINE_POINTS))
    chosen = points[::step]
    if chosen[-1] != points[-1]:
        chosen.append(points[-1])
    cells = ", ".join(f"{t:.0f}s {p}/{kib / 1024:.0f}" for t, p, kib in chosen)
    return [f"  {r.name} timeline (t pending/RSS MiB): {cells}"]


_COLUMNS = (
    ("run", 8, "{:>8}"),
    ("latency", 8, "{:>7g}s"),
    ("answered", 9, "{:>9d}"),
    ("repeated", 8, "{:>8d}"),
    ("dead", 5, "{:>5d}"),
    ("lost", 5, "{:>5d}"),
    ("pending max", 11, "{:>11d}"),
    ("paused reads", 12, "{:>12d}"),
    ("RSS MiB", 8, "{:>8.1f}"),
    ("requests", 8, "{:>8d}"),
    ("429s", 5, "{:>5d}"),
    ("batch", 6, "{:>6.1f}"),
    ("seconds", 8, "{:>8.1f}"),
)


def _table(results: list[RunResult]) -> list[str]:
    lines = [" ".join(f"{name:>{w}}" for name, w, _ in _COLUMNS)]
    for r in results:
        cells = (
            r.name,
            r.latency_s,
            r.answered,
            r.repeated,
            r.dead_letters,
            r.lost,
            r.max_pending_seen,
            int(r.child["paused_reads"]),
            r.peak_rss_mib,
            r.requests,
            r.requests_429,
            r.mean_batch,
            r.seconds,
        )
        lines.append(
            " ".join(fmt.format(c) for c, (_, _, fmt) in zip(cells, _COLUMNS, strict=True))
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--chats", type=int, default=50_000)
    p.add_argument("--latency-s", type=float, default=2.0, help="service time per request")
    p.add_argument("--server-concurrency", type=int, default=1, help="requests at once")
    p.add_argument("--max-pending", type=int, default=1024, help="llm.max_pending_items")
    p.add_argument("--batch-size", type=int, default=128, help="items per request (max_batch)")
    p.add_argument(
        "--read-batch",
        type=int,
        default=None,
        help="kafka.batch_size, lines per read (default: --batch-size)",
    )
    p.add_argument("--sessions", type=int, default=50, help="chat sessions (entities)")
    p.add_argument("--baseline-latency-s", type=float, default=0.0)
    p.add_argument("--no-baseline", action="store_true", help="skip the fast run")
    p.add_argument("--max-rss-ratio", type=float, default=1.25, help="target for rss_ratio")
    p.add_argument("--sample-s", type=float, default=0.01, help="sampling period")
    p.add_argument(
        "--recovery",
        action="store_true",
        help="run with recovery on (a fresh -r directory, -s --snapshot-s, -b 0)",
    )
    p.add_argument("--snapshot-s", type=int, default=10, help="epoch with --recovery")
    p.add_argument("--keep", type=Path, default=None, help="keep the run's files here")
    p.add_argument("--print-config", action="store_true", help="print the slow run's TOML")
    args = p.parse_args(argv)
    if args.read_batch is None:
        args.read_batch = args.batch_size
    if args.chats < 1 or args.batch_size < 1 or args.max_pending < 1 or args.read_batch < 1:
        p.error("--chats, --batch-size, --max-pending and --read-batch must be >= 1")

    root = Path(tempfile.mkdtemp(prefix="bench-backpressure-"))
    started = time.monotonic()
    try:
        records = workload.chats(args.chats, sessions=args.sessions)
        ids = {eid for eid, _ in records if eid is not None}
        input_path = root / "chats.jsonl"
        input_path.write_bytes(b"".join(v + b"\n" for _, v in records))
        del records
        expected_s = (
            math.ceil(args.chats / args.batch_size) * args.latency_s / args.server_concurrency
        )
        print(
            f"{args.chats} chats; endpoint {args.latency_s:g} s per request, "
            f"{args.server_concurrency} at a time; batch {args.batch_size}, read batch "
            f"{args.read_batch}, llm.max_pending_items {args.max_pending}; the endpoint "
            f"alone needs {expected_s:.0f} s",
            flush=True,
        )
        if args.print_config:
            print(
                config_toml(
                    base_url="http://127.0.0.1:PORT/v1",
                    input_path=input_path,
                    workdir=root / "slow",
                    concurrency=args.server_concurrency,
                    max_pending=args.max_pending,
                    batch_size=args.batch_size,
                    read_batch=args.read_batch,
                    latency_s=args.latency_s,
                )
            )
        results: list[RunResult] = []
        baseline: RunResult | None = None
        if not args.no_baseline:
            baseline = run_case("fast", args, args.baseline_latency_s, input_path, ids, root)
            results.append(baseline)
            print(f"fast run done in {baseline.seconds:.1f} s", flush=True)
        slow = run_case("slow", args, args.latency_s, input_path, ids, root)
        results.append(slow)
        print(f"slow run done in {slow.seconds:.1f} s", flush=True)
    finally:
        if args.keep is not None:
            shutil.copytree(root, args.keep, dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)

    limit, overshoot = args.max_pending, args.read_batch
    print(
        f"backpressure: {args.chats} chats, llm.max_pending_items {limit} (+ one read batch "
        f"of {overshoot} allowed), batch {args.batch_size}, server concurrency "
        f"{args.server_concurrency}"
    )
    for line in _table(results):
        print(line)
    for r in results:
        for line in _timeline(r):
            print(line)
    rss_ratio = slow.peak_rss_mib / baseline.peak_rss_mib if baseline is not None else None
    targets = {
        "lost==0": all(r.lost == 0 for r in results),
        "repeated==0": all(r.repeated == 0 for r in results),
        "answered+dead==chats": all(r.answered + r.dead_letters == r.chats for r in results),
        "max_pending_seen<=limit+read_batch": all(
            r.max_pending_seen <= limit + overshoot for r in results
        ),
        "pending_at_exit==0": all(int(r.child["pending_at_exit"]) == 0 for r in results),
        "rss_ratio<=max": rss_ratio is None or rss_ratio <= args.max_rss_ratio,
    }
    if baseline is not None and rss_ratio is not None:
        print(
            f"peak RSS slow/fast: {slow.peak_rss_mib:.1f} / {baseline.peak_rss_mib:.1f} MiB "
            f"= {rss_ratio:.3f} (target <= {args.max_rss_ratio:g})"
        )
    missed = [k for k, ok in targets.items() if not ok]
    print("targets: " + ("all met" if not missed else "missed " + ", ".join(missed)))
    # The figures the issue names come last, in this order.
    named: dict[str, Any] = {
        "chats": args.chats,
        "answered": slow.answered,
        "lost": slow.lost,
        "max_pending_seen": slow.max_pending_seen,
        "max_pending_limit": limit,
        "peak_rss_mib": round(slow.peak_rss_mib, 1),
        "baseline_peak_rss_mib": None if baseline is None else round(baseline.peak_rss_mib, 1),
        "rss_ratio": None if rss_ratio is None else round(rss_ratio, 4),
        "seconds": round(slow.seconds, 1),
    }
    result: dict[str, Any] = {
        "server_concurrency": args.server_concurrency,
        "latency_s": args.latency_s,
        "batch_size": args.batch_size,
        "read_batch": args.read_batch,
        "overshoot_allowed": overshoot,
        "recovery": args.recovery,
        **slow.figures(),
        **(baseline.figures("baseline_") if baseline is not None else {}),
        "total_seconds": round(time.monotonic() - started, 1),
        "targets_met": targets,
    }
    result = {k: v for k, v in result.items() if k not in named} | named
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
