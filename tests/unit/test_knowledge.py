"""Unit tests of `state.knowledge`: parsing reasons, chunking, the versioned index (ordering,
tombstones, positions committed with the data, format key), tenant isolation against
adversarial ids and query syntax, and one writer with concurrent readers. Real SQLite files."""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.records import RawRecord
from core.tokens import estimate_tokens
from state.knowledge import (
    FORMAT,
    Hit,
    KnowledgeFormatMismatch,
    KnowledgeIndex,
    KnowledgeUpdate,
    RetrievalSettings,
    SqliteKnowledgeIndex,
    apply_records,
    chunk_document,
    fts_query,
    parse_document,
    query_terms,
)
from state.stores import StoreError

ORIGIN = "knowledge"


def raw(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def doc(
    doc_id: str,
    version: int,
    text: str,
    *,
    tenant: str = "acme",
    offset: int = -1,
    origin: str = ORIGIN,
    title: str = "",
    tags: tuple[str, ...] = (),
) -> KnowledgeUpdate:
    return KnowledgeUpdate(tenant, doc_id, version, title, text, tags, origin=origin, offset=offset)


def gone(doc_id: str, version: int, *, tenant: str = "acme", offset: int = -1) -> KnowledgeUpdate:
    return KnowledgeUpdate(tenant, doc_id, version, deleted=True, origin=ORIGIN, offset=offset)


@pytest.fixture
def index(tmp_path: Path) -> Iterator[SqliteKnowledgeIndex]:
    idx = SqliteKnowledgeIndex(tmp_path / "knowledge.sqlite")
    yield idx
    idx.close()


def ids(hits: list[Hit]) -> list[str]:
    return [h.doc_id for h in hits]


# --- parsing ------------------------------------------------------------------------------


def test_parse_document_and_deletion() -> None:
    u = parse_document(
        raw(tenant="t", doc_id="d", version=3, title="T", text="x", tags=["a", "b", "a"]),
        origin="topic",
        partition=2,
        offset=7,
    )
    assert u == KnowledgeUpdate("t", "d", 3, "T", "x", ("a", "b"), False, "topic", 2, 7)
    d = parse_document(raw(tenant="t", doc_id="d", version=4, deleted=True))
    assert isinstance(d, KnowledgeUpdate)
    assert d.deleted and d.version == 4 and d.text == ""


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (raw(doc_id="d", version=1, text="x"), "no `tenant`"),
        (raw(tenant="t", version=1, text="x"), "no `doc_id`"),
        (raw(tenant="t", doc_id="d", text="x"), "no `version`"),
        (raw(tenant=7, doc_id="d", version=1, text="x"), "`tenant` must be a string"),
        (raw(tenant="", doc_id="d", version=1, text="x"), "`tenant` is empty"),
        (raw(tenant="t", doc_id="  ", version=1, text="x"), "`doc_id` is empty"),
        (raw(tenant="t\n", doc_id="d", version=1, text="x"), "`tenant` contains control"),
        (raw(tenant="t", doc_id="d" * 600, version=1, text="x"), "`doc_id` is longer"),
        (raw(tenant="t", doc_id="d", version="1", text="x"), "`version` must be an integer"),
        (raw(tenant="t", doc_id="d", version=True, text="x"), "`version` must be an integer"),
        (raw(tenant="t", doc_id="d", version=-1, text="x"), "`version` must be an integer >= 0"),
        (raw(tenant="t", doc_id="d", version=1), "no `text`"),
        (raw(tenant="t", doc_id="d", version=1, text=3), "`text` must be a string"),
        (raw(tenant="t", doc_id="d", version=1, title=[], text="x"), "`title` must be"),
        (raw(tenant="t", doc_id="d", version=1, text=" "), "empty `title` and `text`"),
        (raw(tenant="t", doc_id="d", version=1, text="x", tags="a"), "`tags` must be a list"),
        (raw(tenant="t", doc_id="d", version=1, text="x", tags=[1]), "`tags` must be a list"),
        (raw(tenant="t", doc_id="d", version=1, deleted="yes"), "`deleted` must be true"),
        (None, "no value"),
    ],
)
def test_parse_reasons_name_the_problem(record: bytes | None, reason: str) -> None:
    got = parse_document(record)
    assert isinstance(got, str)
    assert reason in got


def test_parse_oversized_names_the_limit() -> None:
    got = parse_document(raw(tenant="t", doc_id="d", version=1, text="x" * 200), max_doc_bytes=100)
    assert isinstance(got, str)
    assert "over the limit of 100" in got


# --- chunking -----------------------------------------------------------------------------


def test_short_document_is_one_chunk_with_its_title() -> None:
    (chunk,) = chunk_document("d", "Title", "A short text.", chunk_tokens=64)
    assert (chunk.chunk_id, chunk.title, chunk.text) == ("d#0", "Title", "A short text.")


