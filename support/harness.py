"""Run the real flow as a subprocess against the broker and the LLM simulator, then account.

Used by the end-to-end tests and the benchmarks. `Deployment` owns the topics and a config
file; `start_flow` launches `python -m bytewax.run "flows.pipeline:build('<config>')"` with
recovery; `drain` reads every output topic back; `account` checks `in = ok + dead letters`.

The fault harness (used by `bench/faults.py` and `tests/e2e/test_faults.py`) adds:
- `FlowRunner`: successive flow processes on one recovery directory, each a `Generation`
  (start and end time, how it ended, exit code), killed or stopped by signal, with its RSS
  sampled;
- `check`: a Jepsen-style checker that drains every input and output topic and the
  simulator's request log and reports, per input record and event id, what was lost,
  duplicated, unseen, inconsistent, and which LLM requests were repeated for an answer that
  was already cached (see `Report`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from bytewax.recovery import init_db_dir

from support.broker import Record, consume_all, create_topic

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = ("responses", "alerts", "dead_letters", "audit", "ledger")


@dataclass
class Deployment:
    """Topics and a config file for one end-to-end run (uuid-named, so runs never collide)."""

    bootstrap: str
    workdir: Path
    llm_url: str
    partitions: int = 2
    tail: bool = False
    extra_toml: str = ""
    kafka_toml: str = ""
    """Extra lines for the `[kafka]` table (e.g. `message_max_bytes = 20000`)."""
    knowledge: bool = False
    """Give the deployment a knowledge input (topic `topics["knowledge"]`, 2 partitions)."""
    erasures: bool = False
    """Give the deployment an erasures input (topic `topics["erasures"]`, 1 partition)."""
    topics: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tag = uuid.uuid4().hex[:10]
        for name in ("chat", "metrics", "business", "profiles", *OUTPUTS):
            parts = self.partitions if name in ("chat", "metrics", "business") else 1
            self.topics[name] = create_topic(self.bootstrap, f"{name}-{tag}", parts)
        if self.knowledge:
            self.topics["knowledge"] = create_topic(self.bootstrap, f"knowledge-{tag}", 2)
        if self.erasures:
            self.topics["erasures"] = create_topic(self.bootstrap, f"erasures-{tag}", 1)
        self.recovery = self.workdir / "recovery"
        self.recovery.mkdir(parents=True, exist_ok=True)
        init_db_dir(self.recovery, 1)
        self.config = self.workdir / "flow.toml"
        self.write_config()

    def write_config(self, *, tail: bool | None = None) -> None:
        t = self.topics
        tail_value = str(self.tail if tail is None else tail).lower()
        knowledge = (
            f'knowledge = {{ name = "knowledge", topic = "{t["knowledge"]}" }}'
            if self.knowledge
            else ""
        )
        if self.erasures:
            knowledge += f'\nerasures = {{ name = "erasures", topic = "{t["erasures"]}" }}'
        self.config.write_text(
            f"""
[app]
name = "e2e"
profile = "dev"

[kafka]
brokers = ["{self.bootstrap}"]
{self.kafka_toml}

[input]
kind = "kafka"
tail = {tail_value}
sources = [
  {{ name = "chat", topic = "{t["chat"]}", adapter = "chat_message" }},
  {{ name = "metrics", topic = "{t["metrics"]}", adapter = "metric_reading" }},
  {{ name = "business", topic = "{t["business"]}", adapter = "business_event" }},
]
profiles = {{ name = "profiles", topic = "{t["profiles"]}" }}
{knowledge}

[output]
kind = "kafka"
responses = "{t["responses"]}"
alerts = "{t["alerts"]}"
dead_letters = "{t["dead_letters"]}"
audit = "{t["audit"]}"
ledger = "{t["ledger"]}"

[stores]
dir = "{self.workdir / "stores"}"

