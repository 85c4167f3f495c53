"""Unit tests of `operators.dedup`: the TTL id set and the stateful logic, clock injected."""

from __future__ import annotations

from datetime import UTC, datetime

from core.records import Event, Kind
from operators.dedup import Duplicate, SeenIds, _DedupLogic


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ev(event_id: str) -> Event:
    return Event(
        event_id=event_id,
        source="file:x:1",
        tenant="acme",
        kind=Kind.CHAT,
        entity="s1",
        ts=0.0,
        payload={"text": "hi", "role": "user"},
        ingest_ts=0.0,
    )


def dup_flags(out: object) -> list[tuple[str, bool]]:
    """(event id, is a duplicate) for each output: first sightings pass as the `Event` itself."""
    assert isinstance(out, list)
    flags = []
    for x in out:
        assert isinstance(x, Event | Duplicate), x
        e = x.event if isinstance(x, Duplicate) else x
        flags.append((e.event_id, isinstance(x, Duplicate)))
    return flags


# --- SeenIds --------------------------------------------------------------------------------


def test_new_then_duplicate() -> None:
    ids = SeenIds(ttl_s=10, max_ids=100)
    assert ids.check_and_add("a", 100.0) is True
    assert ids.check_and_add("a", 101.0) is False
    assert ids.check_and_add("b", 101.0) is True
    # A duplicate does not refresh the first-seen time.
    assert ids.seen == {"a": 100.0, "b": 101.0}


def test_prune_keeps_ids_until_ttl_then_forgets() -> None:
    ids = SeenIds(ttl_s=10, max_ids=100)
    ids.check_and_add("a", 100.0)
    ids.check_and_add("b", 105.0)
    ids.prune(110.0)  # cutoff 100: "a" seen exactly at the cutoff is kept
    assert list(ids.seen) == ["a", "b"]
    ids.prune(110.5)
    assert list(ids.seen) == ["b"]
    assert ids.check_and_add("a", 110.5) is True  # forgotten, so new again
    ids.prune(200.0)
    assert ids.seen == {}


def test_cap_drops_oldest() -> None:
    ids = SeenIds(ttl_s=1000, max_ids=3)
    for i, eid in enumerate(["a", "b", "c", "d"]):
        assert ids.check_and_add(eid, 100.0 + i)
    assert list(ids.seen) == ["b", "c", "d"]
    assert ids.check_and_add("a", 105.0) is True  # dropped by the cap, so new again
    assert list(ids.seen) == ["c", "d", "a"]


def test_expires_at() -> None:
    ids = SeenIds(ttl_s=30, max_ids=10)
    assert ids.expires_at() is None
    ids.check_and_add("a", 100.0)
    ids.check_and_add("b", 120.0)
    assert ids.expires_at() == 130.0
    ids.prune(131.0)
    assert ids.expires_at() == 150.0


def test_state_is_copied_on_construction() -> None:
    state = {"a": 1.0}
    ids = SeenIds(ttl_s=10, max_ids=10, state=state)
    ids.check_and_add("b", 2.0)
    assert state == {"a": 1.0}


# --- _DedupLogic ----------------------------------------------------------------------------


def make_logic(clock: FakeClock, state: dict[str, float] | None = None) -> _DedupLogic:
    return _DedupLogic(SeenIds(ttl_s=60, max_ids=100, state=state), clock)


def test_on_batch_tags_duplicates_including_within_one_batch() -> None:
    clock = FakeClock(1000.0)
    logic = make_logic(clock)
    out, keep = logic.on_batch([ev("a"), ev("b"), ev("a")])
    assert dup_flags(out) == [("a", False), ("b", False), ("a", True)]
    assert keep == logic.RETAIN
    clock.now = 1030.0
    out, _ = logic.on_batch([ev("b"), ev("c")])
    assert dup_flags(out) == [("b", True), ("c", False)]


def test_on_batch_prunes_with_the_injected_clock() -> None:
    clock = FakeClock(1000.0)
    logic = make_logic(clock)
    logic.on_batch([ev("a")])
    clock.now = 1061.0
    out, _ = logic.on_batch([ev("a")])
    assert dup_flags(out) == [("a", False)]


def test_notify_at_is_first_expiry_as_utc_datetime() -> None:
    clock = FakeClock(1000.0)
    logic = make_logic(clock)
    assert logic.notify_at() is None
    logic.on_batch([ev("a")])
    clock.now = 1010.0
    logic.on_batch([ev("b")])
    assert logic.notify_at() == datetime.fromtimestamp(1060.0, UTC)


def test_snapshot_is_a_copy() -> None:
    clock = FakeClock(1000.0)
    logic = make_logic(clock)
    logic.on_batch([ev("a")])
    snap = logic.snapshot()
    assert snap == {"a": 1000.0}
    clock.now = 1001.0
    logic.on_batch([ev("b")])
    clock.now = 2000.0
    logic.on_notify()  # prunes everything
    assert snap == {"a": 1000.0}


def test_resumed_logic_still_sees_ids() -> None:
    clock = FakeClock(1000.0)
    logic = make_logic(clock)
    logic.on_batch([ev("a"), ev("b")])
    snap = logic.snapshot()

    clock.now = 1020.0
    resumed = make_logic(clock, snap)
    out, _ = resumed.on_batch([ev("b"), ev("c")])
    assert dup_flags(out) == [("b", True), ("c", False)]
    assert resumed.notify_at() == datetime.fromtimestamp(1060.0, UTC)
    # The resumed logic does not write back into the snapshot it was built from.
    assert snap == {"a": 1000.0, "b": 1000.0}


def test_on_notify_retains_while_ids_remain_and_discards_when_empty() -> None:
    clock = FakeClock(1000.0)
    logic = make_logic(clock)
    logic.on_batch([ev("a")])
    clock.now = 1030.0
    logic.on_batch([ev("b")])

    clock.now = 1061.0  # "a" expired, "b" still live
    out, keep = logic.on_notify()
    assert list(out) == []
    assert keep == logic.RETAIN
    assert logic.snapshot() == {"b": 1030.0}

    clock.now = 1091.0
    out, keep = logic.on_notify()
    assert list(out) == []
    assert keep == logic.DISCARD
    assert logic.notify_at() is None
