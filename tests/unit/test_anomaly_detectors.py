"""Unit tests of the pure detectors (`operators.anomaly.detectors`) and series ensembles."""

from __future__ import annotations

import math
import pickle
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from config.models import AnomalyConfig
from core.records import Alert, Event, Kind
from operators.anomaly import EntityDetector
from operators.anomaly.detectors import (
    ContextNovelty,
    Rank,
    RankShift,
    SeasonalResidual,
    ShapeNovelty,
    WindowSketch,
)
from operators.anomaly.series import EnsembleSeries, EwmaSeries, legacy_state, make_series

T0 = 1_700_000_000.0 - (1_700_000_000.0 % 86_400)  # midnight UTC
STEP = 300.0  # five-minute readings: one per seasonal slot


def daily(i: int, noise: float = 0.5, seed: int = 1) -> float:
    rnd = random.Random(seed * 100_003 + i)
    return 50.0 + 20.0 * math.sin(2 * math.pi * (i % 288) / 288) + rnd.gauss(0, noise)


def ens_cfg(**over: Any) -> AnomalyConfig:
    base: dict[str, Any] = {"detector": "ensemble", "min_points": 100, "rank_window": 600}
    base.update(over)
    return AnomalyConfig(**base)


# --- ContextNovelty -------------------------------------------------------------------------


def test_context_novelty_learns_a_repeating_pattern() -> None:
    det = ContextNovelty(levels=8, orders=3)
    pattern = [0.0, 5.0, 10.0, 5.0]
    scores = [det.update(pattern[i % 4]) for i in range(200)]
    assert scores[0] == 0.0
    assert max(scores[50:]) == 0.0  # a familiar shape is not novel
    assert det.update(7.5) > 0.5  # a level never seen after this context


def test_context_novelty_value_outside_range_is_novel() -> None:
    det = ContextNovelty(levels=8, orders=2)
    for i in range(100):
        det.update(float(i % 5))
    assert det.update(100.0) == 1.0


def test_context_memory_is_bounded() -> None:
    det = ContextNovelty(levels=16, orders=3, capacity=64)
    rnd = random.Random(3)
    for _ in range(2000):
        det.update(rnd.random())
        assert len(det.mem) <= 64


def test_context_state_round_trip_continues_identically() -> None:
    rnd = random.Random(5)
    values = [rnd.random() for _ in range(400)]
    a = ContextNovelty(levels=8, orders=3, capacity=100)
    for v in values[:300]:
        a.update(v)
    b = ContextNovelty(8, 3, 100, pickle.loads(pickle.dumps(a.state())))
    assert [a.update(v) for v in values[300:]] == [b.update(v) for v in values[300:]]
    assert a.state() == b.state()


# --- Rank -----------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=120),
    window=st.integers(1, 30),
)
def test_rank_matches_brute_force(values: list[float], window: int) -> None:
    r = Rank(window)
    seen: list[float] = []
    for x in values:
        recent = seen[-window:]
        expected = sum(1 for v in recent if v < x) / len(recent) if recent else 0.0
        assert r.rank(x) == expected
        r.push(x)
        seen.append(x)
        assert len(r.sorted) == len(r.ring) == min(len(seen), window)
    again = Rank(window, r.state())
    assert again.state() == r.state()
    assert again.rank(0.0) == r.rank(0.0)


# --- SeasonalResidual -----------------------------------------------------------------------


def test_seasonal_residual_flags_a_value_off_its_time_of_day() -> None:
    det = SeasonalResidual(slots=288, alpha=0.25, window=600)
    for i in range(288 * 3):
        det.update(daily(i), T0 + i * STEP)
    i = 288 * 3 + 72  # 06:00: usually 70
    assert abs((det.baseline(T0 + i * STEP) or 0.0) - 70.0) < 2.0
    assert det.update(50.0, T0 + i * STEP) == 1.0  # a normal value, but not at this hour
    assert det.update(daily(i + 1), T0 + (i + 1) * STEP) < 0.99


