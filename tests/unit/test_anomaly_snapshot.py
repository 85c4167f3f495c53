"""The ensemble's snapshots: exact resume and size, with ranks from `WindowSketch`es (the
default, format 4) and from exact windows (`exact_ranks`, format 2), and the
older layouts they still load."""

from __future__ import annotations

import math
import pickle
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.models import AnomalyConfig
from core.records import Event, Kind
from operators.anomaly import EntityDetector
from operators.anomaly.detectors import WindowSketch, pack_ints, unpack_ints
from operators.anomaly.series import EnsembleSeries, Verdict, legacy_state

T0 = 1_700_000_000.0 - (1_700_000_000.0 % 86_400)  # midnight UTC
EXACT: dict[str, Any] = {"exact_ranks": True}
"""Exact rank windows (and the shift detector's `RankTape`) instead of the default sketches."""
MODES = [pytest.param({}, id="sketch"), pytest.param(EXACT, id="exact")]


def signal(n: int, seed: int = 7, gaps: bool = False) -> list[tuple[float, float]]:
    """Five-minute readings of a daily pattern with noise, spikes and a level shift; with
    `gaps`, irregular steps, so seasonal slots are first seen late (unranked readings while
    the windows are still filling)."""
    rnd = random.Random(seed)
    out = []
    ts = T0
    for i in range(n):
        ts += rnd.choice((60.0, 300.0, 900.0, 3600.0)) if gaps else 300.0
        v = 50 + 20 * math.sin(2 * math.pi * (i % 288) / 288) + rnd.gauss(0, 3)
        if rnd.random() < 0.003:
            v += rnd.choice((-40.0, 60.0))
        if i > n // 2:
            v += 15.0
        out.append((ts, v))
    return out


def feed(det: EnsembleSeries, readings: list[tuple[float, float]]) -> list[Verdict]:
    return [det.update(ts, v) for ts, v in readings]


def round_trip(cfg: AnomalyConfig, det: EnsembleSeries) -> EnsembleSeries:
    return EnsembleSeries(cfg, pickle.loads(pickle.dumps(det.state())))


def leaves(x: Any) -> list[Any]:
    return [y for item in x for y in leaves(item)] if isinstance(x, tuple) else [x]


# --- exact resume ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_resume_half_way_gives_the_uninterrupted_verdicts(mode: dict[str, Any]) -> None:
    """Default configuration, 6,000 readings: stopped after 3,000 (windows full), pickled,
    resumed; every verdict after that is the uninterrupted run's, and so are the states."""
    cfg = AnomalyConfig(**mode)
    readings = signal(6000)
    live = EnsembleSeries(cfg)
    feed(live, readings[:3000])
    resumed = round_trip(cfg, live)
    assert resumed.state() == live.state()
    out_live = feed(live, readings[3000:])
    out_resumed = feed(resumed, readings[3000:])
    assert out_resumed == out_live  # score, raw, alert, detector, baseline: bit for bit
    assert any(v.alert for v in out_live)
    assert resumed.state() == live.state()
    assert resumed.evidence() == live.evidence() and resumed.recent() == live.recent()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "over",
    [
        {"rank_window": 50, "shift_span": 7, "season_slots": 24},
        {"rank_window": 50, "shift_span": 100, "season_slots": 24},  # span > checkpoint step
        {"rank_window": 200, "shift_span": 30, "season_slots": 288},
    ],
)
def test_restarts_at_every_phase_give_the_uninterrupted_verdicts(
    over: dict[str, Any], mode: dict[str, Any]
) -> None:
    """Restarted every 17 readings, through warm-up (windows filling, slots first seen late)
    and long past it (the sketch's blocks leaving, the tape moving from checkpoint to
    checkpoint)."""
    cfg = AnomalyConfig(min_points=20, **over, **mode)
    readings = signal(1500, seed=3, gaps=True)
    live, restarted = EnsembleSeries(cfg), EnsembleSeries(cfg)
    for i in range(0, len(readings), 17):
        chunk = readings[i : i + 17]
        assert feed(restarted, chunk) == feed(live, chunk)
        restarted = round_trip(cfg, restarted)
        assert restarted.state() == live.state()
        if mode:
            assert live.tape is not None
            assert len(live.tape.codes) <= cfg.rank_window + cfg.shift_span + 64  # bounded


@settings(max_examples=25, deadline=None)
@given(
    window=st.integers(50, 120),
    span=st.integers(2, 80),
    stops=st.lists(st.integers(0, 600), max_size=4),
    seed=st.integers(0, 1000),
    exact=st.booleans(),
)
def test_resume_anywhere_is_exact(
    window: int, span: int, stops: list[int], seed: int, exact: bool
) -> None:
    cfg = AnomalyConfig(
        rank_window=window,
        shift_span=span,
        season_slots=24,
        min_points=10,
        rank_sketch_blocks=7,
        **(EXACT if exact else {}),
    )
    readings = signal(600, seed=seed, gaps=seed % 2 == 0)
    live, restarted = EnsembleSeries(cfg), EnsembleSeries(cfg)
    at = 0
    for stop in [*sorted(stops), len(readings)]:
        assert feed(restarted, readings[at:stop]) == feed(live, readings[at:stop])
        restarted = round_trip(cfg, restarted)
        at = max(at, stop)
        if exact:
            assert restarted.tape is not None
            assert len(restarted.tape.codes) <= window + span + 64
    assert restarted.state() == live.state()


