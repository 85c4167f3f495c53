"""rocksdict stores: entity profiles and the LLM response cache.

These stores are NOT rewound when Bytewax resumes from a snapshot, so every write here is an
idempotent upsert applied atomically (one `WriteBatch`):

- profiles are a versioned table keyed by `tenant/entity` (see `ProfileStore` for the
  ordering rule); the highest offset applied per source (its resume position) is written in
  the same batch as the data, so a replay after a crash, a re-applied seed or a restart can
  never roll a profile back. The store carries a format key, checked at open;
- cached LLM answers are keyed by a fingerprint of the request item (task, model, prompt
  version and the item's prompt data); writing the same answer twice is a no-op in effect.
  They expire after a TTL (RocksDB's TTL mode drops them at compaction, which runs at least
  every half TTL while answers are written), so the cache is bounded by the answers of one
  TTL; the TTL must be longer than any crash-to-resume gap that should replay for free.

RocksDB allows one open handle per process and path; `open_store` shares it between the
workers of a process, and raises `StoreLocked` when another process holds the path. Stores
are opened on first use, never at import time.

Layout (`StoreLayout`): each process of a deployment owns `stores.dir/process-<index>/`, so the
processes of one configuration (`-i/-a`) never share a RocksDB directory. A process reads the
LLM caches of the other process directories (and of the single-directory layout before it)
read-only, which RocksDB allows while their owner holds them: after a restart with another
process count, a replayed request finds the answer whichever process emitted it before.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from rocksdict import AccessType, Options, Rdict, WriteBatch

_lock = threading.Lock()
_open: dict[str, Rdict] = {}
_write_locks: dict[str, threading.Lock] = {}


def write_lock(path: str | Path) -> threading.Lock:
    """The process-wide lock serialising read-modify-write batches on the store at `path`
    (a profile follower and an erasure may write one key at the same time)."""
    key = str(Path(path).resolve())
    with _lock:
        return _write_locks.setdefault(key, threading.Lock())


class StoreError(Exception):
    """A state store cannot be used as it is; the message says what to do."""


class StoreLocked(StoreError):
    """Another process holds the store's directory (RocksDB allows one process per path).

    The processes of one `-i/-a` cluster get their own `stores.dir/process-N` directories;
    this is another run with the same process index on the same `stores.dir` (a second
    deployment, or a process of the last run still alive). Stop it, or give this deployment
    its own `stores.dir`. Nothing was changed on disk.
    """


class StoreFormatMismatch(StoreError):
    """The store on disk was written in another format than this code reads and writes.

    Nothing is deleted or re-created: stop the process, move the directory aside (or point
    `stores.dir` elsewhere) and rebuild it from its sources, or run the version of
    ContextStream that wrote it.
    """


def _is_lock_error(exc: Exception) -> bool:
    # rocksdict raises a bare Exception: "IO error: While lock file: <path>/LOCK: Resource
    # temporarily unavailable" when another process holds the directory.
    msg = str(exc).lower()
    return "lock file" in msg or "/lock:" in msg


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
            try:
                if ttl_s is None:
                    db = Rdict(key, opts)
                else:
                    access = AccessType.with_ttl(max(1, int(ttl_s)))
                    db = Rdict(key, opts, access_type=access)
            except Exception as exc:
                if not _is_lock_error(exc):
                    raise
                raise StoreLocked(
                    f"state store {key} is locked: another process holds it ({exc}). "
                    "Each process of a deployment gets its own directory under `stores.dir` "
                    "by its process index, so this is a second run with the same index on "
                    "the same `stores.dir`: stop the other process first, or give this "
                    "deployment its own `stores.dir`."
                ) from None
            _open[key] = db
        return db


def open_read_only(path: str | Path) -> Rdict:
    """A read-only handle of the store at `path`: it sees the store as of this call and does
    not take RocksDB's lock, so the store's owner may hold it meanwhile."""
    key = str(Path(path).resolve()) + "?read-only"
    with _lock:
        db = _open.get(key)
        if db is None:
            db = _open_read_only(Path(path).resolve())
            _open[key] = db
        return db


def open_read_only_fresh(path: str | Path) -> Rdict:
    """A new read-only handle of the store at `path`, as of now (not shared: close it)."""
    return _open_read_only(Path(path).resolve())


def _open_read_only(path: Path, attempts: int = 5) -> Rdict:
    # The owner may be recovering the store at this moment (replaying its log into new files
    # and deleting the old ones), which a concurrent read-only open can trip over: retry.
    for attempt in range(attempts):
        try:
            return Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
        except Exception as exc:
            if attempt == attempts - 1:
                raise StoreError(
                    f"cannot read the state store {path} of another process ({exc}); "
                    "check its files, or move it aside (answers it cached may be requested "
                    "again)"
                ) from None
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def close_all() -> None:
    """Close every open store (tests and orderly shutdown)."""
    with _lock:
        for db in _open.values():
            db.close()
        _open.clear()


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


class ProfileUpdate(NamedTuple):
    """One profile update: attributes for `tenant/entity`, from `origin` at `offset`
    (attributes None: an erasure's tombstone, `ProfileStore.erase`).

    `version` is the update's own version (an integer; `updated_at` timestamps arrive here as
    microseconds since the epoch), or None when the update carries none.
    """

    tenant: str
    entity: str
    attributes: dict[str, Any] | None
    origin: str
    offset: int
    version: int | None = None


SEED_PREFIX = "seed:"
"""Origins of seed files start with this; a seed is a baseline, below the profile stream."""

META = "__meta__"
"""Tenant name reserved for the store's own keys (`__meta__/...`)."""

