"""Erasure through the broker: a running flow (Kafka in and out) meets an erasure request on
its erasures topic; the user's profile, replies and memory leave every later prompt, the
audit topic gets one `erasure_completed` record saying what was removed, and the other
users keep theirs."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.reference import close_references
from llmsim import LLMSimulator
from state.erasure import close_erasures
from state.stores import close_all
from support import workload
from support.broker import produce
from support.harness import Deployment, prompt_items, wait_exit, wait_until

USERS = 4


@pytest.fixture(autouse=True)
def _release_stores() -> Iterator[None]:
    yield
    close_references()
    close_erasures()
    close_all()


def _answered(dep: Deployment, prefix: str) -> set[str]:
    return {
        i
        for r in dep.drain("responses", idle_s=0.5)
        for i in r["event_ids"]
        if i.startswith(prefix)
    }


def _completed(dep: Deployment) -> list[dict[str, Any]]:
    return [a for a in dep.drain("audit", idle_s=0.5) if a.get("activity") == "erasure_completed"]


def test_erasure_request_on_the_topic_leaves_later_prompts(
    kafka_bootstrap: str, llm_sim: LLMSimulator, tmp_path: Path
) -> None:
    dep = Deployment(kafka_bootstrap, tmp_path, llm_sim.base_url, tail=True, erasures=True)
    profiles = [
        (None, json.dumps({"tenant": "acme", "entity": f"u-{u:04d}", "attributes": {"u": u}}))
        for u in range(USERS)
    ]
    produce(kafka_bootstrap, dep.topics["profiles"], [(k, v.encode()) for k, v in profiles])
    first = workload.chats(2 * USERS, sessions=USERS, prefix="a")
    produce(kafka_bootstrap, dep.topics["chat"], first)
    procs = dep.start_cluster(1)
    try:
        wait_until(lambda: len(_answered(dep, "a-")) == len(first), "first chats", procs)
        request = {
            "request_id": "gdpr-7",
            "tenant": "acme",
            "subject": "u-0001",
            "requested_at": datetime.now(UTC).isoformat(),
        }
        produce(kafka_bootstrap, dep.topics["erasures"], [(None, json.dumps(request).encode())])
        wait_until(lambda: len(_completed(dep)) == 1, "erasure completed", procs)
        time.sleep(0.05)  # the next chats are sent after the erasure
        second = workload.chats(USERS, sessions=USERS, prefix="b", start=time.time() + 0.1)
        produce(kafka_bootstrap, dep.topics["chat"], second)
        wait_until(lambda: len(_answered(dep, "b-")) == len(second), "second chats", procs)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
    assert wait_exit(procs[0], dep) == 0, dep.log("flow")[-3000:]

    record = _completed(dep)[0]
    assert record["request_id"] == "gdpr-7" and record["repeat"] is False
    removed = record["removed"]
    assert removed["profiles"] == 1 and removed["replies"] == 2 and removed["answers"] == 2
    items = {
        i["id"]: i
        for r in llm_sim.requests()
        if r["status"] == 200
        for i in prompt_items(r)
        if i["id"].startswith("b-")
    }
    assert len(items) == USERS
    for item_id, item in items.items():
        user = int(item_id[2:]) % USERS
        context = item["context"]
        if user == 1:
            assert "profile" not in context and not context.get("memory"), item
        else:
            assert context["profile"] == {"u": user}, item
            assert len(context["memory"]) == 4, item  # two turns, each with its reply
