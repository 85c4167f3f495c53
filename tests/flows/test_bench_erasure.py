"""`python -m bench.erasure` as a subprocess, short: every request produced is applied to
the stores (the counts removed say so) and the figures are printed next to the baseline
(no timed assertions)."""

from __future__ import annotations

from support.harness import run_bench


def test_bench_erasure_short_run() -> None:
    result, _ = run_bench(
        "bench.erasure", "--requests", "20", "--rate", "20", "--background", "500"
    )
    assert result["requests"] == 20
    assert result["removed"] == {
        "profiles": 20,
        "documents": 20,
        "answers": 40,
        "replies": 40,
        "summaries": 0,
    }
    assert 0 < result["p50_s"] <= result["p99_s"] <= result["max_s"]
    assert result["baseline_p99_s"] > 0
