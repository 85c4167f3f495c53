"""A tenant's daily token budget through the LLM stage (the simulator over real HTTP through
the `openai` client): once spent, the tenant's work is dead-lettered or waits for the next UTC
day, other tenants go on, one `budget_spent` activity record says so (issue 12, part 2)."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import run_main

from config.models import LLMConfig, Settings, TaskConfig
from core.records import Audit, DeadLetter, Response, WorkItem
from flows.pipeline import build_flow
from inference.client import LLMExecutor
from llmsim import LLMSimulator
from operators.llm import _TasksLogic
from runtime import metrics
from state.budgets import Budget, TokenBudgets, next_day
from state.stores import ResponseCache, StoreLayout, close_all
from support.outputs import read_outputs

NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC).timestamp()


@pytest.fixture(autouse=True)
def _close_stores() -> Any:
    yield
    close_all()


def chat(i: int, tenant: str) -> dict[str, Any]:
    return {
        "message_id": f"{tenant}-{i}",
        "session_id": f"{tenant}-s{i}",  # a session each: one request per chat
        "tenant": tenant,
        "text": f"hello {i}",
        "sent_at": "2026-12-03T09:00:00Z",
    }


@pytest.mark.parametrize("action", ["dead_letter", "wait"])
def test_a_spent_budget_stops_only_its_tenant(
    tmp_path: Path, llm_sim: LLMSimulator, action: str
) -> None:
    """acme may spend 1 token a day: its first request spends it; every later acme chat is
    dead-lettered (`wait`: held, then dead-lettered when the finite input ends, as nothing
    would wake it), globex has no budget and is answered throughout. Nothing is lost."""
    docs = [chat(i, t) for i in range(6) for t in ("acme", "globex")]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    settings = Settings.model_validate(
        {
            "app": {"profile": "dev"},
            "input": {
                "kind": "file",
                "sources": [{"name": "chats", "path": str(path), "adapter": "chat_message"}],
            },
            "output": {"kind": "file", "dir": str(tmp_path / "out")},
            "stores": {"dir": str(tmp_path / "stores")},
            # One chat per request, one request at a time: the first acme request is
            # answered (and charged) before the next is looked at, so exactly one is sent.
            "llm": {
                "base_url": llm_sim.base_url,
                "concurrency": 1,
                "timeout_s": 10,
                "tasks": [{"name": "chat_reply", "schema_name": "chat_reply", "max_batch": 1}]
                + [t.model_dump() for t in LLMConfig().tasks[1:]],
            },
            "tenants": {"acme": {"daily_token_budget": 1, "on_budget_spent": action}},
        }
    )
    before = metrics.TENANT_TOKENS.labels("acme")._value.get()
    run_main(build_flow(settings, clock=lambda: NOW))

    responses, dead = read_outputs(tmp_path, "responses"), read_outputs(tmp_path, "dead_letters")
    answered = {i for r in responses for i in r["event_ids"]}
    assert {d["event_id"] for d in dead} | answered == {d["message_id"] for d in docs}
    assert len(answered) + len(dead) == len(docs)  # in = ok + dead letters
    assert {f"globex-{i}" for i in range(6)} <= answered
    acme_answered = [i for i in answered if i.startswith("acme")]
    assert len(acme_answered) == 1 and len(dead) == 5
    reason = "tenant 'acme' has spent its daily token budget (1 tokens per UTC day, "
    reason += "tenants.acme.daily_token_budget)"
    for d in dead:
        assert d["step_id"] == "llm.chat_reply" and d["tenant"] == "acme"
        assert d["reason"].startswith(reason)
        if action == "wait":
            assert re.search(r"; the input ended while \d+ items waited for it$", d["reason"])
    acme_requests = [r for r in llm_sim.requests() if "acme" in json.dumps(r["messages"])]
    assert len(acme_requests) == 1

    audit = read_outputs(tmp_path, "audit")
    spent = [r for r in audit if r["type"] == "activity" and r["activity"] == "budget_spent"]
    assert len(spent) == 1
    (record,) = spent
    acme_call = next(r for r in audit if r["type"] == "audit" and r["tenant"] == "acme")
    used = acme_call["prompt_tokens"] + acme_call["completion_tokens"]
    assert record["tenant"] == "acme" and record["day"] == datetime.now(UTC).strftime("%Y-%m-%d")
    assert (record["budget"], record["allowance"], record["spent"]) == (1, 1, used)
    assert record["action"] == action and record["request_id"] == acme_call["request_id"]
    assert metrics.TENANT_TOKENS.labels("acme")._value.get() - before == used


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


TASK = TaskConfig(name="chat_reply", schema_name="chat_reply", model="sim-1", max_batch=1)
CFG = LLMConfig(tasks=(TASK,), routes=(), concurrency=1, timeout_s=10)


def item(i: int, tenant: str) -> WorkItem:
    return WorkItem(
        f"{tenant}-{i}",
        (f"{tenant}-{i}",),
        tenant,
        f"s{i}",
        "u1",
        "chat_reply",
        "x",
        {"text": f"question {i}"},
        {},
        0.0,
    )


def drain(logic: _TasksLogic, step: str = "on_notify") -> list[Any]:
    """Call `step` until nothing is in flight; everything the logic emitted."""
    out: list[Any] = []
    for _ in range(2000):
        emitted, _keep = getattr(logic, step)()
        out.extend(emitted)
        if not any(sub.inflight for sub in logic.logics.values()):
            return out
        time.sleep(0.005)
    raise AssertionError("requests still in flight after 10 s")


def test_held_work_survives_a_restart_and_goes_on_the_next_day(
    tmp_path: Path, llm_sim: LLMSimulator
) -> None:
    """`wait`, driven as Bytewax drives the stage's logic (batches, notifications, a
    snapshot and a resume): acme's budget runs out after its first request; its other items
    are held (in the snapshot, not counted towards backpressure); a restart the same day
    holds them again without asking anything; each next UTC day they are asked again, and
    the day's budget goes to one of them."""
    clock = Clock(NOW)
    layout = StoreLayout(tmp_path / "stores")
    rules = {"acme": Budget(1, "wait")}

    def executor() -> LLMExecutor:
        budgets = TokenBudgets(rules, layout.budgets, layout.peer_budgets, (0, 1), clock)
        cache = ResponseCache(str(layout.llm_cache))
        return LLMExecutor(CFG, llm_sim.base_url, cache, budgets=budgets)

    def logic(pool: LLMExecutor, resume: tuple[WorkItem, ...] | None) -> _TasksLogic:
        return _TasksLogic({TASK.name: TASK}, lambda: pool, 0.005, clock, resume)

    pool = executor()
    first = logic(pool, None)
    out = first.on_batch([item(i, "acme") for i in range(4)])[0]
    out = [*out, *drain(first)]
    answers = [r for r in out if isinstance(r, Response)]
    assert [r.item.item_id for r in answers] == ["acme-0"]
    assert not [r for r in out if isinstance(r, DeadLetter)]
    held = first.snapshot()
    assert sorted(i.item_id for i in held) == ["acme-1", "acme-2", "acme-3"]
    assert first.logics[TASK.name].held == 0  # not counted towards backpressure
    wake = first.notify_at()
    assert wake is not None and wake.timestamp() == next_day(NOW)
    pool.close()
    close_all()
    sent = len(llm_sim.requests())

    # Restarted the same day: the spend was kept, so the items are held again, unasked.
    pool = executor()
    same_day = logic(pool, held)
    out = drain(same_day)
    assert [r for r in out if not isinstance(r, Audit)] == []
    assert len(llm_sim.requests()) == sent and len(same_day.snapshot()) == 3
    held = same_day.snapshot()
    pool.close()
    close_all()

    # Restarted the next day: the held items are asked again; the day's token spends on
    # the first of them, the rest wait for the day after, and so on.
    asked: list[str] = []
    for day in (1, 2, 3):
        clock.now = next_day(NOW) + (day - 1) * 86_400 + 1
        pool = executor()
        resumed = logic(pool, held)
        out = drain(resumed)
        pool.close()
        close_all()
        asked += [r.item.item_id for r in out if isinstance(r, Response)]
        assert not [r for r in out if isinstance(r, DeadLetter)]
        held = resumed.snapshot()
        assert len(held) == 3 - day
    assert asked == ["acme-1", "acme-2", "acme-3"]
    assert len(llm_sim.requests()) == sent + 3  # acme-0 was never asked again


