"""Clocks: the injectable wall clock of every stage, and shared wake-up times for `notify_at`.

Every stage takes a `Clock` (epoch seconds, `time.time` by default) so tests can drive time.

Every keyed logic is asked for its next wake-up after each batch; building a fresh `datetime`
per key per batch showed up in profiles. Rounding up to a quantum (a wake-up a few
milliseconds late is harmless for TTLs and window closes) lets keys share one object.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], float]
"""Wall-clock time as epoch seconds; `time.time` in production, a fake in tests."""

_cache: dict[float, datetime] = {}


def wake_at(ts: float, quantum: float = 0.1) -> datetime:
    """`ts` (epoch seconds) rounded up to `quantum`, as an aware UTC datetime."""
    key = math.ceil(ts / quantum) * quantum
    dt = _cache.get(key)
    if dt is None:
        if len(_cache) > 4096:
            _cache.clear()
        dt = _cache[key] = datetime.fromtimestamp(key, UTC)
    return dt