def metric_events(readings: list[tuple[float, float]], start: int) -> list[Event]:
    return [
        Event(
            f"m-{start + i}",
            f"metrics[0]@{start + i}",
            "acme",
            Kind.METRIC,
            "web-1.cpu",
            ts,
            {"value": v},
            0.0,
        )
        for i, (ts, v) in enumerate(readings)
    ]


def test_entity_detector_resumes_exactly_from_its_pickled_snapshot() -> None:
    """What Bytewax snapshots (`EntityDetector.state()`), pickled and resumed: the alerts and
    events after the restart are the uninterrupted run's."""
    cfg = AnomalyConfig(allowed_lateness_s=1e9)
    readings = signal(4000, seed=11)
    live = EntityDetector(cfg)
    live.process(metric_events(readings[:3500], 0), now=1.0)
    resumed = EntityDetector(cfg, pickle.loads(pickle.dumps(live.state())))
    tail = metric_events(readings[3500:], 3500)
    assert resumed.process(tail, now=2.0) == live.process(tail, now=2.0)
    assert pickle.dumps(resumed.state()) == pickle.dumps(live.state())


# --- size and immutability ------------------------------------------------------------------


def test_warmed_snapshot_size() -> None:
    """The pickled state Bytewax writes per warmed entity (default configuration): the series
    in at most 8 KiB (its two sketches, the slot means as doubles, the contexts, the shape
    memories: 1.3 kB), plus the
    change tracker's last 192 event times, readings and baselines that name alert kinds. The
    same series with exact windows needs the residual window as doubles and the shift
    detector's tape (2 bytes a reading): about 34 kB."""
    det = EntityDetector(AnomalyConfig())
    det.process(metric_events(signal(5000), 0), now=1.0)
    assert isinstance(det.series, EnsembleSeries)
    series = len(pickle.dumps(det.state()["series"]))
    tracker = len(pickle.dumps(det.state()["change"]))
    assert series <= 8 * 1024
    assert tracker <= 24 * 192 + 200
    exact_cfg = AnomalyConfig(**EXACT)
    exact = EntityDetector(exact_cfg)
    exact.process(metric_events(signal(5000), 0), now=1.0)
    exact_series = len(pickle.dumps(exact.state()["series"]))
    assert series * 4 <= exact_series <= 36 * 1024
    legacy = len(pickle.dumps(("ensemble", legacy_state(exact.series))))  # type: ignore[arg-type]
    assert legacy - exact_series >= 8 * exact_cfg.rank_window  # no window of shift means


def test_snapshot_is_an_immutable_copy() -> None:
    cfg = AnomalyConfig(rank_window=100)
    det = EnsembleSeries(cfg)
    feed(det, signal(400))
    snap = det.state()
    frozen = pickle.dumps(snap)
    assert all(isinstance(x, int | float | bytes | None) for x in leaves(snap))
    feed(det, signal(400, seed=8))
    assert pickle.dumps(snap) == frozen


# --- older layouts --------------------------------------------------------------------------


def test_unversioned_snapshot_loads_and_continues_exactly() -> None:
    """A snapshot in the layout before format 2 resumes the same detector; its packed
    snapshots carry the shift's window explicitly until the tape covers one, then shrink."""
    cfg = AnomalyConfig(rank_window=300, **EXACT)
    readings = signal(2000, seed=5)
    live = EnsembleSeries(cfg)
    feed(live, readings[:1000])
    resumed = EnsembleSeries(cfg, pickle.loads(pickle.dumps(legacy_state(live))))
    assert resumed.state() == live.state()[:8] + resumed.state()[8:]  # all but the tape
    assert feed(resumed, readings[1000:1100]) == feed(live, readings[1000:1100])
    carried = len(pickle.dumps(resumed.state()))
    again = round_trip(cfg, resumed)  # a packed snapshot of a tape with an explicit window
    assert feed(again, readings[1100:]) == feed(live, readings[1100:])
    assert len(pickle.dumps(again.state())) <= carried - 8 * 300 + 8 * 64
    assert again.state() == live.state()  # the explicit window is gone: the same tape


def test_snapshot_from_before_component_rest_loads() -> None:
    cfg = AnomalyConfig(rank_window=300, **EXACT)
    live = EnsembleSeries(cfg)
    feed(live, signal(700))
    resumed = EnsembleSeries(cfg, legacy_state(live)[:7])
    assert resumed.n == live.n == 700
    assert resumed.comp_hit == [None, None, None] and resumed.comp_peak == [0.0, 0.0, 0.0]
    assert resumed.shift.state() == live.shift.state()


