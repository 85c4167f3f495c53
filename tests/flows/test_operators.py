"""Operators wired alone: TestingSource -> operator -> TestingSink (run_main and 2 workers)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from config.models import AnomalyConfig, LLMConfig, TaskConfig
from core.records import Event, Kind, WorkItem
from inference.client import LLMExecutor
from llmsim import LLMSimulator
from operators.anomaly import detect_anomalies
from operators.dedup import dedup
from operators.llm import call_llm
from state.stores import ResponseCache, close_all

RUNNERS = ["run_main", "cluster_main"]


def _run(flow: Dataflow, runner: str) -> None:
    if runner == "run_main":
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=2)


def metric(i: int, entity: str = "s1", value: float = 10.0, ts: float | None = None) -> Event:
    return Event(
        event_id=f"{entity}-{i}",
        source=f"t[0]@{i}",
        tenant="acme",
        kind=Kind.METRIC,
        entity=entity,
        ts=1_000.0 + i if ts is None else ts,
        payload={"value": value, "unit": None, "tags": {}},
        ingest_ts=0.0,
    )


@pytest.mark.parametrize("runner", RUNNERS)
def test_dedup_drops_repeats_per_entity(runner: str) -> None:
    events = [metric(i, e) for e in ("a", "b") for i in range(20)]
    events += [metric(3, "a"), metric(7, "b"), metric(7, "b")]
    oks: list[Any] = []
    dups: list[Any] = []
    flow = Dataflow("dedup_test")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(events)), lambda e: e.key)
    out = dedup("dedup", keyed, ttl_s=3600, max_ids=1000, clock=lambda: 0.0)
    op.output("oks", out.oks, TestingSink(oks))
    op.output("dups", out.dups, TestingSink(dups))
    _run(flow, runner)
    assert len(oks) == 40
    assert Counter(e.event_id for _, e in dups) == {"a-3": 1, "b-7": 2}


@pytest.mark.parametrize("runner", RUNNERS)
def test_anomaly_alerts_carry_evidence(runner: str) -> None:
    values = [10.0 + (i % 3) * 0.1 for i in range(60)]
    values[45] = 50.0
    events = [metric(i, "s1", v) for i, v in enumerate(values)]
    events += [metric(i, "s2", 5.0 + (i % 2) * 0.1) for i in range(60)]
    oks: list[Any] = []
    alerts: list[Any] = []
    flow = Dataflow("anomaly_test")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(events)), lambda e: e.key)
    cfg = AnomalyConfig(detector="ewma", warmup=20, z_threshold=5)
    out = detect_anomalies("anomaly", keyed, cfg, clock=lambda: 0.0)
    op.output("oks", out.oks, TestingSink(oks))
    op.output("alerts", out.alerts, TestingSink(alerts))
    _run(flow, runner)
    assert len(oks) == 120
    [alert] = alerts
    assert (alert.detector, alert.entity, alert.value) == ("ewma_zscore", "s1", 50.0)
    assert alert.event_ids == ("s1-45",) and alert.source == "t[0]@45"
    assert 9.9 < alert.baseline < 10.3 and alert.score >= 5


def work(i: int, tenant: str = "acme") -> WorkItem:
    return WorkItem(
        item_id=f"w-{i}",
        event_ids=(f"w-{i}",),
        tenant=tenant,
        entity=f"sess-{i % 3}",
        profile_id="p",
        task="chat",
        source=f"t[0]@{i}",
        data={"text": f"hello {i}"},
        context={},
        ingest_ts=0.0,
    )


@pytest.mark.parametrize("runner", RUNNERS)
def test_llm_stage_batches_per_task_and_tenant(runner: str, llm_sim: LLMSimulator, tmp_path):
    cfg = LLMConfig(
        tasks=(TaskConfig(name="chat", schema_name="chat_reply", model="sim-1", max_batch=8),),
        routes=(),
    )
    executor = LLMExecutor(cfg, llm_sim.base_url, ResponseCache(tmp_path / "cache"))
    items = [work(i) for i in range(30)] + [work(i, "globex") for i in range(30, 40)]
    answers: list[Any] = []
    audit: list[Any] = []
    errs: list[Any] = []
    flow = Dataflow("llm_test")
    out = call_llm("llm", op.input("in", flow, TestingSource(items)), cfg, lambda: executor)
    op.output("answers", out.answers, TestingSink(answers))
    op.output("audit", out.audit, TestingSink(audit))
    op.output("errs", out.errs, TestingSink(errs))
    try:
        _run(flow, runner)
    finally:
        executor.close()
        close_all()
    assert not errs
    assert sorted(a.item.item_id for a in answers) == sorted(i.item_id for i in items)
    sizes = [a.record["batch_size"] for a in audit]
    assert sum(sizes) == 40 and max(sizes) <= 8
    prompts = [r["messages"][-1]["content"] for r in llm_sim.requests()]
    # one tenant per prompt: no request mixes acme and globex items
    for a in audit:
        ids = set(a.record["item_ids"])
        assert ids <= {f"w-{i}" for i in range(30)} or ids <= {f"w-{i}" for i in range(30, 40)}
    assert len(prompts) == len(audit)
