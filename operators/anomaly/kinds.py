"""What kind of change an alert is: spike, level shift, trend, variance or seasonality.

`classify(values, baselines, at)` looks at a series' recent readings around the one that
raised an alert (`at`) and names the change with simple robust statistics on the residuals
`value - baseline` (the baseline is what the series detector expected: the seasonal slot
mean of the ensemble, the EWMA mean of `ewma`), scaled by the median and MAD of an older
reference stretch (z-scores):

- `spike`: the alert reading is far out (|z| >= 3.5) and the readings after it are back (at
  most a quarter of them far out, and their median |z| at most 1.5), as were the readings
  just before it;
- `variance`: the readings after the alert (with fewer than 6 of them, the stretch around it)
  scatter (robust spread >= 2.5 times the reference's) about a median that did not move more
  than the spread (0.6 of it around the alert);
- otherwise the residuals of the recent stretch (96 readings before the alert, those after
  it) are fitted, by least squares in z-scores, by a step (two means, the best split) and a
  hinge (flat, then a line from the best start). Unless the step fits clearly better (by 8,
  the sum of squared z-scores: a likelihood ratio of about e^4), the change is gradual: a
  `trend`, from where the hinge starts. An abrupt change is a `level_shift` when the
  readings after the step are flat, and `seasonality` when they keep moving (slope over its
  standard error >= 2.5) where the seasonal profile moves by at least four reference
  spreads over the period (the evidence then says how the profile was reshaped: scaled about
  its mean, `profile_gain`, or moved in time, `phase_shift`, least absolute errors).

A seasonal change is told from a level shift only by how the readings after it move: with
the dozen readings an alert is held for, one where the profile is flat (near its peak or
trough, or a phase shift where the old and new profile run parallel) reads as a level shift
(operators/anomaly/NAB.md, "Alert kinds: accuracy and cost").

`ChangeTracker` keeps what `classify` needs per series, bounded: the last `HISTORY` readings
and baselines, and at most one alert held back (`hold` readings at most, so that the change
has readings after it to be named by; a spike is named as soon as the last three readings
are back, each within two reference spreads of the level before it, none since the alert
having been far out). Its
snapshot (`state()`) is plain data (packed doubles and the held alert's fields), an
immutable copy; a tracker resumed from it names the same kinds at the same readings.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from itertools import pairwise
from statistics import median
from typing import Any

from core.records import Alert
from operators.anomaly.detectors import pack_floats, pack_ints, unpack_floats, unpack_ints

__all__ = ["HISTORY", "Change", "ChangeKind", "ChangeTracker", "classify"]

HISTORY = 192
"""Readings a tracker keeps: a reference stretch of 64 and a recent one of up to 128."""
_REF = 64
_BEFORE = 96
"""Readings before the alert that the models are fitted on (with those after it)."""
_FAR = 3.5
_MAD_SCALE = 1.4826
_BACK = 3
_NEAR = 2.0
"""A spike's readings after it are back: each within this many reference spreads of the
level before it (`ChangeTracker`), their median too (`_BACK_MEDIAN`, in `classify`)."""
_BACK_MEDIAN = 1.5
_ABRUPT = 8.0
_SLOPE_T = 2.5


def pack_times(ts: Sequence[float]) -> bytes | tuple[int, int, bytes]:
    """Event times, exactly: as (unit, first, steps) in whole seconds or milliseconds when
    they all are (usually a few bytes a reading instead of 8), as packed doubles otherwise."""
    for unit in (1, 1000):
        ticks = [round(t * unit) for t in ts]
        if ticks and all(k / unit == t for k, t in zip(ticks, ts, strict=True)):
            steps = [b - a for a, b in pairwise(ticks)]
            return (unit, ticks[0], pack_ints(steps))
    return pack_floats(ts)


def unpack_times(packed: bytes | tuple[int, int, bytes]) -> list[float]:
    if isinstance(packed, bytes):
        return list(unpack_floats(packed))
    unit, tick, steps = packed
    ticks = [tick]
    for step in unpack_ints(steps):
        tick += step
        ticks.append(tick)
    return [k / unit for k in ticks]


class ChangeKind(StrEnum):
    SPIKE = "spike"
    LEVEL_SHIFT = "level_shift"
    TREND = "trend"
    VARIANCE = "variance"
    SEASONALITY = "seasonality"


@dataclass(frozen=True, slots=True)
class Change:
    """The kind of a change and the statistics that named it (rounded, JSON-ready)."""

    kind: ChangeKind
    evidence: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"kind": str(self.kind), **self.evidence}


def _mad(xs: Sequence[float], center: float) -> float:
    return _MAD_SCALE * median([abs(x - center) for x in xs])


def _r(x: float) -> float:
    return round(x, 4) if math.isfinite(x) else 0.0


def classify(
    values: Sequence[float],
    baselines: Sequence[float],
    at: int,
    ts: Sequence[float] | None = None,
    profile: Callable[[float], float | None] | None = None,
    period: float = 86_400.0,
) -> Change:
    """The kind of the change whose alert was raised by reading `at` of `values`.

    `baselines[i]` is what the detector expected for `values[i]`; readings after `at` (if
    any) are the ones that came since. Needs at least a few readings before `at`. With
    `ts` (the readings' event times) and `profile` (the detector's seasonal baseline at a
    time, over `period` seconds), a seasonal change can be told from a level shift.
    """
    res = [v - b for v, b in zip(values, baselines, strict=True)]
    start = max(0, at - _BEFORE)
    if start >= 16:
        ref = res[max(0, start - _REF) : start]
    else:  # a young series: the first half of what there is before the alert
        start = max(1, at // 2)
        ref = res[:start]
    m0 = median(ref)
    level = median(values[max(0, start - _REF) : start] or values[:1])
    scale = _mad(ref, m0)
    floor = 1e-6 * max(abs(level), 1.0)
    s0 = scale if scale > floor else floor
    z = [(r - m0) / s0 for r in res[start:]]
    ia = at - start
    after = z[ia + 1 :]
    before_near = z[max(0, ia - 8) : ia]
    za = z[ia]
    ev: dict[str, float] = {"before_level": _r(level), "scale": _r(s0), "z": _r(za)}

    def share_far(xs: Sequence[float]) -> float:
        return sum(1 for x in xs if abs(x) >= _FAR) / len(xs) if xs else 0.0

    back = len(after) < _BACK or median([abs(x) for x in after]) <= _BACK_MEDIAN
    if abs(za) >= _FAR and share_far(after) <= 0.25 and share_far(before_near) <= 0.25 and back:
        ev["after_level"] = _r(median(values[at + 1 :]) if after else values[at])
        return Change(ChangeKind.SPIKE, ev)

    # Variance: the readings after the alert scatter about the level before it (with few
    # readings after it, the stretch around it).
    near = after if len(after) >= 6 else z[max(0, ia - 8) :]
    mid = median(near)
    spread = _mad(near, mid)
    if spread >= 2.5 and abs(mid) <= (1.0 if near is after else 0.6) * spread:
        ev["variance_ratio"] = _r(spread)
        ev["after_level"] = _r(median(values[max(0, at - 8) :]))
        return Change(ChangeKind.VARIANCE, ev)

    sums = _prefix(z)
    step_sse, split = _step_fit(z, sums)
    hinge_sse, hinge_at, slope = _hinge_fit(z, sums)
    post = z[split:]
    ev["after_level"] = _r(median(values[start + split :]))
    ev["change_at"] = float(split - ia)  # readings from the alert to where the change began
    ev["variance_ratio"] = _r(_mad(post, median(post)))
    ev["slope"] = _r(slope * s0)  # value units per reading
    # A step must fit clearly better than a ramp (by `_ABRUPT` in squared z-scores) for the
    # change to be abrupt; otherwise it is gradual: a trend.
    ev["ramp_gain"] = _r(step_sse - hinge_sse)
    if step_sse - hinge_sse > -_ABRUPT:
        ev["change_at"] = float(hinge_at - ia)
        return Change(ChangeKind.TREND, ev)
    # Abrupt. A level shift is flat after its step; a seasonal change follows the reshaped
    # profile, which moves: a significant slope after the step (where the profile moves).
    t_post = _slope_t(post)
    ev["post_slope_t"] = _r(t_post)
    if profile is not None and ts is not None and len(post) >= 6 and abs(t_post) >= _SLOPE_T:
        season = _seasonal_fit(values[start + split :], ts[start + split :], profile, period, s0)
        if season is not None:
            _, what, amount = season
            ev[what] = _r(amount)
            return Change(ChangeKind.SEASONALITY, ev)
    return Change(ChangeKind.LEVEL_SHIFT, ev)


def _prefix(z: Sequence[float]) -> tuple[list[float], list[float], list[float]]:
    """Running sums of z, z^2 and t*z (each with a leading 0): the fits below in O(m)."""
    s, q, w = [0.0], [0.0], [0.0]
    a = b = c = 0.0
    for t, x in enumerate(z):
        a += x
        b += x * x
        c += t * x
        s.append(a)
        q.append(b)
        w.append(c)
    return s, q, w


def _step_fit(z: Sequence[float], sums: tuple[list[float], ...]) -> tuple[float, int]:
    """The best step (two means, least squares): its sum of squared errors and where the
    second part begins."""
    s, q, _ = sums
    m = len(z)
    best, split = math.inf, 1
    for c in range(2, m - 1):
        left = q[c] - s[c] * s[c] / c
        r = s[m] - s[c]
        sse = left + (q[m] - q[c]) - r * r / (m - c)
        if sse < best:
            best, split = sse, c
    return best, split


def _hinge_fit(z: Sequence[float], sums: tuple[list[float], ...]) -> tuple[float, int, float]:
    """The best hinge (least squares): flat at the mean of `z[:c]` (0 where c is 0), then a
    line from there with the best slope, `base + slope * k` at `z[c + k - 1]`. Its sum of
    squared errors, c and the slope."""
    s, q, w = sums
    m = len(z)
    best, at, slope = math.inf, 0, 0.0
    for c in range(0, m - 3):
        base = s[c] / c if c else 0.0
        n = m - c
        sz = s[m] - s[c]
        # sum of z_t * k over the line's part, k = t - c + 1
        szk = (w[m] - w[c]) - (c - 1) * sz
        sk = n * (n + 1) / 2
        skk = n * (n + 1) * (2 * n + 1) / 6
        syk = szk - base * sk
        sl = syk / skk
        left = q[c] - 2 * base * s[c] + c * base * base
        syy = (q[m] - q[c]) - 2 * base * sz + n * base * base
        sse = left + syy - sl * syk
        if sse < best:
            best, at, slope = sse, c, sl
    return best, at, slope


def _slope_t(xs: Sequence[float]) -> float:
    """The least-squares slope of `xs` over its standard error (the residuals' spread, at
    least 1: z-scores)."""
    n = len(xs)
    if n < 3:
        return 0.0
    tm = (n - 1) / 2
    mu = sum(xs) / n
    sxx = sum((i - tm) ** 2 for i in range(n))
    b = sum((i - tm) * (x - mu) for i, x in enumerate(xs)) / sxx
    sd = math.sqrt(sum((x - mu - b * (i - tm)) ** 2 for i, x in enumerate(xs)) / (n - 2))
    return b * math.sqrt(sxx) / max(sd, 1.0)


def _seasonal_fit(
    x: Sequence[float],
    ts: Sequence[float],
    profile: Callable[[float], float | None],
    period: float,
    s0: float,
) -> tuple[float, str, float] | None:
    """How well the changed readings fit the seasonal profile reshaped: scaled about its mean
    (an amplitude change) or moved in time (a phase change). The best sum of absolute errors,
    what it was and by how much (the gain, or the phase as a share of the period); None
    where the profile is unknown or barely moves."""
    grid = 96
    prof = [profile(i * period / grid) for i in range(grid)]
    known = [p for p in prof if p is not None]
    if len(known) < grid // 2 or max(known) - min(known) < 4.0 * s0:
        return None
    mean_p = sum(known) / len(known)
    p_now = [profile(t) for t in ts]
    if any(p is None for p in p_now):
        return None
    dp = [p - mean_p for p in p_now if p is not None]
    dx = [v - mean_p for v in x]
    sqq = sum(d * d for d in dp)
    gain = sum(a * b for a, b in zip(dx, dp, strict=True)) / sqq if sqq > 0 else 1.0
    best = (sum(abs(a - gain * b) for a, b in zip(dx, dp, strict=True)), "profile_gain", gain)
    if abs(gain - 1.0) < 0.5:
        best = (math.inf, "profile_gain", gain)
    for k in range(grid // 12, grid - grid // 12 + 1):
        lag = k * period / grid
        moved = [profile(t + lag) for t in ts]
        if any(p is None for p in moved):
            continue
        sae = sum(abs(v - p) for v, p in zip(x, moved, strict=True) if p is not None)
        if sae < best[0]:
            best = (sae, "phase_shift", k / grid)
    return None if best[0] == math.inf else best


class ChangeTracker:
    """The recent readings of one series and the alert held until its change can be named.

    `observe(ts, value, baseline)` per reading (O(1)); `hold(alert)` when the series detector
    alerts on the reading just observed; both return the alerts that are now due, with their
    `change`. An alert is due `hold` readings after its own, or as soon as the last
    `_BACK` readings are back near the level before it and none since it was far out (a
    spike). `flush()` names and returns a
    held alert at once (the end of the input). `hold` 0 names every alert on its own reading.
    `profile` (the series detector's seasonal baseline at an event time, over `period`
    seconds) lets seasonal changes be named; it is not part of the state.

    State: at most `HISTORY` event times, readings and baselines, the held alert, how many
    readings came after it and the alerts raised since (at most one per reading).
    """

    __slots__ = (
        "baselines",
        "followers",
        "held",
        "hold_points",
        "period",
        "profile",
        "since",
        "ts",
        "values",
    )

    def __init__(
        self,
        hold: int,
        state: tuple[Any, ...] | None = None,
        profile: Callable[[float], float | None] | None = None,
        period: float = 86_400.0,
    ) -> None:
        self.hold_points = hold
        self.profile = profile
        self.period = period
        times, vals, bases, held, since, *rest = state or (b"", b"", b"", None, 0, ())
        self.ts: deque[float] = deque(unpack_times(times), maxlen=HISTORY)
        self.values: deque[float] = deque(unpack_floats(vals), maxlen=HISTORY)
        self.baselines: deque[float] = deque(unpack_floats(bases), maxlen=HISTORY)
        self.held: Alert | None = None if held is None else Alert(**held)
        self.since: int = since
        # Alerts raised while one is held: the same change, named with it.
        self.followers: list[Alert] = [Alert(**a) for a in (rest[0] if rest else ())]

    def observe(self, ts: float, value: float, baseline: float) -> list[Alert]:
        self.ts.append(ts)
        self.values.append(value)
        self.baselines.append(baseline)
        if self.held is None:
            return []
        self.since += 1
        if self.since >= self.hold_points or self._back():
            return self.flush()
        return []

    def _back(self) -> bool:
        """The last `_BACK` readings are back near the level before the held alert's, and
        none since it was far out (a spike is one reading)."""
        vals, since = self.values, self.since
        at = len(vals) - 1 - since
        if at < 8 or since < _BACK:
            return False
        res = [v - b for v, b in zip(vals, self.baselines, strict=True)]
        ref = res[max(0, at - _REF) : at]
        m0 = median(ref)
        s0 = max(_mad(ref, m0), 1e-12)
        near, far = _NEAR * s0, _FAR * s0
        return (
            abs(res[at] - m0) >= far
            and all(abs(r - m0) < far for r in res[at + 1 :])
            and all(abs(r - m0) < near for r in res[-_BACK:])
        )

    def hold(self, alert: Alert) -> list[Alert]:
        """Hold `alert` (raised on the reading just observed). While one is held, a new
        alert is part of the same change: it follows the held one and is named with it."""
        if self.held is not None:
            self.followers.append(alert)
            return []
        self.held, self.since = alert, 0
        if self.hold_points == 0:
            return self.flush()
        return []

    def flush(self) -> list[Alert]:
        held = self.held
        if held is None:
            return []
        followers, self.held, self.followers = self.followers, None, []
        change = self._name(len(self.values) - 1 - self.since)
        if change is None:
            return [held, *followers]
        return [replace(a, change=change) for a in (held, *followers)]

    def name_last(self) -> dict[str, Any] | None:
        """The change of the reading just observed, named at once (no hold)."""
        return self._name(len(self.values) - 1)

    def _name(self, at: int) -> dict[str, Any] | None:
        if at < 2:
            return None
        change = classify(
            list(self.values), list(self.baselines), at, list(self.ts), self.profile, self.period
        )
        return change.to_json()

    def state(self) -> tuple[Any, ...]:
        held = None if self.held is None else asdict(self.held)
        return (
            pack_times(self.ts),
            pack_floats(self.values),
            pack_floats(self.baselines),
            held,
            self.since,
            tuple(asdict(a) for a in self.followers),
        )