def test_snapshot_from_before_the_shape_gate_loads() -> None:
    """Snapshots without the shape memory (sketch format 4, format 2 of 10 fields, the
    unversioned layout of 9) resume everything else; the shape memory starts empty. Under
    other `shape_levels` the memory (other categories) starts empty too."""
    readings = signal(900, seed=6)
    for cfg in (AnomalyConfig(), AnomalyConfig(rank_window=300, **EXACT)):
        live = EnsembleSeries(cfg)
        feed(live, readings)
        snap = live.state()
        assert snap[-1] is not None and live.shapes is not None and all(live.shapes.mems)
        old = (4, *snap[1:-1]) if snap[0] == 5 else snap[:-1]
        resumed = EnsembleSeries(cfg, pickle.loads(pickle.dumps(old)))
        assert resumed.n == live.n == 900 and resumed.comp_hit == live.comp_hit
        assert resumed.season.slot_mean == live.season.slot_mean
        assert resumed.shapes is not None and not any(resumed.shapes.mems)
        other = EnsembleSeries(cfg.model_copy(update={"shape_levels": (6,)}), snap)
        assert other.n == 900 and other.shapes is not None and not any(other.shapes.mems)
        same = EnsembleSeries(cfg, snap)
        assert same.shapes is not None and same.shapes.state() == live.shapes.state()
    exact = AnomalyConfig(rank_window=300, **EXACT)
    live = EnsembleSeries(exact)
    feed(live, readings)
    resumed = EnsembleSeries(exact, legacy_state(live)[:9])
    assert resumed.n == 900 and resumed.shapes is not None and not any(resumed.shapes.mems)


def test_packed_under_another_window_resumes_like_an_unversioned_snapshot() -> None:
    """Restarted with another `rank_window` / `shift_span`: the packed snapshot rebuilds the
    detector it recorded and carries on from it exactly as from the unversioned layout."""
    before = AnomalyConfig(rank_window=300, shift_span=30, **EXACT)
    det = EnsembleSeries(before)
    feed(det, signal(1000))
    readings = signal(300, seed=9)
    for after in (AnomalyConfig(rank_window=200, **EXACT), AnomalyConfig(shift_span=20, **EXACT)):
        packed = EnsembleSeries(after, pickle.loads(pickle.dumps(det.state())))
        unversioned = EnsembleSeries(after, legacy_state(det))
        assert feed(packed, readings) == feed(unversioned, readings)


def test_unknown_format_starts_afresh() -> None:
    det = EnsembleSeries(AnomalyConfig(), (3, b"from a newer release"))
    assert det.n == 0 and det.shift.n == 0


@given(st.lists(st.integers(-(2**63), 2**63 - 1)))
def test_packed_integers_round_trip(values: list[int]) -> None:
    packed = pack_ints(values)
    assert list(unpack_ints(packed)) == values
    if all(-128 <= v < 128 for v in values):
        assert len(packed) == 1 + len(values)  # one byte each when they fit


def test_exact_window_snapshot_carries_on_under_the_sketch() -> None:
    """A snapshot taken with exact windows (format 2), resumed under the default sketch: its
    counters, slot means and contexts carry over, its windows go into the sketches (the
    largest values ranked exactly), and it keeps alerting on what the exact detector
    alerts on."""
    exact_cfg, cfg = AnomalyConfig(**EXACT), AnomalyConfig()
    readings = signal(6000, seed=4)
    exact = EnsembleSeries(exact_cfg)
    feed(exact, readings[:4000])
    adopted = EnsembleSeries(cfg, pickle.loads(pickle.dumps(exact.state())))
    assert adopted.tape is None and adopted.state()[0] == 5
    assert adopted.n == exact.n and adopted.season.slot_mean == exact.season.slot_mean
    window = sorted(exact.season.rank.state())
    sketch = adopted.season.rank
    assert isinstance(sketch, WindowSketch)
    checked = [x for x in window[-cfg.rank_sketch_tail :] if sketch.exact(x)]
    assert checked  # the largest values (those in bins above every one left out)
    assert [sketch.rank(x) for x in checked] == [exact.season.rank.rank(x) for x in checked]
    later = readings[4000:]
    alerts_exact = [i for i, v in enumerate(feed(exact, later)) if v.alert]
    alerts_adopted = [i for i, v in enumerate(feed(adopted, later)) if v.alert]
    assert alerts_exact and alerts_adopted == alerts_exact


def test_a_sketch_of_another_layout_starts_afresh() -> None:
    """Format 3 (the earlier, decaying sketch) and sketches under other parameters are not
    converted: the series learns again."""
    det = EnsembleSeries(AnomalyConfig())
    feed(det, signal(500))
    snap = det.state()
    for cfg in (AnomalyConfig(rank_sketch_tail=32), AnomalyConfig(rank_sketch_accuracy=0.05)):
        assert EnsembleSeries(cfg, snap).n == 0
    assert EnsembleSeries(AnomalyConfig(), (3, 0.02, *snap[2:])).n == 0
    assert EnsembleSeries(AnomalyConfig(), snap).n == 500
