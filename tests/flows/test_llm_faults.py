"""The batched LLM stage against a misbehaving endpoint (the simulator over real HTTP).

Each test runs `call_llm` in a real Bytewax flow (TestingSource -> call_llm -> TestingSink)
and checks that every item comes out exactly once, as an answer or a dead letter.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from config.models import LLMConfig, TaskConfig
from core.records import WorkItem
from inference.client import LLMExecutor
from llmsim import LLMSimulator
from operators.llm import call_llm
from state.stores import ResponseCache, close_all


def items(n: int, prefix: str = "w") -> list[WorkItem]:
    return [
        WorkItem(
            item_id=f"{prefix}-{i}",
            event_ids=(f"{prefix}-{i}",),
            tenant="acme",
            entity=f"s-{i % 5}",
            profile_id="p",
            task="chat",
            source=f"t[0]@{i}",
            data={"text": f"question {i}"},
            context={},
            ingest_ts=time.time(),
        )
        for i in range(n)
    ]


@dataclass
class Run:
    answers: list[Any] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    errs: list[Any] = field(default_factory=list)
    executor: LLMExecutor | None = None


def run_llm(sim: LLMSimulator, tmp: Path, work: list[WorkItem], **cfg: Any) -> Run:
    task = TaskConfig(
        name="chat",
        schema_name="chat_reply",
        model="sim-1",
        mode=cfg.pop("mode", "pack"),
        max_batch=cfg.pop("max_batch", 8),
        max_wait_ms=20,
    )
    cfg = {"backoff_base_s": 0.02, "backoff_max_s": 0.5, "timeout_s": 5, **cfg}
    settings = LLMConfig(tasks=(task,), routes=(), **cfg)
    executor = LLMExecutor(settings, sim.base_url, ResponseCache(tmp / "cache"))
    run = Run(executor=executor)
    audit: list[Any] = []
    flow = Dataflow("llm_faults")
    out = call_llm("llm", op.input("in", flow, TestingSource(work)), settings, lambda: executor)
    op.output("answers", out.answers, TestingSink(run.answers))
    op.output("audit", out.audit, TestingSink(audit))
    op.output("errs", out.errs, TestingSink(run.errs))
    try:
        run_main(flow)
    finally:
        executor.close()
        close_all()
    run.audit = [a.record for a in audit]
    return run


def assert_each_once(run: Run, work: list[WorkItem]) -> None:
    seen = Counter(a.item.item_id for a in run.answers) + Counter(e.event_id for e in run.errs)
    assert seen == Counter(i.item_id for i in work)


def test_429_storm_is_absorbed_by_adaptive_concurrency(llm_sim_factory, tmp_path):
    sim = llm_sim_factory(latency_ms=50, max_concurrency=2)
    work = items(160)
    run = run_llm(sim, tmp_path, work, concurrency=32, adaptive_concurrency=True, max_batch=4)
    assert_each_once(run, work)
    assert not run.errs
    faults = Counter(r["fault"] for r in sim.requests())
    assert faults["429"] > 0  # the storm happened
    assert run.executor is not None and run.executor.limiter.limit() <= 4


def test_server_errors_are_retried(llm_sim_factory, tmp_path):
    sim = llm_sim_factory(latency_ms=5, error_rate=0.3, seed=3)
    work = items(80)
    run = run_llm(sim, tmp_path, work, max_attempts=8, breaker_failures=50)
    assert_each_once(run, work)
    assert not run.errs
    assert any(a["attempts"] > 1 for a in run.audit)


def test_attempts_longer_than_the_timeout_are_retried(llm_sim_factory, tmp_path):
    sim = llm_sim_factory(latency_ms=5, timeout_rate=0.3, hang_s=3, seed=5)
    work = items(40)
    started = time.monotonic()
    run = run_llm(
        sim, tmp_path, work, timeout_s=0.3, max_attempts=8, breaker_failures=50, concurrency=8
    )
    assert_each_once(run, work)
    assert not run.errs
    assert any(a["attempts"] > 1 for a in run.audit)
    assert time.monotonic() - started < 20  # hung attempts were abandoned, not waited out


def test_malformed_answers_are_reasked_once(llm_sim_factory, tmp_path):
    sim = llm_sim_factory(latency_ms=5, malformed_rate=0.3, seed=7)
    work = items(64)
    run = run_llm(sim, tmp_path, work)
    assert_each_once(run, work)
    # items whose batch answer was malformed were asked again alone
    assert any(a["batch_size"] == 1 for a in run.audit)
    for e in run.errs:  # only if the re-ask was malformed too
        assert "not valid JSON" in e.reason and e.detail["raw_answer"]


def test_always_malformed_answers_become_dead_letters_with_the_raw_answer(
    llm_sim_factory, tmp_path
):
    sim = llm_sim_factory(latency_ms=5, malformed_rate=1.0)
    work = items(8)
    run = run_llm(sim, tmp_path, work)
    assert_each_once(run, work)
    assert len(run.errs) == 8
    assert all("not valid JSON" in e.reason and e.detail["raw_answer"] for e in run.errs)
    assert len(sim.requests()) == 1 + 8  # the batch, then each item alone once


def test_packed_answer_missing_items_are_asked_again_alone(llm_sim_factory, tmp_path):
    sim = llm_sim_factory(latency_ms=5, drop_item_rate=0.25, seed=11)
    work = items(64)
    run = run_llm(sim, tmp_path, work, max_batch=16)
    assert_each_once(run, work)
    assert any(a["outcome"] == "partial" for a in run.audit)
    assert any(a["batch_size"] == 1 for a in run.audit)
    answered = {a.item.item_id for a in run.answers}
    for e in run.errs:  # an item alone can be dropped again; then it is a dead letter
        assert e.event_id not in answered and "no entry for this item" in e.reason


def test_outage_opens_the_breaker_holds_requests_and_loses_nothing(llm_sim_factory, tmp_path):
    """The endpoint is down for 30 s: the breaker opens, held requests are not charged
    attempts, only probes reach the endpoint, and when it returns everything is answered."""
    sim = llm_sim_factory(latency_ms=10, down=True)
    work = items(120)
    outage_s = 30.0
    timer = threading.Timer(outage_s, lambda: sim.configure(down=False))
    timer.start()
    try:
        run = run_llm(
            sim,
            tmp_path,
            work,
            max_attempts=3,
            breaker_failures=3,
            breaker_open_s=1.0,
            breaker_max_open_s=4.0,
            concurrency=4,
        )
    finally:
        timer.cancel()
    assert_each_once(run, work)
    assert not run.errs
    assert run.executor is not None and run.executor.limiter.breaker.opened_count >= 2
    during = [r for r in sim.requests() if r["status"] == 503]
    assert 3 <= len(during) <= 20  # a few failures, then one probe per open period
    assert run.executor.limiter.breaker.state == "closed"


def test_outage_beyond_the_hold_bound_dead_letters_the_excess(llm_sim_factory, tmp_path):
    sim = llm_sim_factory(latency_ms=10, down=True)
    timer = threading.Timer(4.0, lambda: sim.configure(down=False))
    timer.start()
    first = items(8, "a")
    try:
        run = run_llm(
            sim,
            tmp_path,
            first + items(40, "b"),
            breaker_failures=1,
            breaker_open_s=0.5,
            concurrency=1,
            max_batch=4,
            max_held_items=12,
        )
    finally:
        timer.cancel()
    assert_each_once(run, first + items(40, "b"))
    assert run.errs and all("llm.max_held_items" in e.reason for e in run.errs)
    assert len(run.answers) >= 12
