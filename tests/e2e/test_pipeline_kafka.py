"""End to end: real Tansu broker, the LLM simulator over HTTP, the flow as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from llmsim import LLMSimulator
from state.stores import ProfileStore, StoreLayout, close_all
from support import workload
from support.broker import consume_all, produce
from support.harness import Deployment, account, prompt_items, requested_ids, wait_exit

USERS = 40
WITH_PROFILE = 30
"""Chat users u-0000 .. u-0039; acme has a profile for the first 30 only."""


def acme_profile(user: int) -> dict[str, Any]:
    return {"plan": "gold", "name": f"acme customer {user}"}


def globex_profile(user: int) -> dict[str, Any]:
    return {"plan": "globex-internal", "name": f"globex customer {user}"}


def seed_profiles(dep: Deployment) -> None:
    """Acme profiles for users 0-29 and globex profiles for the same user ids 0-39, in the
    deployment's profile store before the flow starts (so no chat can race its profile)."""
    store = ProfileStore(StoreLayout(dep.workdir / "stores", process=0).profiles)
    store.upsert_many(
        [("acme", f"u-{u:04d}", acme_profile(u), "seed", u) for u in range(WITH_PROFILE)]
        + [("globex", f"u-{u:04d}", globex_profile(u), "seed", u) for u in range(USERS)]
    )
    close_all()  # release the store for the flow process


def test_every_event_is_accounted_for_and_requests_are_batched(
    kafka_bootstrap: str, llm_sim: LLMSimulator, tmp_path: Path
) -> None:
    """A mixed workload with malformed records: in = ok + dead letters, answers per chat
    event, about one LLM request per batch, no PII in any prompt, profiles enrich prompts:
    every chat of a user with an acme profile is prompted with exactly that profile, the
    others with none, and globex's profiles of the same user ids never reach a prompt."""
    dep = Deployment(kafka_bootstrap, tmp_path, llm_sim.base_url, partitions=2)
    seed_profiles(dep)
    chats = workload.chats(400, sessions=USERS)
    metrics = workload.metrics(3000, series=20)
    business = workload.business(600, accounts=30)
    bad = workload.malformed(40)
    produce(kafka_bootstrap, dep.topics["chat"], [v for _, v in chats] + [v for _, v in bad[:20]])
    produce(
        kafka_bootstrap, dep.topics["metrics"], [v for _, v in metrics] + [v for _, v in bad[20:]]
    )
    produce(kafka_bootstrap, dep.topics["business"], [v for _, v in business])
    # The same acme profiles again through the profile topic (the streamed path).
    profiles = [
        json.dumps({"tenant": "acme", "entity": f"u-{u:04d}", "attributes": acme_profile(u)})
        for u in range(WITH_PROFILE)
    ]
    produce(kafka_bootstrap, dep.topics["profiles"], [*profiles, "not json", '{"tenant": 1}'])

    proc = dep.start_flow()
    assert wait_exit(proc, dep) == 0, dep.log()[-3000:]

    ledger, dead, responses, audit_topic = dep.drain_all(
        "ledger", "dead_letters", "responses", "audit"
    )
    audit = [r for r in audit_topic if r.get("type") == "audit"]  # what dep.llm_audit() keeps
    sent = {i for i, _ in chats + metrics + business if i}
    acc = account(sent, ledger, dead, responses)
    assert acc.lost == set()
    assert len(ledger) == len(sent)  # a clean run: exactly once per event
    assert acc.dead_raw == 40 + 2  # malformed inputs and bad profile updates
    decode_dead = [d for d in dead if d["step_id"].endswith("decode")]
    assert len(decode_dead) == 40
    assert all(d["source"] and d["reason"] for d in decode_dead)
    assert {d["raw_encoding"] for d in decode_dead} == {"utf-8", "base64"}
    # every chat event answered once, nothing else answered
    chat_ids = {i for i, _ in chats}
    answered = Counter(i for r in responses if r["task"] == "chat_reply" for i in r["event_ids"])
    assert set(answered) == chat_ids and set(answered.values()) == {1}
    chat_responses = [r for r in responses if r["task"] == "chat_reply"]
    assert all(r["answer"]["reply"].startswith("[simulated]") for r in chat_responses)
    # batching: far fewer requests than events, one audit record per request
    chat_requests = [a for a in audit if a["route"] == "chat_reply" and not a["cache_hit"]]
    assert len(chat_requests) <= len(chat_ids) / 4
    assert sum(a["batch_size"] for a in chat_requests) == len(chat_ids)
    assert len(llm_sim.requests()) == len([a for a in audit if not a["cache_hit"]])
    # redaction before prompting; untrusted text delimited
    prompts = [r["messages"][-1]["content"] for r in llm_sim.requests()]
    assert not any("a.b@example.com" in p for p in prompts)
    assert any("[EMAIL]" in p for p in prompts)
    assert all(p.startswith("<events>") for p in prompts)
    # profiles: the chat's user's own acme profile, or none; never another tenant's
    chat_items = [
        i
        for r in llm_sim.requests()
        if r["status"] == 200
        for i in prompt_items(r)
        if i["id"].startswith("c-")
    ]
    assert {i["id"] for i in chat_items} == chat_ids
    for item in chat_items:
        user = int(item["id"].removeprefix("c-")) % USERS
        expected = acme_profile(user) if user < WITH_PROFILE else None
        assert item["context"].get("profile") == expected, item
    assert not any("globex-internal" in p for p in prompts)


