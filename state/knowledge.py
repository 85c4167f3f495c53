"""Knowledge documents: parsing, chunking and a tenant-scoped full-text index (SQLite FTS5).

Documents arrive as JSON (a topic, or a file in local mode), one per record:

- a document `{"tenant", "doc_id", "version", "title", "text", "tags"}` (`title` and `tags`
  optional), which replaces every older version of `tenant/doc_id`;
- a deletion `{"tenant", "doc_id", "version", "deleted": true}`, which removes it.

`parse_document` turns one record into a `KnowledgeUpdate` or the reason it is invalid (the
flow dead-letters those). `chunk_document` splits a document's text into overlapping chunks of
a bounded estimated token count (`core.tokens.estimate_tokens`). `SqliteKnowledgeIndex`
implements `KnowledgeIndex`: `apply` commits updates and the source positions they cover in
one transaction, `search` ranks the chunks of one tenant with FTS5's `bm25()` and returns one
`Hit` per document (its best chunk).

The index is a versioned table like `state.stores.ProfileStore` (see `SqliteKnowledgeIndex`
for the ordering rule): it is NOT rewound when Bytewax resumes, so a replay, a re-read topic or
a restart never rolls a document back or resurrects a deleted one. One writer thread (the
follower) and any number of reader threads share one database file in WAL mode, each thread on
its own connection; readers see what the writer has committed.

Nothing is opened at import time; the index is opened by whoever owns it.
"""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
import threading
import unicodedata
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from core.records import RawRecord
from core.tokens import estimate_tokens
from state.stores import StoreError

FORMAT = "knowledge-v1"
"""The schema this code reads and writes; stored under `meta.format`, checked at open."""

MAX_DOC_BYTES = 1 << 20
"""Records larger than this (bytes of the raw record) are dead-lettered, not indexed."""

MAX_ID_CHARS = 512
"""Longest `tenant` or `doc_id` accepted."""

MAX_TAGS = 64

Position = tuple[str, int]
"""A source partition: (origin, partition), e.g. ("knowledge", 3) or ("file:docs.jsonl", 0)."""


# --- records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnowledgeUpdate:
    """One document version (or deletion) for `tenant/doc_id`, read at `origin[partition]`
    `offset` (offset -1: no source position, e.g. a document built in code)."""

    tenant: str
    doc_id: str
    version: int
    title: str = ""
    text: str = ""
    tags: tuple[str, ...] = ()
    deleted: bool = False
    origin: str = ""
    partition: int = 0
    offset: int = -1


@dataclass(frozen=True)
class Chunk:
    """A piece of a document's text, carrying the document title; `chunk_id` is `doc_id#n`."""

    doc_id: str
    n: int
    title: str
    text: str

    @property
    def chunk_id(self) -> str:
        return f"{self.doc_id}#{self.n}"


@dataclass(frozen=True)
class Hit:
    """A retrieved document: its best chunk and that chunk's score (higher is better)."""

    doc_id: str
    version: int
    chunk_id: str
    score: float
    title: str
    text: str


@dataclass(frozen=True)
class RetrievalSettings:
    """How documents are chunked and queries ranked (generic defaults; see docs/KNOWLEDGE.md
    for the dev figures behind them).

    Chunking: at most `chunk_tokens` estimated tokens per chunk, consecutive chunks sharing
    up to `overlap_tokens`. Ranking: FTS5 `bm25()` over the title and text columns weighted
    `title_weight`/`text_weight`, the query an OR of its terms (English stopwords dropped
    when `stopwords`, at most `max_query_terms`). With `proximity_weight` > 0 the best
    `rerank_depth` chunks get `proximity_weight` times the `bm25()` of the query's
    consecutive term pairs found within `proximity_window` tokens of each other (`NEAR`) added
    to their score: a sequential-dependence feature, rewarding chunks where the query's words
    appear together.
    """

    chunk_tokens: int = 512
    overlap_tokens: int = 64
    title_weight: float = 2.0
    text_weight: float = 1.0
    stopwords: bool = True
    max_query_terms: int = 64
    proximity_weight: float = 0.3
    proximity_window: int = 3
    rerank_depth: int = 200

    def __post_init__(self) -> None:
        if self.chunk_tokens < 16 or not 0 <= self.overlap_tokens < self.chunk_tokens // 2:
            msg = (
                f"chunk_tokens must be >= 16 and overlap_tokens in [0, chunk_tokens / 2), got "
                f"{self.chunk_tokens} and {self.overlap_tokens}"
            )
            raise ValueError(msg)
        if self.title_weight < 0 or self.text_weight <= 0 or self.proximity_weight < 0:
            msg = "title_weight and proximity_weight must be >= 0, text_weight > 0"
            raise ValueError(msg)
        if self.max_query_terms < 1 or self.rerank_depth < 1 or self.proximity_window < 0:
            msg = "max_query_terms and rerank_depth must be >= 1, proximity_window >= 0"
            raise ValueError(msg)


