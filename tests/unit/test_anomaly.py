"""Unit tests of `operators.anomaly`: EWMA z-scores, rate windows and the per-entity detector."""

from __future__ import annotations

import math
import pickle
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from config.models import AnomalyConfig
from core.records import Alert, Event, Kind
from operators.anomaly import (
    ClosedWindow,
    EntityDetector,
    EwmaSeries,
    EwmaZScore,
    Flagged,
    Late,
    RateWindows,
)

T0 = 1_700_000_040.0  # a multiple of 60: window starts are round numbers


def cfg(**over: Any) -> AnomalyConfig:
    base: dict[str, Any] = {
        "ewma_alpha": 0.1,
        "z_threshold": 4.0,
        "warmup": 5,
        "suppress_s": 100.0,
        "rate_window_s": 60.0,
        "rate_factor": 5.0,
        "rate_min_count": 10,
        "rate_warmup_windows": 3,
        "allowed_lateness_s": 30.0,
        "detector": "ewma",
    }
    base.update(over)
    return AnomalyConfig(**base)


def metric(ts: float, value: float, eid: str | None = None) -> Event:
    return Event(
        event_id=eid or f"m-{ts}",
        source="events.metrics[0]@1",
        tenant="acme",
        kind=Kind.METRIC,
        entity="web-1.cpu",
        ts=ts,
        payload={"value": value, "unit": None, "tags": {}},
        ingest_ts=ts,
    )


def chat(ts: float, eid: str) -> Event:
    return Event(
        event_id=eid,
        source="events.chat[0]@1",
        tenant="acme",
        kind=Kind.CHAT,
        entity="sess-1",
        ts=ts,
        payload={"text": "hi", "role": "user"},
        ingest_ts=ts,
    )


# --- EwmaZScore -----------------------------------------------------------------------------


def reference_scores(
    values: list[float], alpha: float, threshold: float, warmup: int, suppress_s: float
) -> list[tuple[float, bool, float]]:
    """Textbook EWMA mean/variance; z against the statistics *before* each value.

    Returns (z, alert, |z - threshold|) per value.
    """
    out: list[tuple[float, bool, float]] = []
    mean = var = 0.0
    last_alert = -math.inf
    for i, x in enumerate(values):
        ts = float(i)
        if i == 0:
            mean, var = x, 0.0
            out.append((0.0, False, math.inf))
            continue
        std = math.sqrt(var)
        floor = 1e-3 * max(abs(mean), 1e-9)
        z = abs(x - mean) / max(std, floor)
        alert = i >= warmup and z >= threshold and ts - last_alert >= suppress_s
        if alert:
            last_alert = ts
        out.append((z, alert, abs(z - threshold)))
        d = x - mean
        mean = (1 - alpha) * mean + alpha * x
        var = (1 - alpha) * (var + alpha * d * d)
    return out


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=60,
    ),
    alpha=st.floats(min_value=0.01, max_value=0.9),
    threshold=st.floats(min_value=0.5, max_value=8.0),
    warmup=st.integers(min_value=2, max_value=10),
    suppress_s=st.sampled_from([0.0, 3.0, 10.0]),
)
def test_ewma_matches_reference(
    values: list[float], alpha: float, threshold: float, warmup: int, suppress_s: float
) -> None:
    det = EwmaZScore(alpha, threshold, warmup, suppress_s)
    ref = reference_scores(values, alpha, threshold, warmup, suppress_s)
    for i, (x, (z_ref, alert_ref, margin)) in enumerate(zip(values, ref, strict=True)):
        z, alert = det.update(x, float(i))
        assert math.isfinite(z)
        assert math.isclose(z, z_ref, rel_tol=1e-6, abs_tol=1e-6), (i, z, z_ref)
        if margin <= 1e-6 * threshold:
            break  # a rounding difference could flip this alert; stop comparing here
        assert alert == alert_ref, i


