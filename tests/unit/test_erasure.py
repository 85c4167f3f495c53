"""The erasure table and the stores' erase: idempotent, and tombstones beat replays.

Pure store logic on real rocksdict / SQLite files in a temporary directory, clocks injected.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.models import MemoryConfig
from connectors.reference import ErasureTable, apply_records, load_profile_seed
from core.records import Event, Kind, RawRecord
from operators.memory import Memory, _turn_tokens
from state import stores
from state.erasure import ErasureRequest, ErasureStore, open_erasures, parse_erasure
from state.knowledge import SqliteKnowledgeIndex, parse_document
from state.knowledge import apply_records as knowledge_apply
from state.stores import ProfileStore, Reply, ResponseCache, StoreLayout, Summary

T0 = 1_800_000_000.0  # the erasure's time in these tests


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[StoreLayout]:
    yield StoreLayout(tmp_path / "stores")
    stores.close_all()


def rec(obj: dict[str, Any] | str, offset: int = 0, origin: str = "erasures") -> RawRecord:
    value = obj.encode() if isinstance(obj, str) else json.dumps(obj).encode()
    return RawRecord(origin, 0, offset, None, value, "")


def profile(entity: str, offset: int, **extra: Any) -> RawRecord:
    doc = {"tenant": "acme", "entity": entity, "attributes": {"plan": f"p{offset}"}, **extra}
    return rec(doc, offset, "profiles")


def table(layout: StoreLayout, clock: Clock, index: SqliteKnowledgeIndex | None = None):
    cache = ResponseCache(layout.llm_cache, clock=clock)
    return ErasureTable(
        str(layout.erasures),
        profiles=str(layout.profiles),
        knowledge=None if index is None else (lambda: index),
        cache=lambda: cache,
        clock=clock,
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("not json", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        ({"tenant": "acme", "subject": "u1"}, "`request_id`"),
        ({"request_id": "r", "subject": "u1"}, "`tenant`"),
        ({"request_id": "r", "tenant": "acme", "subject": ""}, "`subject`"),
        ({"request_id": "r", "tenant": "__meta__", "subject": "u"}, "reserved"),
        ({"request_id": "r", "tenant": "a", "subject": "u", "requested_at": 5}, "string"),
        ({"request_id": "r", "tenant": "a", "subject": "u", "requested_at": "2026-12-01"}, "zone"),
        ({"request_id": "r", "tenant": "a", "subject": "u", "who": 1}, "unknown fields"),
    ],
)
def test_invalid_requests_say_why(value: Any, reason: str) -> None:
    parsed = parse_erasure(rec(value))
    assert isinstance(parsed, str) and reason in parsed


def test_erasure_removes_the_profile_once(layout: StoreLayout) -> None:
    apply_records(ProfileStore(layout.profiles), [profile("u1", 1), profile("u2", 2)])
    t = table(layout, Clock())
    first = t.erase(ErasureRequest("r1", "acme", "u1"))
    again = t.erase(ErasureRequest("r1", "acme", "u1"))
    assert first.removed["profiles"] == 1 and not first.repeat
    assert again.repeat and again.removed == first.removed
    assert (again.received_at, again.applied_at) == (first.received_at, first.applied_at)
    assert ProfileStore(layout.profiles).get("acme", "u1") is None
    assert ProfileStore(layout.profiles).get("acme", "u2") == {"plan": "p2"}
    # A second request for the erased subject removes nothing more.
    other = t.erase(ErasureRequest("r2", "acme", "u1"))
    assert other.removed["profiles"] == 0 and not other.repeat


def test_tombstone_beats_replays_seeds_and_older_versions(layout: StoreLayout, tmp_path) -> None:
    store = ProfileStore(layout.profiles)
    apply_records(store, [profile("u1", 1)])
    table(layout, Clock()).erase(ErasureRequest("r1", "acme", "u1"))
    before = "2026-01-01T00:00:00Z"
    # Another origin (a re-created topic, a re-read from its start), integer versions,
    # an older `updated_at`, a seed: none brings the profile back.
    apply_records(
        store,
        [profile("u1", 5, version=10**6)],
    )
    apply_records(store, [profile("u1", 7, updated_at=before)])
    apply_records(store, [rec({"tenant": "acme", "entity": "u1", "attributes": {}}, 0, "other")])
    seed = tmp_path / "seed.jsonl"
    seed.write_text(json.dumps({"tenant": "acme", "entity": "u1", "attributes": {"a": 1}}))
    load_profile_seed(str(seed), str(layout.profiles))
    assert store.get("acme", "u1") is None
    # Newer data is new: an update stamped after the erasure re-creates the profile.
    apply_records(store, [profile("u1", 9, updated_at="2030-01-01T00:00:00Z")])
    assert store.get("acme", "u1") == {"plan": "p9"}


def test_erasure_before_the_profile_arrives_still_blocks_it(layout: StoreLayout) -> None:
    """The table applied the request before the profiles input reached the subject's
    (older) update: the update is dropped when it arrives."""
    t = table(layout, Clock())
    assert t.erase(ErasureRequest("r1", "acme", "u1")).removed["profiles"] == 0
    apply_records(ProfileStore(layout.profiles), [profile("u1", 3)])
    assert ProfileStore(layout.profiles).get("acme", "u1") is None


def doc(doc_id: str, version: int, subjects: list[str], offset: int) -> RawRecord:
    text = f"refund policy {doc_id}"
    body = {"tenant": "acme", "doc_id": doc_id, "version": version, "text": text}
    return rec({**body, "subjects": subjects}, offset, "knowledge")


def deleted(index: SqliteKnowledgeIndex, doc_id: str) -> bool:
    found = index.document("acme", doc_id)
    assert found is not None
    return bool(found["deleted"])


def test_documents_about_the_subject_are_deleted_and_refused(layout: StoreLayout) -> None:
    index = SqliteKnowledgeIndex(layout.knowledge)
    try:
        knowledge_apply(index, [doc("d1", 1, ["u1"], 0), doc("d2", 1, ["u2"], 1)])
        t = table(layout, Clock(), index)
        out = t.erase(ErasureRequest("r1", "acme", "u1"))
        assert out.removed["documents"] == 1
        assert deleted(index, "d1")  # a tombstone
        assert [h.doc_id for h in index.search("acme", "refund", 5)] == ["d2"]
        # A newer version still about the subject, from any source, is not indexed.
        knowledge_apply(index, [doc("d1", 2, ["u1"], 2), doc("d3", 1, ["u1", "u2"], 3)])
        assert deleted(index, "d1")
        assert index.document("acme", "d3") is None
        assert index.refused == 2
        # A version no longer about the subject is another document: it is indexed.
        knowledge_apply(index, [doc("d1", 3, [], 4)])
        assert not deleted(index, "d1")
        assert t.erase(ErasureRequest("r1", "acme", "u1")).repeat
    finally:
        index.close()


def test_subjects_become_tags() -> None:
    parsed = parse_document(b'{"tenant":"a","doc_id":"d","version":1,"text":"x","subjects":["u1"]}')
    assert not isinstance(parsed, str) and parsed.tags == ("subject:u1",)
    assert "subjects" in str(
        parse_document(b'{"tenant":"a","doc_id":"d","version":1,"text":"x","subjects":"u1"}')
    )


def test_cache_entries_of_the_subject_are_deleted(layout: StoreLayout) -> None:
    clock = Clock()
    cache = ResponseCache(layout.llm_cache, clock=clock)
    owners = [
        (b"fp-u1", "acme", "s1"),
        (b"fp-u1", "acme", "u1"),
        (Reply("acme", "s1", "m1", "").key(), "acme", "u1"),
    ]
    cache.put_many(
        {"fp-u1": {"reply": "hi"}, "fp-u2": {"reply": "yo"}},
        [Reply("acme", "s1", "m1", "hello"), Reply("acme", "s2", "m2", "other")],
        [Summary("acme", "u1", (5.0, 1), "the user said hi")],
        owners=owners,
    )
    t = table(layout, clock)
    out = t.erase(ErasureRequest("r1", "acme", "u1"))
    assert {k: out.removed[k] for k in ("answers", "replies", "summaries")} == {
        "answers": 1,
        "replies": 1,
        "summaries": 1,
    }
    assert cache.get("fp-u1") is None and cache.get("fp-u2") == {"reply": "yo"}
    assert cache.replies("acme", "s1", ["m1"]) == {}
    assert cache.replies("acme", "s2", ["m2"]) == {"m2": "other"}
    assert cache.summary("acme", "u1") is None
    assert cache.erase("acme", "u1") == {"answers": 0, "replies": 0, "summaries": 0}


def test_a_peer_cache_summary_of_an_erased_conversation_is_not_read(tmp_path: Path) -> None:
    """A process cannot delete from another's cache; its reads check the erasure table."""
    peer = StoreLayout(tmp_path, 1)
    ResponseCache(peer.llm_cache).put_many({}, summaries=[Summary("acme", "s1", (5.0, 1), "x")])
    stores.close_all()
    own = StoreLayout(tmp_path, 0)
    cache = ResponseCache(own.llm_cache, peers=own.peer_caches())
    assert cache.summary("acme", "s1") == "x"
    cache.erased = lambda tenant, subject: 10.0 if subject == "s1" else None
    assert cache.summary("acme", "s1") is None
    cache.erased = lambda tenant, subject: 4.0  # a summary newer than the erasure stays
    assert cache.summary("acme", "s1") == "x"
    stores.close_all()


