"""Anomaly detection per entity: metric series and busy entities' event rates (detector
ensemble), event rates of the others (windows and a threshold rule).

Pure logic, combined per entity key by one keyed `stateful_batch` step (`anomaly.detect`):

- Metric readings (`payload["value"]`, event time `Event.ts`) go through the series detector
  that `AnomalyConfig.detector` names (`series.make_series`): the default `ensemble` (seasonal
  residual, a shift detector on its ranks and context novelty, fused, with a rest period;
  see `series.py` and `detectors.py`, measured on NAB with `bench/nab.py`) or the cheap
  `ewma` z-score.
- `RateWindows`: event-time tumbling windows counting events per entity. A window closes when
  the entity's watermark passes its end (the watermark is the newest event time minus the
  allowed lateness, advanced by wall time while the entity is idle, like Bytewax's
  `EventClock` with a system-time wait). A closed window whose count is at least `rate_factor`
  times the EWMA of earlier windows (and at least `rate_min_count`) is a burst; one whose
  count fell to `1 / rate_factor` of a baseline of at least `rate_min_count` is a drop. Events
  older than the watermark are late: they do not count and come out on the `late` stream.
  At the end of the input (`on_eof`) every open window is reported as a watermark at
  +infinity would close it, so a finite input's last burst is an alert; the windows stay
  open, because the end of input may be a graceful stop that a restart continues (see
  `RateWindows.report_open`).
- `RateSeries`: the closed windows' counts of a *busy* entity as a series, through the same
  series detector as metric readings (`make_series(cfg)`: the ensemble by default), one
  reading per window (ts = the window's start), silent windows included as zeros (a drop is
  a run of low counts). The series reads `log1p(count)`: a rate that triples and one that
  falls to a third are equally far from the usual, and an outage (zeros) stays visible after
  a large burst (with raw counts the burst's residuals outrank every later drop for
  `rank_window` windows; operators/anomaly/NAB.md). Which entities get one, and for how long:

  - An entity gets a rate series when a window closes whose baseline (the EWMA of its
    earlier windows) is at least `rate_series_min_baseline` (20 events per window) and
    `rate_series` is on. Chat users with a few events now and then never reach it, so they
    never hold an ensemble (~38 kB pickled, against ~0.6 kB for windows and rule).
  - Until the series is warm (`min_points` windows, and one season, `season_period_s /
    rate_window_s`, since the seasonal residual only knows the usual rate at this time of
    day after one; `warmup + 1` with `ewma`), the threshold rule raises the entity's rate
    alerts as for every other entity, under its names `event_rate` / `event_rate_drop`; the
    series learns meanwhile. Once warm, the series alone decides: `<detector>/event_rate/
    <component>` (e.g. `ensemble/event_rate/seasonal_residual`), `window.kind` burst or drop
    from the count against the expected one (the seasonal baseline), with the ensemble's
    rest periods (no repeated alarms), and `change` named by the series' own
    `ChangeTracker` (held like a metric alert's, for `change_hold_points` windows at most;
    its levels in counts, its other statistics on the `log1p` readings).
  - While an entity with a series is silent, its windows close on wall time as zero readings
    (`RateWindows.close_silent`; events of those windows are late from then on), so an
    outage is seen while it lasts. After `rate_series_quiet_windows` (180) windows in a row
    with fewer than `rate_series_min_baseline / rate_factor` events the series is dropped
    (its held alert goes out) and the entity is back on the rule: state stays bounded.
  - At the end of input the open windows go through a copy of the series (its state does
    not move), as `report_open` does for the rule.

Every alert carries its evidence for the LLM "explain" route: recent values, baseline, score,
threshold and the detector that raised it.

State per entity (snapshotted as plain tuples and small dicts, an immutable copy): the series
detector's statistics (bounded by `rank_window`, `context_capacity`, `season_slots`), the open
windows' counts (at most a few) and which of them were already reported at an end of input,
the window baseline, the wall time the detector last read (`now`), and for busy entities the
rate series (`rate_series`: its detector's state, its change tracker, the quiet run and when
its held alert was held; snapshots without it load as an entity without one). It is discarded after
`idle_ttl_s` of wall time without events.

Downtime does not count. The watermark of an idle entity and its idle expiry run on wall
time, so a state resumed after a long stop would see every replayed reading as late and
might expire at once. A detector rebuilt from a snapshot is therefore given the wall time of
the restart (`EntityDetector(cfg, state, now=...)`) and moves its wall-clock stamps (a rate
series' held alert's too) by the time since its last reading: the stop did not happen for
it, consistently with Bytewax replaying every event after that snapshot. Snapshots without
`now` (older ones) use the wall time of their last event instead.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeGuard

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from config.models import AnomalyConfig
from core.clock import Clock, wake_at
from core.records import Alert, Event, Kind
from operators.anomaly.detectors import ContextNovelty, EwmaZScore, RankShift, SeasonalResidual
from operators.anomaly.kinds import ChangeTracker
from operators.anomaly.series import (
    EnsembleSeries,
    EwmaSeries,
    SeriesDetector,
    Verdict,
    make_series,
)

__all__ = [
    "AnomalyOut",
    "ContextNovelty",
    "EnsembleSeries",
    "EntityDetector",
    "EwmaSeries",
    "EwmaZScore",
    "Flagged",
    "Late",
    "RankShift",
    "RateSeries",
    "RateWindows",
    "SeasonalResidual",
    "SeriesDetector",
    "Verdict",
    "detect_anomalies",
    "make_series",
]

_WHAT = {
    "seasonal_residual": "far from its usual level at this time of day",
    "residual_shift": "part of a sustained shift away from its usual level or spread",
    "context_novelty": "a pattern not seen in its recent past",
}
_MAX_WINDOW_IDS = 10
_MAX_GAP_WINDOWS = 1000


def _alert_id(detector: str, key: str, ts: float) -> str:
    return "a-" + hashlib.blake2b(f"{detector}|{key}|{ts!r}".encode(), digest_size=10).hexdigest()


@dataclass(frozen=True)
class ClosedWindow:
    start: float
    end: float
    count: int
    baseline: float
    alert: bool
    event_ids: tuple[str, ...]
    drop: bool = False
    """The alert is a drop (count far below the baseline), not a burst."""
    silent_before: int = 0
    """Silent windows (no event) between the previous closed window and this one (at most
    `_MAX_GAP_WINDOWS`)."""
    reported: bool = False
    """Its alert already went out at an end of input (`report_open`): raise nothing now."""
    cut_short: bool = False
    """Closed by an end of input while its entity's newest event is in it (it may grow)."""