# --- RankShift ------------------------------------------------------------------------------


def test_rank_shift_flags_a_sustained_shift_no_single_reading_shows() -> None:
    """Uniform ranks, then ranks that stay moderately high (0.8-0.95: none extreme on its
    own): the mean surprise climbs to a record within the span."""
    rnd = random.Random(5)
    det = RankShift(span=30, window=1000)
    calm = [det.update(rnd.random()) for _ in range(1500)]
    assert sum(x >= 0.999 for x in calm[1000:]) <= 5  # records are rare in calm data
    shifted = [det.update(0.8 + 0.15 * rnd.random()) for _ in range(30)]
    assert max(shifted) >= 0.999


def test_rank_shift_is_quiet_during_its_span_and_round_trips() -> None:
    det = RankShift(span=10, window=50)
    rnd = random.Random(6)
    assert [det.update(rnd.random()) for _ in range(10)] == [0.0] * 10
    for _ in range(200):
        det.update(rnd.random())
    snap = pickle.loads(pickle.dumps(det.state()))
    twin = RankShift(10, 50, snap)
    xs = [rnd.random() for _ in range(100)]
    assert [det.update(x) for x in xs] == [twin.update(x) for x in xs]
    assert twin.state() == det.state()
    assert len(det.state()[3]) == 50


def test_ensemble_resumes_an_older_snapshot_layout_afresh() -> None:
    cfg = ens_cfg()
    old = ((), (), 12, None, (), (0.0, 0.0))  # the layout before the shift detector
    det = EnsembleSeries(cfg, old)
    assert det.n == 0 and len(det.contexts) == len(cfg.context_levels)


# --- EnsembleSeries -------------------------------------------------------------------------


def feed(det: Any, n: int, start: int = 0, spikes: dict[int, float] | None = None) -> list[Any]:
    spikes = spikes or {}
    return [det.update(T0 + i * STEP, spikes.get(i, daily(i))) for i in range(start, start + n)]


def test_ensemble_alerts_once_on_a_spike_then_rests() -> None:
    # A 1500-reading rank window: with 600 the shift detector's history of 30-reading means
    # (overlapping, so only ~20 independent ones) is short enough that pure noise sets a new
    # record now and then, and that chance alarm's rest would cover the spike.
    det = EnsembleSeries(ens_cfg(rest_points=50, rank_window=1500))
    spike = 288 * 4 + 10
    verdicts = feed(det, spike + 40, spikes={spike: 150.0, spike + 3: 160.0})
    # Days 1-3 are its learning period (like NAB's probation): look at day 4 on.
    alerts = [i for i, v in enumerate(verdicts) if v.alert and i >= 288 * 3]
    assert alerts == [spike]  # the second spike falls in the rest period
    v = verdicts[spike]
    assert v.score >= 0.9 and v.detector in ("seasonal_residual", "context_novelty")
    assert v.detector != "residual_shift"
    assert verdicts[spike + 3].score == 0.0  # resting
    assert det.recent()[-1] == daily(spike + 39)
    assert all(0.0 <= x.score <= 1.0 for x in verdicts)


def test_component_rest_suppresses_repeats_of_one_component_unless_worse() -> None:
    det = EnsembleSeries(ens_cfg(component_rest_points=10))
    thr = 0.9

    def at(n: int, seasonal: float, shift: float, novelty: float) -> tuple[float, float, float]:
        det.n = n
        return det._dedup(seasonal, shift, novelty, thr)

    assert at(1, 0.95, 0.0, 0.0) == (0.95, 0.0, 0.0)  # the seasonal component alarms
    assert at(5, 0.92, 0.0, 0.0) == (0.0, 0.0, 0.0)  # the same source again: left out
    assert at(6, 0.0, 0.0, 1.0) == (0.0, 0.0, 1.0)  # another component is not resting
    assert at(7, 0.97, 0.0, 0.0) == (0.97, 0.0, 0.0)  # worse than its alarm: escalation
    assert at(8, 0.96, 0.0, 0.0) == (0.0, 0.0, 0.0)  # below the new peak
    # Its rest lasts while it keeps reaching the threshold (like the overall rest).
    assert at(18, 0.5, 0.0, 0.0) == (0.0, 0.0, 0.0)
    assert at(19, 0.91, 0.0, 0.0) == (0.91, 0.0, 0.0)  # 11 readings since its last hit


