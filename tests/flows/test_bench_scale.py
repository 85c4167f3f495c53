"""`python -m bench.scale` (a short variant) as a subprocess: nothing lost at either scale.

8,000 events (chats, metrics, business events, invalid records) through one process and
through a cluster of two processes of one config, against a broker and the LLM simulator the
benchmark starts itself. The benchmark's last stdout line is one JSON object. (The checks are
accounting, not rates: 800 chats and 7,200 other records exercise both scales as 20,000 did.)

The test checks outcomes, not durations (the machine may be busy): every input record and
every chat is accounted for at both scales, and every chat item the LLM saw carried its
user's profile, although each process read the profiles topic into its own store.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EVENTS = 8_000
KEYS = {
    "events",
    "one_process_events_per_s",
    "two_process_events_per_s",
    "ratio",
    "lost",
    "profiles_found_share",
}


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--events", str(EVENTS)],
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
def test_last_line_has_the_figures(result: dict[str, Any]) -> None:
    assert set(result) >= KEYS
    assert result["events"] == EVENTS
    assert result["one_process_events_per_s"] > 0 and result["two_process_events_per_s"] > 0
    # One peak RSS per process of each run.
    assert len(result["one_process_peak_rss_mb"]) == 1
    assert len(result["two_process_peak_rss_mb"]) == 2


@pytest.mark.timeout(660)
def test_nothing_lost_and_every_chat_has_its_profile(result: dict[str, Any]) -> None:
    assert result["lost"] == 0
    assert result["profiles_found_share"] == 1.0
    # Not vacuous: both runs sent the chats to the LLM.
    assert [p for p, n in result["llm_requests"]] == [1, 2]
    assert all(n > 0 for _, n in result["llm_requests"])
