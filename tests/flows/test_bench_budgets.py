"""`python -m bench.budgets` as a subprocess, short: every item is answered or dead-lettered,
the spent budget overshoots by no more than the requests in flight (no timed assertions)."""

from __future__ import annotations

from support.harness import run_bench


def test_bench_budgets_short_run() -> None:
    result, _ = run_bench(
        "bench.budgets",
        "--items",
        "80",
        "--concurrency",
        "4",
        "--latency-ms",
        "5",
        "--repeats",
        "1",
    )
    assert result["answered"] + result["dead_lettered"] == result["items"] == 80
    assert result["dead_lettered"] > 0 and result["spent"] >= result["budget"]
    # Requests already in flight when the budget ran out still finish: at most concurrency.
    assert 0 <= result["overshoot_requests"] <= result["concurrency"]
    assert result["baseline_s"] > 0 and result["budgeted_s"] > 0
