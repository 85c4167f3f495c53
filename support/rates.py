"""Generated event-rate series with a known burst and a known drop (for tests and
`bench.rate_series`).

`rate_scenario(seed, ...)`: per-window event counts of one busy entity, Poisson around a
daily-ish pattern (`level` events per window, `amplitude` up and down over `period_s`),
`days` periods of it, then a burst (the rate times `burst_factor` for `burst_len` windows)
and, `gap` windows later, a drop (times `drop_factor`, 0: an outage, for `drop_len`
windows), then `tail` windows of the usual pattern (`drop_first`: the drop, then the
burst). `events(scenario)` spreads each window's events evenly over it, as chat events of
entity `user-1`.

Deterministic per arguments: a seeded `random.Random`, no global state.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from core.records import Event, Kind

T0 = 1_700_000_000.0 - (1_700_000_000.0 % 86_400)


@dataclass(frozen=True)
class RateScenario:
    window_s: float
    counts: tuple[int, ...]
    burst_at: int
    """Index of the first burst window."""
    burst_len: int
    drop_at: int
    """Index of the first drop window."""
    drop_len: int


def _poisson(rnd: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 60:  # normal approximation, exact enough for these tests
        return max(0, round(rnd.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rnd.random()
        if p <= limit:
            return k
        k += 1


def rate_scenario(
    seed: int = 0,
    *,
    window_s: float = 60.0,
    period_s: float = 86_400.0,
    days: float = 3.0,
    level: float = 30.0,
    amplitude: float = 15.0,
    burst_factor: float = 3.0,
    burst_len: int = 3,
    gap: int = 240,
    drop_factor: float = 0.3,
    drop_len: int = 20,
    tail: int = 60,
    drop_first: bool = False,
) -> RateScenario:
    rnd = random.Random(seed)
    per = period_s / window_s
    burst_at = round(days * per)
    drop_at = burst_at + burst_len + gap
    if drop_first:
        drop_at, burst_at = burst_at, burst_at + drop_len + gap
    n = max(drop_at + drop_len, burst_at + burst_len) + tail
    counts = []
    for i in range(n):
        lam = level + amplitude * math.sin(2 * math.pi * i / per)
        if burst_at <= i < burst_at + burst_len:
            lam *= burst_factor
        elif drop_at <= i < drop_at + drop_len:
            lam *= drop_factor
        counts.append(_poisson(rnd, lam))
    return RateScenario(window_s, tuple(counts), burst_at, burst_len, drop_at, drop_len)


def window_start(s: RateScenario, i: int) -> float:
    return T0 + i * s.window_s


def events(s: RateScenario, entity: str = "user-1") -> list[Event]:
    out: list[Event] = []
    for i, c in enumerate(s.counts):
        start = window_start(s, i)
        for j in range(c):
            ts = start + (j + 0.5) * s.window_s / c
            out.append(
                Event(
                    f"e{i}-{j}",
                    f"chat[0]@{len(out)}",
                    "acme",
                    Kind.CHAT,
                    entity,
                    ts,
                    {"text": "hi", "role": "user"},
                    ts,
                )
            )
    return out