def test_shift_detector_rests_for_its_own_period() -> None:
    det = EnsembleSeries(ens_cfg(component_rest_points=10, shift_rest_points=30))
    thr = 0.9

    def at(n: int, seasonal: float, shift: float, novelty: float) -> tuple[float, float, float]:
        det.n = n
        return det._dedup(seasonal, shift, novelty, thr)

    assert at(1, 0.95, 0.95, 0.0) == (0.95, 0.95, 0.0)  # both alarm
    assert at(15, 0.93, 0.93, 0.0) == (0.93, 0.0, 0.0)  # seasonal rest (10) over, shift's not
    assert at(40, 0.0, 0.91, 0.0) == (0.0, 0.0, 0.0)  # 25 since its hit at 15: resting
    assert at(71, 0.0, 0.92, 0.0) == (0.0, 0.92, 0.0)  # 31 readings since its last hit (40)


def test_component_rest_outlasts_the_overall_rest() -> None:
    spike = 288 * 4 + 10
    spikes = {spike: 150.0, spike + 70: 150.0}  # after the overall rest (50), within 100
    for comp_rest, expected in ((100, [spike]), (0, [spike, spike + 70])):
        det = EnsembleSeries(
            ens_cfg(rest_points=50, rank_window=1500, component_rest_points=comp_rest)
        )
        verdicts = feed(det, spike + 100, spikes=spikes)
        alerts = [i for i, v in enumerate(verdicts) if v.alert and i >= 288 * 3]
        assert alerts == expected


def test_ensemble_resumes_a_snapshot_from_before_component_rest() -> None:
    cfg = ens_cfg(exact_ranks=True)  # exact windows: the layout had no sketches
    live = EnsembleSeries(cfg)
    feed(live, 400)
    old = legacy_state(live)[:7]  # the layout without per-component rest
    resumed = EnsembleSeries(cfg, old)
    assert resumed.n == live.n == 400
    assert resumed.comp_hit == [None, None, None] and resumed.comp_peak == [0.0, 0.0, 0.0]


def test_ensemble_is_silent_before_min_points() -> None:
    det = EnsembleSeries(ens_cfg(min_points=200))
    verdicts = feed(det, 150, spikes={120: 500.0})
    assert not any(v.alert for v in verdicts)
    assert all(v.score == 0.0 for v in verdicts)


def test_ensemble_state_round_trip_gives_the_same_decisions() -> None:
    """A detector rebuilt from its snapshot continues with the same statistics: every score
    and alert after the restart equals the uninterrupted run's, while a detector started
    from zero decides differently (it is still warming up)."""
    cfg = ens_cfg()
    live = EnsembleSeries(cfg)
    feed(live, 288 * 3)
    snap = pickle.loads(pickle.dumps(live.state()))
    resumed = make_series(cfg, snap)
    assert isinstance(resumed, EnsembleSeries)
    assert resumed.n == live.n == 288 * 3
    assert resumed.season.slot_mean == live.season.slot_mean
    spikes = {288 * 3 + 40: 150.0}
    out_live = feed(live, 200, start=288 * 3, spikes=spikes)
    out_resumed = feed(resumed, 200, start=288 * 3, spikes=spikes)
    assert out_resumed == out_live
    assert any(v.alert for v in out_resumed)
    fresh = feed(EnsembleSeries(cfg), 200, start=288 * 3, spikes=spikes)
    assert not any(v.alert for v in fresh[:100])
    assert resumed.state() == live.state()


