"""rocksdict stores: entity profiles and the LLM response cache.

These stores are NOT rewound when Bytewax resumes from a snapshot, so every write here is an
idempotent upsert applied atomically (one `WriteBatch`):

- profiles are keyed by `tenant/entity` and remember the source coordinates of the update that
  wrote them; a replayed, older update (same source, lower offset) is skipped, so a replay
  after a crash cannot roll a profile back;
- cached LLM answers are keyed by a fingerprint of the request item (task, model, prompt
  version and the item's prompt data); writing the same answer twice is a no-op in effect.
  They expire after a TTL (RocksDB's TTL mode drops them at compaction, which runs at least
  every half TTL while answers are written), so the cache is bounded by the answers of one
  TTL; the TTL must be longer than any crash-to-resume gap that should replay for free.

RocksDB allows one open handle per process and path; `open_store` shares it between the
workers of a process. Stores are opened on first use, never at import time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rocksdict import AccessType, Options, Rdict, WriteBatch

_lock = threading.Lock()
_open: dict[str, Rdict] = {}


def open_store(path: str | Path, ttl_s: float | None = None) -> Rdict:
    """The process-wide handle of the rocksdict store at `path` (created if absent).

    With `ttl_s`, the store is opened in RocksDB's TTL mode: entries older than that are
    dropped when compaction reaches them.
    """
    key = str(Path(path).resolve())
    with _lock:
        db = _open.get(key)
        if db is None:
            Path(key).parent.mkdir(parents=True, exist_ok=True)
            opts = Options(raw_mode=True)
            opts.create_if_missing(True)
            # RocksDB's informational LOG files would otherwise grow without bound.
            opts.set_max_log_file_size(1 << 20)
            opts.set_keep_log_file_num(2)
            if ttl_s is None:
                db = Rdict(key, opts)
            else:
                db = Rdict(key, opts, access_type=AccessType.with_ttl(max(1, int(ttl_s))))
            _open[key] = db
        return db


def close_all() -> None:
    """Close every open store (tests and orderly shutdown)."""
    with _lock:
        for db in _open.values():
            db.close()
        _open.clear()


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


class ProfileStore:
    """Entity profiles: `tenant/entity -> {"attributes": {...}, "origin", "offset"}`."""

    def __init__(self, path: str | Path) -> None:
        self.db = open_store(path)

    def get(self, tenant: str, entity: str) -> dict[str, Any] | None:
        raw = self.db.get(f"{tenant}/{entity}".encode())
        if raw is None:
            return None
        attrs: dict[str, Any] = json.loads(raw)["attributes"]
        return attrs

    def upsert_many(self, updates: list[tuple[str, str, dict[str, Any], str, int]]) -> int:
        """Apply `(tenant, entity, attributes, origin, offset)` updates in one write batch.

        An update is skipped when the stored profile came from the same origin at the same or
        a later offset (a replay). Returns the number of profiles written.
        """
        wb = WriteBatch(raw_mode=True)
        latest: dict[bytes, tuple[str, int, dict[str, Any]]] = {}
        for tenant, entity, attributes, origin, offset in updates:
            key = f"{tenant}/{entity}".encode()
            prior = latest.get(key)
            if prior is None:
                raw = self.db.get(key)
                if raw is not None:
                    doc = json.loads(raw)
                    prior = (doc["origin"], doc["offset"], doc["attributes"])
            if prior is not None and prior[0] == origin and prior[1] >= offset:
                continue
            latest[key] = (origin, offset, attributes)
        for key, (origin, offset, attributes) in latest.items():
            wb.put(key, _dump({"attributes": attributes, "origin": origin, "offset": offset}))
        if latest:
            self.db.write(wb)
        return len(latest)


class ResponseCache:
    """LLM answers by item fingerprint, written before an answer is emitted, kept `ttl_s`.

    Thread-safe (RocksDB is); shared by a process's request threads.
    """

    DEFAULT_TTL_S = 7 * 24 * 3600.0

    def __init__(
        self, path: str | Path, ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.time
    ) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self.db = open_store(path, ttl_s)
        self._compact_every = min(ttl_s / 2, 3600.0)
        self._last_compaction = clock()
        self._lock = threading.Lock()

    def get(self, fingerprint: str) -> dict[str, Any] | None:
        raw = self.db.get(fingerprint.encode())
        if raw is None:
            return None
        doc = json.loads(raw)
        if self.clock() - doc["t"] > self.ttl_s:
            return None  # expired, not yet compacted away
        answer: dict[str, Any] = doc["a"]
        return answer

    def put_many(self, entries: dict[str, dict[str, Any]]) -> None:
        if not entries:
            return
        now = self.clock()
        wb = WriteBatch(raw_mode=True)
        for fp, answer in entries.items():
            wb.put(fp.encode(), _dump({"a": answer, "t": now}))
        self.db.write(wb)
        self._maybe_compact(now)

    def _maybe_compact(self, now: float) -> None:
        with self._lock:
            if now - self._last_compaction < self._compact_every:
                return
            self._last_compaction = now
        # Compaction is where RocksDB's TTL mode drops expired answers from disk.
        self.db.compact_range(None, None)