def test_chunks_are_bounded_overlap_and_cover_the_text() -> None:
    words = [f"w{i}" + ("." if i % 11 == 10 else "") for i in range(600)]
    text = " ".join(words)
    chunks = chunk_document("doc", "T", text, chunk_tokens=64, overlap_tokens=16)
    assert len(chunks) > 5
    assert [c.chunk_id for c in chunks] == [f"doc#{n}" for n in range(len(chunks))]
    assert all(c.title == "T" for c in chunks)
    assert all(estimate_tokens(c.text) <= 64 for c in chunks)
    seen: list[str] = []
    for prev, nxt in itertools.pairwise(chunks):
        a, b = prev.text.split(), nxt.text.split()
        shared = [w for w in b if w in set(a)]
        assert shared, "consecutive chunks overlap"
        assert estimate_tokens(" ".join(shared)) <= 16
        assert b[0] in a  # the next chunk starts inside the previous one
    for c in chunks:
        seen.extend(w for w in c.text.split() if not seen or w not in seen[-40:])
    assert seen == words  # every word, in order
    # chunks end at a sentence end where the window allows
    assert sum(c.text.endswith(".") for c in chunks[:-1]) >= len(chunks) // 2


def test_chunking_is_stable_and_cuts_overlong_words() -> None:
    text = "start " + "x" * 1000 + " end"
    first = chunk_document("d", "", text, chunk_tokens=32, overlap_tokens=4)
    assert first == chunk_document("d", "", text, chunk_tokens=32, overlap_tokens=4)
    assert all(estimate_tokens(c.text) <= 32 for c in first)
    assert (
        "".join(c.text.replace("start", "").replace("end", "").strip() for c in first).count("x")
        >= 1000
    )


# --- query terms --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["NEAR(", '"', "a - b", "title:secret", "^x", "*", "OR", "AND NOT x", 'x"y', "a) OR (b"],
)
def test_query_terms_carry_no_fts_syntax(text: str) -> None:
    for term in query_terms(text, stopwords=False):
        assert term.isalnum()
    query = fts_query(query_terms(text, stopwords=False))
    assert query.count('"') % 2 == 0


def test_query_terms_drop_stopwords_and_repeats() -> None:
    assert query_terms("The cells of the cell, and CELLS!") == ["cells", "cell"]
    assert query_terms("x " * 100, limit=5) == ["x"]


# --- versioning ---------------------------------------------------------------------------


def test_newer_version_replaces_and_older_replay_changes_nothing(
    index: SqliteKnowledgeIndex,
) -> None:
    assert index.apply([doc("d", 1, "alpha reactor manual")]) == 1
    assert index.apply([doc("d", 2, "beta turbine manual")]) == 1
    assert index.apply([doc("d", 1, "alpha reactor manual")]) == 0
    assert index.apply([doc("d", 2, "gamma other text")]) == 0  # same version, no position
    assert ids(index.search("acme", "alpha reactor")) == []
    (hit,) = index.search("acme", "turbine")
    assert (hit.doc_id, hit.version, hit.chunk_id, hit.text) == (
        "d",
        2,
        "d#0",
        "beta turbine manual",
    )


def test_equal_version_orders_by_position_of_the_same_source(
    index: SqliteKnowledgeIndex,
) -> None:
    index.apply([doc("d", 5, "first text", offset=10)])
    assert index.apply([doc("d", 5, "second text", offset=11)]) == 1
    assert index.apply([doc("d", 5, "third text", offset=12, origin="other")]) == 0
    assert index.document("acme", "d")["chunks"] == ["second text"]  # type: ignore[index]


def test_delete_leaves_a_tombstone_and_removes_the_rows(
    tmp_path: Path, index: SqliteKnowledgeIndex
) -> None:
    long_text = " ".join(f"zebra{i} word." for i in range(400))
    index.apply([doc("d", 1, long_text), doc("keep", 1, "zebra1 stays")])
    assert index.apply([gone("d", 2)]) == 1
    assert index.apply([doc("d", 1, long_text)]) == 0  # a replay of an older version
    assert index.apply([gone("d", 2)]) == 0
    state = index.document("acme", "d")
    assert state is not None and state["deleted"] and state["chunks"] == []
    assert ids(index.search("acme", "zebra1")) == ["keep"]
    index.compact()
    with sqlite3.connect(tmp_path / "knowledge.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM chunks WHERE doc_id = 'd'").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM chunk_text").fetchone() == (1,)
        conn.execute("CREATE VIRTUAL TABLE temp.v USING fts5vocab(main, chunk_text, row)")
        assert conn.execute("SELECT COUNT(*) FROM v WHERE term = 'zebra300'").fetchone() == (0,)
    # a newer version after the deletion brings the document back
    assert index.apply([doc("d", 3, "zebra1 again")]) == 1
    assert sorted(ids(index.search("acme", "zebra1"))) == ["d", "keep"]