def test_snapshot_is_an_immutable_copy() -> None:
    det = EnsembleSeries(ens_cfg())
    feed(det, 300)
    snap = det.state()
    frozen = pickle.dumps(snap)
    feed(det, 50, start=300)
    assert pickle.dumps(snap) == frozen


def test_ensemble_state_is_bounded() -> None:
    for exact in (True, False):
        cfg = ens_cfg(
            rank_window=100,
            context_capacity=50,
            season_slots=24,
            evidence_points=4,
            exact_ranks=exact,
        )
        det = EnsembleSeries(cfg)
        rnd = random.Random(9)
        for i in range(3000):
            det.update(T0 + i * 37.0, rnd.random() * 1000)
        assert len(det.season.slot_mean) <= 24
        assert len(det.shift.ring) == cfg.shift_span
        if exact:
            season, shift, *_ = legacy_state(det)
            assert len(season[1]) == 100 and len(shift[3]) == 100
        for sketch in (det.season.rank, det.shift.rank):
            assert len(sketch) <= 100 + 100 // cfg.rank_sketch_blocks + 1  # whole blocks
            if isinstance(sketch, WindowSketch):
                assert len(sketch.blocks) <= cfg.rank_sketch_blocks
                assert len(sketch.top_v) <= cfg.rank_sketch_tail
        assert len(det.contexts) == len(cfg.context_levels)
        assert all(len(c.mem) <= 50 for c in det.contexts)
        assert len(det.recent()) == 4


def test_ewma_series_score_scale() -> None:
    det = EwmaSeries(AnomalyConfig(detector="ewma", warmup=5, z_threshold=4.0))
    for i in range(30):
        det.update(float(i), 10.0 + (0.5 if i % 2 else -0.5))
    v = det.update(30.0, 50.0)
    assert v.alert and v.raw >= 4.0 and v.score >= 0.5 and v.detector == "ewma_zscore"


# --- EntityDetector with the ensemble -------------------------------------------------------


def metric(i: int, value: float) -> Event:
    return Event(
        event_id=f"m-{i}",
        source=f"metrics[0]@{i}",
        tenant="acme",
        kind=Kind.METRIC,
        entity="web-1.cpu",
        ts=T0 + i * STEP,
        payload={"value": value, "unit": None, "tags": {}},
        ingest_ts=0.0,
    )


def test_entity_detector_metric_alert_carries_evidence() -> None:
    det = EntityDetector(ens_cfg(allowed_lateness_s=1e9, min_points=2 * 288))
    spike = 288 * 3 + 5
    out = det.process([metric(i, daily(i)) for i in range(spike)], now=1.0)
    assert len(out) == spike and not any(isinstance(f, Alert) for f in out)
    out = det.process([metric(spike, 140.0)], now=2.0)
    assert not [f for f in out if isinstance(f, Alert)]  # held until its change is named
    after = [metric(i, daily(i)) for i in range(spike + 1, spike + 4)]
    out = det.process(after, now=3.0)
    [alert] = [f for f in out if isinstance(f, Alert)]
    assert alert.change is not None and alert.change["kind"] == "spike"
    assert alert.detector.startswith("ensemble/")
    assert alert.value == 140.0 and alert.event_ids == (f"m-{spike}",)
    assert alert.threshold == 0.9 and 0.9 <= alert.score <= 1.0
    assert abs(alert.baseline - daily(spike)) < 5.0
    assert alert.window["recent"][-1] == 140.0 and len(alert.window["recent"]) == 8
    assert alert.window["component"] in ("seasonal_residual", "context_novelty")
    assert "expected about" in alert.message