[llm]
base_url = "{self.llm_url}"
concurrency = 8
timeout_s = 10
max_attempts = 4
backoff_base_s = 0.05
{self.extra_toml}
"""
        )

    def start_flow(
        self,
        *,
        snapshot_s: int = 1,
        log_name: str = "flow",
        env: dict[str, str] | None = None,
        workers: int = 1,
        process: tuple[int, Sequence[str]] | None = None,
    ) -> subprocess.Popen[bytes]:
        """One flow process: `workers` worker threads; `process` is `(index, addresses)` for
        one process of a `-i/-a` cluster."""
        log = open(self.workdir / f"{log_name}.log", "ab")  # noqa: SIM115 - owned by the process
        cmd = [
            sys.executable,
            "-m",
            "bytewax.run",
            f"flows.pipeline:build('{self.config}')",
            "-r",
            str(self.recovery),
            "-s",
            str(snapshot_s),
            "-b",
            "0",
        ]
        if workers > 1:
            cmd += ["-w", str(workers)]
        if process is not None:
            cmd += ["-i", str(process[0]), "-a", ";".join(process[1])]
        full_env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "OPENAI_API_KEY": "sim-key",
            **(env or {}),
        }
        return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=full_env)

    def start_cluster(
        self,
        processes: int,
        *,
        workers: int = 1,
        snapshot_s: int = 1,
        log_name: str = "flow",
        env: dict[str, str] | None = None,
    ) -> list[subprocess.Popen[bytes]]:
        """`processes` flow processes of one cluster (`-i/-a` on loopback ports), all with
        this deployment's one config; logs `<log_name>-p<i>.log`. One process is started as
        `start_flow` would (no `-i/-a`)."""
        if processes == 1:
            return [
                self.start_flow(snapshot_s=snapshot_s, log_name=log_name, env=env, workers=workers)
            ]
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(processes)]
        return [
            self.start_flow(
                snapshot_s=snapshot_s,
                log_name=f"{log_name}-p{i}",
                env=env,
                workers=workers,
                process=(i, addresses),
            )
            for i in range(processes)
        ]

    def log(self, log_name: str = "flow") -> str:
        return (self.workdir / f"{log_name}.log").read_text(errors="replace")

    def drain(self, name: str, idle_s: float = 2.0) -> list[dict[str, Any]]:
        recs: list[Record] = consume_all(self.bootstrap, self.topics[name], idle_s=idle_s)
        return [json.loads(r.value) for r in recs if r.value is not None]

    def drain_all(self, *names: str, idle_s: float = 2.0) -> list[list[dict[str, Any]]]:
        """`drain` of each topic in `names`, the topics read concurrently (each to its end by
        the same idle rule; read one after the other, the idle intervals add up)."""
        with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="drain") as pool:
            futures = [pool.submit(self.drain, name, idle_s) for name in names]
            return [f.result() for f in futures]

    def llm_audit(self, idle_s: float = 2.0) -> list[dict[str, Any]]:
        """The audit topic's per-request LLM records (without the activity records)."""
        return [r for r in self.drain("audit", idle_s=idle_s) if r.get("type") == "audit"]

    def drain_timed(self, name: str, idle_s: float = 2.0) -> list[tuple[float, dict[str, Any]]]:
        """Like `drain`, with each record's broker timestamp (epoch seconds)."""
        recs = consume_all(self.bootstrap, self.topics[name], idle_s=idle_s, timeout_s=600)
        return [
            ((r.timestamp_ms or 0) / 1000, json.loads(r.value)) for r in recs if r.value is not None
        ]


@dataclass
class Accounting:
    sent: set[str]
    ledger: Counter[str]
    dead: Counter[str]
    dead_raw: int
    responses: Counter[str]
    lost: set[str]

    @property
    def duplicates(self) -> int:
        return sum(c - 1 for c in self.ledger.values() if c > 1)


def account(
    sent_ids: set[str],
    ledger: list[dict[str, Any]],
    dead: list[dict[str, Any]],
    responses: list[dict[str, Any]],
) -> Accounting:
    """Every sent event id must be in the ledger or the dead letters (lost = the rest)."""
    led = Counter(e["event_id"] for e in ledger)
    dl = Counter(d["event_id"] for d in dead if d.get("event_id"))
    resp = Counter(i for r in responses for i in r["event_ids"])
    lost = {i for i in sent_ids if i not in led and i not in dl}
    return Accounting(sent_ids, led, dl, sum(1 for d in dead if not d.get("event_id")), resp, lost)


