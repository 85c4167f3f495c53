"""`python -m bench.freshness` as a subprocess, short: every document produced is followed
into the knowledge index and found by a search, and the figures are printed (no timed
assertions)."""

from __future__ import annotations

from support.harness import run_bench


def test_bench_freshness_short_run() -> None:
    result, _ = run_bench("bench.freshness", "--rate", "50", "--seconds", "2")
    assert result["documents"] == 100
    assert 0 < result["p50_s"] <= result["p99_s"] <= result["max_s"]
    assert result["search_p99_s"] is not None and result["baseline_p99_s"] > 0
