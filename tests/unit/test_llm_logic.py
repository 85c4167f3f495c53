"""Unit tests of the LLM stage's keyed logic (`operators.llm._LLMLogic`) on an injected clock,
with a fake executor whose requests finish when the test says so."""

from __future__ import annotations

from concurrent.futures import Future
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

from config.models import TaskConfig
from core.records import Response, WorkItem
from inference.client import Answered, CallOutcome, LLMExecutor
from operators.llm import _LLMLogic

T0 = 1_000_000.0
"""A wall time far from the machine's: anything read from the real clock shows."""


def item(item_id: str) -> WorkItem:
    return WorkItem(
        item_id=item_id,
        event_ids=(item_id,),
        tenant="acme",
        entity="s1",
        profile_id="s1",
        task="chat_reply",
        source="x",
        data={"text": "hi"},
        context={},
        ingest_ts=0.0,
    )


class FakeExecutor:
    """Hands out futures the test completes; the breaker is always closed."""

    def __init__(self) -> None:
        self.futures: list[tuple[list[WorkItem], Future[CallOutcome]]] = []
        self.capacity = 4
        self.cfg = SimpleNamespace(max_held_items=100)

    def can_serve(self, task: TaskConfig) -> bool:
        return True

    def submit(self, task: TaskConfig, batch: list[WorkItem]) -> Future[CallOutcome]:
        fut: Future[CallOutcome] = Future()
        self.futures.append((batch, fut))
        return fut


def logic(now: list[float], **task: Any) -> tuple[_LLMLogic, FakeExecutor]:
    fake = FakeExecutor()
    cfg = TaskConfig(name="chat_reply", schema_name="chat_reply", **task)
    return _LLMLogic(cfg, lambda: cast(LLMExecutor, fake), 0.005, lambda: now[0], None), fake


def test_notify_at_follows_the_injected_clock_while_requests_are_in_flight() -> None:
    now = [T0]
    lg, fake = logic(now, urgent=True)
    out, _ = lg.on_batch([item("a")])
    assert list(out) == [] and len(fake.futures) == 1
    assert lg.notify_at() == datetime.fromtimestamp(T0 + 0.005, UTC)
    now[0] += 10.0
    assert lg.notify_at() == datetime.fromtimestamp(T0 + 10.005, UTC)


def test_notify_at_is_the_batch_deadline_when_nothing_is_in_flight() -> None:
    now = [T0]
    lg, fake = logic(now, max_batch=8, max_wait_ms=200)
    lg.on_batch([item("a")])
    assert fake.futures == []
    assert lg.notify_at() == datetime.fromtimestamp(T0 + 0.2, UTC)


def test_answers_are_stamped_with_the_injected_clock() -> None:
    now = [T0]
    lg, fake = logic(now, urgent=True)
    lg.on_batch([item("a")])
    [(batch, fut)] = fake.futures
    fut.set_result(CallOutcome(answered=[Answered(batch[0], {"reply": "x"}, cached=False)]))
    now[0] = T0 + 3.0
    out, discard = lg.on_notify()
    [resp] = list(out)
    assert isinstance(resp, Response) and resp.emitted_at == T0 + 3.0
    assert discard is lg.DISCARD and lg.notify_at() is None
