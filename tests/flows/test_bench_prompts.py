"""`python -m bench.prompts --quick` as a subprocess: prompt build cost and the budget held
with and without calibration."""

from __future__ import annotations

import pytest

from support.harness import run_bench


@pytest.mark.timeout(300)
def test_bench_prompts_quick_run() -> None:
    figures, _ = run_bench("bench.prompts", "--quick")
    for shape in ("typical", "rich"):  # figures only: timings are not compared in tests
        assert figures[f"{shape}_old_us"] > 0 and figures[f"{shape}_redact_us"] > 0
    assert figures["calibrated_over_share"] < 0.02
    assert figures["uncalibrated_over_share"] > 0.5
    assert figures["calibrated_mean_use"] > 0.4
