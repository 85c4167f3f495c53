"""Conversations that remember both sides, on the broker: the assistant's reply to turn n of
a session is in the memory turn n+1's prompt carries whenever turn n was answered first, at
one and two processes and across a restart with another process count, each reply once
(issue 10, conversation memory)."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.reference import close_references
from llmsim import LLMSimulator
from state.stores import close_all
from support.broker import produce
from support.harness import Deployment, prompt_items, wait_exit, wait_until

SESSIONS = 6


@pytest.fixture(autouse=True)
def _release_stores() -> Iterator[None]:
    yield
    close_references()
    close_all()


def turn(round_: int, session: int) -> tuple[str, bytes]:
    eid = f"r{round_}-s{session}"
    doc = {
        "message_id": eid,
        "session_id": f"s-{session:04d}",
        "tenant": "acme",
        "user_id": f"u-{session:04d}",
        "text": f"question {round_} of session {session}",
        "sent_at": datetime.now(UTC).isoformat(),
    }
    return eid, json.dumps(doc).encode()


def replies(dep: Deployment) -> dict[str, str]:
    """The reply emitted for each chat turn (the first, if a replay emitted it again)."""
    out: dict[str, str] = {}
    for r in dep.drain("responses", idle_s=0.5):
        if r["task"] == "chat_reply":
            for eid in r["event_ids"]:
                out.setdefault(eid, r["answer"]["reply"])
    return out


def play_round(dep: Deployment, round_: int, procs: list[Any]) -> None:
    """Produce one turn per session and wait until every one is answered."""
    produce(dep.bootstrap, dep.topics["chat"], [turn(round_, s) for s in range(SESSIONS)])
    want = {f"r{round_}-s{s}" for s in range(SESSIONS)}
    wait_until(lambda: want <= set(replies(dep)), f"round {round_} answered", procs)


def stop(dep: Deployment, procs: list[Any], gen: str) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for i, p in enumerate(procs):
        name = gen if len(procs) == 1 else f"{gen}-p{i}"
        assert wait_exit(p, dep, log_name=name) == 0, dep.log(name)[-3000:]


def prompts_by_item(llm_sim: LLMSimulator) -> dict[str, list[dict[str, Any]]]:
    """Each chat item's prompt payloads (more than one if it was requested again)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for req in llm_sim.requests():
        if req["status"] == 200:
            for item in prompt_items(req):
                out.setdefault(item["id"], []).append(item)
    return out


@pytest.mark.parametrize(
    ("before", "after"), [(1, 1), (2, 2), (2, 1)], ids=["1-process", "2-processes", "2-then-1"]
)
def test_prompts_carry_the_assistants_earlier_replies(
    kafka_bootstrap: str, llm_sim: LLMSimulator, tmp_path: Path, before: int, after: int
) -> None:
    """Three rounds of one turn per session, each round produced once the one before was
    answered, with a restart (`after` processes) between rounds two and three: every prompt
    of round r carries, in order, the user turn and the emitted reply of each earlier round,
    each exactly once."""
    dep = Deployment(
        kafka_bootstrap,
        tmp_path,
        llm_sim.base_url,
        partitions=2,
        tail=True,
        extra_toml="shards_per_task = 4",  # the sessions' LLM work spreads over the processes
    )
    procs = dep.start_cluster(before, log_name="gen0")
    try:
        play_round(dep, 0, procs)
        play_round(dep, 1, procs)
    finally:
        stop(dep, procs, "gen0")
    procs = dep.start_cluster(after, log_name="gen1")
    try:
        play_round(dep, 2, procs)
    finally:
        stop(dep, procs, "gen1")

    emitted = replies(dep)
    seen = prompts_by_item(llm_sim)
    for round_ in (1, 2):
        for s in range(SESSIONS):
            eid = f"r{round_}-s{s}"
            assert len(seen[eid]) == 1, f"{eid} was requested {len(seen[eid])} times"
            memory = seen[eid][0]["context"]["memory"]
            expected: list[tuple[str, str]] = []
            for earlier in range(round_):
                expected.append(("user", f"question {earlier} of session {s}"))
                expected.append(("assistant", emitted[f"r{earlier}-s{s}"]))
            assert [(t["role"], t["text"]) for t in memory] == expected, eid
            assert all("id" not in t for t in memory), "turn ids reached the prompt"