def test_no_alert_during_warmup() -> None:
    det = EwmaZScore(alpha=0.1, threshold=3.0, warmup=5, suppress_s=0)
    det.update(10.0, 0)
    for i in range(1, 5):
        z, alert = det.update(10.0 + (1000.0 if i == 4 else 0.1 * (i % 2)), float(i))
        assert not alert, i
    assert z > 3.0  # the spike at n=4 scored high, but warm-up is 5 readings


def test_alert_on_spike_after_warmup() -> None:
    det = EwmaZScore(alpha=0.1, threshold=4.0, warmup=5, suppress_s=0)
    for i in range(20):
        _, alert = det.update(10.0 + (0.5 if i % 2 else -0.5), float(i))
        assert not alert
    z, alert = det.update(30.0, 20.0)
    assert alert
    assert z >= 4.0
    assert det.last_alert_ts == 20.0


def test_suppression_window_is_event_time() -> None:
    det = EwmaZScore(alpha=0.01, threshold=4.0, warmup=5, suppress_s=100.0)
    for i in range(20):
        det.update(10.0 + (0.5 if i % 2 else -0.5), float(i))
    assert det.update(1000.0, 1000.0)[1]
    # Within 100 s of event time: suppressed, though the score is high.
    z, alert = det.update(5000.0, 1099.0)
    assert z >= 4.0
    assert not alert
    # 100 s after the last alert in event time: alerts again.
    z, alert = det.update(50_000.0, 1100.0)
    assert z >= 4.0
    assert alert


def test_flat_series_stays_finite() -> None:
    for level in (0.0, 5.0, -3.0, 1e-12):
        det = EwmaZScore(alpha=0.2, threshold=4.0, warmup=3, suppress_s=0)
        for i in range(50):
            z, alert = det.update(level, float(i))
            assert z == 0.0
            assert not alert
        assert det.var == 0.0
        assert det.mean == level
        z, alert = det.update(level + 1.0, 50.0)
        assert math.isfinite(z)
        assert alert
        assert all(math.isfinite(v) for v in det.state()[:3])


def test_ewma_state_round_trip() -> None:
    a = EwmaZScore(alpha=0.1, threshold=3.0, warmup=3, suppress_s=0)
    for i, x in enumerate([1.0, 2.0, 3.0, 2.5, 1.5]):
        a.update(x, float(i))
    b = EwmaZScore(alpha=0.1, threshold=3.0, warmup=3, suppress_s=0, state=a.state())
    assert b.state() == a.state()
    assert a.update(9.0, 10.0) == b.update(9.0, 10.0)


# --- RateWindows ----------------------------------------------------------------------------


def fill(rw: RateWindows, start: float, count: int, now: float, prefix: str = "e") -> None:
    for i in range(count):
        assert rw.add(start + 1 + i * 0.1, f"{prefix}{start}-{i}", now)


def test_window_closes_when_watermark_passes_its_end() -> None:
    rw = RateWindows(cfg())
    fill(rw, T0, 3, now=0.0)
    assert rw.close_due(0.0) == []
    # Newest event at T0+89: watermark T0+59 < end T0+60, still open.
    assert rw.add(T0 + 89, "x", now=0.0)
    assert rw.close_due(0.0) == []
    assert rw.add(T0 + 90, "y", now=0.0)
    closed = rw.close_due(0.0)
    assert [(w.start, w.end, w.count) for w in closed] == [(T0, T0 + 60, 3)]
    assert closed[0].event_ids == tuple(f"e{T0}-{i}" for i in range(3))
    assert not closed[0].alert
    assert rw.last_end == T0 + 60