def test_sigkill_and_resume_loses_nothing(
    kafka_bootstrap: str, llm_sim_factory, tmp_path: Path
) -> None:
    """The flow is killed with SIGKILL while LLM requests are in flight and after at least
    one snapshot; a restart on the same recovery directory finishes the input. Every event
    is in the ledger or the dead letters, every chat event has an answer, and answers
    cached before the kill are not requested again."""
    sim = llm_sim_factory(latency_ms=1000, max_concurrency=64)
    dep = Deployment(kafka_bootstrap, tmp_path, sim.base_url, partitions=2, tail=True)
    chats = workload.chats(800, sessions=100)
    metrics = workload.metrics(20000, series=50)
    produce(kafka_bootstrap, dep.topics["chat"], [v for _, v in chats])
    produce(kafka_bootstrap, dep.topics["metrics"], [v for _, v in metrics])

    proc = dep.start_flow(snapshot_s=1, log_name="run1")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        got = consume_all(kafka_bootstrap, dep.topics["responses"], idle_s=0.3, timeout_s=5)
        if len(got) >= 100 and list(dep.recovery.glob("part-*")):
            break
        assert proc.poll() is None, dep.log("run1")[-3000:]
    else:
        proc.kill()
        pytest.fail("no responses before the deadline:\n" + dep.log("run1")[-3000:])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    requests_before = len(sim.requests())
    assert requests_before > 0
    answered_before = {i for r in dep.drain("responses", idle_s=0.5) for i in r["event_ids"]}
    chats_answered_before = {i for i in answered_before if i.startswith("c-")}
    assert chats_answered_before  # the kill landed after answers, so the check below bites

    dep.write_config(tail=False)
    proc2 = dep.start_flow(snapshot_s=1, log_name="run2")
    assert wait_exit(proc2, dep, log_name="run2") == 0, dep.log("run2")[-3000:]

    ledger, dead, responses = dep.drain_all("ledger", "dead_letters", "responses")
    sent = {i for i, _ in chats + metrics if i}
    acc = account(sent, ledger, dead, responses)
    assert acc.lost == set()
    assert set(acc.responses) >= {i for i, _ in chats}
    assert not dead, dead[:3]
    # Events answered before the kill are never requested again (after the restart they are
    # either past the snapshot or re-emitted from the cache); only requests in flight at the
    # kill (at most concurrency x batch items) may be sent twice.
    requested = requested_ids(sim.requests(), prefix="c-")
    assert all(requested[i] == 1 for i in chats_answered_before)
    sent_twice = [i for i, n in requested.items() if n > 1]
    assert len(sent_twice) <= 8 * 16, len(sent_twice)
    cached = [r for r in responses if r["cached"]]
    print(
        f"answered before kill {len(answered_before)}, requests before kill {requests_before}, "
        f"after {len(sim.requests())}, items sent twice {len(sent_twice)}, re-emitted from "
        f"cache {len(cached)}, duplicate ledger entries {acc.duplicates}"
    )
