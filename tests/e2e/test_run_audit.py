"""Run start and stop records on the broker's audit topic, from `python -m bytewax.run`:
one pair per process of a two-process cluster stopped by SIGTERM, and a `run_started`
without its `run_stopped` after `kill -9` (issue 12, audit of activity)."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from config.models import load_config
from connectors.reference import close_references
from llmsim import LLMSimulator
from runtime.run_audit import config_fingerprint
from state.stores import close_all
from support.broker import produce
from support.harness import Deployment, wait_exit, wait_until


@pytest.fixture(autouse=True)
def _release_stores() -> Iterator[None]:
    yield
    close_references()
    close_all()


def _chats(n: int, tag: str) -> list[tuple[str, bytes]]:
    now = datetime.now(UTC).isoformat()
    return [
        (
            f"{tag}-{i}",
            json.dumps(
                {
                    "message_id": f"{tag}-{i}",
                    "session_id": f"s-{i}",
                    "tenant": "acme",
                    "user_id": f"u-{i}",
                    "text": f"hello {i}",
                    "sent_at": now,
                }
            ).encode(),
        )
        for i in range(n)
    ]


def _activities(dep: Deployment) -> list[dict[str, Any]]:
    return [r for r in dep.drain("audit", idle_s=0.5) if r.get("type") == "activity"]


def _answered(dep: Deployment) -> set[str]:
    return {e for r in dep.drain("responses", idle_s=0.3) for e in r["event_ids"]}


def test_each_process_records_its_start_and_stop(
    kafka_bootstrap: str, llm_sim: LLMSimulator, tmp_path: Path
) -> None:
    dep = Deployment(kafka_bootstrap, tmp_path, llm_sim.base_url, tail=True)
    procs = dep.start_cluster(2, log_name="gen0")
    try:
        sent = _chats(8, "a")
        produce(dep.bootstrap, dep.topics["chat"], sent)
        want = {i for i, _ in sent}
        wait_until(lambda: want <= _answered(dep), "chats answered", procs)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [wait_exit(p, dep, log_name=f"gen0-p{i}") for i, p in enumerate(procs)]
    assert codes == [0, 0]

    records = _activities(dep)
    fingerprint = config_fingerprint(load_config(dep.config))
    by_process: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        by_process.setdefault(r["process"], []).append(r)
    assert sorted(by_process) == [0, 1]
    for process, recs in by_process.items():
        assert [r["activity"] for r in recs] == ["run_started", "run_stopped"], process
        start, stop = recs
        assert start["run_id"] == stop["run_id"]
        assert start["processes"] == stop["processes"] == 2
        assert start["config_fingerprint"] == stop["config_fingerprint"] == fingerprint
        assert start["config_path"] == str(dep.config) and start["input"] == "kafka"
        assert stop["outcome"] == "stopped" and stop["exit_code"] == 0
        assert stop["at"] >= start["at"]
    assert sum(r["counts"]["answers"] for r in records if r["activity"] == "run_stopped") >= 8


def test_a_killed_run_leaves_its_start_without_a_stop(
    kafka_bootstrap: str, llm_sim: LLMSimulator, tmp_path: Path
) -> None:
    dep = Deployment(kafka_bootstrap, tmp_path, llm_sim.base_url, tail=True)
    proc = dep.start_flow(log_name="killed")
    try:
        wait_until(
            lambda: any(r["activity"] == "run_started" for r in _activities(dep)),
            "run_started written",
            [proc],
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = dep.start_flow(log_name="again")
    try:
        sent = _chats(2, "b")
        produce(dep.bootstrap, dep.topics["chat"], sent)
        wait_until(lambda: {i for i, _ in sent} <= _answered(dep), "chats answered", [proc])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, dep, log_name="again") == 0
    kinds = [(r["activity"], r["run_id"]) for r in _activities(dep)]
    first, second = kinds[0][1], kinds[-1][1]
    assert first != second
    assert kinds == [("run_started", first), ("run_started", second), ("run_stopped", second)]
