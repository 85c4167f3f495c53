"""Erasure requests: a subject (a user or an entity of a tenant) removed from every store.

A request is one JSON record `{"request_id", "tenant", "subject"}`, optionally with
`requested_at` (ISO 8601 with a time zone: when the subject asked). `parse_erasure` validates
it (invalid ones are the flow's dead letters). `ErasureStore` is this process's erasure
table: `(tenant, subject) -> cutoff` plus one record per request (what it removed, when),
in a rocksdict store that only moves forward, like the profile store: positions in the same
`WriteBatch` as the data, a format key checked at open.

The cutoff is the erasure's point in event time: `requested_at`, or when this process first
read the request when it has none (and never later than that). The rule everywhere
(docs/STATE.md, "Erasure"): data about an erased subject from before the cutoff is removed
and never comes back; newer data (a chat sent after the erasure, a profile update with a
later `updated_at`) is new data and is kept.
"""

from __future__ import annotations

import json
import threading
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rocksdict import WriteBatch

from core.records import RawRecord
from state.stores import META, StoreFormatMismatch, open_store

MAX_ID_CHARS = 512


@dataclass(frozen=True)
class ErasureRequest:
    """One valid request, with where it was read (`source`: `origin[partition]`, `offset`)."""

    request_id: str
    tenant: str
    subject: str
    requested_at: float | None = None
    source: str = ""
    offset: int = -1

    @property
    def key(self) -> str:
        """The keyed-state key of the subject as an entity (`Event.key`)."""
        return f"{self.tenant}/{self.subject}"


