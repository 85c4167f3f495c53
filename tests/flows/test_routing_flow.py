"""Routing on conditions in the wired flow (bytewax.testing runners, simulator over HTTP): a
rule sends business events with `payload.amount > 500` to a second task (refunds among them to
two tasks), another sends high metric readings to a task, and the ledger and the responses
account for every event."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import cluster_main, run_main

from config.models import Settings
from flows.pipeline import build_flow
from llmsim import LLMSimulator
from state.stores import close_all
from support import workload
from support.outputs import read_outputs

ROUTES: list[dict[str, Any]] = [
    {
        "kind": "business",
        "when": [
            {"field": "payload.event_type", "op": "==", "value": "refund"},
            {"field": "payload.amount", "op": ">", "value": 500},
        ],
        "task": ["fraud_check", "triage"],
    },
    {
        "kind": "business",
        "when": [{"field": "payload.amount", "op": ">", "value": 500}],
        "task": "fraud_check",
    },
    {"kind": "chat", "task": "chat_reply"},
    {"kind": "alert", "task": "explain_anomaly"},
    {
        "kind": "metric",
        "when": [{"field": "value", "op": ">", "value": 58}],
        "task": "metric_watch",
    },
    {"kind": "business", "task": "none"},
]


def _business(n: int) -> list[dict[str, Any]]:
    """Orders and refunds of growing amounts; every tenth has no amount."""
    start = datetime.now(UTC).timestamp() - n
    out = []
    for i in range(n):
        doc: dict[str, Any] = {
            "event_id": f"b-{i:04d}",
            "event_type": "refund" if i % 3 == 0 else "order_placed",
            "tenant": "globex",
            "account_id": f"acct-{i % 7}",
            "occurred_at": datetime.fromtimestamp(start + i, UTC).isoformat(),
            "currency": "EUR",
        }
        if i % 10 != 7:
            doc["amount"] = i * 20.0
        out.append(doc)
    return out


def _expected_route(doc: dict[str, Any]) -> str:
    big = doc.get("amount", 0) > 500
    if big and doc["event_type"] == "refund":
        return "fraud_check+triage"
    return "fraud_check" if big else "none"


def _settings(tmp: Path, inputs: list[Path], base_url: str) -> Settings:
    extra = [{"name": n, "schema_name": "anomaly_explanation"} for n in ("fraud_check", "triage")]
    extra.append({"name": "metric_watch", "schema_name": "anomaly_explanation", "mode": "fanout"})
    defaults = [t.model_dump() for t in Settings.model_fields["llm"].default.tasks]
    return Settings.model_validate(
        {
            "app": {"profile": "dev"},
            "input": {
                "kind": "file",
                "sources": [{"name": f"s{i}", "path": str(p)} for i, p in enumerate(inputs)],
            },
            "output": {"kind": "file", "dir": str(tmp / "out")},
            "stores": {"dir": str(tmp / "stores")},
            "llm": {
                "base_url": base_url,
                "concurrency": 4,
                "timeout_s": 10,
                "tasks": defaults + extra,
                "routes": ROUTES,
            },
        }
    )


@pytest.fixture(autouse=True)
def _close_stores():
    yield
    close_all()


@pytest.mark.parametrize("runner", ["run_main", "cluster_main_2_workers"])
def test_conditional_routes_reach_their_tasks(tmp_path: Path, llm_sim: LLMSimulator, runner: str):
    business = _business(90)
    chats = workload.chats(20, sessions=4)
    metrics = workload.metrics(300, series=3)
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps(d) + "\n" for d in business))
    b = tmp_path / "b.jsonl"
    b.write_bytes(b"".join(v + b"\n" for _, v in chats + metrics))
    flow = build_flow(_settings(tmp_path, [a, b], llm_sim.base_url))
    if runner == "run_main":
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=2)

    ledger, dead, responses = (
        read_outputs(tmp_path, "ledger"),
        read_outputs(tmp_path, "dead_letters"),
        read_outputs(tmp_path, "responses"),
    )
    assert dead == []
    hot = {json.loads(v)["reading_id"] for _, v in metrics if json.loads(v)["value"] > 58}
    assert hot, "the workload has readings above the threshold"
    expected = {d["event_id"]: _expected_route(d) for d in business}
    expected |= {i: "chat_reply" for i, _ in chats}
    expected |= {i: "metric_watch" if i in hot else "none" for i, _ in metrics}
    assert {e["event_id"]: e["route"] for e in ledger} == expected
    assert len(ledger) == len(business) + len(chats) + len(metrics)  # nothing lost, no repeat

    by_task: dict[str, Counter[str]] = {}
    for r in responses:
        by_task.setdefault(r["task"], Counter())[r["item_id"]] += 1
        assert len(r["event_ids"]) == 1 or r["task"] == "explain_anomaly"
    fraud = {i for i, route in expected.items() if route.startswith("fraud_check")}
    triage = {i for i, route in expected.items() if route == "fraud_check+triage"}
    assert fraud and triage and triage < fraud
    assert by_task["fraud_check"] == Counter(fraud)
    assert by_task["triage"] == Counter(f"{i}/triage" for i in triage)
    assert by_task["metric_watch"] == Counter(hot)
    assert by_task["chat_reply"] == Counter(i for i, _ in chats)
    triaged = {r["item_id"]: r["event_ids"] for r in responses if r["task"] == "triage"}
    assert triaged == {f"{i}/triage": [i] for i in triage}
