"""`python -m bench.snapshot --series 200` as a subprocess: the epoch's snapshot bytes for
warmed ensemble series, packed format against the unversioned layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def test_bench_snapshot_short_run() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.snapshot", "--series", "200"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    summary: dict[str, Any] = json.loads(lines[-1])
    assert set(summary) == {
        "series",
        "bytes_per_series",
        "legacy_bytes_per_series",
        "epoch_mib",
        "ratio",
    }
    assert summary["series"] == 200
    # The seasonal residual window (3000 doubles) is the floor; the shift's window is gone.
    # The change tracker that names alert kinds adds its 192 times, readings and baselines
    # (4.6 kB) to both layouts.
    assert summary["bytes_per_series"] <= 34 * 1024 + 24 * 192 + 200
    assert summary["legacy_bytes_per_series"] - summary["bytes_per_series"] >= 8 * 3000
    assert summary["ratio"] >= 1.6
    mib = summary["bytes_per_series"] * 200 / 2**20
    assert abs(summary["epoch_mib"] - mib) < 0.01
    assert any("bytes/series" in line for line in lines[:-1])
