"""Unit tests of `operators.llm.MicroBatcher`: when a micro-batch is cut and what goes in it."""

from __future__ import annotations

from typing import Any

from config.models import TaskConfig
from core.records import WorkItem
from operators.llm import MicroBatcher


def item(item_id: str, tokens: int = 10) -> WorkItem:
    return WorkItem(
        item_id=item_id,
        event_ids=(item_id,),
        tenant="acme",
        entity="s1",
        profile_id="s1",
        task="chat_reply",
        source="x",
        data={"tokens": tokens},
        context={},
        ingest_ts=0.0,
    )


def cost(i: WorkItem) -> int:
    return int(i.data["tokens"])


def batcher(**over: Any) -> MicroBatcher:
    base: dict[str, Any] = {
        "name": "chat_reply",
        "schema_name": "chat_reply",
        "max_batch": 3,
        "max_batch_tokens": 1000,
        "max_wait_ms": 500.0,
    }
    base.update(over)
    return MicroBatcher(TaskConfig(**base), cost)


def ids(batch: list[WorkItem]) -> list[str]:
    return [i.item_id for i in batch]


def test_empty_is_never_due() -> None:
    b = batcher(urgent=True)
    assert not b.due(1e9)
    assert b.take() == []
    assert b.wake_at() is None


def test_cuts_by_count() -> None:
    b = batcher(max_batch=3)
    b.add([item("a"), item("b")], now=100.0)
    assert not b.due(100.0)
    b.add([item("c"), item("d")], now=100.1)
    assert b.due(100.1)
    assert ids(b.take()) == ["a", "b", "c"]
    assert ids(b.pending) == ["d"]
    assert b.pending_tokens == 10
    assert not b.due(100.1)


def test_cuts_by_token_budget() -> None:
    b = batcher(max_batch=10, max_batch_tokens=100)
    b.add([item("a", 40), item("b", 40)], now=0.0)
    assert not b.due(0.0)
    b.add([item("c", 40)], now=0.0)
    assert b.due(0.0)  # 120 tokens pending >= 100
    assert ids(b.take()) == ["a", "b"]  # "c" would exceed the budget
    assert ids(b.pending) == ["c"]
    assert b.pending_tokens == 40


def test_oversize_item_forms_a_batch_of_one() -> None:
    b = batcher(max_batch=10, max_batch_tokens=100)
    b.add([item("big", 500), item("small", 10)], now=0.0)
    assert b.due(0.0)
    assert ids(b.take()) == ["big"]
    assert ids(b.take()) == ["small"]
    assert b.pending_tokens == 0


def test_oversize_item_after_others_waits_for_next_batch() -> None:
    b = batcher(max_batch=10, max_batch_tokens=100)
    b.add([item("a", 10), item("big", 500)], now=0.0)
    assert ids(b.take()) == ["a"]
    assert ids(b.take()) == ["big"]


def test_cuts_by_max_wait() -> None:
    b = batcher(max_wait_ms=500.0)
    b.add([item("a")], now=100.0)
    b.add([item("b")], now=100.4)  # the oldest item sets the deadline
    assert not b.due(100.0)
    assert not b.due(100.25)
    assert b.due(100.5)
    assert b.due(101.0)
    assert ids(b.take()) == ["a", "b"]


def test_wake_at_is_oldest_plus_max_wait() -> None:
    b = batcher(max_wait_ms=250.0)
    assert b.wake_at() is None
    b.add([item("a")], now=10.0)
    b.add([item("b")], now=10.2)
    assert b.wake_at() == 10.25
    b.take()
    assert b.wake_at() is None
    b.add([item("c")], now=20.0)
    assert b.wake_at() == 20.25


def test_zero_wait_is_due_at_once() -> None:
    b = batcher(max_wait_ms=0.0)
    b.add([item("a")], now=5.0)
    assert b.due(5.0)


def test_urgent_flushes_at_once() -> None:
    b = batcher(urgent=True, max_wait_ms=10_000.0, max_batch=4)
    b.add([item("a")], now=1.0)
    assert b.due(1.0)
    assert ids(b.take()) == ["a"]
    # Urgent does not lift the batch limits.
    b.add([item(str(n)) for n in range(6)], now=2.0)
    assert ids(b.take()) == ["0", "1", "2", "3"]
    assert b.due(2.0)
    assert ids(b.take()) == ["4", "5"]


def test_take_preserves_order_and_empties_pending() -> None:
    b = batcher(max_batch=100)
    names = [f"i{n}" for n in range(7)]
    b.add([item(n, tokens=n_ + 1) for n_, n in enumerate(names)], now=3.0)
    assert b.pending_tokens == sum(range(1, 8))
    assert ids(b.take()) == names
    assert b.pending == []
    assert b.pending_tokens == 0
    assert b.oldest is None
    assert not b.due(1e9)


def test_successive_takes_drain_in_arrival_order() -> None:
    b = batcher(max_batch=2)
    b.add([item(str(n)) for n in range(5)], now=0.0)
    batches = []
    while b.pending:
        batches.append(ids(b.take()))
    assert batches == [["0", "1"], ["2", "3"], ["4"]]