BASELINE = RetrievalSettings(stopwords=False, title_weight=1.0, proximity_weight=0.0)
"""Plain FTS5: `bm25()` with equal column weights, an OR of every query term, no proximity."""


# --- parsing ------------------------------------------------------------------------------


def _bad_id(name: str, value: object) -> str | None:
    if not isinstance(value, str):
        return f"knowledge document `{name}` must be a string"
    if not value.strip():
        return f"knowledge document `{name}` is empty"
    if len(value) > MAX_ID_CHARS:
        return f"knowledge document `{name}` is longer than {MAX_ID_CHARS} characters"
    if any(unicodedata.category(c) == "Cc" for c in value):
        return f"knowledge document `{name}` contains control characters"
    return None


def parse_document(
    raw: bytes | None,
    *,
    origin: str = "",
    partition: int = 0,
    offset: int = -1,
    max_doc_bytes: int = MAX_DOC_BYTES,
) -> KnowledgeUpdate | str:
    """A knowledge document or deletion (module docstring), or the reason it is invalid.

    `origin`, `partition` and `offset` say where the record was read; they order updates of
    equal version and let the index skip replays.
    """
    if raw is None:
        return "knowledge document has no value (a tombstone record?): send a deletion object"
    if len(raw) > max_doc_bytes:
        return (
            f"knowledge document is {len(raw)} bytes, over the limit of {max_doc_bytes}: "
            "split it into several documents"
        )
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return f"knowledge document is not UTF-8: {exc}"
    except ValueError as exc:
        return f"knowledge document is not valid JSON: {exc}"
    except RecursionError:
        return "knowledge document is JSON nested too deeply to decode"
    if not isinstance(obj, dict):
        return "knowledge document must be a JSON object"
    for name in ("tenant", "doc_id"):
        if name not in obj:
            return f"knowledge document has no `{name}`"
        reason = _bad_id(name, obj[name])
        if reason:
            return reason
    version = obj.get("version")
    if version is None:
        return "knowledge document has no `version`"
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        return "knowledge document `version` must be an integer >= 0"
    deleted = obj.get("deleted", False)
    if not isinstance(deleted, bool):
        return "knowledge document `deleted` must be true or false"
    if deleted:
        return KnowledgeUpdate(
            obj["tenant"],
            obj["doc_id"],
            version,
            deleted=True,
            origin=origin,
            partition=partition,
            offset=offset,
        )
    title, text, tags = obj.get("title", ""), obj.get("text"), obj.get("tags", [])
    if title is None:
        title = ""
    if not isinstance(title, str):
        return "knowledge document `title` must be a string"
    if text is None:
        return 'knowledge document has no `text` (a deletion needs `"deleted": true`)'
    if not isinstance(text, str):
        return "knowledge document `text` must be a string"
    if not (title.strip() or text.strip()):
        return "knowledge document has an empty `title` and `text`"
    if tags is None:
        tags = []
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        return "knowledge document `tags` must be a list of non-empty strings"
    if len(tags) > MAX_TAGS:
        return f"knowledge document has more than {MAX_TAGS} `tags`"
    return KnowledgeUpdate(
        obj["tenant"],
        obj["doc_id"],
        version,
        title,
        text,
        tuple(dict.fromkeys(tags)),
        origin=origin,
        partition=partition,
        offset=offset,
    )


