"""Replay safety of the LLM stage across a crash, end to end."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from support import workload
from support.broker import consume_all, produce
from support.harness import Deployment, requested_ids, wait_exit


def test_answers_cached_before_a_crash_are_never_requested_again(
    kafka_bootstrap: str, llm_sim_factory, tmp_path: Path
) -> None:
    """The flow dies (SIGKILL) after answers were cached and emitted but before its first
    snapshot (the snapshot interval is longer than the run). On resume everything is read
    again from the start: the simulator's request log shows no second request for the
    events answered before the crash, and their answers are emitted again from the cache."""
    sim = llm_sim_factory(latency_ms=500, max_concurrency=64)
    dep = Deployment(kafka_bootstrap, tmp_path, sim.base_url, partitions=1, tail=True)
    chats = workload.chats(1500, sessions=150)
    produce(kafka_bootstrap, dep.topics["chat"], [v for _, v in chats])

    proc = dep.start_flow(snapshot_s=600, log_name="run1")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        got = consume_all(kafka_bootstrap, dep.topics["responses"], idle_s=0.3, timeout_s=5)
        if len(got) >= 200:
            break
        assert proc.poll() is None, dep.log("run1")[-3000:]
    else:
        proc.kill()
        pytest.fail("no answers before the deadline:\n" + dep.log("run1")[-3000:])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    answered_before = {i for r in dep.drain("responses", idle_s=0.5) for i in r["event_ids"]}
    assert 200 <= len(answered_before) < len(chats)

    dep.write_config(tail=False)
    proc2 = dep.start_flow(snapshot_s=1, log_name="run2")
    assert wait_exit(proc2, dep, log_name="run2") == 0, dep.log("run2")[-3000:]

    requested = requested_ids(sim.requests(), prefix="c-")
    assert all(requested[i] == 1 for i in answered_before)
    responses, dead = dep.drain_all("responses", "dead_letters")
    replayed = Counter(i for r in responses if r["cached"] for i in r["event_ids"])
    assert set(replayed) >= answered_before  # re-emitted, from the cache
    assert {i for r in responses for i in r["event_ids"]} == {i for i, _ in chats}
    assert not dead
