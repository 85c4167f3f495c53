"""Knowledge documents: parsing, chunking and a tenant-scoped full-text index (SQLite FTS5).

Documents arrive as JSON (a topic, or a file in local mode), one per record:

- a document `{"tenant", "doc_id", "version", "title", "text", "tags", "subjects"}` (`title`,
  `tags` and `subjects` optional; each subject the document is about becomes a tag
  `subject:<id>`, which an erasure of that subject deletes it by), which replaces every older
  version of `tenant/doc_id`;
- a deletion `{"tenant", "doc_id", "version", "deleted": true}`, which removes it.

`parse_document` turns one record into a `KnowledgeUpdate` or the reason it is invalid (the
flow dead-letters those). `chunk_document` splits a document's text into overlapping chunks of
a bounded estimated token count (`core.tokens.estimate_tokens`). `SqliteKnowledgeIndex`
implements `KnowledgeIndex`: `apply` commits updates and the source positions they cover in
one transaction, `search` ranks the chunks of one tenant with FTS5's `bm25()` and returns one
`Hit` per document (its best chunk). With an `Embedder` (an OpenAI-compatible embeddings
endpoint, `inference.embeddings`) every chunk also gets a vector, cached by text, and a search
fuses the lexical ranking with the vector ranking (reciprocal-rank fusion, `rrf_fuse`); when
the endpoint is down, documents are indexed lexically at once and embedded later, and
searches are lexical for what has no vector.

The index is a versioned table like `state.stores.ProfileStore` (see `SqliteKnowledgeIndex`
for the ordering rule): it is NOT rewound when Bytewax resumes, so a replay, a re-read topic or
a restart never rolls a document back or resurrects a deleted one. One writer thread (the
follower) and any number of reader threads share one database file in WAL mode, each thread on
its own connection; readers see what the writer has committed.

Nothing is opened at import time; the index is opened by whoever owns it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
import re
import sqlite3
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.records import RawRecord
from core.tokens import estimate_tokens
from runtime.metrics import KNOWLEDGE_EMBEDDING_FAILURES, KNOWLEDGE_LEXICAL_ONLY
from state.stores import StoreError

log = logging.getLogger(__name__)

FORMAT = "knowledge-v2"
"""The schema this code reads and writes; stored under `meta.format`, checked at open."""

UPGRADES = ("knowledge-v1",)
"""Older formats this code upgrades in place at open (v1 -> v2 adds the vector tables)."""

MAX_EMBED_QUERY_CHARS = 8000
"""A query's text is cut to this many characters before it is embedded."""

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

    With an embedder (hybrid search): the lexical and the vector ranking each give their best
    `vector_candidates` documents (at least `top_k`), fused by reciprocal rank with `rrf_k`.
    Chunks whose embedding failed are retried after `embed_retry_s`, doubling up to
    `embed_retry_max_s`; `compact()` drops cached embeddings older than
    `embedding_cache_ttl_s` that no chunk uses.
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
    rrf_k: int = 60
    vector_candidates: int = 100
    embed_retry_s: float = 1.0
    embed_retry_max_s: float = 30.0
    embedding_cache_ttl_s: float = 30 * 24 * 3600.0

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
        if (
            self.rrf_k < 1
            or self.vector_candidates < 1
            or not (0 < self.embed_retry_s <= self.embed_retry_max_s)
        ):
            msg = "rrf_k and vector_candidates must be >= 1, 0 < embed_retry_s <= embed_retry_max_s"
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
    subjects = obj.get("subjects") or []
    if not isinstance(subjects, list) or not all(isinstance(t, str) and t for t in subjects):
        return "knowledge document `subjects` must be a list of non-empty strings"
    tags = [*tags, *(SUBJECT_TAG + t for t in subjects)]
    if len(tags) > MAX_TAGS:
        return f"knowledge document has more than {MAX_TAGS} `tags` and `subjects`"
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


