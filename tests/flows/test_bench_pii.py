"""`python -m bench.pii` on a small corpus: its correctness fields (not its speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_pii_small_corpus_leaks_nothing() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.pii", "--records", "400", "--seed", "11"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("recall_min", "precision_min", "pii_in_prompts", "pii_in_logs"):
        assert key in result
    assert result["prompts"] > 0
    assert result["pii_in_prompts"] == 0
    assert result["pii_in_logs"] == 0
    assert result["pii_in_outputs"] == 0
    # Memory, windows and pending work in the recovery snapshots: redacted before kept.
    assert result["pii_in_state"] == 0
    # The reference stores keep profiles and documents as given (searched, so it is seen).
    assert result["pii_in_reference_stores"] > 0
    assert result["recall_min"] >= 0.99
    assert result["precision_min"] >= 0.95
