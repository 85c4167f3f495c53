"""Pure streaming detectors for one numeric series: one pass, past data only, bounded state.

Every detector here has the same small contract:

- `update(x) -> float`: score the new value against what came *before* it, then learn it.
  Scores are raw "surprise" in [0, 1] (1 = never seen anything like it).
- `state() -> tuple`: plain data (floats, ints, tuples, small dicts), an immutable copy, from
  which `cls(params..., state=...)` rebuilds a detector that continues exactly where this one
  stands (same statistics, same next score).
- Memory is bounded by constructor parameters (window lengths, capped dictionaries), never by
  the length of the series.

No runtime, no clock, no numpy: the pipeline (`operators.anomaly`) and the benchmark
(`bench.nab`) drive the same classes.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections import deque
from typing import Any


class Range:
    """Running minimum and maximum of a series (the scale for quantizing detectors)."""

    __slots__ = ("hi", "lo", "n")

    def __init__(self, state: tuple[int, float, float] | None = None) -> None:
        self.n, self.lo, self.hi = state or (0, math.inf, -math.inf)

    def update(self, x: float) -> None:
        self.n += 1
        self.lo = min(self.lo, x)
        self.hi = max(self.hi, x)

    def state(self) -> tuple[int, float, float]:
        return (self.n, self.lo, self.hi)


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


class ContextNovelty:
    """Novelty of the latest value in the context of the values before it (after CAD OSE).

    Values are quantized into `levels` levels on the series' running range (a value outside
    the range seen so far gets a level of its own). For every context length k = 1..`orders`,
    the pair (last k levels, current level) is looked up in a memory of pairs seen before; the
    score is the share of context lengths whose pair is new, so a familiar shape scores 0 and a
    value never seen after its recent past scores 1. The memory forgets the least recently
    seen pairs beyond `capacity` (CAD's "lethe" memory), so it stays bounded and follows
    regime changes.

    State: the range, the last `orders` levels and the memory as a tuple of (pair, last seen).
    """

    __slots__ = ("capacity", "hist", "levels", "mem", "orders", "range", "t")

    def __init__(
        self,
        levels: int = 8,
        orders: int = 3,
        capacity: int = 2048,
        state: tuple[Any, ...] | None = None,
    ) -> None:
        self.levels = levels
        self.orders = orders
        self.capacity = capacity
        if state is None:
            self.range = Range()
            self.hist: tuple[int, ...] = ()
            self.mem: dict[tuple[int, ...], int] = {}
            self.t = 0
        else:
            rng, hist, mem, t = state
            self.range = Range(rng)
            self.hist = tuple(hist)
            self.mem = dict(mem)
            self.t = t

    def level(self, x: float) -> int:
        lo, hi = self.range.lo, self.range.hi
        if x < lo:
            return -1
        if x > hi:
            return self.levels
        span = hi - lo
        if span <= 0.0:
            return 0
        return min(int((x - lo) / span * self.levels), self.levels - 1)

    def update(self, x: float) -> float:
        cur = self.level(x)
        self.range.update(x)
        hist = self.hist
        mem = self.mem
        self.t += 1
        t = self.t
        novel = 0
        seen = 0
        for k in range(1, min(len(hist), self.orders) + 1):
            key = (*hist[-k:], cur)
            seen += 1
            if mem.pop(key, None) is None:
                novel += 1
            mem[key] = t  # re-insert: dict order is recency order
        if len(mem) > self.capacity:
            for key in list(mem)[: len(mem) - self.capacity]:
                del mem[key]
        self.hist = (*hist[1 - self.orders :], cur) if self.orders > 1 else (cur,)
        return novel / seen if seen else 0.0

    def state(self) -> tuple[Any, ...]:
        return (self.range.state(), self.hist, tuple(self.mem.items()), self.t)


class Rank:
    """Where a value ranks among the last `window` values: the share of them strictly below it.

    A conformal p-value turned around: 1.0 means "higher than everything in the window". The
    window is kept twice in flat `array('d')` buffers (8 bytes a value): a ring in arrival
    order, to drop the oldest, and a sorted copy, to rank with a binary search. An update costs
    O(log n) comparisons plus a C-level memory shift.
    """

    __slots__ = ("head", "ring", "sorted", "window")

    def __init__(self, window: int = 1500, state: tuple[float, ...] | None = None) -> None:
        self.window = window
        vals = tuple(state or ())[-window:]
        self.ring = array("d", vals)
        self.head = 0  # index of the oldest value once the ring is full
        self.sorted = array("d", sorted(vals))

    def rank(self, x: float) -> float:
        n = len(self.sorted)
        return bisect_left(self.sorted, x) / n if n else 0.0

    def push(self, x: float) -> None:
        srt = self.sorted
        if len(self.ring) < self.window:
            self.ring.append(x)
        else:
            old = self.ring[self.head]
            del srt[bisect_left(srt, old)]
            self.ring[self.head] = x
            self.head = (self.head + 1) % self.window
        srt.insert(bisect_left(srt, x), x)

    def state(self) -> tuple[float, ...]:
        """The window oldest first (a copy)."""
        h = self.head
        return tuple(self.ring[h:]) + tuple(self.ring[:h])


class SeasonalResidual:
    """Deviation of a value from its time-of-day baseline, ranked against recent deviations.

    The day is cut into `slots` slots (event time); each slot keeps an exponentially weighted
    mean of the values that fell in it. The residual of a value is its distance to its slot's
    mean; the score is the residual's rank among the last `window` residuals (so it is scale
    free: 1.0 means "further from its usual level than anything recently"). Series with no
    daily pattern get a slowly moving baseline per slot, so this still flags level changes.

    State: the slot means (at most `slots` floats) and the ranking window.
    """

    __slots__ = ("alpha", "period", "rank", "slot_mean", "slots")

    def __init__(
        self,
        slots: int = 288,
        alpha: float = 0.25,
        window: int = 1500,
        period_s: float = 86400.0,
        state: tuple[Any, ...] | None = None,
    ) -> None:
        self.slots = slots
        self.alpha = alpha
        self.period = period_s
        means, ranks = state or ((), ())
        self.slot_mean: dict[int, float] = dict(means)
        self.rank = Rank(window, ranks)

    def _slot(self, ts: float) -> int:
        return int((ts % self.period) / self.period * self.slots)

    def baseline(self, ts: float) -> float | None:
        """The usual value at this time of day (None before the slot has seen a value)."""
        return self.slot_mean.get(self._slot(ts))

    def update(self, x: float, ts: float) -> float:
        slot = self._slot(ts)
        mean = self.slot_mean.get(slot)
        if mean is None:
            self.slot_mean[slot] = x
            return 0.0
        r = abs(x - mean)
        score = self.rank.rank(r)
        self.rank.push(r)
        self.slot_mean[slot] = mean + self.alpha * (x - mean)
        return score

    def state(self) -> tuple[Any, ...]:
        return (tuple(self.slot_mean.items()), self.rank.state())


class RankShift:
    """A sustained shift in a stream of ranks (change detection on conformal p-values).

    Fed the seasonal residual's rank r in [0, 1) per reading, it averages the surprise
    -ln(1 - r) over the last `span` readings (under "nothing changed" the ranks are about
    uniform, so each surprise is about Exp(1) and the mean is near 1; a level or variance shift
    keeps many ranks high and drives it up, even when no single reading is extreme). Real
    residuals are autocorrelated, so the mean is not compared with a fixed bound but ranked
    against its own last `window` values: 1.0 means "the most sustained deviation recently".
    The first `span` readings only fill the average.

    State: the last `span` surprises, their sum, the count and the ranking window.
    """

    __slots__ = ("n", "rank", "ring", "span", "total")

    _FLOOR = 1e-4  # caps one reading's surprise at ln(1e4) ~ 9.2

    def __init__(
        self, span: int = 30, window: int = 3000, state: tuple[Any, ...] | None = None
    ) -> None:
        self.span = span
        ring, total, n, ranks = state or ((), 0.0, 0, ())
        self.ring: deque[float] = deque(ring, maxlen=span)
        self.total: float = total
        self.n: int = n
        self.rank = Rank(window, ranks)

    def update(self, r: float) -> float:
        z = -math.log(max(1.0 - r, self._FLOOR))
        ring = self.ring
        if len(ring) == self.span:
            self.total -= ring[0]
        ring.append(z)
        self.total += z
        self.n += 1
        if self.n <= self.span:
            return 0.0
        mean = self.total / self.span
        score = self.rank.rank(mean)
        self.rank.push(mean)
        return score

    def state(self) -> tuple[Any, ...]:
        return (tuple(self.ring), self.total, self.n, self.rank.state())
