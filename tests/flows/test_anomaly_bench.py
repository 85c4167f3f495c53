"""`python -m bench.nab --data DIR --out DIR` as a subprocess: NAB-style CSVs in, NAB result
files out, and `--config` / `--detector` change what it computes."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


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


def write_data(data: Path) -> None:
    write_series(data / "catA" / "with_spike.csv", 1500, spike=1300)
    write_series(data / "catB" / "quiet.csv", 800, spike=None)


def bench_nab(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m bench.nab ARGS` from the repository root; it must succeed."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.nab", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_nab(data: Path, out: Path, *extra: str) -> dict[str, Any]:
    proc = bench_nab("--data", str(data), "--out", str(out), *extra)
    summary: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return summary


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_bench_nab_writes_scored_results(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_data(data)
    out = tmp_path / "results"
    summary = run_nab(data, out)
    assert (summary["files"], summary["readings"]) == (2, 2300)
    assert (summary["detector"], summary["alert_threshold"]) == ("ensemble", 0.9)

    rows = read_rows(out / "catA" / "with_spike.csv")
    assert len(rows) == 1500
    assert list(rows[0]) == ["timestamp", "value", "anomaly_score", "alert"]
    scores = [float(r["anomaly_score"]) for r in rows]
    assert all(0.0 <= s <= 1.0 for s in scores)
    alerts = [i for i, r in enumerate(rows) if r["alert"] == "1"]
    assert 1300 in alerts
    assert all(scores[i] >= 0.9 for i in alerts)
    assert len(read_rows(out / "catB" / "quiet.csv")) == 800


def test_bench_nab_config_and_detector_override(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_data(data)
    toml = tmp_path / "dep.toml"
    toml.write_text('[anomaly]\ndetector = "ensemble"\nalert_threshold = 0.95\n')

    from_config = run_nab(data, tmp_path / "cfg", "--config", str(toml))
    assert (from_config["detector"], from_config["alert_threshold"]) == ("ensemble", 0.95)
    rows = read_rows(tmp_path / "cfg" / "catA" / "with_spike.csv")
    alerts = [r for r in rows if r["alert"] == "1"]
    assert alerts, "the spike alerts at the configured threshold too"
    assert all(float(r["anomaly_score"]) >= 0.95 for r in alerts)

    # --detector overrides the file's detector (its other settings stay): other scores.
    ewma = run_nab(data, tmp_path / "ewma", "--config", str(toml), "--detector", "ewma")
    assert ewma["detector"] == "ewma"
    ewma_rows = read_rows(tmp_path / "ewma" / "catA" / "with_spike.csv")
    assert [r["timestamp"] for r in ewma_rows] == [r["timestamp"] for r in rows]
    assert [r["anomaly_score"] for r in ewma_rows] != [r["anomaly_score"] for r in rows]


def test_bench_nab_cost_against_another_checkout(tmp_path: Path) -> None:
    """`--cost --against DIR`: this checkout's default detector timed against the one of
    another checkout (here a copy of this one's code), both workloads, alternating rounds.
    (`--against REV` checks REV out into a temporary worktree first: the same timing.)"""
    other = tmp_path / "other"
    for part in (
        "bench",
        "config",
        "connectors",
        "core",
        "inference",
        "operators",
        "state",
        "support",
    ):
        shutil.copytree(REPO / part, other / part, ignore=shutil.ignore_patterns("__pycache__"))
    proc = bench_nab("--cost", "--against", str(other), "--points", "400", "--repeat", "2")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rev = str(other)
    assert (result["points"], result["rev"]) == (400, rev), proc.stdout
    for workload in ("steady", "young"):
        w = result[workload]
        assert [len(v) for v in w["us_per_reading"].values()] == [2, 2]
        assert all(v > 0 for v in w["best"].values())
        assert abs(w["ratio"] - w["best"]["here"] / w["best"][rev]) < 0.01  # (rounded)
        assert f"{workload} ratio here / {rev}" in proc.stdout