def test_within_a_batch_the_rule_applies_in_order(index: SqliteKnowledgeIndex) -> None:
    changed = index.apply([doc("d", 2, "two"), doc("d", 1, "one"), gone("d", 3), doc("d", 3, "x")])
    assert changed == 2
    assert index.document("acme", "d")["deleted"]  # type: ignore[index]


def test_positions_skip_replays_and_only_advance(tmp_path: Path) -> None:
    path = tmp_path / "k.sqlite"
    idx = SqliteKnowledgeIndex(path)
    idx.apply([doc("a", 1, "apple", offset=0), doc("b", 1, "banana", offset=1)], {(ORIGIN, 0): 2})
    idx.close()
    idx = SqliteKnowledgeIndex(path)
    assert idx.positions() == {(ORIGIN, 0): 2}
    # re-read from offset 0 after a crash: the applied records change nothing, even a newer
    # version at an offset already applied (the source says it was seen)
    replay = [doc("a", 9, "apricot", offset=0), doc("c", 1, "cherry", offset=2)]
    assert idx.apply(replay, {(ORIGIN, 0): 3}) == 1
    assert ids(idx.search("acme", "apricot")) == []
    assert ids(idx.search("acme", "cherry")) == ["c"]
    idx.apply([], {(ORIGIN, 0): 1, (ORIGIN, 1): 5})
    assert idx.positions() == {(ORIGIN, 0): 3, (ORIGIN, 1): 5}
    idx.close()


def test_positions_are_committed_with_the_data_or_not_at_all(
    index: SqliteKnowledgeIndex,
) -> None:
    index.apply([doc("a", 1, "apple", offset=0)], {(ORIGIN, 0): 1})
    # a lone surrogate cannot be stored: the second document fails inside the transaction
    bad = [doc("b", 1, "banana", offset=1), doc("c", 1, "cherry \ud800", offset=2)]
    with pytest.raises(UnicodeEncodeError):
        index.apply(bad, {(ORIGIN, 0): 3})
    assert index.positions() == {(ORIGIN, 0): 1}
    assert index.document("acme", "b") is None
    assert index.apply(bad[:1], {(ORIGIN, 0): 2}) == 1


def test_apply_records_dead_letters_and_resumes_past_them(index: SqliteKnowledgeIndex) -> None:
    def rec(offset: int, value: bytes | None) -> RawRecord:
        return RawRecord("knowledge", 1, offset, None, value, "knowledge")

    records = [
        rec(40, raw(tenant="acme", doc_id="a", version=1, text="apple pie")),
        rec(41, b"{oops"),
        rec(42, raw(tenant="acme", doc_id="a", version=2, text="apple tart")),
        rec(43, raw(tenant="acme", doc_id="b", version=1, deleted=True)),
        rec(44, None),
    ]
    changed, invalid = apply_records(index, records)
    assert changed == 3  # a (twice) and the tombstone of b
    assert [(r.offset, reason.split(":")[0]) for r, reason in invalid] == [
        (41, "knowledge document is not valid JSON"),
        (44, "knowledge document has no value (a tombstone record?)"),
    ]
    assert index.positions() == {("knowledge", 1): 45}
    assert index.document("acme", "a")["chunks"] == ["apple tart"]  # type: ignore[index]
    assert apply_records(index, records) == (0, invalid)  # the same poll again: nothing


# --- format key ---------------------------------------------------------------------------


