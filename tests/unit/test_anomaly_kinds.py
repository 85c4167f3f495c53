"""`operators.anomaly.kinds`: the kind of a change from the residuals around the alerting
reading, and the tracker that holds each metric alert of `EntityDetector` until it can be
named. Spikes and level shifts are named reliably, trends and variance changes mostly;
seasonal changes are told from level shifts only where the profile moves within the readings
held (`bench.nab --synthetic`, figures in operators/anomaly/NAB.md). The tests below check
the statistics that tell them apart on plain constructed series."""

from __future__ import annotations

import math
import pickle
import random

from config.models import AnomalyConfig
from core.records import Alert, Event, Kind
from operators.anomaly import EntityDetector
from operators.anomaly.kinds import ChangeTracker, _hinge_fit, _prefix, _step_fit, classify
from support.changes import changed_series

CHANGE = 500


def _noise(seed: int) -> list[float]:
    rnd = random.Random(seed)
    return [rnd.gauss(0.0, 1.0) for _ in range(CHANGE + 20)]


def test_a_single_outlier_is_a_spike() -> None:
    for seed in range(5):
        values = _noise(seed)[: CHANGE + 4]
        values[CHANGE] += 12.0
        change = classify(values, [0.0] * len(values), CHANGE)
        assert change.to_json()["kind"] == "spike"


def test_a_sustained_step_is_a_level_shift() -> None:
    for seed in range(5):
        values = [v + (8.0 if i >= CHANGE else 0.0) for i, v in enumerate(_noise(seed))]
        at = CHANGE + 8
        ev = classify(values[: at + 1], [0.0] * (at + 1), at).to_json()
        assert ev["kind"] == "level_shift"
        assert 6.0 < ev["after_level"] - ev["before_level"] < 10.0


def test_generated_series_carry_their_change_point() -> None:
    clean = changed_series(None, 1)
    assert clean.change_at is None and len(clean.ts) == len(clean.values)
    shifted = changed_series("level_shift", 1)
    assert shifted.change_at is not None and 0 < shifted.change_at < len(shifted.values)


# --- wired into the per-entity detector ------------------------------------------------------

CFG = AnomalyConfig(detector="ensemble", allowed_lateness_s=1e12)


def _metric_events(kind: str | None, seed: int) -> tuple[list[Event], int | None]:
    s = changed_series(kind, seed)
    events = [
        Event(
            f"m{i}",
            f"t[0]@{i}",
            "acme",
            Kind.METRIC,
            "cpu",
            t,
            {"value": v, "unit": None, "tags": {}},
            t,
        )
        for i, (t, v) in enumerate(zip(s.ts, s.values, strict=True))
    ]
    return events, s.change_at


def _run(det: EntityDetector, events: list[Event]) -> list[tuple[int, Alert]]:
    """(reading index at emission, alert) of every alert `events` gave."""
    out = []
    for i, e in enumerate(events):
        out += [(i, f) for f in det.process([e], now=e.ts) if isinstance(f, Alert)]
    return out


def test_alerts_carry_their_kind_after_the_readings_that_name_it() -> None:
    """A level shift: the alert on the first shifted reading goes out up to
    `change_hold_points` readings later (sooner if the detector's baseline has already
    caught up), named; alerts raised meanwhile are the same change and carry it."""
    events, c = _metric_events("level_shift", 3)
    assert c is not None
    alerts = [(i, a) for i, a in _run(EntityDetector(CFG), events) if a.ts >= events[c].ts]
    first_at, first = alerts[0]
    assert first.ts == events[c].ts and c + 3 <= first_at <= c + CFG.change_hold_points
    assert first.change is not None and first.change["kind"] == "level_shift"
    same = [a for i, a in alerts if i == first_at]
    assert len(same) >= 1 and all(a.change == first.change for a in same)


def test_a_spike_goes_out_once_the_series_is_back() -> None:
    events, c = _metric_events("spike", 1)
    assert c is not None
    [(at, alert)] = [(i, a) for i, a in _run(EntityDetector(CFG), events) if a.ts == events[c].ts]
    # Out once the last three readings are each within two reference spreads of the level
    # before: here the fifth after it (one of the first three was 2-3 spreads out).
    assert c + 3 <= at < c + CFG.change_hold_points
    assert alert.change is not None and alert.change["kind"] == "spike"


