"""Unit tests of `state.stores`: the versioned profile table (ordering, positions, format key),
the lock error of a second process, and the LLM response cache."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from state import stores
from state.stores import (
    ProfileStore,
    ProfileUpdate,
    Reply,
    ResponseCache,
    StoreFormatMismatch,
    StoreLocked,
    open_store,
)

ROOT = Path(__file__).resolve().parents[2]


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


# --- versions, positions, format ------------------------------------------------------------


def up(plan: str, origin: str, offset: int, version: int | None = None) -> ProfileUpdate:
    return ProfileUpdate("acme", "u", {"plan": plan}, origin, offset, version)


def test_higher_version_wins_whatever_the_origin_and_offset(profiles: ProfileStore) -> None:
    other = "reference.profiles[1]"
    assert profiles.upsert_many([up("v2", ORIGIN, 1, version=2)]) == 1
    assert profiles.upsert_many([up("v1", other, 50, version=1)]) == 0
    assert profiles.upsert_many([up("v1b", ORIGIN, 51, version=1)]) == 0
    assert profiles.get("acme", "u") == {"plan": "v2"}
    assert profiles.upsert_many([up("v3", other, 51, version=3)]) == 1
    assert profiles.get("acme", "u") == {"plan": "v3"}


def test_an_unversioned_update_never_replaces_a_versioned_value(profiles: ProfileStore) -> None:
    profiles.upsert_many([up("unversioned", ORIGIN, 1)])
    assert profiles.upsert_many([up("versioned", ORIGIN, 2, version=1)]) == 1
    assert profiles.upsert_many([up("later", ORIGIN, 3)]) == 0
    assert profiles.upsert_many([up("elsewhere", "reference.profiles[1]", 9)]) == 0
    assert profiles.get("acme", "u") == {"plan": "versioned"}


def test_equal_versions_of_one_origin_order_by_offset(profiles: ProfileStore) -> None:
    n = profiles.upsert_many([up("b", ORIGIN, 11, version=5), up("a", ORIGIN, 10, version=5)])
    assert n == 1
    assert profiles.get("acme", "u") == {"plan": "b"}
    assert profiles.upsert_many([up("c", ORIGIN, 12, version=5)]) == 1
    assert profiles.get("acme", "u") == {"plan": "c"}


def test_a_replay_is_skipped_even_after_another_origin_wrote_the_key(
    profiles: ProfileStore,
) -> None:
    """Replay detection is by the origin's committed position, not by the key's last writer:
    partition 0 then partition 1 write the key; a replay of partition 0 must not win."""
    profiles.upsert_many([up("p0", ORIGIN, 5)])
    profiles.upsert_many([up("p1", "reference.profiles[1]", 3)])
    assert profiles.upsert_many([up("p0", ORIGIN, 5)]) == 0
    assert profiles.get("acme", "u") == {"plan": "p1"}


def test_a_seed_never_replaces_a_stream_value_of_equal_version(profiles: ProfileStore) -> None:
    assert profiles.upsert_many([up("seed", "seed:s.jsonl@1", 1)]) == 1
    assert profiles.upsert_many([up("stream", ORIGIN, 1)]) == 1
    assert profiles.upsert_many([up("seed2", "seed:s.jsonl@2", 1)]) == 0
    assert profiles.get("acme", "u") == {"plan": "stream"}


class CountingDb:
    """The store's handle, counting `write` calls."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self.writes = 0

    def write(self, wb: Any) -> None:
        self.writes += 1
        self._db.write(wb)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def test_positions_are_written_in_the_same_batch_as_the_data(store_dir: Path) -> None:
    profiles = ProfileStore(store_dir / "p")
    counting = CountingDb(profiles.db)
    profiles.db = counting  # type: ignore[assignment]
    assert profiles.positions() == {}
    profiles.upsert_many(
        [up("a", ORIGIN, 7), ProfileUpdate("acme", "w", {}, "reference.profiles[1]", 3)]
    )
    assert counting.writes == 1
    assert profiles.positions() == {ORIGIN: 7, "reference.profiles[1]": 3}
    # A skipped (older) update still advances its origin's position, in one write.
    assert profiles.upsert_many([up("v2", ORIGIN, 8, 2), up("v1", "other[0]", 1, 1)]) == 1
    assert counting.writes == 2
    stores.close_all()
    reopened = ProfileStore(store_dir / "p")
    assert reopened.positions() == {ORIGIN: 8, "reference.profiles[1]": 3, "other[0]": 1}
    assert reopened.get("acme", "u") == {"plan": "v2"}


def test_a_new_store_gets_the_format_key(store_dir: Path) -> None:
    ProfileStore(store_dir / "p")
    assert open_store(store_dir / "p").get(b"__meta__/format") == b"profiles-v2"


def test_a_store_of_another_format_raises_the_named_error(store_dir: Path) -> None:
    open_store(store_dir / "p").put(b"__meta__/format", b"profiles-v9")
    with pytest.raises(StoreFormatMismatch, match=r"profiles-v9.*move the directory aside"):
        ProfileStore(store_dir / "p")
    assert open_store(store_dir / "p").get(b"__meta__/format") == b"profiles-v9"  # untouched