def test_burst_alerts_only_after_warmup_windows() -> None:
    rw = RateWindows(cfg(rate_warmup_windows=3, rate_min_count=10, rate_factor=5.0))
    # A burst in the very first window is not an alert: there is no baseline yet.
    fill(rw, T0, 30, now=0.0)
    for k in range(1, 4):
        fill(rw, T0 + 60 * k, 2, now=0.0)
    rw.add(T0 + 60 * 4 + 31, "push", now=0.0)  # watermark T0+241: closes the four windows
    closed = rw.close_due(0.0)
    assert [w.count for w in closed] == [30, 2, 2, 2]
    assert not any(w.alert and not w.drop for w in closed)  # no burst (the fall is a drop)

    rw2 = RateWindows(cfg(rate_warmup_windows=3, rate_min_count=10, rate_factor=5.0))
    for k in range(3):
        fill(rw2, T0 + 60 * k, 2, now=0.0)
    fill(rw2, T0 + 180, 12, now=0.0)
    rw2.add(T0 + 240 + 31, "push", now=0.0)
    closed = rw2.close_due(0.0)
    assert [w.count for w in closed] == [2, 2, 2, 12]
    assert [w.alert for w in closed] == [False, False, False, True]
    assert closed[-1].baseline == 2.0


def test_burst_below_min_count_is_not_an_alert() -> None:
    rw = RateWindows(cfg(rate_min_count=20))
    for k in range(3):
        fill(rw, T0 + 60 * k, 1, now=0.0)
    fill(rw, T0 + 180, 15, now=0.0)  # 15x the baseline, but under rate_min_count
    rw.add(T0 + 271, "push", now=0.0)
    closed = rw.close_due(0.0)
    assert [w.count for w in closed] == [1, 1, 1, 15]
    assert not any(w.alert for w in closed)


def test_gaps_count_as_zero_windows() -> None:
    rw = RateWindows(cfg())
    fill(rw, T0, 10, now=0.0)
    rw.add(T0 + 91, "push", now=0.0)
    [first] = rw.close_due(0.0)
    assert first.count == 10
    assert rw.baseline == 10.0
    assert rw.closed == 1
    # Next events ten windows later: nine silent windows in between (one is the "push"
    # window [T0+60, T0+120), which holds one event and is closed normally).
    fill(rw, T0 + 600, 12, now=0.0, prefix="b")
    rw.add(T0 + 691, "push2", now=0.0)
    closed = rw.close_due(0.0)
    assert [w.start for w in closed] == [T0 + 60, T0 + 600]
    # [T0+60) closes with baseline 10 -> 10 + 0.3 * (1 - 10) = 7.3; then 8 silent windows
    # decay it by 0.7 each before the burst window is scored.
    expected = 7.3 * 0.7**8
    assert math.isclose(closed[1].baseline, expected, rel_tol=1e-9)
    assert rw.closed == 1 + 1 + 8 + 1
    assert closed[1].alert  # 12 >= 5 * max(0.42, 1) and >= min_count, warm-up passed


def test_late_events_are_refused() -> None:
    rw = RateWindows(cfg(allowed_lateness_s=30.0))
    assert rw.add(T0 + 100, "a", now=0.0)  # watermark T0+70
    # Window [T0, T0+60) ends before the watermark: late, not counted.
    assert not rw.add(T0 + 10, "late", now=0.0)
    # Within the allowed lateness: window [T0+60, T0+120) is still open.
    assert rw.add(T0 + 75, "ok", now=0.0)
    assert rw.open == {T0 + 60: [2, "a", "ok"]}
    rw.add(T0 + 200, "b", now=0.0)
    rw.close_due(0.0)
    # A window that already closed stays closed, even for an event after the watermark.
    assert not rw.add(T0 + 119, "late2", now=0.0)


def test_watermark_advances_with_wall_time_while_idle() -> None:
    rw = RateWindows(cfg(allowed_lateness_s=30.0))
    rw.add(T0 + 40, "a", now=5000.0)  # watermark T0+10 at wall 5000
    assert rw.watermark(5000.0) == T0 + 10
    assert rw.next_close_wall() == 5050.0
    assert rw.close_due(5049.0) == []
    closed = rw.close_due(5050.0)
    assert [(w.start, w.count) for w in closed] == [(T0, 1)]
    assert rw.next_close_wall() is None
    # A wall clock going backwards never moves the watermark back.
    assert rw.watermark(4000.0) == T0 + 10


