"""Deterministic workloads for tests and benchmarks: raw input records with known event ids.

Each generator returns `(event_id, raw_bytes)` pairs; malformed records have `event_id=None`.
Timestamps are recent (relative to `now`), so the default skew checks accept them.
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime

from core.records import WorkItem

Record = tuple[str | None, bytes]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def chats(
    n: int,
    sessions: int = 50,
    tenant: str = "acme",
    *,
    start: float | None = None,
    prefix: str = "c",
) -> list[Record]:
    t0 = (start if start is not None else time.time()) - n * 0.01
    texts = [
        "How do I reset my password?",
        "My invoice is wrong, mail me at a.b@example.com",
        "Hello!",
        "The export keeps failing.",
        "Can I upgrade my plan?",
    ]
    out: list[Record] = []
    for i in range(n):
        eid = f"{prefix}-{i:07d}"
        doc = {
            "message_id": eid,
            "session_id": f"s-{i % sessions:04d}",
            "tenant": tenant,
            "user_id": f"u-{i % sessions:04d}",
            "text": texts[i % len(texts)],
            "sent_at": _iso(t0 + i * 0.01),
        }
        out.append((eid, json.dumps(doc).encode()))
    return out


def metrics(
    n: int,
    series: int = 100,
    tenant: str = "acme",
    *,
    start: float | None = None,
    prefix: str = "m",
    seed: int = 1,
) -> list[Record]:
    rng = random.Random(seed)
    t0 = (start if start is not None else time.time()) - n * 0.001
    out: list[Record] = []
    for i in range(n):
        eid = f"{prefix}-{i:07d}"
        doc = {
            "series": f"host-{i % series:04d}.cpu",
            "tenant": tenant,
            "reading_id": eid,
            "value": round(50 + rng.gauss(0, 5), 3),
            "timestamp": _iso(t0 + i * 0.001),
        }
        out.append((eid, json.dumps(doc).encode()))
    return out


def business(
    n: int,
    accounts: int = 100,
    tenant: str = "globex",
    *,
    start: float | None = None,
    prefix: str = "b",
) -> list[Record]:
    t0 = (start if start is not None else time.time()) - n * 0.001
    out: list[Record] = []
    for i in range(n):
        eid = f"{prefix}-{i:07d}"
        doc = {
            "event_id": eid,
            "event_type": "order_placed",
            "tenant": tenant,
            "account_id": f"acct-{i % accounts:04d}",
            "occurred_at": _iso(t0 + i * 0.001),
            "amount": 10.5,
            "currency": "USD",
            "attributes": {"plan": "pro"},
        }
        out.append((eid, json.dumps(doc).encode()))
    return out


MALFORMED: tuple[bytes, ...] = (
    b'{"message_id": "x", "session_id": "s", "text": "unterminated"',
    b'{"series": "h.cpu", "tenant": "acme", "value": NaN, "timestamp": "2026-01-01T00:00:00Z"}',
    b'{"series": "h.cpu", "tenant": "acme", "value": "high", "timestamp": "2026-01-01T00:00:00Z"}',
    b'{"message_id": "n", "session_id": "s", "tenant": "a", "text": "t", '
    b'"sent_at": "2026-01-01T00:00:00"}',
    b'{"unexpected": "shape"}',
    b"[1, 2, 3]",
    b"\xff\xfe not utf-8",
    b"",
)


def malformed(n: int) -> list[Record]:
    return [(None, MALFORMED[i % len(MALFORMED)]) for i in range(n)]


def mixed(n: int, *, seed: int = 7) -> list[Record]:
    """About 60 % metrics, 25 % business, 10 % chat and 5 % malformed, shuffled by kind."""
    rng = random.Random(seed)
    m = metrics(int(n * 0.6))
    b = business(int(n * 0.25))
    c = chats(int(n * 0.1))
    bad = malformed(n - len(m) - len(b) - len(c))
    recs = m + b + c + bad
    rng.shuffle(recs)
    return recs


def work_items(n: int, prefix: str = "w", tenant: str = "acme") -> list[WorkItem]:
    """`n` LLM work items of task `chat` (five sessions), ids `<prefix>-<i>`, for tests that
    drive the LLM stage or its executor directly."""
    return [
        WorkItem(
            item_id=f"{prefix}-{i}",
            event_ids=(f"{prefix}-{i}",),
            tenant=tenant,
            entity=f"s-{i % 5}",
            profile_id="p",
            task="chat",
            source=f"t[0]@{i}",
            data={"text": f"question {i}"},
            context={},
            ingest_ts=time.time(),
        )
        for i in range(n)
    ]