def test_an_older_store_with_data_but_no_format_key_raises(store_dir: Path) -> None:
    v1 = b'{"attributes":{"plan":"pro"},"offset":1,"origin":"x"}'
    open_store(store_dir / "p").put(b"acme/u", v1)
    with pytest.raises(StoreFormatMismatch, match=r"older format \(profiles-v1"):
        ProfileStore(store_dir / "p")
    assert open_store(store_dir / "p").get(b"acme/u") == v1  # nothing deleted


def test_a_store_held_by_another_process_raises_store_locked(store_dir: Path) -> None:
    path = store_dir / "profiles"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from state.stores import open_store; open_store(sys.argv[1]); "
            "print('ready', flush=True); sys.stdin.read()",
            str(path),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLocked) as err:
            ProfileStore(path)
        msg = str(err.value)
        assert str(path.resolve()) in msg
        assert "another process" in msg
        assert "stores.dir" in msg
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    ProfileStore(path)  # released: opens fine


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


def test_each_process_has_its_own_directory_and_reads_the_others_caches(store_dir: Path) -> None:
    """One config, several processes: `StoreLayout` gives each its own directory, and the
    peers of a process are every other cache there (the pre-layout one included)."""
    layouts = [stores.StoreLayout(store_dir, i) for i in range(3)]
    assert len({lay.own for lay in layouts}) == 3
    for lay in layouts[:2]:
        ResponseCache(lay.llm_cache)
    ResponseCache(store_dir / "llm-cache")  # written before stores were per process
    peers = layouts[0].peer_caches()
    assert peers == [store_dir / "llm-cache", layouts[1].llm_cache]
    assert layouts[2].llm_cache not in layouts[1].peer_caches()  # never written: no store


def test_a_miss_is_answered_by_a_peer_cache_another_process_holds(store_dir: Path) -> None:
    """The answer process 1 cached (and still holds, rw) answers process 0 after a rescale;
    a fingerprint neither has stays a miss."""
    peer = store_dir / "process-1" / "llm-cache"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from state.stores import ResponseCache; "
            "ResponseCache(sys.argv[1]).put_many({'fp-peer': {'reply': 'from p1'}}); "
            "print('ready', flush=True); sys.stdin.read()",
            str(peer),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        own = ResponseCache(store_dir / "process-0" / "llm-cache", peers=[peer])
        own.put_many({"fp-own": {"reply": "from p0"}})
        assert own.get("fp-peer") == {"reply": "from p1"}
        assert own.get("fp-own") == {"reply": "from p0"}
        assert own.get("fp-none") is None
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


def test_a_cache_of_another_format_is_refused(store_dir: Path) -> None:
    path = store_dir / "llm-cache"
    ResponseCache(path).db.put(b"__meta__/format", b"llm-cache-v0")
    stores.close_all()
    with pytest.raises(StoreFormatMismatch, match="llm-cache-v0"):
        ResponseCache(path)
    with pytest.raises(StoreFormatMismatch, match="llm-cache-v0"):
        ResponseCache(store_dir / "own", peers=[path])  # read-only, as a peer


# --- conversation replies in the cache --------------------------------------------------


def test_the_first_reply_to_a_turn_wins(store_dir: Path) -> None:
    """A replay that emits a turn's answer again (another text from another process, say)
    records nothing: the turn keeps the reply its session already saw."""
    cache = ResponseCache(store_dir / "cache")
    cache.put_many({"fp": {"reply": "first"}}, [Reply("acme", "s1", "m1", "first")])
    cache.put_many({}, [Reply("acme", "s1", "m1", "second"), Reply("acme", "s1", "m2", "two")])
    assert cache.replies("acme", "s1", ["m1", "m2", "m3"]) == {"m1": "first", "m2": "two"}
    stores.close_all()
    assert ResponseCache(store_dir / "cache").replies("acme", "s1", ["m1"]) == {"m1": "first"}


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("a/b", "c", "m"), ("a", "b/c", "m")),
        (("a", "b", "c\x00d"), ("a", "b\x00c", "d")),
        (('a","b', "c", "m"), ("a", 'b","c', "m")),
        (("", "", "m"), ("", "m", "")),
        (("ténant", "séssion", "m" * 5000), ("ténant", "séssion", "m" * 4999)),
    ],
)
def test_reply_keys_never_collide(
    store_dir: Path, a: tuple[str, str, str], b: tuple[str, str, str]
) -> None:
    cache = ResponseCache(store_dir / "cache")
    cache.put_many({}, [Reply(*a, "reply a")])
    assert cache.replies(b[0], b[1], [b[2]]) == {}
    assert cache.replies(*a[:2], [a[2]]) == {a[2]: "reply a"}


def test_replies_are_found_in_peer_caches(store_dir: Path) -> None:
    """After a rescale the session's earlier replies are in the cache of the process that
    answered them."""
    peer = store_dir / "process-1" / "llm-cache"
    ResponseCache(peer).put_many({}, [Reply("acme", "s1", "m1", "from p1")])
    stores.close_all()
    own = ResponseCache(store_dir / "process-0" / "llm-cache", peers=[peer])
    assert own.replies("acme", "s1", ["m1", "m2"]) == {"m1": "from p1"}


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
    assert keys == [b"__meta__/format", b"new"]  # the format key is written again