# --------------------------------------------------------------------------- fault harness

INPUTS = ("chat", "metrics", "business")


@dataclass
class Generation:
    """One flow process on the shared recovery directory."""

    index: int
    started: float
    ended: float | None = None
    how: str = "running"  # "exit", or the signal name that ended it
    returncode: int | None = None
    in_flight_at_end: int | None = None
    """LLM requests the simulator was serving when the process was signalled."""
    stop_s: float | None = None
    """Signal to exit, for graceful stops."""
    peak_rss: int = 0
    processes: int = 1
    """Processes of the generation (a `-i/-a` cluster when more than one)."""


class FlowRunner:
    """Runs `dep`'s flow as successive generations on one recovery directory; a generation is
    one process, or several processes of one cluster (`start(processes=2)`), all with the
    same config.

    >>> runner = FlowRunner(dep)  # doctest: +SKIP
    >>> runner.start(); runner.signal(signal.SIGKILL); runner.start(2); runner.wait(300)
    """

    def __init__(
        self, dep: Deployment, *, snapshot_s: int = 1, env: dict[str, str] | None = None
    ) -> None:
        self.dep = dep
        self.snapshot_s = snapshot_s
        self.env = env
        self.generations: list[Generation] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.rss_samples: list[tuple[float, int]] = []

    @property
    def current(self) -> Generation:
        return self.generations[-1]

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The current generation's first process."""
        return self.procs[0] if self.procs else None

    def log_name(self, index: int | None = None, process: int = 0) -> str:
        gen = self.generations[self.current.index if index is None else index]
        return f"gen{gen.index}" if gen.processes == 1 else f"gen{gen.index}-p{process}"

    def start(self, processes: int = 1) -> subprocess.Popen[bytes]:
        if any(p.poll() is None for p in self.procs):
            raise RuntimeError("a flow process is still running")
        gen = Generation(len(self.generations), time.time(), processes=processes)
        self.generations.append(gen)
        self.procs = self.dep.start_cluster(
            processes, snapshot_s=self.snapshot_s, log_name=f"gen{gen.index}", env=self.env
        )
        threading.Thread(
            target=self._sample, args=(list(self.procs), gen), daemon=True, name="rss-sampler"
        ).start()
        return self.procs[0]

    def _sample(self, procs: list[subprocess.Popen[bytes]], gen: Generation) -> None:
        """Peak RSS of the generation: the largest process (each process has its own)."""
        try:
            ps = [psutil.Process(p.pid) for p in procs]
            while any(p.poll() is None for p in procs):
                rss = max(self._rss_of(x) for x in ps)
                gen.peak_rss = max(gen.peak_rss, rss)
                self.rss_samples.append((time.time(), rss))
                time.sleep(0.5)  # sampling interval
        except psutil.Error:
            pass

    @staticmethod
    def _rss_of(proc: psutil.Process) -> int:
        try:
            return int(proc.memory_info().rss)
        except psutil.Error:
            return 0

    def alive(self) -> bool:
        """Whether every process of the current generation still runs."""
        return bool(self.procs) and all(p.poll() is None for p in self.procs)

    def rss(self) -> int:
        return max((self._rss_of(psutil.Process(p.pid)) for p in self.procs), default=0)

    def signal(self, sig: signal.Signals, *, in_flight: int | None = None) -> None:
        """Send `sig` to every process of the generation; for SIGKILL also wait for them to
        be gone."""
        gen = self.current
        gen.in_flight_at_end = in_flight
        sent = time.time()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(sig)
                gen.how = sig.name
        if sig == signal.SIGKILL:
            for p in self.procs:
                p.wait()
        self._finish(sent)

    def _finish(self, sent: float | None = None) -> None:
        gen = self.current
        if all(p.poll() is not None for p in self.procs) and gen.ended is None:
            gen.ended = time.time()
            codes = [p.returncode for p in self.procs]
            gen.returncode = next((c for c in codes if c != 0), 0)
            if gen.how == "running":
                gen.how = "exit"
            if sent is not None and gen.how not in ("exit", "SIGKILL"):
                gen.stop_s = gen.ended - sent

    def wait(self, timeout: float) -> int:
        """Wait for the generation's processes to exit (the first non-zero exit code, else 0);
        kill them and raise if it takes too long."""
        sent = time.time() if self.current.how not in ("running", "exit") else None
        deadline = time.monotonic() + timeout
        try:
            for p in self.procs:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as exc:
            self.stop()
            msg = f"flow did not exit within {timeout} s; log:\n{self.tail()}"
            raise AssertionError(msg) from exc
        if self.current.ended is None:
            self._finish(sent)
        return self.current.returncode or 0

    def stop(self) -> None:
        """Kill processes still running (cleanup)."""
        running = [p for p in self.procs if p.poll() is None]
        for p in running:
            p.kill()
        for p in running:
            p.wait()
        if self.procs:
            self._finish()

    def tail(self, index: int | None = None, chars: int = 3000) -> str:
        gen = self.generations[self.current.index if index is None else index]
        logs = [self.dep.log(self.log_name(gen.index, i))[-chars:] for i in range(gen.processes)]
        return "\n".join(logs)


