"""`python -m bench.nab --synthetic` as a subprocess, short: every change kind is reported,
with its detection share, the kinds named and false alarms (no timed assertions)."""

from __future__ import annotations

from support.changes import KINDS
from support.harness import run_bench


def test_bench_synthetic_reports_every_kind() -> None:
    result, _ = run_bench("bench.nab", "--synthetic", "--seeds", "2")
    assert set(result["kinds"]) == set(KINDS) and result["false_alarms_per_10k"] >= 0
    assert result["hold"] == 12 and result["seeds"] == 2
    for r in result["kinds"].values():
        assert 0 <= r["detected"] <= 1 and sum(r["named"].values()) == round(r["detected"] * 2)
    assert result["kinds"]["spike"]["kind_accuracy"] == 1.0
