"""Backpressure: the inputs of a process pause while its LLM stage holds too many items.

Each logic of the LLM stage registers itself (`register`) and keeps `held`, the items it
holds (buffered or in flight). The sources ask `saturated()` before every read and, while
it is true, read nothing and ask Bytewax to wake them again in `PAUSE_S` (`pause_until`).
The backlog then stays in Kafka (or in the input file), which is the buffer during an LLM
outage or a slow endpoint, instead of growing the process's memory and its snapshots.

The bound is per process (`llm.max_pending_items`), set when a flow is built
(`configure`, which also forgets the logics of any earlier flow in the process). It can be
overshot by what is already on its way through the dataflow when the sources pause: a
source reads while the count is below the bound, so the count can reach the bound minus
one plus one read batch per input partition of the process (`kafka.batch_size`, also the
file source's lines per read), plus items routed from other processes' inputs, which pause
on their own process's count. `stats()` reports the highest count the sources saw and how
many reads they skipped (`bench.backpressure` checks the first against that overshoot).
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

PAUSE_S = 0.02
"""How long a paused source waits before asking again."""


class Holder(Protocol):
    held: int
    """Items it holds now."""


@dataclass(frozen=True)
class Stats:
    """What the sources of this process saw since the flow was built (`configure`)."""

    limit: int | None
    """The bound (`llm.max_pending_items`); None: never pause."""
    pending: int
    """Items the LLM stage holds now."""
    high_water: int
    """The most items the LLM stage held when a source asked (`saturated`)."""
    paused_reads: int
    """Reads the sources skipped because the stage was at the bound."""


_lock = threading.Lock()
_holders: weakref.WeakSet[Holder] = weakref.WeakSet()
_limit: int | None = None
_high_water = 0
_paused_reads = 0


def configure(limit: int | None) -> None:
    """Set this process's bound on pending LLM items (None: never pause) for a new flow."""
    global _limit, _holders, _high_water, _paused_reads
    with _lock:
        _limit = limit
        _holders = weakref.WeakSet()
        _high_water = 0
        _paused_reads = 0


def register(holder: Holder) -> None:
    """Count `holder.held` in this process's pending items (until it is garbage)."""
    with _lock:
        _holders.add(holder)


def pending() -> int:
    """Items the LLM stage of this process holds now."""
    with _lock:
        holders = list(_holders)
    return sum(h.held for h in holders)


def saturated() -> bool:
    """True while the LLM stage holds at least the configured bound."""
    global _high_water, _paused_reads
    limit = _limit
    if limit is None:
        return False
    n = pending()
    with _lock:
        _high_water = max(_high_water, n)
        if n >= limit:
            _paused_reads += 1
            return True
    return False


def stats() -> Stats:
    """The bound, the count now, and what the sources saw since `configure`."""
    n = pending()
    with _lock:
        return Stats(_limit, n, _high_water, _paused_reads)


def pause_until() -> datetime:
    """When a source that paused should be woken again."""
    return datetime.fromtimestamp(time.time(), UTC) + timedelta(seconds=PAUSE_S)