# -- workloads with known ids --------------------------------------------------------------


@dataclass
class Sent:
    """What a generator wrote: per input topic name, `(event_id or None, value)` records."""

    records: dict[str, list[tuple[str | None, bytes | None]]] = field(default_factory=dict)

    def add(self, topic: str, recs: Iterable[tuple[str | None, bytes | None]]) -> None:
        self.records.setdefault(topic, []).extend(recs)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.records.values())

    def ids(self) -> set[str]:
        return {i for recs in self.records.values() for i, _ in recs if i}

    def chat_ids(self) -> set[str]:
        return {i for i, _ in self.records.get("chat", []) if i}


def write_inputs(dep: Deployment, sent: Sent) -> None:
    """Produce `sent`'s records to the deployment's input topics."""
    from support.broker import produce

    for name, recs in sent.records.items():
        produce(
            dep.bootstrap,
            dep.topics[name],
            [(None, v) for _, v in recs],
            producer_config={"message.max.bytes": 8_000_000},
        )


# -- helpers of the end-to-end tests ----------------------------------------------------------

RUN_TIMEOUT_S = 240
"""How long one end-to-end flow run may take before the test fails (a generous bound)."""


def free_port() -> int:
    """A TCP port free on loopback now (for `-a` addresses)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_exit(
    proc: subprocess.Popen[bytes],
    dep: Deployment,
    *,
    log_name: str = "flow",
    timeout: float = RUN_TIMEOUT_S,
) -> int:
    """The exit code of a flow run; kills it and fails with its log tail after `timeout`."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.wait()
        msg = f"flow did not finish in {timeout} s; log:\n{dep.log(log_name)[-3000:]}"
        raise AssertionError(msg) from exc


def run_bench(module: str, *args: str, timeout: float = 300.0) -> tuple[dict[str, Any], list[str]]:
    """`python -m <module> <args>` from the repository (a benchmark's short run in a test);
    its last line parsed as the JSON object every benchmark ends with, and all its lines.
    Fails with the tail of its output unless it exits 0."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    lines = proc.stdout.strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-1])
    return result, lines


def wait_until(
    pred: Callable[[], bool],
    what: str,
    procs: Iterable[subprocess.Popen[bytes]] = (),
    *,
    timeout_s: float = 120.0,
    every_s: float = 0.3,
) -> None:
    """Poll `pred` until it holds; fail naming `what` after `timeout_s`, or as soon as one of
    the flow processes `procs` has exited."""
    procs = list(procs)
    deadline = time.monotonic() + timeout_s
    while not pred():
        for p in procs:
            assert p.poll() is None, f"a flow process exited ({p.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s: {what}"
        time.sleep(every_s)


def prompt_items(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The item payloads of one simulator request (`id`, `data`, `context`...), as the
    model saw them in the `<events>` array of the last message."""
    body = (request.get("messages") or [{}])[-1].get("content") or ""
    if "<events>\n" not in body:
        return []
    doc = body.split("<events>\n", 1)[1].rsplit("\n</events>", 1)[0]
    items = json.loads(doc)
    return [i for i in items if isinstance(i, dict)]


