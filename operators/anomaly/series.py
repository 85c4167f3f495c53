"""Per-series scoring and alerting: the detectors of `detectors.py` combined into one decision.

`make_series(cfg, state)` builds the metric-series detector that `AnomalyConfig.detector`
names; the pipeline (`operators.anomaly.EntityDetector`) and the benchmark (`bench.nab`) both
call it, so NAB scores measure the code that runs in the flow.

- `EnsembleSeries` (`detector = "ensemble"`, the default): a seasonal residual (distance to
  the usual value at this time of day, ranked against recent residuals), a shift detector on
  those ranks (their mean surprise over `shift_span` readings, ranked against its own
  history: catches level and variance shifts that no single reading shows) and context
  novelty at several quantization levels (after CAD OSE). The seasonal residual counts only
  when the shape of the last 8 readings is a new category (`ShapeNovelty`, `shape_levels`;
  after ARTime, which alarms only when it creates a category): a large residual of a
  familiar shape is left out. The fused score is the largest of
  the two `rank ** sharpness` and the mean novelty. The last stage turns scores into alerts
  without repeated alarms, in two steps. Per component (alarm deduplication by source): a component
  whose score reached `alert_threshold` in its previous `component_rest_points` readings
  (`shift_rest_points` for the shift detector) is left out of the fusion, unless its score now
  exceeds the highest it reached in that time (escalation: the same source reporting something worse
  is a new alarm). Overall (after CAD OSE's rest period): a fused score at or above
  `alert_threshold` is an alert unless some fused score (of all components) in the previous
  `rest_points` readings reached the threshold too; during that rest the reported score is 0.
  Readings before `min_points` only teach the detectors.
- `EwmaSeries` (`detector = "ewma"`): the EWMA z-score against `z_threshold`, with alerts
  suppressed for `suppress_s` of event time; the reported score is z / (z + z_threshold), so
  its alert threshold on the [0, 1] scale is 0.5.

Both return a `Verdict` per reading and snapshot as plain tuples (an immutable copy); memory
per series is bounded by the config (`rank_window`, `context_capacity`, `season_slots`).

The ensemble ranks with two `WindowSketch`es by default (`rank_sketch_accuracy` 0.1): the
same sliding window of `rank_window` readings, its largest values exact (so every rank that
can raise an alert is the exact window's), the rest in log-spaced bins counted per block. Its
snapshot (format `_SKETCH_FORMAT`, see `EnsembleSeries._sketched_state`) is about 5.5 KB per
warmed series. With `exact_ranks = true` it ranks against exact windows instead
(format `_FORMAT`, see `EnsembleSeries.state`): the seasonal residual window as doubles (8
bytes a reading), the shift detector as its `RankTape` (2 bytes a reading instead of its
window of 8-byte means), about 33 KB. Either snapshot resumes a detector that gives the same
verdicts, bit for bit, as one that never stopped. An exact-window snapshot resumed under the
sketch is converted (its windows pushed into the sketches); older, unversioned snapshots
(`legacy_state`) still load.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from config.models import AnomalyConfig
from operators.anomaly.detectors import (
    ContextNovelty,
    EwmaZScore,
    RankShift,
    RankTape,
    SeasonalResidual,
    ShapeNovelty,
    WindowSketch,
    pack_floats,
    unpack_floats,
)

_FORMAT = 2
"""Version of `EnsembleSeries.state()`'s packed layout (`legacy_state`'s had none)."""
_FORMAT_LEN = 11
"""Format 2 snapshots of 10 fields (from before the shape gate) still load (no shape memory)."""
_SKETCH_FORMAT = 5
"""Layout of `EnsembleSeries.state()` without `exact_ranks` (`WindowSketch`es, no rank
windows). Format 4 (the same without the shape memory) loads with an empty one; format 3
(an earlier sketch with decaying weights) is not read: such a series starts afresh."""
_SKETCH_FORMAT_LEN = 12
_STATE_LEN = 10  # the legacy layout (9 fields before the shape gate, 7 before component rest)
_COMPONENTS = 3  # seasonal residual, residual shift, context novelty


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a series detector concluded about one reading."""

    score: float
    """Anomaly score in [0, 1] (0 while warming up or resting after an alarm)."""
    alert: bool
    """The detector's own decision at its configured threshold."""
    detector: str
    """The component whose evidence dominated (`seasonal_residual`, `context_novelty`,
    `ewma_zscore`)."""
    baseline: float
    """The value the detector expected."""
    raw: float
    """The unscaled statistic: the fused score (ensemble) or the z-score (EWMA)."""
    threshold: float
    """The threshold `raw` is compared with."""