def rrf_fuse(rankings: Iterable[Sequence[str]], k: int = 60) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion: each key scores the sum of `1 / (k + rank)` over the rankings
    it appears in (rank 1 is the best), best first, ties by key.

    >>> rrf_fuse([["a", "b", "c"], ["c", "a"]], k=1)  # a: 1/2 + 1/3, c: 1/4 + 1/2, b: 1/3
    [('a', 0.8333333333333333), ('c', 0.75), ('b', 0.3333333333333333)]
    """
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, 1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda p: (-p[1], p[0]))


def embedding_text(title: str, text: str) -> str:
    """What a chunk is embedded as: its title and text."""
    return f"{title}\n{text}" if title.strip() else text


def text_key(text: str) -> bytes:
    """The embedding cache's key of a text (with the model): its SHA-256."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def vector_blob(vec: Sequence[float]) -> bytes:
    """`vec` L2-normalised as little-endian float32 (a zero vector stays zero)."""
    arr = np.asarray(vec, dtype="<f4")
    norm = float(np.linalg.norm(arr))
    return (arr / norm if norm > 0 else arr).astype("<f4").tobytes()


class EmbeddingsUnavailable(Exception):
    """The embeddings endpoint gave no usable answer (down, refusing, timing out, or answering
    something else than one vector per text).

    The index carries on: documents are searchable lexically at once and their chunks are
    embedded by the index's backfill once the endpoint answers again; a search without its
    query's vector is lexical only. Check the endpoint, its key and `[knowledge.embeddings]`.
    """


class Embedder(Protocol):
    """What the index needs of an embeddings client (`inference.embeddings`)."""

    @property
    def key(self) -> str:
        """The model (and dimensions) the vectors come from: vectors of another key are not
        used, and the embedding cache is keyed by it."""
        ...

    def embed(self, texts: Sequence[str], *, attempts: int | None = None) -> list[list[float]]:
        """One vector per text, in order; raises `EmbeddingsUnavailable` after `attempts`
        (None: the client's own budget)."""
        ...


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
    title, text, tokenize = 'porter unicode61 remove_diacritics 2');
"""

_ERASED_TABLE = """CREATE TABLE IF NOT EXISTS erased_subjects (
    tenant TEXT NOT NULL, subject TEXT NOT NULL, request_id TEXT NOT NULL,
    PRIMARY KEY (tenant, subject)) WITHOUT ROWID"""
"""Subjects erased from this index (`SqliteKnowledgeIndex.erase`): a document tagged with
one of them is never indexed again."""

SUBJECT_TAG = "subject:"
"""Documents name the subjects they are about as tags `subject:<id>` (the document field
`subjects` adds them); an erasure of the subject deletes those documents."""

_V2_TABLES = """
CREATE TABLE vectors (
    id INTEGER PRIMARY KEY, model TEXT NOT NULL, sha BLOB NOT NULL, vec BLOB NOT NULL);
CREATE INDEX vectors_sha ON vectors (model, sha);
CREATE TABLE embedding_cache (
    model TEXT NOT NULL, sha BLOB NOT NULL, vec BLOB NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (model, sha)) WITHOUT ROWID;