def requested_ids(requests: Iterable[dict[str, Any]], prefix: str = "") -> Counter[str]:
    """How many successful (HTTP 200) requests carried each item id starting with `prefix`."""
    seen: Counter[str] = Counter()
    for req in requests:
        if req["status"] == 200:
            seen.update(i for i in chat_items(req) if i.startswith(prefix))
    return seen


# -- the checker -----------------------------------------------------------------------------


def chat_items(request: dict[str, Any]) -> list[str]:
    """Item ids of one simulator request (the JSON array in its last message's <events>)."""
    body = (request.get("messages") or [{}])[-1].get("content") or ""
    if "<events>\n" not in body:
        return []
    doc = body.split("<events>\n", 1)[1].rsplit("\n</events>", 1)[0]
    try:
        return [str(i["id"]) for i in json.loads(doc)]
    except (ValueError, KeyError, TypeError):
        return []


@dataclass
class Report:
    """What the checker found. `lost` must be 0 in every scenario.

    - `lost`: input records (by topic/partition/offset) with neither a ledger entry nor a
      dead letter, plus chat events accepted for an answer with neither a response nor an
      LLM dead letter;
    - `duplicates`: extra ledger entries or dead letters for one input record (at-least-once
      after a crash), `duplicate_responses` the same for answers;
    - `unseen`: output records naming an input record or event id that was never written;
    - `inconsistent`: input records with two different outcomes, or events with two
      different answers;
    - `repeated_llm_requests`: items sent to the LLM again after their answer was cached
      (an earlier request for them answered while its process lived on, or their answer was
      already published); `reissued_llm_requests`: items sent again because their request
      was in flight when the process died (allowed).
    """

    inputs: int = 0
    ledger: int = 0
    dead_letters: int = 0
    responses: int = 0
    alerts: int = 0
    audit: int = 0
    llm_requests: int = 0
    lost: int = 0
    duplicates: int = 0
    duplicate_responses: int = 0
    unseen: int = 0
    inconsistent: int = 0
    repeated_llm_requests: int = 0
    reissued_llm_requests: int = 0
    lost_examples: list[str] = field(default_factory=list)
    other_examples: list[str] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)
    """Per restart: seconds from process start to its first new output record."""
    ledger_timed: list[tuple[float, dict[str, Any]]] = field(default_factory=list, repr=False)
    """The ledger as `check` read it (broker timestamp, entry); not a figure."""
    extra: dict[str, Any] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        out = {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("lost_examples", "other_examples", "extra", "recovery_s", "ledger_timed")
        }
        if self.recovery_s:
            out["recovery_s_max"] = round(max(self.recovery_s), 2)
            out["recovery_s_median"] = round(statistics.median(self.recovery_s), 2)
        if self.lost_examples:
            out["lost_examples"] = self.lost_examples[:5]
        if self.other_examples:
            out["other_examples"] = self.other_examples[:5]
        out.update(self.extra)
        return out


def _coord(topic: str, partition: int, offset: int) -> str:
    return f"{topic}[{partition}]@{offset}"


