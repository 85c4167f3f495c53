"""A restart after downtime gives the outputs an uninterrupted run gives (issue 9, point 8).

The stateful chain of the pipeline (`dedup` -> `detect_anomalies` -> `remember`) runs on a
recovery directory with an injected clock and a finite allowed lateness (30 s). The input
stops mid-way (a crash, `TestingSource.ABORT`, or a graceful stop, `TestingSource.EOF`); the
clock moves forward by the downtime; the flow is resumed on the same directory.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from config.models import AnomalyConfig, MemoryConfig
from core.records import Alert, Event, Kind
from operators.anomaly import detect_anomalies
from operators.dedup import dedup
from operators.memory import remember

T0 = 1_700_000_040.0  # a multiple of 60: window starts are round numbers
WALL = 1_800_000_000.0
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
MEMORY = MemoryConfig(idle_ttl_s=1800.0)
DEDUP_TTL_S = 3600.0


class Clock:
    """The wall clock of the test: frozen during a run, moved between runs."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def metric(i: int) -> Event:
    value = 80.0 if i == 21 else 10.0 + (i % 3)
    return Event(
        f"m{i}", f"m[0]@{i}", "acme", Kind.METRIC, "cpu", T0 + 10.0 * i,
        {"value": value, "unit": None, "tags": {}}, 0.0,
    )  # fmt: skip


def login(i: int, ts: float) -> Event:
    return Event(
        f"b{i}", f"b[0]@{i}", "acme", Kind.BUSINESS, "acct-1", ts,
        {"event_type": "login", "amount": None, "currency": None, "attributes": {}}, 0.0,
    )  # fmt: skip


def turn(event_id: str, ts: float, text: str) -> Event:
    return Event(
        event_id, f"c[0]@{event_id}", "acme", Kind.CHAT, "s1", ts,
        {"text": text, "role": "user"}, 0.0,
    )  # fmt: skip


def scenario() -> tuple[list[Event], list[Event]]:
    """Events before and after the stop, in event-time order.

    - `cpu`: a reading every 10 s; the spike (80) is the second reading after the stop, in
      the window the stop cut.
    - `acct-1`: two logins in each of the first three windows and two in the fourth before
      the stop; after it, 15 more in that fourth window (a burst), one 80 s behind (late in
      any run) and one that closes the burst window.
    - `s1`: three chat turns before the stop, two after, and a repeat of the second turn
      (same event id) after it.
    """
    metrics = [metric(i) for i in range(40)]
    quiet = [T0 + 60 * k + 1 + i for k in range(3) for i in range(2)] + [T0 + 181, T0 + 182]
    logins = [login(i, t) for i, t in enumerate(quiet)]
    logins += [login(8 + i, T0 + 196 + i) for i in range(15)]
    logins += [login(23, T0 + 100), login(24, T0 + 400)]
    turns = [turn("c0", T0 + 5, "hello"), turn("c1", T0 + 50, "my invoice"),
             turn("c2", T0 + 150, "is wrong")]  # fmt: skip
    turns += [turn("c1", T0 + 205, "my invoice"), turn("c3", T0 + 210, "any news?"),
              turn("c4", T0 + 260, "thanks")]  # fmt: skip
    stop = T0 + 195.0  # between m19 (T0 + 190) and m20 (T0 + 200), after b7 and c2
    everything = sorted(metrics + logins + turns, key=lambda e: e.ts)
    # b23 is 80 s behind: it arrives in order of arrival, not of event time.
    everything.remove(logins[23])
    everything.insert(everything.index(logins[24]), logins[23])
    before = [e for e in everything if e.ts < stop and e is not logins[23]]
    after = [e for e in everything if e not in before]
    return before, after


