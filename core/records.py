"""Records that flow between stages: raw input, the canonical event, and every output record.

Between workers only plain data travels (tuples, dataclasses of str/float/int, dicts), never
pydantic objects: pickling them between processes costs more than the work itself. The
canonical event is validated with pydantic once, at the edge (`operators.validate`), and then
carried as the frozen `Event` dataclass below.

The two records that cross between the processes of a cluster, `Event` (to the keyed steps)
and `WorkItem` (to the LLM stage), pickle as one flat tuple of their fields (`__reduce__`).
Bytewax pickles every item it sends to another process separately, and twice (once to size
the message, once to write it); a slotted dataclass pickles through `_dataclass_getstate`,
`_dataclass_setstate` and, for `Event.kind`, `Enum.__reduce_ex__`, all Python-level calls, so
the default took about 22 us per event and the tuple takes about 8 (`bench/scale.py`).
Work items are rebuilt by their class, so the LLM stage's snapshots read the same before and
after this change.

>>> import pickle
>>> event = Event("m1", "chat[0]@0", "acme", Kind.CHAT, "s1", 0.0, {"text": "hi"}, 0.0, 1)
>>> again = pickle.loads(pickle.dumps(event))
>>> again == event, again.kind is Kind.CHAT
(True, True)
>>> item = WorkItem("m1", ("m1",), "acme", "s1", "u1", "chat_reply", "chat[0]@0",
...                 {"text": "hi"}, {"memory": []}, 0.0, 1, ("prompt_injection",))
>>> pickle.loads(pickle.dumps((item,))) == (item,)
True
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

import orjson

KV = tuple[bytes | None, bytes]

"""An output record: Kafka key (or None) and value bytes."""


class Kind(StrEnum):
    """Discriminator of the canonical event."""

    CHAT = "chat"
    METRIC = "metric"
    BUSINESS = "business"


class RawRecord(NamedTuple):
    """One record as read from a source, before decoding.

    `origin` is the topic (Kafka) or `file:<path>` (files); `partition` and `offset` are the
    Kafka coordinates, or 0 and the 1-based line number for files.
    """

    origin: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    source_name: str


def coords(origin: str, partition: int, offset: int) -> str:
    """Human-readable source coordinates: `topic[partition]@offset` or `file:path:line`."""
    if origin.startswith("file:"):
        return f"{origin}:{offset}"
    return f"{origin}[{partition}]@{offset}"


@dataclass(frozen=True, slots=True)
class Event:
    """The canonical event every adapter produces.

    `ts` is event time as epoch seconds (UTC); `payload` is the kind's typed payload already
    validated, stored as a plain dict (see `operators.validate` for the per-kind schemas).
    """

    event_id: str
    source: str
    tenant: str
    kind: Kind
    entity: str
    ts: float
    payload: dict[str, Any]
    ingest_ts: float
    redactions: int = 0
    flags: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Key for keyed state: the entity, scoped to its tenant."""
        return f"{self.tenant}/{self.entity}"

    def __reduce__(self) -> tuple[Callable[..., Event], tuple[Any, ...]]:
        # The kind travels as its value: pickling the enum member would call back into
        # Python on both sides (see the module docstring).
        return (
            _event,
            (
                self.event_id,
                self.source,
                self.tenant,
                self.kind._value_,
                self.entity,
                self.ts,
                self.payload,
                self.ingest_ts,
                self.redactions,
                self.flags,
            ),
        )


_KIND_OF: dict[str, Kind] = {k.value: k for k in Kind}


