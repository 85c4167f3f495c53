"""Several endpoints, end to end: two simulator processes, one killed and started again.

Each test runs `call_llm` in a real Bytewax flow fed while it runs (`QueueSource`), against
two `python -m llmsim` processes over real HTTP through the `openai` client. A simulator is
killed with SIGKILL mid-run (connections reset, as when a model server crashes) and started
again on the same port. Nothing is timed: each phase waits (with a generous bound) for the
state it is about, and the checks are on outcomes: every item once, which endpoint the
answers and audit records name, and the surviving simulator's own request log.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from config.models import EndpointConfig, FallbackConfig, LLMConfig, TaskConfig
from core.records import Audit, DeadLetter, Response, WorkItem
from inference.client import LLMExecutor
from operators.llm import call_llm
from state.stores import ResponseCache, close_all
from support.harness import chat_items
from support.llmproc import QueueSource, SimProcess
from support.workload import work_items

WAIT_S = 120.0
"""Generous bound on any condition a test waits for (a slow machine only makes it slower)."""
SIM_ARGS = ("--latency-ms", "20", "--max-concurrency", "64")


def wait_for(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def sims() -> Iterator[tuple[SimProcess, SimProcess]]:
    a, b = SimProcess(*SIM_ARGS).start(), SimProcess(*SIM_ARGS).start()
    try:
        yield a, b
    finally:
        a.kill()
        b.kill()


def config(a: SimProcess, b: SimProcess, task: TaskConfig | None = None, **kw: Any) -> LLMConfig:
    task = task or TaskConfig(
        name="chat", schema_name="chat_reply", model="sim-1", max_batch=4, max_wait_ms=10
    )
    b_models = ("sim-1",) if task.fallback is None else (task.fallback.model,)
    settings: dict[str, Any] = {
        "concurrency": 4,
        "breaker_failures": 3,
        "breaker_open_s": 0.3,
        "breaker_max_open_s": 1.0,
        "backoff_base_s": 0.02,
        "backoff_max_s": 0.3,
        "timeout_s": 5,
        **kw,
    }
    return LLMConfig(
        tasks=(task,),
        routes=(),
        endpoints=(
            EndpointConfig(name="a", base_url=a.base_url, models=("sim-1",)),
            EndpointConfig(name="b", base_url=b.base_url, models=b_models),
        ),
        **settings,
    )


@dataclass
class Stage:
    """A running flow and what it emitted so far (the sinks' lists fill as it runs)."""

    source: QueueSource
    executor: LLMExecutor
    answers: list[Response] = field(default_factory=list)
    audit: list[Audit] = field(default_factory=list)
    errs: list[DeadLetter] = field(default_factory=list)

    def by(self, endpoint: str, prefix: str = "") -> list[Response]:
        return [
            r
            for r in list(self.answers)
            if r.endpoint == endpoint and r.item.item_id.startswith(prefix)
        ]

    def answered(self, prefix: str) -> int:
        return sum(1 for r in list(self.answers) if r.item.item_id.startswith(prefix))

    def all_open(self) -> bool:
        return all(e.limiter.breaker_open() for e in self.executor.endpoints.endpoints)


def run_stage(tmp: Path, cfg: LLMConfig, control: Callable[[Stage], None]) -> Stage:
    """Run the flow until `control` (on its own thread) has fed it and closed its input."""
    executor = LLMExecutor(cfg, None, ResponseCache(tmp / "cache"))
    stage = Stage(QueueSource(), executor)
    failure: list[BaseException] = []

    def drive() -> None:
        try:
            control(stage)
        except BaseException as exc:  # re-raised on the test's thread
            failure.append(exc)
        finally:
            stage.source.close()

    flow = Dataflow("llm_failover")
    out = call_llm("llm", op.input("in", flow, stage.source), cfg, lambda: executor)
    op.output("answers", out.answers, TestingSink(stage.answers))
    op.output("audit", out.audit, TestingSink(stage.audit))
    op.output("errs", out.errs, TestingSink(stage.errs))
    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        run_main(flow)
    finally:
        driver.join(WAIT_S)
        executor.close()
        close_all()
    if failure:
        raise failure[0]
    return stage


def assert_each_once(stage: Stage, work: list[WorkItem]) -> None:
    seen = Counter(a.item.item_id for a in stage.answers) + Counter(e.event_id for e in stage.errs)
    assert seen == Counter(i.item_id for i in work)


def served_items(sim: SimProcess) -> set[str]:
    return {i for r in sim.requests() if r["status"] == 200 for i in chat_items(r)}


def audit_items(stage: Stage, endpoint: str) -> set[str]:
    return {
        i
        for a in stage.audit
        if a.record["endpoint"] == endpoint and a.record["outcome"] == "ok"
        for i in a.record["item_ids"]
    }


def test_kill_moves_traffic_to_the_second_and_restart_brings_it_back(sims, tmp_path):
    a, b = sims
    p1, p2, p3 = work_items(80, "p1"), work_items(40, "p2"), work_items(400, "p3")
    fed: list[WorkItem] = []
    restored: dict[str, bool] = {}

    def control(stage: Stage) -> None:
        stage.source.put(p1)
        fed.extend(p1)
        # Both endpoints are serving: kill the first while the rest of p1 is in flight.
        assert wait_for(lambda: bool(stage.by("a")) and bool(stage.by("b")))
        a.kill()
        stage.source.put(p2)
        fed.extend(p2)
        assert wait_for(lambda: stage.answered("p1") + stage.answered("p2") == 120)
        a.start()  # the same port: the configured URL finds it back
        # Keep requests coming until the restarted endpoint answers some, then a few more.
        for i in range(0, len(p3), 4):
            if stage.by("a", "p3"):
                restored["a"] = True
                break
            stage.source.put(p3[i : i + 4])
            fed.extend(p3[i : i + 4])
            time.sleep(0.05)
        restored["a_log"] = bool(served_items(a))

    stage = run_stage(tmp_path, config(a, b), control)
    assert_each_once(stage, fed)
    assert not stage.errs
    # Everything sent after the kill was answered by b, and the audit says so.
    p2_by = Counter(r.endpoint for r in stage.answers if r.item.item_id.startswith("p2"))
    assert p2_by == Counter({"b": 40})
    assert {i.item_id for i in p2} <= audit_items(stage, "b")
    # Traffic returned to a once it was back; its new log holds exactly what it answered.
    assert restored == {"a": True, "a_log": True}
    assert served_items(a) == audit_items(stage, "a") - audit_items_before_restart(stage)
    # b never died: its own log is exactly what the audit and answers attribute to b.
    b_answers = {r.item.item_id for r in stage.answers if r.endpoint == "b"}
    assert served_items(b) == audit_items(stage, "b") == b_answers
    assert all(not r.fallback and r.model == "sim-1" for r in stage.answers)


def audit_items_before_restart(stage: Stage) -> set[str]:
    """Items `a` answered in its first life (p1: the restarted process never saw them)."""
    return {i for i in audit_items(stage, "a") if i.startswith("p1")}


def test_both_down_holds_then_the_first_back_serves_everything(sims, tmp_path):
    a, b = sims
    p1, p2 = work_items(20, "p1"), work_items(30, "p2")

    def control(stage: Stage) -> None:
        stage.source.put(p1)
        assert wait_for(lambda: stage.answered("p1") == 20)
        a.kill()
        b.kill()
        stage.source.put(p2)
        # Held while both are down: every breaker opens, and opens again on failed probes.
        assert wait_for(
            lambda: all(
                e.limiter.breaker.opened_count >= 2 for e in stage.executor.endpoints.endpoints
            )
        )
        assert stage.all_open() and not stage.errs and stage.answered("p2") == 0
        b.start()
        assert wait_for(lambda: stage.answered("p2") == 30)

    stage = run_stage(tmp_path, config(a, b, max_held_items=1000), control)
    assert_each_once(stage, p1 + p2)
    assert not stage.errs  # held, not dead-lettered: an endpoint came back within the bound
    assert {r.endpoint for r in stage.answers if r.item.item_id.startswith("p2")} == {"b"}
    assert served_items(b) == {i.item_id for i in p2}


def test_both_down_beyond_the_hold_bound_dead_letters_the_excess(sims, tmp_path):
    a, b = sims
    first, rest = work_items(8, "a"), work_items(40, "b")

    def control(stage: Stage) -> None:
        a.kill()
        b.kill()
        stage.source.put(first + rest)
        assert wait_for(lambda: bool(stage.errs))
        a.start()

    cfg = config(a, b, breaker_failures=1, concurrency=1, max_held_items=12)
    stage = run_stage(tmp_path, cfg, control)
    assert_each_once(stage, first + rest)
    assert stage.errs and all("llm.max_held_items" in e.reason for e in stage.errs)
    assert len(stage.answers) >= 12
    assert {r.endpoint for r in stage.answers} == {"a"}


def test_fallback_answers_are_marked_and_cached_under_their_own_model(sims, tmp_path):
    """The primary (a) dies; after `after_s` the task's fallback model on b answers, marked
    as such in the answers and the audit. A replay from the cache finds the primary's
    answers as the primary's and the fallback's as the fallback's."""
    a, b = sims
    task = TaskConfig(
        name="chat",
        schema_name="chat_reply",
        model="sim-1",
        max_batch=4,
        max_wait_ms=10,
        fallback=FallbackConfig(model="sim-small", endpoint="b", after_s=0.5),
    )
    cfg = config(a, b, task=task)
    p1, p2 = work_items(12, "p1"), work_items(20, "p2")

    def control(stage: Stage) -> None:
        stage.source.put(p1)
        assert wait_for(lambda: stage.answered("p1") == 12)
        a.kill()
        stage.source.put(p2)
        assert wait_for(lambda: stage.answered("p2") == 20)

    stage = run_stage(tmp_path, cfg, control)
    assert_each_once(stage, p1 + p2)
    assert not stage.errs
    kinds = {(r.item.item_id[:2], r.endpoint, r.model, r.fallback) for r in stage.answers}
    assert kinds == {("p1", "a", "sim-1", False), ("p2", "b", "sim-small", True)}
    fb_audit = [x.record for x in stage.audit if x.record["fallback"]]
    assert fb_audit and all(r["endpoint"] == "b" and r["model"] == "sim-small" for r in fb_audit)
    assert {i for r in fb_audit for i in r["item_ids"]} == {i.item_id for i in p2}
    assert all(r.to_json()["fallback"] == r.fallback for r in stage.answers)

    # Replay everything: no request is sent, each answer keeps the model that gave it.
    replayed: list[Response] = []
    sent_before = len(b.requests())
    executor = LLMExecutor(cfg, None, ResponseCache(tmp_path / "cache"))
    flow = Dataflow("llm_replay")
    out = call_llm("llm", op.input("in", flow, TestingSource(p1 + p2)), cfg, lambda: executor)
    op.output("answers", out.answers, TestingSink(replayed))
    op.output("audit", out.audit, TestingSink([]))
    op.output("errs", out.errs, TestingSink([]))
    try:
        run_main(flow)
    finally:
        executor.close()
        close_all()
    assert len(b.requests()) == sent_before
    again = {(r.item.item_id[:2], r.cached, r.model, r.fallback) for r in replayed}
    assert again == {("p1", True, "sim-1", False), ("p2", True, "sim-small", True)}
