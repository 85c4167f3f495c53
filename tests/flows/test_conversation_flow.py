"""The wired memory → route → LLM steps in one process (as the local profile runs them), with
the real simulator over HTTP: a turn's prompt carries the replies to the session's earlier
turns that were answered before it was built, at one and two workers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from config.models import LLMConfig, MemoryConfig, RouteRule, TaskConfig
from core.records import Alert, Event, Kind
from inference.client import LLMExecutor
from llmsim import LLMSimulator
from operators.llm import call_llm
from operators.memory import remember
from operators.route import Router, route
from state.stores import ResponseCache, close_all
from support.harness import prompt_items

SESSIONS, ROUNDS = 4, 3


def chat(round_: int, session: int) -> Event:
    return Event(
        f"r{round_}-s{session}",
        f"chat[0]@{round_ * SESSIONS + session}",
        "acme",
        Kind.CHAT,
        f"s{session}",
        1000.0 + round_,
        {"text": f"turn {round_} of s{session}", "role": "user", "user_id": f"u{session}"},
        0.0,
    )


@dataclass(frozen=True)
class Rounds(DynamicSource[Event]):
    """Round r's turns, once `answered` holds `need(r)` answers (by default every turn of
    the rounds before), read by worker 0; the other workers read nothing (they run the
    keyed steps some sessions go to)."""

    answered: list[Any]
    rounds: int = ROUNDS
    need: Callable[[int], int] = lambda r: r * SESSIONS

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Rounds:
        return _Rounds(self, self.rounds if worker_index == 0 else 0)


class _Rounds(StatelessSourcePartition[Event]):
    def __init__(self, spec: Rounds, rounds: int) -> None:
        self.spec = spec
        self.rounds = rounds
        self.round = 0
        self.deadline = time.monotonic() + 60

    def next_batch(self) -> list[Event]:
        if self.round >= self.rounds:
            raise StopIteration
        if len(self.spec.answered) < self.spec.need(self.round):
            assert time.monotonic() < self.deadline, "a round was never answered"
            return []
        batch = [chat(self.round, s) for s in range(SESSIONS)]
        self.round += 1
        return batch

    def next_awake(self) -> datetime | None:
        return None


@pytest.fixture
def executor(llm_sim: LLMSimulator, tmp_path: Any) -> Iterator[LLMExecutor]:
    cfg = LLMConfig(
        tasks=(
            TaskConfig(name="chat_reply", schema_name="chat_reply", model="sim-1"),
            TaskConfig(name="summarize_memory", schema_name="conversation_summary", model="sim-1"),
        ),
        routes=(RouteRule(kind="chat", task="chat_reply"),),
    )
    ex = LLMExecutor(cfg, llm_sim.base_url, ResponseCache(tmp_path / "cache"))
    yield ex
    ex.close()
    close_all()


@pytest.mark.parametrize("workers", [1, 2])
def test_each_prompt_carries_the_replies_answered_before_it(
    workers: int, llm_sim: LLMSimulator, executor: LLMExecutor
) -> None:
    answers: list[Any] = []
    flow = Dataflow("conversation")
    events = op.input("in", flow, Rounds(answers))
    keyed = op.key_on("key", events, lambda e: e.key)
    remembered = remember("memory", keyed, MemoryConfig(max_turns=8), clock=lambda: 0.0)
    alerts: Stream[Alert] = op.input("alerts", flow, TestingSource([]))
    work = route("route", remembered, alerts, Router(executor.cfg.routes))
    out = call_llm("llm", work, executor.cfg, lambda: executor)
    op.output("answers", out.answers, TestingSink(answers))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)

    reply = {r.item.item_id: r.answer["reply"] for r in answers}
    assert len(reply) == ROUNDS * SESSIONS
    prompts = {i["id"]: i for req in llm_sim.requests() for i in prompt_items(req)}
    for round_ in range(ROUNDS):
        for s in range(SESSIONS):
            memory = prompts[f"r{round_}-s{s}"]["context"].get("memory", [])
            expected = []
            for earlier in range(round_):
                expected += [
                    ("user", f"turn {earlier} of s{s}"),
                    ("assistant", reply[f"r{earlier}-s{s}"]),
                ]
            assert [(t["role"], t["text"]) for t in memory] == expected


def test_older_turns_fold_into_a_running_summary(
    llm_sim: LLMSimulator, executor: LLMExecutor
) -> None:
    """Memory of 4 turns with summaries: round 4 folds rounds 0-1 into summary 1, round 6
    folds rounds 2-3 into summary 2, which extends summary 1; a prompt after a fold carries
    the summary and the turns since. Each round waits for the answers before it (chat
    replies and summaries)."""
    rounds, folds_at = 8, (4, 6)
    answers: list[Any] = []

    def need(r: int) -> int:
        return r * SESSIONS + SESSIONS * sum(1 for f in folds_at if f < r)

    flow = Dataflow("summaries")
    events = op.input("in", flow, Rounds(answers, rounds, need))
    keyed = op.key_on("key", events, lambda e: e.key)
    cfg = MemoryConfig(max_turns=4, max_tokens=100_000)
    remembered = remember("memory", keyed, cfg, clock=lambda: 0.0)
    alerts: Stream[Alert] = op.input("alerts", flow, TestingSource([]))
    work = route("route", remembered, alerts, Router(executor.cfg.routes, "summarize_memory"))
    out = call_llm("llm", work, executor.cfg, lambda: executor)
    op.output("answers", out.answers, TestingSink(answers))
    run_main(flow)

    answer = {r.item.item_id: r.answer for r in answers}
    assert len(answer) == rounds * SESSIONS + len(folds_at) * SESSIONS
    prompts: dict[str, list[dict[str, Any]]] = {}
    for req in llm_sim.requests():
        for item in prompt_items(req):
            prompts.setdefault(item["id"], []).append(item)
    assert all(len(p) == 1 for p in prompts.values()), "an item was requested twice"

    def turns(s: int, *rounds_: int) -> list[tuple[str, str]]:
        out = []
        for r in rounds_:
            out += [("user", f"turn {r} of s{s}"), ("assistant", answer[f"r{r}-s{s}"]["reply"])]
        return out

    for s in range(SESSIONS):
        first = prompts[f"r4-s{s}#summary"][0]
        assert [(t["role"], t["text"]) for t in first["data"]["turns"]] == turns(s, 0, 1)
        assert "summary" not in first.get("context", {})
        summary_1 = answer[f"r4-s{s}#summary"]["summary"]
        after = prompts[f"r5-s{s}"][0]["context"]
        assert after["summary"] == summary_1
        assert [(t["role"], t["text"]) for t in after["memory"]] == turns(s, 2, 3, 4)
        second = prompts[f"r6-s{s}#summary"][0]
        assert [(t["role"], t["text"]) for t in second["data"]["turns"]] == turns(s, 2, 3)
        assert second["context"]["summary"] == summary_1
        last = prompts[f"r7-s{s}"][0]["context"]
        assert last["summary"] == answer[f"r6-s{s}#summary"]["summary"]
        assert [(t["role"], t["text"]) for t in last["memory"]] == turns(s, 4, 5, 6)