# --- chunking -----------------------------------------------------------------------------

_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?;:][\"')\]]*$")


def _tokens(chars: int) -> int:
    # estimate_tokens of a text of `chars` characters, without building the text
    return chars // 4 + 1


def chunk_document(
    doc_id: str, title: str, text: str, chunk_tokens: int = 512, overlap_tokens: int = 64
) -> list[Chunk]:
    """`text` as chunks of at most `chunk_tokens` estimated tokens each (the title is carried
    alongside, not counted), consecutive chunks sharing up to `overlap_tokens`.

    Chunks end at a sentence end when one falls in the second half of the window, else at a
    word boundary; only a single word longer than a chunk is cut inside. The ids are stable:
    the same text gives the same `doc_id#n`. A document without text is one chunk (its title).
    """
    if estimate_tokens(text) <= chunk_tokens:
        return [Chunk(doc_id, 0, title, text)]
    max_chars = chunk_tokens * 4 - 1  # the longest span with estimate_tokens <= chunk_tokens
    spans: list[tuple[int, int]] = []
    for m in _WORD.finditer(text):
        start, end = m.span()
        while end - start > max_chars:  # a "word" longer than a chunk: cut it
            spans.append((start, start + max_chars))
            start += max_chars
        spans.append((start, end))
    chunks: list[Chunk] = []
    i = 0
    while i < len(spans):
        # the longest run of words from i that fits
        j = i
        while j + 1 < len(spans) and spans[j + 1][1] - spans[i][0] <= max_chars:
            j += 1
        if j + 1 < len(spans):
            # prefer a sentence end in the second half of the window
            half = spans[i][0] + max_chars // 2
            for k in range(j, i, -1):
                if spans[k][1] < half:
                    break
                if _SENTENCE_END.search(text[spans[k][0] : spans[k][1]]):
                    j = k
                    break
        chunks.append(Chunk(doc_id, len(chunks), title, text[spans[i][0] : spans[j][1]]))
        if j + 1 >= len(spans):
            break
        # the next chunk starts with the last words of this one, up to overlap_tokens
        nxt = j + 1
        while nxt - 1 > i and _tokens(spans[j][1] - spans[nxt - 1][0]) <= overlap_tokens:
            nxt -= 1
        i = nxt
    return chunks


# --- query terms --------------------------------------------------------------------------

_STOPWORDS = """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself
    yourselves s t d ll m o re ve y"""

STOPWORDS = frozenset(_STOPWORDS.split())
"""English stopwords (NLTK's list without its negated contractions), dropped from queries."""

_TERM = re.compile(r"[^\W_]+")


def query_terms(text: str, stopwords: bool = True, limit: int = 64) -> list[str]:
    """The distinct lower-case word terms of untrusted `text`, in order, at most `limit`.

    Terms hold letters and digits only, so quoted as FTS5 strings they cannot carry query
    syntax (operators, column filters, `NEAR`, `*`, `^`, quotes).
    """
    out: dict[str, None] = {}
    for term in _TERM.findall(text.lower()):
        if stopwords and term in STOPWORDS:
            continue
        out[term] = None
        if len(out) >= limit:
            break
    return list(out)