def test_rate_state_round_trip_is_a_copy() -> None:
    rw = RateWindows(cfg())
    fill(rw, T0, 3, now=10.0)
    state = rw.state()
    rw.add(T0 + 5, "more", now=11.0)
    assert state["open"] == {T0: (3, f"e{T0}-0", f"e{T0}-1", f"e{T0}-2")}
    again = RateWindows(cfg(), pickle.loads(pickle.dumps(state)))
    assert again.add(T0 + 6, "x", now=12.0)
    assert again.open[T0][0] == 4
    assert again.wall_at_max == 12.0
    assert state["max_ts"] == T0 + 1.2


def warm_then(rw: RateWindows, last: int, per_window: int = 2) -> list[ClosedWindow]:
    """Three warm-up windows of `per_window` events, then `last` events in window 4; closes
    what the watermark has passed and returns it."""
    for k in range(3):
        fill(rw, T0 + 60 * k, per_window, now=0.0)
    fill(rw, T0 + 180, last, now=0.0, prefix="last")
    return rw.close_due(0.0)


def test_burst_in_the_last_window_is_reported_at_the_end_of_input() -> None:
    """The input ends inside a burst: the watermark never passes its end, so only the end of
    input (`report_open`) can report it; the window stays open and counts on."""
    rw = RateWindows(cfg(rate_min_count=10, rate_factor=5.0))
    due = warm_then(rw, last=12)
    assert [w.count for w in due] == [2, 2]  # the burst window and the one before are open
    reported = rw.report_open()
    assert [(w.start, w.count, w.alert, w.drop) for w in reported] == [
        (T0 + 120, 2, False, False),
        (T0 + 180, 12, True, False),
    ]
    assert reported[1].baseline == 2.0 and reported[1].event_ids[0] == f"last{T0 + 180}-0"
    assert sorted(rw.open) == [T0 + 120, T0 + 180] and rw.last_end == T0 + 120
    assert rw.baseline == 2.0 and rw.closed == 2  # nothing closed for real
    # A second end of input (a re-run on the same state) reports nothing new.
    assert [w.alert for w in rw.report_open()] == [False, False]


def test_a_restart_continues_the_reported_window_without_a_second_alert() -> None:
    """A graceful stop ends the input mid-burst; after the restart the rest of the burst is
    counted (not late), and the real close updates the baseline but raises no second alert."""
    rw = RateWindows(cfg(rate_min_count=10, rate_factor=5.0))
    warm_then(rw, last=12)
    assert [w.alert for w in rw.report_open()] == [False, True]
    resumed = RateWindows(cfg(rate_min_count=10, rate_factor=5.0), rw.state())
    assert resumed.reported == {T0 + 180}
    for i in range(8):
        assert resumed.add(T0 + 230 + i, f"after-{i}", now=0.0)  # same window: not late
    resumed.add(T0 + 271, "push", now=0.0)
    closed = resumed.close_due(0.0)
    assert [(w.start, w.count, w.alert) for w in closed] == [
        (T0 + 120, 2, False),
        (T0 + 180, 20, False),
    ]
    assert resumed.reported == frozenset() and "reported" not in resumed.state()
    assert resumed.baseline == 2.0 + 0.3 * (20 - 2.0)


def test_a_window_not_alerting_at_the_end_of_input_can_alert_at_its_real_close() -> None:
    rw = RateWindows(cfg(rate_min_count=10, rate_factor=5.0))
    warm_then(rw, last=4)
    assert not any(w.alert for w in rw.report_open())
    fill(rw, T0 + 200, 8, now=0.0, prefix="more")  # the burst builds up after a restart
    rw.add(T0 + 271, "push", now=0.0)
    assert [w.alert for w in rw.close_due(0.0)] == [False, True]


