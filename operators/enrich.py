"""Enrichment: each work item gets its entity's profile from the profile store and, for tasks
that retrieve, the best chunks of its tenant's knowledge documents.

Lookups are scoped to the item's tenant, so one tenant never sees another's profile or
documents; a miss leaves the item as it is. The stores are this process's copies of the
reference data (`connectors.reference.ReferenceTable`), read to their end before the first
lookup and opened lazily on the worker, never at build time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from config.models import KnowledgeUse
from core.records import WorkItem
from state.knowledge import Hit, KnowledgeIndex
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


_PLACEHOLDER = re.compile(r"\[[A-Z_]+\]")


def search_text(text: str) -> str:
    """`text` as the knowledge is searched with it: a redaction placeholder ("[EMAIL]") is
    not a search term."""
    return _PLACEHOLDER.sub(" ", text)


def knowledge_query(item: WorkItem) -> str:
    """What an item searches the knowledge for: a chat message's text, an alert's message,
    else the item's data values (a business event's type and attributes).

    >>> knowledge_query(WorkItem("m1", (), "acme", "s1", "u1", "t", "x",
    ...                          {"text": "reset my password, mail [EMAIL]"}, {}, 0.0))
    'reset my password, mail  '
    """
    data = item.data
    for key in ("text", "message"):
        value = data.get(key)
        if isinstance(value, str):
            return search_text(value)
    parts: list[str] = []
    for value in data.values():
        if isinstance(value, dict):
            parts.extend(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, str | int | float):
            parts.append(str(value))
    return " ".join(parts)


def citation(hit: Hit) -> dict[str, Any]:
    """A retrieved chunk as prompts and citations carry it."""
    return {
        "doc_id": hit.doc_id,
        "version": hit.version,
        "chunk_id": hit.chunk_id,
        "score": round(hit.score, 4),
        "title": hit.title,
        "text": hit.text,
    }


class KnowledgeLookup:
    """Adds `context["knowledge"]` (the best chunks, best first) to the work items of tasks
    that retrieve; the search is always within the item's tenant.

    Results are cached by tenant, query text and the task's retrieval settings while the
    index's `generation` is unchanged (any applied document or vector invalidates every
    entry; a search made lexical-only by an embeddings outage is not kept), so a question
    asked again (support chats repeat) costs a dictionary lookup; at most
    `CACHE_ENTRIES` entries, cleared when full. Shared by the process's workers (dict
    reads and writes are atomic).
    """

    CACHE_ENTRIES = 10_000

    def __init__(
        self,
        index: Callable[[], KnowledgeIndex],
        tasks: Mapping[str, KnowledgeUse],
        ready: Callable[[], object] | None = None,
    ) -> None:
        self.open = index
        self.tasks = dict(tasks)
        self.ready = ready
        self._index: KnowledgeIndex | None = None
        self._cache: dict[
            tuple[str, str, KnowledgeUse], tuple[int, tuple[dict[str, Any], ...]]
        ] = {}

    def apply(self, item: WorkItem) -> WorkItem:
        use = self.tasks.get(item.task)
        if use is None:
            return item
        if self._index is None:
            if self.ready is not None:
                self.ready()  # once per process: the documents are read to their end
            self._index = self.open()
        query = knowledge_query(item)
        index = self._index
        generation = getattr(index, "generation", None)
        key = (item.tenant, query, use)
        found = self._cache.get(key) if generation is not None else None
        if found is not None and found[0] == generation:
            chunks = found[1]
        else:
            hits = index.search(
                item.tenant, query, use.top_k, min_score=use.min_score, tags=use.tags
            )
            chunks = tuple(citation(h) for h in hits)
            if generation is not None and not getattr(index, "degraded", False):
                if len(self._cache) >= self.CACHE_ENTRIES:
                    self._cache.clear()
                self._cache[key] = (generation, chunks)
        if not chunks:
            return item
        return replace(item, context={**item.context, "knowledge": [dict(c) for c in chunks]})


@operator
def attach_knowledge(
    step_id: str,
    up: Stream[WorkItem],
    index: Callable[[], KnowledgeIndex] | None,
    tasks: Mapping[str, KnowledgeUse],
    ready: Callable[[], object] | None = None,
) -> Stream[WorkItem]:
    """Enrich the work items of the tasks in `tasks` with knowledge chunks. Reads only.

    `index` opens this process's knowledge index (None: items pass unchanged); `ready` is
    called before the first search of each worker (the flow passes one that reads the
    knowledge input to its end once per process). Each item of a task in `tasks` gets
    `context["knowledge"]`: up to `top_k` chunks of documents of the item's tenant (with the
    task's `tags`, scoring at least `min_score`), each `{doc_id, version, chunk_id, score,
    title, text}`, best first; the responses cite them.

    >>> import bytewax.operators as op
    >>> import tempfile
    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> from config.models import KnowledgeUse
    >>> from state.knowledge import KnowledgeUpdate, SqliteKnowledgeIndex
    >>> index = SqliteKnowledgeIndex(f"{tempfile.mkdtemp()}/knowledge.sqlite")
    >>> _ = index.apply([
    ...     KnowledgeUpdate("acme", "kb-1", 1, "Passwords", "Reset your password in Settings."),
    ...     KnowledgeUpdate("globex", "kb-9", 1, "Passwords", "Globex resets passwords by mail."),
    ... ])
    >>> def work(tenant, text):
    ...     return WorkItem(f"{tenant}-1", (), tenant, "s1", "u1", "chat_reply", "x",
    ...                     {"text": text}, {}, 0.0)
    >>> items = [work("acme", "how do I reset my password?"), work("initech", "password")]
    >>> flow = Dataflow("knowledge_eg")
    >>> out = []
    >>> up = op.input("in", flow, TestingSource(items))
    >>> tasks = {"chat_reply": KnowledgeUse(top_k=2)}
    >>> op.output("out", attach_knowledge("knowledge", up, lambda: index, tasks), TestingSink(out))
    >>> run_main(flow)
    >>> [[c["chunk_id"] for c in i.context.get("knowledge", [])] for i in out]
    [['kb-1#0'], []]
    >>> index.close()
    """
    if index is None or not tasks:
        return op.map("lookup", up, lambda item: item)
    return op.map("lookup", up, KnowledgeLookup(index, tasks, ready).apply)