_FORMAT_KEY = b"__meta__/format"
_POS_PREFIX = b"__meta__/pos/"


def _newer(new: ProfileUpdate, old: ProfileUpdate) -> bool:
    """Whether `new` replaces `old` for one key (the rule documented on `ProfileStore`)."""
    if new.version != old.version:
        if new.version is None:
            return False
        if old.version is None:
            return True
        return new.version > old.version
    if new.origin == old.origin:
        return new.offset > old.offset
    # A seed never replaces a value of the profile stream; everything else: the later write.
    return not (new.origin.startswith(SEED_PREFIX) and not old.origin.startswith(SEED_PREFIX))


class ProfileStore:
    """Entity profiles as a versioned table (format `profiles-v2`).

    Keys: `tenant/entity -> {"attributes", "version", "origin", "offset"}`;
    `__meta__/pos/<origin> -> highest offset applied` (the resume position of each source,
    written in the same `WriteBatch` as the data it covers); `__meta__/format -> profiles-v2`
    (written when the store is created, checked at every open).

    Ordering rule: an update `U` for a key holding `S`

    1. is a replay and skipped when `U.offset` is at or below the position already committed
       for `U.origin` (whatever key it is for);
    2. else the higher `version` wins; an update without a version ranks below any version,
       so it never replaces a versioned value (and a versioned one always replaces an
       unversioned value);
    3. on equal versions (or none on either side): from the same origin the higher offset
       wins; a seed (origin `seed:...`) never replaces a value from another source (the
       profile stream), while a stream update replaces a seed value or a value of another
       stream origin (offsets of different origins are not comparable: the later write
       wins; give such updates versions when that is not what you want);
    4. an erasure (`erase`) leaves a tombstone (no attributes) versioned by the erasure's
       time in microseconds since the epoch, so by rule 2 only an update with a later
       `updated_at` re-creates the profile; every other update for the key, replays and
       seeds included, is dropped.

    Within one batch the same rule picks the winner per key. Positions assume a source's
    offsets only grow: a re-created topic (offsets from 0 again) needs a fresh store.
    """

    FORMAT = b"profiles-v2"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.db = open_store(path)
        self._check_format()

    def _check_format(self) -> None:
        found = self.db.get(_FORMAT_KEY)
        if found == self.FORMAT:
            return
        if found is None:
            if next(iter(self.db.keys()), None) is None:
                wb = WriteBatch(raw_mode=True)
                wb.put(_FORMAT_KEY, self.FORMAT)
                self.db.write(wb)
                return
            what = "an older format (profiles-v1, no format key)"
        else:
            what = f"format {found.decode(errors='replace')!r}"
        raise StoreFormatMismatch(
            f"profile store {self.path} holds {what}, this code needs "
            f"{self.FORMAT.decode()}. Nothing was changed. Stop the process, move the "
            "directory aside (or set another `stores.dir`) and start again: the profiles are "
            "rebuilt from the seed and the profiles input read from its start (with a fresh "
            "recovery directory)."
        )

    def get(self, tenant: str, entity: str) -> dict[str, Any] | None:
        if tenant == META:
            return None
        raw = self.db.get(f"{tenant}/{entity}".encode())
        if raw is None:
            return None
        attrs: dict[str, Any] | None = json.loads(raw)["attributes"]
        return attrs  # None: an erasure's tombstone

    def erase(self, tenant: str, entity: str, version: int, request_id: str) -> int:
        """Replace the profile of `tenant/entity` by an erasure tombstone of `version` (the
        erasure's time in microseconds since the epoch, the `updated_at` scale); returns 1
        when a profile was removed, 0 when there was none (the tombstone is written anyway,
        so an older update read later never creates it).

        The tombstone is an ordinary versioned value without attributes: by the ordering
        rule only an update with a higher version replaces it (an `updated_at` after the
        erasure); unversioned updates, integer versions (far below that scale) and seeds
        without a later `updated_at` are dropped. Idempotent: erasing again removes nothing.
        """
        key = f"{tenant}/{entity}".encode()
        with write_lock(self.path):
            prior = self._stored(key)
            if prior is not None and prior.attributes is None and (prior.version or 0) >= version:
                return 0
            doc = {
                "attributes": None,
                "version": version,
                "origin": f"erasure:{request_id}",
                "offset": 0,
            }
            wb = WriteBatch(raw_mode=True)
            wb.put(key, _dump(doc))
            self.db.write(wb)
        return int(prior is not None and prior.attributes is not None)

    def positions(self) -> dict[str, int]:
        """The highest offset applied per origin (committed with the data)."""
        out: dict[str, int] = {}
        for key, value in self.db.items(from_key=_POS_PREFIX):
            assert isinstance(key, bytes) and isinstance(value, bytes)  # raw mode
            if not key.startswith(_POS_PREFIX):
                break
            out[key[len(_POS_PREFIX) :].decode()] = int(value)
        return out

    def _stored(self, key: bytes) -> ProfileUpdate | None:
        raw = self.db.get(key)
        if raw is None:
            return None
        doc = json.loads(raw)
        tenant, _, entity = key.decode().partition("/")
        return ProfileUpdate(
            tenant, entity, doc["attributes"], doc["origin"], doc["offset"], doc["version"]
        )

    def upsert_many(
        self, updates: Iterable[ProfileUpdate | tuple[str, str, dict[str, Any], str, int]]
    ) -> int:
        """Apply updates (`ProfileUpdate`s, or 5-tuples without a version) in one write batch,
        by the rule in the class docstring, together with the advanced source positions.

        Returns the number of profiles written.
        """
        with write_lock(self.path):
            return self._upsert_many(updates)

    def _upsert_many(
        self, updates: Iterable[ProfileUpdate | tuple[str, str, dict[str, Any], str, int]]
    ) -> int:
        committed: dict[str, int] = {}
        advanced: dict[str, int] = {}
        latest: dict[bytes, ProfileUpdate | None] = {}
        changed: set[bytes] = set()
        for item in updates:
            u = ProfileUpdate(*item)
            if u.tenant == META:
                raise ValueError(f"tenant {META!r} is reserved for the store's own keys")
            if u.origin not in committed:
                raw_pos = self.db.get(_POS_PREFIX + u.origin.encode())
                committed[u.origin] = -1 if raw_pos is None else int(raw_pos)
            if u.offset <= committed[u.origin]:
                continue  # a replay of what this store has already applied
            advanced[u.origin] = max(advanced.get(u.origin, u.offset), u.offset)
            key = f"{u.tenant}/{u.entity}".encode()
            if key not in latest:
                latest[key] = self._stored(key)
            prior = latest[key]
            if prior is None or _newer(u, prior):
                latest[key] = u
                changed.add(key)
        if not advanced:
            return 0
        wb = WriteBatch(raw_mode=True)
        for key in changed:
            w = latest[key]
            assert w is not None
            doc = {
                "attributes": w.attributes,
                "version": w.version,
                "origin": w.origin,
                "offset": w.offset,
            }
            wb.put(key, _dump(doc))
        for origin, offset in advanced.items():
            wb.put(_POS_PREFIX + origin.encode(), str(offset).encode())
        self.db.write(wb)
        return len(changed)


