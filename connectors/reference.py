"""Reference data: profile updates (a topic, or a file in local mode) into the profile store.

`parse_profile` validates one update `{"tenant", "entity", "attributes": {...}}` and returns
the reason when it is invalid (the flow dead-letters those); `ProfileSink` writes valid
updates with idempotent, replay-safe upserts (see `state.stores.ProfileStore`);
`load_profile_seed` upserts a seed file at start.
"""

from __future__ import annotations

import json
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from core.records import RawRecord
from state.stores import ProfileStore


def parse_profile(raw: RawRecord) -> tuple[str, str, dict[str, Any], str, int] | str:
    """A profile update `{"tenant", "entity", "attributes": {...}}`, or the reason it is invalid."""
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
    if not isinstance(attrs, dict):
        return "profile update needs an `attributes` object"
    return tenant, entity, attrs, f"{raw.origin}[{raw.partition}]", raw.offset


class _ProfilePartition(StatelessSinkPartition[RawRecord]):
    def __init__(self, store: ProfileStore) -> None:
        self.store = store

    def write_batch(self, items: list[RawRecord]) -> None:
        updates = []
        for raw in items:
            parsed = parse_profile(raw)
            if isinstance(parsed, tuple):
                updates.append(parsed)
        self.store.upsert_many(updates)


class ProfileSink(DynamicSink[RawRecord]):
    """Writes valid profile updates into the profile store; invalid ones are skipped here
    (the flow sends them to the dead letters through `parse_profile`)."""

    def __init__(self, store_path: str) -> None:
        self.store_path = store_path

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProfilePartition:
        return _ProfilePartition(ProfileStore(self.store_path))


def load_profile_seed(seed: str, store_path: str) -> int:
    """Upsert the seed profiles file into the profile store (idempotent; replay-safe)."""
    store = ProfileStore(store_path)
    updates = []
    with open(seed, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            parsed = parse_profile(
                RawRecord(f"file:{seed}", 0, line_no, None, line.strip(), "seed")
            )
            if isinstance(parsed, tuple):
                updates.append(parsed)
    return store.upsert_many(updates)
