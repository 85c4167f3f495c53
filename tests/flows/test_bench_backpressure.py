"""`python -m bench.backpressure` (a short variant) as a subprocess: the bound holds.

1,500 chats through the whole pipeline against an endpoint that serves one request at a time
at 0.2 s each, with `llm.max_pending_items` 256 and 32 items per request; the same run against
a fast endpoint is the baseline. The benchmark's last stdout line is one JSON object.

The test checks outcomes, not durations (the machine may be busy): every chat is answered
exactly once, nothing is lost or dead-lettered, no request is refused, the LLM stage reached
its bound (so the inputs really paused) and never held more than the bound plus the overshoot
`runtime.backpressure` documents, one read batch per input partition (`kafka.batch_size`,
here one file read 32 lines at a time), and the slow run's peak RSS stays near the fast run's.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CHATS, LIMIT, BATCH = 1500, 256, 32


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.backpressure",
            "--chats",
            str(CHATS),
            "--latency-s",
            "0.2",
            "--server-concurrency",
            "1",
            "--max-pending",
            str(LIMIT),
            "--batch-size",
            str(BATCH),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    figures: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures


@pytest.mark.timeout(660)
def test_every_chat_answered_once_and_none_lost(result: dict[str, Any]) -> None:
    assert result["chats"] == CHATS
    for prefix in ("", "baseline_"):
        assert result[f"{prefix}answered"] == CHATS, prefix
        assert result[f"{prefix}lost"] == 0, prefix
        assert result[f"{prefix}repeated"] == 0, prefix
        assert result[f"{prefix}dead_letters"] == 0, prefix
        # One request at a time against a server that takes one: nothing refused or wasted,
        # and the requests are packed (at most one partial batch per read beyond full ones).
        assert result[f"{prefix}requests_429"] == 0, prefix
        assert math.ceil(CHATS / BATCH) <= result[f"{prefix}requests"] <= 2 * CHATS / BATCH


@pytest.mark.timeout(660)
def test_pending_stays_within_the_bound_plus_one_read_batch(result: dict[str, Any]) -> None:
    assert result["max_pending_limit"] == LIMIT
    # The read batch defaults to the batch size: the documented overshoot is one read batch.
    assert result["read_batch"] == result["overshoot_allowed"] == BATCH
    assert result["max_pending_seen"] <= LIMIT + result["overshoot_allowed"]
    assert result["baseline_max_pending_seen"] <= LIMIT + result["overshoot_allowed"]
    # Not vacuous: the slow endpoint filled the stage, and the input paused at the bound.
    assert result["max_pending_seen"] >= LIMIT
    assert result["paused_reads"] > 0
    assert result["samples"] > 0
    assert result["pending_at_exit"] == 0 and result["baseline_pending_at_exit"] == 0


@pytest.mark.timeout(660)
def test_the_backlog_waits_in_the_input_not_in_memory(result: dict[str, Any]) -> None:
    slow, fast = result["peak_rss_mib"], result["baseline_peak_rss_mib"]
    assert slow > 0 and fast > 0
    assert result["rss_ratio"] == pytest.approx(slow / fast, rel=0.01)
    assert result["rss_ratio"] <= 1.25
    assert all(result["targets_met"].values()), result["targets_met"]
