"""Smoke run of `bench.llm_stage --quick`: every case runs and the last line has the figures."""

from __future__ import annotations

import json

import pytest

from bench import llm_stage

KEYS = (
    "fanout_ratio",
    "pack_ratio",
    "pack_requests_per_event",
    "pack_batch_size",
    "adaptive_429_share",
    "adaptive_throughput_ratio",
    "light_p99_ms",
    "light_max_wait_ms",
    "latency_ms",
    "naive_events_per_s",
)


@pytest.mark.timeout(120)
def test_quick_run_prints_all_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert llm_stage.main(["--quick"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    for key in KEYS:
        assert result[key] is not None, key
    for case in ("naive", "fanout", "pack", "adaptive", "light"):
        assert result[f"{case}_answered"] == result[f"{case}_events"] > 0, case
        assert result[f"{case}_dead_letters"] == 0, case
        assert result[f"{case}_events_per_s"] > 0, case
    assert result["latency_ms"] == 200.0 and result["pack_batch_size"] == 16
    assert result["fanout_requests_per_event"] == 1.0
    assert result["pack_requests_per_event"] <= 1.1 / 16
    assert 0 <= result["adaptive_429_share"] < 1