def test_the_window_cut_short_by_the_end_of_input_is_never_a_drop() -> None:
    """Baseline 30 per window: a last window holding 2 events when the input ends is cut
    short, not a drop; a complete window (the entity's newest event is past its end) with 2
    events is one."""
    c = cfg(rate_min_count=10, rate_factor=5.0, allowed_lateness_s=1000.0)
    rw = RateWindows(c)
    warm_then(rw, last=2, per_window=30)
    assert not any(w.alert for w in rw.report_open())

    rw2 = RateWindows(c)
    warm_then(rw2, last=2, per_window=30)
    assert rw2.add(T0 + 241, "next window", now=0.0)
    reported = rw2.report_open()
    assert [(w.start, w.alert, w.drop) for w in reported][-2:] == [
        (T0 + 180, True, True),
        (T0 + 240, False, False),
    ]


def test_reported_windows_survive_a_snapshot() -> None:
    rw = RateWindows(cfg(rate_min_count=10, rate_factor=5.0))
    assert "reported" not in rw.state()  # the common case costs the snapshot nothing
    warm_then(rw, last=12)
    rw.report_open()
    state = pickle.loads(pickle.dumps(rw.state()))
    assert state["reported"] == (T0 + 180,)
    assert [w.alert for w in RateWindows(cfg(), state).report_open()] == [False, False]
    assert sorted(state["open"]) == [T0 + 120, T0 + 180]


# --- EntityDetector -------------------------------------------------------------------------


EVENT, ALERT, LATE = "event", "alert", "late"


def tag(f: Flagged) -> str:
    if isinstance(f, Late):
        return LATE
    if isinstance(f, Alert):
        return ALERT
    assert isinstance(f, Event), f
    return EVENT


def tags(out: list[Flagged]) -> list[tuple[str, str]]:
    """(kind of output, event id or alert detector) per output of the detector."""
    labels = []
    for f in out:
        if isinstance(f, Alert):
            labels.append((ALERT, f.detector))
        elif isinstance(f, Late):
            labels.append((LATE, f.event.event_id))
        else:
            labels.append((tag(f), f.event_id))
    return labels


def test_process_tags_late_events() -> None:
    det = EntityDetector(cfg())
    out = det.process([chat(T0 + 100, "a"), chat(T0 + 5, "late"), chat(T0 + 95, "b")], now=1.0)
    assert tags(out) == [(EVENT, "a"), (LATE, "late"), (EVENT, "b")]
    late = out[1]
    assert isinstance(late, Late)
    assert late.event.ts == T0 + 5


def test_process_emits_metric_alert_with_evidence() -> None:
    """`change_hold_points` 0: the alert goes out on its own reading."""
    det = EntityDetector(cfg(warmup=5, z_threshold=4.0, change_hold_points=0))
    events = [metric(T0 + i, 10.0 + (0.5 if i % 2 else -0.5)) for i in range(10)]
    assert [tag(f) for f in det.process(events, now=1.0)] == [EVENT] * 10
    out = det.process([metric(T0 + 10, 50.0, eid="spike")], now=2.0)
    assert [tag(f) for f in out] == [EVENT, ALERT]
    alert = out[1]
    assert isinstance(alert, Alert)
    assert alert.detector == "ewma_zscore"
    assert alert.event_ids == ("spike",)
    assert alert.value == 50.0
    assert alert.tenant == "acme"
    assert alert.entity == "web-1.cpu"
    assert alert.score >= 4.0
    assert alert.window["n"] == 10
    assert alert.alert_id.startswith("a-")


def test_process_emits_rate_alert_when_window_closes() -> None:
    det = EntityDetector(cfg(rate_min_count=10, rate_warmup_windows=3))
    for k in range(3):
        det.process([chat(T0 + 60 * k + 1 + i, f"w{k}-{i}") for i in range(2)], now=1.0)
    det.process([chat(T0 + 181 + i * 0.5, f"burst-{i}") for i in range(15)], now=1.0)
    out = det.process([chat(T0 + 271, "push")], now=1.0)
    alerts = [f for f in out if tag(f) == ALERT]
    assert len(alerts) == 1
    alert = alerts[0]
    assert isinstance(alert, Alert)
    assert alert.detector == "event_rate"
    assert alert.value == 15.0
    assert alert.window == {"start": T0 + 180, "end": T0 + 240, "size_s": 60.0, "kind": "burst"}
    assert len(alert.event_ids) == 10  # evidence is bounded
    assert alert.event_ids[0] == "burst-0"