SUMMARIES = """shards_per_task = 4

[[llm.tasks]]
name = "chat_reply"
schema_name = "chat_reply"

[[llm.tasks]]
name = "explain_anomaly"
schema_name = "anomaly_explanation"

[[llm.tasks]]
name = "summarize_memory"
schema_name = "conversation_summary"
max_wait_ms = 0

[memory]
max_turns = 2
max_tokens = 100000
"""


def summaries_done(dep: Deployment, n: int) -> bool:
    """Whether `n` summarize items have been answered (the audit records them)."""
    done = {
        i
        for a in dep.llm_audit(idle_s=0.3)
        if a["route"] == "summarize_memory" and a["outcome"] in ("ok", "cache_hit")
        for i in a["item_ids"]
    }
    return len(done) >= n


@pytest.mark.parametrize(("before", "after"), [(2, 1)], ids=["2-then-1"])
def test_older_turns_fold_into_summaries_across_a_restart(
    kafka_bootstrap: str, llm_sim: LLMSimulator, tmp_path: Path, before: int, after: int
) -> None:
    """Memory of 2 turns with summaries, on 2 processes then 1: round 2 folds round 0 into
    summary 1, round 3 (after the restart) folds round 1 into summary 2, which extends
    summary 1; round 4's prompt carries summary 2 and the turns since. No summarize item is
    requested twice and none reaches the responses topic."""
    dep = Deployment(
        kafka_bootstrap, tmp_path, llm_sim.base_url, partitions=2, tail=True, extra_toml=SUMMARIES
    )

    def wait_summaries(n: int) -> None:
        wait_until(lambda: summaries_done(dep, n), f"{n} summaries written", timeout_s=60)

    procs = dep.start_cluster(before, log_name="gen0")
    try:
        for r in range(3):
            play_round(dep, r, procs)
        wait_summaries(SESSIONS)
    finally:
        stop(dep, procs, "gen0")
    procs = dep.start_cluster(after, log_name="gen1")
    try:
        play_round(dep, 3, procs)
        wait_summaries(2 * SESSIONS)
        play_round(dep, 4, procs)
    finally:
        stop(dep, procs, "gen1")

    emitted = replies(dep)
    seen = prompts_by_item(llm_sim)
    assert all(len(v) == 1 for v in seen.values()), "an item was requested twice"
    summary_answers = {
        i: None
        for a in dep.llm_audit(idle_s=0.3)
        if a["route"] == "summarize_memory"
        for i in a["item_ids"]
    }
    assert not any(k.endswith("#summary") for k in emitted), "a summary was published"
    for s in range(SESSIONS):
        first = seen[f"r2-s{s}#summary"][0]
        assert [t["text"] for t in first["data"]["turns"]] == [
            f"question 0 of session {s}",
            emitted[f"r0-s{s}"],
        ]
        second = seen[f"r3-s{s}#summary"][0]
        assert "summary" in second["context"], "summary 2 does not extend summary 1"
        assert [t["text"] for t in second["data"]["turns"]] == [
            f"question 1 of session {s}",
            emitted[f"r1-s{s}"],
        ]
        last = seen[f"r4-s{s}"][0]["context"]
        assert last["summary"] and last["summary"] != second["context"]["summary"]
        assert [(t["role"], t["text"]) for t in last["memory"]] == [
            ("user", f"question 2 of session {s}"),
            ("assistant", emitted[f"r2-s{s}"]),
            ("user", f"question 3 of session {s}"),
            ("assistant", emitted[f"r3-s{s}"]),
        ]
    assert len(summary_answers) == 3 * SESSIONS  # rounds 2, 3 and 4 each fold one turn