def test_table_survives_a_restart_and_a_crash_mid_way(layout: StoreLayout) -> None:
    clock = Clock()
    apply_records(ProfileStore(layout.profiles), [profile("u1", 1)])
    store = open_erasures(layout.erasures)
    store.begin(ErasureRequest("r1", "acme", "u1", requested_at=T0 - 60), clock())
    assert store.cutoff("acme", "u1") == T0 - 60  # refused at once, before the stores
    stores.close_all()  # the process dies before the stores applied it
    clock.now += 5
    t = table(layout, clock)
    assert t.cutoff("acme", "u1") == T0 - 60
    out = t.erase(ErasureRequest("r1", "acme", "u1", requested_at=T0 - 60))
    assert not out.repeat and out.removed["profiles"] == 1
    assert out.received_at == T0 and out.applied_at == T0 + 5


def test_table_applies_records_once_by_position(layout: StoreLayout) -> None:
    t = table(layout, Clock())
    records = [
        rec({"request_id": "r1", "tenant": "acme", "subject": "u1"}, 0),
        rec("not json", 1),
        rec({"request_id": "r2", "tenant": "acme", "subject": "u2"}, 2),
    ]
    assert t.apply(records) == 2
    assert t.positions() == {"erasures[0]": 2}
    assert t.apply(records) == 0
    assert len(t) == 2 and t.generation == 2