def test_held_work_is_bounded(tmp_path: Path, llm_sim: LLMSimulator) -> None:
    """Beyond `llm.max_held_items` per key and task, the newest held items are dead-lettered
    with the reason; in = answered + held + dead letters."""
    cfg = CFG.model_copy(update={"max_held_items": 2})
    layout = StoreLayout(tmp_path / "stores")
    budgets = TokenBudgets({"acme": Budget(1, "wait")}, layout.budgets, clock=Clock(NOW))
    pool = LLMExecutor(cfg, llm_sim.base_url, ResponseCache(str(layout.llm_cache)), budgets=budgets)
    logic = _TasksLogic({TASK.name: TASK}, lambda: pool, 0.005, Clock(NOW), None)
    out = [*logic.on_batch([item(i, "acme") for i in range(6)])[0], *drain(logic)]
    pool.close()
    answered = [r.item.item_id for r in out if isinstance(r, Response)]
    dead = [r for r in out if isinstance(r, DeadLetter)]
    held = [i.item_id for i in logic.snapshot()]
    assert answered == ["acme-0"] and held == ["acme-1", "acme-2"]
    assert sorted(str(d.event_id) for d in dead) == ["acme-3", "acme-4", "acme-5"]
    assert all(
        d.reason.endswith(", and 2 items already wait for it (llm.max_held_items)") for d in dead
    )