def fts_query(terms: Iterable[str]) -> str:
    """An FTS5 OR-query of `terms` (each `query_terms` output), every term a quoted string."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


def proximity_query(terms: Sequence[str], window: int = 0) -> str:
    """An FTS5 OR-query of each pair of consecutive `terms` (`query_terms` output): both
    within `window` tokens of each other (`NEAR`), or the exact phrase when `window` is 0."""
    pairs = itertools.pairwise(terms)
    if window <= 0:
        return " OR ".join(f'"{a} {b}"' for a, b in pairs)
    return " OR ".join(f'NEAR("{a}" "{b}", {window})' for a, b in pairs)


# --- the index ----------------------------------------------------------------------------


class KnowledgeFormatMismatch(StoreError):
    """The knowledge index file was written in another format (or is not one at all).

    Nothing is deleted or re-created: stop the process, move the file aside (or configure
    another path) and rebuild it from its source topic or file, or run the version of
    ContextStream that wrote it.
    """


class KnowledgeIndex(Protocol):
    """What the pipeline needs of a knowledge index: a follower applies, prompts search."""

    def apply(
        self, updates: Iterable[KnowledgeUpdate], positions: Mapping[Position, int] | None = None
    ) -> int:
        """Apply `updates` and advance the resume `positions` (source -> next offset to read)
        atomically; returns the number of documents changed."""
        ...

    def search(
        self,
        tenant: str,
        query: str,
        top_k: int = 5,
        *,
        min_score: float = 0.0,
        tags: Collection[str] = (),
    ) -> list[Hit]:
        """The `top_k` documents of `tenant` (carrying every tag in `tags`) best matching
        `query`, best first, each by its best chunk, none scoring below `min_score`."""
        ...

    def positions(self) -> dict[Position, int]:
        """The next offset to read per source partition, as committed with the data."""
        ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE positions (
    origin TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (origin, partition)) WITHOUT ROWID;
CREATE TABLE tenants (tenant TEXT PRIMARY KEY, tid INTEGER NOT NULL UNIQUE) WITHOUT ROWID;
CREATE TABLE docs (
    tenant TEXT NOT NULL, doc_id TEXT NOT NULL, version INTEGER NOT NULL,
    deleted INTEGER NOT NULL, origin TEXT NOT NULL, partition INTEGER NOT NULL,
    offset INTEGER NOT NULL, title TEXT NOT NULL, tags TEXT NOT NULL,
    PRIMARY KEY (tenant, doc_id)) WITHOUT ROWID;
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, doc_id TEXT NOT NULL, n INTEGER NOT NULL);
CREATE UNIQUE INDEX chunks_doc ON chunks (tenant, doc_id, n);
CREATE TABLE doc_tags (
    tenant TEXT NOT NULL, doc_id TEXT NOT NULL, tag TEXT NOT NULL,
    PRIMARY KEY (tenant, doc_id, tag)) WITHOUT ROWID;
CREATE VIRTUAL TABLE chunk_text USING fts5 (
    title, text, tokenize = 'porter unicode61 remove_diacritics 2')
"""

_TENANT_BITS = 32
"""A chunk's rowid is `tid << 32 | n`: each tenant's chunks are one rowid range, which FTS5
scans on its own (`rowid BETWEEN`), so a search reads nothing of another tenant's rows."""

# The tenant's best chunks by the terms' bm25() (FTS5 computes it for every matching row of
# the tenant's range, and keeps the `:depth` best), then per document its best chunk, each
# chunk's score plus the weighted bm25() of the proximity query where it matches. The tenant
# test on `chunks` is a second guard (the rowid range already holds only its rows); CROSS JOIN
# keeps the planner from driving the join from all the tenant's chunks.
_RANK = """
WITH terms AS MATERIALIZED (
    SELECT rowid AS rid, -bm25(chunk_text, :tw, :xw) AS s FROM chunk_text
    WHERE chunk_text MATCH :terms AND rowid BETWEEN :lo AND :hi ORDER BY s DESC LIMIT :depth
){near_cte}
SELECT c.doc_id, c.n, c.id, MAX(terms.s{near_score}) AS best
FROM terms CROSS JOIN chunks AS c ON c.id = terms.rid{near_join}
WHERE c.tenant = :tenant{tags}
GROUP BY c.doc_id HAVING best >= :min_score
ORDER BY best DESC, c.doc_id LIMIT :k
"""

_NEAR_CTE = """, near AS MATERIALIZED (
    SELECT rowid AS rid, -bm25(chunk_text, :tw, :xw) AS s FROM chunk_text
    WHERE chunk_text MATCH :near AND rowid BETWEEN :lo AND :hi
)"""

_TAGS = """ AND (SELECT COUNT(*) FROM doc_tags AS t
    WHERE t.tenant = c.tenant AND t.doc_id = c.doc_id AND t.tag IN ({marks})) = {n}"""


