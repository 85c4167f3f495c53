"""Cost of routing an event: conditional rules against the kind-only table, in one process.

    python -m bench.routing [--events 200000] [--quick]

A seeded mix of events (half chat, 30 % business, 20 % metric readings, a few per cent with
the `prompt_injection` flag, refunds of random amounts, some of a `sandbox` tenant) is routed
by three routers, each timed as the mean µs per `Router.tasks_for_event` call (the best of 5
rounds: the cores may be shared):

- `kind`: the default table (`LLMConfig().routes`, one rule per kind): the baseline;
- `conditional`: the default table behind 7 conditional rules (`RULES`: a kind-free tenant
  test, a flag, a substring, two tests on payload fields with two tasks, a membership test on
  a nested payload field, a metric threshold, an alert score), compiled by `Router`;
- `handwritten`: the same rules as a plain `if` chain (`handwritten`), the least a router
  can cost in Python; it is also the reference the compiled rules are checked against.

Correctness (checked by the short test): `mismatches`, events (and alerts) the compiled
conditional rules route differently from the `if` chain; `kind_mismatches`, events the kind
table routes differently from the kind's default; `routes`, how many events took each route.

The last line is one JSON object: `events`, `kind_us`, `conditional_us`, `handwritten_us`,
`ratio` (conditional / kind), `mismatches`, `kind_mismatches`, `alerts`, `routes`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from config.models import LLMConfig, RouteRule
from core.records import Alert, Event, Kind
from operators.route import Router

TASKS = ("fraud_check", "triage", "guard", "metric_watch", "page")

RULES: list[dict[str, Any]] = [
    {"when": [{"field": "tenant", "op": "==", "value": "sandbox"}], "task": "none"},
    {
        "kind": "chat",
        "when": [{"field": "flags.prompt_injection", "op": "==", "value": True}],
        "task": "guard",
    },
    {
        "kind": "chat",
        "when": [{"field": "text", "op": "contains", "value": "refund"}],
        "task": "triage",
    },
    {
        "kind": "business",
        "when": [
            {"field": "payload.event_type", "op": "==", "value": "refund"},
            {"field": "payload.amount", "op": ">", "value": 500},
        ],
        "task": ["fraud_check", "triage"],
    },
    {
        "kind": "business",
        "when": [{"field": "payload.attributes.region", "op": "in", "value": ["br", "ng", "in"]}],
        "task": "fraud_check",
    },
    {
        "kind": "metric",
        "when": [{"field": "value", "op": ">", "value": 90}],
        "task": "metric_watch",
    },
    {
        "kind": "alert",
        "when": [{"field": "alert.score", "op": ">=", "value": 8}],
        "task": ["explain_anomaly", "page"],
    },
]
"""The conditional rules, as `[[llm.routes]]` would give them; the default table follows."""

DEFAULT_TASK = {Kind.CHAT: ("chat_reply",), Kind.METRIC: (), Kind.BUSINESS: ()}


def conditional_config() -> LLMConfig:
    """`RULES` then the default table, validated as a config file's would be."""
    tasks = [t.model_dump() for t in LLMConfig().tasks]
    tasks += [{"name": n, "schema_name": "anomaly_explanation"} for n in TASKS]
    defaults = [r.model_dump() for r in LLMConfig().routes]
    return LLMConfig.model_validate({"tasks": tasks, "routes": [*RULES, *defaults]})


def handwritten(e: Event) -> tuple[str, ...]:
    """`RULES` and the default table as an `if` chain (the reference for events)."""
    if e.tenant == "sandbox":
        return ()
    p = e.payload
    if e.kind is Kind.CHAT:
        if "prompt_injection" in e.flags:
            return ("guard",)
        if "refund" in p["text"]:
            return ("triage",)
        return ("chat_reply",)
    if e.kind is Kind.BUSINESS:
        amount = p.get("amount")
        if p.get("event_type") == "refund" and isinstance(amount, float) and amount > 500:
            return ("fraud_check", "triage")
        if p.get("attributes", {}).get("region") in ("br", "ng", "in"):
            return ("fraud_check",)
        return ()
    value = p.get("value")
    return ("metric_watch",) if isinstance(value, float) and value > 90 else ()


def handwritten_alert(a: Alert) -> tuple[str, ...]:
    """`RULES` and the default table for alerts."""
    if a.tenant == "sandbox":
        return ()
    return ("explain_anomaly", "page") if a.score >= 8 else ("explain_anomaly",)