class SeriesDetector(Protocol):
    name: str

    @property
    def n(self) -> int: ...

    def update(self, ts: float, value: float) -> Verdict: ...

    def recent(self) -> tuple[float, ...]: ...

    def evidence(self) -> dict[str, Any]: ...

    def seasonal_baseline(self, ts: float) -> float | None:
        """The usual value at this time of the season (None: unknown, or no seasonal model)."""
        ...

    def state(self) -> tuple[Any, ...]: ...


class EnsembleSeries:
    """Seasonal residual + its rank shift + multi-resolution context novelty, fused, rested."""

    name = "ensemble"

    def __init__(self, cfg: AnomalyConfig, state: tuple[Any, ...] | None = None) -> None:
        self.cfg = cfg
        self.threshold = cfg.alert_threshold
        self.sharpness = cfg.season_sharpness
        self.tape: RankTape | None = None
        if not cfg.exact_ranks:
            self._init_sketched(cfg, state)
            return
        tape_s = None
        if state and isinstance(state[0], int):  # versioned; the legacy layout starts with a tuple
            if state[0] == _FORMAT and len(state) in (_FORMAT_LEN - 1, _FORMAT_LEN):
                state, tape_s = _unpack(state)
            else:
                state = None  # a format this code does not know: start afresh
        if state is not None and len(state) == _STATE_LEN - 3:
            # a snapshot from before per-component rest: no component is resting
            state = (*state, (None,) * _COMPONENTS, (0.0,) * _COMPONENTS)
        if state is not None and len(state) == _STATE_LEN - 1:
            state = (*state, None)  # a snapshot from before the shape gate: no shape memory
        if state is not None and len(state) != _STATE_LEN:
            state = None  # a snapshot of an earlier layout: start afresh
        (
            season_s,
            shift_s,
            contexts_s,
            n,
            last_hit,
            recent,
            parts,
            comp_hit,
            comp_peak,
            shapes_s,
        ) = state or ((None,) * 5 + ((), (), (None,) * _COMPONENTS, (0.0,) * _COMPONENTS, None))
        if contexts_s is not None and len(contexts_s) != len(cfg.context_levels):
            contexts_s = None  # the resolutions changed
        self.season = SeasonalResidual(
            cfg.season_slots, cfg.season_alpha, cfg.rank_window, cfg.season_period_s, season_s
        )
        self.shift: RankShift
        if tape_s is not None and tape_s[:3] == (cfg.shift_span, cfg.rank_window, cfg.rank_window):
            self.tape = RankTape.unpack(tape_s)
            self.shift = self.tape.resume()
        else:
            if tape_s is not None:
                # Packed under another span or window: rebuild the detector it recorded, then
                # carry on from it as from an unversioned snapshot.
                shift_s = RankTape.unpack(tape_s).resume().state()
            self.shift = RankShift(cfg.shift_span, cfg.rank_window, shift_s)
            self.tape = RankTape.after(self.shift, cfg.rank_window, len(self.season.rank))
        self._init_common(
            cfg, contexts_s, n, last_hit, recent, parts, comp_hit, comp_peak, shapes_s
        )

    def _init_common(
        self,
        cfg: AnomalyConfig,
        contexts_s: Any,
        n: int | None,
        last_hit: int | None,
        recent: Any,
        parts: Any,
        comp_hit: Any,
        comp_peak: Any,
        shapes_s: Any,
    ) -> None:
        self.shapes: ShapeNovelty | None = None
        if cfg.shape_levels:
            # (levels, state): categories named under other levels are other categories
            kept = shapes_s[1] if shapes_s is not None and shapes_s[0] == cfg.shape_levels else None
            self.shapes = ShapeNovelty(cfg.shape_levels, cfg.shape_capacity, kept)
        self.contexts = [
            ContextNovelty(lv, order, cfg.context_capacity, s)
            for lv, order, s in zip(
                cfg.context_levels,
                cfg.context_orders,
                contexts_s or (None,) * len(cfg.context_levels),
                strict=True,
            )
        ]
        self.n: int = n or 0
        self.last_hit: int | None = last_hit
        self._recent: deque[float] = deque(recent, maxlen=cfg.evidence_points)
        self.parts: tuple[float, ...] = tuple(parts) or (0.0, 0.0, 0.0)
        # Per component: the reading of its last score at or above the threshold, and the
        # highest score it reached since its rest began (what an escalation must exceed).
        self.comp_hit: list[int | None] = list(comp_hit)
        self.comp_peak: list[float] = list(comp_peak)

    def _init_sketched(self, cfg: AnomalyConfig, state: tuple[Any, ...] | None) -> None:
        """Ranks from two `WindowSketch`es, resumed from a `_SKETCH_FORMAT` snapshot taken
        under the same sketch parameters; a snapshot with exact windows (format 2 or the
        legacy layout) is converted (its windows pushed into the sketches, in order); any
        other (an earlier sketch's format 3) starts the series afresh."""
        params = _sketch_params(cfg)
        if (
            state is not None
            and len(state) == _SKETCH_FORMAT_LEN - 1
            and state[0] == _SKETCH_FORMAT - 1
            and state[1] == params
        ):
            state = (_SKETCH_FORMAT, *state[1:], None)  # before the shape gate: no shape memory
        if state is not None and not (
            len(state) == _SKETCH_FORMAT_LEN and state[0] == _SKETCH_FORMAT and state[1] == params
        ):
            if isinstance(state[0], tuple) or state[0] == _FORMAT:
                exact = cfg.model_copy(update={"exact_ranks": True})
                self._adopt(EnsembleSeries(exact, state))
                return
            state = None
        n, last_hit, parts, comp_hit, comp_peak, recent, season, shift, ctx, shapes = (
            state[2:]
            if state is not None
            else (0, None, (), None, None, b"", None, None, None, None)
        )
        season_s = shift_s = season_r = shift_r = None
        if season is not None:
            season_s, season_r = SeasonalResidual.unpack(season, sketched=True)
            ring, total, count, shift_r = shift
            shift_s = (tuple(unpack_floats(ring)), total, count, ())
            season_r, shift_r = WindowSketch.unpack(season_r), WindowSketch.unpack(shift_r)
        if ctx is not None and len(ctx) != len(cfg.context_levels):
            ctx = None
        self.season = SeasonalResidual(
            cfg.season_slots,
            cfg.season_alpha,
            cfg.rank_window,
            cfg.season_period_s,
            None if season_s is None else (season_s, ()),
            rank=_sketch(cfg, season_r),
        )
        self.shift = RankShift(cfg.shift_span, cfg.rank_window, shift_s, rank=_sketch(cfg, shift_r))
        self._init_common(
            cfg,
            None if ctx is None else tuple(ContextNovelty.unpack(c) for c in ctx),
            n,
            last_hit,
            tuple(unpack_floats(recent)),
            parts,
            comp_hit or (None,) * _COMPONENTS,
            comp_peak or (0.0,) * _COMPONENTS,
            None if shapes is None else (shapes[0], ShapeNovelty.unpack(shapes[1])),
        )

    def _adopt(self, exact: EnsembleSeries) -> None:
        """Carry on from `exact` (a series resumed from an exact-window snapshot): the same
        counters, contexts and slot means, its windows of
        residuals and of shift means pushed into fresh sketches, oldest first."""
        cfg, season, shift = self.cfg, exact.season, exact.shift
        means = tuple(season.slot_mean.items())
        self.season = SeasonalResidual(
            cfg.season_slots,
            cfg.season_alpha,
            cfg.rank_window,
            cfg.season_period_s,
            (means, ()),
            rank=_sketch(cfg),
        )
        ring = (tuple(shift.ring), shift.total, shift.n, ())
        self.shift = RankShift(cfg.shift_span, cfg.rank_window, ring, rank=_sketch(cfg))
        for window, sketch in (
            (season.rank.state(), self.season.rank),
            (shift.rank.state(), self.shift.rank),
        ):
            for v in window:
                sketch.push(v)
        self.contexts = exact.contexts
        self.n, self.last_hit, self.parts = exact.n, exact.last_hit, exact.parts
        self._recent = exact._recent
        self.comp_hit, self.comp_peak = exact.comp_hit, exact.comp_peak
        self.shapes = exact.shapes

    def update(self, ts: float, value: float) -> Verdict:
        baseline = self.season.baseline(ts)
        rank, code = self.season.update_coded(value, ts)
        sharp = self.sharpness
        shapes = self.shapes
        # The new-category gate: the seasonal residual alarms only on a shape not seen before.
        seasonal = rank**sharp if shapes is None or shapes.update(value) else 0.0
        shift_detector = self.shift
        shift = shift_detector.update(rank) ** sharp
        if self.tape is not None:
            self.tape.record(code, shift_detector)
        contexts = self.contexts
        novelty = 0.0
        for c in contexts:
            novelty += c.update(value)
        novelty /= len(contexts)
        self._recent.append(value)
        self.n += 1
        self.parts = (seasonal, shift, novelty)
        thr = self.threshold
        seasonal, shift, novelty = self._dedup(seasonal, shift, novelty, thr)
        if seasonal >= shift and seasonal >= novelty:
            fused, detector = seasonal, "seasonal_residual"
        elif shift >= novelty:
            fused, detector = shift, "residual_shift"
        else:
            fused, detector = novelty, "context_novelty"
        resting = self.last_hit is not None and self.n - self.last_hit <= self.cfg.rest_points
        score = 0.0 if resting or self.n < self.cfg.min_points else fused
        if max(self.parts) >= thr:
            self.last_hit = self.n
        return Verdict(
            score=score,
            alert=score >= thr,
            detector=detector,
            baseline=value if baseline is None else baseline,
            raw=fused,
            threshold=thr,
        )

    def _dedup(
        self, seasonal: float, shift: float, novelty: float, thr: float
    ) -> tuple[float, float, float]:
        """The component scores, those of resting components (not escalating) set to 0."""
        n, cfg = self.n, self.cfg
        rests = (cfg.component_rest_points, cfg.shift_rest_points, cfg.component_rest_points)
        hits, peaks = self.comp_hit, self.comp_peak
        out = []
        for i, p in enumerate((seasonal, shift, novelty)):
            hit, rest = hits[i], rests[i]
            resting = hit is not None and n - hit <= rest
            if resting and p > peaks[i]:
                resting = False  # escalation: worse than anything it reported in this rest
            if p >= thr:
                hits[i] = n
                peaks[i] = max(peaks[i], p) if resting else p
            out.append(0.0 if resting else p)
        return out[0], out[1], out[2]

    def recent(self) -> tuple[float, ...]:
        return tuple(self._recent)

    def evidence(self) -> dict[str, Any]:
        seasonal, shift, novelty = self.parts
        return {
            "seasonal_residual": round(seasonal, 4),
            "residual_shift": round(shift, 4),
            "context_novelty": round(novelty, 4),
            "n": self.n,
        }

    def seasonal_baseline(self, ts: float) -> float | None:
        return self.season.baseline(ts)

    def state(self) -> tuple[Any, ...]:
        """The packed snapshot (format `_FORMAT`): a tuple of numbers, short tuples and bytes.

        `(_FORMAT, n, last_hit, parts, comp_hit, comp_peak, recent, season, tape, contexts,
        shapes)`:
        `recent` as packed doubles; `season` = `SeasonalResidual.pack()` (slot mask, slot
        means, residual window); `tape` = `RankTape.pack()`, from which the shift detector is
        rebuilt, window and all; `contexts` = `ContextNovelty.pack()` per resolution. An
        immutable copy; bounded by `rank_window` (8 bytes a reading, plus 2 for the tape),
        `season_slots` and `context_capacity`.
        """
        if self.tape is None:
            return self._sketched_state()
        return (
            _FORMAT,
            self.n,
            self.last_hit,
            self.parts,
            tuple(self.comp_hit),
            tuple(self.comp_peak),
            pack_floats(self._recent),
            self.season.pack(),
            self.tape.pack(),
            tuple(c.pack() for c in self.contexts),
            None if self.shapes is None else (self.shapes.levels, self.shapes.pack()),
        )

    def _sketched_state(self) -> tuple[Any, ...]:
        """The `_SKETCH_FORMAT` snapshot: `(_SKETCH_FORMAT, (accuracy, blocks, tail, window),
        n, last_hit, parts, comp_hit, comp_peak, recent, (slot mask, slot means, residual
        sketch), (shift ring, total, count, mean sketch), contexts, shapes)`: the sketches as
        `WindowSketch.pack()`, `shapes` as `(shape_levels, ShapeNovelty.pack())` (None: no
        gate)."""
        shift = self.shift
        assert isinstance(shift.rank, WindowSketch)
        return (
            _SKETCH_FORMAT,
            _sketch_params(self.cfg),
            self.n,
            self.last_hit,
            self.parts,
            tuple(self.comp_hit),
            tuple(self.comp_peak),
            pack_floats(self._recent),
            self.season.pack(),
            (pack_floats(shift.ring), shift.total, shift.n, shift.rank.pack()),
            tuple(c.pack() for c in self.contexts),
            None if self.shapes is None else (self.shapes.levels, self.shapes.pack()),
        )