class StoreLayout:
    """Where one process's stores live under `stores.dir` (see the module docstring).

    >>> layout = StoreLayout("state-stores", process=1)
    >>> str(layout.profiles), str(layout.llm_cache)
    ('state-stores/process-1/profiles', 'state-stores/process-1/llm-cache')
    """

    def __init__(self, root: str | Path, process: int = 0) -> None:
        self.root = Path(root)
        self.process = process
        self.own = self.root / f"process-{process}"
        self.profiles = self.own / "profiles"
        self.llm_cache = self.own / "llm-cache"
        self.knowledge = self.own / "knowledge.sqlite"
        self.erasures = self.own / "erasures"
        self.budgets = self.own / "budgets"

    def peer_caches(self) -> list[Path]:
        """The LLM caches other processes wrote (other `process-N` directories, and the
        single-directory layout of earlier versions), as found now."""
        found = [self.root / "llm-cache", *sorted(self.root.glob("process-*/llm-cache"))]
        own = self.llm_cache.resolve()
        return [p for p in found if (p / "CURRENT").exists() and p.resolve() != own]

    def peer_budgets(self) -> list[Path]:
        """The token-budget stores of the other `process-N` directories, as found now."""
        own = self.budgets.resolve()
        found = sorted(self.root.glob("process-*/budgets"))
        return [p for p in found if (p / "CURRENT").exists() and p.resolve() != own]