def test_entity_detector_resumes_after_restart() -> None:
    """Pickled snapshot -> new detector: the alert after the restart is the same one."""
    cfg = ens_cfg(allowed_lateness_s=1e9, min_points=2 * 288)
    live = EntityDetector(cfg)
    spike = 288 * 3 + 5
    live.process([metric(i, daily(i)) for i in range(spike)], now=1.0)
    resumed = EntityDetector(cfg, pickle.loads(pickle.dumps(live.state())))
    tail = [metric(spike, 140.0), metric(spike + 1, daily(spike + 1))]
    assert resumed.process(tail, now=2.0) == live.process(tail, now=2.0)
    fresh = EntityDetector(cfg).process(tail, now=2.0)
    assert len(fresh) == len(tail) and not any(isinstance(f, Alert) for f in fresh)


def test_snapshot_under_another_detector_starts_afresh() -> None:
    ewma = EntityDetector(AnomalyConfig(detector="ewma", allowed_lateness_s=1e9))
    ewma.process([metric(i, daily(i)) for i in range(10)], now=1.0)
    det = EntityDetector(ens_cfg(), ewma.state())
    assert isinstance(det.series, EnsembleSeries) and det.series.n == 0


def chat(ts: float, eid: str) -> Event:
    return Event(
        event_id=eid,
        source="chat[0]@1",
        tenant="acme",
        kind=Kind.CHAT,
        entity="sess-1",
        ts=ts,
        payload={"text": "hi", "role": "user"},
        ingest_ts=ts,
    )


def test_event_rate_drop_alert() -> None:
    cfg = AnomalyConfig(rate_min_count=10, rate_warmup_windows=3, rate_factor=5.0)
    det = EntityDetector(cfg)
    for k in range(5):
        det.process([chat(T0 + 60 * k + i * 2, f"w{k}-{i}") for i in range(20)], now=1.0)
    det.process([chat(T0 + 300 + 1, "lonely")], now=1.0)
    out = det.process([chat(T0 + 420 + 31, "push")], now=1.0)
    [alert] = [f for f in out if isinstance(f, Alert)]
    assert alert.detector == "event_rate_drop"
    assert alert.value == 1.0 and alert.baseline >= 10
    assert alert.window["kind"] == "drop" and alert.threshold == 0.2


# --- ShapeNovelty (the new-category gate) ----------------------------------------------------


def test_shape_novelty_knows_a_repeated_shape_and_forgets_beyond_capacity() -> None:
    pattern = [0.0, 10.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0]  # eight phases, eight windows
    shapes = ShapeNovelty(levels=(8,), capacity=16)
    first = [shapes.update(x) for x in pattern * 2]
    assert not any(first[:7])  # no full window yet
    assert first[7]  # the first full window is a new category
    again = [shapes.update(x) for x in pattern * 2]
    assert not any(again)  # every window seen before, on the same range
    assert shapes.update(100.0)  # beyond the range: a category of its own
    small = ShapeNovelty(levels=(7, 8, 9), capacity=4)  # fewer than the cycle's eight categories
    seen = [small.update(x) for x in pattern * 4]
    assert all(seen[16:])  # each is forgotten before it comes round again
    assert [len(mem) for mem in small.mems] == [4, 4, 4]


def test_shape_novelty_pack_round_trip_continues_identically() -> None:
    rnd = random.Random(3)
    live = ShapeNovelty(levels=(7, 8, 9), capacity=64)
    for _ in range(500):
        live.update(rnd.choice((0.0, 1.0, 2.0, 9.0)))
    resumed = ShapeNovelty(
        (7, 8, 9), 64, ShapeNovelty.unpack(pickle.loads(pickle.dumps(live.pack())))
    )
    assert resumed.state() == live.state()
    xs = [rnd.choice((0.0, 1.0, 2.0, 9.0, 20.0)) for _ in range(300)]
    assert [live.update(x) for x in xs] == [resumed.update(x) for x in xs]


