"""`python -m bench.llm_stage --quick` as a subprocess: the stage's figures hold up.

The benchmark runs under its latency model (fixed + per prompt token + per completion
token, from the simulator's `usage` counts); its last stdout line is one JSON object. The
test checks what could go wrong in the stage, not the inputs echoed back: every event
answered, no dead letters, packing really packs (fewer requests, more prompt tokens per
request), and no case beats the limit its own tokens allow under the model. It asserts no
throughput floor: the machine may be busy.

The run uses a latency model a quarter of the benchmark's default (40 ms + 0.05 ms per prompt
token + 4 ms per completion token): every check here is relative to the model the run reports
(limits, service times, ratios), so a faster model proves the same and the run takes about
40 s instead of about 100 s (a pack of 16 items costs ~3 s instead of ~11 s a round).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CASES = ("naive", "fanout", "pack", "adaptive", "light")
QUARTER_MODEL = (
    "--latency-ms",
    "40",
    "--ms-per-prompt-token",
    "0.05",
    "--ms-per-completion-token",
    "4",
)


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.llm_stage", "--quick", *QUARTER_MODEL],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures


def service_ms(model: dict[str, float], prompt: float, completion: float) -> float:
    return (
        model["fixed_ms"]
        + model["ms_per_prompt_token"] * prompt
        + model["ms_per_completion_token"] * completion
    )


@pytest.mark.timeout(660)
def test_every_event_answered_without_dead_letters(result: dict[str, Any]) -> None:
    for case in CASES:
        assert result[f"{case}_events"] > 0, case
        assert result[f"{case}_answered"] == result[f"{case}_events"], case
        assert result[f"{case}_dead_letters"] == 0, case
        # Every answered event came from an answered request the simulator counted.
        assert result[f"{case}_answered_requests"] >= 1, case
        assert result[f"{case}_prompt_tokens_per_event"] > 0, case
        assert result[f"{case}_completion_tokens_per_event"] > 0, case


@pytest.mark.timeout(660)
def test_pack_packs(result: dict[str, Any]) -> None:
    b = result["pack_batch_size"]
    assert b > 1
    assert result["fanout_requests_per_event"] == pytest.approx(1.0)
    assert result["pack_requests_per_event"] <= 1.1 / b
    # One pack request carries many items: more prompt and completion tokens per request
    # than a fanout request, fewer prompt tokens per event (the system prompt is shared).
    assert result["pack_prompt_tokens_per_request"] > 2 * result["fanout_prompt_tokens_per_request"]
    assert result["pack_completion_tokens_per_request"] > (
        (b / 2) * result["fanout_completion_tokens_per_request"]
    )
    assert result["pack_prompt_tokens_per_event"] < result["fanout_prompt_tokens_per_event"]
    assert result["pack_mean_batch_size"] > b / 2


@pytest.mark.timeout(660)
def test_limits_follow_the_latency_model(result: dict[str, Any]) -> None:
    model = result["latency_model"]
    assert model["ms_per_prompt_token"] > 0 and model["ms_per_completion_token"] > 0
    c, b = result["server_concurrency"], result["pack_batch_size"]
    # Under per-token costs a request of B items takes longer than one of 1 item.
    assert result["pack_service_ms"] > result["fanout_service_ms"]
    # The fanout limit is C / S(1 item), with S from the tokens the run observed.
    s1 = service_ms(
        model,
        result["fanout_prompt_tokens_per_request"],
        result["fanout_completion_tokens_per_request"],
    )
    assert result["fanout_service_ms"] == pytest.approx(s1, rel=0.01)
    assert result["fanout_limit_per_s"] == pytest.approx(c * 1000 / s1, rel=0.01)
    assert result["pack_limit_per_s"] == pytest.approx(
        c * b * 1000 / result["pack_service_ms"], rel=0.01
    )
    assert result["naive_limit_per_s"] == pytest.approx(1000 / result["naive_service_ms"], rel=0.01)
    for case in ("naive", "fanout", "pack", "adaptive"):
        ratio = result[f"{case}_ratio"]
        assert ratio is not None and 0 < ratio <= 1.2, (case, ratio)
    assert 0 < result["adaptive_throughput_ratio"] <= 1.2
    assert 0 <= result["adaptive_429_share"] < 1
    # The light case's limit is its offered load (no timed bound here: the machine may be
    # busy); its requests carry about one item each.
    assert 0 < result["light_ratio"] <= 1.2
    assert result["light_requests_per_event"] <= 1.0


@pytest.mark.timeout(660)
def test_two_endpoints_and_failover_lose_nothing(result: dict[str, Any]) -> None:
    """The two-endpoint cases answer everything, and the failover case (primary killed mid-
    run) loses no item and reports when the first moved request was answered; no speed is
    asserted, only that the figures exist and are consistent."""
    for case in ("single", "dual", "failover"):
        assert result[f"{case}_answered"] == result[f"{case}_events"] > 0, case
        assert result[f"{case}_dead_letters"] == 0, case
    assert result["single_events"] == result["dual_events"]  # the same items
    assert result["two_endpoint_ratio"] > 0
    assert result["failover_lost"] == 0
    assert result["failover_s"] is not None and result["failover_s"] > 0
    assert result["failover_moved_items"] > 0
    by = result["failover_by_endpoint"]
    assert by["primary"] > 0 and by["secondary"] > 0
    assert by["primary"] + by["secondary"] == result["failover_events"]