def check(
    dep: Deployment,
    sim_requests: Sequence[dict[str, Any]],
    generations: Sequence[Generation] = (),
    *,
    inputs: Sequence[str] = INPUTS,
    cache_margin_s: float = 1.0,
) -> Report:
    """Drain the input and output topics and the simulator log and account for every record.

    `generations` (from `FlowRunner`) tell which process sent which LLM request, so that a
    request in flight when its process died is told apart from one repeated after caching.
    """
    rep = Report()
    # The topics are read concurrently, each to its end (the same idle rule per topic as one
    # after the other): most of a read is waiting out the idle interval, so eight reads in a
    # row cost eight intervals, in parallel about one.
    with ThreadPoolExecutor(max_workers=len(inputs) + 5, thread_name_prefix="check") as pool:
        in_reads = [
            (
                dep.topics[name],
                pool.submit(
                    consume_all, dep.bootstrap, dep.topics[name], idle_s=1.0, timeout_s=600
                ),
            )
            for name in inputs
        ]
        ledger_f = pool.submit(dep.drain_timed, "ledger", idle_s=1.0)
        dead_f = pool.submit(dep.drain_timed, "dead_letters", idle_s=1.0)
        responses_f = pool.submit(dep.drain_timed, "responses", idle_s=1.0)
        alerts_f = pool.submit(dep.drain, "alerts", idle_s=0.5)
        audit_f = pool.submit(dep.llm_audit, idle_s=0.5)
        # Every input record, by coordinates (what "in" means), with the ids written.
        in_coords: dict[str, bytes | None] = {}
        for topic, fut in in_reads:
            for r in fut.result():
                in_coords[_coord(topic, r.partition, r.offset)] = r.value
        ledger, dead, responses = ledger_f.result(), dead_f.result(), responses_f.result()
        rep.alerts = len(alerts_f.result())
        rep.audit = len(audit_f.result())
    rep.inputs = len(in_coords)
    rep.ledger_timed = ledger
    rep.ledger, rep.dead_letters, rep.responses = len(ledger), len(dead), len(responses)

    # -- per input record: exactly one outcome (a ledger entry or a decode dead letter)
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    ids_of: dict[str, str] = {}
    for _, e in ledger:
        outcomes[e["source"]][f"ledger:{e['event_id']}:{e['route']}"] += 1
        ids_of[e["source"]] = e["event_id"]
    for _, d in dead:
        if d["step_id"].startswith("llm") or d["step_id"] == "profiles_in":
            continue
        outcomes[d["source"]][f"dead:{d['step_id']}:{d.get('event_id')}"] += 1
    for c in in_coords:
        got = outcomes.get(c)
        if not got:
            rep.lost += 1
            rep.lost_examples.append(f"input {c}: no ledger entry and no dead letter")
            continue
        if len(got) > 1:
            rep.inconsistent += 1
            rep.other_examples.append(f"input {c}: different outcomes {dict(got)}")
        rep.duplicates += sum(got.values()) - 1
    for c in outcomes:
        if c not in in_coords:
            rep.unseen += 1
            rep.other_examples.append(f"output names {c}, never written")

    # -- chat events accepted for an answer: a response or an LLM dead letter
    wanted = {e["event_id"] for _, e in ledger if e["route"] == "chat_reply"}
    answers: dict[str, set[str]] = defaultdict(set)
    answered_at: dict[str, float] = {}
    resp_count: Counter[str] = Counter()
    for ts, resp in responses:
        for i in resp["event_ids"]:
            resp_count[i] += 1
        item = resp["item_id"]
        answers[item].add(json.dumps(resp["answer"], sort_keys=True))
        answered_at[item] = min(answered_at.get(item, ts), ts)
    llm_dead = {d.get("event_id") for _, d in dead if d["step_id"].startswith("llm")}
    sent_ids = {ids_of[c] for c in in_coords if c in ids_of}
    for i in wanted:
        if resp_count[i] == 0 and i not in llm_dead:
            rep.lost += 1
            rep.lost_examples.append(f"chat event {i}: no response and no LLM dead letter")
    rep.duplicate_responses = sum(n - 1 for i, n in resp_count.items() if n > 1)
    rep.inconsistent += sum(1 for a in answers.values() if len(a) > 1)
    rep.unseen += sum(1 for i in resp_count if i not in sent_ids and not i.startswith("alert"))

    # -- LLM requests: repeated after the answer was cached, or re-issued after a crash
    rep.llm_requests = len(sim_requests)

    def generation_end(ts: float) -> float | None:
        for g in generations:
            if g.started <= ts and (g.ended is None or ts <= g.ended):
                return g.ended
        return None

    cached_at = dict(answered_at)
    per_item: dict[str, list[float]] = defaultdict(list)
    for req in sorted(sim_requests, key=lambda q: q["ts"]):
        if req["status"] != 200:
            continue
        arrived = float(req["ts"])
        for item in chat_items(req):
            if item in cached_at and arrived > cached_at[item]:
                rep.repeated_llm_requests += 1
                if len(rep.other_examples) < 20:
                    rep.other_examples.append(f"item {item} requested again after it was cached")
            elif per_item[item]:
                rep.reissued_llm_requests += 1
            per_item[item].append(arrived)
            if req["fault"] is None:
                done = arrived + float(req["latency_s"])
                end = generation_end(arrived)
                if end is None or done + cache_margin_s < end:
                    cached_at[item] = min(cached_at.get(item, done), done)

    if generations:
        rep.extra["peak_rss_mb"] = round(max(g.peak_rss for g in generations) / 2**20)
        rep.extra["restarts"] = len(generations) - 1

    # -- recovery: seconds from each restart to its first new output record
    stamps = sorted(ts for ts, _ in ledger + dead + responses)
    for g in generations[1:]:
        after = [t for t in stamps if t >= g.started and (g.ended is None or t <= g.ended)]
        if after:
            rep.recovery_s.append(after[0] - g.started)
    return rep


