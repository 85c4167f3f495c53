"""Enrichment: each work item gets its entity's profile from the profile store.

Lookups are scoped to the item's tenant, so one tenant never sees another's profile; a miss
leaves the item as it is. The store is written by the reference-data sink
(`connectors.reference`) and opened lazily on the worker, never at build time.
"""

from __future__ import annotations

from dataclasses import replace

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from core.records import WorkItem
from state.stores import ProfileStore


class ProfileLookup:
    """Adds `context["profile"]` to work items from the profile store (tenant-scoped)."""

    def __init__(self, store_path: str) -> None:
        self.store_path = store_path
        self._store: ProfileStore | None = None

    def apply(self, item: WorkItem) -> WorkItem:
        if self._store is None:
            self._store = ProfileStore(self.store_path)
        profile = self._store.get(item.tenant, item.profile_id)
        if profile is None:
            return item
        return replace(item, context={**item.context, "profile": profile})


@operator
def attach_profiles(step_id: str, up: Stream[WorkItem], store_path: str) -> Stream[WorkItem]:
    """Enrich work items with their entity's profile. Reads only; never raises on a miss."""
    return op.map("lookup", up, ProfileLookup(store_path).apply)
