"""The LLM stage and erasure, with the real simulator over HTTP: what it caches is indexed
by subject (so an erasure finds it), and an item of a subject erased while it was in flight
is answered but nothing of it is cached."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from config.models import LLMConfig, RouteRule, TaskConfig
from core.records import WorkItem
from inference import prompts
from inference.client import LLMExecutor
from llmsim import LLMSimulator
from state.stores import ResponseCache, close_all

TASK = TaskConfig(name="chat_reply", schema_name="chat_reply", mode="fanout")


def item(item_id: str, session: str, user: str, ingest_ts: float) -> WorkItem:
    return WorkItem(
        item_id, (item_id,), "acme", session, user, "chat_reply", "chat[0]@0",
        {"text": "hello", "role": "user"}, {"memory": []}, ingest_ts,
    )  # fmt: skip


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[ResponseCache]:
    yield ResponseCache(tmp_path / "cache")
    close_all()


def test_cached_answers_and_replies_are_erased_by_user_and_skipped_in_flight(
    llm_sim: LLMSimulator, cache: ResponseCache
) -> None:
    cutoffs = {("acme", "u2"): 100.0}  # u2 erased at t=100, after its item was ingested
    cfg = LLMConfig(
        tasks=(TASK,),
        routes=(RouteRule(kind="chat", task="chat_reply"),),
        concurrency=2,
        timeout_s=10,
    )
    ex = LLMExecutor(cfg, llm_sim.base_url, cache, erased=lambda t, s: cutoffs.get((t, s)))
    try:
        kept, erased = item("m1", "s1", "u1", 50.0), item("m2", "s2", "u2", 50.0)
        out = ex.run(TASK, [kept, erased])
    finally:
        ex.close()
    assert sorted(a.item.item_id for a in out.answered) == ["m1", "m2"]  # both answered
    spec = prompts.task_spec(TASK)
    fp = {i.item_id: prompts.item_fingerprint(TASK.name, TASK.model, i, spec.digest)
          for i in (kept, erased)}  # fmt: skip
    assert cache.get(fp["m2"]) is None and cache.replies("acme", "s2", ["m2"]) == {}
    assert cache.get(fp["m1"]) is not None and "m1" in cache.replies("acme", "s1", ["m1"])
    # The user's answer and reply are found through the index, by the user alone.
    assert cache.erase("acme", "u1") == {"answers": 1, "replies": 1, "summaries": 0}
    assert cache.get(fp["m1"]) is None and cache.replies("acme", "s1", ["m1"]) == {}