def test_format_key_is_written_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "k.sqlite"
    SqliteKnowledgeIndex(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() == (FORMAT,)
        conn.execute("UPDATE meta SET value = 'knowledge-v9' WHERE key = 'format'")
    with pytest.raises(KnowledgeFormatMismatch, match=r"knowledge-v9.*move the file aside"):
        SqliteKnowledgeIndex(path)


def test_foreign_files_are_refused_untouched(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(KnowledgeFormatMismatch, match="no knowledge format key") as err:
        SqliteKnowledgeIndex(other)
    assert isinstance(err.value, StoreError)
    with sqlite3.connect(other) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_schema")]
    assert names == ["t"]
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(KnowledgeFormatMismatch, match="cannot read"):
        SqliteKnowledgeIndex(junk)
    assert junk.read_bytes() == b"this is not a database at all" * 100


# --- tenancy and untrusted queries --------------------------------------------------------

ADVERSARIAL = [
    "a/b",
    "a",
    "../x",
    'a"b',
    "a'b",
    "OR",
    "*",
    "%",
    "_",
    " x",
    "\u200b",
    "NEAR(a",
    "title:x",
    "t" * 500,
    "tenant-ü-日本",
    "acme",
    "ACME",
]


def test_search_is_strictly_tenant_scoped(index: SqliteKnowledgeIndex) -> None:
    updates = [
        doc(f"{t}-doc", 1, f"shared reactor manual {t} secret", tenant=t, tags=("x",))
        for t in ADVERSARIAL
    ]
    index.apply(updates)
    for t in ADVERSARIAL:
        hits = index.search(t, f"shared reactor manual {t} secret OR * NEAR(", top_k=50)
        assert ids(hits) == [f"{t}-doc"], t
        assert ids(index.search(t, "reactor", top_k=50, tags=["x"])) == [f"{t}-doc"]
    for missing in ["", "a%", "a/*", "acm", "acme ", "Acme", "t" * 499]:
        assert index.search(missing, "shared reactor", top_k=50) == [], missing


@pytest.mark.parametrize(
    "query",
    [
        'NEAR("reactor" "manual", 1',
        '"',
        '""',
        "-reactor",
        "reactor - manual",
        "text:reactor",
        "{title text}: reactor",
        "^reactor",
        "reactor*",
        "reactor AND NOT manual",
        "reactor) OR (1",
        "'; DROP TABLE docs; --",
        "\x00reactor",
        "",
        "   ",
        "the of and",
    ],
)
def test_untrusted_query_text_is_only_terms(index: SqliteKnowledgeIndex, query: str) -> None:
    index.apply(
        [doc("mine", 1, "reactor manual"), doc("theirs", 1, "reactor manual", tenant="other")]
    )
    hits = index.search("acme", query)
    assert ids(hits) in ([], ["mine"])
    if "reactor" in query and "DROP" not in query:
        assert ids(hits) == ["mine"]
    assert index.document("acme", "mine") is not None


def test_tags_min_score_and_one_hit_per_document(index: SqliteKnowledgeIndex) -> None:
    long_text = " ".join(f"valve pressure sentence {i}." for i in range(300))
    index.apply(
        [
            doc("long", 1, long_text, tags=("ops", "pumps")),
            doc("short", 1, "valve pressure", title="Valve pressure", tags=("ops",)),
            *(doc(f"other{i}", 1, f"unrelated words {i}") for i in range(5)),
        ]
    )
    hits = index.search("acme", "valve pressure", top_k=10)
    assert sorted(ids(hits)) == ["long", "short"]  # the long document once, by its best chunk
    assert ids(index.search("acme", "valve", tags=["pumps"])) == ["long"]
    assert index.search("acme", "valve", tags=["pumps", "nope"]) == []
    assert index.search("acme", "valve", min_score=hits[0].score + 1) == []
    assert len(index.search("acme", "valve pressure", top_k=1)) == 1
    assert hits[0].score >= hits[1].score > 0


def test_sqlite_index_is_a_knowledge_index(index: SqliteKnowledgeIndex) -> None:
    def use(idx: KnowledgeIndex) -> list[Hit]:
        idx.apply([doc("d", 1, "hello world")], {(ORIGIN, 0): 1})
        return idx.search("acme", "hello")

    assert ids(use(index)) == ["d"]


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="overlap_tokens"):
        RetrievalSettings(chunk_tokens=64, overlap_tokens=40)
    with pytest.raises(ValueError, match="text_weight"):
        RetrievalSettings(text_weight=0)


# --- concurrency --------------------------------------------------------------------------


def test_one_writer_and_concurrent_readers(index: SqliteKnowledgeIndex) -> None:
    """A follower thread applies 60 batches (each a new version of every document, its
    position with it) while four reader threads search: no reader fails ("database is
    locked" or other), each reader sees versions that never go back, and every hit's text is
    the text of the version it reports (a committed state, never half of one)."""
    docs = 20
    errors: list[BaseException] = []
    done = threading.Event()
    seen_max: list[int] = []

    def writer() -> None:
        try:
            for v in range(60):
                batch = [
                    doc(f"d{i}", v, f"pump valve v{v} manual {i}", offset=v * docs + i)
                    for i in range(docs)
                ]
                index.apply(batch, {(ORIGIN, 0): (v + 1) * docs})
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def reader() -> None:
        last = -1
        try:
            while not done.is_set():
                hits = index.search("acme", "pump valve manual", top_k=docs)
                if not hits:
                    continue
                versions = {h.version for h in hits}
                for h in hits:
                    assert f" v{h.version} " in h.text
                assert min(versions) >= last
                last = max(versions)
            seen_max.append(last)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(seen_max) == 4
    hits = index.search("acme", "pump valve manual", top_k=docs)
    assert {h.version for h in hits} == {59} and len(hits) == docs
    assert index.positions() == {(ORIGIN, 0): 60 * docs}
