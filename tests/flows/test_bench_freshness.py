"""`python -m bench.freshness` as a subprocess, short: every document produced is followed
into the knowledge index and found by a search, and the figures are printed (no timed
assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_freshness_short_run() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.freshness", "--rate", "50", "--seconds", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["documents"] == 100
    assert 0 < result["p50_s"] <= result["p99_s"] <= result["max_s"]
    assert result["search_p99_s"] is not None and result["baseline_p99_s"] > 0
