"""Erasure: requests in, dead letters for invalid ones, an audit record when each is done.

The stores of a process (profiles, knowledge, response cache) apply a request through the
process's erasure table (`connectors.reference.ErasureTable`); the memory step applies it to
the memory of the subject's key (`operators.memory.remember_erasing`). `complete_erasures`
comes after both: it records the completion once per request in the erasure table and
emits one `erasure_completed` activity record per request it sees, with the same
`activity_id` (and the same counts and times) when a replay or a restart sees it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream

from core.activity import activity_record
from core.clock import Clock
from core.records import Audit, DeadLetter, RawRecord, coords
from operators.memory import ErasureApplied
from runtime.metrics import ERASURE_SECONDS
from state.erasure import ErasureRequest, ErasureStore, parse_erasure


@dataclass(frozen=True)
class ErasuresIn:
    """`oks`: valid requests; `errs`: the invalid ones as dead letters."""

    oks: Stream[ErasureRequest]
    errs: Stream[DeadLetter]


def _parsed(raw: RawRecord) -> ErasureRequest | DeadLetter:
    parsed = parse_erasure(raw)
    if isinstance(parsed, ErasureRequest):
        return parsed
    return DeadLetter(
        step_id="erasures_in",
        reason=parsed,
        source=coords(raw.origin, raw.partition, raw.offset),
        raw=raw.value,
    )


def _is_request(value: ErasureRequest | DeadLetter) -> bool:
    return isinstance(value, ErasureRequest)


@operator
def parse_erasures(step_id: str, up: Stream[RawRecord]) -> ErasuresIn:
    """Validate erasure requests (`state.erasure.parse_erasure`); never raises.

    >>> import bytewax.operators as op
    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> good = RawRecord("file:e.jsonl", 0, 1, None,
    ...                  b'{"request_id": "r1", "tenant": "acme", "subject": "u1"}', "")
    >>> bad = RawRecord("file:e.jsonl", 0, 2, None, b'{"request_id": "r2"}', "")
    >>> flow = Dataflow("erasures_eg")
    >>> out = parse_erasures("erasures", op.input("in", flow, TestingSource([good, bad])))
    >>> oks, errs = [], []
    >>> op.output("oks", out.oks, TestingSink(oks))
    >>> op.output("errs", out.errs, TestingSink(errs))
    >>> run_main(flow)
    >>> [r.request_id for r in oks], [(d.source, d.reason) for d in errs]
    (['r1'], [('file:e.jsonl:2', 'erasure request needs a non-empty string `tenant`')])
    """
    parsed = op.map("parse", up, _parsed)
    split = op.branch("split", parsed, _is_request)
    return ErasuresIn(split.trues, split.falses)  # type: ignore[arg-type]


class Completion:
    """Turns requests that passed the memory step into `erasure_completed` records."""

    def __init__(self, store: Callable[[], ErasureStore], clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def record(self, applied: ErasureApplied) -> Audit:
        req = applied.request
        rec, first = self.store().complete(
            req.request_id, {"memory_turns": applied.turns}, self.clock()
        )
        latency = max(0.0, rec["completed_at"] - rec["received_at"])
        if first:
            ERASURE_SECONDS.observe(latency)
        return activity_record(
            "erasure_completed",
            about=(req.request_id,),
            tenant=rec["tenant"],
            at=rec["completed_at"],
            request_id=req.request_id,
            subject=rec["subject"],
            requested_at=req.requested_at,
            cutoff=rec["cutoff"],
            received_at=round(rec["received_at"], 3),
            completed_at=round(rec["completed_at"], 3),
            latency_s=round(latency, 6),
            removed=dict(sorted(rec["removed"].items())),
            source=f"{req.source}@{req.offset}",
            repeat=not first,
        )


@operator
def complete_erasures(
    step_id: str,
    up: KeyedStream[ErasureApplied],
    store: Callable[[], ErasureStore],
    clock: Clock = time.time,
) -> Stream[Audit]:
    """One `erasure_completed` activity record per request that passed the memory step
    (the stores of this process applied it before: the memory step applies it to the
    table first). `store` returns this process's erasure table; the completion is recorded
    there the first time, so a replayed request emits the same record with `repeat` true.
    Stateless (the record is in the store, which is not rewound)."""
    return op.map("record", op.map("value", up, lambda kv: kv[1]), Completion(store, clock).record)
