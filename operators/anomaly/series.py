"""Per-series scoring and alerting: the detectors of `detectors.py` combined into one decision.

`make_series(cfg, state)` builds the metric-series detector that `AnomalyConfig.detector`
names; the pipeline (`operators.anomaly.EntityDetector`) and the benchmark (`bench.nab`) both
call it, so NAB scores measure the code that runs in the flow.

- `EnsembleSeries` (`detector = "ensemble"`, the default): a seasonal residual (distance to
  the usual value at this time of day, ranked against recent residuals), a shift detector on
  those ranks (their mean surprise over `shift_span` readings, ranked against its own
  history: catches level and variance shifts that no single reading shows) and context
  novelty at several quantization levels (after CAD OSE). The fused score is the largest of
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

The ensemble's snapshot is packed (format `_FORMAT`, see `EnsembleSeries.state`): the seasonal
residual window as doubles (8 bytes a reading: a rank is only exact against the exact values),
the shift detector as its `RankTape` (2 bytes a reading instead of its window of 8-byte means),
the rest in a few hundred bytes; with the defaults (`rank_window` 3000) about 33 KiB instead of
59 KiB. A detector resumed from it gives the same verdicts, bit for bit, as one that never
stopped. Older, unversioned snapshots (`legacy_state`) still load.
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
    RankSketch,
    RankTape,
    SeasonalResidual,
    pack_floats,
    unpack_floats,
)

_FORMAT = 2
"""Version of `EnsembleSeries.state()`'s packed layout (`legacy_state`'s had none)."""
_FORMAT_LEN = 10
_SKETCH_FORMAT = 3
"""Layout of `EnsembleSeries.state()` with `rank_sketch_accuracy` set (no rank windows)."""
_SKETCH_FORMAT_LEN = 11
_STATE_LEN = 9  # the legacy layout
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
        if cfg.rank_sketch_accuracy is not None:
            self._init_sketched(cfg, state)
            return
        tape_s = None
        if state and isinstance(state[0], int):  # versioned; the legacy layout starts with a tuple
            if state[0] == _FORMAT and len(state) == _FORMAT_LEN:
                state, tape_s = _unpack(state)
            else:
                state = None  # a format this code does not know: start afresh
        if state is not None and len(state) == _STATE_LEN - 2:
            # a snapshot from before per-component rest: no component is resting
            state = (*state, (None,) * _COMPONENTS, (0.0,) * _COMPONENTS)
        if state is not None and len(state) != _STATE_LEN:
            state = None  # a snapshot of an earlier layout: start afresh
        season_s, shift_s, contexts_s, n, last_hit, recent, parts, comp_hit, comp_peak = state or (
            (None,) * 5 + ((), (), (None,) * _COMPONENTS, (0.0,) * _COMPONENTS)
        )
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
        self._init_common(cfg, contexts_s, n, last_hit, recent, parts, comp_hit, comp_peak)

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
    ) -> None:
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
        """Ranks from two `RankSketch`es, resumed from a `_SKETCH_FORMAT` snapshot (any other
        snapshot, exact windows included, is not converted: the series starts afresh)."""
        acc, every = cfg.rank_sketch_accuracy or 0.0, cfg.rank_window
        ok = (
            state is not None
            and len(state) == _SKETCH_FORMAT_LEN
            and state[0] == _SKETCH_FORMAT
            and state[1] == acc
        )
        if not ok or state is None:
            state = (
                _SKETCH_FORMAT,
                acc,
                0,
                None,
                (),
                (None,) * _COMPONENTS,
                (0.0,) * _COMPONENTS,
                b"",
                None,
                None,
                None,
            )
        _, _, n, last_hit, parts, comp_hit, comp_peak, recent, season, shift, ctx = state
        season_s = shift_s = None
        season_r = shift_r = None
        if season is not None:
            mask, means, season_r = season
            season_s = (SeasonalResidual.unpack((mask, means, b""))[0], ())
            ring, total, count, shift_r = shift
            shift_s = (tuple(unpack_floats(ring)), total, count, ())
            season_r, shift_r = RankSketch.unpack(season_r), RankSketch.unpack(shift_r)
        if ctx is not None and len(ctx) != len(cfg.context_levels):
            ctx = None
        self.season = SeasonalResidual(
            cfg.season_slots,
            cfg.season_alpha,
            every,
            cfg.season_period_s,
            season_s,
            rank=RankSketch(acc, every, state=season_r),
        )
        self.shift = RankShift(
            cfg.shift_span, every, shift_s, rank=RankSketch(acc, every, state=shift_r)
        )
        contexts_s = None if ctx is None else tuple(ContextNovelty.unpack(c) for c in ctx)
        self._init_common(
            cfg,
            contexts_s,
            n,
            last_hit,
            tuple(unpack_floats(recent)),
            parts,
            comp_hit,
            comp_peak,
        )

    def update(self, ts: float, value: float) -> Verdict:
        baseline = self.season.baseline(ts)
        rank, code = self.season.update_coded(value, ts)
        sharp = self.sharpness
        seasonal = rank**sharp
        shift_detector = self.shift
        shift = shift_detector.update(rank) ** sharp
        if self.tape is not None:
            self.tape.record(code, shift_detector)
        contexts = self.contexts
        novelty = sum(c.update(value) for c in contexts) / len(contexts)
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

        `(_FORMAT, n, last_hit, parts, comp_hit, comp_peak, recent, season, tape, contexts)`:
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
        )

    def _sketched_state(self) -> tuple[Any, ...]:
        """The `_SKETCH_FORMAT` snapshot: `(_SKETCH_FORMAT, accuracy, n, last_hit, parts,
        comp_hit, comp_peak, recent, (slot mask, slot means, residual sketch), (shift ring,
        total, count, mean sketch), contexts)`; the sketches as `RankSketch.pack()`."""
        mask, means, ranks = self.season.pack()
        shift = self.shift
        contexts = tuple(c.pack() for c in self.contexts)
        return (
            _SKETCH_FORMAT,
            self.cfg.rank_sketch_accuracy,
            self.n,
            self.last_hit,
            self.parts,
            tuple(self.comp_hit),
            tuple(self.comp_peak),
            pack_floats(self._recent),
            (mask, means, ranks),
            (pack_floats(shift.ring), shift.total, shift.n, shift.rank.pack()),
            contexts,
        )


def _unpack(state: tuple[Any, ...]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """A packed snapshot as the legacy layout (with no shift state) and the packed tape."""
    _, n, last_hit, parts, comp_hit, comp_peak, recent, season, tape, contexts = state
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
    )
    return legacy, tape


def legacy_state(det: EnsembleSeries) -> tuple[Any, ...]:
    """`det`'s snapshot in the unversioned layout that snapshots had before `_FORMAT`.

    `EnsembleSeries(cfg, legacy_state(det))` resumes `det` exactly (the loader keeps
    accepting it); `bench.snapshot` measures the packed format against it.
    """
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
