"""Scale-out: the same events through one process and through a cluster of two processes.

    python -m bench.scale [--events 200000] [--repeat 1] [--partitions 4] [--shards 8]
                          [--latency-ms 2]

Starts a Tansu broker and the LLM simulator (`llmsim`, in this process, `--latency-ms` per
request), writes `support.faults.mixed(--events)` (chats, metric readings, business events
and 2 % invalid records, with known ids) to three input topics of `--partitions` partitions
each, and a profile for every chat user to the profiles topic, all before the first run.
Then it runs the real flow on those topics, each run in fresh processes with its own output
topics, stores and recovery directory:

- one process: `python -m bytewax.run "bench.scale:timed_flow('<config>', ...)" -r DIR -s 10
  -b 0`, recovery on as production runs it (`DIR` fresh, created as `python -m
  bytewax.recovery DIR 1` does);
- two processes of one cluster with the same config: the same command with `-i 0|1 -a
  "127.0.0.1:P0;127.0.0.1:P1"`.

`timed_flow` is `flows.pipeline.build(config)` (process setup, profile bootstrap, GC tuning)
plus timing: each child stamps the wall time when its flow factory returns and when its
process ends (input.tail = false: a process ends once the input is read to its end and the
work in flight is out), and reports its peak RSS (`VmHWM`; never `ru_maxrss`, which Linux
carries over fork and exec). A run's time is from the latest "built" (all processes ready)
to the latest end. `llm.shards_per_task = --shards` spreads the LLM stage's keys over the
processes.

After each run `support.harness.check` accounts for every input record and chat: `lost` is
input records with neither a ledger entry nor a dead letter plus chats accepted for an answer
with neither a response nor an LLM dead letter. `profiles_found_share` is the share of chat
items in the simulator's prompts (`support.harness.prompt_items`) whose context carries their
user's profile: each process reads the whole profiles topic into its own store at start, so
it must be 1.0 at both scales. With `--repeat K` the runs alternate (1, 2, 1, 2 ...) so a
change in the machine's load hits both alike, and the best run of each is reported.

Prints events/s for each, their ratio (two / one) and the peak RSS per process, and as its
last line one JSON object with keys `events`, `one_process_events_per_s`,
`two_process_events_per_s`, `ratio`, `lost`, `profiles_found_share` (both over every run),
and more (`one_process_peak_rss_mb`, `two_process_peak_rss_mb` per process, `seconds` per
run, `llm_requests`, `partitions`, `shards_per_task`, `repeat`).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from bytewax.dataflow import Dataflow

from llmsim import LLMSimulator, SimConfig
from support.broker import TansuBroker, produce
from support.faults import mixed
from support.harness import INPUTS, REPO, Deployment, Sent, check, free_port, prompt_items

SNAPSHOT_INTERVAL_S = 10
"""`-s` of every run (production's snapshot interval)."""

RUN_TIMEOUT_S = 900
"""How long one run may take before the benchmark fails (a generous bound)."""

TENANT = "acme"
"""The tenant of `support.workload.chats`, whose users get profiles."""


# --------------------------------------------------------------------------- the child


def vm_hwm_kib() -> int:
    """This process's peak RSS (`VmHWM` of `/proc/self/status`), 0 where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used so far, all threads."""
    t = os.times()
    return t.user + t.system


def timed_flow(config: str, result_path: str) -> Dataflow:
    """`flows.pipeline.build(config)`, timed; writes the figures to `result_path` at exit.

    For `python -m bytewax.run "bench.scale:timed_flow('cfg.toml', 'r.json')" [-i -a]`.
    Wall-clock stamps (`time.time()`), so the parent can compare the processes of a cluster.
    Creates `<result_path>.built` once the flow is built (the parent starts the next process
    of the cluster then).
    """
    from flows.pipeline import build

    flow = build(config)
    built_at, built_cpu = time.time(), cpu_seconds()
    Path(result_path + ".built").touch()

    def report() -> None:
        result = {
            "built_at": built_at,
            "ended_at": time.time(),
            "vm_hwm_kib": vm_hwm_kib(),
            "cpu_s": cpu_seconds() - built_cpu,
        }
        Path(result_path).write_text(json.dumps(result))

    atexit.register(report)
    return flow


# --------------------------------------------------------------------------- the parent


def profile_doc(user: str) -> dict[str, Any]:
    """The profile of one chat user, as written to the profiles topic."""
    return {"tenant": TENANT, "entity": user, "attributes": {"plan": "pro", "user": user}}


def chat_users(sent: Sent) -> dict[str, str]:
    """Chat event id -> its user id, from the chat records written."""
    users: dict[str, str] = {}
    for event_id, value in sent.records.get("chat", []):
        if event_id and value:
            users[event_id] = json.loads(value)["user_id"]
    return users


def profiles_found(requests: list[dict[str, Any]], users: dict[str, str]) -> tuple[int, int]:
    """`(chat items carrying their user's profile, chat items)` over the answered requests."""
    found = total = 0
    for req in requests:
        if req["status"] != 200:
            continue
        for item in prompt_items(req):
            user = users.get(str(item.get("id")))
            if user is None:
                continue  # an alert's item
            total += 1
            found += (item.get("context") or {}).get("profile") == profile_doc(user)["attributes"]
    return found, total


@dataclass
class Run:
    """The figures of one run of `processes` processes."""

    processes: int
    seconds: float
    peak_rss_mb: list[float]
    lost: int
    profiles_found: int
    chat_items: int
    llm_requests: int
    flow_cpu_s: list[float]
    """CPU seconds of each flow process from its flow built to its exit."""
    broker_cpu_s: float
    """CPU seconds the broker used during the run."""
    sim_cpu_s: float
    """CPU seconds this process (the simulator's threads, mostly) used during the run."""

    @property
    def share(self) -> float:
        return self.profiles_found / self.chat_items if self.chat_items else 0.0


def start_cluster(
    dep: Deployment, processes: int, tag: str, started: list[tuple[subprocess.Popen[bytes], Path]]
) -> None:
    """`processes` timed flow processes of one cluster on `dep`'s config, recovery on, each
    appended to `started` as `(process, result file)`.

    Each process starts once the one before it has built its flow, so it finds the lower
    processes listening: timely's networking sleeps 1 s before retrying a refused connection,
    which would put a second of chance into a ten-second run (the run is timed from the
    last process built anyway).
    """
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(processes)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OPENAI_API_KEY": "sim-key"}
    for i in range(processes):
        if started:
            wait_built(*started[-1])
        result = dep.workdir / f"result-p{i}.json"
        call = f"bench.scale:timed_flow({str(dep.config)!r}, {str(result)!r})"
        cmd = [sys.executable, "-m", "bytewax.run", call, "-r", str(dep.recovery)]
        cmd += ["-s", str(SNAPSHOT_INTERVAL_S), "-b", "0"]
        if processes > 1:
            cmd += ["-i", str(i), "-a", ";".join(addresses)]
        log = open(dep.workdir / f"{tag}-p{i}.log", "wb")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        started.append((proc, result))


def wait_built(proc: subprocess.Popen[bytes], result: Path) -> None:
    """Wait until `proc` has built its flow (its `.built` marker exists)."""
    marker = Path(f"{result}.built")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            msg = f"flow process {proc.args!r} did not build its flow ({proc.poll()})"
            raise RuntimeError(msg)
        time.sleep(0.05)  # poll interval


def run_once(
    broker: TansuBroker,
    workdir: Path,
    inputs: Deployment,
    sim: LLMSimulator,
    processes: int,
    users: dict[str, str],
    shards: int,
) -> Run:
    """One run on the input topics of `inputs`, with its own outputs, stores and recovery."""
    dep = Deployment(
        broker.bootstrap,
        workdir,
        sim.base_url,
        partitions=inputs.partitions,
        extra_toml=f"shards_per_task = {shards}",
    )
    # The same records for every run: read the topics written once (and the profiles).
    for name in (*INPUTS, "profiles"):
        dep.topics[name] = inputs.topics[name]
    dep.write_config()
    sim.reset_log()
    broker_proc = psutil.Process(broker.pid)
    broker_cpu, own_cpu = sum(broker_proc.cpu_times()[:2]), cpu_seconds()
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        start_cluster(dep, processes, workdir.name, procs)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        for proc, _ in procs:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    broker_cpu = sum(broker_proc.cpu_times()[:2]) - broker_cpu
    own_cpu = cpu_seconds() - own_cpu
    results = []
    for i, (proc, result) in enumerate(procs):
        if proc.returncode != 0 or not result.exists():
            log = (workdir / f"{workdir.name}-p{i}.log").read_text(errors="replace")
            msg = f"{processes}-process run, process {i} failed ({proc.returncode}):\n{log[-3000:]}"
            raise RuntimeError(msg)
        results.append(json.loads(result.read_text()))
    seconds = max(r["ended_at"] for r in results) - max(r["built_at"] for r in results)
    requests = sim.requests()
    report = check(dep, requests)
    found, total = profiles_found(requests, users)
    return Run(
        processes,
        seconds,
        [r["vm_hwm_kib"] / 1024 for r in results],
        report.lost,
        found,
        total,
        len(requests),
        [r["cpu_s"] for r in results],
        broker_cpu,
        own_cpu,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=1, help="runs of each; the best is reported")
    p.add_argument("--partitions", type=int, default=4, help="partitions per input topic")
    p.add_argument("--shards", type=int, default=8, help="llm.shards_per_task")
    p.add_argument("--latency-ms", type=float, default=2.0, help="the simulator's latency")
    args = p.parse_args(argv)

    sent = mixed(args.events)
    users = chat_users(sent)
    n = sent.total
    runs: list[Run] = []
    with (
        TansuBroker() as broker,
        LLMSimulator(SimConfig(latency_ms=args.latency_ms)) as sim,
        tempfile.TemporaryDirectory() as tmp,
    ):
        bootstrap = broker.bootstrap
        inputs = Deployment(
            bootstrap, Path(tmp) / "inputs", sim.base_url, partitions=args.partitions
        )
        t0 = time.perf_counter()
        profiles = [
            (user.encode(), json.dumps(profile_doc(user)).encode())
            for user in sorted(set(users.values()))
        ]
        produce(bootstrap, inputs.topics["profiles"], profiles)
        for name, recs in sent.records.items():
            produce(bootstrap, inputs.topics[name], [(None, v) for _, v in recs])
        print(
            f"produced {n} events and {len(profiles)} profiles in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        for i in range(args.repeat):
            for processes in (1, 2):
                work = Path(tmp) / f"run{i}-{processes}p"
                run = run_once(broker, work, inputs, sim, processes, users, args.shards)
                runs.append(run)
                print(
                    f"  run {i} {processes} process(es): {run.seconds:.1f} s, "
                    f"{n / run.seconds:,.0f} events/s, lost {run.lost}, "
                    f"profiles {run.profiles_found}/{run.chat_items}; CPU s: flow "
                    f"{', '.join(f'{c:.1f}' for c in run.flow_cpu_s)}, broker "
                    f"{run.broker_cpu_s:.1f}, simulator {run.sim_cpu_s:.1f}",
                    file=sys.stderr,
                )

    best = {k: min((r for r in runs if r.processes == k), key=lambda r: r.seconds) for k in (1, 2)}
    one, two = n / best[1].seconds, n / best[2].seconds
    ratio = two / one
    rss = {k: ", ".join(f"{mb:.0f}" for mb in best[k].peak_rss_mb) for k in (1, 2)}
    print(f"one process:   {one:10,.0f} events/s   peak RSS {rss[1]} MB")
    print(f"two processes: {two:10,.0f} events/s   peak RSS {rss[2]} MB (per process)")
    print(f"ratio two/one: {ratio:.2f} on {os.cpu_count()} cores")
    lost = sum(r.lost for r in runs)
    share = min(r.share for r in runs)
    print(f"lost {lost}, profiles found on {share:.1%} of the chat items (worst run)")
    result: dict[str, Any] = {
        "events": n,
        "one_process_events_per_s": round(one),
        "two_process_events_per_s": round(two),
        "ratio": round(ratio, 3),
        "lost": lost,
        "profiles_found_share": round(share, 4),
        "one_process_peak_rss_mb": [round(mb, 1) for mb in best[1].peak_rss_mb],
        "two_process_peak_rss_mb": [round(mb, 1) for mb in best[2].peak_rss_mb],
        "seconds": [[r.processes, round(r.seconds, 2)] for r in runs],
        "llm_requests": [[r.processes, r.llm_requests] for r in runs],
        "cpu_s": [
            [
                r.processes,
                [round(c, 1) for c in r.flow_cpu_s],
                round(r.broker_cpu_s, 1),
                round(r.sim_cpu_s, 1),
            ]
            for r in runs
        ],
        "partitions": args.partitions,
        "shards_per_task": args.shards,
        "repeat": args.repeat,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