def test_flush_raises_the_burst_of_a_window_open_at_the_end_of_input() -> None:
    det = EntityDetector(cfg(rate_min_count=10, rate_warmup_windows=3))
    for k in range(3):
        det.process([chat(T0 + 60 * k + 1 + i, f"w{k}-{i}") for i in range(2)], now=1.0)
    out = det.process([chat(T0 + 181 + i * 0.5, f"burst-{i}") for i in range(15)], now=1.0)
    assert [f for f in out if tag(f) == ALERT] == []
    [alert] = det.flush(now=1.0)
    assert (alert.detector, alert.value, alert.ts) == ("event_rate", 15.0, T0 + 240)
    assert alert.window["kind"] == "burst"
    assert det.flush(now=1.0) == []  # reported once


def test_tick_closes_windows_on_wall_time_alone() -> None:
    det = EntityDetector(cfg(rate_min_count=1, rate_warmup_windows=1, rate_factor=2.0))
    det.process([chat(T0 + 1, "a")], now=100.0)
    det.process([chat(T0 + 61 + i * 0.1, f"b{i}") for i in range(5)], now=100.0)
    assert det.tick(100.0) == []
    assert det.tick(188.0) == []
    # Newest event T0+61.4 at wall 100: watermark reaches T0+120 at wall 100 + 88.6.
    alerts = det.tick(189.0)
    assert [a.detector for a in alerts] == ["event_rate"]
    assert alerts[0].window["start"] == T0 + 60


def test_detector_state_round_trip_continues_statistics() -> None:
    c = cfg(warmup=5)
    live = EntityDetector(c)
    first = [metric(T0 + i, 10.0 + (i % 3)) for i in range(12)]
    live.process(first, now=50.0)
    state = pickle.loads(pickle.dumps(live.state()))

    resumed = EntityDetector(c, state)
    assert isinstance(resumed.series, EwmaSeries)
    assert isinstance(live.series, EwmaSeries)
    assert resumed.series.ewma.n == 12
    assert resumed.series.ewma.mean == live.series.ewma.mean
    assert resumed.rate.baseline == live.rate.baseline
    assert resumed.rate.open == live.rate.open
    assert (resumed.tenant, resumed.entity) == ("acme", "web-1.cpu")
    assert resumed.expires_at() == live.expires_at()

    more = [metric(T0 + 12 + i, 10.0 + (i % 3)) for i in range(3)] + [metric(T0 + 15, 80.0)]
    # Readings back to normal after the spike release its alert (held to name its change).
    more += [metric(T0 + 16 + i, 10.0 + (i % 3)) for i in range(c.change_hold_points)]
    out_live = live.process(more, now=60.0)
    out_resumed = resumed.process(more, now=60.0)
    assert out_resumed == out_live
    # The spike alerts only because the resumed detector kept its warm-up: a detector
    # rebuilt from zero would still be warming up.
    assert any(tag(f) == ALERT for f in out_resumed)
    fresh = EntityDetector(c)
    assert [tag(f) for f in fresh.process(more, now=60.0)] == [EVENT] * len(more)
    assert resumed.state() == live.state()


def test_detector_state_is_immutable_copy() -> None:
    det = EntityDetector(cfg())
    det.process([chat(T0 + 1, "a")], now=1.0)
    state = det.state()
    det.process([chat(T0 + 2, "b"), metric(T0 + 3, 1.0)], now=2.0)
    assert state["rate"]["open"] == {T0: (1, "a")}
    assert state["series"] == ("ewma", ((0, 0.0, 0.0, -math.inf), (), 0.0))
    assert state["last_wall"] == 1.0


def test_expires_at_follows_last_wall_time() -> None:
    det = EntityDetector(cfg(idle_ttl_s=600.0))
    det.process([chat(T0, "a")], now=1000.0)
    assert det.expires_at() == 1600.0
