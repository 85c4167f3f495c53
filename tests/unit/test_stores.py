"""Unit tests of `state.stores`: replay-safe profile upserts and the LLM response cache."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from state import stores
from state.stores import ProfileStore, ResponseCache


@pytest.fixture
def store_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    stores.close_all()


@pytest.fixture
def profiles(store_dir: Path) -> ProfileStore:
    return ProfileStore(store_dir / "profiles")


ORIGIN = "reference.profiles[0]"


def test_get_missing_profile(profiles: ProfileStore) -> None:
    assert profiles.get("acme", "user-1") is None


def test_upsert_and_get(profiles: ProfileStore) -> None:
    n = profiles.upsert_many(
        [
            ("acme", "user-1", {"plan": "pro"}, ORIGIN, 1),
            ("acme", "user-2", {"plan": "free"}, ORIGIN, 2),
        ]
    )
    assert n == 2
    assert profiles.get("acme", "user-1") == {"plan": "pro"}
    assert profiles.get("acme", "user-2") == {"plan": "free"}


def test_profiles_are_scoped_by_tenant(profiles: ProfileStore) -> None:
    profiles.upsert_many([("acme", "user-1", {"plan": "pro"}, ORIGIN, 1)])
    assert profiles.get("globex", "user-1") is None


def test_upsert_is_idempotent(profiles: ProfileStore) -> None:
    updates = [("acme", "user-1", {"plan": "pro"}, ORIGIN, 5)]
    assert profiles.upsert_many(updates) == 1
    assert profiles.upsert_many(updates) == 0
    assert profiles.upsert_many(updates) == 0
    assert profiles.get("acme", "user-1") == {"plan": "pro"}


def test_replayed_older_offset_does_not_roll_back(profiles: ProfileStore) -> None:
    profiles.upsert_many([("acme", "user-1", {"plan": "free"}, ORIGIN, 3)])
    profiles.upsert_many([("acme", "user-1", {"plan": "pro"}, ORIGIN, 7)])
    # A restart replays the topic from offset 3: the older update must be skipped.
    assert profiles.upsert_many([("acme", "user-1", {"plan": "free"}, ORIGIN, 3)]) == 0
    assert profiles.get("acme", "user-1") == {"plan": "pro"}


def test_newer_offset_wins(profiles: ProfileStore) -> None:
    profiles.upsert_many([("acme", "user-1", {"plan": "free"}, ORIGIN, 3)])
    assert profiles.upsert_many([("acme", "user-1", {"plan": "pro"}, ORIGIN, 4)]) == 1
    assert profiles.get("acme", "user-1") == {"plan": "pro"}


def test_within_one_batch_the_highest_offset_wins(profiles: ProfileStore) -> None:
    n = profiles.upsert_many(
        [
            ("acme", "user-1", {"v": 1}, ORIGIN, 10),
            ("acme", "user-1", {"v": 3}, ORIGIN, 12),
            ("acme", "user-1", {"v": 2}, ORIGIN, 11),  # replayed out of order
        ]
    )
    assert n == 1
    assert profiles.get("acme", "user-1") == {"v": 3}


def test_update_from_a_different_origin_applies(profiles: ProfileStore) -> None:
    profiles.upsert_many([("acme", "user-1", {"plan": "pro"}, ORIGIN, 100)])
    # Offsets of another source are not comparable: the later write wins.
    other = "file:data/profiles.jsonl[0]"
    assert profiles.upsert_many([("acme", "user-1", {"plan": "seed"}, other, 1)]) == 1
    assert profiles.get("acme", "user-1") == {"plan": "seed"}
    # And the origin is remembered: a replay of that file line is now skipped.
    assert profiles.upsert_many([("acme", "user-1", {"plan": "seed"}, other, 1)]) == 0


def test_profiles_survive_reopening(store_dir: Path) -> None:
    ProfileStore(store_dir / "p").upsert_many([("acme", "u", {"a": 1}, ORIGIN, 9)])
    stores.close_all()
    reopened = ProfileStore(store_dir / "p")
    assert reopened.get("acme", "u") == {"a": 1}
    assert reopened.upsert_many([("acme", "u", {"a": 0}, ORIGIN, 8)]) == 0
    assert reopened.get("acme", "u") == {"a": 1}


def test_empty_upsert_writes_nothing(profiles: ProfileStore) -> None:
    assert profiles.upsert_many([]) == 0


def test_open_store_shares_one_handle_per_path(store_dir: Path) -> None:
    a = ProfileStore(store_dir / "shared")
    b = ProfileStore(store_dir / "x" / ".." / "shared")
    assert a.db is b.db
    a.upsert_many([("acme", "u", {"k": "v"}, ORIGIN, 1)])
    assert b.get("acme", "u") == {"k": "v"}


# --- ResponseCache --------------------------------------------------------------------------


def test_response_cache_round_trip(store_dir: Path) -> None:
    cache = ResponseCache(store_dir / "llm-cache")
    assert cache.get("fp-1") is None
    answer = {"intent": "question", "reply": "Tomorrow — ça va?", "needs_human": False}
    cache.put_many({"fp-1": answer, "fp-2": {"summary": "s"}})
    assert cache.get("fp-1") == answer
    assert cache.get("fp-2") == {"summary": "s"}
    cache.put_many({"fp-1": answer})  # writing the same answer again is harmless
    assert cache.get("fp-1") == answer
    cache.put_many({})
    stores.close_all()
    assert ResponseCache(store_dir / "llm-cache").get("fp-1") == answer


def test_cached_answers_expire_after_the_ttl(store_dir: Path) -> None:
    now = [1000.0]
    cache = ResponseCache(store_dir / "cache", ttl_s=60, clock=lambda: now[0])
    cache.put_many({"fp": {"reply": "hi"}})
    now[0] += 59
    assert cache.get("fp") == {"reply": "hi"}
    now[0] += 2
    assert cache.get("fp") is None  # expired: a replay this late asks the LLM again


def test_compaction_drops_expired_answers_from_disk(store_dir: Path) -> None:
    """The cache stays bounded: expired answers leave the store at compaction, which runs at
    least every half TTL while answers are written."""
    cache = ResponseCache(store_dir / "cache", ttl_s=1)
    cache.put_many({f"old-{i}": {"reply": "x" * 100} for i in range(1000)})
    time.sleep(2.1)
    cache.put_many({"new": {"reply": "y"}})  # more than half a TTL later: compacts
    keys = list(cache.db.keys())
    assert keys == [b"new"]