class Outputs:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self.late: list[tuple[str, Event]] = []
        self.dups: list[tuple[str, Event]] = []
        self.memory: list[tuple[str, Any]] = []

    def summary(self) -> dict[str, Any]:
        """What the run produced, by id: a resumed run may emit again what the snapshot did
        not cover (at least once), so outputs are merged per id, later runs last."""
        return {
            "alerts": {a.alert_id: a for a in self.alerts},
            "late": sorted({e.event_id for _, e in self.late}),
            "dups": sorted({e.event_id for _, e in self.dups}),
            "memory": {
                r.event.event_id + "@" + str(r.event.ts): [t["text"] for t in r.memory]
                for _, r in self.memory
            },
        }


def build(items: list[Any], clock: Clock, out: Outputs) -> Dataflow:
    flow = Dataflow("downtime")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(items)), lambda e: e.key)
    fresh = dedup("dedup", keyed, DEDUP_TTL_S, 1000, clock)
    detected = detect_anomalies("anomaly", fresh.oks, CFG, clock)
    chats = op.filter("chats", detected.oks, lambda kv: kv[1].kind is Kind.CHAT)
    remembered = remember("memory", chats, MEMORY, clock)
    op.output("alerts", detected.alerts, TestingSink(out.alerts))
    op.output("late", detected.late, TestingSink(out.late))
    op.output("dups", fresh.dups, TestingSink(out.dups))
    op.output("remembered", remembered, TestingSink(out.memory))
    return flow


def merged(*runs: Outputs) -> dict[str, Any]:
    total: dict[str, Any] = {"alerts": {}, "late": set(), "dups": set(), "memory": {}}
    for run in runs:
        s = run.summary()
        total["alerts"].update(s["alerts"])
        total["late"] |= set(s["late"])
        total["dups"] |= set(s["dups"])
        total["memory"].update(s["memory"])
    total["late"], total["dups"] = sorted(total["late"]), sorted(total["dups"])
    return total


@pytest.mark.parametrize(
    "downtime", [pytest.param(0.0, id="0s"), pytest.param(120.0, id="120s"),
                 pytest.param(10 * 3600.0, id="10h")],
)  # fmt: skip
@pytest.mark.parametrize("stop", [TestingSource.ABORT, TestingSource.EOF], ids=["crash", "eof"])
def test_a_restart_after_downtime_gives_the_uninterrupted_outputs(
    tmp_path: Path, stop: type, downtime: float
) -> None:
    """The flow stops after 195 s of event time (snapshot every epoch) and restarts after
    `downtime` of wall time: 120 s is longer than the allowed lateness, 10 h than every idle
    TTL (memory 30 min, dedup 1 h, detectors 6 h). The resumed run counts none of it: the
    replayed readings are not late, so the spike and the burst after the stop are raised;
    the repeated chat turn is still a duplicate; the turns after the stop see the three
    before it. Every output equals the uninterrupted run's."""
    before, after = scenario()

    straight = Outputs()
    run_main(build(before + after, Clock(WALL), straight))
    expected = merged(straight)
    cut = max(e.ts for e in before)
    assert sorted(a.detector for a in expected["alerts"].values() if a.ts > cut) == [
        "event_rate",
        "ewma_zscore",
    ]
    assert expected["late"] == ["b23"] and expected["dups"] == ["c1"]
    assert expected["memory"][f"c3@{T0 + 210}"] == ["hello", "my invoice", "is wrong"]

    rec = tmp_path / "recovery"
    rec.mkdir()
    init_db_dir(rec, 1)
    recovery = RecoveryConfig(str(rec))
    items: list[Any] = [*before, stop(), *after]
    clock = Clock(WALL)
    first = Outputs()
    run_main(build(items, clock, first), epoch_interval=timedelta(0), recovery_config=recovery)
    assert not any(a.ts > cut for a in first.alerts)

    clock.now += downtime
    resumed = Outputs()
    run_main(build(items, clock, resumed), epoch_interval=timedelta(0), recovery_config=recovery)
    assert merged(first, resumed) == expected
