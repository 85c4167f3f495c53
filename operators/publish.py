"""Serialize output records to `(key, JSON bytes)` pairs, count them, and write them to a sink.

Every output record carries the ids of the events it answers (`event_id`, `event_ids` or
`item_id`), so consumers can drop the duplicates that at-least-once delivery allows after a
recovery. Output keys are `tenant/entity`, so one entity's records stay in one partition.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.outputs import DynamicSink

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
    op.output("write", op.flat_map_batch("serialize", up, to_kvs), sink)


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
    op.output("write", serialized, sink)