class RateWindows:
    """Event-time tumbling windows of event counts for one entity, with a rate baseline.

    Its one wall-clock stamp is `wall_at_max`, when the newest event arrived: wall time since
    then advances the watermark of an idle entity. `shift` moves it (on a resume).
    """

    def __init__(self, cfg: AnomalyConfig, state: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.size = cfg.rate_window_s
        self.lateness = cfg.allowed_lateness_s
        self.alpha = 0.3
        self.factor = cfg.rate_factor
        self.min_count = cfg.rate_min_count
        self.warmup = cfg.rate_warmup_windows
        s = state or {}
        # open windows: start -> [count, ids...]
        self.open: dict[float, list[Any]] = {k: list(v) for k, v in s.get("open", {}).items()}
        self.max_ts: float = s.get("max_ts", -math.inf)
        self.wall_at_max: float = s.get("wall_at_max", 0.0)
        self.baseline: float = s.get("baseline", 0.0)
        self.closed: int = s.get("closed", 0)
        self.last_end: float | None = s.get("last_end")
        # Starts of open windows whose alert already went out at an end of input (a frozenset:
        # the empty one is shared, so the many entities that never report one cost nothing).
        self.reported: frozenset[float] = frozenset(s.get("reported", ()))

    def shift(self, dt: float) -> None:
        """Move the wall-clock stamp by `dt` seconds (a resume after `dt` of downtime)."""
        self.wall_at_max += dt

    def watermark(self, now: float) -> float:
        if self.max_ts == -math.inf:
            return -math.inf
        return self.max_ts - self.lateness + max(0.0, now - self.wall_at_max)

    def add(self, ts: float, event_id: str, now: float) -> bool:
        """Count an event; False if it is late (its window already closed)."""
        start = ts - (ts % self.size)
        if start + self.size <= self.watermark(now) or (
            self.last_end is not None and start < self.last_end
        ):
            return False
        slot = self.open.get(start)
        if slot is None:
            slot = self.open[start] = [0]
        slot[0] += 1
        if len(slot) <= _MAX_WINDOW_IDS:
            slot.append(event_id)
        if ts > self.max_ts:
            self.max_ts = ts
            self.wall_at_max = now
        return True

    def close_due(self, now: float) -> list[ClosedWindow]:
        """Close every open window whose end the watermark has passed, oldest first.

        A window already reported at an end of input (`report_open`) closes without a second
        alert.
        """
        return self._close(self.watermark(now))

    def report_open(self) -> list[ClosedWindow]:
        """Every open window as a watermark at +infinity would close it, without closing it.

        Called at the end of the input. The windows stay open in the state: the end may be a
        graceful stop, and after the restart the same windows go on counting (closing them
        would make the rest of their events late). Their alerts are remembered, so neither
        the restart's real close nor a second end of input raises them again. The window
        holding the newest event was cut short by the end of the input, not by the entity:
        it can be a burst (its count only grows) but never a drop.
        """
        closed = self.trial_close()
        self.mark_reported(w.start for w in closed if w.alert)
        return closed

    def trial_close(self) -> list[ClosedWindow]:
        """Every open window as a watermark at +infinity would close it, on a copy: this
        state is unchanged (`report_open` without remembering the alerts)."""
        trial = RateWindows(self.cfg, self.state())
        return trial._close(math.inf, cut_short_after=self.max_ts)

    def mark_reported(self, starts: Iterable[float]) -> None:
        """Remember that the alerts of these open windows went out at an end of input."""
        self.reported |= set(starts)

    def close_silent(self, now: float, limit: int) -> int:
        """Close up to `limit` silent windows (no event) that the watermark has passed after
        the last closed one, as a later close would count them (the baseline decays), and
        return how many (they start at the old `last_end`). Their events would be late from
        now on. Called after `close_due`, for entities with a rate series only: a series
        sees a busy entity's silence while it lasts."""
        if self.last_end is None or self.last_end in self.open:
            return 0  # (the hot path: a busy entity's next window is open)
        wm = self.watermark(now)
        first_open = min(self.open) if self.open else math.inf
        n = 0
        while n < limit and self.last_end + self.size <= min(wm, first_open):
            self.baseline *= 1 - self.alpha
            self.closed += 1
            self.last_end += self.size
            n += 1
        return n

    def next_silent_wall(self) -> float | None:
        """Wall time at which the watermark passes the next silent window (none open)."""
        if self.open or self.last_end is None or self.max_ts == -math.inf:
            return None
        return self.wall_at_max + (self.last_end + self.size - (self.max_ts - self.lateness))

    def _close(self, wm: float, cut_short_after: float = math.inf) -> list[ClosedWindow]:
        out = []
        for start in sorted(self.open):
            end = start + self.size
            if end > wm:
                break
            slot = self.open.pop(start)
            # Silent windows between the last closed one and this one count as zero.
            gaps = 0
            if self.last_end is not None:
                gaps = max(min(int((start - self.last_end) // self.size), _MAX_GAP_WINDOWS), 0)
                for _ in range(gaps):
                    self.baseline *= 1 - self.alpha
                    self.closed += 1
            count = slot[0]
            baseline = self.baseline
            warm = self.closed >= self.warmup
            burst = warm and count >= self.min_count and count >= self.factor * max(baseline, 1.0)
            drop = (
                warm
                and baseline >= self.min_count
                and count * self.factor <= baseline
                and end <= cut_short_after
            )
            alert = burst or drop
            reported = start in self.reported
            if reported:
                alert = False  # raised already, at an end of input
                self.reported -= {start}
            out.append(
                ClosedWindow(
                    start,
                    end,
                    count,
                    baseline,
                    alert,
                    tuple(slot[1:]),
                    drop,
                    silent_before=gaps,
                    reported=reported,
                    cut_short=end > cut_short_after,
                )
            )
            self.baseline = (
                count if self.closed == 0 else baseline + self.alpha * (count - baseline)
            )
            self.closed += 1
            self.last_end = end
        return out

    def next_close_wall(self) -> float | None:
        """Wall time at which the oldest open window closes if no event arrives."""
        if not self.open:
            return None
        end = min(self.open) + self.size
        return self.wall_at_max + (end - (self.max_ts - self.lateness))

    def state(self) -> dict[str, Any]:
        out = {
            "open": {k: tuple(v) for k, v in self.open.items()},
            "max_ts": self.max_ts,
            "wall_at_max": self.wall_at_max,
            "baseline": self.baseline,
            "closed": self.closed,
            "last_end": self.last_end,
        }
        if self.reported:
            out["reported"] = tuple(sorted(self.reported))
        return out


class RateSeries:
    """A busy entity's window counts as a series through the series detector (`make_series`),
    with its own change tracker: see the module docstring for when an entity has one.

    `quiet` counts the windows in a row with fewer than `rate_series_min_baseline /
    rate_factor` events; `held_wall` is when the tracker's held alert was held (wall clock).
    Its state: `(detector, series state, tracker state, quiet, held_wall)`.
    """

    __slots__ = ("changes", "held_wall", "quiet", "quiet_below", "series", "warm_at")

    def __init__(self, cfg: AnomalyConfig, state: tuple[Any, ...] | None = None) -> None:
        if state is not None and state[0] != cfg.detector:
            state = None  # taken under another detector choice: start afresh
        _, series, change, quiet, held_wall = state or (cfg.detector, None, None, 0, None)
        self.series: SeriesDetector = make_series(cfg, series)
        self.changes = ChangeTracker(
            cfg.change_hold_points,
            change,
            profile=self.series.seasonal_baseline,
            period=cfg.season_period_s,
        )
        self.quiet: int = quiet
        self.held_wall: float | None = held_wall
        self.quiet_below = cfg.rate_series_min_baseline / cfg.rate_factor
        # Windows after which the series' alerts replace the threshold rule's: the EWMA
        # z-score alerts from its `warmup + 1`-th reading; the ensemble from `min_points`, but
        # a rate series waits for one season (`season_period_s`) too, since its seasonal
        # residual only knows the usual rate at this time of day after one (the first day's
        # alerts were mostly false: operators/anomaly/NAB.md).
        season = math.ceil(cfg.season_period_s / cfg.rate_window_s)
        self.warm_at = cfg.warmup + 1 if cfg.detector == "ewma" else max(cfg.min_points, season)

    @property
    def warm(self) -> bool:
        return self.series.n >= self.warm_at

    def update(self, ts: float, count: int) -> Verdict:
        """The verdict on one window's count; the series reads `log1p(count)` (its baseline
        too: `expm1` of it is the expected count)."""
        return self.series.update(ts, math.log1p(count))

    def state(self) -> tuple[Any, ...]:
        return (
            self.series.name,
            self.series.state(),
            self.changes.state(),
            self.quiet,
            self.held_wall,
        )


def _in_counts(alerts: list[Alert]) -> list[Alert]:
    """Rate alerts whose change was named on `log1p(count)` readings: its levels as counts
    (`before_level`, `after_level`), the rest (`scale`, `z`, `slope`...) on those readings,
    as `readings` says."""
    out = []
    for a in alerts:
        c = a.change
        if c is None or "readings" in c:
            out.append(a)
            continue
        c = {**c, "readings": "log1p_count"}
        for k in ("before_level", "after_level"):
            if k in c:
                c[k] = round(math.expm1(c[k]), 3)
        out.append(replace(a, change=c))
    return out


@dataclass(frozen=True)
class Late:
    """An event that arrived after its window closed (internal to this operator)."""

    event: Event


Flagged = Event | Alert | Late
"""Output of the detector step: events in time pass unwrapped (the hot path)."""


class EntityDetector:
    """Both detectors for one entity key (and a busy entity's rate series, `rates`: see the
    module docstring); pure, clock injected.

    `state` is a snapshot (`state()`) to resume. `now`, given with it, is the wall time of
    the resume: the wall-clock stamps (`last_wall`, the rate windows' `wall_at_max`) move by
    the time from the snapshot's last reading of the clock (`state["now"]`, or its last
    event's `last_wall` in snapshots without it) to `now`, so the downtime neither makes the
    replayed events late nor expires the state. Without `now` the stamps are kept as they
    are.

    A reading two minutes after the snapshot's, resumed after two minutes of downtime, is in
    time; resumed without the restart's wall time it would be late (lateness 30 s):

    >>> from config.models import AnomalyConfig
    >>> from core.records import Event, Kind
    >>> def reading(i):
    ...     return Event(f"m{i}", "t[0]@0", "acme", Kind.METRIC, "cpu", 1000.0 + 10 * i,
    ...                  {"value": 1.0, "unit": None, "tags": {}}, 0.0)
    >>> cfg = AnomalyConfig(detector="ewma", allowed_lateness_s=30.0)
    >>> det = EntityDetector(cfg)
    >>> _ = det.process([reading(0)], now=5000.0)
    >>> restart = 5000.0 + 120.0
    >>> resumed = EntityDetector(cfg, det.state(), now=restart)
    >>> [type(f).__name__ for f in resumed.process([reading(1)], now=restart)]
    ['Event']
    >>> unshifted = EntityDetector(cfg, det.state())
    >>> [type(f).__name__ for f in unshifted.process([reading(1)], now=restart)]
    ['Late']
    """

    def __init__(
        self, cfg: AnomalyConfig, state: dict[str, Any] | None = None, now: float | None = None
    ) -> None:
        s = state or {}
        self.cfg = cfg
        series = s.get("series")
        # A snapshot taken under another detector choice cannot be resumed: start afresh.
        if series is not None and series[0] != cfg.detector:
            series = None
        self.series: SeriesDetector = make_series(cfg, series[1] if series else None)
        self.rate = RateWindows(cfg, s.get("rate"))
        # The kind of each metric alert's change (an alert waits here for readings after it).
        self.changes = ChangeTracker(
            cfg.change_hold_points,
            s.get("change") if series else None,
            profile=self.series.seasonal_baseline,
            period=cfg.season_period_s,
        )
        self.held_wall: float | None = s.get("held_wall") if self.changes.held else None
        # A busy entity's event-rate series (None for most: see the module docstring).
        rates = s.get("rate_series")
        self.rates: RateSeries | None = None
        if rates is not None and cfg.rate_series:
            self.rates = RateSeries(cfg, rates)
        self.last_wall: float = s.get("last_wall", 0.0)
        # The last wall time read (events, wake-ups, end of input): where a resume continues.
        self.now: float = s.get("now", self.last_wall)
        if state is not None and now is not None:
            dt = now - self.now
            self.last_wall += dt
            self.rate.shift(dt)
            if self.held_wall is not None:
                self.held_wall += dt
            if self.rates is not None and self.rates.held_wall is not None:
                self.rates.held_wall += dt
            self.now = now
        self.tenant: str = s.get("tenant", "")
        self.entity: str = s.get("entity", "")
        self.source: str = s.get("source", "")

    def process(self, events: list[Event], now: float) -> list[Flagged]:
        out: list[Flagged] = []
        self.last_wall = now
        for e in events:
            self.tenant, self.entity, self.source = e.tenant, e.entity, e.source
            if not self.rate.add(e.ts, e.event_id, now):
                out.append(Late(e))
                continue
            out.append(e)
            if e.kind is Kind.METRIC:
                value = e.payload["value"]
                verdict = self.series.update(e.ts, value)
                out.extend(self.changes.observe(e.ts, value, verdict.baseline))
                if self.changes.held is None:
                    self.held_wall = None
                if verdict.alert:
                    out.extend(self.changes.hold(self._metric_alert(e, value, verdict)))
                    if self.changes.held is not None and self.held_wall is None:
                        self.held_wall = now
        out.extend(self.tick(now))
        return out

    def tick(self, now: float) -> list[Alert]:
        self.now = now
        alerts = self._rate_windows(self.rate.close_due(now), now)
        rates = self.rates
        if rates is not None:
            # A busy entity's silence: the windows the watermark passed are zero readings.
            start = self.rate.last_end
            n = self.rate.close_silent(now, self.cfg.rate_series_quiet_windows - rates.quiet)
            if n and start is not None:
                alerts.extend(self._silent(rates, start, n, now))
        release = self.release_at()
        if release is not None and now >= release:
            # The series stopped reporting: name the held alert from what there is.
            if self.held_wall is not None and now >= self.held_wall + self.cfg.change_hold_s:
                alerts.extend(self.changes.flush())
                self.held_wall = None
            rates = self.rates
            at = None if rates is None else rates.held_wall
            if rates is not None and at is not None and now >= at + self.cfg.change_hold_s:
                alerts.extend(_in_counts(rates.changes.flush()))
                rates.held_wall = None
        return alerts

    def release_at(self) -> float | None:
        """When a held metric or rate alert goes out without more readings (wall clock)."""
        held = self.held_wall
        rates_held = None if self.rates is None else self.rates.held_wall
        if rates_held is not None and (held is None or rates_held < held):
            held = rates_held
        return None if held is None else held + self.cfg.change_hold_s

    def next_wake(self) -> float | None:
        """The earliest wall time something is due without events: a window closing, a held
        alert's release or, for an entity with a rate series, a silent window passing."""
        due = [self.rate.next_close_wall(), self.release_at()]
        if self.rates is not None:
            due.append(self.rate.next_silent_wall())
        times = [t for t in due if t is not None]
        return min(times) if times else None

    def flush(self, now: float) -> list[Alert]:
        """At the end of the input: close what is due, then report the windows still open
        (`RateWindows.report_open`: on a copy of the rate series too, if the entity has one)
        and the metric and rate alerts still held for their change."""
        alerts = self.tick(now)
        if self.rates is not None:
            alerts.extend(_in_counts(self.rates.changes.flush()))
            self.rates.held_wall = None
        # The open windows through a copy of the rate series, if there is one (the windows
        # stay open, the series unchanged); the windows that alerted are remembered.
        kept, held = self.rates, self.held_wall
        self.rates = None if kept is None else RateSeries(self.cfg, kept.state())
        raised = self._rate_windows(self.rate.trial_close(), now)
        if self.rates is not None:
            raised.extend(_in_counts(self.rates.changes.flush()))
        self.rates, self.held_wall = kept, held
        self.rate.mark_reported(
            a.window["start"] for a in raised if a.window["start"] in self.rate.open
        )
        alerts.extend(raised)
        alerts.extend(self.changes.flush())
        self.held_wall = None
        return alerts

    def _rate_windows(self, closed: list[ClosedWindow], now: float) -> list[Alert]:
        """The alerts of closed windows: from the rate series once it is warm, from the
        threshold rule before (and for entities without one)."""
        cfg = self.cfg
        alerts: list[Alert] = []
        for w in closed:
            rates = self.rates
            if rates is not None and w.silent_before:
                alerts.extend(
                    self._silent(
                        rates, w.start - w.silent_before * self.rate.size, w.silent_before, now
                    )
                )
                rates = self.rates
            if rates is None and cfg.rate_series and w.baseline >= cfg.rate_series_min_baseline:
                rates = self.rates = RateSeries(cfg)
            if rates is None:
                if w.alert:
                    alerts.append(self._rate_alert(w))
                continue
            v = rates.update(w.start, w.count)
            if not rates.warm:
                if w.alert:
                    alerts.append(self._rate_alert(w))
                alerts.extend(self._observe(rates, w.start, w.count, v, None, now))
            else:
                alert = None
                if v.alert and not w.reported:
                    alert = self._series_rate_alert(rates, w, v)
                    if w.cut_short and alert.window["kind"] == "drop":
                        alert = None  # the end of input cut the window short
                alerts.extend(self._observe(rates, w.start, w.count, v, alert, now))
            rates.quiet = rates.quiet + 1 if w.count < rates.quiet_below else 0
            if rates.quiet >= cfg.rate_series_quiet_windows:
                alerts.extend(self._drop_rates(rates))
        return alerts

    def _observe(
        self, rates: RateSeries, ts: float, count: int, v: Verdict, alert: Alert | None, now: float
    ) -> list[Alert]:
        out = rates.changes.observe(ts, math.log1p(count), v.baseline)
        if rates.changes.held is None:
            rates.held_wall = None
        if alert is not None:
            out.extend(rates.changes.hold(alert))
            if rates.changes.held is not None and rates.held_wall is None:
                rates.held_wall = now
        return _in_counts(out)

    def _silent(self, rates: RateSeries, start: float, n: int, now: float) -> list[Alert]:
        """`n` silent windows from `start` through the rate series (zero readings), until
        it has been quiet for `rate_series_quiet_windows` and is dropped."""
        size, cfg = self.rate.size, self.cfg
        alerts: list[Alert] = []
        for i in range(min(n, cfg.rate_series_quiet_windows - rates.quiet)):
            w = ClosedWindow(
                start + i * size, start + (i + 1) * size, 0, self.rate.baseline, False, ()
            )
            v = rates.update(w.start, 0)
            alert = self._series_rate_alert(rates, w, v) if v.alert and rates.warm else None
            alerts.extend(self._observe(rates, w.start, 0, v, alert, now))
            rates.quiet += 1
        if rates.quiet >= cfg.rate_series_quiet_windows:
            alerts.extend(self._drop_rates(rates))
        return alerts

    def _drop_rates(self, rates: RateSeries) -> list[Alert]:
        """The entity went quiet: its rate series goes, its held alert goes out."""
        self.rates = None
        return _in_counts(rates.changes.flush())

    def _metric_alert(self, e: Event, value: float, v: Verdict) -> Alert:
        series = self.series
        if v.detector == "ewma_zscore":
            # The EWMA alert keeps its historical shape: the score is the z-score.
            score, threshold = v.raw, v.threshold
            window = series.evidence()
            message = (
                f"{e.entity}: value {value:g} is {v.raw:.1f} standard deviations from its "
                f"baseline {v.baseline:g}"
            )
        else:
            score, threshold = v.score, v.threshold
            window = {"component": v.detector, **series.evidence()}
            what = _WHAT.get(v.detector, "a pattern not seen in its recent past")
            message = (
                f"{e.entity}: value {value:g} is {what} (expected about {v.baseline:g}; "
                f"anomaly score {v.score:.3f} >= {v.threshold:g})"
            )
        window["recent"] = list(series.recent())
        return Alert(
            alert_id=_alert_id(v.detector, e.tenant + "/" + e.entity, e.ts),
            detector=v.detector if v.detector == "ewma_zscore" else f"{series.name}/{v.detector}",
            tenant=e.tenant,
            entity=e.entity,
            ts=e.ts,
            score=round(score, 3),
            value=value,
            baseline=v.baseline,
            threshold=threshold,
            window=window,
            event_ids=(e.event_id,),
            source=e.source,
            message=message,
        )

    def _rate_alert(self, w: ClosedWindow) -> Alert:
        ratio = w.count / max(w.baseline, 1.0)
        kind = "drop" if w.drop else "burst"
        return Alert(
            alert_id=_alert_id("event_rate", self.tenant + "/" + self.entity, w.start),
            detector="event_rate_drop" if w.drop else "event_rate",
            tenant=self.tenant,
            entity=self.entity,
            ts=w.end,
            score=round(ratio, 3),
            value=float(w.count),
            baseline=w.baseline,
            threshold=1 / self.cfg.rate_factor if w.drop else self.cfg.rate_factor,
            window={"start": w.start, "end": w.end, "size_s": self.rate.size, "kind": kind},
            event_ids=w.event_ids,
            source=self.source,
            message=(
                f"{self.entity}: {w.count} events in {self.rate.size:g} s, "
                f"{ratio:.1f}x its usual {w.baseline:.1f} ({kind})"
            ),
        )

    def _series_rate_alert(self, rates: RateSeries, w: ClosedWindow, v: Verdict) -> Alert:
        """A rate alert of the rate series: a burst or a drop against what it expected (its
        seasonal baseline; the window baseline where it has none)."""
        series = rates.series
        expected = math.expm1(v.baseline)
        if v.baseline == math.log1p(w.count):  # no seasonal baseline yet: the window's
            expected = w.baseline
        kind = "drop" if w.count < expected else "burst"
        if v.detector == "ewma_zscore":
            score, what = v.raw, f"{v.raw:.1f} standard deviations from its usual rate"
        else:
            what = _WHAT.get(v.detector, "a pattern not seen in its recent past")
            score, what = v.score, f"{what} (anomaly score {v.score:.3f} >= {v.threshold:g})"
        detector = f"{series.name}/event_rate/{v.detector}"
        window = {
            "start": w.start,
            "end": w.end,
            "size_s": self.rate.size,
            "kind": kind,
            "count": w.count,
            "baseline": round(expected, 3),
            "component": v.detector,
            **series.evidence(),
            "recent": [round(math.expm1(x)) for x in series.recent()],
        }
        return Alert(
            alert_id=_alert_id(detector, self.tenant + "/" + self.entity, w.start),
            detector=detector,
            tenant=self.tenant,
            entity=self.entity,
            ts=w.end,
            score=round(score, 3),
            value=float(w.count),
            baseline=expected,
            threshold=v.threshold,
            window=window,
            event_ids=w.event_ids,
            source=self.source,
            message=(
                f"{self.entity}: {w.count} events in {self.rate.size:g} s is {what}; "
                f"expected about {expected:.1f} ({kind})"
            ),
        )

    def expires_at(self) -> float:
        return self.last_wall + self.cfg.idle_ttl_s

    def state(self) -> dict[str, Any]:
        out = {
            "series": (self.cfg.detector, self.series.state()),
            "rate": self.rate.state(),
            "change": self.changes.state(),
            "held_wall": self.held_wall,
            "last_wall": self.last_wall,
            "now": self.now,
            "tenant": self.tenant,
            "entity": self.entity,
            "source": self.source,
        }
        if self.rates is not None:
            out["rate_series"] = self.rates.state()
        return out


class _DetectLogic(StatefulBatchLogic[Event, Flagged, dict[str, Any]]):
    def __init__(self, det: EntityDetector, clock: Clock) -> None:
        self.det = det
        self.clock = clock

    def on_batch(self, values: list[Event]) -> tuple[Iterable[Flagged], bool]:
        return self.det.process(values, self.clock()), self.RETAIN

    def on_notify(self) -> tuple[Iterable[Flagged], bool]:
        now = self.clock()
        alerts: list[Flagged] = list(self.det.tick(now))
        idle = now >= self.det.expires_at() and not self.det.rate.open
        return alerts, self.DISCARD if idle else self.RETAIN

    def on_eof(self) -> tuple[Iterable[Flagged], bool]:
        # Without this, a burst in a window still open when a finite input ends is never
        # raised: the watermark moves only with events or wall time, and the flow ends first.
        return self.det.flush(self.clock()), self.RETAIN

    def notify_at(self) -> datetime | None:
        at = self.det.expires_at()
        due = self.det.next_wake()
        return wake_at(at if due is None else min(at, due))

    def snapshot(self) -> dict[str, Any]:
        return self.det.state()


def _is_event(kv: tuple[str, Flagged]) -> TypeGuard[tuple[str, Event]]:
    # `__class__ is` rather than `isinstance`: this runs once per event.
    return kv[1].__class__ is Event


def _is_alert(kv: tuple[str, Flagged]) -> TypeGuard[tuple[str, Alert]]:
    return kv[1].__class__ is Alert


def _late_event(f: Flagged) -> Event:
    if not isinstance(f, Late):
        msg = f"anomaly: the late branch got {f!r}, not a late event"
        raise TypeError(msg)
    return f.event


@dataclass(frozen=True)
class AnomalyOut:
    """Events that passed (`oks`), alerts with evidence, and events late for their window."""

    oks: KeyedStream[Event]
    alerts: Stream[Alert]
    late: KeyedStream[Event]


@operator
def detect_anomalies(
    step_id: str, up: KeyedStream[Event], cfg: AnomalyConfig, clock: Clock = time.time
) -> AnomalyOut:
    """Per-entity metric and event-rate anomaly detection (see the module docstring).

    Keyed by entity. `oks` are the events in time (late ones come out on `late`), `alerts`
    carry their evidence. `clock` (epoch seconds) is the wall time that advances an idle
    entity's watermark and expires its state; the wall time between a snapshot and the
    restart that resumes it does not count (see the module docstring).

    Three quiet minutes, then a burst in the last window of a finite input (raised when the
    input ends, since no later event closes that window):

    >>> import bytewax.operators as op
    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> from config.models import AnomalyConfig
    >>> from core.records import Event, Kind
    >>> ts = [60.0 * k + i for k in range(3) for i in (1, 2)] + [181.0 + i for i in range(15)]
    >>> events = [Event(f"e{i}", "chat[0]@0", "acme", Kind.CHAT, "s1", t,
    ...                 {"text": "hi", "role": "user"}, 0.0) for i, t in enumerate(ts)]
    >>> flow = Dataflow("anomaly_eg")
    >>> keyed = op.key_on("key", op.input("in", flow, TestingSource(events)), lambda e: e.key)
    >>> out = detect_anomalies("anomaly", keyed, AnomalyConfig(rate_min_count=10),
    ...                        clock=lambda: 0.0)
    >>> oks, alerts = [], []
    >>> op.output("oks", out.oks, TestingSink(oks))
    >>> op.output("alerts", out.alerts, TestingSink(alerts))
    >>> run_main(flow)
    >>> len(oks), [(a.detector, a.message) for a in alerts]
    (21, [('event_rate', 's1: 15 events in 60 s, 7.5x its usual 2.0 (burst)')])
    """

    def builder(resume: dict[str, Any] | None) -> _DetectLogic:
        # A resumed state continues at this restart's wall time (see `EntityDetector`).
        now = None if resume is None else clock()
        return _DetectLogic(EntityDetector(cfg, resume, now), clock)

    flagged = op.stateful_batch("detect", up, builder)
    split = op.branch("in_time", flagged, _is_event)
    rest = op.branch("is_alert", split.falses, _is_alert)
    alerts = op.map("alerts", rest.trues, lambda kv: kv[1])
    late = op.map_value("late", rest.falses, _late_event)
    return AnomalyOut(oks=split.trues, alerts=alerts, late=late)
