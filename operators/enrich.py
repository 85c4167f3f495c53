"""Enrichment: each work item gets its entity's profile from the profile store.

Lookups are scoped to the item's tenant, so one tenant never sees another's profile; a miss
leaves the item as it is. The store is this process's copy of the reference data
(`connectors.reference.ReferenceTable`), read to its end before the first lookup and opened
lazily on the worker, never at build time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from core.records import WorkItem
from state.stores import ProfileStore


class ProfileLookup:
    """Adds `context["profile"]` to work items from the profile store (tenant-scoped)."""

    def __init__(self, store_path: str, ready: Callable[[], object] | None = None) -> None:
        self.store_path = store_path
        self.ready = ready
        self._store: ProfileStore | None = None

    def apply(self, item: WorkItem) -> WorkItem:
        if self._store is None:
            if self.ready is not None:
                self.ready()  # once per process: the reference data is read to its end
            self._store = ProfileStore(self.store_path)
        profile = self._store.get(item.tenant, item.profile_id)
        if profile is None:
            return item
        return replace(item, context={**item.context, "profile": profile})


@operator
def attach_profiles(
    step_id: str,
    up: Stream[WorkItem],
    store_path: str | None,
    ready: Callable[[], object] | None = None,
) -> Stream[WorkItem]:
    """Enrich work items with their entity's profile. Reads only; never raises on a miss.

    The profile of `(item.tenant, item.profile_id)` goes into `item.context["profile"]`, from
    the profile store at `store_path` (None: items pass unchanged). `ready` is called before
    the first lookup of each worker: the flow passes one that reads the reference data to its
    end once per process (`connectors.reference.ensure_reference`), so no item is enriched
    from a store that is still loading.

    >>> import bytewax.operators as op
    >>> import shutil, tempfile
    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> from connectors.reference import ReferenceTable, close_references, ensure_reference
    >>> from state.stores import close_all
    >>> tmp = tempfile.mkdtemp()
    >>> with open(f"{tmp}/seed.jsonl", "w") as f:
    ...     _ = f.write('{"tenant": "acme", "entity": "u1", "attributes": {"plan": "gold"}}')
    >>> table = ReferenceTable(None, f"{tmp}/profiles", seed=f"{tmp}/seed.jsonl")
    >>> ready = lambda: ensure_reference(table)
    >>> def work(tenant, user):
    ...     return WorkItem(f"{tenant}-{user}", (), tenant, "s1", user, "chat_reply", "x",
    ...                     {"text": "hi"}, {}, 0.0)
    >>> items = [work("acme", "u1"), work("acme", "u2"), work("globex", "u1")]
    >>> flow = Dataflow("profiles_eg")
    >>> out = []
    >>> up = op.input("in", flow, TestingSource(items))
    >>> enriched = attach_profiles("profiles", up, f"{tmp}/profiles", ready)
    >>> op.output("out", enriched, TestingSink(out))
    >>> run_main(flow)
    >>> [(i.item_id, i.context.get("profile")) for i in out]
    [('acme-u1', {'plan': 'gold'}), ('acme-u2', None), ('globex-u1', None)]
    >>> close_references(); close_all(); shutil.rmtree(tmp)
    """
    if store_path is None:
        return op.map("lookup", up, lambda item: item)
    return op.map("lookup", up, ProfileLookup(store_path, ready).apply)
