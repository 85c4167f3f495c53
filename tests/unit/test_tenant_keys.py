"""Adversarial tenant and entity ids never share a key, a store entry or a cache
fingerprint (issue 12, part 2): tenants may not contain "/" (nor control characters), so a
`tenant/entity` key splits at its first "/"; the cache fingerprint hashes a JSON list."""

from __future__ import annotations

import itertools
import json

import pytest

from config.models import SourceConfig, ValidationConfig
from connectors.reference import parse_profile
from core.records import DeadLetter, Event, Kind, RawRecord, WorkItem
from inference.prompts import item_fingerprint
from operators.validate import Decoder

LONG = "x" * 10_000
TENANTS = ["a", "ab", "acme", "é", "日本", "a.b", "..", "a b", "A"]
ENTITIES = ["b/c", "c", "/c", "../x", "", LONG, "ü/日本", "a\x00b", "b", "a/b/c"]
PAIRS = list(itertools.product(TENANTS, ENTITIES))


def _event(tenant: str, entity: str) -> Event:
    return Event("e", "t[0]@0", tenant, Kind.CHAT, entity, 0.0, {"text": "x"}, 0.0)


def _item(tenant: str, entity: str) -> WorkItem:
    return WorkItem("i", ("e",), tenant, entity, entity, "chat_reply", "s", {"t": 1}, {}, 0.0)


def test_keys_of_different_pairs_differ_and_split_back() -> None:
    keys = {_event(t, e).key: (t, e) for t, e in PAIRS}
    assert len(keys) == len(PAIRS)
    for key, (tenant, entity) in keys.items():
        assert tuple(key.split("/", 1)) == (tenant, entity)


def test_cache_fingerprints_of_different_tenants_differ() -> None:
    prints = {item_fingerprint("chat_reply", "m", _item(t, e)) for t, e in PAIRS}
    # The fingerprint covers tenant and item id (the entity is in the item's data and id).
    assert len({item_fingerprint("chat_reply", "m", _item(t, "e")) for t in TENANTS}) == len(
        TENANTS
    )
    assert len(prints) == len(TENANTS)
    slash = WorkItem("i", ("e",), "a", "b", "b", "chat_reply", "s", {"t": 1}, {}, 0.0)
    other = WorkItem("b/i", ("e",), "a", "b", "b", "chat_reply", "s", {"t": 1}, {}, 0.0)
    assert item_fingerprint("t", "m", slash) != item_fingerprint("t", "m", other)


def _decode(tenant: object) -> Event | DeadLetter:
    src = SourceConfig(name="chat", topic="t", adapter="chat_message")
    doc = {"message_id": "m1", "session_id": "s", "text": "hi", "sent_at": "2026-11-01T08:00:00Z"}
    raw = json.dumps({**doc, "tenant": tenant}).encode()
    decoder = Decoder("decode", {"chat": src}, ValidationConfig(), clock=lambda: 1_793_520_000.0)
    return decoder.decode(RawRecord("t", 0, 0, None, raw, "chat"))


@pytest.mark.parametrize("tenant", ["a/b", "/", "../x", "a\x00", "a\nb"])
def test_records_with_a_tenant_that_could_collide_are_dead_letters(tenant: str) -> None:
    out = _decode(tenant)
    assert isinstance(out, DeadLetter)
    assert out.reason == (
        'invalid chat_message: tenant: may not contain "/" or control characters (a tenant name)'
    )


@pytest.mark.parametrize("tenant", ["", "x" * 129])
def test_empty_and_overlong_tenants_are_dead_letters(tenant: str) -> None:
    out = _decode(tenant)
    assert isinstance(out, DeadLetter) and out.reason.startswith("invalid chat_message: tenant:")


@pytest.mark.parametrize("tenant", ["acme", "日本", "a.b", "..", "x" * 128])
def test_other_tenants_decode(tenant: str) -> None:
    out = _decode(tenant)
    assert isinstance(out, Event) and out.tenant == tenant


def test_profile_updates_with_a_slash_in_the_tenant_are_refused() -> None:
    def update(tenant: str, entity: str) -> RawRecord:
        body = {"tenant": tenant, "entity": entity, "attributes": {"plan": "x"}}
        return RawRecord("profiles", 0, 0, None, json.dumps(body).encode(), "profiles")

    assert parse_profile(update("a/b", "c")) == (
        'profile update tenant may not contain "/" or control characters'
    )
    ok = parse_profile(update("a", "b/c"))
    assert isinstance(ok, tuple) and ok[:2] == ("a", "b/c")


def test_source_tenant_names_are_checked_at_start() -> None:
    with pytest.raises(ValueError, match="`tenant` may not be empty"):
        SourceConfig(name="c", topic="t", tenant="a/b")
    with pytest.raises(ValueError, match='has "/" or control characters'):
        SourceConfig(name="c", topic="t", tenants=("acme", "a/b"))
