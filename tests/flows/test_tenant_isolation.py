"""Tenants that cannot be spoofed: a source carries only the tenants it declares; a record
claiming another is a dead letter (original bytes, coordinates, reason) and a
`tenant_refused` activity record, never an event (issue 12, part 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import run_main

from config.models import Settings, SourceConfig, ValidationConfig
from core.records import DeadLetter, Event, RawRecord
from flows.pipeline import build_flow
from llmsim import LLMSimulator
from operators.validate import Decoder
from state.stores import close_all
from support.outputs import read_outputs

NOW = 1_793_520_000.0


def chat(i: int, tenant: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "message_id": f"m{i}",
        "session_id": f"s{i % 3}",
        "text": f"hello {i}",
        "sent_at": "2026-11-01T08:00:00Z",
    }
    if tenant is not None:
        doc["tenant"] = tenant
    return doc


def decode(src: SourceConfig, doc: dict[str, Any]) -> Event | DeadLetter:
    decoder = Decoder("decode", {src.name: src}, ValidationConfig(), clock=lambda: NOW)
    raw = json.dumps(doc).encode()
    return decoder.decode(RawRecord("chats-topic", 2, 41, None, raw, src.name))


CHATS = SourceConfig(name="chats", topic="t", adapter="chat_message", tenants=("acme", "globex"))


@pytest.mark.parametrize("claimed", ["evil", "ACME", "acme ", "..", "acme.x", "ä"])
def test_a_record_claiming_an_undeclared_tenant_is_refused(claimed: str) -> None:
    out = decode(CHATS, chat(1, claimed))
    assert isinstance(out, DeadLetter)
    assert out.reason == (
        f"tenant {claimed!r} not allowed on source 'chats' (allowed: acme, globex; "
        "input.sources[].tenants)"
    )
    assert out.source == "chats-topic[2]@41" and out.raw == json.dumps(chat(1, claimed)).encode()
    assert out.tenant is None  # the claim is not trusted, not even as the dead letter's key
    assert out.detail == {
        "refused_tenant": claimed,
        "source_name": "chats",
        "allowed": ["acme", "globex"],
    }


def test_declared_tenants_and_the_default_pass() -> None:
    for tenant in ("acme", "globex"):
        out = decode(CHATS, chat(1, tenant))
        assert isinstance(out, Event) and out.tenant == tenant
    fixed = SourceConfig(
        name="c", topic="t", adapter="chat_message", tenant="acme", tenants=("acme",)
    )
    out = decode(fixed, chat(1, None))
    assert isinstance(out, Event) and out.tenant == "acme"
    assert isinstance(decode(fixed, chat(2, "globex")), DeadLetter)


def test_an_empty_tenant_is_refused() -> None:
    out = decode(CHATS, chat(1, ""))
    assert isinstance(out, DeadLetter) and "tenant" in out.reason


def test_the_declaration_is_checked_at_start() -> None:
    with pytest.raises(ValueError, match="default `tenant` 'other' is not in its `tenants`"):
        SourceConfig(name="c", topic="t", tenant="other", tenants=("acme",))
    with pytest.raises(ValueError, match="`tenants` lists no tenant, or a name that is empty"):
        SourceConfig(name="c", topic="t", tenants=("acme", ""))
    with pytest.raises(ValueError, match="`tenants` lists no tenant"):
        SourceConfig(name="c", topic="t", tenants=())


@pytest.fixture(autouse=True)
def _close_stores() -> Any:
    yield
    close_all()


def test_the_flow_dead_letters_and_audits_refused_tenants(
    tmp_path: Path, llm_sim: LLMSimulator
) -> None:
    claims = ["acme", "globex", "evil", "acme", "", "acme/evil", "globex", "root"]
    lines = [json.dumps(chat(i, t)) for i, t in enumerate(claims)]
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(lines) + "\n")
    settings = Settings.model_validate(
        {
            "app": {"profile": "dev"},
            "input": {
                "kind": "file",
                "sources": [
                    {
                        "name": "chats",
                        "path": str(path),
                        "adapter": "chat_message",
                        "tenants": ["acme", "globex"],
                    }
                ],
            },
            "output": {"kind": "file", "dir": str(tmp_path / "out")},
            "stores": {"dir": str(tmp_path / "stores")},
            "llm": {"base_url": llm_sim.base_url, "concurrency": 4, "timeout_s": 10},
        }
    )
    run_main(build_flow(settings, clock=lambda: NOW))

    ledger, dead = read_outputs(tmp_path, "ledger"), read_outputs(tmp_path, "dead_letters")
    responses = read_outputs(tmp_path, "responses")
    activity = [r for r in read_outputs(tmp_path, "audit") if r["type"] == "activity"]
    allowed = {f"m{i}" for i, t in enumerate(claims) if t in ("acme", "globex")}
    assert {e["event_id"] for e in ledger} == allowed
    assert len(ledger) + len(dead) == len(claims)  # in = ok + dead letters
    assert {i for r in responses for i in r["event_ids"]} == allowed
    assert {r["tenant"] for r in responses} == {"acme", "globex"}
    # "" and "acme/evil" are no tenant names at all: invalid records, not refused claims.
    refused = {i: t for i, t in enumerate(claims) if t in ("evil", "root")}
    by_line = {d["source"]: d for d in dead}
    for i, claimed in refused.items():
        d = by_line[f"file:{path}:{i + 1}"]
        assert d["step_id"] == "decode" and d["raw"] == lines[i]
        assert d["detail"]["refused_tenant"] == claimed
    # One activity record per refused claim.
    assert sorted((a["tenant"], a["coordinates"]) for a in activity) == sorted(
        (t, f"file:{path}:{i + 1}") for i, t in refused.items()
    )
    assert all(a["activity"] == "tenant_refused" and a["source"] == "chats" for a in activity)
    assert len({a["activity_id"] for a in activity}) == len(refused)


def test_a_tenant_runs_only_its_allowed_tasks(tmp_path: Path, llm_sim: LLMSimulator) -> None:
    """`[tenants.globex] tasks = []`: globex's chats stay context only (ledger `none`, no
    answer, no LLM request); acme, not listed, keeps every task."""
    lines = [json.dumps(chat(i, "acme" if i % 2 else "globex")) for i in range(10)]
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(lines) + "\n")
    settings = Settings.model_validate(
        {
            "app": {"profile": "dev"},
            "input": {
                "kind": "file",
                "sources": [{"name": "chats", "path": str(path), "adapter": "chat_message"}],
            },
            "output": {"kind": "file", "dir": str(tmp_path / "out")},
            "stores": {"dir": str(tmp_path / "stores")},
            "llm": {"base_url": llm_sim.base_url, "concurrency": 4, "timeout_s": 10},
            "tenants": {"globex": {"tasks": []}, "acme": {"tasks": ["chat_reply"]}},
        }
    )
    run_main(build_flow(settings, clock=lambda: NOW))
    ledger = {e["event_id"]: e for e in read_outputs(tmp_path, "ledger")}
    responses = read_outputs(tmp_path, "responses")
    assert {i for i, e in ledger.items() if e["route"] == "chat_reply"} == {
        f"m{i}" for i in range(1, 10, 2)
    }
    assert {e["route"] for e in ledger.values() if e["tenant"] == "globex"} == {"none"}
    assert {r["tenant"] for r in responses} == {"acme"} and len(responses) == 5
    prompts = json.dumps([r["messages"] for r in llm_sim.requests()])
    assert "globex" not in prompts


def test_tenant_rules_name_known_tasks() -> None:
    base = {
        "input": {"kind": "file", "sources": [{"name": "c", "path": "c.jsonl"}]},
        "tenants": {"acme": {"tasks": ["chat_reply", "nope"]}},
    }
    with pytest.raises(ValueError, match=r"tenants\.acme\.tasks: names unknown task 'nope'"):
        Settings.model_validate(base)
    with pytest.raises(ValueError, match="'a/b' is no tenant name"):
        Settings.model_validate({**base, "tenants": {"a/b": {}}})
