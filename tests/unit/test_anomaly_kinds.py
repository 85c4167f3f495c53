"""`operators.anomaly.kinds.classify` (not yet wired into the pipeline, issue 13): the kind
of a change from the residuals around the alerting reading. Spikes and level shifts are
named; trends, variance and seasonality changes are still often named level shifts (see
the issue 13 note), so they are not asserted here."""

from __future__ import annotations

import random

from operators.anomaly.kinds import classify
from support.changes import changed_series

CHANGE = 500


def _noise(seed: int) -> list[float]:
    rnd = random.Random(seed)
    return [rnd.gauss(0.0, 1.0) for _ in range(CHANGE + 20)]


def test_a_single_outlier_is_a_spike() -> None:
    for seed in range(5):
        values = _noise(seed)[: CHANGE + 4]
        values[CHANGE] += 12.0
        change = classify(values, [0.0] * len(values), CHANGE)
        assert change.to_json()["kind"] == "spike"


def test_a_sustained_step_is_a_level_shift() -> None:
    for seed in range(5):
        values = [v + (8.0 if i >= CHANGE else 0.0) for i, v in enumerate(_noise(seed))]
        at = CHANGE + 8
        ev = classify(values[: at + 1], [0.0] * (at + 1), at).to_json()
        assert ev["kind"] == "level_shift"
        assert 6.0 < ev["after_level"] - ev["before_level"] < 10.0


def test_generated_series_carry_their_change_point() -> None:
    clean = changed_series(None, 1)
    assert clean.change_at is None and len(clean.ts) == len(clean.values)
    shifted = changed_series("level_shift", 1)
    assert shifted.change_at is not None and 0 < shifted.change_at < len(shifted.values)
