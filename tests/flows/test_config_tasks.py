"""Tasks defined in config against the LLM simulator over HTTP (the real executor and cache).

The simulator answers from the `response_format` it is sent, so a valid answer shows that the
task's own schema went out; a schema the simulator cannot satisfy (a `pattern` it ignores)
shows the re-ask-then-dead-letter path; the response cache shows that a changed schema or
changed instructions are never answered from an earlier answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from config.models import LLMConfig, TaskConfig
from core.records import WorkItem
from inference.client import LLMExecutor
from llmsim import LLMSimulator
from state.stores import ResponseCache, close_all
from support.harness import chat_items

TRIAGE: dict[str, Any] = {
    "type": "object",
    "required": ["priority", "team", "summary"],
    "additionalProperties": False,
    "properties": {
        "priority": {"enum": ["p1", "p2", "p3"]},
        "team": {"enum": ["billing", "support", "security"]},
        "summary": {"type": "string", "minLength": 1, "maxLength": 300},
    },
}


def task(**over: Any) -> TaskConfig:
    fields: dict[str, Any] = {
        "name": "triage",
        "instructions": "Triage each business event for the operations team.",
        "schema": TRIAGE,
        "model": "sim-1",
    }
    fields.update(over)
    return TaskConfig(**fields)


def items(n: int) -> list[WorkItem]:
    return [
        WorkItem(
            f"biz-{i}",
            (f"biz-{i}",),
            "acme",
            f"acct-{i}",
            f"acct-{i}",
            "triage",
            f"file:biz.jsonl:{i}",
            {"kind": "business", "event_type": "payment_failed", "amount": 10.0 * i},
            {},
            0.0,
        )
        for i in range(n)
    ]


@pytest.fixture
def executor(tmp_path: Path, llm_sim: LLMSimulator) -> Iterator[LLMExecutor]:
    cfg = LLMConfig(tasks=(task(),), routes=(), concurrency=2)
    ex = LLMExecutor(cfg, llm_sim.base_url, ResponseCache(str(tmp_path / "cache")))
    yield ex
    ex.close()
    close_all()


def test_answers_follow_the_configured_schema(executor: LLMExecutor, llm_sim: LLMSimulator):
    out = executor.run(task(), items(3))
    assert out.failed == []
    check = Draft202012Validator(TRIAGE)
    assert sorted(a.item.item_id for a in out.answered) == ["biz-0", "biz-1", "biz-2"]
    for a in out.answered:
        assert list(check.iter_errors(a.answer)) == [] and not a.cached
    (request,) = llm_sim.requests()
    assert request["response_format_name"] == "triage_batch"
    assert "Triage each business event" in request["messages"][0]["content"]


def test_a_changed_schema_or_instructions_is_never_served_from_the_cache(
    executor: LLMExecutor, llm_sim: LLMSimulator
):
    batch = items(2)
    first = executor.run(task(), batch)
    again = executor.run(task(), batch)
    assert [a.cached for a in again.answered] == [True, True]
    assert [a.answer for a in again.answered] == [a.answer for a in first.answered]
    assert len(llm_sim.requests()) == 1

    wider = {**TRIAGE, "properties": {**TRIAGE["properties"], "team": {"enum": ["ops", "risk"]}}}
    changed = executor.run(task(schema=wider), batch)
    assert [a.cached for a in changed.answered] == [False, False]
    assert {a.answer["team"] for a in changed.answered} <= {"ops", "risk"}
    reworded = executor.run(task(instructions="Triage each event, briefly."), batch)
    assert [a.cached for a in reworded.answered] == [False, False]
    assert len(llm_sim.requests()) == 3
    assert executor.run(task(schema=wider), batch).answered[0].cached  # its own entry


def test_an_answer_failing_the_schema_is_asked_again_then_dead_lettered(
    executor: LLMExecutor, llm_sim: LLMSimulator
):
    ticket = {"type": "string", "pattern": "^TCK-[0-9]+$"}
    strict = {**TRIAGE, "properties": {**TRIAGE["properties"], "summary": ticket}}
    out = executor.run(task(schema=strict), items(2))
    assert out.answered == []
    assert sorted(f.item.item_id for f in out.failed) == ["biz-0", "biz-1"]
    for f in out.failed:
        assert f.reason.startswith("answer fails the triage schema: summary: ")
        assert "does not match '^TCK-[0-9]+$'" in f.reason
        raw = json.loads(f.raw_answer or "")
        assert set(raw) == {f.item.item_id}  # the raw answer of the re-ask, alone
    asked = [chat_items(r) for r in llm_sim.requests()]
    assert sorted(asked, key=len) == [["biz-0"], ["biz-1"], ["biz-0", "biz-1"]]
    assert [a["outcome"] for a in out.audits] == ["partial", "partial", "partial"]