CREATE TABLE vector_gen (tid INTEGER PRIMARY KEY, gen INTEGER NOT NULL)
"""
"""The tables knowledge-v2 adds to v1 (the upgrade at open creates them): `vectors` chunk
rowid -> (model key, SHA-256 of the embedded text, float32 vector), deleted with the chunk;
`embedding_cache` (model key, SHA-256 of a text) -> vector, for chunks and queries alike;
`vector_gen` tid -> a counter bumped by every change of the tenant's vectors, in the same
transaction (searches keep each tenant's vectors in memory while it is unchanged)."""

VECTOR_CACHE_TENANTS = 32
"""Tenants whose vector matrices a process keeps in memory (least recently searched out)."""

_SCHEMA += _V2_TABLES

_PENDING = """
SELECT c.id, t.title, t.text FROM chunks AS c JOIN chunk_text AS t ON t.rowid = c.id
LEFT JOIN vectors AS v ON v.id = c.id AND v.model = ?
WHERE v.id IS NULL{ids} ORDER BY c.id LIMIT ?
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
    their chunks, with an `embedder` also their vectors (format `knowledge-v2`; a
    `knowledge-v1` file is upgraded at open).

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

    Embeddings (`embedder` given; docs/KNOWLEDGE.md, "Embeddings"): `vectors` chunk rowid ->
    vector, written with or right after the apply that adds the chunk and deleted with it;
    `embedding_cache` (model key, SHA-256 of the text) -> vector, consulted before any
    request, so no text is embedded twice. When the endpoint fails, `apply` still commits
    (the chunks are searchable lexically) and a daemon thread of the index ("backfill")
    embeds what is missing, with backoff, until nothing is; `close()` stops it. A search
    whose query vector cannot be had is lexical only.
    """

    def __init__(
        self,
        path: str | Path,
        settings: RetrievalSettings | None = None,
        *,
        busy_s: float = 30.0,
        embedder: Embedder | None = None,
    ) -> None:
        self.path = Path(path)
        self.settings = settings or RetrievalSettings()
        self.busy_s = busy_s
        self.embedder = embedder
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.generation = 0
        self.refused = 0
        """Documents not indexed because they are about an erased subject (this run)."""
        """Counts the commits that changed documents or vectors: a cached search result is
        valid while it is unchanged (one process writes its own index)."""
        self._embed_lock = threading.Lock()  # one embedding round at a time
        self._backfill_lock = threading.Lock()  # guards the two fields below
        self._backfill: threading.Thread | None = None
        self._dirty = False  # chunks may lack vectors: the running backfill must look again
        self._closing = threading.Event()
        self._query_failures = 0
        self._query_down_until = 0.0
        self._vectors: OrderedDict[tuple[str, int], _Vectors] = OrderedDict()
        self._vectors_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open_checked()
        self._ensure_erased_table()
        if embedder is not None and self.pending_vectors():
            self._start_backfill(failures=0)  # chunks left without vectors by an earlier run

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
                if found in UPGRADES and "vectors" not in names:
                    # v1 -> v2 adds empty tables, in one transaction; v1 code refuses the
                    # file afterwards (KnowledgeFormatMismatch), as it would drop chunks
                    # without their vectors.
                    for statement in _V2_TABLES.split(";"):
                        conn.execute(statement)
                    conn.execute("UPDATE meta SET value = ? WHERE key = 'format'", (FORMAT,))
                    conn.execute("COMMIT")
                    log.info("knowledge index %s upgraded from %s to %s", self.path, found, FORMAT)
                    return
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

    def _ensure_erased_table(self) -> None:
        # Additive to knowledge-v2 (code before erasures ignores it), so no format change.
        with self._write_lock:
            self._conn.execute(_ERASED_TABLE)

    def close(self) -> None:
        """Stop the embedding backfill and close every thread's connection (once no thread
        uses the index any more)."""
        self._closing.set()
        with self._backfill_lock:
            backfill = self._backfill
        if backfill is not None:
            backfill.join(timeout=10)
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
        missing: list[int] = []
        with self._write_lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                changed = self._apply(conn, batch, chunked, positions or {}, missing)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                missing.clear()
                raise
            if changed:
                self.generation += 1
        if missing:
            # Committed and searchable lexically; now the vectors, outside any transaction.
            self._after_apply(missing)
        return changed

    def _apply(
        self,
        conn: sqlite3.Connection,
        batch: list[KnowledgeUpdate],
        chunked: dict[int, list[Chunk]],
        positions: Mapping[Position, int],
        missing: list[int],
    ) -> int:
        committed = self.positions()
        changed = 0
        for u in batch:
            if 0 <= u.offset < committed.get((u.origin, u.partition), 0):
                continue  # a replay of what the index has applied
            if not u.deleted and self._about_erased(conn, u):
                self.refused += 1
                continue  # about an erased subject: never indexed again
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
                missing.extend(self._add_chunks(conn, u, chunked[id(u)]))
        for (origin, partition), nxt in positions.items():
            conn.execute(
                "INSERT INTO positions VALUES (?, ?, ?) ON CONFLICT (origin, partition) "
                "DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
                (origin, partition, nxt),
            )
        return changed

    @staticmethod
    def _about_erased(conn: sqlite3.Connection, u: KnowledgeUpdate) -> bool:
        subjects = [t[len(SUBJECT_TAG) :] for t in u.tags if t.startswith(SUBJECT_TAG)]
        if not subjects:
            return False
        marks = ",".join("?" * len(subjects))
        row = conn.execute(
            f"SELECT 1 FROM erased_subjects WHERE tenant = ? AND subject IN ({marks}) LIMIT 1",
            (u.tenant, *subjects),
        ).fetchone()
        return row is not None

    def erase(self, tenant: str, subject: str, request_id: str) -> int:
        """Delete `tenant`'s documents tagged `subject:<subject>` (each left as a tombstone
        of its version, as a deletion leaves it) and refuse such documents from now on, any
        version, in one transaction; returns the documents deleted (again: 0).

        The deleted chunks leave the FTS5 index's segments at their next merge (`compact`)."""
        with self._write_lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT OR IGNORE INTO erased_subjects VALUES (?, ?, ?)",
                    (tenant, subject, request_id),
                )
                rows = conn.execute(
                    "SELECT t.doc_id FROM doc_tags AS t JOIN docs AS d "
                    "ON d.tenant = t.tenant AND d.doc_id = t.doc_id "
                    "WHERE t.tenant = ? AND t.tag = ? AND d.deleted = 0",
                    (tenant, SUBJECT_TAG + subject),
                ).fetchall()
                for (doc_id,) in rows:
                    self._drop_chunks(conn, tenant, doc_id)
                    conn.execute(
                        "UPDATE docs SET deleted = 1, title = '', tags = '[]' "
                        "WHERE tenant = ? AND doc_id = ?",
                        (tenant, doc_id),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if rows:
                self.generation += 1
        return len(rows)

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
    ) -> list[int]:
        """Insert `u`'s chunks (and, with an embedder, the vectors the cache holds for their
        texts); returns the rowids of the chunks still without a vector."""
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
        if self.embedder is None:
            return []
        key = self.embedder.key
        missing = []
        for c in chunks:
            sha = text_key(embedding_text(c.title, c.text))
            row = conn.execute(
                "SELECT vec FROM embedding_cache WHERE model = ? AND sha = ?", (key, sha)
            ).fetchone()
            if row is None:
                missing.append(first + c.n)
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)",
                    (first + c.n, key, sha, row[0]),
                )
        if len(missing) < len(chunks):
            _bump_vectors(conn, [lo])
        return missing

    @staticmethod
    def _drop_chunks(conn: sqlite3.Connection, tenant: str, doc_id: str) -> None:
        ids = [
            (r[0],)
            for r in conn.execute(
                "SELECT id FROM chunks WHERE tenant = ? AND doc_id = ?", (tenant, doc_id)
            )
        ]
        conn.executemany("DELETE FROM chunk_text WHERE rowid = ?", ids)
        conn.executemany("DELETE FROM vectors WHERE id = ?", ids)
        _bump_vectors(conn, [i for (i,) in ids])
        conn.executemany("DELETE FROM chunks WHERE id = ?", ids)
        conn.execute("DELETE FROM doc_tags WHERE tenant = ? AND doc_id = ?", (tenant, doc_id))

    def compact(self) -> None:
        """Merge the FTS5 index's segments (dropping deleted rows' entries), drop cached
        embeddings older than `embedding_cache_ttl_s` that no chunk uses, and give free pages
        back to the file system; for idle moments: it rewrites the whole index."""
        with self._write_lock:
            conn = self._conn
            conn.execute(
                "DELETE FROM embedding_cache WHERE created_at < ? AND NOT EXISTS (SELECT 1 "
                "FROM vectors AS v WHERE v.model = embedding_cache.model "
                "AND v.sha = embedding_cache.sha)",
                (time.time() - self.settings.embedding_cache_ttl_s,),
            )
            conn.execute("INSERT INTO chunk_text (chunk_text) VALUES ('optimize')")
            conn.execute("PRAGMA incremental_vacuum")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # embeddings

    def _after_apply(self, missing: list[int]) -> None:
        """Embed the chunks an apply left without vectors, unless the backfill (running while
        the endpoint is down) is on it; a failure hands them to the backfill."""
        with self._backfill_lock:
            if self._backfill is not None:
                self._dirty = True
                return
        if not self._embed_round(missing):
            self._start_backfill(failures=1)

    def _embed_round(self, ids: list[int] | None = None) -> bool:
        """`embed_pending(ids)`, False (counted, logged) when the endpoint failed."""
        with self._embed_lock:
            try:
                self.embed_pending(ids)
            except EmbeddingsUnavailable as exc:
                KNOWLEDGE_EMBEDDING_FAILURES.labels("ingest").inc()
                log.warning(
                    "knowledge index %s: embedding failed (%s); documents stay searchable "
                    "lexically, their chunks are embedded when the endpoint answers",
                    self.path,
                    exc,
                )
                return False
        return True

    def _retry_delay(self, failures: int) -> float:
        s = self.settings
        cap = min(s.embed_retry_max_s, s.embed_retry_s * 2 ** (failures - 1))
        return random.uniform(cap / 2, cap)

    def _start_backfill(self, failures: int) -> None:
        with self._backfill_lock:
            self._dirty = True
            if self._backfill is not None or self._closing.is_set():
                return
            self._backfill = threading.Thread(
                target=self._backfill_loop, args=(failures,), name="knowledge-embed", daemon=True
            )
            self._backfill.start()

    def _backfill_loop(self, failures: int) -> None:
        """Embed every chunk without a vector until none is left, waiting `embed_retry_s`
        (doubling, jittered, up to `embed_retry_max_s`) after each failed round; exits when
        nothing is pending (an apply that finds it gone embeds its chunks itself)."""
        try:
            while not self._closing.is_set():
                if failures and self._closing.wait(self._retry_delay(failures)):
                    break
                with self._backfill_lock:
                    if not self._dirty:
                        self._backfill = None
                        return
                    self._dirty = False
                if self._embed_round():
                    failures = 0
                else:
                    failures += 1
                    with self._backfill_lock:
                        self._dirty = True
        except Exception:
            log.exception("knowledge index %s: embedding backfill stopped", self.path)
        with self._backfill_lock:
            self._backfill = None

    def embed_pending(self, ids: Sequence[int] | None = None, batch: int = 256) -> int:
        """Embed the chunks (of `ids`, else all) that have no vector of the embedder's model,
        texts the cache holds taken from it; returns the vectors written.

        Each round of `batch` chunks reads the texts, asks the endpoint for the texts the
        cache lacks (no transaction held meanwhile), then writes the cache and the vectors in
        one transaction, skipping a chunk whose text changed in between. Raises
        `EmbeddingsUnavailable` when the endpoint fails (what was written stays).
        """
        embedder = self.embedder
        if embedder is None:
            return 0
        key = embedder.key
        written = 0
        todo = None if ids is None else list(ids)
        while True:
            if todo is None:
                rows = self._conn.execute(_PENDING.format(ids=""), (key, batch)).fetchall()
            elif todo:
                part, todo = todo[:batch], todo[batch:]
                marks = ", ".join("?" * len(part))
                sql = _PENDING.format(ids=f" AND c.id IN ({marks})")
                rows = self._conn.execute(sql, (key, *part, batch)).fetchall()
            else:
                return written
            if not rows:
                if todo is None:
                    return written
                continue
            texts = {rid: embedding_text(title, text) for rid, title, text in rows}
            shas = {rid: text_key(t) for rid, t in texts.items()}
            vecs = self._cached(key, set(shas.values()))
            asked = {shas[rid]: t for rid, t in texts.items() if shas[rid] not in vecs}
            new = {}
            if asked:
                answers = embedder.embed(list(asked.values()))
                if len(answers) != len(asked):
                    msg = f"{len(answers)} vectors for {len(asked)} texts"
                    raise EmbeddingsUnavailable(msg)
                new = {sha: vector_blob(v) for sha, v in zip(asked, answers, strict=True)}
                vecs.update(new)
            written += self._write_vectors(key, shas, vecs, new)

    def _cached(self, key: str, shas: set[bytes]) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        items = list(shas)
        for i in range(0, len(items), 500):
            part = items[i : i + 500]
            marks = ", ".join("?" * len(part))
            sql = f"SELECT sha, vec FROM embedding_cache WHERE model = ? AND sha IN ({marks})"
            out.update(dict(self._conn.execute(sql, (key, *part))))
        return out

    def _write_vectors(
        self, key: str, shas: dict[int, bytes], vecs: dict[bytes, bytes], new: dict[bytes, bytes]
    ) -> int:
        now = time.time()
        with self._write_lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR IGNORE INTO embedding_cache VALUES (?, ?, ?, ?)",
                    [(key, sha, vec, now) for sha, vec in new.items()],
                )
                rows = []
                for rid, (title, text) in self._texts(conn, list(shas)).items():
                    sha = text_key(embedding_text(title, text))
                    if sha == shas[rid]:  # the chunk is still the one embedded
                        rows.append((rid, key, sha, vecs[sha]))
                conn.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)", rows)
                _bump_vectors(conn, [r[0] for r in rows])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if rows:
                self.generation += 1  # new vectors change hybrid results
        return len(rows)

    @property
    def degraded(self) -> bool:
        """Whether searches are lexical only for now because the embeddings endpoint failed
        (their results should not be kept as the hybrid ones)."""
        return self.embedder is not None and time.monotonic() < self._query_down_until

    def pending_vectors(self) -> int:
        """Chunks without a vector of the embedder's model (0 without an embedder)."""
        if self.embedder is None:
            return 0
        sql = (
            "SELECT COUNT(*) FROM chunks AS c LEFT JOIN vectors AS v "
            "ON v.id = c.id AND v.model = ? WHERE v.id IS NULL"
        )
        count: int = self._conn.execute(sql, (self.embedder.key,)).fetchone()[0]
        return count

    def _query_vector(self, query: str) -> np.ndarray[Any, np.dtype[np.float32]] | None:
        """The query's vector: from the cache, else asked once (cached); None when the
        endpoint fails or is backed off after a failure (counted: a lexical-only search)."""
        embedder = self.embedder
        assert embedder is not None
        text = " ".join(query.split())[:MAX_EMBED_QUERY_CHARS]
        key, sha = embedder.key, text_key(text)
        row = self._conn.execute(
            "SELECT vec FROM embedding_cache WHERE model = ? AND sha = ?", (key, sha)
        ).fetchone()
        if row is not None:
            return np.frombuffer(row[0], dtype="<f4")
        if time.monotonic() < self._query_down_until:
            KNOWLEDGE_LEXICAL_ONLY.inc()
            return None
        try:
            answers = embedder.embed([text], attempts=1)
            if len(answers) != 1:
                raise EmbeddingsUnavailable(f"{len(answers)} vectors for 1 text")
        except EmbeddingsUnavailable as exc:
            self._query_failures += 1
            self._query_down_until = time.monotonic() + self._retry_delay(self._query_failures)
            KNOWLEDGE_EMBEDDING_FAILURES.labels("query").inc()
            KNOWLEDGE_LEXICAL_ONLY.inc()
            log.warning("knowledge search: query embedding failed (%s); lexical only", exc)
            return None
        self._query_failures = 0
        blob = vector_blob(answers[0])
        with self._write_lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT OR IGNORE INTO embedding_cache VALUES (?, ?, ?, ?)",
                    (key, sha, blob, time.time()),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return np.frombuffer(blob, dtype="<f4")

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

        With an embedder, the best `vector_candidates` documents (at least `top_k`) of the
        lexical ranking (`min_score` filtering it) and of the vector ranking (cosine of the
        query's vector with the tenant's chunk vectors, each document by its best chunk) are
        fused by reciprocal rank (`rrf_fuse`, `rrf_k`); a hit's chunk is the one of the
        ranking where its document ranks better, its score the fused one. Without the
        query's vector (the endpoint failing) the search is lexical only; chunks without a
        vector take part through the lexical ranking.
        """
        s = self.settings
        terms = query_terms(query, s.stopwords, s.max_query_terms)
        if not terms or top_k <= 0:
            return []
        qvec = self._query_vector(query) if self.embedder is not None else None
        want = top_k if qvec is None else max(top_k, s.vector_candidates)
        near = None
        if s.proximity_weight > 0 and len(terms) > 1:
            near = proximity_query(terms, s.proximity_window)
        conn = self._conn
        conn.execute("BEGIN")  # one snapshot for the ranking and the texts
        try:
            lo, hi = self._tenant_range(conn, tenant, create=False)
            depth = -1 if tags else max(s.rerank_depth, want)
            while True:
                rows = self._rank(conn, tenant, (lo, hi), terms, near, depth, want, min_score, tags)
                # Fewer documents than asked from `depth` chunks: the next ones may hold more.
                if len(rows) >= want or depth < 0 or not self._more(conn, terms, lo, hi, depth):
                    break
                depth *= 4
            if qvec is not None:
                nearest = self._nearest(conn, tenant, (lo, hi), qvec, want, tags)
                rows = _fuse(rows, nearest, top_k, s.rrf_k)
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

    def _nearest(
        self,
        conn: sqlite3.Connection,
        tenant: str,
        rowids: tuple[int, int],
        qvec: np.ndarray[Any, np.dtype[np.float32]],
        want: int,
        tags: Collection[str],
    ) -> list[tuple[str, int, int, float]]:
        """The `want` documents of `tenant` whose best chunk vector is the closest to `qvec`
        (cosine > 0), best first: a brute-force scan of the tenant's rowid range."""
        vectors = self._tenant_vectors(conn, tenant, rowids, qvec.shape[0])
        if vectors is None:
            return []
        allowed: set[str] | None = None
        tag_list = list(dict.fromkeys(tags))
        if tag_list:
            marks = ", ".join("?" * len(tag_list))
            allowed = {
                d
                for (d,) in conn.execute(
                    f"SELECT doc_id FROM doc_tags WHERE tenant = ? AND tag IN ({marks}) "
                    "GROUP BY doc_id HAVING COUNT(*) = ?",
                    (tenant, *tag_list, len(tag_list)),
                )
            }
        sims = vectors.matrix @ qvec
        out: list[tuple[str, int, int, float]] = []
        seen: set[str] = set()
        for i in np.argsort(-sims, kind="stable"):
            sim = float(sims[i])
            if sim <= 0 or len(out) >= want:
                break
            doc_id = vectors.doc_ids[i]
            if doc_id not in seen and (allowed is None or doc_id in allowed):
                seen.add(doc_id)
                out.append((doc_id, vectors.ns[i], vectors.rids[i], sim))
        return out

    def _tenant_vectors(
        self, conn: sqlite3.Connection, tenant: str, rowids: tuple[int, int], dim: int
    ) -> _Vectors | None:
        """`tenant`'s vectors of the embedder's model and length `dim` (None: none), read in
        the caller's transaction, from memory while the tenant's `vector_gen` is unchanged."""
        assert self.embedder is not None
        tid = rowids[0] >> _TENANT_BITS
        row = conn.execute("SELECT gen FROM vector_gen WHERE tid = ?", (tid,)).fetchone()
        gen = -1 if row is None else int(row[0])
        with self._vectors_lock:
            cached = self._vectors.get((tenant, dim))
            if cached is not None and cached.gen == gen:
                self._vectors.move_to_end((tenant, dim))
                return cached
        rows = conn.execute(
            "SELECT c.doc_id, c.n, v.id, v.vec FROM vectors AS v JOIN chunks AS c ON c.id = v.id "
            "WHERE v.id BETWEEN ? AND ? AND v.model = ? AND c.tenant = ? "
            "AND length(v.vec) = ?",
            (rowids[0], rowids[1], self.embedder.key, tenant, dim * 4),
        ).fetchall()
        if not rows:
            return None
        matrix = np.frombuffer(b"".join(r[3] for r in rows), dtype="<f4").reshape(len(rows), dim)
        vectors = _Vectors(
            gen, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], matrix
        )
        with self._vectors_lock:
            self._vectors[(tenant, dim)] = vectors
            self._vectors.move_to_end((tenant, dim))
            while len(self._vectors) > VECTOR_CACHE_TENANTS:
                self._vectors.popitem(last=False)
        return vectors

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