def events(n: int, seed: int = 11) -> list[Event]:
    """A seeded mix of chat, business and metric events (see the module docstring)."""
    rng = random.Random(seed)
    texts = ("Hello!", "Where is my order?", "I want a refund for order 1234", "Thanks")
    regions = ("de", "fr", "br", "us", "in", "jp")
    out: list[Event] = []
    for i in range(n):
        tenant = "sandbox" if rng.random() < 0.05 else rng.choice(("acme", "globex"))
        r = rng.random()
        if r < 0.5:
            flags = ("prompt_injection",) if rng.random() < 0.03 else ()
            payload: dict[str, Any] = {
                "text": rng.choice(texts), "role": "user", "user_id": f"u{i % 50}", "channel": None
            }  # fmt: skip
            out.append(
                Event(f"c{i}", "chat.in[0]@1", tenant, Kind.CHAT, f"s{i % 40}", 0.0, payload, 0.0,
                      0, flags)
            )  # fmt: skip
        elif r < 0.8:
            payload = {
                "event_type": rng.choice(("order_placed", "refund", "login")),
                "amount": None if rng.random() < 0.1 else round(rng.uniform(1, 1000), 2),
                "currency": "EUR",
                "attributes": {"region": rng.choice(regions), "plan": "pro"},
            }
            out.append(
                Event(f"b{i}", "shop.orders[0]@1", tenant, Kind.BUSINESS, f"a{i % 90}", 0.0,
                      payload, 0.0)
            )  # fmt: skip
        else:
            payload = {"value": round(rng.gauss(60, 20), 3), "unit": None, "tags": {}}
            out.append(
                Event(f"m{i}", "metrics[0]@1", tenant, Kind.METRIC, f"h{i % 10}.cpu", 0.0,
                      payload, 0.0)
            )  # fmt: skip
    return out


def alerts(n: int, seed: int = 12) -> list[Alert]:
    rng = random.Random(seed)
    return [
        Alert(f"al{i}", "ensemble", rng.choice(("acme", "sandbox")), "h1.cpu", 0.0,
              round(rng.uniform(0, 12), 2), 99.0, 60.0, 5.0, {}, (f"m{i}",), "metrics[0]@1", "")
        for i in range(n)
    ]  # fmt: skip


def per_event_us(route: Callable[[Event], tuple[str, ...]], evs: Sequence[Event]) -> float:
    """Mean µs per call of `route` over `evs`, the best of 5 rounds."""
    for e in evs[:1000]:
        route(e)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for e in evs:
            route(e)
        best = min(best, time.perf_counter() - started)
    return best / len(evs) * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=200_000, help="events routed per round")
    p.add_argument("--quick", action="store_true", help="few events (a smoke run)")
    args = p.parse_args(argv)
    if args.quick:
        args.events = 5000
    if args.events < 1000:
        p.error("--events must be >= 1000")

    evs = events(args.events)
    als = alerts(max(args.events // 100, 10))
    kind = Router(LLMConfig().routes)
    rules: tuple[RouteRule, ...] = conditional_config().routes
    conditional = Router(rules)

    mismatches = sum(conditional.tasks_for_event(e) != handwritten(e) for e in evs)
    mismatches += sum(conditional.tasks_for_alert(a) != handwritten_alert(a) for a in als)
    kind_mismatches = sum(kind.tasks_for_event(e) != DEFAULT_TASK[e.kind] for e in evs)
    routes = Counter(conditional.ledger(e).route for e in evs)

    kind_us = per_event_us(kind.tasks_for_event, evs)
    conditional_us = per_event_us(conditional.tasks_for_event, evs)
    hand_us = per_event_us(handwritten, evs)
    ratio = conditional_us / kind_us
    print(f"{args.events} events, {len(rules)} rules ({len(RULES)} conditional):")
    print(f"  kind-only table          {kind_us:6.3f} µs/event (baseline)")
    print(f"  conditional rules        {conditional_us:6.3f} µs/event ({ratio:.2f}x the baseline)")
    print(f"  the same as an if chain  {hand_us:6.3f} µs/event")
    print(
        f"  routes: {dict(routes.most_common())}; mismatches {mismatches}, kind {kind_mismatches}"
    )
    out = {
        "events": args.events,
        "kind_us": round(kind_us, 4),
        "conditional_us": round(conditional_us, 4),
        "handwritten_us": round(hand_us, 4),
        "ratio": round(ratio, 3),
        "mismatches": mismatches,
        "kind_mismatches": kind_mismatches,
        "alerts": len(als),
        "routes": dict(routes),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
