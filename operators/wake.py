"""Wake-up times for `notify_at`, rounded up and shared.

Every keyed logic is asked for its next wake-up after each batch; building a fresh `datetime`
per key per batch showed up in profiles. Rounding up to a quantum (a wake-up a few
milliseconds late is harmless for TTLs and window closes) lets keys share one object.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

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
