"""Unit tests of `operators.route.Router` and the `[[llm.routes]]` config: the routing table
semantics (fields, ops, presence, flags, alert score, first match, several tasks, `none`,
tenant and kind), the work items of a multi-task route, and the refusals at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from config.models import (
    ROUTE_FIELDS,
    ROUTE_OPS,
    Condition,
    ConfigError,
    LLMConfig,
    RouteRule,
    load_config,
)
from core.records import Alert, Event, Kind
from operators.memory import Remembered
from operators.route import Router

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
MINIMAL = '[input]\nsources = [{ name = "s", path = "in.jsonl" }]\n'
TASKS = ("fraud_check", "triage", "guard", "vip_reply", "metric_watch", "page")


def _llm(routes: list[dict[str, Any]]) -> LLMConfig:
    """An `LLMConfig` with the default tasks, `TASKS`, and `routes` (as TOML would give them)."""
    tasks = [t.model_dump() for t in LLMConfig().tasks]
    tasks += [{"name": n, "schema_name": "anomaly_explanation"} for n in TASKS]
    return LLMConfig.model_validate({"tasks": tasks, "routes": routes})


def _when(*conds: tuple[str, str] | tuple[str, str, Any]) -> list[dict[str, Any]]:
    return [dict(zip(("field", "op", "value"), c, strict=False)) for c in conds]


def chat(
    text: str = "hello",
    *,
    tenant: str = "acme",
    redactions: int = 0,
    flags: tuple[str, ...] = (),
    source: str = "chat.in[0]@1",
) -> Event:
    payload = {"text": text, "role": "user", "user_id": "u1", "channel": None}
    return Event("c1", source, tenant, Kind.CHAT, "s1", 0.0, payload, 0.0, redactions, flags)


def biz(
    event_type: str = "order_placed",
    amount: object = 10.0,
    currency: str | None = "EUR",
    *,
    tenant: str = "acme",
    source: str = "shop.orders[2]@7",
    **extra: Any,
) -> Event:
    payload = {
        "event_type": event_type,
        "amount": amount,
        "currency": currency,
        "attributes": extra.pop("attributes", {}),
        **extra,
    }
    return Event("b1", source, tenant, Kind.BUSINESS, "acct-1", 0.0, payload, 0.0)


def metric(series: str, value: float, *, tenant: str = "acme") -> Event:
    payload: dict[str, Any] = {"value": value, "unit": None, "tags": {}}
    return Event("m1", "metrics[0]@3", tenant, Kind.METRIC, series, 0.0, payload, 0.0)


def alert(score: float, detector: str = "ensemble", value: float = 10.0, tenant: str = "acme"):
    return Alert(
        "a1", detector, tenant, "cpu", 0.0, score, value, 1.0, 5.0, {}, ("m1",), "metrics[0]@3", ""
    )


TABLE_ROUTES: list[dict[str, Any]] = [
    # kind-free rules see every event and alert
    {"when": _when(("tenant", "==", "sandbox")), "task": "none"},
    {
        "when": _when(("kind", "in", ["chat", "business"]), ("source", "==", "audit")),
        "task": "triage",
    },
    # chat
    {"kind": "chat", "when": _when(("flags.prompt_injection", "==", True)), "task": "guard"},
    {"kind": "chat", "when": _when(("text", "contains", "refund")), "task": ["triage"]},
    {"kind": "chat", "when": _when(("redactions", ">=", 2)), "task": "guard"},
    {"kind": "chat", "tenant": "globex", "task": "vip_reply"},
    {"kind": "chat", "task": "chat_reply"},
    # business
    {
        "kind": "business",
        "when": _when(("payload.event_type", "==", "refund"), ("payload.amount", ">", 500)),
        "task": ["fraud_check", "triage"],
    },
    {
        "kind": "business",
        "when": _when(("payload.event_type", "in", ["refund", "chargeback"])),
        "task": "triage",
    },
    {"kind": "business", "when": _when(("payload.amount", "<", 0)), "task": "triage"},
    {"kind": "business", "when": _when(("payload.currency", "missing")), "task": "none"},
    {
        "kind": "business",
        "when": _when(("payload.currency", "not in", ["EUR", "USD"])),
        "task": "fraud_check",
    },
    {"kind": "business", "when": _when(("payload.attributes.vip", "exists")), "task": "vip_reply"},
    {"kind": "business", "when": _when(("payload.labels", "contains", "urgent")), "task": "triage"},
    {"kind": "business", "tenant": "globex", "task": "vip_reply"},
    {"kind": "business", "task": "none"},
    # metric (no catch-all rule: unmatched metrics are context only)
    {
        "kind": "metric",
        "when": _when(("entity", "==", "cpu"), ("value", ">", 90)),
        "task": "metric_watch",
    },
    {"kind": "metric", "when": _when(("value", "<=", 0)), "task": "metric_watch"},
    # alerts
    {"kind": "alert", "when": _when(("alert.score", ">=", 8)), "task": ["explain_anomaly", "page"]},
    {"kind": "alert", "when": _when(("alert.detector", "!=", "ewma")), "task": "explain_anomaly"},
    {"kind": "alert", "when": _when(("alert.value", ">", 1000)), "task": "page"},
]

TABLE: list[tuple[str, Event | Alert, tuple[str, ...]]] = [
    ("kind-free rule: sandbox chat", chat(tenant="sandbox"), ()),
    ("kind-free rule: sandbox alert", alert(9.0, tenant="sandbox"), ()),
    ("kind in + source (origin)", biz(source="audit[0]@1"), ("triage",)),
    ("source is the topic, not a prefix", biz(source="audit.x[0]@1"), ()),
    ("injection flag first", chat("refund now", flags=("prompt_injection",)), ("guard",)),
    ("contains substring", chat("I want a refund"), ("triage",)),
    ("contains is case-sensitive", chat("REFUND"), ("chat_reply",)),
    ("redactions >=", chat(redactions=2), ("guard",)),
    ("redactions below", chat(redactions=1), ("chat_reply",)),
    ("tenant rule", chat(tenant="globex"), ("vip_reply",)),
    ("kind catch-all", chat(), ("chat_reply",)),
    ("== and > : several tasks", biz("refund", 900.0), ("fraud_check", "triage")),
    ("> is strict, next rule (in)", biz("refund", 500), ("triage",)),
    ("> on a missing amount is false", biz("refund", None), ("triage",)),
    ("in", biz("chargeback", 50.0), ("triage",)),
    ("<", biz(amount=-5.0), ("triage",)),
    ("< on a string amount is false", biz(amount="-5"), ()),
    ("missing (null) -> none", biz(currency=None), ()),
    ("not in", biz(currency="GBP"), ("fraud_check",)),
    ("exists on a nested path", biz(attributes={"vip": True}), ("vip_reply",)),
    ("exists: null is missing", biz(attributes={"vip": None}), ()),
    ("contains an element of a list", biz(labels=["new", "urgent"]), ("triage",)),
    ("contains on a list, no such element", biz(labels=["new"]), ()),
    ("business tenant rule", biz(tenant="globex"), ("vip_reply",)),
    ("business catch-all none", biz(), ()),
    ("metric == and >", metric("cpu", 95.0), ("metric_watch",)),
    ("metric below", metric("cpu", 50.0), ()),
    ("metric other entity", metric("mem", 95.0), ()),
    ("metric <= inclusive", metric("mem", 0.0), ("metric_watch",)),
    ("alert score >= inclusive", alert(8.0, "ewma"), ("explain_anomaly", "page")),
    ("alert !=", alert(3.0, "ensemble"), ("explain_anomaly",)),
    ("alert value", alert(3.0, "ewma", value=5000.0), ("page",)),
    ("alert no rule matches", alert(3.0, "ewma"), ()),
]


@pytest.fixture(scope="module")
def table_router() -> Router:
    return Router(_llm(TABLE_ROUTES).routes)


@pytest.mark.parametrize(("case", "item", "expected"), TABLE, ids=[c for c, _, _ in TABLE])
def test_routing_table(
    table_router: Router, case: str, item: Event | Alert, expected: tuple[str, ...]
) -> None:
    if isinstance(item, Alert):
        assert table_router.tasks_for_alert(item) == expected, case
    else:
        assert table_router.tasks_for_event(item) == expected, case


def test_the_table_exercises_every_op_and_field() -> None:
    rules = _llm(TABLE_ROUTES).routes
    ops = {c.op for r in rules for c in r.when}
    fields = {c.field for r in rules for c in r.when}
    assert ops == set(ROUTE_OPS)
    assert set(ROUTE_FIELDS) <= fields
    assert any(f.startswith("payload.") for f in fields)


def test_default_routes_keep_the_kind_table() -> None:
    router = Router(load_config(CONFIG_DIR / "local.toml").llm.routes)
    assert router.tasks_for_event(chat()) == ("chat_reply",)
    assert router.tasks_for_event(chat(tenant="globex")) == ("chat_reply",)
    assert router.tasks_for_alert(alert(1.0)) == ("explain_anomaly",)
    assert router.tasks_for_event(metric("cpu", 99.0)) == ()
    assert router.tasks_for_event(biz("refund", 900.0)) == ()
    assert router.ledger(chat()).route == "chat_reply"
    assert router.ledger(biz()).route == "none"
    assert not router.may_route(Kind.METRIC) and router.may_route(Kind.CHAT)


def test_kind_without_rule_is_none_and_first_match_wins() -> None:
    router = Router(
        [
            RouteRule(kind="chat", task="chat_reply"),
            RouteRule(kind="chat", task="premium_reply", tenant="acme"),
        ]
    )
    assert router.tasks_for_event(chat()) == ("chat_reply",)
    assert router.tasks_for_alert(alert(9.0)) == ()
    assert router.tasks_for_event(biz()) == ()


def test_tenant_specific_rules() -> None:
    router = Router(
        [
            RouteRule(kind="chat", task="premium_reply", tenant="acme"),
            RouteRule(kind="chat", task="chat_reply"),
            RouteRule(kind="business", task="review", tenant="globex"),
        ]
    )
    assert router.tasks_for_event(chat()) == ("premium_reply",)
    assert router.tasks_for_event(chat(tenant="globex")) == ("chat_reply",)
    assert router.tasks_for_event(biz(tenant="globex")) == ("review",)
    assert router.tasks_for_event(biz()) == ()  # no rule for acme's business events


def test_equality_is_by_type() -> None:
    def route(value: Any, event: Event) -> tuple[str, ...]:
        rule = RouteRule(when=(Condition(field="payload.x", op="==", value=value),), task="t")
        return Router([rule]).tasks_for_event(event)

    assert route(1, biz(x=1.0)) == ("t",)
    assert route(1, biz(x=True)) == ()
    assert route(True, biz(x=1)) == ()
    assert route("1", biz(x=1)) == ()
    assert route(True, biz(x=True)) == ("t",)


def test_several_tasks_give_one_work_item_each() -> None:
    router = Router(_llm(TABLE_ROUTES).routes)
    refund = biz("refund", 900.0)
    work = router.work_for_event(Remembered(refund, ({"role": "user", "text": "hi"},)))
    assert [(w.item_id, w.task, w.event_ids) for w in work] == [
        ("b1", "fraud_check", ("b1",)),
        ("b1/triage", "triage", ("b1",)),
    ]
    assert all(w.data["amount"] == 900.0 and len(w.context["memory"]) == 1 for w in work)
    assert work[0].context is not work[1].context
    assert router.ledger(refund).route == "fraud_check+triage"
    alerts = router.work_for_alert(alert(9.0), now=5.0)
    assert [(w.item_id, w.task) for w in alerts] == [("a1", "explain_anomaly"), ("a1/page", "page")]
    assert router.work_for_event(Remembered(biz(), ())) == []
    assert router.ledger(biz()).route == "none"


# --- refused at start ------------------------------------------------------------------------

TASKS_TOML = "".join(
    f'[[llm.tasks]]\nname = "{n}"\nschema_name = "chat_reply"\n' for n in ("chat_reply", *TASKS)
)


def _load(tmp_path: Path, routes: str) -> str:
    path = tmp_path / "deploy.toml"
    path.write_text(MINIMAL + TASKS_TOML + routes, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


OK_RULE = '[[llm.routes]]\nkind = "chat"\ntask = "chat_reply"\n'

REFUSED_CONDITIONS = [
    ('field = "payload", op = "==", value = 1', "unknown field 'payload'"),
    ('field = "amount", op = "==", value = 1', "unknown field 'amount'"),
    ('field = "payload.a..b", op = "exists"', "unknown field 'payload.a..b'"),
    ('field = "tenant", op = "=~", value = "a"', "unknown op '=~'"),
    ('field = "payload.t", op = "in", value = "refund"', "op 'in' needs a non-empty list"),
    ('field = "payload.t", op = "not in", value = []', "op 'not in' needs a non-empty list"),
    ('field = "payload.amount", op = "<", value = "500"', "op '<' needs a number"),
    ('field = "payload.amount", op = ">", value = [1, 2]', "op '>' needs a single value"),
    ('field = "payload.amount", op = "exists", value = 1', "op 'exists' takes no value"),
    ('field = "payload.amount", op = "=="', "op '==' needs a value"),
    ('field = "tenant", op = "==", value = 3', "value 3 does not fit str field 'tenant'"),
    ('field = "tenant", op = "in", value = ["a", 3]', "value 3 does not fit str field"),
    ('field = "kind", op = "==", value = "chats"', "value 'chats' does not fit kind field"),
    ('field = "tenant", op = ">", value = 3', "op '>' does not apply to str field 'tenant'"),
    ('field = "redactions", op = "contains", value = 1', "op 'contains' does not apply to number"),
    ('field = "flags.prompt_injection", op = "==", value = "y"', "value 'y' does not fit bool"),
    ('field = "payload.amount", op = ">", value = nan', "values must be finite numbers"),
    ('field = "payload.amount", op = "in", value = [1, inf]', "values must be finite numbers"),
]


@pytest.mark.parametrize(
    ("cond", "reason"), REFUSED_CONDITIONS, ids=[r for _, r in REFUSED_CONDITIONS]
)
def test_bad_conditions_are_refused_with_their_position(tmp_path: Path, cond: str, reason: str):
    rule = f'[[llm.routes]]\nwhen = [{{ {cond} }}]\ntask = "triage"\n'
    assert f"llm.routes[1].when[0]: {reason}" in _load(tmp_path, OK_RULE + rule)


REFUSED_RULES = [
    ('kind = "business"\nwhen = [{ field = "alert.score", op = ">", value = 5 }]\ntask = "t"',
     ".when[0]: field 'alert.score' is never set on business events"),
    ('kind = "alert"\nwhen = [{ field = "text", op = "exists" }]\ntask = "triage"',
     ".when[0]: field 'text' is never set on alert events"),
    ('when = [{ field = "tenant", op = "exists" }, { field = "x", op = "exists" }]\ntask = "t"',
     ".when[1]: unknown field 'x'"),
    ('tenant = "acme"\ntask = "triage"', ": needs a `kind` or `when`"),
    ('kind = "chat"\ntask = "fraud"', ".task: names unknown task 'fraud'"),
    ('kind = "chat"\ntask = ["triage", "fraud"]', ".task: names unknown task 'fraud'"),
    ('kind = "chat"\ntask = ["triage", "none"]', '.task: "none" cannot be listed'),
    ('kind = "chat"\ntask = ["triage", "triage"]', ".task: a task is listed twice"),
    ('kind = "chat"\ntask = []', ".task: the list is empty"),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "reason"), REFUSED_RULES, ids=[r for _, r in REFUSED_RULES])
def test_bad_rules_are_refused_with_their_position(tmp_path: Path, rule: str, reason: str):
    assert f"llm.routes[1]{reason}" in _load(tmp_path, OK_RULE + "[[llm.routes]]\n" + rule + "\n")


def test_unknown_condition_key_is_refused_with_its_path(tmp_path: Path) -> None:
    rule = '[[llm.routes]]\nkind = "chat"\ntask = "triage"\n'
    rule += 'when = [{ field = "tenant", op = "exists", vlaue = 1 }]\n'
    assert "llm.routes.0.when.0.vlaue" in _load(tmp_path, rule)


def test_router_refuses_a_bad_rule_built_in_code() -> None:
    rules = [
        RouteRule(kind="chat", task="chat_reply"),
        RouteRule(kind="chat", when=(Condition(field="payload.n", op="<", value="x"),), task="t"),
    ]
    with pytest.raises(ValueError, match=r"routes\[1\]\.when\[0\]: op '<' needs a number"):
        Router(rules)


def test_the_readme_example_routes_as_it_says(tmp_path: Path) -> None:
    """The TOML of README's "Routing on conditions", loaded as a deployment file."""
    readme = (CONFIG_DIR.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Routing on conditions", 1)[1]
    routes = section.split("```toml\n", 1)[1].split("```", 1)[0]
    tasks = TASKS_TOML + '[[llm.tasks]]\nname = "page_oncall"\nschema_name = "chat_reply"\n'
    tasks += '[[llm.tasks]]\nname = "explain_anomaly"\nschema_name = "anomaly_explanation"\n'
    path = tmp_path / "deploy.toml"
    path.write_text(MINIMAL + tasks + routes, encoding="utf-8")
    rules = load_config(path).llm.routes
    assert rules[1].when[1] == Condition(field="payload.amount", op=">", value=500)
    router = Router(rules)
    assert router.tasks_for_event(chat("refund?", flags=("prompt_injection",))) == ()
    assert router.tasks_for_event(chat("refund?")) == ("chat_reply",)
    assert router.tasks_for_event(biz("refund", 900.0)) == ("fraud_check", "triage")
    assert router.ledger(biz("refund", 900.0)).route == "fraud_check+triage"
    assert router.tasks_for_event(biz("refund", 500)) == ("triage",)
    assert router.tasks_for_event(biz("chargeback", 900.0)) == ("triage",)
    assert router.tasks_for_event(biz("order_placed", 900.0)) == ()
    assert router.tasks_for_alert(alert(9.5)) == ("explain_anomaly", "page_oncall")
    assert router.tasks_for_alert(alert(2.0)) == ("explain_anomaly",)


def test_condition_values_keep_their_toml_types() -> None:
    with pytest.raises(ValidationError):
        Condition.model_validate({"field": "tenant", "op": "in", "value": [{"a": 1}]})
    cond = Condition(field="payload.n", op="in", value=[1, 2.5, True, "x"])  # type: ignore[arg-type]
    assert cond.value == (1, 2.5, True, "x")
    assert [v.__class__ for v in cond.value] == [int, float, bool, str]
