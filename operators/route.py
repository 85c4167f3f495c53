"""Routing: pick the tasks for each event or alert from the configured rules.

Rules are tried in order; the first whose `kind`, `tenant` and `when` conditions all hold
wins, and its tasks (one or several) get the work. Task `none` means context only: the event
updates state (memory, detectors) and is recorded in the ledger, but no LLM call is made.
Events and alerts no rule matches also get `none`.

The rules are compiled once, when the `Router` is built: each condition becomes a closure
over its field's getter and its value (`compile_condition`), and the rules are grouped by the
kinds they can match, so a kind-only table costs one dict lookup per event. The config
(`config.models.RouteRule.problem`) has already refused unknown fields, ops, value types and
tasks at start, with the rule's position.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream

from config.models import ROUTE_KINDS, Condition, RouteRule
from core.clock import Clock
from core.records import Alert, Event, Kind, LedgerEntry, WorkItem
from operators.memory import Remembered

NONE = "none"

Getter = Callable[[Event], object]
AlertGetter = Callable[[Alert], object]
Test = Callable[[object], bool]
Rule = tuple[Callable[[Event], bool] | None, tuple[str, ...]]
AlertRule = tuple[Callable[[Alert], bool] | None, tuple[str, ...]]


def origin(source: str) -> str:
    """The origin part of source coordinates (`core.records.coords`): the topic, or
    `file:<path>`.

    >>> origin("shop.orders[3]@17"), origin("file:data/orders.jsonl:12")
    ('shop.orders', 'file:data/orders.jsonl')
    """
    if source.startswith("file:"):
        return source.rpartition(":")[0]
    cut = source.rfind("[")
    return source if cut < 0 else source[:cut]


def _payload_getter(path: str) -> Getter:
    """Reads `payload.<path>` (dotted) of an event; None when a step is absent or not a dict."""
    keys = tuple(path.split("."))
    if len(keys) == 1:
        (key,) = keys
        return lambda e: e.payload.get(key)

    def get(e: Event) -> object:
        v: object = e.payload
        for k in keys:
            if v.__class__ is not dict:
                return None
            v = v.get(k)
        return v

    return get


def _missing(_: object) -> object:
    return None


_EVENT_GETTERS: dict[str, Getter] = {
    "kind": lambda e: e.kind._value_,
    "tenant": lambda e: e.tenant,
    "entity": lambda e: e.entity,
    "source": lambda e: origin(e.source),
    "text": lambda e: e.payload.get("text") if e.kind is Kind.CHAT else None,
    "value": lambda e: e.payload.get("value") if e.kind is Kind.METRIC else None,
    "redactions": lambda e: e.redactions,
    "flags.prompt_injection": lambda e: "prompt_injection" in e.flags,
    "alert.score": _missing,
    "alert.detector": _missing,
    "alert.value": _missing,
}

_ALERT_GETTERS: dict[str, AlertGetter] = {
    "kind": lambda a: "alert",
    "tenant": lambda a: a.tenant,
    "entity": lambda a: a.entity,
    "source": lambda a: origin(a.source),
    "text": _missing,
    "value": _missing,
    "redactions": _missing,
    "flags.prompt_injection": _missing,
    "alert.score": lambda a: a.score,
    "alert.detector": lambda a: a.detector,
    "alert.value": lambda a: a.value,
}

_NUMBERS = (int, float)


def _equals(value: object) -> Test:
    """`== value` by type: numbers by value (1 == 1.0), booleans and strings only with their
    own type."""
    if value.__class__ is bool:
        return lambda v: v is value
    if value.__class__ in _NUMBERS:
        return lambda v: v.__class__ in _NUMBERS and v == value
    return lambda v: v.__class__ is str and v == value


def _member(values: tuple[object, ...]) -> Test:
    """`in values` with `_equals`'s typing."""
    strs = frozenset(v for v in values if v.__class__ is str)
    nums = frozenset(v for v in values if v.__class__ in _NUMBERS)
    bools = frozenset(v for v in values if v.__class__ is bool)

    def test(v: object) -> bool:
        cls = v.__class__
        if cls is str:
            return v in strs
        if cls in _NUMBERS:
            return v in nums
        return cls is bool and v in bools

    return test


def _contains(value: object) -> Test:
    """A substring of a string field, or an element (`_equals`) of a list field."""
    eq = _equals(value)

    def test(v: object) -> bool:
        if v.__class__ is str:
            return value.__class__ is str and value in v
        if isinstance(v, list | tuple):
            return any(eq(x) for x in v)
        return False

    return test