def _bump_vectors(conn: sqlite3.Connection, rowids: Iterable[int]) -> None:
    """Bump the vector generation of the tenants of `rowids` (chunk rowids)."""
    conn.executemany(
        "INSERT INTO vector_gen VALUES (?, 1) ON CONFLICT (tid) DO UPDATE SET gen = gen + 1",
        [(tid,) for tid in {r >> _TENANT_BITS for r in rowids}],
    )


@dataclass(frozen=True)
class _Vectors:
    """One tenant's chunk vectors as of generation `gen`: row i is chunk `rids[i]` of
    `doc_ids[i]` (its number `ns[i]`); `matrix` is read-only."""

    gen: int
    doc_ids: list[str]
    ns: list[int]
    rids: list[int]
    matrix: np.ndarray[Any, np.dtype[np.float32]]


def _fuse(
    lexical: list[tuple[str, int, int, float]],
    nearest: list[tuple[str, int, int, float]],
    top_k: int,
    k: int,
) -> list[tuple[str, int, int, float]]:
    """The `top_k` documents of two rankings (doc_id, n, rowid, score) by `rrf_fuse`, each
    with the chunk of the ranking where it ranks better (the lexical one on a tie)."""
    chunk: dict[str, tuple[str, int, int, float]] = {}
    for row in [*lexical, *nearest]:
        chunk.setdefault(row[0], row)
    lex_rank = {r[0]: i for i, r in enumerate(lexical)}
    for i, row in enumerate(nearest):
        if i < lex_rank.get(row[0], len(lexical) + len(nearest)):
            chunk[row[0]] = row
    fused = rrf_fuse([[r[0] for r in lexical], [r[0] for r in nearest]], k)[:top_k]
    return [(d, chunk[d][1], chunk[d][2], score) for d, score in fused]


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
