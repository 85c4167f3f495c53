"""Regenerate the example deployments' data files: `python -m support.example_data`.

Deterministic. Each example gets a small JSON-lines input of its own, with a malformed line
or two (they become dead letters), and the reference data its tasks use (profiles, articles).
The built-in-equivalent task files of `business-triage` (`chat_reply.*`,
`explain_anomaly.*`) are written from the code's built-in instructions and schemas, so they
stay exactly equivalent.
"""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from inference.prompts import builtin_spec

HERE = Path(__file__).resolve().parents[1] / "config" / "examples"
BASE = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def write(path: Path, rows: list[dict[str, Any] | str]) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def support_chat() -> None:
    d = HERE / "support-chat"
    sessions = {
        "sess-a": (
            "user-1",
            [
                "Hi, I can't log in since this morning.",
                "I reset my password but the link expired, what now?",
                "Got it, thanks!",
            ],
        ),
        "sess-b": ("user-2", ["How do I export my invoices as PDF?", "And for last year too?"]),
        "sess-c": (
            "user-3",
            ["Your app deleted my project, I am furious.", "I need this fixed today or I cancel."],
        ),
        "sess-d": ("user-1", ["Where do I change my billing address?"]),
    }
    rows: list[dict[str, Any] | str] = []
    n = 0
    for turn in range(3):
        for sid, (user, texts) in sessions.items():
            if turn < len(texts):
                n += 1
                t = BASE + timedelta(minutes=turn * 3, seconds=n)
                rows.append(
                    {
                        "message_id": f"msg-{n:03d}",
                        "session_id": sid,
                        "user_id": user,
                        "tenant": "helpdesk",
                        "text": texts[turn],
                        "sent_at": iso(t),
                        "channel": "web",
                    }
                )
    rows.insert(4, '{"message_id": "msg-bad", "session_id": "sess-a", "text": ')
    rows.append(
        {
            "message_id": "msg-notext",
            "session_id": "sess-b",
            "tenant": "helpdesk",
            "sent_at": iso(BASE),
        }
    )
    write(d / "chats.jsonl", rows)
    write(
        d / "profiles.jsonl",
        [
            {
                "tenant": "helpdesk",
                "entity": "user-1",
                "attributes": {"name": "Ana", "plan": "pro"},
            },
            {
                "tenant": "helpdesk",
                "entity": "user-2",
                "attributes": {"name": "Ben", "plan": "free"},
            },
            {
                "tenant": "helpdesk",
                "entity": "user-3",
                "attributes": {"name": "Chloe", "plan": "enterprise"},
            },
        ],
    )
    articles = [
        (
            "kb-login",
            "Cannot log in",
            "If you cannot log in, reset your password from the "
            "login page. Reset links expire after 30 minutes; request a new link if yours "
            "expired.",
            ["account"],
        ),
        (
            "kb-export",
            "Exporting invoices",
            "Open Billing, then Invoices, choose the year and "
            "press Export PDF. Invoices of every past year can be exported.",
            ["billing"],
        ),
        (
            "kb-restore",
            "Restoring a deleted project",
            "Deleted projects stay in the Trash for "
            "30 days. Open Trash and choose Restore; support can restore older ones.",
            ["projects"],
        ),
        (
            "kb-address",
            "Billing address",
            "Change the billing address under Billing, then "
            "Details. The next invoice uses the new address.",
            ["billing"],
        ),
    ]
    write(
        d / "articles.jsonl",
        [
            {
                "tenant": "helpdesk",
                "doc_id": doc,
                "version": 1,
                "title": title,
                "text": text,
                "tags": tags,
            }
            for doc, title, text, tags in articles
        ],
    )


