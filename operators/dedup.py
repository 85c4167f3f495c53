"""Drop events whose `event_id` was already seen for the same entity within a TTL.

State per entity key: `{event_id: first_seen_wall_time}`, pruned to the TTL on every batch,
capped at `max_ids` (oldest dropped first), and discarded once empty. The snapshot is a copy
of that dict. Because this state lives in Bytewax (rewound on recovery together with the input
offsets), a replay after a crash is not mistaken for a duplicate.

Downtime does not count towards the TTL: ids resumed from a snapshot are moved in wall time so
that the newest of them was seen at the restart (the stop did not happen for them, as Bytewax
replays every event after the snapshot). A repeat replayed after an outage longer than the TTL
is still a duplicate; the TTL of real time after the restart still expires the ids.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeGuard

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from core.clock import Clock, wake_at
from core.records import Event


class SeenIds:
    """Pure TTL set of event ids (insertion-ordered, so the oldest is first).

    `state` is a snapshot (a copy of `seen`) to resume. `now`, given with it, is the wall
    time of the resume: every stamp moves by the time from the newest one (the last time an
    id was added) to `now`, so the downtime does not age the ids. Without `now` the stamps
    are kept as they are.

    >>> ids = SeenIds(ttl_s=3600.0, max_ids=100)
    >>> ids.check_and_add("e1", now=1000.0)
    True
    >>> restart = 1000.0 + 10 * 3600.0  # ten hours of downtime
    >>> resumed = SeenIds(3600.0, 100, dict(ids.seen), now=restart)
    >>> resumed.prune(restart + 60.0)
    >>> resumed.check_and_add("e1", now=restart + 60.0)  # a repeat a minute later
    False
    """

    def __init__(
        self,
        ttl_s: float,
        max_ids: int,
        state: dict[str, float] | None = None,
        now: float | None = None,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_ids = max_ids
        self.seen: dict[str, float] = dict(state) if state else {}
        if self.seen and now is not None:
            # The snapshot is only the ids (its format is kept): the newest stamp is the last
            # clock reading it holds. Prunes after it are not recorded, so across one restart
            # ids may outlive the TTL by the idle time before the stop, never less.
            dt = now - max(self.seen.values())
            self.seen = {k: t + dt for k, t in self.seen.items()}

    def prune(self, now: float) -> None:
        cutoff = now - self.ttl_s
        seen = self.seen
        while seen:
            first = next(iter(seen))
            if seen[first] >= cutoff:
                break
            del seen[first]

    def check_and_add(self, event_id: str, now: float) -> bool:
        """True if `event_id` is new (and remember it), False if it is a duplicate."""
        if event_id in self.seen:
            return False
        self.seen[event_id] = now
        if len(self.seen) > self.max_ids:
            del self.seen[next(iter(self.seen))]
        return True

    def expires_at(self) -> float | None:
        if not self.seen:
            return None
        return self.seen[next(iter(self.seen))] + self.ttl_s


@dataclass(frozen=True)
class Duplicate:
    """A repeated event (internal to this operator; first sightings pass unwrapped)."""

    event: Event


class _DedupLogic(StatefulBatchLogic[Event, Event | Duplicate, dict[str, float]]):
    def __init__(self, ids: SeenIds, clock: Clock) -> None:
        self.ids = ids
        self.clock = clock

    def on_batch(self, values: list[Event]) -> tuple[Iterable[Event | Duplicate], bool]:
        now = self.clock()
        ids = self.ids
        ids.prune(now)
        out = [e if ids.check_and_add(e.event_id, now) else Duplicate(e) for e in values]
        return out, self.RETAIN

    def on_notify(self) -> tuple[Iterable[Event | Duplicate], bool]:
        self.ids.prune(self.clock())
        return (), self.DISCARD if not self.ids.seen else self.RETAIN

    def notify_at(self) -> datetime | None:
        at = self.ids.expires_at()
        return None if at is None else wake_at(at, 1.0)

    def snapshot(self) -> dict[str, float]:
        return dict(self.ids.seen)


def _is_first(kv: tuple[str, Event | Duplicate]) -> TypeGuard[tuple[str, Event]]:
    # `__class__ is` rather than `isinstance`: this runs once per event.
    return kv[1].__class__ is Event


def _duplicate_event(d: Event | Duplicate) -> Event:
    if not isinstance(d, Duplicate):
        msg = f"dedup: the duplicates branch got a first sighting {d!r}"
        raise TypeError(msg)
    return d.event


@dataclass(frozen=True)
class DedupOut:
    """First sightings (`oks`) and dropped duplicates (`dups`), both keyed by entity."""

    oks: KeyedStream[Event]
    dups: KeyedStream[Event]


@operator
def dedup(
    step_id: str,
    up: KeyedStream[Event],
    ttl_s: float,
    max_ids: int,
    clock: Clock = time.time,
) -> DedupOut:
    """Split events into first sightings and duplicates of an `event_id` seen within `ttl_s`.

    Keyed: ids are remembered per entity key, at most `max_ids` of them (the oldest go
    first), each for `ttl_s` of `clock` time (epoch seconds); the wall time between a
    snapshot and the restart that resumes it does not count.

    >>> import bytewax.operators as op
    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> from core.records import Event, Kind
    >>> def chat(event_id):
    ...     return Event(event_id, "chat[0]@0", "acme", Kind.CHAT, "s1", 0.0,
    ...                  {"text": "hi", "role": "user"}, 0.0)
    >>> flow = Dataflow("dedup_eg")
    >>> events = op.input("in", flow, TestingSource([chat("m1"), chat("m2"), chat("m1")]))
    >>> keyed = op.key_on("key", events, lambda e: e.key)
    >>> out = dedup("dedup", keyed, ttl_s=3600, max_ids=1000, clock=lambda: 0.0)
    >>> oks, dups = [], []
    >>> op.output("oks", out.oks, TestingSink(oks))
    >>> op.output("dups", out.dups, TestingSink(dups))
    >>> run_main(flow)
    >>> [(k, e.event_id) for k, e in oks], [(k, e.event_id) for k, e in dups]
    ([('acme/s1', 'm1'), ('acme/s1', 'm2')], [('acme/s1', 'm1')])
    """

    def builder(resume: dict[str, float] | None) -> _DedupLogic:
        # Resumed ids continue at this restart's wall time (see `SeenIds`).
        now = None if resume is None else clock()
        return _DedupLogic(SeenIds(ttl_s, max_ids, resume, now), clock)

    tagged = op.stateful_batch("seen", up, builder)
    split = op.branch("split", tagged, _is_first)
    dups = op.map_value("dups", split.falses, _duplicate_event)
    return DedupOut(oks=split.trues, dups=dups)
