"""Adapters declared in a TOML file, through the whole wired flow (bytewax.testing runners,
files in and out, the LLM simulator over HTTP): every record comes out once, as a ledger
entry or a dead letter naming the field, and chats of a declared shape are answered."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import cluster_main, run_main

from config.models import load_config
from flows.pipeline import build_flow
from llmsim import LLMSimulator
from state.stores import close_all
from support import workload

NOW_ISO = "2026-11-01T08:00:00Z"

CONFIG = """
[app]
profile = "dev"

[input]
kind = "file"
sources = [
  {{ name = "orders", path = "orders.jsonl", adapter = "shop_orders" }},
  {{ name = "support", path = "support.jsonl", adapter = "support_chat", tenant = "acme" }},
  {{ name = "plain", path = "plain.jsonl" }},
]

[[input.adapters]]
name = "shop_orders"
kind = "business"
event_id = {{ fields = ["order.id", "created_at"], hash = true, prefix = "ord-" }}
entity = "customer.id"
timestamp = {{ field = "created_at", format = "iso8601" }}
tenant = {{ field = "shop.tenant" }}
payload = {{ amount = "order.total", type = "order.kind", "attributes.region" = "shop.region" }}

[[input.adapters]]
name = "support_chat"
kind = "chat"
event_id = "msg.id"
entity = "conversation.id"
timestamp = {{ field = "msg.sent_ms", format = "epoch_ms" }}
text = "msg.body"
payload = {{ user_id = "msg.author.id" }}

[output]
kind = "file"
dir = "out"

[stores]
dir = "stores"

[validation]
max_future_skew_s = 1e12

[llm]
base_url = "{base_url}"
concurrency = 4
timeout_s = 10
"""


@pytest.fixture(autouse=True)
def _close_stores():
    yield
    close_all()


def _lines(path: Path, docs: list[dict[str, Any] | bytes]) -> int:
    path.write_bytes(
        b"".join((d if isinstance(d, bytes) else json.dumps(d).encode()) + b"\n" for d in docs)
    )
    return len(docs)


def _read(out: Path, name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for f in sorted(out.glob(f"{name}*.jsonl")):
        found.extend(json.loads(line) for line in f.read_text().splitlines())
    return found


def _order(i: int, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "order": {"id": f"o-{i}", "total": 20.0 + i, "kind": "refund" if i % 3 else "sale"},
        "customer": {"id": f"c-{i % 7}"},
        "created_at": f"2026-11-01T07:{i % 60:02d}:00Z",
        "shop": {"tenant": "acme", "region": "eu"},
    }
    doc.update(over)
    return doc


def _chat(i: int, **msg: Any) -> dict[str, Any]:
    body = {"id": f"m-{i}", "sent_ms": 1_793_516_400_000 + i, "body": f"question {i}?"}
    body["author"] = {"id": f"u-{i % 5}"}
    body.update(msg)
    return {"msg": body, "conversation": {"id": f"conv-{i % 5}"}}


@pytest.mark.parametrize("runner", ["run_main", "cluster_main_2_workers"])
def test_declared_adapters_account_for_every_record(
    tmp_path: Path, llm_sim: LLMSimulator, runner: str
) -> None:
    orders = [_order(i) for i in range(60)]
    broken_orders: list[dict[str, Any] | bytes] = [
        _order(60, order={"id": "o-60", "kind": "sale"}),  # no total
        _order(61, created_at="yesterday"),
        _order(62, customer="c-1"),
        b'{"order": ',
    ]
    chats = [_chat(i) for i in range(40)]
    broken_chats: list[dict[str, Any] | bytes] = [
        _chat(40, body=""),
        _chat(41, sent_ms="soon"),
        {"conversation": {"id": "conv-1"}},
    ]
    plain = [json.loads(v) for _, v in workload.metrics(30, series=3, start=1_793_520_000.0)]
    n_in = _lines(tmp_path / "orders.jsonl", [*orders, *broken_orders, orders[0]])  # + a re-send
    n_in += _lines(tmp_path / "support.jsonl", [*chats, *broken_chats])
    n_in += _lines(tmp_path / "plain.jsonl", plain)
    config = tmp_path / "deploy.toml"
    config.write_text(CONFIG.format(base_url=llm_sim.base_url))

    settings = load_config(config)
    # The file paths and directories are made absolute (relative ones resolve against the
    # working directory), so the run writes under tmp_path.
    settings = settings.model_copy(
        update={
            "input": settings.input.model_copy(
                update={
                    "sources": tuple(
                        s.model_copy(update={"path": str(tmp_path / str(s.path))})
                        for s in settings.input.sources
                    )
                }
            ),
            "output": settings.output.model_copy(update={"dir": str(tmp_path / "out")}),
            "stores": settings.stores.model_copy(update={"dir": str(tmp_path / "stores")}),
        }
    )
    flow = build_flow(settings)
    if runner == "run_main":
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=2)

    ledger, dead = _read(tmp_path / "out", "ledger"), _read(tmp_path / "out", "dead_letters")
    assert len(ledger) + len(dead) == n_in
    routes = Counter((e["kind"], e["route"]) for e in ledger)
    assert routes == {
        ("business", "none"): 60,
        ("business", "duplicate"): 1,  # the re-sent order: same derived id
        ("chat", "chat_reply"): 40,
        ("metric", "none"): 30,
    }
    biz = [e for e in ledger if e["kind"] == "business" and e["route"] == "none"]
    assert all(e["event_id"].startswith("ord-") and e["tenant"] == "acme" for e in biz)
    assert {e["entity"] for e in biz} == {f"c-{i}" for i in range(7)}
    reasons = sorted(d["reason"] for d in dead)
    assert reasons == sorted(
        [
            "adapter shop_orders: field 'order.total' missing",
            "adapter shop_orders: field 'created_at' is not an ISO 8601 timestamp",
            "adapter shop_orders: field 'customer' must be an object, got string",
            next(r for r in reasons if r.startswith("not valid JSON")),
            "adapter support_chat: field 'msg.body' must be a non-empty string, got string",
            "adapter support_chat: field 'msg.sent_ms' must be a finite number of milliseconds "
            "since the epoch, got string",
            "adapter support_chat: field 'msg' missing",
        ]
    )
    assert all(d["raw"] and d["source"].startswith("file:") for d in dead)
    responses = _read(tmp_path / "out", "responses")
    answered = {r["item_id"] for r in responses if r["task"] == "chat_reply"}
    assert answered == {f"m-{i}" for i in range(40)}
