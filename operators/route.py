"""Routing: pick the task for each event or alert from the configured rules.

Rules are tried in order; the first whose `kind` (and `tenant`, if set) matches wins. Task
`none` means context only: the event updates state (memory, detectors) and is recorded in the
ledger, but no LLM call is made. Kinds without a rule also get `none`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream

from config.models import RouteRule
from core.clock import Clock
from core.records import Alert, Event, Kind, LedgerEntry, WorkItem
from operators.memory import Remembered

NONE = "none"


class Router:
    """Pure routing table built from config rules."""

    def __init__(self, rules: Iterable[RouteRule], summary_task: str | None = None) -> None:
        self.rules = tuple(rules)
        self.summary_task = summary_task
        self._default: dict[str, str] = {}
        for rule in self.rules:
            if rule.tenant is None:
                self._default.setdefault(rule.kind, rule.task)
        self._has_tenant_rules = any(r.tenant is not None for r in self.rules)

    def task_for(self, kind: str, tenant: str) -> str:
        if self._has_tenant_rules:
            for rule in self.rules:
                if rule.kind == kind and (rule.tenant is None or rule.tenant == tenant):
                    return rule.task
            return NONE
        return self._default.get(kind, NONE)

    def ledger(self, event: Event) -> LedgerEntry:
        return LedgerEntry(
            event_id=event.event_id,
            tenant=event.tenant,
            kind=event.kind.value,
            entity=event.entity,
            route=self.task_for(event.kind, event.tenant),
            source=event.source,
        )

    def work_for_event(self, rem: Remembered) -> list[WorkItem]:
        """The LLM work for an event with its memory (empty for task `none`)."""
        e = rem.event
        work = [] if rem.fold is None else self.summary_work(rem)
        task = self.task_for(e.kind, e.tenant)
        if task == NONE:
            return work
        if e.kind is Kind.CHAT:
            data = {"text": e.payload["text"], "role": e.payload["role"]}
            profile_id = e.payload.get("user_id") or e.entity
        else:
            data = {"kind": e.kind.value, **e.payload}
            profile_id = e.entity
        work.append(
            WorkItem(
                item_id=e.event_id,
                event_ids=(e.event_id,),
                tenant=e.tenant,
                entity=e.entity,
                profile_id=profile_id,
                task=task,
                source=e.source,
                data=data,
                context={"memory": list(rem.memory)},
                ingest_ts=e.ingest_ts,
                redactions=e.redactions,
                flags=e.flags,
            )
        )
        return work

    def summary_work(self, rem: Remembered) -> list[WorkItem]:
        """The summarize work for the turns `rem`'s event folded out of its memory (none
        without a summary task). It answers no input event (`event_ids` is empty); its id
        is the folding event's, so a replay asks for the same item and hits the cache."""
        fold = rem.fold
        if fold is None or self.summary_task is None:
            return []
        e = rem.event
        return [
            WorkItem(
                item_id=f"{e.event_id}#summary",
                event_ids=(),
                tenant=e.tenant,
                entity=e.entity,
                profile_id=e.entity,
                task=self.summary_task,
                source=e.source,
                data={"turns": list(fold.turns), "fold": fold.seq},
                context={},
                ingest_ts=e.ingest_ts,
            )
        ]

    def work_for_alert(self, alert: Alert, now: float) -> list[WorkItem]:
        task = self.task_for("alert", alert.tenant)
        if task == NONE:
            return []
        return [
            WorkItem(
                item_id=alert.alert_id,
                event_ids=alert.event_ids,
                tenant=alert.tenant,
                entity=alert.entity,
                profile_id=alert.entity,
                task=task,
                source=alert.source,
                data={
                    "detector": alert.detector,
                    "message": alert.message,
                    "value": alert.value,
                    "baseline": alert.baseline,
                    "score": alert.score,
                    "threshold": alert.threshold,
                    "window": alert.window,
                },
                context={},
                ingest_ts=now,
            )
        ]


@operator
def route(
    step_id: str,
    events: KeyedStream[Remembered],
    alerts: Stream[Alert],
    router: Router,
    clock: Clock = time.time,
) -> Stream[WorkItem]:
    """The LLM work for events (with their memory) and alerts, by `router`'s rules.

    Stateless; an event or alert whose task is `none` yields nothing. `clock` (epoch
    seconds) stamps an alert's work item with its `ingest_ts`.

    >>> import bytewax.operators as op
    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> from config.models import RouteRule
    >>> from core.records import Event, Kind
    >>> def chat(event_id):
    ...     return Event(event_id, "chat[0]@0", "acme", Kind.CHAT, "s1", 0.0,
    ...                  {"text": "hi", "role": "user", "user_id": "u1"}, 0.0)
    >>> remembered = [("acme/s1", Remembered(chat("m1"), ())),
    ...               ("acme/s1", Remembered(chat("m2"), ({"role": "user", "text": "hi"},)))]
    >>> flow = Dataflow("route_eg")
    >>> events = op.input("events", flow, TestingSource(remembered))
    >>> alerts = op.input("alerts", flow, TestingSource([]))
    >>> router = Router([RouteRule(kind="chat", task="chat_reply")])
    >>> out = []
    >>> op.output("out", route("route", events, alerts, router), TestingSink(out))
    >>> run_main(flow)
    >>> [(w.item_id, w.task, w.profile_id, len(w.context["memory"])) for w in out]
    [('m1', 'chat_reply', 'u1', 0), ('m2', 'chat_reply', 'u1', 1)]
    """
    from_events = op.flat_map("event_work", events, lambda kv: router.work_for_event(kv[1]))
    from_alerts = op.flat_map("alert_work", alerts, lambda a: router.work_for_alert(a, clock()))
    return op.merge("work", from_events, from_alerts)
