"""Generated metric series with one known change of a known kind (for tests and `bench.nab`).

`changed_series(kind, seed)`: five-minute readings of a daily pattern (level 50, amplitude
10) with Gaussian noise (sd 1), three quiet days and more, then one change at `change_at`
of the named kind (`None`: no change, a clean series):

- `spike`: one reading 8 to 15 sd away;
- `level_shift`: every reading from the change on 5 to 10 sd away;
- `trend`: a drift of 0.05 to 0.15 sd per reading from the change on;
- `variance`: the noise 4 to 6 times larger from the change on;
- `seasonality`: the daily pattern's phase moved by a fifth to a half of a day, or its
  amplitude doubled or tripled, from the change on.

Deterministic per (kind, seed): a seeded `random.Random`, no global state.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

KINDS = ("spike", "level_shift", "trend", "variance", "seasonality")
DAY = 288
STEP_S = 300.0
T0 = 1_700_000_000.0 - (1_700_000_000.0 % 86_400)


@dataclass(frozen=True)
class ChangedSeries:
    kind: str | None
    change_at: int | None
    """Index of the first changed reading (None for a clean series)."""
    ts: tuple[float, ...]
    values: tuple[float, ...]


def changed_series(kind: str | None, seed: int, after: int = 400) -> ChangedSeries:
    """One series with a change of `kind` (or none), `after` readings past the change."""
    if kind is not None and kind not in KINDS:
        msg = f"unknown change kind {kind!r}; expected one of {KINDS}"
        raise ValueError(msg)
    rnd = random.Random(f"{kind}-{seed}")
    c = 3 * DAY + rnd.randrange(DAY)
    n = c + after
    sign = rnd.choice((-1.0, 1.0))
    size = {"spike": (8, 15), "level_shift": (5, 10), "trend": (0.05, 0.15), "variance": (4, 6)}
    lo, hi = size.get(kind or "", (0.0, 0.0))
    mag = rnd.uniform(lo, hi)
    phase, gain = 0.0, 1.0
    if kind == "seasonality":
        if rnd.random() < 0.5:
            phase = rnd.uniform(0.2, 0.5) * 2 * math.pi
        else:
            gain = rnd.uniform(2.0, 3.0)
    values = []
    for i in range(n):
        changed = kind is not None and i >= c
        angle = 2 * math.pi * (i % DAY) / DAY
        noise = rnd.gauss(0.0, 1.0)
        v = 50.0
        if changed and kind == "seasonality":
            v += 10.0 * gain * math.sin(angle + phase)
        else:
            v += 10.0 * math.sin(angle)
        if changed and kind == "variance":
            noise *= mag
        v += noise
        if (kind == "spike" and i == c) or (changed and kind == "level_shift"):
            v += sign * mag
        elif changed and kind == "trend":
            v += sign * mag * (i - c + 1)
        values.append(v)
    ts = tuple(T0 + STEP_S * i for i in range(n))
    return ChangedSeries(kind, c if kind else None, ts, tuple(values))
