"""`detect_anomalies` with the detector ensemble: TestingSource -> operator -> TestingSink,
and a restart on a recovery directory that resumes the detectors' statistics."""

from __future__ import annotations

import math
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from config.models import AnomalyConfig
from core.records import Event, Kind
from operators.anomaly import detect_anomalies
from support.rates import events as rate_events
from support.rates import rate_scenario, window_start

T0 = 1_700_000_000.0 - (1_700_000_000.0 % 86_400)
DAY = 288  # five-minute readings
SPIKE = DAY * 3 + 30
CFG = AnomalyConfig(
    detector="ensemble", min_points=2 * DAY, rank_window=600, allowed_lateness_s=1e9
)


def value(entity: str, i: int) -> float:
    rnd = random.Random(f"{entity}-{i}")
    base = 50.0 + 20.0 * math.sin(2 * math.pi * (i % DAY) / DAY) + rnd.gauss(0, 0.05)
    return 160.0 if (entity == "s1" and i == SPIKE) else base


def metric(entity: str, i: int) -> Event:
    return Event(
        event_id=f"{entity}-{i}",
        source=f"t[0]@{i}",
        tenant="acme",
        kind=Kind.METRIC,
        entity=entity,
        ts=T0 + 300.0 * i,
        payload={"value": value(entity, i), "unit": None, "tags": {}},
        ingest_ts=0.0,
    )


def events(start: int, stop: int) -> list[Event]:
    return [metric(e, i) for i in range(start, stop) for e in ("s1", "s2")]


def build(items: list[Any], oks: list[Any], alerts: list[Any]) -> Dataflow:
    flow = Dataflow("anomaly_ensemble")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(items)), lambda e: e.key)
    out = detect_anomalies("anomaly", keyed, CFG, clock=lambda: 0.0)
    op.output("oks", out.oks, TestingSink(oks))
    op.output("alerts", out.alerts, TestingSink(alerts))
    return flow


@pytest.mark.parametrize("runner", ["run_main", "cluster_main"])
def test_ensemble_alerts_once_with_evidence(runner: str) -> None:
    oks: list[Any] = []
    alerts: list[Any] = []
    flow = build(events(0, SPIKE + 60), oks, alerts)
    if runner == "run_main":
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert len(oks) == 2 * (SPIKE + 60)
    [alert] = alerts
    assert (alert.entity, alert.value, alert.event_ids) == ("s1", 160.0, (f"s1-{SPIKE}",))
    assert alert.detector.startswith("ensemble/")
    assert alert.score >= CFG.alert_threshold and alert.threshold == CFG.alert_threshold
    assert alert.window["recent"][-1] == 160.0
    assert abs(alert.baseline - value("s1", SPIKE - DAY)) < 5.0


def test_detector_state_survives_a_restart(tmp_path: Path) -> None:
    """The flow dies after 3 days of readings (the snapshot holds the detectors' statistics);
    resumed on the same recovery directory, it raises exactly the alerts an uninterrupted run
    raises after that point, the spike's among them. Started from zero instead, the detectors
    would still be learning (min_points = 2 days) at the spike and raise nothing."""
    before = events(0, DAY * 3)
    after = events(DAY * 3, SPIKE + 20)
    cut = after[0].ts

    straight: list[Any] = []
    run_main(build(before + after, [], straight))
    assert [a.value for a in straight if a.ts >= cut] == [160.0]

    rec = tmp_path / "recovery"
    rec.mkdir()
    init_db_dir(rec, 1)
    recovery = RecoveryConfig(str(rec))
    items: list[Any] = [*before, TestingSource.ABORT(), *after]
    first: list[Any] = []
    run_main(build(items, [], first), epoch_interval=timedelta(seconds=0), recovery_config=recovery)
    assert first == [a for a in straight if a.ts < cut]
    resumed: list[Any] = []
    run_main(
        build(items, [], resumed), epoch_interval=timedelta(seconds=0), recovery_config=recovery
    )
    assert resumed == [a for a in straight if a.ts >= cut]

    cold: list[Any] = []
    run_main(build(after, [], cold))
    assert cold == []


# --- the end of a finite input ---------------------------------------------------------------

RATE_CFG = AnomalyConfig(detector="ewma", rate_min_count=10, rate_factor=5.0)
W0 = T0 + 600.0  # a window start (T0 is a multiple of the 60 s window)


