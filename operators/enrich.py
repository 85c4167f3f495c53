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
    """Enrich work items with their entity's profile. Reads only; never raises on a miss.

    The profile of `(item.tenant, item.profile_id)` goes into `item.context["profile"]`.

    >>> import bytewax.operators as op
    >>> import shutil, tempfile
    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> from state.stores import close_all
    >>> tmp = tempfile.mkdtemp()
    >>> ProfileStore(f"{tmp}/profiles").upsert_many([("acme", "u1", {"plan": "gold"}, "seed", 1)])
    1
    >>> def work(tenant, user):
    ...     return WorkItem(f"{tenant}-{user}", (), tenant, "s1", user, "chat_reply", "x",
    ...                     {"text": "hi"}, {}, 0.0)
    >>> items = [work("acme", "u1"), work("acme", "u2"), work("globex", "u1")]
    >>> flow = Dataflow("profiles_eg")
    >>> out = []
    >>> up = op.input("in", flow, TestingSource(items))
    >>> op.output("out", attach_profiles("profiles", up, f"{tmp}/profiles"), TestingSink(out))
    >>> run_main(flow)
    >>> [(i.item_id, i.context.get("profile")) for i in out]
    [('acme-u1', {'plan': 'gold'}), ('acme-u2', None), ('globex-u1', None)]
    >>> close_all(); shutil.rmtree(tmp)
    """
    return op.map("lookup", up, ProfileLookup(store_path).apply)
