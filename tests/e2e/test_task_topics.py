"""End to end: a task defined in config with an answer topic of its own, on the real broker.

The business-triage example's `triage` task (its instructions and schema files) in a Kafka
deployment: `create-topics` creates the task's topic, the flow (a subprocess) writes every
triage answer there, valid against the task's schema, while chat answers stay on the
responses topic and the audit records on the audit topic.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

from jsonschema import Draft202012Validator

from config.models import load_config
from connectors.kafkatool import create_topics
from llmsim import LLMSimulator
from support import workload
from support.broker import consume_all, produce
from support.harness import Deployment, account, wait_exit

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "business-triage"


def test_a_task_writes_its_answers_to_its_own_topic(
    kafka_bootstrap: str, llm_sim: LLMSimulator, tmp_path: Path
) -> None:
    topic = f"ops.triage-{uuid.uuid4().hex[:10]}"
    tasks = f"""
routes = [{{ kind = "business", task = "triage" }}, {{ kind = "chat", task = "chat_reply" }}]

[[llm.tasks]]
name = "triage"
instructions_file = "{EXAMPLE / "triage.md"}"
schema_file = "{EXAMPLE / "triage.schema.json"}"
model = "sim-1"
max_batch = 8
max_wait_ms = 50
context = ["profile", "memory"]
output_topic = "{topic}"

[[llm.tasks]]
name = "chat_reply"
schema_name = "chat_reply"
model = "sim-1"
"""
    dep = Deployment(kafka_bootstrap, tmp_path, llm_sim.base_url, extra_toml=tasks)
    settings = load_config(dep.config)
    report = create_topics(settings)
    assert [line.split()[1] for line in report if line.startswith("created")] == [topic]

    business = workload.business(60, accounts=12, tenant="shop")
    chats = workload.chats(20, sessions=5, tenant="shop")
    produce(kafka_bootstrap, dep.topics["business"], [v for _, v in business])
    produce(kafka_bootstrap, dep.topics["chat"], [v for _, v in chats] + ["{not json"])
    proc = dep.start_flow()
    assert wait_exit(proc, dep) == 0, dep.log()[-3000:]

    triaged = [json.loads(r.value) for r in consume_all(kafka_bootstrap, topic) if r.value]
    responses, audit_topic, ledger, dead = dep.drain_all(
        "responses", "audit", "ledger", "dead_letters"
    )
    audit = [r for r in audit_topic if r.get("type") == "audit"]  # what dep.llm_audit() keeps
    sent = {i for i, _ in business + chats if i}
    assert account(sent, ledger, dead, responses + triaged).lost == set()
    assert len(ledger) + len(dead) == len(sent) + 1  # in = ok + dead letters

    check = Draft202012Validator(json.loads((EXAMPLE / "triage.schema.json").read_text()))
    assert sorted(r["item_id"] for r in triaged) == sorted(str(i) for i, _ in business)
    assert all(r["task"] == "triage" and not list(check.iter_errors(r["answer"])) for r in triaged)
    assert Counter(r["task"] for r in responses) == {"chat_reply": len(chats)}
    assert {a["route"] for a in audit} == {"triage", "chat_reply"}