def business(i: int, ts: float) -> Event:
    return Event(
        event_id=f"b-{i}",
        source=f"t[0]@{i}",
        tenant="acme",
        kind=Kind.BUSINESS,
        entity="acct-1",
        ts=ts,
        payload={"event_type": "login", "amount": None, "currency": None, "attributes": {}},
        ingest_ts=0.0,
    )


def burst_at_the_end(more: int = 0) -> list[Event]:
    """Three quiet windows (2 events each), then 15 events in the last window; `more` adds
    events to that same window and one event two windows later that closes it."""
    quiet = [W0 + 60 * k + 1 + i for k in range(3) for i in range(2)]
    burst = [W0 + 181 + i for i in range(15)]
    after = [W0 + 200 + i for i in range(more)] + ([W0 + 300] if more else [])
    return [business(i, ts) for i, ts in enumerate(quiet + burst + after)]


def build_rate(items: list[Any], oks: list[Any], alerts: list[Any], late: list[Any]) -> Dataflow:
    flow = Dataflow("anomaly_eof")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(items)), lambda e: e.key)
    out = detect_anomalies("anomaly", keyed, RATE_CFG, clock=lambda: 0.0)
    op.output("oks", out.oks, TestingSink(oks))
    op.output("alerts", out.alerts, TestingSink(alerts))
    op.output("late", out.late, TestingSink(late))
    return flow


@pytest.mark.parametrize("runner", ["run_main", "cluster_main"])
def test_burst_in_the_last_window_is_an_alert_at_the_end_of_input(runner: str) -> None:
    """No event (and, on this frozen clock, no wall time) ever passes the last window's end:
    the burst in it is raised when the input ends."""
    oks: list[Any] = []
    alerts: list[Any] = []
    flow = build_rate(burst_at_the_end(), oks, alerts, [])
    if runner == "run_main":
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert len(oks) == 3 * 2 + 15
    [alert] = alerts
    assert (alert.detector, alert.entity, alert.value) == ("event_rate", "acct-1", 15.0)
    assert alert.window == {"start": W0 + 180, "end": W0 + 240, "size_s": 60.0, "kind": "burst"}


def test_a_graceful_stop_mid_burst_neither_loses_the_window_nor_repeats_the_alert(
    tmp_path: Path,
) -> None:
    """The input ends (a graceful stop: `TestingSource.EOF`) inside the burst window; the
    alert goes out then. The restart continues the same window: the rest of the burst is
    counted, not late, and its real close raises no second alert."""
    rec = tmp_path / "recovery"
    rec.mkdir()
    init_db_dir(rec, 1)
    recovery = RecoveryConfig(str(rec))
    events = burst_at_the_end(more=5)
    cut = 3 * 2 + 15
    items: list[Any] = [*events[:cut], TestingSource.EOF(), *events[cut:]]

    first: list[Any] = []
    flow = build_rate(items, [], first, [])
    run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)
    assert [a.value for a in first] == [15.0]

    oks: list[Any] = []
    again: list[Any] = []
    late: list[Any] = []
    flow = build_rate(items, oks, again, late)
    run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)
    assert (len(oks), late, again) == (5 + 1, [], [])


def test_a_busy_entity_s_rate_series_raises_its_burst_and_drop_in_the_flow() -> None:
    """A busy entity's event rate (`support.rates`: 30 +- 15 a window over a four-hour season,
    then a 3x burst and a 0.3x drop) through the operator, the clock following the events:
    the burst and the drop come from the rate series (`ensemble/event_rate/...`), at their
    first windows, with no event late."""
    s = rate_scenario(0, period_s=4 * 3600.0)
    evs = rate_events(s)
    now = [evs[0].ts]

    def follow(e: Event) -> Event:
        now[0] = e.ts
        return e

    cfg = AnomalyConfig(season_period_s=4 * 3600.0, season_slots=48, rank_window=1000)
    flow = Dataflow("anomaly_rate_series")
    src = op.map("clock", op.input("in", flow, TestingSource(evs, batch_size=1)), follow)
    out = detect_anomalies(
        "anomaly", op.key_on("key", src, lambda e: e.key), cfg, clock=lambda: now[0]
    )
    alerts: list[Any] = []
    late: list[Any] = []
    op.output("alerts", out.alerts, TestingSink(alerts))
    op.output("late", out.late, TestingSink(late))
    run_main(flow)
    assert late == []
    found = {
        (round((a.window["start"] - window_start(s, 0)) / 60), a.window["kind"])
        for a in alerts
        if a.detector.startswith("ensemble/event_rate/")
    }
    assert {(s.burst_at, "burst"), (s.drop_at, "drop")} <= found