def iot_metrics() -> None:
    d = HERE / "iot-metrics"
    rng = random.Random(7)
    spikes = {("plant-3.boiler.temp", 70): 40.0, ("plant-3.pump.vibration", 85): 9.0}
    series = {
        "plant-3.boiler.temp": (81.0, 0.6, "celsius"),
        "plant-3.pump.vibration": (2.1, 0.08, "mm_s"),
        "plant-7.line.pressure": (5.4, 0.05, "bar"),
    }
    rows: list[dict[str, Any] | str] = []
    for minute in range(100):
        for name, (level, noise, unit) in series.items():
            value = level + noise * math.sin(minute / 9) + rng.gauss(0, noise)
            value += spikes.get((name, minute), 0.0)
            t = BASE + timedelta(minutes=minute)
            rows.append(
                {
                    "series": name,
                    "tenant": "factory",
                    "value": round(value, 3),
                    "timestamp": iso(t),
                    "unit": unit,
                    "tags": {"site": name[:7]},
                }
            )
    rows.insert(50, '{"series": "plant-3.boiler.temp", "value": "hot"')
    rows.insert(
        120,
        {
            "series": "plant-7.line.pressure",
            "tenant": "factory",
            "value": "n/a",
            "timestamp": iso(BASE),
        },
    )
    write(d / "readings.jsonl", rows)
    write(
        d / "devices.jsonl",
        [
            {
                "tenant": "factory",
                "entity": name,
                "attributes": {
                    "site": name[:7],
                    "unit": unit,
                    "normal": level,
                    "installed": "2024-03",
                },
            }
            for name, (level, _, unit) in series.items()
        ],
    )


def business_triage() -> None:
    d = HERE / "business-triage"
    for task, schema_name in (
        ("chat_reply", "chat_reply"),
        ("explain_anomaly", "anomaly_explanation"),
    ):
        spec = builtin_spec(schema_name)
        (d / f"{task}.md").write_text(spec.instructions + "\n", encoding="utf-8")
        (d / f"{task}.schema.json").write_text(
            json.dumps(spec.schema, indent=2) + "\n", encoding="utf-8"
        )
    rng = random.Random(11)
    rows: list[dict[str, Any] | str] = []
    kinds = ["order_placed", "payment_failed", "refund_requested", "login", "chargeback"]
    for n in range(24):
        t = BASE + timedelta(minutes=n * 2)
        kind = kinds[n % len(kinds)]
        rows.append(
            {
                "event_id": f"biz-{n:03d}",
                "event_type": kind,
                "account_id": f"acct-{n % 6}",
                "tenant": "shop",
                "occurred_at": iso(t),
                "amount": round(rng.uniform(5, 900), 2),
                "currency": "EUR",
                "attributes": {"region": ["eu", "us"][n % 2], "channel": "web"},
            }
        )
    chats = [
        "My refund for order 1182 has not arrived.",
        "Is my payment going through now?",
        "Thanks for the quick help!",
    ]
    for n, text in enumerate(chats):
        rows.append(
            {
                "message_id": f"chat-{n}",
                "session_id": f"acct-{n}",
                "user_id": f"acct-{n}",
                "tenant": "shop",
                "text": text,
                "sent_at": iso(BASE + timedelta(minutes=5 * n, seconds=30)),
            }
        )
    for minute in range(60):
        value = 120 + rng.gauss(0, 4) + (400 if minute == 50 else 0)
        rows.append(
            {
                "series": "checkout.latency_ms",
                "tenant": "shop",
                "value": round(value, 1),
                "timestamp": iso(BASE + timedelta(minutes=minute, seconds=15)),
                "unit": "ms",
            }
        )
    rows.sort(
        key=lambda r: (
            json.dumps(r)
            if isinstance(r, str)
            else str(r.get("occurred_at") or r.get("sent_at") or r.get("timestamp"))
        )
    )
    rows.insert(10, "not json at all")
    rows.insert(
        30,
        {
            "event_id": "biz-x",
            "event_type": "order_placed",
            "tenant": "shop",
            "occurred_at": "yesterday",
        },
    )
    write(d / "events.jsonl", rows)
    write(
        d / "accounts.jsonl",
        [
            {
                "tenant": "shop",
                "entity": f"acct-{i}",
                "attributes": {
                    "segment": ["smb", "enterprise", "consumer"][i % 3],
                    "since": f"202{i % 5}-01",
                    "open_disputes": i % 2,
                },
            }
            for i in range(6)
        ],
    )


if __name__ == "__main__":
    support_chat()
    iot_metrics()
    business_triage()
