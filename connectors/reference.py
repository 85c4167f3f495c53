"""Reference data: profile updates (a topic, or a file in local mode) into the profile store.

`parse_profile` validates one update `{"tenant", "entity", "attributes": {...}}`, optionally
with a `version` (integer) or an `updated_at` (ISO 8601 timestamp with a time zone), and
returns the reason when it is invalid (the flow dead-letters those); `ProfileSink` writes valid
updates into the versioned profile table (see `state.stores.ProfileStore` for the ordering
rule); `load_profile_seed` applies a seed file once per content at start, never over newer
values.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from core.records import RawRecord
from state.stores import META, SEED_PREFIX, ProfileStore, ProfileUpdate

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _version(obj: dict[str, Any]) -> int | str | None:
    """The update's version (`updated_at` as microseconds since the epoch), None when it has
    none, or the reason it is invalid. A JSON null counts as absent."""
    version, updated_at = obj.get("version"), obj.get("updated_at")
    if version is not None and updated_at is not None:
        return "profile update must give `version` or `updated_at`, not both"
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int):
            return "profile update `version` must be an integer"
        return version
    if updated_at is None:
        return None
    if not isinstance(updated_at, str):
        return "profile update `updated_at` must be an ISO 8601 timestamp string"
    try:
        ts = datetime.fromisoformat(updated_at)
    except ValueError:
        return f"profile update `updated_at` is not an ISO 8601 timestamp: {updated_at[:64]!r}"
    if ts.utcoffset() is None:
        return "profile update `updated_at` needs a time zone (e.g. `Z` or `+02:00`)"
    return (ts - _EPOCH) // timedelta(microseconds=1)


def parse_profile(raw: RawRecord) -> ProfileUpdate | str:
    """A profile update `{"tenant", "entity", "attributes": {...}}` (plus an optional `version`
    or `updated_at`), or the reason it is invalid."""
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
    if tenant == META:
        return f"profile update tenant {META!r} is reserved"
    if not isinstance(attrs, dict):
        return "profile update needs an `attributes` object"
    version = _version(obj)
    if isinstance(version, str):
        return version
    return ProfileUpdate(
        tenant, entity, attrs, f"{raw.origin}[{raw.partition}]", raw.offset, version
    )


class _ProfilePartition(StatelessSinkPartition[RawRecord]):
    def __init__(self, store: ProfileStore) -> None:
        self.store = store

    def write_batch(self, items: list[RawRecord]) -> None:
        updates = []
        for raw in items:
            parsed = parse_profile(raw)
            if isinstance(parsed, ProfileUpdate):
                updates.append(parsed)
        self.store.upsert_many(updates)


class ProfileSink(DynamicSink[RawRecord]):
    """Writes valid profile updates into the profile store; invalid ones are skipped here
    (the flow sends them to the dead letters through `parse_profile`)."""

    def __init__(self, store_path: str) -> None:
        self.store_path = store_path

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProfilePartition:
        return _ProfilePartition(ProfileStore(self.store_path))


def seed_origin(seed: str, content: bytes) -> str:
    """The origin of a seed file's lines: its path and a hash of its content, so each content
    is applied once (its position is committed with its profiles) and an edited seed is new."""
    return f"{SEED_PREFIX}{seed}@{hashlib.sha256(content).hexdigest()[:16]}"


def load_profile_seed(seed: str, store_path: str) -> int:
    """Apply the seed profiles file to the profile store; returns the profiles written.

    A seed content already applied is skipped as a whole (a restart re-applies nothing); an
    edited seed is a new content whose lines apply only where they are newer by the store's
    rule: a seed line never replaces a value that came from the profiles input unless it
    carries a higher `version`/`updated_at`. Invalid lines are skipped with a warning.
    """
    store = ProfileStore(store_path)
    with open(seed, "rb") as f:
        content = f.read()
    origin = seed_origin(seed, content)
    updates = []
    for line_no, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        parsed = parse_profile(RawRecord(origin, 0, line_no, None, line.strip(), "seed"))
        if isinstance(parsed, ProfileUpdate):
            updates.append(parsed._replace(origin=origin))
        else:
            log.warning("profile seed %s line %d skipped: %s", seed, line_no, parsed)
    return store.upsert_many(updates)
