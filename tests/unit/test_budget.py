"""Unit tests of `inference.budget`: trimming context to a budget, pack splits, calibration."""

from __future__ import annotations

import copy
import json
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.models import TaskConfig
from inference.budget import (
    MIN_KEEP_CHARS,
    FixedCalibration,
    TokenCalibration,
    fit,
    limit_chars,
    pack_groups,
    payloads_chars,
)


def turn(text: str, role: str = "user") -> dict[str, Any]:
    return {"role": role, "text": text, "ts": 1.0}


def chunk(chunk_id: str, score: float, text: str = "x" * 60) -> dict[str, Any]:
    return {"doc_id": "d", "version": 1, "chunk_id": chunk_id, "score": score, "title": "t",
            "text": text}  # fmt: skip


def payload(item_id: str = "a", **context: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": item_id, "data": {"text": "Where is my order?"}}
    if context:
        out["context"] = context
    return out


def size(payloads: list[dict[str, Any]]) -> int:
    return payloads_chars(payloads)


# --- fit ------------------------------------------------------------------------------------


def test_nothing_is_trimmed_when_the_request_fits() -> None:
    p = [payload(memory=[turn("hello")], profile={"tier": "gold"})]
    before = copy.deepcopy(p)
    t = fit(p, 100, 100 + size(p))
    assert (t.dropped, t.truncated, t.over_budget) == ({}, {}, False)
    assert p == before


def test_reverse_priority_knowledge_then_memory_then_summary_then_profile() -> None:
    full = payload(
        profile={"tier": "gold", "name": "Ann"},
        summary="s" * 200,
        memory=[turn("m" * 50) for _ in range(3)],
        knowledge=[chunk("c1", 0.9), chunk("c2", 0.2)],
    )
    floor = size([payload()])
    seen = []
    for limit in range(size([full]), floor - 1, -10):
        p = [copy.deepcopy(full)]
        t = fit(p, 0, limit)
        assert t.chars <= limit or t.over_budget
        seen.append(tuple(sorted(p[0].get("context", {}))))
        ctx = p[0].get("context", {})
        # A section is touched only when every section after it in the priority is gone.
        if "profile" not in ctx:
            assert not ({"summary", "memory", "knowledge"} & set(ctx))
        if "summary" not in ctx or ctx["summary"] != "s" * 200:
            assert not ({"memory", "knowledge"} & set(ctx))
        if "memory" in ctx and len(ctx["memory"]) < 3:
            assert "knowledge" not in ctx
    assert seen[0] == ("knowledge", "memory", "profile", "summary")
    assert seen[-1] == ()


def test_knowledge_goes_lowest_score_first_across_the_pack() -> None:
    p = [
        payload("a", knowledge=[chunk("a1", 0.9), chunk("a2", 0.1)]),
        payload("b", knowledge=[chunk("b1", 0.5), chunk("b2", 0.3)]),
    ]
    one = len(json.dumps(chunk("a1", 0.9), separators=(",", ":"))) + 1
    t = fit(p, 0, size(p) - 2 * one + 1)
    assert t.dropped == {"knowledge": 2}
    kept = [c["chunk_id"] for x in p for c in x["context"]["knowledge"]]
    assert kept == ["a1", "b1"]


def test_memory_goes_oldest_first_keeping_the_pack_balanced() -> None:
    p = [
        payload("a", memory=[turn(f"a{i}" * 10) for i in range(6)]),
        payload("b", memory=[turn(f"b{i}" * 10, role="assistant") for i in range(2)]),
    ]
    one = len(json.dumps(turn("a0" * 10), separators=(",", ":"))) + 1
    t = fit(p, 0, size(p) - 4 * one)
    assert t.dropped == {"memory": 4}
    a, b = (x["context"]["memory"] for x in p)
    # The item with the longer memory loses its oldest turns first; the newest stay.
    assert [m["text"][:2] for m in a] == ["a4", "a5"]
    assert [m["text"][:2] for m in b] == ["b0", "b1"]


def test_summary_is_truncated_to_fit_then_dropped_whole() -> None:
    text = "word " * 100
    p = [payload(summary=text, profile={"tier": "gold"})]
    limit = size(p) - 100
    t = fit(p, 0, limit)
    assert t.truncated == {"summary": 1} and t.dropped == {}
    short = p[0]["context"]["summary"]
    assert short.endswith("…") and text.startswith(short[:-1])
    assert limit - 10 <= t.chars == size(p) <= limit  # cut by what was needed, not more
    # Less than MIN_KEEP_CHARS would be left: the summary goes whole, the profile stays.
    p = [payload(summary=text, profile={"tier": "gold"})]
    t = fit(p, 0, size(p) - len(text) + MIN_KEEP_CHARS // 2)
    assert t.dropped == {"summary": 1} and t.truncated == {}
    assert p[0]["context"] == {"profile": {"tier": "gold"}}


def test_item_data_is_never_dropped_and_counts_as_over_budget() -> None:
    p = [payload(memory=[turn("hi")], profile={"a": 1})]
    t = fit(p, 0, 10)
    assert t.over_budget
    assert p == [payload()]
    assert t.dropped == {"memory": 1, "profile": 1}


def test_unlisted_context_keys_go_first_and_priority_is_configurable() -> None:
    p = [payload(memory=[turn("m" * 40)], profile={"p": "q" * 40}, extra={"e": "f" * 40})]
    fit(p, 0, size(p) - 10)
    assert set(p[0]["context"]) == {"memory", "profile"}
    p = [payload(memory=[turn("m" * 40)], profile={"p": "q" * 40})]
    fit(p, 0, size(p) - 10, priority=("item", "memory", "profile"))
    assert set(p[0]["context"]) == {"memory"}


def test_values_shared_with_work_items_are_not_changed() -> None:
    memory = [turn("m" * 40) for _ in range(4)]
    context = {"memory": memory, "summary": "s" * 300}
    p = [{"id": "a", "data": {}, "context": context}]
    fit(p, 0, 60)
    assert len(memory) == 4 and context == {"memory": memory, "summary": "s" * 300}


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                               max_size=4),
    max_leaves=12,
)  # fmt: skip
_contexts = st.fixed_dictionaries(
    {},
    optional={
        "memory": st.lists(
            st.builds(turn, st.text(max_size=80), st.sampled_from(["user", "assistant"])),
            max_size=8,
        ),
        "knowledge": st.lists(
            st.builds(chunk, st.text(max_size=4), st.floats(0, 1), st.text(max_size=80)),
            max_size=5,
        ),
        "summary": st.text(max_size=400),
        "profile": st.dictionaries(st.text(max_size=8), _json, max_size=5),
        "other": _json,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_contexts, min_size=1, max_size=4), st.integers(0, 3000), st.integers(0, 200))