class SqliteKnowledgeIndex:
    """Knowledge documents in one SQLite file: a versioned document table and an FTS5 index of
    their chunks (format `knowledge-v1`).

    Tables: `docs` (tenant, doc_id) -> version, deleted flag, source position, title, tags:
    one row per document seen, a deleted one kept as a tombstone (no chunks, no text);
    `tenants` tenant -> tid, the rowid range of its chunks; `chunks` + `chunk_text` (FTS5,
    porter stemming over unicode61): the live chunks; `doc_tags`; `positions` (origin,
    partition) -> next offset to read; `meta.format`. Every `apply` is one transaction,
    positions included.

    Ordering rule: an update `U` for a document holding `S`

    1. is a replay and skipped when its offset is below the next offset already committed
       for its `origin[partition]` (whatever document it is for);
    2. else replaces `S` when `U.version > S.version`, or on equal versions when both come
       from the same source partition and `U.offset > S.offset`; otherwise it changes
       nothing (a replayed same or older version, or an equal version from another source);
    3. a deletion that wins removes the chunks and leaves `S` as a tombstone of its version,
       so a replayed older version of the document changes nothing.

    Within one batch the updates apply in order by the same rule. Bounded: a replaced or
    deleted document's chunks and text are deleted (`compact()` gives the space back); the
    tombstones (one small row per deleted document id) stay, as the replay rule needs them.

    Tenancy: a search looks its tenant up by exact equality and reads that tenant's rowid
    range only; tenant and document ids are never tokenized. bm25()'s statistics (document
    frequencies, average length) are the whole table's, so one tenant's documents shift
    another's scores slightly, never its results' membership.

    Threads: one connection per thread (WAL mode), opened on the thread's first call and kept
    until `close()` (meant for long-lived threads: workers, the follower); `apply` is
    serialised by a lock; searches run in a read transaction and see the last committed
    `apply`. Positions assume a source's
    offsets only grow: a re-created topic needs a fresh index.
    """

    def __init__(
        self, path: str | Path, settings: RetrievalSettings | None = None, *, busy_s: float = 30.0
    ) -> None:
        self.path = Path(path)
        self.settings = settings or RetrievalSettings()
        self.busy_s = busy_s
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.generation = 0
        """Counts the `apply` calls that changed documents: a cached search result is valid
        while it is unchanged (one process writes its own index)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open_checked()

    # connections

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_s, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.DatabaseError as exc:
            raise self._mismatch(f"a file SQLite cannot read ({exc})") from None
        # WAL with synchronous NORMAL cannot corrupt; a power cut may lose the last
        # transactions, their positions with them, so those records are read again.
        conn.execute("PRAGMA synchronous = NORMAL")
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    @property
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _mismatch(self, what: str) -> KnowledgeFormatMismatch:
        return KnowledgeFormatMismatch(
            f"knowledge index {self.path} holds {what}, this code needs {FORMAT}. Nothing was "
            "changed. Stop the process, move the file aside (or configure another path) and "
            "start again: the index is rebuilt from the knowledge input read from its start."
        )

    def _open_checked(self) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                tables = conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
                names = {r[0] for r in tables}
                if not names:
                    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before the first table
                    for statement in _SCHEMA.split(";"):
                        conn.execute(statement)
                    conn.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
                    conn.execute("COMMIT")
                    return
                found = None
                if "meta" in names:
                    row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
                    found = None if row is None else str(row[0])
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise
            raise self._mismatch(f"a file SQLite cannot read ({exc})") from None
        except sqlite3.DatabaseError as exc:
            raise self._mismatch(f"a file SQLite cannot read ({exc})") from None
        if found == FORMAT:
            return
        if found is None:
            raise self._mismatch("the tables of something else (no knowledge format key)")
        if found.startswith("knowledge-v"):
            raise self._mismatch(f"format {found!r}, of another version of ContextStream")
        raise self._mismatch(f"format {found!r}")

    def close(self) -> None:
        """Close every thread's connection (once no thread uses the index any more)."""
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()

    # writes

    def positions(self) -> dict[Position, int]:
        rows = self._conn.execute("SELECT origin, partition, next_offset FROM positions")
        return {(o, p): n for o, p, n in rows}

    def apply(
        self, updates: Iterable[KnowledgeUpdate], positions: Mapping[Position, int] | None = None
    ) -> int:
        """Apply `updates` by the rule in the class docstring and advance `positions` (source
        partition -> next offset to read, past dead-lettered records too), all in one
        transaction; returns the number of documents added, replaced or deleted."""
        s = self.settings
        batch = list(updates)
        chunked = {
            id(u): chunk_document(u.doc_id, u.title, u.text, s.chunk_tokens, s.overlap_tokens)
            for u in batch
            if not u.deleted
        }
        with self._write_lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                changed = self._apply(conn, batch, chunked, positions or {})
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if changed:
                self.generation += 1
        return changed

    def _apply(
        self,
        conn: sqlite3.Connection,
        batch: list[KnowledgeUpdate],
        chunked: dict[int, list[Chunk]],
        positions: Mapping[Position, int],
    ) -> int:
        committed = self.positions()
        changed = 0
        for u in batch:
            if 0 <= u.offset < committed.get((u.origin, u.partition), 0):
                continue  # a replay of what the index has applied
            row = conn.execute(
                "SELECT version, origin, partition, offset FROM docs "
                "WHERE tenant = ? AND doc_id = ?",
                (u.tenant, u.doc_id),
            ).fetchone()
            if row is not None:
                version, origin, partition, offset = row
                same_source = (origin, partition) == (u.origin, u.partition)
                if u.version < version or (
                    u.version == version and not (same_source and u.offset > offset)
                ):
                    continue
                self._drop_chunks(conn, u.tenant, u.doc_id)
            conn.execute(
                "INSERT OR REPLACE INTO docs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    u.tenant,
                    u.doc_id,
                    u.version,
                    int(u.deleted),
                    u.origin,
                    u.partition,
                    u.offset,
                    "" if u.deleted else u.title,
                    json.dumps([] if u.deleted else list(u.tags)),
                ),
            )
            changed += 1
            if not u.deleted:
                self._add_chunks(conn, u, chunked[id(u)])
        for (origin, partition), nxt in positions.items():
            conn.execute(
                "INSERT INTO positions VALUES (?, ?, ?) ON CONFLICT (origin, partition) "
                "DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
                (origin, partition, nxt),
            )
        return changed

    @staticmethod
    def _tenant_range(conn: sqlite3.Connection, tenant: str, create: bool) -> tuple[int, int]:
        """The rowid range of `tenant`'s chunks ((0, -1), empty, for an unknown tenant)."""
        row = conn.execute("SELECT tid FROM tenants WHERE tenant = ?", (tenant,)).fetchone()
        if row is None:
            if not create:
                return 0, -1
            top = conn.execute("SELECT MAX(tid) FROM tenants").fetchone()[0]
            tid = 1 if top is None else top + 1
            if tid >= 1 << (63 - _TENANT_BITS):
                msg = f"knowledge index has no tenant id left for {tenant[:64]!r}: rebuild it"
                raise StoreError(msg)
            conn.execute("INSERT INTO tenants VALUES (?, ?)", (tenant, tid))
        else:
            tid = row[0]
        lo = tid << _TENANT_BITS
        return lo, lo + (1 << _TENANT_BITS) - 1

    def _add_chunks(
        self, conn: sqlite3.Connection, u: KnowledgeUpdate, chunks: list[Chunk]
    ) -> None:
        conn.executemany(
            "INSERT INTO doc_tags VALUES (?, ?, ?)", [(u.tenant, u.doc_id, t) for t in u.tags]
        )
        lo, hi = self._tenant_range(conn, u.tenant, create=True)
        top = conn.execute("SELECT MAX(id) FROM chunks WHERE id BETWEEN ? AND ?", (lo, hi))
        first = (top.fetchone()[0] or lo) + 1
        if first + len(chunks) > hi:
            msg = f"tenant {u.tenant[:64]!r} has used up its chunk ids: rebuild the index"
            raise StoreError(msg)
        conn.executemany(
            "INSERT INTO chunks (id, tenant, doc_id, n) VALUES (?, ?, ?, ?)",
            [(first + c.n, u.tenant, u.doc_id, c.n) for c in chunks],
        )
        conn.executemany(
            "INSERT INTO chunk_text (rowid, title, text) VALUES (?, ?, ?)",
            [(first + c.n, c.title, c.text) for c in chunks],
        )

    @staticmethod
    def _drop_chunks(conn: sqlite3.Connection, tenant: str, doc_id: str) -> None:
        ids = [
            (r[0],)
            for r in conn.execute(
                "SELECT id FROM chunks WHERE tenant = ? AND doc_id = ?", (tenant, doc_id)
            )
        ]
        conn.executemany("DELETE FROM chunk_text WHERE rowid = ?", ids)
        conn.executemany("DELETE FROM chunks WHERE id = ?", ids)
        conn.execute("DELETE FROM doc_tags WHERE tenant = ? AND doc_id = ?", (tenant, doc_id))

    def compact(self) -> None:
        """Merge the FTS5 index's segments (dropping deleted rows' entries) and give free
        pages back to the file system; for idle moments: it rewrites the whole index."""
        with self._write_lock:
            conn = self._conn
            conn.execute("INSERT INTO chunk_text (chunk_text) VALUES ('optimize')")
            conn.execute("PRAGMA incremental_vacuum")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # reads

    def document(self, tenant: str, doc_id: str) -> dict[str, Any] | None:
        """What the index holds for `tenant/doc_id` (a tombstone has `deleted` true), or None."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            row = conn.execute(
                "SELECT version, deleted, origin, partition, offset, title, tags FROM docs "
                "WHERE tenant = ? AND doc_id = ?",
                (tenant, doc_id),
            ).fetchone()
            chunks = conn.execute(
                "SELECT t.text FROM chunks AS c JOIN chunk_text AS t ON t.rowid = c.id "
                "WHERE c.tenant = ? AND c.doc_id = ? ORDER BY c.n",
                (tenant, doc_id),
            ).fetchall()
        finally:
            conn.execute("COMMIT")
        if row is None:
            return None
        version, deleted, origin, partition, offset, title, tags = row
        return {
            "version": version,
            "deleted": bool(deleted),
            "origin": origin,
            "partition": partition,
            "offset": offset,
            "title": title,
            "tags": json.loads(tags),
            "chunks": [r[0] for r in chunks],
        }

    def search(
        self,
        tenant: str,
        query: str,
        top_k: int = 5,
        *,
        min_score: float = 0.0,
        tags: Collection[str] = (),
    ) -> list[Hit]:
        """The `top_k` documents of `tenant` best matching the untrusted `query` text (see
        `KnowledgeIndex.search`); [] when the query has no searchable term.

        The proximity score is added to the tenant's `rerank_depth` best chunks by the terms
        alone (`top_k` when that is more, all of them when `tags` filter; more when those
        hold fewer than `top_k` documents): a chunk further down could only have risen into
        the results by its proximity score.
        """
        s = self.settings
        terms = query_terms(query, s.stopwords, s.max_query_terms)
        if not terms or top_k <= 0:
            return []
        near = None
        if s.proximity_weight > 0 and len(terms) > 1:
            near = proximity_query(terms, s.proximity_window)
        conn = self._conn
        conn.execute("BEGIN")  # one snapshot for the ranking and the texts
        try:
            lo, hi = self._tenant_range(conn, tenant, create=False)
            depth = -1 if tags else max(s.rerank_depth, top_k)
            while True:
                rows = self._rank(
                    conn, tenant, (lo, hi), terms, near, depth, top_k, min_score, tags
                )
                # Fewer documents than asked from `depth` chunks: the next ones may hold more.
                if len(rows) >= top_k or depth < 0 or not self._more(conn, terms, lo, hi, depth):
                    break
                depth *= 4
            texts = self._texts(conn, [r[2] for r in rows])
            versions = self._versions(conn, tenant, [r[0] for r in rows])
        finally:
            conn.execute("COMMIT")
        return [
            Hit(doc_id, versions[doc_id], f"{doc_id}#{n}", score, *texts[rid])
            for doc_id, n, rid, score in rows
        ]

    def _rank(
        self,
        conn: sqlite3.Connection,
        tenant: str,
        rowids: tuple[int, int],
        terms: list[str],
        near: str | None,
        depth: int,
        top_k: int,
        min_score: float,
        tags: Collection[str],
    ) -> list[tuple[str, int, int, float]]:
        s = self.settings
        params: dict[str, Any] = {
            "terms": fts_query(terms),
            "tw": s.title_weight,
            "xw": s.text_weight,
            "lo": rowids[0],
            "hi": rowids[1],
            "depth": depth,
            "tenant": tenant,
            "min_score": min_score,
            "k": top_k,
        }
        tag_sql = ""
        tag_list = list(dict.fromkeys(tags))
        if tag_list:
            marks = ", ".join(f":tag{i}" for i in range(len(tag_list)))
            tag_sql = _TAGS.format(marks=marks, n=len(tag_list))
            params.update({f"tag{i}": t for i, t in enumerate(tag_list)})
        near_cte = near_score = near_join = ""
        if near is not None:
            near_cte, near_score = _NEAR_CTE, " + :pw * COALESCE(near.s, 0.0)"
            near_join = " LEFT JOIN near ON near.rid = terms.rid"
            params.update(near=near, pw=s.proximity_weight)
        sql = _RANK.format(
            near_cte=near_cte, near_score=near_score, near_join=near_join, tags=tag_sql
        )
        return [(d, n, rid, float(sc)) for d, n, rid, sc in conn.execute(sql, params)]

    @staticmethod
    def _more(conn: sqlite3.Connection, terms: list[str], lo: int, hi: int, depth: int) -> bool:
        sql = "SELECT COUNT(*) FROM chunk_text WHERE chunk_text MATCH ? AND rowid BETWEEN ? AND ?"
        count: int = conn.execute(sql, (fts_query(terms), lo, hi)).fetchone()[0]
        return count > depth

    @staticmethod
    def _texts(conn: sqlite3.Connection, rowids: list[int]) -> dict[int, tuple[str, str]]:
        out: dict[int, tuple[str, str]] = {}
        for i in range(0, len(rowids), 500):
            part = rowids[i : i + 500]
            marks = ", ".join("?" * len(part))
            sql = f"SELECT rowid, title, text FROM chunk_text WHERE rowid IN ({marks})"
            out.update({r: (t, x) for r, t, x in conn.execute(sql, part)})
        return out

    @staticmethod
    def _versions(conn: sqlite3.Connection, tenant: str, doc_ids: list[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in range(0, len(doc_ids), 500):
            part = doc_ids[i : i + 500]
            marks = ", ".join("?" * len(part))
            sql = f"SELECT doc_id, version FROM docs WHERE tenant = ? AND doc_id IN ({marks})"
            out.update(dict(conn.execute(sql, [tenant, *part])))
        return out


def apply_records(
    index: KnowledgeIndex, records: Iterable[RawRecord], *, max_doc_bytes: int = MAX_DOC_BYTES
) -> tuple[int, list[tuple[RawRecord, str]]]:
    """Parse `records` (one poll of the knowledge input) and apply the valid ones in one
    transaction, with the positions past every record, invalid ones included.

    Returns (documents changed, the invalid records with their reasons) for the dead letters.
    Kafka records resume at `offset + 1`; file records (1-based line numbers) at `line + 1`.
    """
    updates: list[KnowledgeUpdate] = []
    invalid: list[tuple[RawRecord, str]] = []
    positions: dict[Position, int] = {}
    for rec in records:
        parsed = parse_document(
            rec.value,
            origin=rec.origin,
            partition=rec.partition,
            offset=rec.offset,
            max_doc_bytes=max_doc_bytes,
        )
        if isinstance(parsed, str):
            invalid.append((rec, parsed))
        else:
            updates.append(parsed)
        key = (rec.origin, rec.partition)
        positions[key] = max(positions.get(key, 0), rec.offset + 1)
    changed = index.apply(updates, positions) if positions else 0
    return changed, invalid