class Reply(NamedTuple):
    """The assistant's reply to one turn of a conversation, kept in the response cache.

    Keyed by tenant, entity (the conversation) and the turn's id (its event id), encoded as a
    JSON array after a prefix no fingerprint has, so no ids can collide. The first reply
    recorded for a turn is kept: a replay that emits the turn's answer again adds nothing.
    """

    tenant: str
    entity: str
    turn_id: str
    text: str

    def key(self) -> bytes:
        ids = json.dumps([self.tenant, self.entity, self.turn_id], separators=(",", ":"))
        return _REPLY_PREFIX + ids.encode()


_REPLY_PREFIX = b"reply\x00"


class Summary(NamedTuple):
    """The running summary of a conversation's older turns, kept in the response cache.

    One per tenant and entity; `version` orders them (the event time of the last turn it
    covers, then the fold's number), and a summary replaces the stored one only when newer,
    so a replayed or late summary never replaces a later one.
    """

    tenant: str
    entity: str
    version: tuple[float, int]
    text: str

    def key(self) -> bytes:
        return summary_key(self.tenant, self.entity)


def summary_key(tenant: str, entity: str) -> bytes:
    return _SUMMARY_PREFIX + json.dumps([tenant, entity], separators=(",", ":")).encode()


_SUMMARY_PREFIX = b"summary\x00"


_OWNER_PREFIX = b"owner\x00"


def owner_prefix(tenant: str, subject: str) -> bytes:
    """The prefix of the index entries `owner\\0[tenant, subject]\\0<key>` that name the
    cache entries (answers, replies, summaries) written for a subject, so an erasure finds
    them without reading the cache."""
    ids = json.dumps([tenant, subject], separators=(",", ":")).encode()
    return _OWNER_PREFIX + ids + b"\x00"


Owner = tuple[bytes, str, str]
"""A cache key written for a subject: (key, tenant, subject)."""


_TTL_SUFFIX = 4
"""Bytes RocksDB's TTL mode appends to each value (its write time), visible to a read-only
handle, which opens the store without TTL mode."""


