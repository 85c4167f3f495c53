"""Replay safety across rescaling (issue 9, point 5): after `kill -9` of a 2-process run, a
restart with 1 process, and then with 2 again, requests no answer that was emitted before
a kill, although the replayed keys now live on another process than the one that cached
their answers."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

from llmsim import LLMSimulator
from support import workload
from support.broker import produce
from support.harness import Deployment, FlowRunner, prompt_items


def _answered(dep: Deployment) -> Counter[str]:
    return Counter(
        i
        for r in dep.drain("responses", idle_s=0.5)
        if r["task"] == "chat_reply"
        for i in r["event_ids"]
    )


def _run_until_answered(runner: FlowRunner, dep: Deployment, processes: int, n: int) -> None:
    """Start a generation and wait until the responses topic holds `n` chat answers in all
    (a replayed chat is answered again, from the cache)."""
    runner.start(processes)
    deadline = time.monotonic() + 120
    while sum(_answered(dep).values()) < n:
        assert runner.alive(), runner.tail()
        assert time.monotonic() < deadline, f"{n} chats not answered: {runner.tail()}"
        time.sleep(0.5)


def _requested(sim: LLMSimulator) -> int:
    return sum(1 for r in sim.requests() if r["status"] == 200)


def test_rescaled_restarts_request_no_emitted_answer_again(
    kafka_bootstrap: str, llm_sim: LLMSimulator, tmp_path: Path
) -> None:
    # Eight LLM queues per task, spread over the workers: keys move when the count changes.
    dep = Deployment(
        kafka_bootstrap,
        tmp_path,
        llm_sim.base_url,
        partitions=4,
        tail=True,
        extra_toml="shards_per_task = 8",
    )
    # No snapshot is taken during these short runs: every restart replays the whole input,
    # so every answered chat is requested again unless some cache answers it.
    runner = FlowRunner(dep, snapshot_s=600)
    first = workload.chats(120, sessions=40, prefix="a")
    produce(kafka_bootstrap, dep.topics["chat"], first)
    try:
        a, b = len(first), 60
        _run_until_answered(runner, dep, 2, a)
        runner.signal(signal.SIGKILL)
        before = _requested(llm_sim)

        # 2 -> 1: the one process owns every key, half of them cached by the other process.
        second = workload.chats(b, sessions=40, prefix="b")
        produce(kafka_bootstrap, dep.topics["chat"], second)
        _run_until_answered(runner, dep, 1, a + (a + b))
        runner.signal(signal.SIGKILL)
        after_one = _requested(llm_sim)

        # 1 -> 2: keys move back to process 1, whose cache lacks the answers of the 1-process run.
        _run_until_answered(runner, dep, 2, a + (a + b) + (a + b))
        runner.signal(signal.SIGKILL)
    finally:
        runner.stop()
    requested_ids = Counter(
        i["id"] for r in llm_sim.requests() if r["status"] == 200 for i in prompt_items(r)
    )
    assert set(requested_ids.values()) == {1}, requested_ids.most_common(5)
    assert after_one - before <= b  # only the new chats were requested
    assert _requested(llm_sim) == after_one  # the 2-process replay requested nothing
    assert set(_answered(dep)) == {i for i, _ in first + second}
