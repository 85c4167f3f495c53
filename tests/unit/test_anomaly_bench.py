"""Smoke test of `bench.nab`: generated NAB-style CSVs in, NAB result files out."""

from __future__ import annotations

import csv
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import nab


def write_series(path: Path, n: int, spike: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = datetime(2014, 4, 1, tzinfo=UTC).replace(tzinfo=None)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "value"])
        for i in range(n):
            v = 50 + 20 * math.sin(2 * math.pi * (i % 288) / 288) + 0.1 * ((i * 7919) % 13)
            if i == spike:
                v = 200.0
            w.writerow([(t0 + timedelta(minutes=5 * i)).strftime("%Y-%m-%d %H:%M:%S"), v])


def test_bench_nab_writes_scored_results(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_series(data / "catA" / "with_spike.csv", 1500, spike=1300)
    write_series(data / "catB" / "quiet.csv", 800, spike=None)
    out = tmp_path / "results"
    assert nab.main(["--data", str(data), "--out", str(out)]) == 0

    rows = list(csv.DictReader((out / "catA" / "with_spike.csv").open()))
    assert len(rows) == 1500
    assert list(rows[0]) == ["timestamp", "value", "anomaly_score", "alert"]
    scores = [float(r["anomaly_score"]) for r in rows]
    assert all(0.0 <= s <= 1.0 for s in scores)
    alerts = [i for i, r in enumerate(rows) if r["alert"] == "1"]
    assert 1300 in alerts
    assert all(scores[i] >= 0.9 for i in alerts)
    quiet = list(csv.DictReader((out / "catB" / "quiet.csv").open()))
    assert len(quiet) == 800


def test_bench_nab_config_and_detector_override(tmp_path: Path) -> None:
    toml = tmp_path / "dep.toml"
    toml.write_text('[anomaly]\ndetector = "ensemble"\nalert_threshold = 0.95\n')
    cfg = nab.load_anomaly_config(str(toml), "ewma")
    assert (cfg.detector, cfg.alert_threshold) == ("ewma", 0.95)
    assert nab.load_anomaly_config(None).detector == "ensemble"
