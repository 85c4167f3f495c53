"""The wired flow in-process (bytewax.testing runners), file in, files out, simulator over HTTP."""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import cluster_main, run_main

from config.models import Settings
from flows.pipeline import build_flow
from llmsim import LLMSimulator
from state.stores import close_all
from support import workload
from support.outputs import read_outputs


def _settings(tmp: Path, inputs: list[Path], base_url: str, **over: Any) -> Settings:
    raw: dict[str, Any] = {
        "app": {"profile": "dev"},
        "input": {
            "kind": "file",
            "sources": [{"name": f"s{i}", "path": str(p)} for i, p in enumerate(inputs)],
        },
        "output": {"kind": "file", "dir": str(tmp / "out")},
        "stores": {"dir": str(tmp / "stores")},
        "llm": {"base_url": base_url, "concurrency": 4, "timeout_s": 10},
    }
    for section, values in over.items():
        raw.setdefault(section, {}).update(values)
    return Settings.model_validate(raw)


@pytest.fixture(autouse=True)
def _close_stores():
    yield
    close_all()


def _write(path: Path, records: list[tuple[str | None, bytes]]) -> Path:
    path.write_bytes(b"".join(v.replace(b"\n", b" ") + b"\n" for _, v in records if v))
    return path


@pytest.mark.parametrize("runner", ["run_main", "cluster_main_2_workers"])
def test_flow_accounts_for_every_record(tmp_path: Path, llm_sim: LLMSimulator, runner: str):
    chats = workload.chats(200, sessions=20)
    metrics = workload.metrics(1000, series=10)
    bad = [r for r in workload.malformed(16) if r[1]]  # blank lines are skipped, not records
    a = _write(tmp_path / "a.jsonl", chats + bad)
    b = _write(tmp_path / "b.jsonl", metrics + chats[:10])  # 10 duplicates
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
    routes = Counter(e["route"] for e in ledger)
    assert routes == {"chat_reply": 200, "none": 1000, "duplicate": 10}
    assert len(dead) == len(bad)
    assert len(ledger) + len(dead) == len(chats) + len(metrics) + len(bad) + 10
    answered = Counter(r["item_id"] for r in responses if r["task"] == "chat_reply")
    assert set(answered) == {i for i, _ in chats} and set(answered.values()) == {1}


def test_rerun_on_same_recovery_directory_reads_nothing_twice(
    tmp_path: Path, llm_sim: LLMSimulator
):
    """A finished file input stays finished: a second run on the same recovery directory
    emits nothing new, and no LLM request is repeated."""
    chats = workload.chats(50, sessions=5)
    a = _write(tmp_path / "a.jsonl", chats)
    settings = _settings(tmp_path, [a], llm_sim.base_url)
    rec = tmp_path / "recovery"
    rec.mkdir()
    init_db_dir(rec, 1)
    cfg = RecoveryConfig(str(rec))
    run_main(build_flow(settings), epoch_interval=timedelta(seconds=1), recovery_config=cfg)
    first = len(llm_sim.requests())
    run_main(build_flow(settings), epoch_interval=timedelta(seconds=1), recovery_config=cfg)
    assert len(read_outputs(tmp_path, "ledger")) == 50
    assert len(llm_sim.requests()) == first


def test_replay_without_state_answers_from_the_cache(tmp_path: Path, llm_sim: LLMSimulator):
    """Operator state lost (no recovery) but the response cache kept: the same events are
    answered again from the cache with zero new LLM requests."""
    chats = workload.chats(64, sessions=8)
    a = _write(tmp_path / "a.jsonl", chats)
    settings = _settings(tmp_path, [a], llm_sim.base_url)
    run_main(build_flow(settings))
    first = len(llm_sim.requests())
    run_main(build_flow(settings))
    responses = read_outputs(tmp_path, "responses")
    assert len(llm_sim.requests()) == first
    assert Counter(r["cached"] for r in responses) == {False: 64, True: 64}
    assert {json.dumps(r["answer"], sort_keys=True) for r in responses if r["cached"]} == {
        json.dumps(r["answer"], sort_keys=True) for r in responses if not r["cached"]
    }


def test_llm_failures_after_retry_budget_go_to_dead_letters(tmp_path: Path, llm_sim_factory):
    sim = llm_sim_factory(latency_ms=5, down=True)
    chats = workload.chats(20, sessions=4)
    a = _write(tmp_path / "a.jsonl", chats)
    settings = _settings(
        tmp_path, [a], sim.base_url, llm={"max_attempts": 2, "backoff_base_s": 0.01}
    )
    run_main(build_flow(settings))
    dead = read_outputs(tmp_path, "dead_letters")
    assert {d["event_id"] for d in dead} == {i for i, _ in chats}
    assert all("after 2 attempt(s)" in d["reason"] for d in dead)
    audit = read_outputs(tmp_path, "audit")
    assert {a["outcome"] for a in audit} == {"error"}


@pytest.mark.parametrize(("process", "refused"), [((0, 1), True), ((1, 2), False)])
def test_llm_concurrency_is_the_deployments(
    tmp_path: Path, llm_sim_factory, process: tuple[int, int], refused: bool
):
    """`llm.concurrency = 8` is for the whole deployment: against a server that takes 4 at
    once, one process running alone gets 429s, while process 1 of 2 keeps to its share of 4
    and is never refused."""
    sim = llm_sim_factory(latency_ms=150, max_concurrency=4)
    chats = workload.chats(400, sessions=40)
    a = _write(tmp_path / "a.jsonl", chats)
    settings = _settings(
        tmp_path, [a], sim.base_url, llm={"concurrency": 8, "adaptive_concurrency": False}
    )
    run_main(build_flow(settings, process=process))
    faults = Counter(r.get("fault") for r in sim.requests())
    assert (faults["429"] > 0) is refused, faults
    answered = {r["item_id"] for r in read_outputs(tmp_path, "responses")}
    assert answered == {i for i, _ in chats}


def test_inputs_pause_while_the_llm_stage_is_full(tmp_path: Path, llm_sim_factory):
    """A slow endpoint (one request at a time, 300 ms each) and 480 chats in the input: the
    LLM stage never holds much more than `llm.max_pending_items` (64), because the input
    stops reading at the bound, and every chat is still answered."""
    from runtime import backpressure

    sim = llm_sim_factory(latency_ms=300, max_concurrency=1)
    chats = workload.chats(480, sessions=60)
    a = _write(tmp_path / "a.jsonl", chats)
    settings = _settings(
        tmp_path,
        [a],
        sim.base_url,
        kafka={"batch_size": 16},
        llm={"concurrency": 1, "adaptive_concurrency": False, "max_pending_items": 64},
    )
    flow = build_flow(settings)
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, backpressure.pending())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run_main(flow)
    finally:
        done.set()
        watcher.join()
    assert 64 <= peak <= 64 + 2 * 16, peak
    answered = {r["item_id"] for r in read_outputs(tmp_path, "responses")}
    assert answered == {i for i, _ in chats}
    assert backpressure.pending() == 0
