"""Conversation memory per entity: the recent context each event's prompt sees.

`remember` is a keyed `stateful_batch` step holding the last `max_turns` context items per
  entity (chat turns for sessions, business events for accounts), each truncated to
  `max_chars_per_turn`, already redacted. Each event comes out with the memory as it was
  *before* it (its own text travels separately). State: a tuple of small dicts (an immutable
  copy in the snapshot) and the wall time of the last event; discarded after `idle_ttl_s` of
  wall time without events.

Downtime does not count towards that idle time: a memory resumed from a snapshot takes the
restart's wall time as its last event's (the stop did not happen for it, as Bytewax replays
every event after the snapshot), so a restart after an outage longer than `idle_ttl_s` does
not forget the context, and `idle_ttl_s` of real idle time after the restart still does.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from config.models import MemoryConfig
from core.clock import Clock, wake_at
from core.records import Event, Kind
from inference.prompts import estimate_tokens
from runtime.metrics import ERASED_DROPPED
from state.erasure import ErasureRequest

Turn = dict[str, Any]


class Memory:
    """Bounded memory of one entity's recent context items. Pure; clock passed in.

    With `cfg.max_tokens` set, the memory folds instead of dropping: at a chat turn, when it
    holds `max_turns` items or their estimated tokens (each turn counted twice, for the reply
    the LLM stage adds to it) pass `max_tokens`, the oldest items leave the memory, until it
    holds at most half of either, as a *fold*, numbered by `folds`, which the route turns
    into a summarize work item (`inference.conversation`); the summary then stands in for
    them in later prompts.

    `state` is a snapshot (`state()`: the items, the wall time of the last event and the
    number of folds so far) to resume. `now`, given with it, is the wall time of the resume:
    the idle time is counted from there (the last event is the last time the memory read the
    clock, so this moves every wall-clock stamp by the downtime). Without `now` the stamp is
    kept as it is.

    >>> from config.models import MemoryConfig
    >>> from core.records import Event, Kind
    >>> hello = Event("m1", "chat[0]@0", "acme", Kind.CHAT, "s1", 0.0,
    ...               {"text": "hello", "role": "user"}, 0.0)
    >>> mem = Memory(MemoryConfig(idle_ttl_s=1800.0))
    >>> mem.observe(hello, now=1000.0)
    ()
    >>> restart = 1000.0 + 10 * 3600.0  # ten hours of downtime
    >>> Memory(mem.cfg, mem.state(), now=restart).last_wall == restart
    True
    """

    def __init__(
        self,
        cfg: MemoryConfig,
        state: tuple[Any, ...] | None = None,
        now: float | None = None,
    ):
        self.cfg = cfg
        # Snapshots before summaries were (turns, last wall time).
        turns, last, folds = (*state, 0)[:3] if state else ((), 0.0, 0)
        self.turns: deque[Turn] = deque(turns, maxlen=cfg.max_turns)
        self.last_wall = last if state is None or now is None else now
        self.folds: int = folds
        self._tokens = sum(_turn_tokens(t) for t in self.turns)

    @staticmethod
    def item_of(event: Event, limit: int) -> Turn:
        if event.kind is Kind.CHAT:
            text = event.payload["text"]
            role = event.payload["role"]
        else:
            # Business events are kept structured (the payload is small and already
            # validated); serializing them here would cost a JSON encode per event. The
            # payload's keys are the adapter's (`business_event`: event_type, amount,
            # currency, attributes; a declared adapter: its own), in the adapter's order.
            turn: Turn = {"role": "event", **event.payload, "ts": event.ts}
            turn["role"] = "event"
            return turn
        if len(text) > limit:
            text = text[: limit - 1] + "…"
        # The id lets the LLM stage put the assistant's reply after the turn
        # (`inference.conversation`); the user lets an erasure of that user find it (both
        # are left out of prompts).
        turn = {"role": role, "text": text, "ts": event.ts, "id": event.event_id}
        user = event.payload.get("user_id")
        if user:
            turn["user"] = user
        return turn

    def purge(self, tenant: str, entity: str, cutoff: Callable[[str, str], float | None]) -> int:
        """Drop the turns about an erased subject from before its erasure: every turn of
        an erased entity (this memory's) and every turn of an erased user, with an event
        time at or before the subject's `cutoff`; returns how many were dropped."""
        own = cutoff(tenant, entity)
        kept: list[Turn] = []
        for turn in self.turns:
            ts = float(turn.get("ts") or 0.0)
            user = turn.get("user")
            mine = own is not None and ts <= own
            theirs = user is not None and (c := cutoff(tenant, user)) is not None and ts <= c
            if not (mine or theirs):
                kept.append(turn)
        dropped = len(self.turns) - len(kept)
        if dropped:
            self.turns = deque(kept, maxlen=self.cfg.max_turns)
            self._tokens = sum(_turn_tokens(t) for t in kept)
        return dropped

    def observe(self, event: Event, now: float) -> tuple[Turn, ...]:
        """Return the memory before `event`, then remember it."""
        return self.observe_folding(event, now)[0]

    def observe_folding(self, event: Event, now: float) -> tuple[tuple[Turn, ...], Fold | None]:
        """Return the memory before `event` and the fold it caused (None: none), then
        remember it."""
        before = tuple(self.turns)
        turn = self.item_of(event, self.cfg.max_chars_per_turn)
        fold = None
        limit = self.cfg.max_tokens
        if limit is not None and event.kind is Kind.CHAT:  # business memories just drop
            new = _turn_tokens(turn)
            if len(self.turns) + 1 > self.cfg.max_turns or 2 * (self._tokens + new) > limit:
                fold = self._fold(new, limit)
        if fold is None and len(self.turns) == self.cfg.max_turns:
            self._tokens -= _turn_tokens(self.turns[0])  # dropped by the deque
        self.turns.append(turn)
        self._tokens += _turn_tokens(turn)
        self.last_wall = now
        return before, fold

    def _fold(self, new: int, limit: int) -> Fold | None:
        """Take the oldest turns out as the next fold, until the memory with the new turn
        (of `new` tokens) holds at most half of `max_turns` and of `limit`; None when
        there is nothing to fold (one turn alone is over the limit)."""
        out: list[Turn] = []
        keep = self.cfg.max_turns // 2
        while self.turns and (len(self.turns) > keep or 4 * (self._tokens + new) > limit):
            turn = self.turns.popleft()
            self._tokens -= _turn_tokens(turn)
            out.append(turn)
        if not out:
            return None
        self.folds += 1
        return Fold(self.folds, tuple(out))

    def state(self) -> tuple[tuple[Turn, ...], float, int]:
        return tuple(dict(t) for t in self.turns), self.last_wall, self.folds


def _turn_tokens(turn: Turn) -> int:
    text = turn.get("text")
    return estimate_tokens(text) if isinstance(text, str) else 16


@dataclass(frozen=True)
class Fold:
    """Turns that left a memory to be summarized, and their number in its folds (1, 2...)."""

    seq: int
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Remembered:
    event: Event
    memory: tuple[Turn, ...]
    fold: Fold | None = None


@dataclass(frozen=True)
class ErasureApplied:
    """An erasure request that passed the memory step of its subject's key, with the turns
    it removed there."""

    request: ErasureRequest
    turns: int


class ErasureLookup(Protocol):
    """What the memory step asks an erasure table (`connectors.reference.ErasureTable`)."""

    @property
    def generation(self) -> int: ...

    def cutoff(self, tenant: str, subject: str) -> float | None: ...

    def erase(self, req: ErasureRequest) -> object: ...

    def __len__(self) -> int: ...


class _MemoryLogic(StatefulBatchLogic[Event, Remembered, tuple[Any, ...]]):
    def __init__(self, mem: Memory, clock: Clock) -> None:
        self.mem = mem
        self.clock = clock

    def on_batch(self, values: list[Event]) -> tuple[Iterable[Remembered], bool]:
        now = self.clock()
        observe = self.mem.observe_folding
        return [Remembered(e, *observe(e, now)) for e in values], self.RETAIN

    def on_notify(self) -> tuple[Iterable[Remembered], bool]:
        # Bytewax wakes the logic by its own system time; whether the memory has expired is
        # decided by the injected clock, like every other expiry in the flow.
        expired = self.clock() >= self.mem.last_wall + self.mem.cfg.idle_ttl_s
        return (), self.DISCARD if expired else self.RETAIN

    def notify_at(self) -> datetime | None:
        return wake_at(self.mem.last_wall + self.mem.cfg.idle_ttl_s, 1.0)

    def snapshot(self) -> tuple[Any, ...]:
        return self.mem.state()


class _ErasingMemoryLogic(_MemoryLogic):
    """The memory logic when erasures are configured: its input also carries the erasure
    requests of its key, and every batch first drops the turns of subjects erased since
    the memory last looked (`Memory.purge`) and the events about an erased subject from
    before its erasure (replays: they are neither remembered nor answered)."""

    def __init__(self, mem: Memory, clock: Clock, table: Callable[[], ErasureLookup]) -> None:
        super().__init__(mem, clock)
        self.table = table
        self._erasures: ErasureLookup | None = None
        self._seen = -1  # the table's generation last purged against (-1: never)

    def on_batch(  # type: ignore[override]
        self, values: list[Event | ErasureRequest]
    ) -> tuple[Iterable[Remembered | ErasureApplied], bool]:
        table = self._erasures
        if table is None:
            table = self._erasures = self.table()
        now = self.clock()
        cutoff = table.cutoff
        out: list[Remembered | ErasureApplied] = []
        erased = False
        for value in values:
            if isinstance(value, ErasureRequest):
                # The table may not have read the request yet (its follower runs apart
                # from the flow): apply it here first (idempotent), then purge by it.
                table.erase(value)
                self._seen = -1
                turns = self.mem.purge(value.tenant, value.subject, cutoff)
                out.append(ErasureApplied(value, turns))
                erased = True
                continue
            if self._seen != table.generation:
                self._seen = table.generation
                if len(table):
                    self.mem.purge(value.tenant, value.entity, cutoff)
            if len(table) and _erased_event(value, cutoff):
                ERASED_DROPPED.labels("events").inc()
                continue
            out.append(Remembered(value, *self.mem.observe_folding(value, now)))
        # An erasure that emptied the memory (or met none) leaves no state behind.
        return out, self.DISCARD if erased and not self.mem.turns else self.RETAIN


def _erased_event(event: Event, cutoff: Callable[[str, str], float | None]) -> bool:
    """Whether `event` is about an erased subject (its entity or its user) and from before
    the erasure (event time at or before the cutoff)."""
    for subject in (event.entity, event.payload.get("user_id")):
        if subject:
            c = cutoff(event.tenant, subject)
            if c is not None and event.ts <= c:
                return True
    return False


@operator
def remember(
    step_id: str, up: KeyedStream[Event], cfg: MemoryConfig, clock: Clock = time.time
) -> KeyedStream[Remembered]:
    """Attach each entity's recent context (before the event) and remember the event.

    Keyed by entity; emits `(key, Remembered(event, memory))`, the memory as it was before
    the event. `clock` (epoch seconds) times the idle expiry; the wall time between a
    snapshot and the restart that resumes it does not count as idle.

    >>> import bytewax.operators as op
    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> from config.models import MemoryConfig
    >>> from core.records import Event, Kind
    >>> def chat(event_id, text):
    ...     return Event(event_id, "chat[0]@0", "acme", Kind.CHAT, "s1", 0.0,
    ...                  {"text": text, "role": "user"}, 0.0)
    >>> turns = [chat("m1", "hello"), chat("m2", "my invoice is wrong"), chat("m3", "thanks")]
    >>> flow = Dataflow("memory_eg")
    >>> keyed = op.key_on("key", op.input("in", flow, TestingSource(turns)), lambda e: e.key)
    >>> out = []
    >>> op.output("out", remember("memory", keyed, MemoryConfig(max_turns=1),
    ...                          clock=lambda: 0.0), TestingSink(out))
    >>> run_main(flow)
    >>> [(r.event.event_id, [t["text"] for t in r.memory]) for _, r in out]
    [('m1', []), ('m2', ['hello']), ('m3', ['my invoice is wrong'])]
    """

    def builder(resume: tuple[Any, ...] | None) -> _MemoryLogic:
        # A resumed memory continues at this restart's wall time (see `Memory`).
        now = None if resume is None else clock()
        return _MemoryLogic(Memory(cfg, resume, now), clock)

    return op.stateful_batch("memory", up, builder)


@dataclass(frozen=True)
class MemoryOut:
    """`oks`: events with their memory (as `remember` emits them); `erased`: the erasure
    requests of the step's input, once each passed the memory of its subject's key."""

    oks: KeyedStream[Remembered]
    erased: KeyedStream[ErasureApplied]


def _is_remembered(kv: tuple[str, Remembered | ErasureApplied]) -> bool:
    return isinstance(kv[1], Remembered)


@operator
def remember_erasing(
    step_id: str,
    up: KeyedStream[Event],
    erasures: KeyedStream[ErasureRequest],
    cfg: MemoryConfig,
    table: Callable[[], ErasureLookup],
    clock: Clock = time.time,
) -> MemoryOut:
    """`remember`, with erasure: `erasures` (keyed by `ErasureRequest.key`, as events are)
    meet the memory of their subject's key, which drops the subject's turns from before the
    erasure; every batch also drops the turns of users erased since the memory last looked,
    and events of an erased subject from before its erasure are dropped, not remembered.

    `table` returns this process's erasure table, read to its end (called at the first
    batch of each key's logic: the flow passes one that bootstraps it once per process).
    The state (its snapshot, its bound) is `remember`'s; the step id is too, so a flow
    gains or loses erasures without losing its memory.

    >>> import bytewax.operators as op
    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> from config.models import MemoryConfig
    >>> from core.records import Event, Kind
    >>> from state.erasure import ErasureRequest
    >>> class Table:  # a table that knows one erasure: user u1 up to t=1.5
    ...     generation = 1
    ...     def cutoff(self, tenant, subject):
    ...         return 1.5 if (tenant, subject) == ("acme", "u1") else None
    ...     def erase(self, req):
    ...         pass
    ...     def __len__(self):
    ...         return 1
    >>> def chat(event_id, ts, user):
    ...     return Event(event_id, "chat[0]@0", "acme", Kind.CHAT, "s1", ts,
    ...                  {"text": event_id, "role": "user", "user_id": user}, 0.0)
    >>> flow = Dataflow("erasing_eg")
    >>> chats = [chat("m1", 1.0, "u1"), chat("m2", 2.0, "u1"), chat("m3", 3.0, "u2")]
    >>> keyed = op.key_on("key", op.input("in", flow, TestingSource(chats)), lambda e: e.key)
    >>> asks = [ErasureRequest("r1", "acme", "u1")]
    >>> erasures = op.key_on("ekey", op.input("er", flow, TestingSource(asks)), lambda r: r.key)
    >>> out = remember_erasing("memory", keyed, erasures, MemoryConfig(), Table, lambda: 0.0)
    >>> seen = []
    >>> op.output("out", out.oks, TestingSink(seen))
    >>> run_main(flow)
    >>> [(r.event.event_id, [t["text"] for t in r.memory]) for _, r in seen]
    [('m2', []), ('m3', ['m2'])]
    """

    def builder(resume: tuple[Any, ...] | None) -> _ErasingMemoryLogic:
        now = None if resume is None else clock()
        return _ErasingMemoryLogic(Memory(cfg, resume, now), clock, table)

    merged = op.merge("with_erasures", up, erasures)
    stepped = op.stateful_batch("memory", merged, builder)  # type: ignore[arg-type]
    split = op.branch("split", stepped, _is_remembered)
    return MemoryOut(split.trues, split.falses)  # type: ignore[arg-type]
