"""`python -m bench.snapshot --series 200 --prototypes 4` as a subprocess: the epoch's
snapshot bytes for warmed ensemble series, the default sketches against exact rank windows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def test_bench_snapshot_short_run() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.snapshot", "--series", "200", "--prototypes", "4"],
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
        "series_bytes",
        "tracker_bytes",
        "exact_bytes_per_series",
        "exact_series_bytes",
        "epoch_mib",
        "exact_epoch_mib",
        "ratio",
    }
    assert summary["series"] == 200
    # The ensemble's part within 8 KiB; exact windows need the seasonal residual window as
    # doubles (3000 x 8) and the shift's tape. The change tracker that names alert kinds
    # adds its 192 times, readings and baselines to both.
    assert summary["series_bytes"] <= 8 * 1024
    assert summary["exact_series_bytes"] >= 8 * 3000
    assert summary["tracker_bytes"] <= 24 * 192 + 200
    assert summary["ratio"] >= 2.0
    mib = summary["bytes_per_series"] * 200 / 2**20
    assert abs(summary["epoch_mib"] - mib) < 0.01
    assert any("bytes/key" in line for line in lines[:-1])
