"""Routing: pick the task for each event or alert from the configured rules.

Rules are tried in order; the first whose `kind` (and `tenant`, if set) matches wins. Task
`none` means context only: the event updates state (memory, detectors) and is recorded in the
ledger, but no LLM call is made. Kinds without a rule also get `none`.
"""

from __future__ import annotations

from collections.abc import Iterable

from config.models import RouteRule
from core.records import Alert, Event, Kind, LedgerEntry, WorkItem
from operators.memory import Remembered

NONE = "none"


class Router:
    """Pure routing table built from config rules."""

    def __init__(self, rules: Iterable[RouteRule]) -> None:
        self.rules = tuple(rules)
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
        task = self.task_for(e.kind, e.tenant)
        if task == NONE:
            return []
        if e.kind is Kind.CHAT:
            data = {"text": e.payload["text"], "role": e.payload["role"]}
            profile_id = e.payload.get("user_id") or e.entity
        else:
            data = {"kind": e.kind.value, **e.payload}
            profile_id = e.entity
        return [
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