def test_a_held_alert_survives_a_restart() -> None:
    """Snapshot (pickled) two readings after a level shift's alert, resumed: the same alerts,
    named the same, at the same readings as without the restart."""
    events, c = _metric_events("level_shift", 5)
    assert c is not None
    straight = _run(EntityDetector(CFG), events)
    live = EntityDetector(CFG)
    before = _run(live, events[: c + 3])
    snap = pickle.loads(pickle.dumps(live.state()))
    assert snap["change"][3] is not None  # an alert is held in the snapshot
    resumed = EntityDetector(CFG, snap, now=events[c + 2].ts)
    after = [(i + c + 3, a) for i, a in _run(resumed, events[c + 3 :])]
    assert before + after == straight


def test_a_series_that_stops_reporting_releases_its_alert() -> None:
    events, c = _metric_events("level_shift", 2)
    assert c is not None
    det = EntityDetector(CFG)
    assert not [a for _, a in _run(det, events[: c + 1]) if a.ts >= events[c].ts]
    last = events[c].ts
    assert det.release_at() == last + CFG.change_hold_s
    assert det.tick(last + CFG.change_hold_s - 1) == []
    [alert] = det.tick(last + CFG.change_hold_s)
    assert alert.ts == last and alert.change is not None  # named from what there was
    assert det.release_at() is None


# --- the statistics that tell trends, variance and seasonal changes apart --------------------


def test_a_drift_is_a_trend_and_its_start_is_found() -> None:
    """A ramp of 0.1 sd a reading from `CHANGE - 30`, alerted late (as the detector does):
    the hinge fits it as well as a step does, so it is gradual, and it began before the
    alert."""
    for seed in range(5):
        values = [v + max(0.0, 0.1 * (i - CHANGE + 31)) for i, v in enumerate(_noise(seed))]
        at = CHANGE + 8
        ev = classify(values, [0.0] * len(values), at).to_json()
        assert ev["kind"] == "trend"
        assert ev["ramp_gain"] > -8.0 and ev["change_at"] < -20
        assert 0.05 < ev["slope"] < 0.15


def test_a_step_is_not_a_trend() -> None:
    """A step of 8 sd: the step beats the ramp by far (a large negative `ramp_gain`), and
    the readings after it are flat (no significant slope)."""
    for seed in range(5):
        values = [v + (8.0 if i >= CHANGE else 0.0) for i, v in enumerate(_noise(seed))]
        at = CHANGE + 12
        ev = classify(values[: at + 1], [0.0] * (at + 1), CHANGE).to_json()
        assert ev["kind"] == "level_shift" and ev["ramp_gain"] < -8.0
        assert abs(ev["post_slope_t"]) < 2.5


def test_wider_scatter_after_the_alert_is_variance_not_a_spike() -> None:
    """The noise five times larger from the alert on: the alert reading is far out but the
    readings after it are not back (their median distance is large): variance."""
    for seed in range(5):
        values = _noise(seed)[:CHANGE]
        values += [5.0 * (-1) ** k * (0.5 + 0.5 * (k % 3)) for k in range(13)]
        values[CHANGE] = 9.0  # the reading that alerted
        ev = classify(values, [0.0] * len(values), CHANGE).to_json()
        assert ev["kind"] == "variance" and ev["variance_ratio"] >= 2.5


def test_a_spike_followed_by_a_slow_drift_is_not_a_spike() -> None:
    """Readings after the alert that stay 3 sd out (each below the far line): not back."""
    values = _noise(1)[: CHANGE + 13]
    values[CHANGE] += 4.0
    for i in range(CHANGE + 1, CHANGE + 13):
        values[i] += 3.0
    ev = classify(values, [0.0] * len(values), CHANGE).to_json()
    assert ev["kind"] != "spike"


def _profile(t: float) -> float:
    return 10.0 * math.sin(2 * math.pi * t / 86_400.0)