def compile_test(cond: Condition) -> Test:
    """The test of `cond` on a field's value (None: the field is absent). Never raises: a
    value of another type simply does not match."""
    o, value = cond.op, cond.value
    if o == "exists":
        return lambda v: v is not None
    if o == "missing":
        return lambda v: v is None
    if o in ("==", "!="):
        eq = _equals(value)
        return eq if o == "==" else (lambda v: not eq(v))
    if o in ("in", "not in"):
        assert isinstance(value, tuple)
        member = _member(value)
        return member if o == "in" else (lambda v: not member(v))
    if o == "contains":
        return _contains(value)
    bound: float = value  # type: ignore[assignment]  # a number: config checked it
    if o == "<":
        return lambda v: v.__class__ in _NUMBERS and v < bound
    if o == "<=":
        return lambda v: v.__class__ in _NUMBERS and v <= bound
    if o == ">":
        return lambda v: v.__class__ in _NUMBERS and v > bound
    if o == ">=":
        return lambda v: v.__class__ in _NUMBERS and v >= bound
    msg = f"unknown route op {o!r}"
    raise ValueError(msg)


def _all(tests: list[Callable[[object], bool]]) -> Callable[[object], bool] | None:
    """One predicate holding when all of `tests` hold (None: no tests, always true)."""
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        a, b = tests
        return lambda x: a(x) and b(x)
    every = tuple(tests)
    return lambda x: all(t(x) for t in every)


def compile_condition(cond: Condition, get: Callable[[object], object]) -> Callable[[object], bool]:
    """`cond` on the value `get` reads from an event or alert, as one closure. The common
    tests (presence, ordering, equality with a string) read and test in one call; the others
    apply `compile_test`'s test to the value."""
    o, value = cond.op, cond.value
    if o == "exists":
        return lambda x: get(x) is not None
    if o == "missing":
        return lambda x: get(x) is None
    if o == "==" and value.__class__ is str:
        # Only a str equals a str here: the getters give plain values (`kind` its value).
        return lambda x: get(x) == value
    if o in ("<", "<=", ">", ">="):
        bound: float = value  # type: ignore[assignment]  # a number: config checked it
        nums = _NUMBERS
        if o == "<":
            return lambda x: (v := get(x)).__class__ in nums and v < bound
        if o == "<=":
            return lambda x: (v := get(x)).__class__ in nums and v <= bound
        if o == ">":
            return lambda x: (v := get(x)).__class__ in nums and v > bound
        return lambda x: (v := get(x)).__class__ in nums and v >= bound
    test = compile_test(cond)
    return lambda x: test(get(x))


def compile_rule(rule: RouteRule, *, alerts: bool) -> Callable[[object], bool] | None:
    """`rule`'s tenant and `when` conditions as one predicate on an event (on an alert with
    `alerts`); None when the rule has neither (its kind decides alone)."""
    getters: dict[str, Callable[[object], object]] = (
        _ALERT_GETTERS if alerts else _EVENT_GETTERS  # type: ignore[assignment]
    )
    tests: list[Callable[[object], bool]] = []
    if rule.tenant is not None:
        tenant = rule.tenant
        tests.append(lambda x: x.tenant == tenant)  # type: ignore[attr-defined]
    for cond in rule.when:
        if cond.field.startswith("payload."):
            get = _missing if alerts else _payload_getter(cond.field[len("payload.") :])
        else:
            get = getters[cond.field]
        tests.append(compile_condition(cond, get))  # type: ignore[arg-type]
    return _all(tests)


R = TypeVar("R")


def _reachable(
    rules: list[tuple[R | None, tuple[str, ...]]],
) -> tuple[tuple[R | None, tuple[str, ...]], ...]:
    """`rules` up to the first that always matches (its predicate is None)."""
    for i, (test, _) in enumerate(rules):
        if test is None:
            return tuple(rules[: i + 1])
    return tuple(rules)


