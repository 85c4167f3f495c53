"""Serialize output records to `(key, JSON bytes)` pairs, count them, and write them to a sink.

Every output record carries the ids of the events it answers (`event_id`, `event_ids` or
`item_id`), so consumers can drop the duplicates that at-least-once delivery allows after a
recovery. Output keys are `tenant/entity`, so one entity's records stay in one partition.

Each sink is wrapped in `HoldThreadState`, which keeps its worker thread's Python thread
state alive while the sink partition lives (see there): in a `-i/-a` cluster Bytewax runs
its workers on threads of its own, and without a held thread state every step of such a
worker created and destroyed one.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from core.records import KV, Alert, Audit, DeadLetter, LedgerEntry, Response, dumps
from runtime import metrics

X = TypeVar("X")


def _kv(key: str | None, doc: dict[str, Any]) -> KV:
    return (None if key is None else key.encode(), dumps(doc))


def ledger_kv(entry: LedgerEntry) -> KV:
    return (f"{entry.tenant}/{entry.entity}".encode(), dumps(entry.to_json()))


def ledger_batch_kv(batch: list[LedgerEntry]) -> list[KV]:
    """Serialize a batch of ledger entries and count valid and duplicate events."""
    dups = sum(1 for e in batch if e.route == "duplicate")
    metrics.EVENTS_DUPLICATE.inc(dups)
    metrics.EVENTS_VALID.inc(len(batch) - dups)
    return [ledger_kv(e) for e in batch]


def dead_letter_kv(dl: DeadLetter) -> KV:
    metrics.DEAD_LETTERS.labels(dl.step_id).inc()
    return _kv(dl.tenant, dl.to_json())


def alert_kv(alert: Alert) -> KV:
    metrics.ALERTS.labels(alert.detector).inc()
    return _kv(f"{alert.tenant}/{alert.entity}", alert.to_json())


def response_kv(resp: Response) -> KV:
    metrics.LLM_ITEMS.labels(resp.task, str(resp.cached).lower()).inc()
    metrics.ANSWER_LATENCY.labels(resp.task).observe(
        max(0.0, resp.emitted_at - resp.item.ingest_ts)
    )
    return _kv(f"{resp.item.tenant}/{resp.item.entity}", resp.to_json())


def audit_kv(audit: Audit) -> KV:
    r = audit.record
    if r.get("type") == "activity":
        metrics.ACTIVITY.labels(r["activity"]).inc()
        return _kv(r["tenant"] or "", r)
    route = r["route"]
    metrics.LLM_REQUESTS.labels(route, r["outcome"]).inc()
    if not r["cache_hit"]:
        metrics.LLM_BATCH.labels(route).observe(r["batch_size"])
        metrics.LLM_LATENCY.labels(route).observe(r["latency_ms"] / 1000)
        metrics.LLM_TOKENS.labels(route, "prompt").inc(r["prompt_tokens"])
        metrics.LLM_TOKENS.labels(route, "completion").inc(r["completion_tokens"])
        if r["attempts"] > 1:
            metrics.LLM_RETRIES.labels(route).inc(r["attempts"] - 1)
    return _kv(r["tenant"], r)


class _HeldPartition(StatelessSinkPartition[KV]):
    """A sink partition holding one `PyGILState_Ensure` of its worker thread until closed."""

    def __init__(self, inner: StatelessSinkPartition[KV], gil_state: int) -> None:
        self.inner = inner
        self._gil_state: int | None = gil_state

    def write_batch(self, items: list[KV]) -> None:
        self.inner.write_batch(items)

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            if self._gil_state is not None:
                ctypes.pythonapi.PyGILState_Release(ctypes.c_int(self._gil_state))
                self._gil_state = None


class HoldThreadState(DynamicSink[KV]):
    """`sink`, whose partitions keep their worker thread's Python thread state alive.

    Bytewax calls into Python from its worker threads with PyO3's `with_gil`, i.e.
    `PyGILState_Ensure`/`Release`. On a thread that Python did not create (every worker of a
    `-i/-a` cluster, and any worker beyond the first) nothing else holds a thread state, so
    each release dropped it and the next call made a new one: a `gettid` and an mmap/munmap
    of its frame stack (with the TLB shootdowns that brings) per operator activation, about
    157,000 of each over 100,000 events, which cost a two-process cluster about as much CPU
    as the events themselves (`bench/scale.py`). Bytewax builds every sink partition on its
    worker thread when the dataflow starts and closes it there when the dataflow ends, so
    one extra `PyGILState_Ensure` at `build`, released at `close`, keeps one thread state
    for the worker's whole run. On a thread Python created (the main thread of a single
    process) the extra count changes nothing. A run that aborts skips `close`; the thread
    state then lives until the interpreter exits, as a daemon thread's does.
    """

    def __init__(self, sink: DynamicSink[KV]) -> None:
        self.sink = sink

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _HeldPartition:
        part = self.sink.build(step_id, worker_index, worker_count)
        return _HeldPartition(part, ctypes.pythonapi.PyGILState_Ensure())


@operator
def publish_batches(
    step_id: str, up: Stream[X], to_kvs: Callable[[list[X]], list[KV]], sink: DynamicSink[KV]
) -> None:
    """Serialize batches of records with `to_kvs` and write them to `sink`.

    For serializers that work on a whole batch (counting, say), like `ledger_batch_kv`:

    >>> import bytewax.operators as op
    >>> from bytewax.dataflow import Dataflow
    >>> import json
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> entries = [LedgerEntry("m1", "acme", "chat", "s1", "chat_reply", "chat[0]@0"),
    ...            LedgerEntry("m1", "acme", "chat", "s1", "duplicate", "chat[0]@1")]
    >>> flow = Dataflow("ledger_eg")
    >>> out = []
    >>> up = op.input("in", flow, TestingSource(entries, batch_size=2))
    >>> publish_batches("out_ledger", up, ledger_batch_kv, TestingSink(out))
    >>> run_main(flow)
    >>> [(key, json.loads(value)["route"]) for key, value in out]
    [(b'acme/s1', 'chat_reply'), (b'acme/s1', 'duplicate')]
    """
    op.output("write", op.flat_map_batch("serialize", up, to_kvs), HoldThreadState(sink))


@operator
def publish(step_id: str, up: Stream[X], to_kv: Callable[[X], KV], sink: DynamicSink[KV]) -> None:
    """Serialize each record with `to_kv` and write it to `sink`.

    >>> import bytewax.operators as op
    >>> from bytewax.dataflow import Dataflow
    >>> import json
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> dead = DeadLetter("decode", "not valid JSON", "chat[0]@7", raw=b"{oops", tenant="acme")
    >>> flow = Dataflow("publish_eg")
    >>> out = []
    >>> publish("out_dead_letters", op.input("in", flow, TestingSource([dead])), dead_letter_kv,
    ...         TestingSink(out))
    >>> run_main(flow)
    >>> [(key, json.loads(value)["raw"]) for key, value in out]
    [(b'acme', '{oops')]
    """
    serialized = op.flat_map_batch("serialize", up, lambda batch: [to_kv(x) for x in batch])
    op.output("write", serialized, HoldThreadState(sink))
