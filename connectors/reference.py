"""Reference data: profile updates, knowledge documents and erasure requests (topics, or
files in local mode) into this process's profile store, knowledge index and erasure table.

`parse_profile` validates one update `{"tenant", "entity", "attributes": {...}}`, optionally
with a `version` (integer) or an `updated_at` (ISO 8601 timestamp with a time zone), and
returns the reason when it is invalid (the flow dead-letters those); `ReferenceTable` keeps a
process's whole copy of the input in its versioned profile table (see
`state.stores.ProfileStore` for the ordering rule), read to its end before any event is
enriched; `load_profile_seed` applies a seed file once per content at start, never over newer
values.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, TopicPartition

from config.models import TENANT_PATTERN, SourceConfig
from connectors.kafka_source import check_topics
from core.records import RawRecord
from runtime.metrics import (
    REFERENCE_BOOTSTRAP_SECONDS,
    REFERENCE_FRESHNESS,
    REFERENCE_UPDATES,
)
from runtime.signals import stop_requested
from state.erasure import ErasureRequest, Outcome, open_erasures, parse_erasure
from state.knowledge import Embedder, RetrievalSettings, SqliteKnowledgeIndex
from state.knowledge import apply_records as knowledge_apply
from state.stores import META, SEED_PREFIX, ProfileStore, ProfileUpdate, ResponseCache

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _version(obj: dict[str, Any]) -> int | str | None:
    """The update's version (`updated_at` as microseconds since the epoch), None when it has
    none, or the reason it is invalid. A JSON null counts as absent."""
    version, updated_at = obj.get("version"), obj.get("updated_at")
    if version is not None and updated_at is not None:
        return "profile update must give `version` or `updated_at`, not both"
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int):
            return "profile update `version` must be an integer"
        return version
    if updated_at is None:
        return None
    if not isinstance(updated_at, str):
        return "profile update `updated_at` must be an ISO 8601 timestamp string"
    try:
        ts = datetime.fromisoformat(updated_at)
    except ValueError:
        return f"profile update `updated_at` is not an ISO 8601 timestamp: {updated_at[:64]!r}"
    if ts.utcoffset() is None:
        return "profile update `updated_at` needs a time zone (e.g. `Z` or `+02:00`)"
    return (ts - _EPOCH) // timedelta(microseconds=1)


def parse_profile(raw: RawRecord) -> ProfileUpdate | str:
    """A profile update `{"tenant", "entity", "attributes": {...}}` (plus an optional `version`
    or `updated_at`), or the reason it is invalid."""
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
    if not re.match(TENANT_PATTERN, tenant):
        return 'profile update tenant may not contain "/" or control characters'
    if tenant == META:
        return f"profile update tenant {META!r} is reserved"
    if not isinstance(attrs, dict):
        return "profile update needs an `attributes` object"
    version = _version(obj)
    if isinstance(version, str):
        return version
    return ProfileUpdate(
        tenant, entity, attrs, f"{raw.origin}[{raw.partition}]", raw.offset, version
    )


def apply_records(store: ProfileStore, records: Iterable[RawRecord]) -> int:
    """Apply the valid profile updates among `records` to `store` in one batch (invalid ones
    are the flow's dead letters, through `parse_profile`); returns the profiles written."""
    updates = [u for u in map(parse_profile, records) if isinstance(u, ProfileUpdate)]
    return store.upsert_many(updates) if updates else 0


class TableStore(Protocol):
    """A store a `ReferenceTable` fills: it applies raw records idempotently and says how
    far it has applied each source (`positions`, by `origin[partition]`, committed with the
    data), so a re-read after a crash applies nothing twice."""

    def positions(self) -> dict[str, int]: ...

    def apply(self, records: list[RawRecord]) -> int: ...


class ProfileTable:
    """The profile store as a reference table (`apply_records` on a `ProfileStore`)."""

    def __init__(self, path: str) -> None:
        self.store = ProfileStore(path)

    def positions(self) -> dict[str, int]:
        return self.store.positions()

    def apply(self, records: list[RawRecord]) -> int:
        return apply_records(self.store, records)


class KnowledgeTable:
    """The knowledge index as a reference table (`state.knowledge.apply_records`; invalid
    documents are the flow's dead letters, through its `knowledge_in` input)."""

    def __init__(
        self,
        path: str,
        settings: RetrievalSettings,
        max_doc_bytes: int,
        embedder: Embedder | None = None,
    ) -> None:
        self.index = open_knowledge(path, settings, embedder)
        self.max_doc_bytes = max_doc_bytes

    def positions(self) -> dict[str, int]:
        # The index keeps the next offset to read; tables report the last one applied.
        return {f"{o}[{p}]": n - 1 for (o, p), n in self.index.positions().items()}

    def apply(self, records: list[RawRecord]) -> int:
        changed, _invalid = knowledge_apply(self.index, records, max_doc_bytes=self.max_doc_bytes)
        return changed


class ErasureTable:
    """The erasure table as a reference table: every process applies every request to its
    own stores (`erase`), in order, before it commits the request's position.

    `profiles` (the profile store's path), `knowledge` (opens the knowledge index) and
    `cache` (opens this process's response cache) are the stores a request reaches here;
    None where the deployment has none. The memory step and the prompts reach the rest
    (`operators.memory`, docs/STATE.md "Erasure"). Invalid requests are the flow's dead
    letters (its `erasures_in` input).
    """

    def __init__(
        self,
        path: str,
        *,
        profiles: str | None = None,
        knowledge: Callable[[], SqliteKnowledgeIndex] | None = None,
        cache: Callable[[], ResponseCache] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = open_erasures(path)
        self.profiles = profiles
        self.knowledge = knowledge
        self.cache = cache
        self.clock = clock

    def positions(self) -> dict[str, int]:
        return self.store.positions()

    @property
    def generation(self) -> int:
        return self.store.generation

    def cutoff(self, tenant: str, subject: str) -> float | None:
        return self.store.cutoff(tenant, subject)

    def __len__(self) -> int:
        return len(self.store)

    def apply(self, records: list[RawRecord]) -> int:
        done = 0
        committed = self.store.positions()
        advanced: dict[str, int] = {}
        for rec in records:
            origin = f"{rec.origin}[{rec.partition}]"
            if rec.offset <= committed.get(origin, -1):
                continue
            req = parse_erasure(rec)
            if isinstance(req, ErasureRequest):
                done += not self.erase(req).repeat
            advanced[origin] = max(advanced.get(origin, rec.offset), rec.offset)
        if advanced:
            self.store.commit_positions(advanced)
        return done

    def erase(self, req: ErasureRequest) -> Outcome:
        """Apply `req` to this process's stores, once: a request already done here returns
        its recorded outcome with `repeat` set (same counts, same times)."""
        with self.store.lock:
            rec = self.store.begin(req, self.clock())
            if rec["state"] != "done":
                removed: dict[str, int] = {}
                if self.profiles is not None:
                    version = int(rec["cutoff"] * 1_000_000)
                    store = ProfileStore(self.profiles)
                    removed["profiles"] = store.erase(
                        req.tenant, req.subject, version, req.request_id
                    )
                if self.knowledge is not None:
                    index = self.knowledge()
                    removed["documents"] = index.erase(req.tenant, req.subject, req.request_id)
                if self.cache is not None:
                    removed.update(self.cache().erase(req.tenant, req.subject))
                rec = self.store.finish(req.request_id, removed, self.clock())
                repeat = False
                log.info(
                    "erasure %s applied to this process's stores: %s",
                    req.request_id,
                    removed,
                )
            else:
                repeat = True
        return Outcome(
            req.request_id,
            rec["tenant"],
            rec["subject"],
            rec["cutoff"],
            rec["received_at"],
            rec["applied_at"],
            dict(rec["removed"]),
            repeat,
        )


_indexes: dict[str, SqliteKnowledgeIndex] = {}
_indexes_lock = threading.Lock()


def open_knowledge(
    path: str | Path, settings: RetrievalSettings | None = None, embedder: Embedder | None = None
) -> SqliteKnowledgeIndex:
    """The process-wide handle of the knowledge index at `path` (each thread of the process
    gets its own connection from it); `embedder` (hybrid search) applies to the first open."""
    key = str(Path(path).resolve())
    with _indexes_lock:
        index = _indexes.get(key)
        if index is None:
            index = _indexes[key] = SqliteKnowledgeIndex(key, settings, embedder=embedder)
        return index


def close_knowledge() -> None:
    with _indexes_lock:
        for index in _indexes.values():
            index.close()
        _indexes.clear()


class ReferenceBootstrapError(RuntimeError):
    """A reference input could not be read to its end offsets before events were enriched.

    The message names the input, what is still missing and the setting that bounds the wait
    (`stores.bootstrap_timeout_s`). Nothing was enriched yet; the run can be started again.
    """


class ReferenceTable:
    """This process's whole copy of one reference input, in its store (by default the
    profile store; `table` opens another `TableStore`, such as the knowledge index).

    Like Kafka Streams' GlobalKTable: `bootstrap()` reads every partition from the position
    the store committed up to the end offsets as of the call, before any event is enriched;
    `follow()` then applies updates as they arrive, on a daemon thread. Every process does
    this on its own store, so a lookup finds every profile whichever partitions the process's
    workers read. The store's positions make both idempotent (`ProfileStore`): a re-read after
    a crash applies nothing twice and never rolls a profile back.

    A file input (local mode) is read to its end at bootstrap; it has nothing to follow.
    """

    POLL_RECORDS = 1000

    def __init__(
        self,
        source: SourceConfig | None,
        store_path: str | Path,
        kafka_settings: Mapping[str, str] | None = None,
        *,
        seed: str | None = None,
        timeout_s: float = 120.0,
        tail: bool = True,
        table: Callable[[str], TableStore] = ProfileTable,
    ) -> None:
        self.source = source
        self.table = table
        self.store_path = str(store_path)
        self.kafka_settings = dict(kafka_settings or {})
        self.seed = seed
        self.timeout_s = timeout_s
        self.tail = tail
        self.name = source.name if source is not None else "seed"
        self._consumer: Consumer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.freshness: deque[float] = deque(maxlen=100_000)
        """Seconds from broker timestamp to commit of the records followed (newest last)."""

    def bootstrap(self) -> int:
        """Apply the seed (once per content), then read the input to its end offsets as of
        now; returns the profiles written.

        Raises `ReferenceBootstrapError` when that takes longer than `timeout_s`.
        """
        started = time.monotonic()
        written = 0
        if self.seed is not None:
            written += load_profile_seed(self.seed, self.store_path)
        store = self.table(self.store_path)
        if self.source is not None and self.source.path is not None:
            written += self._bootstrap_file(store, self.source.path)
        elif self.source is not None:
            written += self._bootstrap_kafka(store, started + self.timeout_s)
        seconds = time.monotonic() - started
        REFERENCE_BOOTSTRAP_SECONDS.labels(self.name).set(seconds)
        log.info(
            "reference input %s read to its end in %.2f s: %d records written",
            self.name,
            seconds,
            written,
        )
        return written

    def _bootstrap_file(self, store: TableStore, path: str) -> int:
        origin = f"file:{Path(path)}"
        skip = store.positions().get(f"{origin}[0]", 0)
        written = 0
        batch: list[RawRecord] = []
        with open(path, "rb") as f:
            for line_no, line in enumerate(f, 1):
                if line_no <= skip or not line.strip():
                    continue
                batch.append(RawRecord(origin, 0, line_no, None, line.rstrip(b"\r\n"), ""))
                if len(batch) >= self.POLL_RECORDS:
                    written += store.apply(batch)
                    batch = []
        return written + (store.apply(batch) if batch else 0)

    def _bootstrap_kafka(self, store: TableStore, deadline: float) -> int:
        assert self.source is not None and self.source.topic is not None
        topic = self.source.topic
        parts = check_topics(self.kafka_settings, [topic])[topic]
        committed = store.positions()
        starts = {p: committed.get(f"{topic}[{p}]", -1) + 1 for p in parts}
        consumer = Consumer(
            {
                **self.kafka_settings,
                "group.id": "contextstream-reference",  # assigned, never joined
                "enable.auto.commit": "false",
                "enable.partition.eof": "true",
                # An offset lost to retention or compaction: what is left is the table.
                "auto.offset.reset": "earliest",
                # Followed updates should be searchable fast: the broker answers a fetch
                # after at most this long when there is nothing new (librdkafka: 500 ms).
                "fetch.wait.max.ms": "100",
            }
        )
        consumer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
        self._consumer = consumer
        # The end of a partition is the high watermark of the first fetch answering for it
        # (brokers such as Tansu under-report ListOffsets), or its end-of-partition event.
        ends: dict[int, int] = {}
        nxt = dict(starts)
        pending = set(parts)
        written = 0
        while pending:
            if time.monotonic() > deadline:
                behind = ", ".join(
                    f"[{p}] at {nxt[p]}" + (f" of {ends[p]}" if p in ends else "")
                    for p in sorted(pending)
                )
                raise ReferenceBootstrapError(
                    f"reference input {self.name} (topic {topic}) was not read to its "
                    f"end within stores.bootstrap_timeout_s = {self.timeout_s:g} s (partitions "
                    f"still behind: {behind}); no event was enriched. Check that the broker "
                    "is reachable, or raise stores.bootstrap_timeout_s for a large topic."
                )
            batch: list[RawRecord] = []
            for msg in consumer.consume(self.POLL_RECORDS, 0.2):
                err = msg.error()
                part = msg.partition() or 0
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(part)
                    elif err.fatal():
                        raise ReferenceBootstrapError(
                            f"reference input {self.name}: broker error: {err.str()}"
                        )
                    continue
                offset = msg.offset() or 0
                nxt[part] = offset + 1
                batch.append(RawRecord(topic, part, offset, msg.key(), msg.value(), ""))
            if batch:
                written += store.apply(batch)
            for p in list(pending):
                if p not in ends:
                    hi = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)[1]
                    if hi >= 0:
                        ends[p] = hi
                if p in ends and nxt[p] >= ends[p]:
                    pending.discard(p)
        return written

    def follow(self) -> None:
        """Apply updates as they arrive, on a daemon thread (Kafka inputs with `tail`)."""
        if self._consumer is None or not self.tail or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._follow, name=f"reference-{self.name}", daemon=True
        )
        self._thread.start()

    def _follow(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        store = self.table(self.store_path)
        assert self.source is not None
        topic = self.source.topic
        freshness = REFERENCE_FRESHNESS.labels(self.name)
        while not self._stop.is_set() and not stop_requested():
            batch = []
            stamps = []
            # `consume` returns at the timeout unless POLL_RECORDS arrived: a short one keeps
            # a followed update's way to the store short (bench/freshness.py).
            for msg in consumer.consume(self.POLL_RECORDS, 0.05):
                err = msg.error()
                if err is None:
                    part, offset = msg.partition() or 0, msg.offset() or 0
                    batch.append(RawRecord(topic or "", part, offset, msg.key(), msg.value(), ""))
                    kind, ms = msg.timestamp()
                    if kind != TIMESTAMP_NOT_AVAILABLE:
                        stamps.append(ms / 1000)
                elif err.code() != KafkaError._PARTITION_EOF:
                    log.warning("reference input %s: %s", self.name, err.str())
            if batch:
                store.apply(batch)
                REFERENCE_UPDATES.labels(self.name).inc(len(batch))
                now = time.time()
                for ts in stamps:
                    freshness.observe(now - ts)
                    self.freshness.append(now - ts)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


_tables: dict[tuple[str, str], ReferenceTable] = {}
_tables_lock = threading.Lock()


def ensure_reference(table: ReferenceTable) -> ReferenceTable:
    """Bootstrap `table` once per process (and store) and start following it; later calls
    for the same input and store return the first table. Thread-safe: workers call it
    before their first lookup, the entry points before the flow starts."""
    key = (table.name, str(Path(table.store_path).resolve()))
    with _tables_lock:
        found = _tables.get(key)
        if found is None:
            table.bootstrap()
            table.follow()
            _tables[key] = found = table
        return found


def close_references() -> None:
    """Stop following every reference input (tests and orderly shutdown)."""
    with _tables_lock:
        for table in _tables.values():
            table.close()
        _tables.clear()


def seed_origin(seed: str, content: bytes) -> str:
    """The origin of a seed file's lines: its path and a hash of its content, so each content
    is applied once (its position is committed with its profiles) and an edited seed is new."""
    return f"{SEED_PREFIX}{seed}@{hashlib.sha256(content).hexdigest()[:16]}"


def load_profile_seed(seed: str, store_path: str) -> int:
    """Apply the seed profiles file to the profile store; returns the profiles written.

    A seed content already applied is skipped as a whole (a restart re-applies nothing); an
    edited seed is a new content whose lines apply only where they are newer by the store's
    rule: a seed line never replaces a value that came from the profiles input unless it
    carries a higher `version`/`updated_at`. Invalid lines are skipped with a warning.
    """
    store = ProfileStore(store_path)
    with open(seed, "rb") as f:
        content = f.read()
    origin = seed_origin(seed, content)
    updates = []
    for line_no, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        parsed = parse_profile(RawRecord(origin, 0, line_no, None, line.strip(), "seed"))
        if isinstance(parsed, ProfileUpdate):
            updates.append(parsed._replace(origin=origin))
        else:
            log.warning("profile seed %s line %d skipped: %s", seed, line_no, parsed)
    return store.upsert_many(updates)
