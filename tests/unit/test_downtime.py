"""Downtime does not count: stateful logics resumed from a snapshot after a stop continue their
wall clock where the snapshot left it (issue 9, point 8).

Each scenario runs the same events twice with an injected clock: once without a stop, once
snapshotted mid-way, restored after a downtime longer than the allowed lateness (120 s) or
than every idle TTL (10 h), and fed the rest. Both runs must give the same outputs; the
state still expires after real idle time following the restart.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterable
from typing import Any

import pytest

from config.models import AnomalyConfig, MemoryConfig
from core.clock import wake_at
from core.records import Alert, Event, Kind
from operators.anomaly import EntityDetector, Flagged, Late, RateWindows, _DetectLogic
from operators.dedup import Duplicate, SeenIds, _DedupLogic
from operators.memory import Memory, _MemoryLogic

T0 = 1_700_000_040.0  # a multiple of 60: window starts are round numbers
W0 = 1_800_000_000.0  # the wall clock: readings arrive half a second after their event time
DOWNTIMES = [pytest.param(120.0, id="120s"), pytest.param(10 * 3600.0, id="10h")]

CFG = AnomalyConfig(
    detector="ewma",
    ewma_alpha=0.1,
    z_threshold=4.0,
    warmup=5,
    suppress_s=100.0,
    rate_window_s=60.0,
    rate_factor=5.0,
    rate_min_count=10,
    rate_warmup_windows=3,
    allowed_lateness_s=30.0,
)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def metric(i: int, value: float) -> Event:
    return Event(
        event_id=f"m{i}",
        source=f"t[0]@{i}",
        tenant="acme",
        kind=Kind.METRIC,
        entity="web-1.cpu",
        ts=T0 + 10.0 * i,
        payload={"value": value, "unit": None, "tags": {}},
        ingest_ts=0.0,
    )


def business(i: int, ts: float) -> Event:
    return Event(
        event_id=f"b{i}",
        source=f"t[0]@{i}",
        tenant="acme",
        kind=Kind.BUSINESS,
        entity="acct-1",
        ts=ts,
        payload={"event_type": "login", "amount": None, "currency": None, "attributes": {}},
        ingest_ts=0.0,
    )


def chat(event_id: str, text: str) -> Event:
    return Event(
        event_id, "chat[0]@0", "acme", Kind.CHAT, "s1", 0.0, {"text": text, "role": "user"}, 0.0
    )


def readings() -> tuple[list[Event], int]:
    """Forty readings ten seconds apart and the index to stop at: the spike is the second
    reading after the stop, inside the window the stop cut (so with the stop's wall time
    counted, it is late)."""
    values = [80.0 if i == 21 else 10.0 + (i % 3) for i in range(40)]
    return [metric(i, v) for i, v in enumerate(values)], 20


def logins() -> tuple[list[Event], int]:
    """Two logins in each of three windows, two more in the fourth, the stop, then 15 more in
    that fourth window (a burst), one login far behind (late in any run) and one that closes
    the burst window."""
    ts = [T0 + 60 * k + 1 + i for k in range(3) for i in range(2)] + [T0 + 181, T0 + 182]
    stop = len(ts)
    ts += [T0 + 183 + i for i in range(15)] + [T0 + 100, T0 + 400]
    return [business(i, t) for i, t in enumerate(ts)], stop


def wall(e: Event) -> float:
    return W0 + (e.ts - T0) + 0.5


def feed(det: EntityDetector, arrivals: Iterable[tuple[Event, float]]) -> list[Flagged]:
    out: list[Flagged] = []
    last = -math.inf
    for e, now in arrivals:
        out.extend(det.process([e], now))
        last = now
    out.extend(det.tick(last + 1000.0))  # long after: every window has closed
    out.extend(det.flush(last + 1000.0))
    return out


def alerts(out: list[Flagged]) -> list[Alert]:
    return sorted((f for f in out if isinstance(f, Alert)), key=lambda a: a.alert_id)


def late(out: list[Flagged]) -> list[str]:
    return [f.event.event_id for f in out if isinstance(f, Late)]


def stopped(
    events: list[Event], stop: int, downtime: float, replay: str, *, resume_clock: bool = True
) -> list[Flagged]:
    """The same events, snapshotted after `stop` of them, restarted `downtime` seconds after
    the snapshot; the rest replayed as a backlog read at once (`backlog`) or each as late as
    the stop made it (`delayed`)."""
    det = EntityDetector(CFG)
    out = [f for e in events[:stop] for f in det.process([e], wall(e))]
    snapshot_at = wall(events[stop - 1])
    state = pickle.loads(pickle.dumps(det.state()))
    restart = snapshot_at + downtime
    resumed = EntityDetector(CFG, state, restart) if resume_clock else EntityDetector(CFG, state)
    rest = events[stop:]
    if replay == "backlog":
        arrivals = [(e, restart + 0.01 * k) for k, e in enumerate(rest)]
    else:
        arrivals = [(e, wall(e) + downtime) for e in rest]
    return out + feed(resumed, arrivals)


@pytest.mark.parametrize("replay", ["backlog", "delayed"])
@pytest.mark.parametrize("downtime", DOWNTIMES)
@pytest.mark.parametrize("scenario", [readings, logins], ids=["spike", "burst"])
def test_a_resumed_detector_raises_what_an_uninterrupted_one_raises(
    scenario: Any, downtime: float, replay: str
) -> None:
    events, stop = scenario()
    straight = feed(EntityDetector(CFG), [(e, wall(e)) for e in events])
    after_stop = [a for a in alerts(straight) if a.ts > events[stop - 1].ts]
    assert len(after_stop) == 1  # the spike or the burst, in the replayed part

    out = stopped(events, stop, downtime, replay)
    assert alerts(out) == alerts(straight)
    assert late(out) == late(straight)
    assert late(straight) == ([] if scenario is readings else ["b23"])


@pytest.mark.parametrize("downtime", DOWNTIMES)
def test_without_the_restart_wall_time_the_replayed_readings_are_late(downtime: float) -> None:
    """What the fix is for: a state resumed as it was (no restart wall time, or an old code
    path) counts the downtime as idle time, and the spike after the stop is late."""
    events, stop = readings()
    out = stopped(events, stop, downtime, "backlog", resume_clock=False)
    assert "m21" in late(out)
    assert not any(a.value == 80.0 for a in alerts(out))


def test_rate_windows_shift_keeps_the_watermark_where_the_snapshot_left_it() -> None:
    rw = RateWindows(CFG)
    for i in range(3):
        assert rw.add(T0 + 10.0 * i, f"e{i}", now=W0 + i)
    at_snapshot = rw.watermark(W0 + 5.0)
    resumed = RateWindows(CFG, pickle.loads(pickle.dumps(rw.state())))
    resumed.shift(120.0)
    assert resumed.watermark(W0 + 125.0) == at_snapshot
    close = rw.next_close_wall()
    assert close is not None and resumed.next_close_wall() == close + 120.0
    assert resumed.add(T0 + 30.0, "e3", now=W0 + 125.0)  # in time, as without the stop


def test_a_snapshot_without_the_clock_reading_resumes_from_its_last_event() -> None:
    """Snapshots written before `now` was recorded still load; their last event's wall time
    stands for the last reading, so the first restart after the upgrade is covered too."""
    events, stop = readings()
    det = EntityDetector(CFG)
    for e in events[:stop]:
        det.process([e], wall(e))
    state = det.state()
    del state["now"]
    restart = wall(events[stop - 1]) + 3600.0
    resumed = EntityDetector(CFG, state, restart)
    assert resumed.last_wall == restart and resumed.now == restart
    assert late(feed(resumed, [(e, restart) for e in events[stop:]])) == []
    assert EntityDetector(CFG, state).last_wall == wall(events[stop - 1])  # no `now`: as is


@pytest.mark.parametrize("downtime", DOWNTIMES)
def test_detector_state_outlives_the_downtime_then_expires_after_real_idle_time(
    downtime: float,
) -> None:
    """Idle TTL one hour; the snapshot is taken 200 s after the last event, once its windows
    closed; the restart comes `downtime` later (10 h is longer than the TTL). The state is
    kept through the downtime, and discarded when the TTL has passed in wall time counted
    without it: 3,400 s after the restart."""
    cfg = CFG.model_copy(update={"idle_ttl_s": 3600.0})
    det = EntityDetector(cfg)
    events, _ = logins()
    for e in events[:8]:
        det.process([e], wall(e))
    snapshot_at = wall(events[7]) + 200.0
    det.tick(snapshot_at)
    assert not det.rate.open
    restart = snapshot_at + downtime
    clock = FakeClock(restart)
    logic = _DetectLogic(
        EntityDetector(cfg, pickle.loads(pickle.dumps(det.state())), restart), clock
    )
    assert logic.on_notify() == ([], logic.RETAIN)
    assert logic.notify_at() == wake_at(restart + 3400.0)
    clock.now = restart + 3399.0
    assert logic.on_notify() == ([], logic.RETAIN)
    clock.now = restart + 3400.0
    assert logic.on_notify() == ([], logic.DISCARD)


# --- memory --------------------------------------------------------------------------------


@pytest.mark.parametrize("downtime", DOWNTIMES)
def test_memory_outlives_a_downtime_longer_than_its_ttl(downtime: float) -> None:
    """Idle TTL 30 min. The memory is snapshotted right after its third turn; after the
    downtime the next turn sees the three, as without the stop; then 30 min of real idle time
    after that turn discard it."""
    cfg = MemoryConfig(idle_ttl_s=1800.0)
    live = Memory(cfg)
    for i in range(3):
        live.observe(chat(f"c{i}", f"turn {i}"), now=W0 + i)
    state = pickle.loads(pickle.dumps(live.state()))
    restart = W0 + 2 + downtime

    clock = FakeClock(restart)
    logic = _MemoryLogic(Memory(cfg, state, restart), clock)
    assert logic.on_notify() == ((), logic.RETAIN)
    clock.now = restart + 5.0
    [rem], _ = logic.on_batch([chat("c3", "turn 3")])
    assert rem.memory == live.observe(chat("c3", "turn 3"), now=W0 + 7.0)
    assert logic.notify_at() == wake_at(restart + 5.0 + 1800.0, 1.0)
    clock.now = restart + 5.0 + 1799.0
    assert logic.on_notify() == ((), logic.RETAIN)
    clock.now = restart + 5.0 + 1800.0
    assert logic.on_notify() == ((), logic.DISCARD)


def test_memory_resumed_without_the_restart_wall_time_expires_on_the_downtime() -> None:
    cfg = MemoryConfig(idle_ttl_s=1800.0)
    mem = Memory(cfg)
    mem.observe(chat("c0", "turn 0"), now=W0)
    restart = W0 + 10 * 3600.0
    logic = _MemoryLogic(Memory(cfg, mem.state()), FakeClock(restart))
    assert logic.on_notify() == ((), logic.DISCARD)


# --- dedup ---------------------------------------------------------------------------------


def flags(out: Iterable[Event | Duplicate]) -> list[tuple[str, bool]]:
    return [
        (x.event.event_id, True) if isinstance(x, Duplicate) else (x.event_id, False) for x in out
    ]


@pytest.mark.parametrize("downtime", DOWNTIMES)
def test_dedup_ids_outlive_a_downtime_longer_than_the_ttl(downtime: float) -> None:
    """TTL one hour; "a" is seen 10 s before "b", the snapshot follows "b". A repeat of "a"
    replayed after the downtime is still a duplicate; the ids then expire one TTL after their
    sighting, counted without the downtime ("a" 10 s before "b")."""
    live_clock = FakeClock(W0)
    live = _DedupLogic(SeenIds(3600.0, 100), live_clock)
    live.on_batch([chat("a", "x")])
    live_clock.now = W0 + 10.0
    live.on_batch([chat("b", "x")])
    snap = pickle.loads(pickle.dumps(live.snapshot()))
    restart = W0 + 10.0 + downtime

    clock = FakeClock(restart)
    logic = _DedupLogic(SeenIds(3600.0, 100, snap, restart), clock)
    assert logic.notify_at() == wake_at(restart - 10.0 + 3600.0, 1.0)
    clock.now = restart + 1.0
    out, _ = logic.on_batch([chat("a", "x"), chat("c", "x")])
    assert flags(out) == [("a", True), ("c", False)]
    assert snap == {"a": W0, "b": W0 + 10.0}  # the snapshot itself is not changed

    clock.now = restart + 3600.0 - 9.0  # "a" expired, "b" and "c" still live
    assert logic.on_notify() == ((), logic.RETAIN)
    assert sorted(logic.snapshot()) == ["b", "c"]
    clock.now = restart + 1.0 + 3600.0 + 1.0
    assert logic.on_notify() == ((), logic.DISCARD)


def test_dedup_resumed_without_the_restart_wall_time_forgets_on_the_downtime() -> None:
    snap = {"a": W0}
    restart = W0 + 10 * 3600.0
    logic = _DedupLogic(SeenIds(3600.0, 100, snap), FakeClock(restart))
    out, _ = logic.on_batch([chat("a", "x")])
    assert flags(out) == [("a", False)]
