"""The fault scenarios of `bench/faults.py`, short variants (about 3 minutes in all).

Each test runs one scenario against the session's Tansu broker (the broker-stall scenario
freezes it for a few seconds and always resumes it) and asserts the scenario's own checks:
lost = 0, unseen = 0, inconsistent = 0, no LLM request repeated for a cached answer, plus
what the scenario is about (exit codes, messages, bounded state). The full variants
(`python -m bench.faults`) are too long for the suite; docs/RELIABILITY.md has their figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.broker import TansuBroker
from support.faults import run_scenario


def _run(name: str, broker: TansuBroker, tmp_path: Path) -> dict:
    figures = run_scenario(name, quick=True, workdir=tmp_path, broker=broker)
    print(json.dumps({name: figures}, default=str))
    return figures


@pytest.mark.parametrize(
    "name",
    [
        "storm",
        "storm_2p",
        "rescale",
        "graceful",
        "broker_stall",
        "llm_outage",
        "sink_failure",
        "expired_offset",
        "damaged_recovery",
        "step_ids",
        "fuzz",
    ],
)
def test_fault_scenario(name: str, kafka_broker: TansuBroker, tmp_path: Path) -> None:
    figures = _run(name, kafka_broker, tmp_path)
    assert figures["lost"] == 0, figures
    assert figures["passed"], figures["failures"]


def test_state_stays_bounded(kafka_broker: TansuBroker, tmp_path: Path) -> None:
    """Idle keys expire and cached answers expire (`llm.cache_ttl_s`): RSS and the rocksdict
    stores level off. The recovery store is reported only (Bytewax keeps a tombstone row per
    discarded key)."""
    figures = _run("bounded_state", kafka_broker, tmp_path)
    assert figures["lost"] == 0, figures
    assert figures["rss_growth_second_half"] <= 0.15, figures["curve"]
    assert figures["passed"], figures["failures"]
