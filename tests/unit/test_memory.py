"""Unit tests of `operators.memory` (bounded memory); profile parsing is in test_reference."""

from __future__ import annotations

import pickle

from config.models import MemoryConfig
from core.records import Event, Kind
from operators.memory import Memory, _MemoryLogic


def chat(i: int, text: str | None = None, role: str = "user") -> Event:
    return Event(
        event_id=f"m{i}",
        source="events.chat[0]@1",
        tenant="acme",
        kind=Kind.CHAT,
        entity="sess-1",
        ts=1000.0 + i,
        payload={"text": text if text is not None else f"turn {i}", "role": role},
        ingest_ts=0.0,
    )


def business(i: int) -> Event:
    return Event(
        event_id=f"b{i}",
        source="events.business[0]@1",
        tenant="acme",
        kind=Kind.BUSINESS,
        entity="acct-1",
        ts=2000.0 + i,
        payload={
            "event_type": "refund_requested",
            "amount": 12.5,
            "currency": "EUR",
            "attributes": {"order": "o-1"},
        },
        ingest_ts=0.0,
    )


def test_observe_returns_memory_before_the_event() -> None:
    mem = Memory(MemoryConfig(max_turns=5))
    assert mem.observe(chat(1), now=10.0) == ()
    before = mem.observe(chat(2, role="assistant"), now=11.0)
    assert before == ({"role": "user", "text": "turn 1", "ts": 1001.0, "id": "m1"},)
    before = mem.observe(chat(3), now=12.0)
    assert [t["text"] for t in before] == ["turn 1", "turn 2"]
    assert before[1]["role"] == "assistant"
    assert mem.last_wall == 12.0


def test_keeps_at_most_max_turns_dropping_the_oldest() -> None:
    mem = Memory(MemoryConfig(max_turns=3))
    for i in range(1, 6):
        mem.observe(chat(i), now=float(i))
    before = mem.observe(chat(6), now=6.0)
    assert [t["text"] for t in before] == ["turn 3", "turn 4", "turn 5"]
    assert len(mem.turns) == 3


def test_truncates_long_text_to_the_limit() -> None:
    mem = Memory(MemoryConfig(max_chars_per_turn=16))
    mem.observe(chat(1, text="a" * 100), now=1.0)
    mem.observe(chat(2, text="b" * 16), now=2.0)
    before = mem.observe(chat(3), now=3.0)
    assert before[0]["text"] == "a" * 15 + "…"
    assert len(before[0]["text"]) == 16
    assert before[1]["text"] == "b" * 16  # exactly at the limit: untouched


def test_business_events_are_remembered_structured() -> None:
    mem = Memory(MemoryConfig())
    mem.observe(business(1), now=1.0)
    [turn] = mem.observe(business(2), now=2.0)
    assert turn == {
        "role": "event",
        "event_type": "refund_requested",
        "amount": 12.5,
        "currency": "EUR",
        "attributes": {"order": "o-1"},
        "ts": 2001.0,
    }


def test_state_round_trip() -> None:
    cfg = MemoryConfig(max_turns=3)
    mem = Memory(cfg)
    for i in range(1, 5):
        mem.observe(chat(i), now=100.0 + i)
    state = pickle.loads(pickle.dumps(mem.state()))
    assert state[1] == 104.0

    resumed = Memory(cfg, state)
    assert resumed.last_wall == 104.0
    assert resumed.observe(chat(5), now=105.0) == mem.observe(chat(5), now=105.0)
    assert resumed.state() == mem.state()


def test_state_is_a_copy() -> None:
    mem = Memory(MemoryConfig(max_turns=3))
    mem.observe(chat(1), now=1.0)
    state = mem.state()
    mem.turns[0]["text"] = "changed"
    mem.observe(chat(2), now=2.0)
    assert state == (({"role": "user", "text": "turn 1", "ts": 1001.0, "id": "m1"},), 1.0, 0)


def test_resume_with_smaller_max_turns_keeps_the_newest() -> None:
    big = Memory(MemoryConfig(max_turns=5))
    for i in range(1, 6):
        big.observe(chat(i), now=float(i))
    small = Memory(MemoryConfig(max_turns=2), big.state())
    assert [t["text"] for t in small.turns] == ["turn 4", "turn 5"]


def test_memory_expires_by_the_injected_clock_not_by_when_it_is_woken() -> None:
    """Bytewax wakes the logic by system time; with a clock far behind it (a test's), the
    memory must survive until its own clock says the idle TTL has passed."""
    now = [0.0]
    lg = _MemoryLogic(Memory(MemoryConfig(idle_ttl_s=60.0)), lambda: now[0])
    lg.on_batch([chat(1)])
    assert lg.on_notify() == ((), lg.RETAIN)
    now[0] = 59.0
    assert lg.on_notify() == ((), lg.RETAIN)
    [rem] = lg.on_batch([chat(2)])[0]
    assert [t["text"] for t in rem.memory] == ["turn 1"]
    now[0] = 59.0 + 60.0
    assert lg.on_notify() == ((), lg.DISCARD)


# --- folding into summaries -------------------------------------------------------------


def test_without_max_tokens_the_oldest_turn_is_dropped() -> None:
    mem = Memory(MemoryConfig(max_turns=2))
    folds = [mem.observe_folding(chat(i), now=float(i))[1] for i in range(1, 6)]
    assert folds == [None] * 5
    assert [t["text"] for t in mem.turns] == ["turn 4", "turn 5"]


def test_a_full_memory_folds_its_older_half() -> None:
    mem = Memory(MemoryConfig(max_turns=4, max_tokens=100_000))
    out = [mem.observe_folding(chat(i), now=float(i)) for i in range(1, 8)]
    folds = [(i + 1, f.seq, [t["id"] for t in f.turns]) for i, (_, f) in enumerate(out) if f]
    assert folds == [(5, 1, ["m1", "m2"]), (7, 2, ["m3", "m4"])]
    before_5 = out[4][0]
    assert [t["id"] for t in before_5] == ["m1", "m2", "m3", "m4"]  # the prompt sees all four
    assert [t["id"] for t in mem.turns] == ["m5", "m6", "m7"]


def test_a_memory_past_max_tokens_folds_before_it_is_full() -> None:
    text = "x" * 99  # 25 estimated tokens
    mem = Memory(MemoryConfig(max_turns=50, max_tokens=100))
    folds = [mem.observe_folding(chat(i, text), now=float(i))[1] for i in range(1, 5)]
    # two turns count as 100 tokens with their replies: the third folds both, to keep half
    assert [[t["id"] for t in f.turns] if f else None for f in folds] == [
        None,
        None,
        ["m1", "m2"],
        None,
    ]


def test_folds_survive_a_snapshot_and_old_snapshots_load() -> None:
    cfg = MemoryConfig(max_turns=2, max_tokens=100_000)
    mem = Memory(cfg)
    for i in range(1, 4):
        mem.observe_folding(chat(i), now=float(i))
    resumed = Memory(cfg, pickle.loads(pickle.dumps(mem.state())))
    assert resumed.folds == mem.folds == 1
    old = Memory(cfg, ((Memory.item_of(chat(1), 500),), 5.0))  # (turns, wall) before folds
    assert (old.folds, old.last_wall, len(old.turns)) == (0, 5.0, 1)