def flow_metrics(port: int, timeout_s: float = 2.0) -> dict[str, float]:
    """Scrape the flow's Prometheus endpoint (`BYTEWAX_DATAFLOW_API_ENABLED`) into a dict."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


class TopicCounter:
    """Counts a topic's records incrementally (one consumer kept assigned; no re-reading)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"count-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.n = 0

    def count(self, wait_s: float = 0.2) -> int:
        while True:
            msgs = self.consumer.consume(10_000, wait_s)
            self.n += sum(1 for m in msgs if m.error() is None)
            if not msgs:
                return self.n

    def close(self) -> None:
        self.consumer.close()


class Feeder:
    """Writes `sent`'s records to the input topics at about `rate` records/s, in a thread,
    so the flow runs under load (input keeps arriving while faults are injected).

    `pause()` holds the writing back (between chunks) until `resume()`: a scenario that
    needs input still arriving at its last fault pauses the feeder while the flow is down,
    so that a slow restart does not use up the input before the fault."""

    def __init__(self, dep: Deployment, sent: Sent, rate: float, chunk: int = 500) -> None:
        self.dep = dep
        self.rate = rate
        self.chunk = chunk
        self.queue = [(name, v) for name, recs in sent.records.items() for _, v in recs]
        # Interleave the topics, so every input is busy all along.
        self.queue.sort(key=lambda nv: hash(nv[1]) % 1000)
        self.written = 0
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._thread = threading.Thread(target=self._run, daemon=True, name="feeder")

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def _run(self) -> None:
        from support.broker import produce

        while self.written < len(self.queue) and not self._stop.is_set():
            self._running.wait()
            t0 = time.monotonic()
            part = self.queue[self.written : self.written + self.chunk]
            by_topic: dict[str, list[bytes | None]] = defaultdict(list)
            for name, v in part:
                by_topic[name].append(v)
            for name, values in by_topic.items():
                produce(
                    self.dep.bootstrap,
                    self.dep.topics[name],
                    [(None, v) for v in values],
                    timeout_s=600,
                    producer_config={"message.max.bytes": 8_000_000},
                )
            self.written += len(part)
            self._stop.wait(max(0.0, len(part) / self.rate - (time.monotonic() - t0)))

    @property
    def done(self) -> bool:
        return self.written >= len(self.queue)

    def pause(self) -> None:
        """Stop writing after the chunk in progress, until `resume()`."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def finish(self, timeout_s: float = 600) -> None:
        """Write the rest at full speed and wait for the thread."""
        self.rate = 1e9
        self._running.set()
        self._thread.join(timeout_s)