def test_a_step_that_then_moves_with_the_profile_is_seasonal() -> None:
    """Five-minute readings of a daily sine; from the change its amplitude is tripled where
    the profile is steep: the residual jumps and keeps moving (a significant slope after the
    step), so the change is seasonal, the profile's gain found."""
    c = 600  # two days and two hours in: the sine at half its amplitude, rising
    ts = [i * 300.0 for i in range(c + 13)]
    base = [_profile(t) for t in ts]
    rnd = random.Random(3)
    values = [(3.0 if i >= c else 1.0) * b + rnd.gauss(0.0, 1.0) for i, b in enumerate(base)]
    ev = classify(values, base, c, ts, _profile).to_json()
    assert ev["kind"] == "seasonality" and abs(ev["post_slope_t"]) >= 2.5
    assert 2.5 < ev["profile_gain"] < 3.5
    # The same step, flat after it: a level shift.
    flat = [b + (6.0 if i >= c else 0.0) + rnd.gauss(0.0, 1.0) for i, b in enumerate(base)]
    assert classify(flat, base, c, ts, _profile).to_json()["kind"] == "level_shift"


def test_the_fits_from_running_sums_are_the_direct_least_squares() -> None:
    """`_step_fit` and `_hinge_fit` (O(m), from running sums) against the fits computed
    directly, split by split: the same best split and start, the same errors and slope."""

    def sse(xs: list[float]) -> float:
        mu = sum(xs) / len(xs)
        return sum((x - mu) ** 2 for x in xs)

    rnd = random.Random(11)
    for trial in range(20):
        m = 20 + trial * 5
        z = [
            rnd.gauss(0.0, 1.0) + (0.2 * max(0, i - m // 2) if trial % 2 else 0.0) for i in range(m)
        ]
        sums = _prefix(z)
        step = min((sse(z[:c]) + sse(z[c:]), c) for c in range(2, m - 1))
        got_sse, got_split = _step_fit(z, sums)
        assert got_split == step[1] and math.isclose(got_sse, step[0], rel_tol=1e-9)
        hinges = []
        for c in range(m - 3):
            base = sum(z[:c]) / c if c else 0.0
            ks = range(1, m - c + 1)
            s = sum((z[c + k - 1] - base) * k for k in ks) / sum(k * k for k in ks)
            e = sum((x - base) ** 2 for x in z[:c]) + sum(
                (z[c + k - 1] - base - s * k) ** 2 for k in ks
            )
            hinges.append((e, c, s))
        e, c, s = min(hinges)
        h_sse, h_at, h_slope = _hinge_fit(z, sums)
        assert h_at == c and math.isclose(h_sse, e, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(h_slope, s, rel_tol=1e-9, abs_tol=1e-12)


def test_a_held_alert_is_not_a_spike_when_a_reading_after_it_was_far_out() -> None:
    """The tracker releases an alert early (a spike) only when the last three readings are
    back and none since the alert was far out: wider scatter that happens to calm for three
    readings waits for the full hold, and is then named from all its readings."""
    tracker = ChangeTracker(12)
    values = _noise(2)[:200]
    values[-1] = 9.0  # the reading that alerted
    for i, v in enumerate(values):
        tracker.observe(float(i), v, 0.0)
    alert = Alert(
        alert_id="a",
        detector="series",
        tenant="t",
        entity="e",
        ts=199.0,
        score=1.0,
        value=9.0,
        baseline=0.0,
        threshold=0.5,
        window={},
        event_ids=("m199",),
        source="s",
        message="m",
    )
    assert tracker.hold(alert) == []
    # one far reading, then three quiet ones: not back
    for i, v in enumerate([-8.0, 0.3, -0.2, 0.1]):
        assert tracker.observe(200.0 + i, v, 0.0) == []
    assert tracker.held is not None
    quiet = ChangeTracker(12)
    for i, v in enumerate(values):
        quiet.observe(float(i), v, 0.0)
    quiet.hold(alert)
    out = [a for i, v in enumerate([0.3, -0.2, 0.1]) for a in quiet.observe(200.0 + i, v, 0.0)]
    assert len(out) == 1 and out[0].change is not None and out[0].change["kind"] == "spike"
