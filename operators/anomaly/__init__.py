"""Anomaly detection per entity: metric values (EWMA z-score) and event-rate spikes (windows).

Two pure detectors, combined per entity key by one keyed `stateful_batch` step:

- `EwmaZScore`: exponentially weighted mean and variance of a metric series; a reading is
  anomalous when its z-score against the baseline *before* it reaches the threshold, after a
  warm-up, with repeated alerts on the same series suppressed for `suppress_s` of event time.
- `RateWindows`: event-time tumbling windows counting events per entity. A window closes when
  the entity's watermark passes its end (the watermark is the newest event time minus the
  allowed lateness, advanced by wall time while the entity is idle, like Bytewax's
  `EventClock` with a system-time wait). A closed window whose count is at least `rate_factor`
  times the EWMA of earlier windows (and at least `rate_min_count`) raises an alert. Events
  older than the watermark are late: they do not count and come out on the `late` stream.

State per entity (snapshotted as a tuple of floats and a small dict, an immutable copy):
the EWMA statistics, the open windows' counts (at most a few), the window baseline and the
last alert times. It is discarded after `idle_ttl_s` of wall time without events.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from config.models import AnomalyConfig
from operators.model import Alert, Event, Kind
from operators.wake import wake_at

Clock = Callable[[], float]
_MAX_WINDOW_IDS = 10
_MAX_GAP_WINDOWS = 1000


def _alert_id(detector: str, key: str, ts: float) -> str:
    return "a-" + hashlib.blake2b(f"{detector}|{key}|{ts!r}".encode(), digest_size=10).hexdigest()


class EwmaZScore:
    """Streaming z-score of a value against its exponentially weighted mean and variance."""

    __slots__ = ("alpha", "last_alert_ts", "mean", "n", "suppress_s", "threshold", "var", "warmup")

    def __init__(
        self,
        alpha: float,
        threshold: float,
        warmup: int,
        suppress_s: float,
        state: tuple[int, float, float, float] | None = None,
    ) -> None:
        self.alpha = alpha
        self.threshold = threshold
        self.warmup = warmup
        self.suppress_s = suppress_s
        self.n, self.mean, self.var, self.last_alert_ts = state or (0, 0.0, 0.0, -math.inf)

    def update(self, value: float, ts: float) -> tuple[float, bool]:
        """Score `value` against the baseline so far, then fold it in.

        Returns the absolute z-score and whether it is an alert.
        """
        n, mean, var = self.n, self.mean, self.var
        if n == 0:
            self.n, self.mean, self.var = 1, value, 0.0
            return 0.0, False
        std = math.sqrt(var)
        # A flat series has zero variance: any change is then infinitely surprising, so floor
        # the deviation at a small fraction of the level to keep scores finite and meaningful.
        floor = 1e-3 * max(abs(mean), 1e-9)
        z = abs(value - mean) / max(std, floor)
        alert = (
            n >= self.warmup and z >= self.threshold and ts - self.last_alert_ts >= self.suppress_s
        )
        if alert:
            self.last_alert_ts = ts
        diff = value - mean
        incr = self.alpha * diff
        self.mean = mean + incr
        self.var = (1 - self.alpha) * (var + diff * incr)
        self.n = n + 1
        return z, alert

    def state(self) -> tuple[int, float, float, float]:
        return (self.n, self.mean, self.var, self.last_alert_ts)


@dataclass(frozen=True)
class ClosedWindow:
    start: float
    end: float
    count: int
    baseline: float
    alert: bool
    event_ids: tuple[str, ...]


class RateWindows:
    """Event-time tumbling windows of event counts for one entity, with a rate baseline."""

    def __init__(self, cfg: AnomalyConfig, state: dict[str, Any] | None = None) -> None:
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
        """Close every open window whose end the watermark has passed, oldest first."""
        wm = self.watermark(now)
        out = []
        for start in sorted(self.open):
            end = start + self.size
            if end > wm:
                break
            slot = self.open.pop(start)
            # Silent windows between the last closed one and this one count as zero.
            if self.last_end is not None:
                gaps = min(int((start - self.last_end) // self.size), _MAX_GAP_WINDOWS)
                for _ in range(max(gaps, 0)):
                    self.baseline *= 1 - self.alpha
                    self.closed += 1
            count = slot[0]
            baseline = self.baseline
            alert = (
                self.closed >= self.warmup
                and count >= self.min_count
                and count >= self.factor * max(baseline, 1.0)
            )
            out.append(ClosedWindow(start, end, count, baseline, alert, tuple(slot[1:])))
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
        return {
            "open": {k: tuple(v) for k, v in self.open.items()},
            "max_ts": self.max_ts,
            "wall_at_max": self.wall_at_max,
            "baseline": self.baseline,
            "closed": self.closed,
            "last_end": self.last_end,
        }


@dataclass(frozen=True)
class Late:
    """An event that arrived after its window closed (internal to this operator)."""

    event: Event


Flagged = Event | Alert | Late
"""Output of the detector step: events in time pass unwrapped (the hot path)."""


class EntityDetector:
    """Both detectors for one entity key; pure, clock injected."""

    def __init__(self, cfg: AnomalyConfig, state: dict[str, Any] | None = None) -> None:
        s = state or {}
        self.cfg = cfg
        self.ewma = EwmaZScore(
            cfg.ewma_alpha, cfg.z_threshold, cfg.warmup, cfg.suppress_s, s.get("ewma")
        )
        self.rate = RateWindows(cfg, s.get("rate"))
        self.last_wall: float = s.get("last_wall", 0.0)
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
                baseline, std = self.ewma.mean, math.sqrt(self.ewma.var)
                z, alert = self.ewma.update(value, e.ts)
                if alert:
                    out.append(self._metric_alert(e, value, baseline, std, z))
        out.extend(self.tick(now))
        return out

    def tick(self, now: float) -> list[Alert]:
        alerts = []
        for w in self.rate.close_due(now):
            if w.alert:
                alerts.append(self._rate_alert(w))
        return alerts

    def _metric_alert(self, e: Event, value: float, baseline: float, std: float, z: float) -> Alert:
        return Alert(
            alert_id=_alert_id("ewma_zscore", e.tenant + "/" + e.entity, e.ts),
            detector="ewma_zscore",
            tenant=e.tenant,
            entity=e.entity,
            ts=e.ts,
            score=round(z, 3),
            value=value,
            baseline=baseline,
            threshold=self.cfg.z_threshold,
            window={"alpha": self.cfg.ewma_alpha, "std": std, "n": self.ewma.n - 1},
            event_ids=(e.event_id,),
            source=e.source,
            message=(
                f"{e.entity}: value {value:g} is {z:.1f} standard deviations from its "
                f"baseline {baseline:g}"
            ),
        )

    def _rate_alert(self, w: ClosedWindow) -> Alert:
        ratio = w.count / max(w.baseline, 1.0)
        return Alert(
            alert_id=_alert_id("event_rate", self.tenant + "/" + self.entity, w.start),
            detector="event_rate",
            tenant=self.tenant,
            entity=self.entity,
            ts=w.end,
            score=round(ratio, 3),
            value=float(w.count),
            baseline=w.baseline,
            threshold=self.cfg.rate_factor,
            window={"start": w.start, "end": w.end, "size_s": self.rate.size},
            event_ids=w.event_ids,
            source=self.source,
            message=(
                f"{self.entity}: {w.count} events in {self.rate.size:g} s, "
                f"{ratio:.1f}x its usual {w.baseline:.1f}"
            ),
        )

    def expires_at(self) -> float:
        return self.last_wall + self.cfg.idle_ttl_s

    def state(self) -> dict[str, Any]:
        return {
            "ewma": self.ewma.state(),
            "rate": self.rate.state(),
            "last_wall": self.last_wall,
            "tenant": self.tenant,
            "entity": self.entity,
            "source": self.source,
        }


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

    def notify_at(self) -> datetime | None:
        at = self.det.expires_at()
        close = self.det.rate.next_close_wall()
        if close is not None:
            at = min(at, close)
        return wake_at(at)

    def snapshot(self) -> dict[str, Any]:
        return self.det.state()


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
    """Per-entity metric and event-rate anomaly detection (see the module docstring)."""

    def builder(resume: dict[str, Any] | None) -> _DetectLogic:
        return _DetectLogic(EntityDetector(cfg, resume), clock)

    flagged = op.stateful_batch("detect", up, builder)
    split = op.branch("in_time", flagged, lambda kv: kv[1].__class__ is Event)
    rest = op.branch("is_alert", split.falses, lambda kv: kv[1].__class__ is Alert)
    alerts = op.map("alerts", rest.trues, lambda kv: kv[1])
    late = op.map_value("late", rest.falses, lambda f: f.event)  # type: ignore[union-attr]
    return AnomalyOut(oks=split.trues, alerts=alerts, late=late)  # type: ignore[arg-type]
