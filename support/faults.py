"""Fault scenarios: prove that nothing is lost under crashes, stops, outages and bad input.

Each scenario runs the real flow as a subprocess (`python -m bytewax.run ... -r DIR -s 1 -b 0`)
against a Tansu broker and the LLM simulator, injects its fault, then drains every output
topic and the simulator's request log through `support.harness.check`. `run_scenario` returns
its figures; `python -m bench.faults` runs them all (full or `--quick`) and
`tests/e2e/test_faults.py` runs the quick variants. See docs/RELIABILITY.md.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmsim import LLMSimulator, SimConfig
from state.recovery import recovered_state_digest
from support import workload
from support.broker import TansuBroker, consume_all, create_topic, delete_topic, produce
from support.harness import (
    REPO,
    Deployment,
    Feeder,
    FlowRunner,
    Report,
    Sent,
    TopicCounter,
    check,
    flow_metrics,
    free_port,
    write_inputs,
)


@dataclass
class Ctx:
    broker: TansuBroker
    workdir: Path
    quick: bool
    seed: int = 1


@dataclass
class Outcome:
    """A scenario's figures and the checks it failed (empty: it passed)."""

    report: Report
    failures: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)

    def figures(self) -> dict[str, Any]:
        out = self.report.figures()
        out.update(self.extra)
        out["passed"] = not self.failures and self.report.lost == 0
        out["failures"] = self.failures
        return out


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _wait_for(pred: Callable[[], bool], timeout_s: float, every_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every_s)  # poll interval
    return pred()


