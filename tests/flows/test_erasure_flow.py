"""Erasure through the wired flow (file inputs, the simulator over HTTP, a recovery
directory): a user's chats build memory, replies, a profile and a document about them; an
erasure arrives; later prompts carry none of it, and the audit says what was removed. Then
a restart without the snapshot replays every older chat: the user does not come back."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main

from config.models import Settings
from connectors.reference import close_references
from flows.pipeline import build_flow
from llmsim import LLMSimulator
from state.erasure import close_erasures
from state.stores import close_all
from support.outputs import read_outputs

BASE = time.time() - 3600.0  # event times: the last hour
SECRET = "zanzibar"  # in everything about u1: its turns, its profile, its document


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def chat(eid: str, session: str, user: str, text: str, at: float) -> dict[str, Any]:
    return {
        "message_id": eid,
        "session_id": session,
        "user_id": user,
        "tenant": "acme",
        "text": text,
        "sent_at": _iso(at),
    }


def _append(path: Path, *docs: dict[str, Any]) -> None:
    with path.open("a") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")


@pytest.fixture(autouse=True)
def _close_stores():
    yield
    close_references()
    close_erasures()
    close_all()


def _settings(tmp: Path, base_url: str) -> Settings:
    return Settings.model_validate(
        {
            "app": {"profile": "dev"},
            "input": {
                "kind": "file",
                "sources": [{"name": "chats", "path": str(tmp / "chats.jsonl")}],
                "knowledge": {"name": "kb", "path": str(tmp / "kb.jsonl")},
                "erasures": {"name": "erasures", "path": str(tmp / "erasures.jsonl")},
            },
            "output": {"kind": "file", "dir": str(tmp / "out")},
            "stores": {"dir": str(tmp / "stores"), "profiles_seed": str(tmp / "seed.jsonl")},
            "llm": {
                "base_url": base_url,
                "concurrency": 2,
                "timeout_s": 10,
                "tasks": [
                    {
                        "name": "chat_reply",
                        "schema_name": "chat_reply",
                        "max_wait_ms": 0,
                        "knowledge": {"top_k": 3, "min_score": 0.0},
                    }
                ],
                "routes": [{"kind": "chat", "task": "chat_reply"}],
            },
        }
    )


def _bodies(requests: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(r["messages"]) for r in requests if r["status"] == 200]


def _run(tmp: Path, sim: LLMSimulator, recovery: Path) -> list[str]:
    """One run of the flow to the end of its files; the bodies of the requests it made."""
    before = len(sim.requests())
    cfg = RecoveryConfig(str(recovery))
    flow = build_flow(_settings(tmp, sim.base_url))
    run_main(flow, epoch_interval=timedelta(seconds=1), recovery_config=cfg)
    close_references()  # a new run reads its reference files again, as a restart does
    return _bodies(sim.requests()[before:])


def test_erased_user_leaves_prompts_and_does_not_come_back(tmp_path: Path, llm_sim):
    chats, kb = tmp_path / "chats.jsonl", tmp_path / "kb.jsonl"
    erasures = tmp_path / "erasures.jsonl"
    erasures.write_text("")
    _append(
        tmp_path / "seed.jsonl",
        {"tenant": "acme", "entity": "u1", "attributes": {"nick": f"{SECRET}-profile"}},
        {"tenant": "acme", "entity": "u2", "attributes": {"nick": "u2-profile"}},
    )
    _append(
        kb,
        {
            "tenant": "acme",
            "doc_id": "case-u1",
            "version": 1,
            "text": f"Refund case notes: {SECRET}-document",
            "subjects": ["u1"],
        },
        {"tenant": "acme", "doc_id": "policy", "version": 1, "text": "Refund policy: 30 days."},
    )
    _append(
        chats,
        *(
            chat(f"u1-{n}", "s1", "u1", f"refund please {SECRET}-turn-{n}", BASE + n)
            for n in range(3)
        ),
        *(chat(f"u2-{n}", "s2", "u2", f"refund please u2-turn-{n}", BASE + n) for n in range(3)),
    )
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)

    first = _run(tmp_path, llm_sim, recovery)
    assert any(f"{SECRET}-turn-0" in b and f"{SECRET}-profile" in b for b in first)
    assert any(f"{SECRET}-document" in b for b in first)

    # The user asks to be erased; both users write again after that.
    request = {
        "request_id": "gdpr-1",
        "tenant": "acme",
        "subject": "u1",
        "requested_at": _iso(BASE + 1800),
    }
    _append(erasures, request, {"request_id": "bad"})
    _append(
        chats,
        chat("u1-new", "s1", "u1", "refund please, new question", BASE + 2400),
        chat("u2-new", "s2", "u2", "refund please, again", BASE + 2400),
    )
    second = _run(tmp_path, llm_sim, recovery)
    assert second and not any(SECRET in b for b in second)
    u2_prompt = [b for b in second if "refund please, again" in b]
    assert u2_prompt and "u2-turn-2" in u2_prompt[0] and "u2-profile" in u2_prompt[0]
    u1_prompt = [b for b in second if "new question" in b]
    assert u1_prompt  # the user's new chat is answered, without anything from before

    done = [a for a in read_outputs(tmp_path, "audit") if a.get("activity") == "erasure_completed"]
    assert len(done) == 1
    record = done[0]
    assert record["request_id"] == "gdpr-1" and record["subject"] == "u1"
    assert record["repeat"] is False
    removed = record["removed"]
    assert removed["profiles"] == 1 and removed["documents"] == 1
    assert removed["replies"] == 3 and removed["answers"] == 3
    assert record["completed_at"] >= record["received_at"]
    dead = read_outputs(tmp_path, "dead_letters")
    assert [d["step_id"] for d in dead] == ["erasures_in"]

    # Restart without the snapshot: every chat (and the request) is read again; u1's
    # chats from before the erasure are neither remembered nor answered nor cached again.
    _append(chats, chat("u1-later", "s1", "u1", "refund please, later", BASE + 3000))
    fresh = tmp_path / "recovery-2"
    fresh.mkdir()
    init_db_dir(fresh, 1)
    answered_before = {r["item_id"] for r in read_outputs(tmp_path, "responses")}
    third = _run(tmp_path, llm_sim, fresh)
    assert not any(SECRET in b for b in third)
    later = [b for b in third if "refund please, later" in b]
    assert later and "new question" in later[0]  # newer data of the user is kept
    replayed = [r for r in read_outputs(tmp_path, "responses") if r["item_id"].startswith("u1-")]
    assert {r["item_id"] for r in replayed} - answered_before == {"u1-later"}
    again = [a for a in read_outputs(tmp_path, "audit") if a.get("activity") == "erasure_completed"]
    assert len(again) == 2 and again[1]["activity_id"] == record["activity_id"]
    assert again[1]["repeat"] is True and again[1]["removed"] == removed
