"""Context for the LLM: conversation memory per entity and entity profiles.

- `remember`: a keyed `stateful_batch` step holding the last `max_turns` context items per
  entity (chat turns for sessions, business events for accounts), each truncated to
  `max_chars_per_turn`, already redacted. Each event comes out with the memory as it was
  *before* it (its own text travels separately). State: a tuple of small dicts (an immutable
  copy in the snapshot); discarded after `idle_ttl_s` of wall time without events.
- `ProfileSink`: writes profile updates (a topic, or a file in local mode) into the rocksdict
  profile store with idempotent, replay-safe upserts (see `state.stores.ProfileStore`).
- `attach_profiles`: looks the tenant's profile of each work item up in that store; lookups
  are scoped to the item's tenant, so one tenant never sees another's profile.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from config.models import MemoryConfig
from operators.model import Event, Kind, RawRecord, WorkItem
from operators.wake import wake_at
from state.stores import ProfileStore

Clock = Callable[[], float]
Turn = dict[str, Any]


class Memory:
    """Bounded memory of one entity's recent context items. Pure; clock passed in."""

    def __init__(self, cfg: MemoryConfig, state: tuple[tuple[Turn, ...], float] | None = None):
        self.cfg = cfg
        turns, last = state or ((), 0.0)
        self.turns: deque[Turn] = deque(turns, maxlen=cfg.max_turns)
        self.last_wall = last

    @staticmethod
    def item_of(event: Event, limit: int) -> Turn:
        if event.kind is Kind.CHAT:
            text = event.payload["text"]
            role = event.payload["role"]
        else:
            # Business events are kept structured (the payload is small and already
            # validated); serializing them here would cost a JSON encode per event.
            p = event.payload
            return {
                "role": "event",
                "event_type": p["event_type"],
                "amount": p["amount"],
                "currency": p["currency"],
                "attributes": p["attributes"],
                "ts": event.ts,
            }
        if len(text) > limit:
            text = text[: limit - 1] + "…"
        return {"role": role, "text": text, "ts": event.ts}

    def observe(self, event: Event, now: float) -> tuple[Turn, ...]:
        """Return the memory before `event`, then remember it."""
        before = tuple(self.turns)
        self.turns.append(self.item_of(event, self.cfg.max_chars_per_turn))
        self.last_wall = now
        return before

    def state(self) -> tuple[tuple[Turn, ...], float]:
        return tuple(dict(t) for t in self.turns), self.last_wall


@dataclass(frozen=True)
class Remembered:
    event: Event
    memory: tuple[Turn, ...]


class _MemoryLogic(StatefulBatchLogic[Event, Remembered, tuple[tuple[Turn, ...], float]]):
    def __init__(self, mem: Memory, clock: Clock) -> None:
        self.mem = mem
        self.clock = clock

    def on_batch(self, values: list[Event]) -> tuple[Iterable[Remembered], bool]:
        now = self.clock()
        return [Remembered(e, self.mem.observe(e, now)) for e in values], self.RETAIN

    def on_notify(self) -> tuple[Iterable[Remembered], bool]:
        return (), self.DISCARD

    def notify_at(self) -> datetime | None:
        return wake_at(self.mem.last_wall + self.mem.cfg.idle_ttl_s, 1.0)

    def snapshot(self) -> tuple[tuple[Turn, ...], float]:
        return self.mem.state()


@operator
def remember(
    step_id: str, up: KeyedStream[Event], cfg: MemoryConfig, clock: Clock = time.time
) -> KeyedStream[Remembered]:
    """Attach each entity's recent context (before the event) and remember the event."""

    def builder(resume: tuple[tuple[Turn, ...], float] | None) -> _MemoryLogic:
        return _MemoryLogic(Memory(cfg, resume), clock)

    return op.stateful_batch("memory", up, builder)


class ProfileLookup:
    """Adds `context["profile"]` to work items from the profile store (tenant-scoped)."""

    def __init__(self, store_path: str) -> None:
        self.store_path = store_path
        self._store: ProfileStore | None = None

    def apply(self, item: WorkItem) -> WorkItem:
        if self._store is None:
            self._store = ProfileStore(self.store_path)
        profile = self._store.get(item.tenant, item.profile_id)
        if profile is None:
            return item
        return replace(item, context={**item.context, "profile": profile})


@operator
def attach_profiles(step_id: str, up: Stream[WorkItem], store_path: str) -> Stream[WorkItem]:
    """Enrich work items with their entity's profile. Reads only; never raises on a miss."""
    return op.map("lookup", up, ProfileLookup(store_path).apply)


def parse_profile(raw: RawRecord) -> tuple[str, str, dict[str, Any], str, int] | str:
    """A profile update `{"tenant", "entity", "attributes": {...}}`, or the reason it is invalid."""
    try:
        obj = json.loads(raw.value or b"")
    except ValueError as exc:
        return f"profile update is not valid JSON: {exc}"
    except RecursionError:
        return "profile update is JSON nested too deeply to decode"
    if not isinstance(obj, dict):
        return "profile update must be a JSON object"
    tenant, entity, attrs = obj.get("tenant"), obj.get("entity"), obj.get("attributes")
    if not (isinstance(tenant, str) and tenant and isinstance(entity, str) and entity):
        return "profile update needs non-empty string `tenant` and `entity`"
    if not isinstance(attrs, dict):
        return "profile update needs an `attributes` object"
    return tenant, entity, attrs, f"{raw.origin}[{raw.partition}]", raw.offset


class _ProfilePartition(StatelessSinkPartition[RawRecord]):
    def __init__(self, store: ProfileStore) -> None:
        self.store = store

    def write_batch(self, items: list[RawRecord]) -> None:
        updates = []
        for raw in items:
            parsed = parse_profile(raw)
            if isinstance(parsed, tuple):
                updates.append(parsed)
        self.store.upsert_many(updates)


class ProfileSink(DynamicSink[RawRecord]):
    """Writes valid profile updates into the profile store; invalid ones are skipped here
    (the flow sends them to the dead letters through `parse_profile`)."""

    def __init__(self, store_path: str) -> None:
        self.store_path = store_path

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProfilePartition:
        return _ProfilePartition(ProfileStore(self.store_path))
