"""`python -m bench.prompts --quick` as a subprocess: prompt build cost and the budget held
with and without calibration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_bench_prompts_quick_run() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.prompts", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    for shape in ("typical", "rich"):
        assert 0 < figures[f"{shape}_old_us"] < figures[f"{shape}_redact_us"]
    assert figures["calibrated_over_share"] < 0.02
    assert figures["uncalibrated_over_share"] > 0.5
    assert figures["calibrated_mean_use"] > 0.4
