"""Knowledge on the broker: documents produced before the start are searchable before the
first chat is enriched, a new version replaces the old and a deletion removes it while the
flow runs, at one and two processes; prompts only ever carry their own tenant's documents and
responses cite the chunks their prompt carried (issue 10, knowledge)."""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.reference import close_knowledge, close_references
from llmsim import LLMSimulator
from state.stores import StoreLayout, close_all
from support.broker import produce
from support.harness import Deployment, prompt_items, wait_exit, wait_until

TASKS = """
[[llm.tasks]]
name = "chat_reply"
schema_name = "chat_reply"
knowledge = { top_k = 3 }

[[llm.tasks]]
name = "explain_anomaly"
schema_name = "anomaly_explanation"
"""

# Other tenants' documents on the same subject, some with ids built to collide with acme's.
FOREIGN = ["globex", "acme ", "ACME", "acme/x", "acme\u0000", "../acme", "ácme"]


@pytest.fixture(autouse=True)
def _release_stores() -> Iterator[None]:
    yield
    close_references()
    close_knowledge()
    close_all()


def doc(tenant: str, doc_id: str, version: int, text: str, **extra: Any) -> tuple[str, bytes]:
    body = {"tenant": tenant, "doc_id": doc_id, "version": version, "title": doc_id, **extra}
    if not extra.get("deleted"):
        body["text"] = text
    return doc_id, json.dumps(body).encode()


def chat(eid: str, session: int) -> tuple[str, bytes]:
    body = {
        "message_id": eid,
        "session_id": f"s-{session}",
        "tenant": "acme",
        "user_id": f"u-{session}",
        "text": "How do I reset my password?",
        "sent_at": datetime.now(UTC).isoformat(),
    }
    return eid, json.dumps(body).encode()


def responses(dep: Deployment) -> dict[str, dict[str, Any]]:
    return {
        r["item_id"]: r for r in dep.drain("responses", idle_s=0.5) if r["task"] == "chat_reply"
    }


def ask(dep: Deployment, prefix: str, procs: list[Any], n: int = 6) -> None:
    produce(dep.bootstrap, dep.topics["chat"], [chat(f"{prefix}-{i}", i) for i in range(n)])
    want = {f"{prefix}-{i}" for i in range(n)}
    wait_until(lambda: want <= set(responses(dep)), f"chats {prefix}-* answered", procs)


def indexes_hold(dep: Deployment, processes: int, version: int | None) -> bool:
    """Whether every process's index has acme/kb-password at `version` (None: deleted)."""
    for i in range(processes):
        path = StoreLayout(dep.workdir / "stores", i).knowledge
        if not path.exists():
            return False
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            row = conn.execute(
                "SELECT version, deleted FROM docs WHERE tenant = 'acme' AND doc_id = ?",
                ("kb-password",),
            ).fetchone()
        if row is None or row[0] != (version or 3) or bool(row[1]) != (version is None):
            return False
    return True


def wait_indexes(dep: Deployment, processes: int, version: int | None) -> None:
    wait_until(
        lambda: indexes_hold(dep, processes, version),
        f"every index at version {version}",
        timeout_s=60,
        every_s=0.2,
    )


@pytest.mark.parametrize("processes", [1, 2], ids=["1-process", "2-processes"])
def test_prompts_carry_their_tenants_current_documents(
    kafka_bootstrap: str, llm_sim: LLMSimulator, tmp_path: Path, processes: int
) -> None:
    dep = Deployment(
        kafka_bootstrap,
        tmp_path,
        llm_sim.base_url,
        partitions=2,
        tail=True,
        knowledge=True,
        extra_toml=TASKS,
    )
    # The article carries PII, which must not reach a prompt (redaction at prompt assembly).
    password = (
        "Open Settings and choose Reset password to reset your password, or write to "
        "jane.doe@example.com or call +1 415 555 0199."
    )
    docs = [doc("acme", "kb-password", 1, password), doc("acme", "kb-export", 1, "CSV export")]
    docs += [doc(t, "kb-password", 1, f"{t} resets the password by mail") for t in FOREIGN]
    docs.append(("bad", b'{"tenant": "acme", "version": 1, "text": "no id"}'))  # dead letter
    produce(kafka_bootstrap, dep.topics["knowledge"], docs)
    procs = dep.start_cluster(processes, log_name="flow")
    try:
        ask(dep, "a", procs)
        produce(
            kafka_bootstrap,
            dep.topics["knowledge"],
            [doc("acme", "kb-password", 2, "Reset your password from the login page, v2.")],
        )
        wait_indexes(dep, processes, 2)
        ask(dep, "b", procs)
        produce(
            kafka_bootstrap,
            dep.topics["knowledge"],
            [doc("acme", "kb-password", 3, "", deleted=True)],
        )
        wait_indexes(dep, processes, None)
        ask(dep, "c", procs)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
    for i, p in enumerate(procs):
        name = "flow" if processes == 1 else f"flow-p{i}"
        assert wait_exit(p, dep, log_name=name) == 0, dep.log(name)[-3000:]

    items = {i["id"]: i for r in llm_sim.requests() if r["status"] == 200 for i in prompt_items(r)}
    answered = responses(dep)
    expected_version = {"a": 1, "b": 2, "c": None}
    for item_id, item in items.items():
        chunks = item.get("context", {}).get("knowledge", [])
        assert all("globex" not in c["text"] and "by mail" not in c["text"] for c in chunks), item
        assert all("jane.doe@example.com" not in c["text"] for c in chunks), item
        assert all("555 0199" not in c["text"] for c in chunks), item
        password_chunks = [c for c in chunks if c["doc_id"] == "kb-password"]
        version = expected_version[item_id[0]]
        if version is None:
            assert not password_chunks, item
        else:
            assert [c["version"] for c in password_chunks] == [version], item
        cited = [(c["doc_id"], c["version"], c["chunk_id"]) for c in answered[item_id]["citations"]]
        assert cited == [(c["doc_id"], c["version"], c["chunk_id"]) for c in chunks]
    assert len(items) == 18
    first = [c for c in items["a-0"]["context"]["knowledge"] if c["doc_id"] == "kb-password"]
    assert "[EMAIL]" in first[0]["text"] and "[PHONE]" in first[0]["text"], first

    dead = [d for d in dep.drain("dead_letters", idle_s=0.5) if d["step_id"] == "knowledge_in"]
    assert sorted(d["reason"] for d in dead) == [
        "knowledge document `tenant` contains control characters",  # the "acme\0" one
        "knowledge document has no `doc_id`",
    ]