class Router:
    """Pure routing table compiled from config rules (first match wins).

    Raises ValueError naming the rule's position for a condition `Condition.problem`
    refuses (the config refuses these at load; this guards rules built in code).
    """

    def __init__(
        self,
        rules: Iterable[RouteRule],
        summary_task: str | None = None,
        tenant_tasks: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        """`tenant_tasks`: per tenant, the tasks it may use (`Settings.tenant_tasks`); a
        matched rule's other tasks are dropped for that tenant."""
        self.rules = tuple(rules)
        self.summary_task = summary_task
        self._allowed = dict(tenant_tasks or {})
        for i, rule in enumerate(self.rules):
            for j, cond in enumerate(rule.when):
                reason = cond.problem(rule.kind)
                if reason is not None:
                    msg = f"routes[{i}].when[{j}]: {reason}"
                    raise ValueError(msg)
        by_kind: dict[Kind, list[Rule]] = {k: [] for k in Kind}
        for_alerts: list[AlertRule] = []
        for rule in self.rules:
            kinds = ROUTE_KINDS if rule.kind is None else {rule.kind}
            tasks = rule.tasks
            for kind in Kind:
                if kind.value in kinds:
                    by_kind[kind].append((compile_rule(rule, alerts=False), tasks))
            if "alert" in kinds:
                for_alerts.append((compile_rule(rule, alerts=True), tasks))
        # Rules after one that always matches are never reached.
        self._by_kind = {k: _reachable(v) for k, v in by_kind.items()}
        self._alerts = _reachable(for_alerts)

    def tasks_for_event(self, event: Event) -> tuple[str, ...]:
        """The tasks of the first rule `event` matches; () (context only) when none does."""
        for test, tasks in self._by_kind[event.kind]:
            if test is None or test(event):
                return self._for_tenant(event.tenant, tasks)
        return ()

    def _for_tenant(self, tenant: str, tasks: tuple[str, ...]) -> tuple[str, ...]:
        allowed = self._allowed.get(tenant)
        if allowed is None or not tasks:
            return tasks
        return tuple(t for t in tasks if t in allowed)

    def tasks_for_alert(self, alert: Alert) -> tuple[str, ...]:
        """The tasks of the first rule `alert` matches; () when none does."""
        for test, tasks in self._alerts:
            if test is None or test(alert):
                return self._for_tenant(alert.tenant, tasks)
        return ()

    def may_route(self, kind: Kind) -> bool:
        """Whether some event of `kind` can go to a task (False: always context only)."""
        return any(tasks for _, tasks in self._by_kind[kind])

    def ledger(self, event: Event) -> LedgerEntry:
        """The ledger entry of `event`: its route is its tasks joined with `+`, or `none`."""
        tasks = self.tasks_for_event(event)
        return LedgerEntry(
            event_id=event.event_id,
            tenant=event.tenant,
            kind=event.kind.value,
            entity=event.entity,
            route="+".join(tasks) if tasks else NONE,
            source=event.source,
        )

    def work_for_event(self, rem: Remembered) -> list[WorkItem]:
        """The LLM work for an event with its memory (empty for task `none`): one item per
        task, the first with the event's id, each further one with `{event_id}/{task}` (so
        each has its own cache key and answer)."""
        e = rem.event
        work = [] if rem.fold is None else self.summary_work(rem)
        tasks = self.tasks_for_event(e)
        if not tasks:
            return work
        if e.kind is Kind.CHAT:
            data = {"text": e.payload["text"], "role": e.payload["role"]}
            profile_id = e.payload.get("user_id") or e.entity
        else:
            data = {"kind": e.kind.value, **e.payload}
            profile_id = e.entity
        memory = list(rem.memory)
        for n, task in enumerate(tasks):
            work.append(
                WorkItem(
                    item_id=e.event_id if n == 0 else f"{e.event_id}/{task}",
                    event_ids=(e.event_id,),
                    tenant=e.tenant,
                    entity=e.entity,
                    profile_id=profile_id,
                    task=task,
                    source=e.source,
                    data=data,
                    context={"memory": memory},
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
        """The LLM work for `alert` (empty for `none`), one item per task as for events."""
        tasks = self.tasks_for_alert(alert)
        if not tasks:
            return []
        data = {
            "detector": alert.detector,
            "message": alert.message,
            "value": alert.value,
            "baseline": alert.baseline,
            "score": alert.score,
            "threshold": alert.threshold,
            "window": alert.window,
            "change": alert.change,
        }
        return [
            WorkItem(
                item_id=alert.alert_id if n == 0 else f"{alert.alert_id}/{task}",
                event_ids=alert.event_ids,
                tenant=alert.tenant,
                entity=alert.entity,
                profile_id=alert.entity,
                task=task,
                source=alert.source,
                data=data,
                context={},
                ingest_ts=now,
            )
            for n, task in enumerate(tasks)
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