def _event(
    event_id: str,
    source: str,
    tenant: str,
    kind: str,
    entity: str,
    ts: float,
    payload: dict[str, Any],
    ingest_ts: float,
    redactions: int,
    flags: tuple[str, ...],
) -> Event:
    """An `Event` from the tuple of `Event.__reduce__`."""
    return Event(
        event_id, source, tenant, _KIND_OF[kind], entity, ts, payload, ingest_ts, redactions, flags
    )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input or work that could not be processed, with everything needed to act on it."""

    step_id: str
    reason: str
    source: str
    raw: bytes | None = None
    event_id: str | None = None
    tenant: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        raw_text: str | None = None
        raw_encoding: str | None = None
        if self.raw is not None:
            try:
                raw_text = self.raw.decode("utf-8")
                raw_encoding = "utf-8"
            except UnicodeDecodeError:
                raw_text = base64.b64encode(self.raw).decode("ascii")
                raw_encoding = "base64"
        return {
            "type": "dead_letter",
            "step_id": self.step_id,
            "reason": self.reason,
            "source": self.source,
            "event_id": self.event_id,
            "tenant": self.tenant,
            "raw": raw_text,
            "raw_encoding": raw_encoding,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Alert:
    """An anomaly with the evidence that raised it."""

    alert_id: str
    detector: str
    tenant: str
    entity: str
    ts: float
    score: float
    value: float
    baseline: float
    threshold: float
    window: dict[str, Any]
    event_ids: tuple[str, ...]
    source: str
    message: str
    change: dict[str, Any] | None = None
    """What kind of change raised it (`operators.anomaly.kinds`): `{"kind": "spike" |
    "level_shift" | "trend" | "variance" | "seasonality", ...evidence}`; None where no kind
    was named (an alert held at the very start of a series)."""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["type"] = "alert"
        out["event_ids"] = list(self.event_ids)
        return out


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One accepted event and what the pipeline did with it."""

    event_id: str
    tenant: str
    kind: str
    entity: str
    route: str
    source: str

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "ledger",
            "event_id": self.event_id,
            "tenant": self.tenant,
            "kind": self.kind,
            "entity": self.entity,
            "route": self.route,
            "source": self.source,
        }


def dumps(obj: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON for output records (orjson: the ledger is written per event)."""
    return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS)


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One unit of LLM work: an event (or an alert) with its task and context.

    `data` is what the model is asked about (redacted text, or an alert's evidence);
    `context` holds the memory and profile it may use. Both are plain JSON-able dicts.
    """

    item_id: str
    event_ids: tuple[str, ...]
    tenant: str
    entity: str
    profile_id: str
    task: str
    source: str
    data: dict[str, Any]
    context: dict[str, Any]
    ingest_ts: float
    redactions: int = 0
    flags: tuple[str, ...] = ()

    def __reduce__(self) -> tuple[type[WorkItem], tuple[Any, ...]]:
        # The class itself rebuilds it, so the LLM stage's snapshots (tuples of work items)
        # stay readable by code before and after this method.
        return (
            WorkItem,
            (
                self.item_id,
                self.event_ids,
                self.tenant,
                self.entity,
                self.profile_id,
                self.task,
                self.source,
                self.data,
                self.context,
                self.ingest_ts,
                self.redactions,
                self.flags,
            ),
        )


@dataclass(frozen=True)
class Response:
    """An answer for one work item, ready for the responses output."""

    item: WorkItem
    task: str
    model: str
    answer: dict[str, Any]
    cached: bool
    emitted_at: float
    citations: tuple[dict[str, Any], ...] = ()
    """The knowledge chunks the answer's prompt carried: `{doc_id, version, chunk_id,
    score}` each, best first."""
    endpoint: str | None = None
    """The `llm.endpoints` entry that answered (None: a cache hit)."""
    fallback: bool = False
    """Answered by the task's fallback model (`model` is then the fallback's)."""

    def to_json(self) -> dict[str, Any]:
        i = self.item
        return {
            "type": "response",
            "item_id": i.item_id,
            "event_ids": list(i.event_ids),
            "tenant": i.tenant,
            "entity": i.entity,
            "task": self.task,
            "model": self.model,
            "answer": self.answer,
            "cached": self.cached,
            "citations": list(self.citations),
            "endpoint": self.endpoint,
            "fallback": self.fallback,
            "source": i.source,
            "flags": list(i.flags),
            "latency_ms": round((self.emitted_at - i.ingest_ts) * 1000, 1),
        }


@dataclass(frozen=True)
class Audit:
    """One audit record (a dict in the audit output's schema): per LLM request or cache hit."""

    record: dict[str, Any]