def test_fit_never_exceeds_the_limit_unless_the_items_alone_do(
    contexts: list[dict[str, Any]], limit: int, fixed: int
) -> None:
    p = [payload(f"i{k}", **c) for k, c in enumerate(contexts)]
    original = copy.deepcopy(p)
    t = fit(p, fixed, limit)
    assert t.chars == fixed + size(p)
    floor = fixed + size([payload(f"i{k}") for k in range(len(p))])
    if floor <= limit:
        assert t.chars <= limit and not t.over_budget
    else:
        assert t.over_budget
    # Only context changed; what is left of a list is a suffix or a subsequence in order.
    for before, after in zip(original, p, strict=True):
        assert (after["id"], after["data"]) == (before["id"], before["data"])
        for key, value in after.get("context", {}).items():
            old = before["context"][key]
            if isinstance(value, list):
                it = iter(old)
                assert all(any(v == o for o in it) for v in value)
            elif isinstance(value, str) and value != old:
                assert value.endswith("…") and old.startswith(value[:-1].rstrip())
            else:
                assert value == old
    lost = 0
    for before, after in zip(original, p, strict=True):
        b, a = before.get("context", {}), after.get("context", {})
        for key, old in b.items():
            new = a.get(key)
            if isinstance(old, list):
                lost += len(old) - len(new or [])
            elif key not in a and not (isinstance(old, str) and old == ""):
                lost += 1
    assert lost <= sum(t.dropped.values())


# --- pack_groups and limits -----------------------------------------------------------------


def test_pack_groups_keep_order_and_give_an_oversized_item_its_own_group() -> None:
    assert pack_groups([10, 10, 10], 0, 1000) == [[0, 1, 2]]
    assert pack_groups([10, 500, 10, 10], 0, 100) == [[0], [1], [2, 3]]
    assert pack_groups([], 0, 10) == []


def test_limit_chars_matches_the_offline_estimate() -> None:
    from inference.prompts import estimate_tokens

    for budget in (256, 1000, 4096):
        for factor in (0.8, 1.0, 1.7, 3.2):
            n = limit_chars(budget, factor)
            assert estimate_tokens("x" * n) * factor <= budget
            assert estimate_tokens("x" * (n + 1)) * factor > budget - factor


def test_task_budget_fields_and_batch_tokens() -> None:
    t = TaskConfig(name="t", schema_name="chat_reply")
    assert t.prompt_budget_tokens is None and t.batch_tokens == t.max_batch_tokens
    assert t.context_priority == ("item", "profile", "summary", "memory", "knowledge")
    t = TaskConfig(name="t", schema_name="chat_reply", prompt_budget_tokens=2000)
    assert t.batch_tokens == 2000
    with pytest.raises(ValueError, match="context_priority"):
        TaskConfig(name="t", schema_name="chat_reply", context_priority=("memory", "item"))
    with pytest.raises(ValueError, match="context_priority"):
        TaskConfig(name="t", schema_name="chat_reply", context_priority=("item", "a", "a"))


# --- calibration ----------------------------------------------------------------------------


def test_calibration_warms_up_then_follows_a_high_quantile() -> None:
    cal = TokenCalibration(warmup=10, window=100, refresh=1, prior=1.5)
    assert cal.factor("m") == 1.5
    cal.observe("m", 100, 200)
    assert cal.factor("m") == pytest.approx(2.2)  # largest seen times the warm-up margin
    for k in range(200):
        cal.observe("m", 100, 100 + k % 100)  # ratios 1.00 .. 1.99, evenly
    assert 1.97 <= cal.factor("m") <= 1.99
    assert cal.factor("other") == 1.5
    assert cal.observations("m") == 100


def test_calibration_forgets_beyond_its_window_and_ignores_empty_usage() -> None:
    cal = TokenCalibration(warmup=5, window=50, refresh=1)
    for _ in range(50):
        cal.observe("m", 100, 300)
    for _ in range(50):
        cal.observe("m", 100, 120)
    assert cal.factor("m") == pytest.approx(1.2)
    cal.observe("m", 100, 0)
    cal.observe("m", 0, 100)
    assert cal.factor("m") == pytest.approx(1.2)


def test_calibration_is_thread_safe() -> None:
    cal = TokenCalibration(warmup=10, window=10_000, refresh=7)

    def feed(k: int) -> None:
        for i in range(2000):
            cal.observe("m", 100, 100 + (i * 7 + k) % 50)

    threads = [threading.Thread(target=feed, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert cal.observations("m") == 8000
    assert 1.45 <= cal.factor("m") <= 1.5


def test_fixed_calibration_never_learns() -> None:
    cal = FixedCalibration(1.0)
    cal.observe("m", 100, 300)
    assert cal.factor("m") == 1.0
