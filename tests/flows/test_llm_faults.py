"""The batched LLM stage against a misbehaving endpoint (the simulator over real HTTP).

Each test runs `call_llm` in a real Bytewax flow (TestingSource -> call_llm -> TestingSink)
and checks that every item comes out exactly once, as an answer or a dead letter. Nothing is
timed: an outage ends when the stage has reached the state the test is about (polled, with a
generous timeout), and the checks are on outcomes (the simulator's request log, the audit).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from config.models import LLMConfig, TaskConfig
from core.records import WorkItem
from inference.client import CallOutcome, LLMExecutor
from llmsim import LLMSimulator
from operators.llm import call_llm
from state.stores import ResponseCache, close_all
from support.harness import chat_items
from support.workload import work_items

WAIT_S = 120.0
"""Generous bound on any condition a test waits for (a slow machine only makes it slower)."""


class WatchedExecutor(LLMExecutor):
    """The real executor, keeping the futures it handed out (to see what the stage cancels)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.futures: list[Future[CallOutcome]] = []

    def submit(self, task: TaskConfig, items: list[WorkItem]) -> Future[CallOutcome]:
        fut = super().submit(task, items)
        self.futures.append(fut)
        return fut


@dataclass
class Run:
    answers: list[Any] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    errs: list[Any] = field(default_factory=list)
    executor: WatchedExecutor | None = None
    restored_on_condition: bool | None = None
    """With `restore_when`: True if the endpoint came back because the condition held."""