class ResponseCache:
    """LLM answers by item fingerprint, written before an answer is emitted, kept `ttl_s`.

    `peers` are the caches of other processes (`StoreLayout.peer_caches`): a miss here is looked
    up there, read-only, as they were when this cache was opened. Thread-safe (RocksDB is);
    shared by a process's request threads.
    """

    DEFAULT_TTL_S = 7 * 24 * 3600.0

    def __init__(
        self,
        path: str | Path,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
        peers: Iterable[str | Path] = (),
    ) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self.path = Path(path)
        self.db = open_store(path, ttl_s)
        self._check_format(self.db, self.path, stamped=False)
        self._stamp_format()
        self.peers = []
        for peer in peers:
            db = open_read_only(peer)
            self._check_format(db, Path(peer), stamped=True)
            self.peers.append(db)
        self.erased: Callable[[str, str], float | None] | None = None
        """The erasure lookup (`state.erasure.ErasureStore.cutoff`): summaries of erased
        conversations older than the erasure are not read, here or in a peer cache."""
        self._compact_every = min(ttl_s / 2, 3600.0)
        self._last_compaction = clock()
        self._lock = threading.Lock()

    FORMAT = b"llm-cache-v1"

    def _check_format(self, db: Rdict, path: Path, *, stamped: bool) -> None:
        """Refuse a store of another format. Like every entry, the format key expires after
        the TTL; it is written again at each open and compaction, so a store without it
        either never had it (before formats, or empty) or was idle for a whole TTL."""
        found = db.get(_FORMAT_KEY)
        if found is None:
            return
        if stamped:
            found = found[:-_TTL_SUFFIX]
        if found != self.FORMAT:
            raise StoreFormatMismatch(
                f"LLM response cache {path} holds format "
                f"{found.decode(errors='replace')!r}, this code needs {self.FORMAT.decode()}. "
                "Nothing was changed. Move the directory aside (the cached answers in it may "
                "then be requested again after a replay) or run the version that wrote it."
            )

    def _stamp_format(self) -> None:
        wb = WriteBatch(raw_mode=True)
        wb.put(_FORMAT_KEY, self.FORMAT)
        self.db.write(wb)

    def get(self, fingerprint: str) -> dict[str, Any] | None:
        found = self.lookup(fingerprint)
        return None if found is None else found[0]

    def lookup(self, fingerprint: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The cached answer and the knowledge chunks its prompt cited (see `put_many`)."""
        key = fingerprint.encode()
        raw = self.db.get(key)
        if raw is None:
            for peer in self.peers:
                found = peer.get(key)
                if found is not None:
                    raw = found[:-_TTL_SUFFIX]
                    break
            else:
                return None
        doc = json.loads(raw)
        if self.clock() - doc["t"] > self.ttl_s:
            return None  # expired, not yet compacted away
        answer: dict[str, Any] = doc["a"]
        return answer, doc.get("c", [])

    def put_many(
        self,
        entries: dict[str, dict[str, Any]],
        replies: Iterable[Reply] = (),
        summaries: Iterable[Summary] = (),
        citations: dict[str, list[dict[str, Any]]] | None = None,
        owners: Iterable[Owner] = (),
    ) -> None:
        """Write answers by fingerprint (with the knowledge chunks each one's prompt cited,
        by fingerprint) and, in the same batch, the conversation replies and summaries among
        them (first reply per turn wins, see `Reply`; a summary only
        over an older one, see `Summary`) and the `owners` index entries (which subject
        each written key is about, for `erase`; writing one again changes nothing)."""
        now = self.clock()
        wb = WriteBatch(raw_mode=True)
        for key, tenant, subject in owners:
            wb.put(owner_prefix(tenant, subject) + key, b"")
        cited = citations or {}
        for fp, answer in entries.items():
            doc = {"a": answer, "t": now}
            if cited.get(fp):
                doc["c"] = cited[fp]  # a replay re-emits the answer with what it cited
            wb.put(fp.encode(), _dump(doc))
        added = 0
        for reply in replies:
            key = reply.key()
            if self.db.get(key) is None:
                wb.put(key, _dump({"r": reply.text, "t": now}))
                added += 1
        for summary in summaries:
            key = summary.key()
            found = self.db.get(key)
            if found is None or tuple(json.loads(found)["v"]) < summary.version:
                wb.put(key, _dump({"s": summary.text, "v": list(summary.version), "t": now}))
                added += 1
        if not entries and not added:
            return
        self.db.write(wb)
        self._maybe_compact(now)

    def summary(self, tenant: str, entity: str) -> str | None:
        """The newest summary of the conversation `tenant/entity` here or in a peer cache."""
        key = summary_key(tenant, entity)
        best: tuple[tuple[float, int], str] | None = None
        raw = self.db.get(key)
        candidates = [] if raw is None else [raw]
        for peer in self.peers:
            hit = peer.get(key)
            if hit is not None:
                candidates.append(hit[:-_TTL_SUFFIX])
        cutoff = None if self.erased is None else self.erased(tenant, entity)
        for doc in map(json.loads, candidates):
            version = (float(doc["v"][0]), int(doc["v"][1]))
            if cutoff is not None and version[0] <= cutoff:
                continue  # covers turns of an erased conversation (a peer's, or late)
            if best is None or version > best[0]:
                best = (version, doc["s"])
        return None if best is None else best[1]

    def replies(self, tenant: str, entity: str, turn_ids: Iterable[str]) -> dict[str, str]:
        """The recorded replies to `turn_ids` of the conversation `tenant/entity`, by turn id
        (here, then in the peer caches as they were at open)."""
        found: dict[str, str] = {}
        for turn_id in turn_ids:
            key = Reply(tenant, entity, turn_id, "").key()
            raw = self.db.get(key)
            if raw is None:
                for peer in self.peers:
                    hit = peer.get(key)
                    if hit is not None:
                        raw = hit[:-_TTL_SUFFIX]
                        break
                else:
                    continue
            found[turn_id] = json.loads(raw)["r"]
        return found

    def erase(self, tenant: str, subject: str) -> dict[str, int]:
        """Delete what this cache holds for `tenant/subject`: every entry its `owners` index
        names (answers, replies, summaries written for items of the subject as entity or
        user), the conversation's summary and replies (also those written before the index
        existed), and the index entries, in one batch. Returns the entries removed by kind
        (`answers`, `replies`, `summaries`); idempotent (again: all zero).

        Peer caches are read-only here: each process erases its own cache (every process
        applies every erasure), and a read of a peer's summary checks `erased`."""
        targets: set[bytes] = set()
        drop: list[bytes] = []
        prefix = owner_prefix(tenant, subject)
        for key in self.db.keys(from_key=prefix):
            assert isinstance(key, bytes)  # raw mode
            if not key.startswith(prefix):
                break
            drop.append(key)
            targets.add(key[len(prefix) :])
        targets.add(summary_key(tenant, subject))
        conversation = Reply(tenant, subject, "", "").key()[:-3]  # `...,"subject",` prefix
        for key in self.db.keys(from_key=conversation):
            assert isinstance(key, bytes)
            if not key.startswith(conversation):
                break
            targets.add(key)
        removed = {"answers": 0, "replies": 0, "summaries": 0}
        wb = WriteBatch(raw_mode=True)
        for key in sorted(targets):
            if self.db.get(key) is None:
                continue
            wb.delete(key)
            if key.startswith(_REPLY_PREFIX):
                removed["replies"] += 1
            elif key.startswith(_SUMMARY_PREFIX):
                removed["summaries"] += 1
            else:
                removed["answers"] += 1
        for key in drop:
            wb.delete(key)
        if drop or any(removed.values()):
            self.db.write(wb)
        return removed

    def _maybe_compact(self, now: float) -> None:
        with self._lock:
            if now - self._last_compaction < self._compact_every:
                return
            self._last_compaction = now
        self._stamp_format()  # keeps the format key younger than the TTL
        # Compaction is where RocksDB's TTL mode drops expired answers from disk.
        self.db.compact_range(None, None)
