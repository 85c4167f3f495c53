"""Short runs of `python -m bench.throughput` as a subprocess: the default keeps its JSON keys,
and `--context` answers every chat, with retrieval citing documents and every search timed.
No timed assertions: the machine may be busy."""

from __future__ import annotations

from typing import Any

from support.harness import run_bench


def run_throughput(*args: str) -> dict[str, Any]:
    return run_bench("bench.throughput", *args)[0]


def test_default_run_keeps_its_keys() -> None:
    result = run_throughput("--events", "3000", "--no-recovery")
    assert result["events"] == 3000
    for key in (
        "pipeline_events_per_s",
        "passthrough_events_per_s",
        "ratio",
        "peak_rss_mb",
        "passthrough_peak_rss_mb",
    ):
        assert result[key] > 0, key


def test_context_run_retrieves_for_every_chat() -> None:
    result = run_throughput("--context", "--events", "3000", "--documents", "200", "--no-recovery")
    assert (result["events"], result["chats"], result["documents"]) == (3000, 300, 200)
    # At most one per chat (a question asked again is answered from the lookup cache), none
    # for other kinds.
    assert 0 < result["searches"] <= 300
    assert result["cited_share"] == 1.0
    assert 0 < result["search_p50_ms"] <= result["search_p99_ms"]
    assert result["pipeline_events_per_s"] > 0 and result["pipeline_events_per_s_no_retrieval"] > 0
    assert "retrieval_us_per_chat" in result and result["search_us_per_chat"] > 0