def _bad(name: str, value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return f"erasure request needs a non-empty string `{name}`"
    if len(value) > MAX_ID_CHARS:
        return f"erasure request `{name}` is longer than {MAX_ID_CHARS} characters"
    if any(unicodedata.category(c) == "Cc" for c in value):
        return f"erasure request `{name}` contains control characters"
    return None


def parse_erasure(raw: RawRecord) -> ErasureRequest | str:
    """The request in `raw`, or the reason it is invalid.

    >>> rec = RawRecord("erasures", 0, 7, None, b'{"request_id": "r1", "tenant": "acme", '
    ...                 b'"subject": "user-1", "requested_at": "2026-12-01T10:00:00Z"}', "")
    >>> parse_erasure(rec)
    ErasureRequest(request_id='r1', tenant='acme', subject='user-1', \
requested_at=1796119200.0, source='erasures[0]', offset=7)
    >>> parse_erasure(rec._replace(value=b'{"tenant": "acme"}'))
    'erasure request needs a non-empty string `request_id`'
    """
    try:
        obj = json.loads(raw.value or b"")
    except ValueError as exc:
        return f"erasure request is not valid JSON: {exc}"
    except RecursionError:
        return "erasure request is JSON nested too deeply to decode"
    if not isinstance(obj, dict):
        return "erasure request must be a JSON object"
    unknown = sorted(set(obj) - {"request_id", "tenant", "subject", "requested_at"})
    if unknown:
        return f"erasure request has unknown fields {unknown[:5]}"
    for name in ("request_id", "tenant", "subject"):
        reason = _bad(name, obj.get(name))
        if reason:
            return reason
    if obj["tenant"] == META:
        return f"erasure request tenant {META!r} is reserved"
    at = obj.get("requested_at")
    requested_at = None
    if at is not None:
        if not isinstance(at, str):
            return "erasure request `requested_at` must be an ISO 8601 timestamp string"
        try:
            ts = datetime.fromisoformat(at)
        except ValueError:
            return f"erasure request `requested_at` is not an ISO 8601 timestamp: {at[:64]!r}"
        if ts.utcoffset() is None:
            return "erasure request `requested_at` needs a time zone (e.g. `Z`)"
        requested_at = ts.timestamp()
    return ErasureRequest(
        obj["request_id"],
        obj["tenant"],
        obj["subject"],
        requested_at,
        f"{raw.origin}[{raw.partition}]",
        raw.offset,
    )


@dataclass(frozen=True)
class Outcome:
    """What one request did to this process's stores: `removed` counts per store,
    `received_at` (first read here), `applied_at` (every store applied it), `repeat` (it
    was already applied: a replay, a restart, or the flow's copy of a request the table
    had applied first)."""

    request_id: str
    tenant: str
    subject: str
    cutoff: float
    received_at: float
    applied_at: float
    removed: dict[str, int] = field(default_factory=dict)
    repeat: bool = False


_FORMAT_KEY = b"__meta__/format"
_POS_PREFIX = b"__meta__/pos/"
_REQ_PREFIX = b"req/"
_SUBJ_PREFIX = b"subj/"


def _subject_key(tenant: str, subject: str) -> bytes:
    return _SUBJ_PREFIX + json.dumps([tenant, subject], separators=(",", ":")).encode()


class ErasureStore:
    """This process's erasure table (format `erasures-v1`), in memory and on disk.

    Keys: `subj/[tenant, subject] -> {"cutoff", "request_id"}` (the latest cutoff per
    subject); `req/<request_id> -> {"tenant", "subject", "cutoff", "received_at", "state":
    "pending" | "done", "removed", "applied_at", "completed_at"}` (`applied_at`: this
    process's stores applied it; `completed_at`: the flow's steps too, `complete`);
    `__meta__/pos/<origin[partition]> -> highest offset applied`; `__meta__/format`.
    One entry per erased subject and per request: bounded by the requests made, few.

    `cutoff(tenant, subject)` answers from a dict loaded at open and updated with every
    write (the memory step asks for every event); `generation` counts the subjects added,
    so a reader can tell when to look again. Thread-safe; `lock` serialises whole
    erasures (a table's follower and the flow's completion step may apply one at once).
    """

    FORMAT = b"erasures-v1"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.db = open_store(path)
        self.lock = threading.RLock()
        self._check_format()
        self._cutoffs: dict[tuple[str, str], float] = {}
        for key, value in self.db.items(from_key=_SUBJ_PREFIX):
            assert isinstance(key, bytes) and isinstance(value, bytes)  # raw mode
            if not key.startswith(_SUBJ_PREFIX):
                break
            tenant, subject = json.loads(key[len(_SUBJ_PREFIX) :])
            self._cutoffs[(tenant, subject)] = float(json.loads(value)["cutoff"])
        self.generation = len(self._cutoffs)

    def _check_format(self) -> None:
        found = self.db.get(_FORMAT_KEY)
        if found == self.FORMAT:
            return
        if found is None and next(iter(self.db.keys()), None) is None:
            wb = WriteBatch(raw_mode=True)
            wb.put(_FORMAT_KEY, self.FORMAT)
            self.db.write(wb)
            return
        what = "no format key" if found is None else f"format {found.decode(errors='replace')!r}"
        raise StoreFormatMismatch(
            f"erasure store {self.path} holds {what}, this code needs {self.FORMAT.decode()}. "
            "Nothing was changed. Run the version that wrote it, or move it aside and start "
            "again with the erasures input read from its start (every erasure is applied "
            "again, removing nothing already removed)."
        )

    def cutoff(self, tenant: str, subject: str) -> float | None:
        """The erasure cutoff of `tenant/subject` (epoch seconds), None when not erased."""
        return self._cutoffs.get((tenant, subject))

    def __len__(self) -> int:
        return len(self._cutoffs)

    def positions(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for key, value in self.db.items(from_key=_POS_PREFIX):
            assert isinstance(key, bytes) and isinstance(value, bytes)
            if not key.startswith(_POS_PREFIX):
                break
            out[key[len(_POS_PREFIX) :].decode()] = int(value)
        return out

    def commit_positions(self, positions: dict[str, int]) -> None:
        current = self.positions()
        wb = WriteBatch(raw_mode=True)
        for origin, offset in positions.items():
            if offset > current.get(origin, -1):
                wb.put(_POS_PREFIX + origin.encode(), str(offset).encode())
        self.db.write(wb)

    def record(self, request_id: str) -> dict[str, Any] | None:
        raw = self.db.get(_REQ_PREFIX + request_id.encode())
        return None if raw is None else json.loads(raw)

    def begin(self, req: ErasureRequest, now: float) -> dict[str, Any]:
        """Record `req` as pending (first sight) and its subject as erased, in one batch,
        before any store is touched, so lookups refuse the subject from here on and a crash
        mid-way leaves a pending request that is applied again when next seen. Returns the
        request's record (the stored one when it was seen before)."""
        found = self.record(req.request_id)
        if found is not None:
            return found
        cutoff = now if req.requested_at is None else min(req.requested_at, now)
        rec = {
            "tenant": req.tenant,
            "subject": req.subject,
            "cutoff": cutoff,
            "received_at": now,
            "state": "pending",
        }
        wb = WriteBatch(raw_mode=True)
        wb.put(_REQ_PREFIX + req.request_id.encode(), json.dumps(rec).encode())
        key = (req.tenant, req.subject)
        if cutoff > self._cutoffs.get(key, float("-inf")):
            doc = {"cutoff": cutoff, "request_id": req.request_id}
            wb.put(_subject_key(*key), json.dumps(doc).encode())
        self.db.write(wb)
        if cutoff > self._cutoffs.get(key, float("-inf")):
            if key not in self._cutoffs:
                self.generation += 1
            self._cutoffs[key] = cutoff
        return rec

    def finish(self, request_id: str, removed: dict[str, int], now: float) -> dict[str, Any]:
        """Record that this process's stores applied the request, and what they removed."""
        return self._update(request_id, state="done", removed=removed, applied_at=now)

    def complete(
        self, request_id: str, removed: dict[str, int], now: float
    ) -> tuple[dict[str, Any], bool]:
        """Record the flow's completion (every step applied the request; `removed` adds the
        steps' counts) the first time; returns the record and whether this was the first."""
        with self.lock:
            rec = self.record(request_id)
            assert rec is not None and rec["state"] == "done", request_id
            if "completed_at" in rec:
                return rec, False
            total = {**rec["removed"], **removed}
            return self._update(request_id, removed=total, completed_at=now), True

    def _update(self, request_id: str, **fields: Any) -> dict[str, Any]:
        rec = self.record(request_id)
        assert rec is not None, request_id
        rec.update(fields)
        wb = WriteBatch(raw_mode=True)
        wb.put(_REQ_PREFIX + request_id.encode(), json.dumps(rec).encode())
        self.db.write(wb)
        return rec


_stores: dict[str, ErasureStore] = {}
_stores_lock = threading.Lock()


def open_erasures(path: str | Path) -> ErasureStore:
    """The process-wide `ErasureStore` at `path` (shared by workers and the follower)."""
    key = str(Path(path).resolve())
    with _stores_lock:
        store = _stores.get(key)
        if store is None or open_store(key) is not store.db:  # new, or closed by close_all
            store = _stores[key] = ErasureStore(key)
        return store


def close_erasures() -> None:
    """Forget the open erasure tables (their rocksdict handles close with `close_all`)."""
    with _stores_lock:
        _stores.clear()
