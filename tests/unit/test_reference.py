"""Unit tests of `connectors.reference`: parsing profile updates (with versions) and the seed,
applied once per content and never over newer profiles, against a real rocksdict store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.reference import apply_records, load_profile_seed, parse_profile
from core.records import RawRecord
from state import stores
from state.stores import ProfileStore, ProfileUpdate


def raw(value: bytes | None, origin: str = "reference.profiles", offset: int = 4) -> RawRecord:
    return RawRecord(origin, 1, offset, None, value, "profiles")


def line(tenant: str, entity: str, **attrs: Any) -> dict[str, Any]:
    return {"tenant": tenant, "entity": entity, "attributes": attrs}


# --- parse_profile --------------------------------------------------------------------------


def test_parse_profile_good() -> None:
    value = json.dumps(
        {"tenant": "acme", "entity": "user-1", "attributes": {"plan": "pro", "seats": 3}}
    ).encode()
    assert parse_profile(raw(value)) == ProfileUpdate(
        "acme", "user-1", {"plan": "pro", "seats": 3}, "reference.profiles[1]", 4, None
    )


def test_parse_profile_from_file_uses_line_as_offset() -> None:
    value = b'{"tenant": "acme", "entity": "u", "attributes": {}}'
    parsed = parse_profile(raw(value, origin="file:data/profiles.jsonl", offset=17))
    assert parsed == ("acme", "u", {}, "file:data/profiles.jsonl[1]", 17, None)


def test_parse_profile_version() -> None:
    value = b'{"tenant": "acme", "entity": "u", "attributes": {}, "version": 42}'
    parsed = parse_profile(raw(value))
    assert isinstance(parsed, ProfileUpdate)
    assert parsed.version == 42


@pytest.mark.parametrize(
    ("stamp", "micros"),
    [
        ("1970-01-01T00:00:01Z", 1_000_000),
        ("1970-01-01T02:00:01+02:00", 1_000_000),
        ("2026-03-01T12:00:00.250000+00:00", 1_772_366_400_250_000),
    ],
)
def test_parse_profile_updated_at_is_microseconds_since_the_epoch(stamp: str, micros: int) -> None:
    value = json.dumps({**line("acme", "u"), "updated_at": stamp}).encode()
    parsed = parse_profile(raw(value))
    assert isinstance(parsed, ProfileUpdate)
    assert parsed.version == micros


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "not valid JSON"),
        (b"", "not valid JSON"),
        (b"{nope", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"entity": "u", "attributes": {}}', "non-empty string `tenant` and `entity`"),
        (b'{"tenant": "", "entity": "u", "attributes": {}}', "`tenant` and `entity`"),
        (b'{"tenant": "t", "entity": 5, "attributes": {}}', "`tenant` and `entity`"),
        (b'{"tenant": "t", "entity": "u"}', "needs an `attributes` object"),
        (b'{"tenant": "t", "entity": "u", "attributes": [1]}', "needs an `attributes` object"),
        (b'{"tenant": "__meta__", "entity": "format", "attributes": {}}', "reserved"),
        (b'{"tenant": "t", "entity": "u", "attributes": {}, "version": "3"}', "integer"),
        (b'{"tenant": "t", "entity": "u", "attributes": {}, "version": 1.5}', "integer"),
        (b'{"tenant": "t", "entity": "u", "attributes": {}, "version": true}', "integer"),
        (b'{"tenant": "t", "entity": "u", "attributes": {}, "updated_at": 5}', "ISO 8601"),
        (b'{"tenant": "t", "entity": "u", "attributes": {}, "updated_at": "soon"}', "ISO 8601"),
        (
            b'{"tenant": "t", "entity": "u", "attributes": {}, "updated_at": "2026-03-01T12:00"}',
            "time zone",
        ),
        (
            b'{"tenant": "t", "entity": "u", "attributes": {}, "version": 1, '
            b'"updated_at": "2026-03-01T12:00Z"}',
            "not both",
        ),
    ],
)
def test_parse_profile_bad(value: bytes | None, reason: str) -> None:
    out: Any = parse_profile(raw(value))
    assert isinstance(out, str)
    assert reason in out


def test_parse_profile_deeply_nested_json_is_a_reason_not_a_crash() -> None:
    """A 4 KB record of nested arrays is untrusted input: it must come back as a reason."""
    out: Any = parse_profile(raw(b"[" * 2000 + b"]" * 2000))
    assert isinstance(out, str)
    assert "JSON" in out


# --- the seed against the profiles topic ----------------------------------------------------


@pytest.fixture
def store_path(tmp_path: Path) -> Iterator[str]:
    yield str(tmp_path / "profiles")
    stores.close_all()


def write_seed(path: Path, *lines: dict[str, Any]) -> str:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path)


def topic_update(store_path: str, offset: int, update: dict[str, Any]) -> None:
    """One profile update as the reference table applies it, read from the profiles topic."""
    raw = RawRecord("reference.profiles", 0, offset, None, json.dumps(update).encode(), "")
    apply_records(ProfileStore(store_path), [raw])


def test_restart_does_not_roll_a_topic_update_back_to_the_seed(
    tmp_path: Path, store_path: str
) -> None:
    """The reported bug: seed says free, the topic says enterprise; after a restart (which
    re-applies the seed) the profile must still say enterprise."""
    seed = write_seed(tmp_path / "profiles.jsonl", line("acme", "user-000", plan="free"))
    assert load_profile_seed(seed, store_path) == 1
    topic_update(store_path, 0, line("acme", "user-000", plan="enterprise"))
    assert ProfileStore(store_path).get("acme", "user-000") == {"plan": "enterprise"}

    stores.close_all()  # restart
    assert load_profile_seed(seed, store_path) == 0
    topic_update(store_path, 0, line("acme", "user-000", plan="enterprise"))  # replayed
    assert ProfileStore(store_path).get("acme", "user-000") == {"plan": "enterprise"}


def test_edited_seed_line_applies_once_and_never_over_a_newer_value(
    tmp_path: Path, store_path: str
) -> None:
    seed = write_seed(
        tmp_path / "profiles.jsonl",
        line("acme", "user-000", plan="free"),
        line("acme", "user-001", plan="pro"),
    )
    assert load_profile_seed(seed, store_path) == 2
    topic_update(store_path, 0, line("acme", "user-000", plan="enterprise"))

    # Both lines edited: user-001 still holds a seed value (the edit is newer), user-000 holds
    # a value of the profiles topic (a seed line without a higher version never replaces it).
    write_seed(
        tmp_path / "profiles.jsonl",
        line("acme", "user-000", plan="trial"),
        line("acme", "user-001", plan="gold"),
    )
    stores.close_all()
    assert load_profile_seed(seed, store_path) == 1
    store = ProfileStore(store_path)
    assert store.get("acme", "user-001") == {"plan": "gold"}
    assert store.get("acme", "user-000") == {"plan": "enterprise"}
    stores.close_all()
    assert load_profile_seed(seed, store_path) == 0  # once per content


def test_a_versioned_seed_line_wins_over_an_older_topic_value(
    tmp_path: Path, store_path: str
) -> None:
    topic_update(store_path, 0, {**line("acme", "u", plan="enterprise"), "version": 3})
    seed = write_seed(tmp_path / "s.jsonl", {**line("acme", "u", plan="free"), "version": 2})
    assert load_profile_seed(seed, store_path) == 0  # older version: kept enterprise
    assert ProfileStore(store_path).get("acme", "u") == {"plan": "enterprise"}
    seed = write_seed(tmp_path / "s.jsonl", {**line("acme", "u", plan="gold"), "version": 4})
    assert load_profile_seed(seed, store_path) == 1
    assert ProfileStore(store_path).get("acme", "u") == {"plan": "gold"}


def test_invalid_seed_lines_are_skipped(tmp_path: Path, store_path: str) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('{"tenant": "acme"}\n\n' + json.dumps(line("acme", "u", a=1)) + "\n")
    assert load_profile_seed(str(path), store_path) == 1
    assert ProfileStore(store_path).get("acme", "u") == {"a": 1}