def test_cutoff_is_never_after_the_request_was_read(layout: StoreLayout) -> None:
    store = ErasureStore(layout.erasures)
    store.begin(ErasureRequest("r1", "acme", "u1", requested_at=T0 + 3600), T0)
    assert store.cutoff("acme", "u1") == T0


def chat(event_id: str, ts: float, user: str | None, entity: str = "s1") -> Event:
    payload: dict[str, Any] = {"text": event_id, "role": "user"}
    if user:
        payload["user_id"] = user
    return Event(event_id, "chat[0]@0", "acme", Kind.CHAT, entity, ts, payload, 0.0)


def test_memory_purge_drops_the_subjects_older_turns() -> None:
    mem = Memory(MemoryConfig(max_turns=8, max_tokens=1000))
    for e in (chat("a", 1.0, "u1"), chat("b", 2.0, "u2"), chat("c", 3.0, "u1")):
        mem.observe(e, now=0.0)
    cutoffs = {("acme", "u1"): 2.5}
    assert mem.purge("acme", "s1", lambda t, s: cutoffs.get((t, s))) == 1
    assert [t["text"] for t in mem.turns] == ["b", "c"]
    cutoffs[("acme", "s1")] = 2.5  # the session itself: every turn up to its cutoff
    assert mem.purge("acme", "s1", lambda t, s: cutoffs.get((t, s))) == 1
    assert [t["text"] for t in mem.turns] == ["c"]
    assert mem._tokens == sum(_turn_tokens(t) for t in mem.turns)  # the fold budget follows