def _sketch_params(cfg: AnomalyConfig) -> tuple[Any, ...]:
    return (cfg.rank_sketch_accuracy, cfg.rank_sketch_blocks, cfg.rank_sketch_tail, cfg.rank_window)


def _sketch(cfg: AnomalyConfig, state: tuple[Any, ...] | None = None) -> WindowSketch:
    return WindowSketch(
        cfg.rank_sketch_accuracy,
        cfg.rank_window,
        cfg.rank_sketch_blocks,
        cfg.rank_sketch_tail,
        state=state,
    )


def _unpack(state: tuple[Any, ...]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """A packed snapshot as the legacy layout (with no shift state) and the packed tape."""
    _, n, last_hit, parts, comp_hit, comp_peak, recent, season, tape, contexts, *shapes = state
    legacy = (
        SeasonalResidual.unpack(season),
        None,
        tuple(ContextNovelty.unpack(c) for c in contexts),
        n,
        last_hit,
        tuple(unpack_floats(recent)),
        parts,
        comp_hit,
        comp_peak,
        None
        if not shapes or shapes[0] is None
        else (shapes[0][0], ShapeNovelty.unpack(shapes[0][1])),
    )
    return legacy, tape


def legacy_state(det: EnsembleSeries) -> tuple[Any, ...]:
    """`det`'s snapshot in the unversioned layout that snapshots had before `_FORMAT`.

    `EnsembleSeries(cfg, legacy_state(det))` resumes `det` exactly (the loader keeps
    accepting it). Exact windows only (`exact_ranks`): a sketched series has
    no unversioned layout.
    """
    if det.tape is None:
        msg = "legacy_state: only a series with exact rank windows has the unversioned layout"
        raise ValueError(msg)
    return (
        det.season.state(),
        det.shift.state(),
        tuple(c.state() for c in det.contexts),
        det.n,
        det.last_hit,
        det.recent(),
        det.parts,
        tuple(det.comp_hit),
        tuple(det.comp_peak),
        None if det.shapes is None else (det.shapes.levels, det.shapes.state()),
    )


class EwmaSeries:
    """The EWMA z-score as a series detector (score z / (z + z_threshold), alert at 0.5)."""

    name = "ewma"

    def __init__(self, cfg: AnomalyConfig, state: tuple[Any, ...] | None = None) -> None:
        self.cfg = cfg
        ewma_s, recent, std = state or (None, (), 0.0)
        self.ewma = EwmaZScore(cfg.ewma_alpha, cfg.z_threshold, cfg.warmup, cfg.suppress_s, ewma_s)
        self._recent: deque[float] = deque(recent, maxlen=cfg.evidence_points)
        self.std: float = std

    @property
    def n(self) -> int:
        return self.ewma.n

    def update(self, ts: float, value: float) -> Verdict:
        baseline, self.std = self.ewma.mean, math.sqrt(self.ewma.var)
        z, alert = self.ewma.update(value, ts)
        self._recent.append(value)
        thr = self.cfg.z_threshold
        return Verdict(
            score=z / (z + thr),
            alert=alert,
            detector="ewma_zscore",
            baseline=baseline,
            raw=z,
            threshold=thr,
        )

    def recent(self) -> tuple[float, ...]:
        return tuple(self._recent)

    def evidence(self) -> dict[str, Any]:
        return {"alpha": self.cfg.ewma_alpha, "std": self.std, "n": self.ewma.n - 1}

    def seasonal_baseline(self, ts: float) -> float | None:
        return None

    def state(self) -> tuple[Any, ...]:
        return (self.ewma.state(), tuple(self._recent), self.std)


def make_series(cfg: AnomalyConfig, state: tuple[Any, ...] | None = None) -> SeriesDetector:
    """The metric-series detector `cfg.detector` names, resumed from `state` if given."""
    if cfg.detector == "ewma":
        return EwmaSeries(cfg, state)
    return EnsembleSeries(cfg, state)
