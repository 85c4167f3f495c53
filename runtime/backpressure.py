"""Backpressure: the inputs of a process pause while its LLM stage holds too many items.

Each logic of the LLM stage registers itself (`register`) and keeps `held`, the items it
holds (buffered or in flight). The sources ask `saturated()` before every read and, while
it is true, read nothing and ask Bytewax to wake them again in `PAUSE_S` (`pause_until`).
The backlog then stays in Kafka (or in the input file), which is the buffer during an LLM
outage or a slow endpoint, instead of growing the process's memory and its snapshots.

The bound is per process (`llm.max_pending_items`), set when a flow is built
(`configure`, which also forgets the logics of any earlier flow in the process). It can be
overshot by what is already on its way through the dataflow when the sources pause: about
one read batch per input partition of the process (`kafka.batch_size`), plus items routed
from other processes' inputs, which pause on their own process's count.
"""

from __future__ import annotations

import threading
import time
import weakref
from datetime import UTC, datetime, timedelta
from typing import Protocol

PAUSE_S = 0.02
"""How long a paused source waits before asking again."""


class Holder(Protocol):
    held: int
    """Items it holds now."""


_lock = threading.Lock()
_holders: weakref.WeakSet[Holder] = weakref.WeakSet()
_limit: int | None = None


def configure(limit: int | None) -> None:
    """Set this process's bound on pending LLM items (None: never pause) for a new flow."""
    global _limit, _holders
    with _lock:
        _limit = limit
        _holders = weakref.WeakSet()


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
    limit = _limit
    return limit is not None and pending() >= limit


def pause_until() -> datetime:
    """When a source that paused should be woken again."""
    return datetime.fromtimestamp(time.time(), UTC) + timedelta(seconds=PAUSE_S)