def _streams() -> list[list[float]]:
    """Streams that take every path of the per-reading code: flat starts, readings at the
    top and bottom of the range and beyond it, repeats, ties and noise."""
    rnd = random.Random(11)
    out = [[5.0] * 20 + [5.0, 6.0, 5.0, 7.0, 7.0, 3.0] * 30]
    for _ in range(6):
        xs = [rnd.choice((0.0, 1.0, 1.0, 2.5)) for _ in range(200)]
        xs += [rnd.gauss(0, 1) * (10 if rnd.random() < 0.02 else 1) for _ in range(600)]
        xs += [max(xs)] * 5 + [min(xs) - 1.0] + [rnd.choice(xs) for _ in range(300)]
        out.append(xs)
    return out


def test_shape_novelty_update_names_what_categories_names() -> None:
    """`update` (which names in-range windows inline) flags a window new exactly when the
    categories `_categories` names for it (on the range before its last reading) were not
    all in the memories, and remembers them."""
    for xs in _streams():
        live = ShapeNovelty((8, 10), 16)
        mems: list[list[tuple[int, ...]]] = [[], []]  # a plain LRU list per resolution
        for i, x in enumerate(xs):
            lo, hi = live.range.lo, live.range.hi
            new = live.update(x)
            if i < ShapeNovelty.WIDTH - 1:
                assert not new
                continue
            expected = False
            for key, mem in zip(live._categories(live.ring, lo, hi), mems, strict=True):
                if key in mem:
                    mem.remove(key)
                else:
                    expected = True
                mem.append(key)
                del mem[:-16]
            assert new == expected, i
            assert [list(m) for m in live.mems] == mems


def test_first_order_context_novelty_is_the_level_pair_lookup() -> None:
    """`ContextNovelty.update` with first-order contexts (inline) against the definition:
    the pair (previous level, level) on the range before the reading, new or not, in a
    memory of the `capacity` most recently seen pairs."""
    for xs in _streams():
        live = ContextNovelty(levels=6, orders=1, capacity=12)
        lo, hi = math.inf, -math.inf
        prev: int | None = None
        mem: list[tuple[int, int]] = []
        for x in xs:
            if x < lo:
                level = -1
            elif x > hi:
                level = 6
            else:
                level = min(int((x - lo) / (hi - lo) * 6), 5) if hi > lo else 0
            lo, hi = min(lo, x), max(hi, x)
            expected = 0.0
            if prev is not None:
                pair = (prev, level)
                expected = 0.0 if pair in mem else 1.0
                if pair in mem:
                    mem.remove(pair)
                mem.append(pair)
                del mem[:-12]
            prev = level
            assert live.update(x) == expected
            assert list(live.mem) == mem
            assert (live.range.lo, live.range.hi) == (lo, hi)


def test_seasonal_alarm_needs_a_new_shape() -> None:
    # Three spikes on a flat series. The first sets the range; the second (a little lower) and
    # the third (between them) have the same shape on that range. When the third comes the
    # first has left the 1500-reading rank window, so the seasonal residual ranks the third
    # above everything (an alarm without the gate); with the gate its familiar shape keeps it
    # quiet. (Within the range, the context novelty does not see it either.)
    first, second, third = 874, 1400, 2500
    spikes = {first: 150.0, second: 149.0, third: 149.8}
    rnd = random.Random(5)
    values = [spikes.get(i, 50.0 + rnd.gauss(0, 0.5)) for i in range(third + 5)]
    alerts: dict[tuple[int, ...], list[int]] = {}
    for levels in ((7, 8, 9), ()):
        det = EnsembleSeries(ens_cfg(rank_window=1500, shape_levels=levels))
        verdicts = [det.update(T0 + i * STEP, v) for i, v in enumerate(values)]
        alerts[levels] = [i for i, v in enumerate(verdicts) if v.alert and i >= 288 * 3]
        if not levels:
            assert verdicts[third].detector == "seasonal_residual"
    assert {first, second, third} <= set(alerts[()])
    assert {first, second} <= set(alerts[(7, 8, 9)]) and third not in alerts[(7, 8, 9)]