def mixed(n: int, *, seed: int = 7, invalid: float = 0.02, chat: float = 0.1) -> Sent:
    """`n` records with unique ids: chats, metrics, business events and a few invalid ones."""
    n_chat = int(n * chat)
    n_bad = int(n * invalid)
    n_business = int(n * 0.25)
    n_metric = n - n_chat - n_bad - n_business
    sent = Sent()
    sent.add("chat", workload.chats(n_chat, sessions=max(10, n_chat // 20)))
    sent.add("metrics", workload.metrics(n_metric, series=max(10, n_metric // 200), seed=seed))
    sent.add("business", workload.business(n_business, accounts=max(10, n_business // 50)))
    bad = workload.malformed(n_bad)
    sent.add("metrics", bad[: n_bad // 2])
    sent.add("business", bad[n_bad // 2 :])
    return sent


def _new_dep(ctx: Ctx, name: str, sim: LLMSimulator, **kw: Any) -> Deployment:
    workdir = ctx.workdir / name
    workdir.mkdir(parents=True, exist_ok=True)
    return Deployment(ctx.broker.bootstrap, workdir, sim.base_url, **kw)


@contextlib.contextmanager
def _sim(**cfg: Any) -> Iterator[LLMSimulator]:
    sim = LLMSimulator(SimConfig(**cfg)).start()
    try:
        yield sim
    finally:
        sim.stop()


def _standard(out: Outcome) -> None:
    r = out.report
    out.expect(r.lost == 0, f"lost {r.lost}: {r.lost_examples[:3]}")
    out.expect(r.unseen == 0, f"unseen {r.unseen}")
    out.expect(r.inconsistent == 0, f"inconsistent {r.inconsistent}: {r.other_examples[:3]}")
    out.expect(r.repeated_llm_requests == 0, f"repeated LLM requests {r.repeated_llm_requests}")


def _peak_rate(ledger: list[tuple[float, dict[str, Any]]], window_s: float = 1.0) -> float:
    """Most events processed for the first time in any `window_s` (replays excluded): the
    events one snapshot interval can hold. `ledger` is the timed ledger `check` read."""
    first: dict[str, float] = {}
    for ts, e in ledger:
        first[e["source"]] = min(first.get(e["source"], ts), ts)
    stamps = sorted(first.values())
    best, j = 0, 0
    for i, t in enumerate(stamps):
        while stamps[j] < t - window_s:
            j += 1
        best = max(best, i - j + 1)
    return best / window_s


# --------------------------------------------------------------------------- 1. kill -9 storm


def storm(ctx: Ctx) -> Outcome:
    """SIGKILL at random moments (at least one with LLM requests in flight), restarting on the
    same recovery directory each time; then one run to the end of the input."""
    kills = 3 if ctx.quick else 10
    return _kill_storm(ctx, "storm", [1] * kills, final=1)


def storm_2p(ctx: Ctx) -> Outcome:
    """The kill storm on a cluster of two processes of one config (`-i/-a`): both are killed
    together; the stores are per process, the caches read across processes."""
    kills = 3 if ctx.quick else 8
    return _kill_storm(ctx, "storm_2p", [2] * kills, final=2)


def rescale(ctx: Ctx) -> Outcome:
    """Rescaling across kill -9: 2 processes killed, 1 process killed, then 2 processes to the
    end. Keys move between processes at each restart; no answer emitted before a kill is
    requested again (each process reads the other processes' response caches)."""
    # Snapshots every 4 s and kills once answers flow: many answers are emitted after the
    # last snapshot, so their requests replay on the process that now owns their keys.
    return _kill_storm(ctx, "rescale", [2, 1], final=2, snapshot_s=4, after_answers=True, shards=8)


def _kill_storm(
    ctx: Ctx,
    name: str,
    generations: list[int],
    *,
    final: int,
    snapshot_s: int = 1,
    after_answers: bool = False,
    shards: int = 1,
) -> Outcome:
    """One generation per entry of `generations` (its process count), each SIGKILLed at a
    random moment (at least one with LLM requests in flight; with `after_answers`, only once
    the generation has had answers); then `final` processes run to the end of the input.
    `shards` LLM queues per task spread the LLM stage's keys over the processes."""
    n = 20_000 if ctx.quick else 100_000
    kills = len(generations)
    rng = random.Random(ctx.seed)
    latency = 300 if ctx.quick else 500  # the LLM backlog keeps the run going across kills
    with _sim(latency_ms=latency, jitter_ms=100, max_concurrency=64) as sim:
        dep = _new_dep(ctx, name, sim, partitions=2, extra_toml=f"shards_per_task = {shards}")
        sent = mixed(n)
        write_inputs(dep, sent)
        runner = FlowRunner(dep, snapshot_s=snapshot_s)
        in_flight_kills = 0
        try:
            for k, processes in enumerate(generations):
                runner.start(processes)
                # Wait for the flow to be built, then a random moment.
                _wait_for(lambda: "flow built" in runner.tail() or not runner.alive(), 60)
                if after_answers:
                    seen = len(sim.requests())

                    def answering(seen: int = seen) -> bool:
                        return len(sim.requests()) > seen or not runner.alive()

                    _wait_for(answering, 60)
                time.sleep(rng.uniform(0.3, 2.0 if ctx.quick else 4.0))
                if k == kills - 1 and in_flight_kills == 0:
                    _wait_for(lambda: sim.in_flight > 0 or not runner.alive(), 30, 0.01)
                if not runner.alive():
                    break  # finished the input before this kill
                flying = sim.in_flight
                in_flight_kills += flying > 0
                runner.signal(signal.SIGKILL, in_flight=flying)
            runner.start(final)
            code = runner.wait(900)
        finally:
            runner.stop()
        rep = check(dep, sim.requests(), runner.generations)
    out = Outcome(rep)
    done_kills = sum(1 for g in runner.generations if g.how == "SIGKILL")
    per_interval = _peak_rate(rep.ledger_timed) * runner.snapshot_s
    bound = done_kills * per_interval
    out.extra.update(
        events=sent.total,
        processes=[g.processes for g in runner.generations],
        kills=done_kills,
        kills_with_llm_in_flight=in_flight_kills,
        in_flight_at_kills=[g.in_flight_at_end for g in runner.generations if g.how == "SIGKILL"],
        events_per_snapshot_interval=round(per_interval),
        duplicates_per_kill=round(rep.duplicates / max(1, done_kills)),
        duplicate_bound=round(bound),
        peak_rss_mb=round(max(g.peak_rss for g in runner.generations) / 2**20),
    )
    _standard(out)
    out.expect(code == 0, f"final run exited {code}: {runner.tail()}")
    out.expect(done_kills == kills, f"only {done_kills} of {kills} kills landed")
    out.expect(in_flight_kills >= 1, "no kill landed while LLM requests were in flight")
    out.expect(rep.duplicates <= bound, f"duplicates {rep.duplicates} > bound {bound:.0f}")
    return out


# --------------------------------------------------------------------------- 2. graceful stop


def graceful(ctx: Ctx) -> Outcome:
    """SIGTERM, then SIGINT, under load (input still arriving): each exits within 10 s with a
    documented code (0: drained with a final snapshot; 143/130: drain deadline passed); the
    restarts lose nothing and repeat no answered LLM call."""
    # Long enough that input still arrives at the second signal (the feeder pauses while
    # the flow is down).
    n, rate = (40_000, 2_000) if ctx.quick else (100_000, 4_000)
    with _sim(latency_ms=300, jitter_ms=100, max_concurrency=64) as sim:
        dep = _new_dep(ctx, "graceful", sim, partitions=2, tail=True)
        sent = mixed(n)
        feeder = Feeder(dep, sent, rate).start()
        runner = FlowRunner(dep)
        stops: list[dict[str, Any]] = []
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                runner.start()
                # The feeder writes while the flow is up (it has a backlog when it comes
                # back): a slow stop or start must not use up the input before a signal.
                _wait_for(lambda: "flow built" in runner.tail() or not runner.alive(), 60)
                feeder.resume()
                _wait_for(lambda: sim.in_flight > 0 or not runner.alive(), 60, 0.05)
                time.sleep(1.0 if ctx.quick else 5.0)
                answered = len(dep.drain("responses", idle_s=0.2))
                runner.signal(sig, in_flight=sim.in_flight)
                feeder.pause()
                code = runner.wait(30)
                g = runner.current
                log = runner.tail(chars=2000)
                stops.append(
                    {
                        "signal": sig.name,
                        "exit_code": code,
                        "stop_s": round(g.stop_s or 0.0, 2),
                        "llm_in_flight": g.in_flight_at_end,
                        "answers_before": answered,
                        "input_written_at_stop": feeder.written,
                        "graceful_log": "received: ending input" in log,
                    }
                )
            feeder.finish()
            dep.write_config(tail=False)
            runner.start()
            final = runner.wait(900)
        finally:
            runner.stop()
        rep = check(dep, sim.requests(), runner.generations)
    out = Outcome(rep, extra={"events": sent.total, "stops": stops})
    _standard(out)
    out.expect(final == 0, f"final run exited {final}")
    out.expect(
        all(s["input_written_at_stop"] < sent.total for s in stops),
        "the input was complete before a signal: not under load",
    )
    for s in stops:
        out.expect(s["stop_s"] <= 10.0, f"{s['signal']}: exit took {s['stop_s']} s")
        allowed = {0, 128 + signal.Signals[s["signal"]].value}
        out.expect(s["exit_code"] in allowed, f"{s['signal']}: exit code {s['exit_code']}")
        if s["exit_code"] == 0:
            out.expect(s["graceful_log"], f"{s['signal']}: no graceful-stop log line")
    clean = all(s["exit_code"] == 0 for s in stops)
    if clean:  # a drained stop wrote a final snapshot: nothing is replayed
        out.expect(rep.duplicates == 0, f"duplicates after clean stops: {rep.duplicates}")
    return out


# --------------------------------------------------------------------------- 3. broker stall


def _api_env(ctx: Ctx, port: int) -> dict[str, str]:
    """Environment for the flow's Prometheus endpoint (its dataflow.json goes to the workdir)."""
    cache = ctx.workdir / f"api-{port}"
    cache.mkdir(parents=True, exist_ok=True)
    return {
        "BYTEWAX_DATAFLOW_API_ENABLED": "true",
        "BYTEWAX_DATAFLOW_API_PORT": str(port),
        "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(cache),
    }


def _metric(metrics: dict[str, float], prefix: str) -> float:
    return max((v for k, v in metrics.items() if k.startswith(prefix)), default=0.0)


def broker_stall(ctx: Ctx) -> Outcome:
    """The broker is frozen (SIGSTOP) mid-run for 60 s (quick: 8 s) with output in flight,
    then resumed. The flow neither exits nor loses anything; lag returns to zero; the stall
    shows in the metrics (`contextstream_output_stalled`) and in the log."""
    pause_s = 8.0 if ctx.quick else 60.0  # quick: twice the delivery timeout below
    n = 20_000 if ctx.quick else 100_000
    port = free_port()
    env = _api_env(ctx, port)
    # Messages time out well inside the pause (quick), so the sink's re-produce path runs.
    kafka = "delivery_timeout_ms = 4000" if ctx.quick else ""
    with _sim(latency_ms=100, max_concurrency=64) as sim:
        dep = _new_dep(ctx, "stall", sim, partitions=2, tail=True, kafka_toml=kafka)
        sent = mixed(n)
        write_inputs(dep, sent)
        runner = FlowRunner(dep, env=env)
        seen: dict[str, float] = {}
        try:
            runner.start()
            _wait_for(lambda: len(dep.drain("ledger", idle_s=0.2)) > 0, 60)
            stalled_at = time.time()
            with ctx.broker.paused():
                deadline = time.monotonic() + pause_s
                while time.monotonic() < deadline:
                    with contextlib.suppress(OSError):
                        m = flow_metrics(port)
                        seen["stalled_max"] = max(
                            seen.get("stalled_max", 0.0),
                            _metric(m, "contextstream_output_stalled{"),
                        )
                    time.sleep(1.0)  # scrape interval
            resumed_at = time.time()
            # More input after the stall; lag must return to zero.
            more = Sent()
            more.add("metrics", workload.metrics(2000, series=20, prefix="m2"))
            write_inputs(dep, more)
            total = sent.total + more.total

            counted = [
                TopicCounter(dep.bootstrap, dep.topics[t]) for t in ("ledger", "dead_letters")
            ]

            def caught_up() -> bool:
                return sum(c.count() for c in counted) >= total or not runner.alive()

            _wait_for(caught_up, 120 if ctx.quick else 300, 0.25)
            lag_zero = sum(c.count() for c in counted) >= total
            for c in counted:
                c.close()
            caught_up_s = time.time() - resumed_at
            with contextlib.suppress(OSError):
                m = flow_metrics(port)
                seen["stall_seconds_total"] = _metric(m, "contextstream_output_stall_seconds_total")
                seen["reproduced_total"] = _metric(m, "contextstream_output_reproduced_total")
            alive = runner.alive()
            runner.signal(signal.SIGTERM)
            code = runner.wait(30)
        finally:
            runner.stop()
        log = runner.tail(chars=200_000)
        rep = check(dep, sim.requests(), runner.generations)
    out = Outcome(
        rep,
        extra={
            "events": total,
            "pause_s": pause_s,
            "stall_started_after_s": round(stalled_at - runner.generations[0].started, 1),
            "lag_zero_after_resume_s": round(caught_up_s, 1),
            "metrics": seen,
            "stall_log_lines": log.count("broker stalled"),
            "exit_code_after_sigterm": code,
        },
    )
    _standard(out)
    out.expect(alive, "the flow exited during or after the stall")
    out.expect(len(runner.generations) == 1, "the flow was restarted")
    out.expect(lag_zero, "lag did not return to zero after the broker resumed")
    out.expect(
        seen.get("stalled_max", 0) >= 1 or seen.get("stall_seconds_total", 0) > 0,
        f"the stall does not show in the metrics: {seen}",
    )
    out.expect("broker stalled" in log, "the stall does not show in the log")
    out.expect(code in (0, 143), f"exit code after SIGTERM {code}")
    return out


# --------------------------------------------------------------------------- 4. LLM outage


def llm_outage(ctx: Ctx) -> Outcome:
    """The simulator refuses every request (503) for 60 s (quick: 5 s), then (full only)
    times out every request for 30 s. The breaker opens, held items stay bounded, nothing is
    lost, and the held events are answered after it recovers."""
    # Quick: 5 s, past the breaker's first open period (2 s) and one failed probe, so the
    # breaker is open when the endpoint returns and held events wait for the next probe.
    refuse_s = 5.0 if ctx.quick else 60.0
    hang_s = 0.0 if ctx.quick else 30.0
    n_chat = 1_500 if ctx.quick else 6_000
    max_held = 10_000
    port = free_port()
    env = _api_env(ctx, port)
    with _sim(latency_ms=50, max_concurrency=64) as sim:
        dep = _new_dep(
            ctx,
            "llm_outage",
            sim,
            partitions=1,
            tail=True,
            extra_toml=f"max_held_items = {max_held}",
        )
        first = Sent()
        first.add("chat", workload.chats(200, sessions=20, prefix="c0"))
        write_inputs(dep, first)
        runner = FlowRunner(dep, env=env)
        seen = {"breaker_max": 0.0, "pending_max": 0.0}
        try:
            runner.start()
            _wait_for(lambda: len(dep.drain("responses", 0.2)) >= 200 or not runner.alive(), 60)
            sim.configure(down=True)
            down_at = time.time()
            outage = Sent()
            outage.add("chat", workload.chats(n_chat, sessions=100, prefix="c1"))
            write_inputs(dep, outage)

            def watch(seconds: float) -> None:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    with contextlib.suppress(OSError):
                        m = flow_metrics(port)
                        seen["breaker_max"] = max(
                            seen["breaker_max"], _metric(m, "contextstream_llm_breaker_state")
                        )
                        seen["pending_max"] = max(
                            seen["pending_max"], _metric(m, "contextstream_llm_pending_items")
                        )
                    time.sleep(0.5)  # scrape interval

            watch(refuse_s)
            if hang_s:
                sim.configure(down=False, timeout_rate=1.0, hang_s=60.0)
                watch(hang_s)
            sim.configure(down=False, timeout_rate=0.0)
            up_at = time.time()
            want = 200 + n_chat
            answered = _wait_for(
                lambda: (
                    len({i for r in dep.drain("responses", 0.3) for i in r["event_ids"]})
                    + len(dep.drain("dead_letters", 0.3))
                    >= want
                    or not runner.alive()
                ),
                300,
                1.0,
            )
            recovered_s = time.time() - up_at
            runner.signal(signal.SIGTERM)
            code = runner.wait(30)
        finally:
            runner.stop()
        rep = check(dep, sim.requests(), runner.generations)
        reqs = sim.requests()
    llm_dead = [d for d in dep.drain("dead_letters", 0.5) if d["step_id"].startswith("llm")]
    resp = dep.drain_timed("responses", 0.5)
    after = sum(1 for ts, r in resp if ts >= up_at and r["event_ids"][0].startswith("c1"))
    during = [q for q in reqs if down_at <= q["ts"] < up_at]
    out = Outcome(
        rep,
        extra={
            "refuse_s": refuse_s,
            "timeout_s": hang_s,
            "chat_events_during_outage": n_chat,
            "requests_during_outage": len(during),
            "breaker_state_max": seen["breaker_max"],
            "held_items_max": seen["pending_max"],
            "answered_after_recovery": after,
            "all_answered_after_s": round(recovered_s, 1),
            "llm_dead_letters": len(llm_dead),
            "exit_code_after_sigterm": code,
        },
    )
    _standard(out)
    out.expect(answered, "not every chat event was answered or dead-lettered after recovery")
    out.expect(seen["breaker_max"] >= 2, f"the breaker never showed open: {seen}")
    out.expect(seen["pending_max"] <= max_held + 256, f"held items {seen['pending_max']}")
    out.expect(not llm_dead, f"{len(llm_dead)} events dead-lettered: {llm_dead[:1]}")
    out.expect(after > 0, "no answers arrived after recovery")
    return out


# --------------------------------------------------------------------------- 5. sink failure


def sink_failure(ctx: Ctx) -> Outcome:
    """A dead letter (a 50 KB malformed record) is over the producer's size limit
    (kafka.message_max_bytes = 20000): the run fails before its next snapshot with the fix
    in the message; after the limit is raised, a restart delivers it."""
    with _sim(latency_ms=20) as sim:
        dep = _new_dep(
            ctx, "sink_failure", sim, partitions=1, kafka_toml="message_max_bytes = 20000"
        )
        sent = mixed(3_000 if ctx.quick else 20_000)
        big = b'{"series": "h.cpu", "tenant": "acme", "value": "' + b"x" * 50_000 + b'"'
        sent.add("metrics", [(None, big)])
        write_inputs(dep, sent)
        runner = FlowRunner(dep)
        try:
            runner.start()
            first = runner.wait(300)
            log1 = runner.tail(chars=20_000)
            big_before = [
                d for d in dep.drain("dead_letters", 0.5) if len(d.get("raw") or "") > 40_000
            ]
            dep.kafka_toml = "message_max_bytes = 1000000"
            dep.write_config()
            runner.start()
            second = runner.wait(300)
        finally:
            runner.stop()
        rep = check(dep, sim.requests(), runner.generations)
    big_after = [d for d in dep.drain("dead_letters", 0.5) if len(d.get("raw") or "") > 40_000]
    out = Outcome(
        rep,
        extra={
            "first_exit_code": first,
            "second_exit_code": second,
            "error_names_fix": "raise kafka.message_max_bytes" in log1,
            "large_dead_letter_before_fix": len(big_before),
            "large_dead_letter_after_fix": len(big_after),
        },
    )
    _standard(out)
    out.expect(first != 0, "the run did not fail on the oversized record")
    out.expect("DeliveryFailed" in log1, "no DeliveryFailed in the log")
    out.expect(out.extra["error_names_fix"], "the error does not name the fix")
    out.expect(not big_before, "the oversized record was written before the fix")
    out.expect(second == 0, f"the restart after the fix exited {second}")
    out.expect(len(big_after) >= 1, "the restart did not deliver the record")
    return out


# --------------------------------------------------------------------------- 6. expired offset


def expired_offset(ctx: Ctx) -> Outcome:
    """The input topic is deleted and re-created (as retention or an operator would leave
    it): the snapshotted resume offset no longer exists. Startup stops with a clear message
    and nothing is skipped."""
    with _sim(latency_ms=20) as sim:
        dep = _new_dep(ctx, "expired_offset", sim, partitions=1)
        sent = Sent()
        sent.add("metrics", workload.metrics(2_000, series=10))
        write_inputs(dep, sent)
        runner = FlowRunner(dep)
        try:
            runner.start()
            first = runner.wait(300)
            before = len(dep.drain("ledger", 0.5))
            topic = dep.topics["metrics"]
            delete_topic(dep.bootstrap, topic)
            create_topic(dep.bootstrap, topic, 1)
            produce(dep.bootstrap, topic, [v for _, v in workload.metrics(50, prefix="m9")])
            digest = recovered_state_digest(dep.recovery)
            runner.start()
            t0 = time.monotonic()
            second = runner.wait(120)
            took = time.monotonic() - t0
            log2 = runner.tail(chars=20_000)
        finally:
            runner.stop()
    after = len(dep.drain("ledger", 0.5))
    out = Outcome(
        Report(inputs=sent.total, ledger=after),
        extra={
            "first_exit_code": first,
            "second_exit_code": second,
            "stopped_after_s": round(took, 1),
            "message": next((ln for ln in log2.splitlines() if "no longer exists" in ln), ""),
            "records_processed_after_loss": after - before,
            "recovery_dir_unchanged": recovered_state_digest(dep.recovery) == digest,
        },
    )
    out.expect(first == 0, f"first run exited {first}")
    out.expect(second != 0, "the restart did not stop")
    out.expect(
        f"input {topic}[0]: the resume offset" in log2 and "no longer exists" in log2,
        "no clear ResumeOffsetLost message naming the re-created topic",
    )
    out.expect(after == before, "records after the lost offset were processed (silent skip)")
    out.expect(out.extra["recovery_dir_unchanged"], "the recovery directory was changed")
    return out


# --------------------------------------------------------------------------- 7. damaged recovery


def _run_cmd(cmd: list[str], timeout: float = 120) -> tuple[int, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OPENAI_API_KEY": "sim-key"}
    p = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    return p.returncode, p.stdout + p.stderr


def damaged_recovery(ctx: Ctx) -> Outcome:
    """Missing, mismatched or corrupt partition files: the flow refuses to start (bytewax.run
    and run.py), the message names the fix, and nothing is deleted or re-created."""
    from bytewax.recovery import init_db_dir

    cases: dict[str, dict[str, Any]] = {}
    with _sim(latency_ms=20) as sim:
        dep = _new_dep(ctx, "damaged_recovery", sim, partitions=1)
        sent = Sent()
        sent.add("metrics", workload.metrics(1_000, series=10))
        write_inputs(dep, sent)
        # Two partitions, so one can go missing or come from another time.
        shutil.rmtree(dep.recovery)
        dep.recovery.mkdir()
        init_db_dir(dep.recovery, 2)
        (dep.recovery / "contextstream-recovery.json").write_text('{"partitions": 2}')
        runner = FlowRunner(dep)
        runner.start()
        assert runner.wait(300) == 0, runner.tail()
        old = dep.workdir / "backup-1"
        shutil.copytree(dep.recovery, old)
        more = Sent()
        more.add("metrics", workload.metrics(500, series=10, prefix="m2"))
        write_inputs(dep, more)
        runner.start()
        assert runner.wait(300) == 0, runner.tail()
        good = dep.workdir / "good"
        shutil.copytree(dep.recovery, good)

        def damage(name: str, fn: Callable[[Path], object]) -> None:
            target = dep.workdir / f"case-{name}"
            shutil.copytree(good, target)
            fn(target)
            digest = recovered_state_digest(target)
            flow = f"flows.pipeline:build('{dep.config}')"
            results = {}
            for entry, cmd in (
                (
                    "bytewax.run",
                    [
                        sys.executable,
                        "-m",
                        "bytewax.run",
                        flow,
                        "-r",
                        str(target),
                        "-s",
                        "1",
                        "-b",
                        "0",
                    ],
                ),
                (
                    "run.py",
                    [
                        sys.executable,
                        "run.py",
                        str(dep.config),
                        "-r",
                        str(target),
                        "-s",
                        "1",
                        "--progress-every",
                        "0",
                    ],
                ),
            ):
                code, text = _run_cmd(cmd)
                lines = [ln for ln in text.splitlines() if "rror" in ln]
                results[entry] = {
                    "exit_code": code,
                    "message": (lines[-1] if lines else text[-300:])[:400],
                }
            results["unchanged"] = recovered_state_digest(target) == digest  # type: ignore[assignment]
            cases[name] = results

        def drop_all(d: Path) -> None:
            for p in d.glob("part-*"):
                p.unlink()

        def corrupt(d: Path) -> None:
            (d / "part-0.sqlite3").write_bytes(b"not a database" * 100)

        other = dep.workdir / "other"
        other.mkdir()
        init_db_dir(other, 3)
        damages: dict[str, Callable[[Path], object]] = {
            "missing_partition": lambda d: (d / "part-1.sqlite3").unlink(),
            "no_partitions": drop_all,
            "partition_from_another_time": lambda d: shutil.copy(
                old / "part-0.sqlite3", d / "part-0.sqlite3"
            ),
            "corrupt_partition": corrupt,
            "partition_from_another_directory": lambda d: shutil.copy(
                other / "part-2.sqlite3", d / "part-1.sqlite3"
            ),
        }
        # Each case has its own copy of the directory, so the cases run side by side (two
        # at a time: most of a refused start is the interpreter's imports); within a case
        # the two entry points still run one after the other on its copy.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="damage") as pool:
            for fut in [pool.submit(damage, name, fn) for name, fn in damages.items()]:
                fut.result()
        cases = {name: cases[name] for name in damages}  # the report in the cases' order
    out = Outcome(Report(inputs=sent.total + more.total), extra={"cases": cases})
    for name, res in cases.items():
        out.expect(bool(res["unchanged"]), f"{name}: the recovery directory was changed")
        for entry in ("bytewax.run", "run.py"):
            r = res[entry]
            out.expect(r["exit_code"] != 0, f"{name}/{entry}: started anyway")
        out.expect(res["run.py"]["exit_code"] == 3, f"{name}/run.py: exit {res['run.py']}")
        for entry in ("bytewax.run", "run.py"):
            msg = res[entry]["message"].lower()
            out.expect("restore" in msg or "backup" in msg, f"{name}/{entry}: no fix: {msg}")
    return out


# --------------------------------------------------------------------------- 8. step ids


def step_ids(ctx: Ctx) -> Outcome:
    """The built flow's recovery step ids match `flows/step_ids.txt`; a renamed step
    without a migration note is reported."""
    from flows.pipeline import build_flow
    from support.stepids import contract_settings, recovery_step_ids, step_id_problems

    tmp = ctx.workdir / "step_ids"
    tmp.mkdir(parents=True, exist_ok=True)
    built = recovery_step_ids(build_flow(contract_settings(tmp)))
    problems = step_id_problems(built, readme=REPO / "README.md")
    renamed = built - {"contextstream.dedup.seen"} | {"contextstream.dedupe.seen"}
    caught = step_id_problems(renamed)
    out = Outcome(Report(), extra={"step_ids": sorted(built), "rename_caught": bool(caught)})
    out.expect(not problems, "; ".join(problems))
    out.expect(bool(caught), "a renamed step was not caught")
    return out


# --------------------------------------------------------------------------- 9. bad input


DEAD = "!dead"
_ALWAYS_DEAD = frozenset({6, 9, 11, 14, 15, 18})  # malformed, bad UTF-8, naive, shapes, null


def fuzz_payloads(
    n: int, seed: int = 11, big: int = 5
) -> dict[str, list[tuple[str | None, bytes | None, bytes | None]]]:
    """`n` payloads per input topic name, as `(expectation, key, value)`; the expectation is
    the event id of a record that must be accepted, `DEAD` for one that must be
    dead-lettered, or None where either outcome is right (e.g. a coercible wrong type).

    Mixes valid records with malformed JSON, wrong types, missing fields, invalid UTF-8,
    NaN/Infinity, naive and far-future timestamps, lone surrogates, deep nesting, huge
    numbers, null values (tombstones), null and binary keys, duplicate ids, and `big`
    payloads of about 1 MB.
    """
    rng = random.Random(seed)
    now = time.time()
    out: dict[str, list[tuple[str | None, bytes | None, bytes | None]]] = {
        "chat": [],
        "metrics": [],
        "business": [],
    }

    def key() -> bytes | None:
        return rng.choice([None, None, b"k", b"\xff\xfe", b"", f"s-{rng.randrange(50)}".encode()])

    def valid(topic: str, i: int) -> tuple[str, dict[str, Any]]:
        eid = f"z{topic[0]}-{i:07d}"
        ts = _iso(now - rng.uniform(0, 60))
        if topic == "chat":
            return eid, {
                "message_id": eid,
                "session_id": f"s-{i % 97}",
                "tenant": "acme",
                "text": rng.choice(["hi", "héllo ✓", "mail x@y.io", "🙂" * 5]),
                "sent_at": ts,
            }
        if topic == "metrics":
            return eid, {
                "series": f"h-{i % 89}.cpu",
                "tenant": "acme",
                "reading_id": eid,
                "value": rng.uniform(0, 100),
                "timestamp": ts,
            }
        return eid, {
            "event_id": eid,
            "event_type": "order",
            "account_id": f"a-{i % 83}",
            "tenant": "globex",
            "occurred_at": ts,
            "amount": 3.5,
            "currency": "USD",
        }

    time_field = {"chat": "sent_at", "metrics": "timestamp", "business": "occurred_at"}
    id_field = {"chat": "message_id", "metrics": "reading_id", "business": "event_id"}
    last_ids: dict[str, dict[str, Any]] = {}
    topics = list(out)
    for i in range(n):
        topic = topics[i % 3]
        eid, doc = valid(topic, i)
        case = rng.randrange(20)
        value: bytes | None
        expect: str | None = DEAD if case in _ALWAYS_DEAD else None
        if case < 6:  # valid
            value, expect = json.dumps(doc).encode(), eid
        elif case == 6:  # malformed JSON
            value = json.dumps(doc).encode()[: rng.randrange(1, 40)]
        elif case == 7:  # wrong types
            doc[rng.choice(list(doc))] = rng.choice([[1, 2], {"a": 1}, True, 12345678901234567890])
            value = json.dumps(doc).encode()
        elif case == 8:  # missing field
            doc.pop(rng.choice(list(doc)))
            value = json.dumps(doc).encode()
        elif case == 9:  # invalid UTF-8
            raw = bytearray(json.dumps(doc).encode())
            raw[rng.randrange(len(raw))] = rng.choice([0xFF, 0xC3, 0x80, 0xFE])
            value = bytes(raw)
        elif case == 10:  # NaN / Infinity
            doc["value" if topic == "metrics" else "amount"] = rng.choice(
                [math.nan, math.inf, -math.inf]
            )
            expect = DEAD if topic != "chat" else None  # chat records ignore an "amount"
            value = json.dumps(doc).encode()
        elif case == 11:  # naive timestamp
            doc[time_field[topic]] = datetime.now().replace(microsecond=0).isoformat()
            value = json.dumps(doc).encode()
        elif case == 12:  # far future / far past / garbage time
            doc[time_field[topic]] = rng.choice(
                [
                    "9999-12-31T23:59:59Z",
                    "2999-01-01T00:00:00+00:00",
                    "0001-01-01T00:00:00Z",
                    "not a time",
                    1e30,
                    -1,
                ]
            )
            value = json.dumps(doc).encode()
        elif case == 13:  # lone surrogates, control characters, odd unicode
            s = rng.choice(['"\\ud800"', '"\\udfff x"', '"\\u0000\\u001f"', '"\u202e\ufeff"'])
            value = (
                json.dumps(doc)
                .encode()
                .replace(b'"acme"', s.encode())
                .replace(b'"globex"', s.encode())
            )
            if topic == "chat":
                value = value.replace(json.dumps(doc["text"]).encode(), s.encode(), 1)
        elif case == 14:  # deep nesting / huge numbers / not an object
            value = rng.choice(
                [
                    b"[" * 5000 + b"]" * 5000,
                    b'{"a":' * 3000 + b"1" + b"}" * 3000,
                    b"1e999999",
                    b"null",
                    b'"str"',
                    b"true",
                    b"[]",
                    b"{}",
                    json.dumps({**doc, "value": 10**400}).encode() if topic == "metrics" else b"-0",
                ]
            )
        elif case == 15:  # null value (tombstone)
            value = None
        elif case == 16:  # duplicate id: an earlier valid record of this topic again
            prev = last_ids.get(topic)
            if prev is None:
                value, expect = json.dumps(doc).encode(), eid
            else:
                value, expect = json.dumps(prev).encode(), prev[id_field[topic]]
        elif case == 17:  # extra fields, wrong shape for the topic's adapter
            other = valid(topics[(i + 1) % 3], i + n)[1]
            value = json.dumps(other).encode()
        elif case == 18:  # empty and whitespace
            value = rng.choice([b"", b" ", b"\n", b"\x00", b"\xef\xbb\xbf{}"])
        else:  # long strings within limits
            if topic == "chat":
                doc["text"] = "lorem " * rng.randrange(100, 5000)
            value, expect = json.dumps(doc).encode(), eid
            if len(value) > 64 * 1024:
                expect = None
        if case < 6 or case == 19:
            last_ids[topic] = doc
        out[topic].append((expect, key(), value))
    for j in range(big):  # ~1 MB payloads: valid JSON, invalid UTF-8, malformed
        topic = topics[j % 3]
        eid, doc = valid(topic, n + 1000 + j)
        variant = j % 3
        if variant == 0 and topic == "chat":
            doc["text"] = "x" * 1_000_000
            value = json.dumps(doc).encode()
        elif variant == 1:
            value = b"\xff" * 1_000_000
        else:
            value = b'{"x": "' + b"y" * 1_048_576
        out[topic].append((DEAD, key(), value))
    return out


def fuzz(ctx: Ctx) -> Outcome:
    """100,000 generated payloads (quick: 6,000): the flow never crashes, every input record
    comes out exactly once as a ledger entry or a dead letter, and every dead letter carries
    the original bytes (or a bounded prefix with size and hash), coordinates and a reason."""
    n = 6_000 if ctx.quick else 100_000
    payloads = fuzz_payloads(n, big=6 if ctx.quick else 20)
    with _sim(latency_ms=20, max_concurrency=64) as sim:
        dep = _new_dep(ctx, "fuzz", sim, partitions=2)
        for name, recs in payloads.items():
            produce(
                dep.bootstrap,
                dep.topics[name],
                [(k, v) for _, k, v in recs],
                producer_config={"message.max.bytes": 8_000_000},
                timeout_s=300,
            )
        runner = FlowRunner(dep)
        try:
            runner.start()
            code = runner.wait(1200)
        finally:
            runner.stop()
        rep = check(dep, sim.requests(), runner.generations)
    dead = [d for d in dep.drain("dead_letters", 0.5) if d["step_id"] == "decode"]
    inputs = {
        f"{dep.topics[name]}[{r.partition}]@{r.offset}": r.value
        for name in payloads
        for r in consume_all(dep.bootstrap, dep.topics[name], idle_s=1.0, timeout_s=600)
    }
    bad_letters = []
    for d in dead:
        src = inputs.get(d["source"], b"?")
        if not (d.get("reason") and d.get("source")):
            bad_letters.append(("no reason/source", d["source"]))
            continue
        if src is None:
            ok = d["raw"] is None
        elif d["raw"] is None:
            ok = False
        else:
            raw = d["raw"].encode() if d["raw_encoding"] == "utf-8" else base64.b64decode(d["raw"])
            if d.get("detail", {}).get("raw_truncated"):
                ok = (
                    src.startswith(raw)
                    and d["detail"]["raw_size"] == len(src)
                    and (d["detail"]["raw_sha256"] == hashlib.sha256(src).hexdigest())
                )
            else:
                ok = raw == src
        if not ok:
            bad_letters.append(("raw bytes differ", d["source"]))
    must_ok = {e for recs in payloads.values() for e, _, _ in recs if e and e != DEAD}
    must_dead = Counter(
        hashlib.sha256(v).hexdigest() if v is not None else None
        for recs in payloads.values()
        for e, _, v in recs
        if e == DEAD
    )
    dead_digests: Counter[str | None] = Counter()
    for d in dead:
        if d["raw"] is None:
            dead_digests[None] += 1
        elif d.get("detail", {}).get("raw_truncated"):
            dead_digests[d["detail"]["raw_sha256"]] += 1
        else:
            raw = d["raw"].encode() if d["raw_encoding"] == "utf-8" else base64.b64decode(d["raw"])
            dead_digests[hashlib.sha256(raw).hexdigest()] += 1
    accepted = {e["event_id"] for e in dep.drain("ledger", 0.5)}
    not_accepted = must_ok - accepted
    not_dead = sum((must_dead - dead_digests).values())
    out = Outcome(
        rep,
        extra={
            "payloads": sum(len(v) for v in payloads.values()),
            "must_accept": len(must_ok),
            "must_dead_letter": sum(must_dead.values()),
            "accepted_either_way": rep.ledger - len(must_ok),
            "decode_dead_letters": len(dead),
            "dead_letters_without_bytes": len(bad_letters),
            "exit_code": code,
            "peak_rss_mb": round(runner.generations[0].peak_rss / 2**20),
        },
    )
    _standard(out)
    out.expect(code == 0, f"the flow exited {code}: {runner.tail()}")
    out.expect(rep.duplicates == 0, f"duplicates in a clean run: {rep.duplicates}")
    out.expect(
        rep.ledger + len(dead) == rep.inputs,
        f"in {rep.inputs} != ledger {rep.ledger} + dead letters {len(dead)}",
    )
    out.expect(not bad_letters, f"dead letters without their bytes: {bad_letters[:3]}")
    out.expect(not not_accepted, f"valid records not accepted: {sorted(not_accepted)[:5]}")
    out.expect(not_dead == 0, f"{not_dead} invalid records not dead-lettered")
    return out


# --------------------------------------------------------------------------- 10. bounded state


def _du(path: Path, *, data_only: bool = False) -> int:
    """Bytes under `path`; `data_only` skips RocksDB's informational logs (LOG, LOG.old.*),
    which grow with every compaction message, not with the data."""
    if not path.exists():
        return 0
    return sum(
        p.stat().st_size
        for p in path.rglob("*")
        if p.is_file() and not (data_only and p.name.startswith("LOG"))
    )


def bounded_state(ctx: Ctx) -> Outcome:
    """1,000,000 events over 100,000 entities (quick: 100,000 over 10,000), in waves that
    each use a fresh tenth of the entities, with idle expiry configured: RSS, the rocksdict
    stores and the recovery store level off (the curve's points are reported)."""
    waves = 10
    n, entities = (100_000, 10_000) if ctx.quick else (1_000_000, 100_000)
    # Quick: 2 s (expiry wakes at a 1 s granularity, so a wave's keys are gone by the time
    # the next wave is measured, ttl + 1.5 s after its start).
    ttl = 2.0 if ctx.quick else 15.0
    per_wave, ents_per_wave = n // waves, entities // waves
    cache_ttl = 2 * ttl  # the LLM response cache (llm.cache_ttl_s): long enough for a replay
    extra = (
        f"cache_ttl_s = {cache_ttl}\n"
        f"\n[anomaly]\nidle_ttl_s = {ttl}\nrate_window_s = 2.0\nallowed_lateness_s = 1.0\n"
        f"[memory]\nidle_ttl_s = {ttl}\n"
        f"[validation]\ndedup_ttl_s = {ttl}\n"
    )
    curve = []
    with _sim(latency_ms=20) as sim:
        dep = _new_dep(ctx, "bounded_state", sim, partitions=2, tail=True, extra_toml=extra)
        runner = FlowRunner(dep)
        produced = 0
        ledger_count = TopicCounter(dep.bootstrap, dep.topics["ledger"])
        try:
            runner.start()
            for w in range(waves):
                t0 = time.time()
                recs = []
                for i in range(per_wave):
                    ent = w * ents_per_wave + i % ents_per_wave
                    eid = f"w{w}-{i:07d}"
                    recs.append(
                        json.dumps(
                            {
                                "series": f"host-{ent:06d}.cpu",
                                "tenant": "acme",
                                "reading_id": eid,
                                "value": 50.0 + (i % 7),
                                "timestamp": _iso(t0 - 1 + i / per_wave),
                            }
                        ).encode()
                    )
                produce(dep.bootstrap, dep.topics["metrics"], recs, timeout_s=300)
                # 1 % chat messages, on sessions of this wave: answers fill the LLM cache.
                chats = [
                    json.dumps(
                        {
                            "message_id": f"w{w}-c{i:06d}",
                            "session_id": f"s-{w * ents_per_wave + i % ents_per_wave:06d}",
                            "tenant": "acme",
                            "text": f"question {i}",
                            "sent_at": _iso(t0 - 1 + i / per_wave),
                        }
                    ).encode()
                    for i in range(per_wave // 100)
                ]
                produce(dep.bootstrap, dep.topics["chat"], chats, timeout_s=300)
                produced += per_wave + len(chats)
                target = produced
                _wait_for(lambda t=target: ledger_count.count() >= t, 600, 1.0)  # type: ignore[misc]
                time.sleep(max(0.0, ttl + 1.5 - (time.time() - t0)))  # let idle keys expire
                curve.append(
                    {
                        "events": produced,
                        "rss_mb": round(runner.rss() / 2**20, 1),
                        "stores_mb": round(_du(dep.workdir / "stores", data_only=True) / 2**20, 2),
                        "rocksdb_info_logs_kb": round(
                            (
                                _du(dep.workdir / "stores")
                                - _du(dep.workdir / "stores", data_only=True)
                            )
                            / 1024
                        ),
                        "recovery_mb": round(_du(dep.recovery) / 2**20, 2),
                    }
                )
                print(json.dumps({"bounded_state_point": curve[-1]}), file=sys.stderr)
            runner.signal(signal.SIGTERM)
            code = runner.wait(60)
        finally:
            runner.stop()
            ledger = ledger_count.count(1.0)
            ledger_count.close()
    rep = Report(inputs=produced, ledger=ledger, lost=max(0, produced - ledger))
    mid = curve[len(curve) // 2 - 1]
    last = curve[-1]

    def growth(key: str) -> float:
        return round((last[key] + 0.01) / (mid[key] + 0.01) - 1, 3)

    new_entities = entities - entities // 2
    out = Outcome(
        rep,
        extra={
            "entities": entities,
            "idle_ttl_s": ttl,
            "llm_cache_ttl_s": cache_ttl,
            "curve": curve,
            "rss_growth_second_half": growth("rss_mb"),
            "stores_growth_second_half": growth("stores_mb"),
            "recovery_growth_second_half": growth("recovery_mb"),
            "recovery_bytes_per_new_entity": round(
                (last["recovery_mb"] - mid["recovery_mb"]) * 2**20 / new_entities
            ),
            "peak_rss_mb": round(runner.generations[0].peak_rss / 2**20),
            "exit_code_after_sigterm": code,
        },
    )
    out.expect(rep.lost == 0, f"lost {rep.lost}")
    out.expect(
        last["rss_mb"] <= mid["rss_mb"] * 1.15,
        f"RSS kept growing: {mid['rss_mb']} MB at half, {last['rss_mb']} MB at the end",
    )
    out.expect(
        last["stores_mb"] <= mid["stores_mb"] * 1.15 + 0.05,
        f"rocksdict stores kept growing: {mid['stores_mb']} MB at half, {last['stores_mb']} MB "
        f"at the end (llm.cache_ttl_s = {cache_ttl:g})",
    )
    # Reported, not checked: Bytewax keeps one tombstone row per discarded key in the
    # recovery store, so it grows with the number of distinct keys ever seen.
    return out


SCENARIOS: dict[str, Callable[[Ctx], Outcome]] = {
    "storm": storm,
    "storm_2p": storm_2p,
    "rescale": rescale,
    "graceful": graceful,
    "broker_stall": broker_stall,
    "llm_outage": llm_outage,
    "sink_failure": sink_failure,
    "expired_offset": expired_offset,
    "damaged_recovery": damaged_recovery,
    "step_ids": step_ids,
    "fuzz": fuzz,
    "bounded_state": bounded_state,
}


def run_scenario(
    name: str, *, quick: bool, workdir: Path, broker: TansuBroker | None = None
) -> dict[str, Any]:
    """Run one scenario (on `broker`, or a fresh one) and return its figures."""
    started = time.monotonic()
    own = broker is None
    b = broker or TansuBroker().start()
    try:
        outcome = SCENARIOS[name](Ctx(b, workdir, quick))
    finally:
        if own:
            b.stop()
    figures = outcome.figures()
    figures["seconds"] = round(time.monotonic() - started, 1)
    return figures