def wait_for(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def run_llm(
    sim: LLMSimulator,
    tmp: Path,
    work: list[WorkItem],
    restore_when: Callable[[Run], bool] | None = None,
    **cfg: Any,
) -> Run:
    """Run `work` through `call_llm`. With `restore_when`, the (down) simulator is brought
    back as soon as the condition holds on the running stage (or after `WAIT_S`)."""
    task = TaskConfig(
        name="chat",
        schema_name="chat_reply",
        model="sim-1",
        mode=cfg.pop("mode", "pack"),
        max_batch=cfg.pop("max_batch", 8),
        max_wait_ms=cfg.pop("max_wait_ms", 20),
    )
    cfg = {"backoff_base_s": 0.02, "backoff_max_s": 0.5, "timeout_s": 5, **cfg}
    settings = LLMConfig(tasks=(task,), routes=(), **cfg)
    executor = WatchedExecutor(settings, sim.base_url, ResponseCache(tmp / "cache"))
    run = Run(executor=executor)
    watcher = None
    if restore_when is not None:
        cond = restore_when

        def restore() -> None:
            run.restored_on_condition = wait_for(lambda: cond(run))
            sim.configure(down=False)

        watcher = threading.Thread(target=restore, daemon=True)
        watcher.start()
    audit: list[Any] = []
    flow = Dataflow("llm_faults")
    out = call_llm("llm", op.input("in", flow, TestingSource(work)), settings, lambda: executor)
    op.output("answers", out.answers, TestingSink(run.answers))
    op.output("audit", out.audit, TestingSink(audit))
    op.output("errs", out.errs, TestingSink(run.errs))
    try:
        run_main(flow)
    finally:
        if watcher is not None:
            sim.configure(down=False)
            watcher.join(WAIT_S)
        executor.close()
        close_all()
    run.audit = [a.record for a in audit]
    return run


def requests_by_item(sim: LLMSimulator) -> dict[str, list[dict[str, Any]]]:
    """Every answered (HTTP 200) request that carried each item, in arrival order."""
    by_item: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for req in sorted(sim.requests(), key=lambda r: r["ts"]):
        if req["status"] == 200:
            for item_id in chat_items(req):
                by_item[item_id].append(req)
    return by_item


def assert_each_once(run: Run, work: list[WorkItem]) -> None:
    seen = Counter(a.item.item_id for a in run.answers) + Counter(e.event_id for e in run.errs)
    assert seen == Counter(i.item_id for i in work)


def test_429_storm_is_absorbed_by_adaptive_concurrency(llm_sim_factory, tmp_path):
    sim = llm_sim_factory(latency_ms=50, max_concurrency=2)
    work = work_items(160)
    run = run_llm(sim, tmp_path, work, concurrency=32, adaptive_concurrency=True, max_batch=4)
    assert_each_once(run, work)
    assert not run.errs
    faults = Counter(r["fault"] for r in sim.requests())
    assert faults["429"] > 0  # the storm happened
    assert run.executor is not None and run.executor.limiter.limit() <= 4


def test_server_errors_are_retried(llm_sim_factory, tmp_path):
    sim = llm_sim_factory(latency_ms=5, error_rate=0.3, seed=3)
    work = work_items(80)
    run = run_llm(sim, tmp_path, work, max_attempts=8, breaker_failures=50)
    assert_each_once(run, work)
    assert not run.errs
    assert any(a["attempts"] > 1 for a in run.audit)


def test_attempts_longer_than_the_timeout_are_retried(llm_sim_factory, tmp_path):
    """Hung attempts are abandoned at the client's timeout and sent again: every extra
    attempt in the audit is one request the simulator hung (none was waited out, or its
    request would have counted as answered at the first attempt)."""
    sim = llm_sim_factory(latency_ms=5, timeout_rate=0.3, hang_s=3, seed=5)
    work = work_items(40)
    run = run_llm(
        sim, tmp_path, work, timeout_s=0.3, max_attempts=8, breaker_failures=50, concurrency=8
    )
    assert_each_once(run, work)
    assert not run.errs
    retries = sum(a["attempts"] - 1 for a in run.audit)
    assert retries > 0

    def hung() -> int:  # the simulator logs a hung request when its hang ends
        return sum(1 for r in sim.requests() if r["fault"] == "timeout")

    assert wait_for(lambda: hung() >= retries)
    assert hung() == retries


def test_malformed_answers_are_reasked_once(llm_sim_factory, tmp_path):
    sim = llm_sim_factory(latency_ms=5, malformed_rate=0.3, seed=7)
    work = work_items(64)
    run = run_llm(sim, tmp_path, work)
    assert_each_once(run, work)
    # items whose batch answer was malformed were asked again alone
    assert any(a["batch_size"] == 1 for a in run.audit)
    # an item is a dead letter exactly when its last request (the re-ask) was malformed too
    by_item = requests_by_item(sim)
    assert set(by_item) == {i.item_id for i in work}
    expected = {i for i, reqs in by_item.items() if reqs[-1]["fault"] == "malformed"}
    assert {e.event_id for e in run.errs} == expected
    for e in run.errs:
        assert "not valid JSON" in e.reason and e.detail["raw_answer"]


def test_always_malformed_answers_become_dead_letters_with_the_raw_answer(
    llm_sim_factory, tmp_path
):
    sim = llm_sim_factory(latency_ms=5, malformed_rate=1.0)
    work = work_items(8)
    run = run_llm(sim, tmp_path, work)
    assert_each_once(run, work)
    assert len(run.errs) == 8
    assert all("not valid JSON" in e.reason and e.detail["raw_answer"] for e in run.errs)
    assert len(sim.requests()) == 1 + 8  # the batch, then each item alone once


def test_packed_answer_missing_items_are_asked_again_alone(llm_sim_factory, tmp_path):
    sim = llm_sim_factory(latency_ms=5, drop_item_rate=0.25, seed=11)
    work = work_items(64)
    run = run_llm(sim, tmp_path, work, max_batch=16)
    assert_each_once(run, work)
    assert any(a["outcome"] == "partial" for a in run.audit)
    assert any(a["batch_size"] == 1 for a in run.audit)
    # an item alone can be dropped again; then (and only then) it is a dead letter
    by_item = requests_by_item(sim)
    assert set(by_item) == {i.item_id for i in work}
    expected = {
        i for i, reqs in by_item.items() if len(reqs) > 1 and reqs[-1]["fault"] == "dropped_items"
    }
    assert {e.event_id for e in run.errs} == expected
    for e in run.errs:
        assert "no entry for this item" in e.reason


def test_outage_opens_the_breaker_holds_requests_and_loses_nothing(llm_sim_factory, tmp_path):
    """The endpoint stays down until the breaker has opened 5 times (4 failed probes, more
    than `max_attempts` = 3): held requests are not charged attempts, only probes reach the
    endpoint, and when it returns everything is answered."""
    sim = llm_sim_factory(latency_ms=10, down=True)
    work = work_items(120)

    def long_outage(run: Run) -> bool:
        return run.executor is not None and run.executor.limiter.breaker.opened_count >= 5

    run = run_llm(
        sim,
        tmp_path,
        work,
        restore_when=long_outage,
        max_attempts=3,
        breaker_failures=3,
        # Open periods 0.25, 0.5, 1, 1, 1 s: five openings in about 4 s (what is checked is
        # how many times it opened and what reached the endpoint, not how long it was open).
        breaker_open_s=0.25,
        breaker_max_open_s=1.0,
        concurrency=4,
    )
    assert run.restored_on_condition
    assert_each_once(run, work)
    assert not run.errs
    assert run.executor is not None and run.executor.limiter.breaker.opened_count >= 5
    during = [r for r in sim.requests() if r["status"] == 503]
    assert 3 <= len(during) <= 20  # a few failures, then one probe per open period
    assert run.executor.limiter.breaker.state == "closed"


def test_outage_beyond_the_hold_bound_dead_letters_the_excess(llm_sim_factory, tmp_path):
    """The endpoint stays down until the stage has shed what exceeds `max_held_items` (a
    dead letter emitted, or a request it had queued cancelled); the rest is answered."""
    sim = llm_sim_factory(latency_ms=10, down=True)
    first = work_items(8, "a")

    def shed(run: Run) -> bool:
        ex = run.executor
        return bool(run.errs) or (ex is not None and any(f.cancelled() for f in ex.futures))

    run = run_llm(
        sim,
        tmp_path,
        first + work_items(40, "b"),
        restore_when=shed,
        breaker_failures=1,
        breaker_open_s=0.5,
        concurrency=1,
        max_batch=4,
        max_held_items=12,
    )
    assert run.restored_on_condition
    assert_each_once(run, first + work_items(40, "b"))
    assert run.errs and all("llm.max_held_items" in e.reason for e in run.errs)
    assert len(run.answers) >= 12


# --- a server that queues instead of answering 429 (llama-server's slots) --------------------


def test_a_queueing_server_is_not_flooded(llm_sim_factory, tmp_path):
    """The simulator serves 4 requests at once and queues the rest (never a 429). With 32
    request threads, the latency gradient holds the requests the server sees near its 4
    slots (`tolerance x 4 + queue` at most); without it, all 32 pile up in its queue."""
    slots = 4
    sim = llm_sim_factory(latency_ms=100, queue_slots=slots)
    work = work_items(240)
    run = run_llm(sim, tmp_path, work, mode="fanout", concurrency=32)
    assert_each_once(run, work)
    assert not run.errs
    log = sorted(sim.requests(), key=lambda r: r["ts"])
    assert {r["fault"] for r in log} == {None}  # no 429: the server only queued
    cfg = LLMConfig()
    assert cfg.latency_tolerance is not None
    bound = cfg.latency_tolerance * slots + cfg.latency_queue + 1
    settled = [r["in_flight"] for r in log[len(log) // 2 :]]
    assert max(settled) <= bound, settled
    assert max(settled) >= slots  # the slots were kept busy
    assert run.executor is not None and slots <= run.executor.limiter.limit() <= bound

    sim.reset_log()
    flooded = run_llm(
        sim,
        tmp_path / "aimd",
        work_items(240, "a"),
        mode="fanout",
        concurrency=32,
        latency_tolerance=None,
    )
    assert_each_once(flooded, work_items(240, "a"))
    assert max(r["in_flight"] for r in sim.requests()) > 2 * bound


# --- prompts over the model's context (a 400, not retried) -----------------------------------

SHORT_TOKENS_LIMIT = 300
"""A simulator context that holds a prompt of up to 4 short items, but not 8, nor one long."""


def mixed_items(n: int) -> tuple[list[WorkItem], set[str]]:
    """`n` items, every fifth one long (about 200 prompt tokens more than a short one)."""
    work = []
    for i, item in enumerate(work_items(n)):
        text = "why " * 200 if i % 5 == 0 else item.data["text"]
        work.append(dataclasses.replace(item, data={"text": text}))
    return work, {w.item_id for i, w in enumerate(work) if i % 5 == 0}


def test_packs_over_the_context_are_halved_then_asked_alone(llm_sim_factory, tmp_path):
    sim = llm_sim_factory(latency_ms=5, max_context_tokens=SHORT_TOKENS_LIMIT)
    work, long_ids = mixed_items(16)
    # Two full packs of 8: a batch that waits 20 ms may close at 7 on a loaded machine (the
    # halving then starts from 7, and the sizes below are no longer 8, 4, 2, 1).
    run = run_llm(sim, tmp_path, work, max_batch=8, max_wait_ms=2000)
    assert_each_once(run, work)
    assert {e.event_id for e in run.errs} == long_ids
    for e in run.errs:
        assert "even asked alone" in e.reason and "exceed_context_size_error" in e.reason
        assert e.detail["raw_answer"] is None
    refused = Counter(tuple(chat_items(r)) for r in sim.requests() if r["fault"] == "context")
    assert set(refused.values()) == {1}  # never retried as it was
    assert sorted({len(ids) for ids in refused}) == [1, 2, 4, 8]  # halved down to one item
    assert {ids[0] for ids in refused if len(ids) == 1} == long_ids
    outcomes = Counter((a["outcome"], a["batch_size"]) for a in run.audit)
    assert outcomes[("context_exceeded", 8)] == 2
    answered = {a.item.item_id for a in run.answers}
    assert answered == {w.item_id for w in work} - long_ids


def test_fanout_items_over_the_context_are_dead_lettered_at_once(llm_sim_factory, tmp_path):
    sim = llm_sim_factory(latency_ms=5, max_context_tokens=SHORT_TOKENS_LIMIT)
    work, long_ids = mixed_items(10)
    run = run_llm(sim, tmp_path, work, mode="fanout")
    assert_each_once(run, work)
    assert {e.event_id for e in run.errs} == long_ids
    per_item = Counter(i for r in sim.requests() for i in chat_items(r))
    assert all(per_item[i] == 1 for i in long_ids)  # one request each, no retry
