"""Bytes one epoch's snapshot writes for warmed metric series: default sketches vs exact windows.

    python -m bench.snapshot [--series 10000] [--prototypes 16] [--readings 5000]

Every key a Bytewax epoch touched is snapshotted again: the `anomaly.detect` step pickles each
key's `EntityDetector.state()`. This builds `--series` warmed, active series, touches each
with one new reading, and sums the pickled size of each key's state, once with the default
`AnomalyConfig` (ranks from `WindowSketch`es, format 4) and once, the baseline, with exact
rank windows (`exact_ranks = true`, format 2: what the flow wrote before the
sketches), both in this process on the same readings. The series' own part
(`state["series"]`) is reported apart from the change tracker's (`state["change"]`), which is
the same in both.

Warming 10,000 series from scratch would take minutes, so `--prototypes` series are warmed
with `--readings` readings each (daily patterns with noise and spikes at different scales),
and every series is resumed from one of them, as a restarted flow resumes its keys, under its
own entity name, before its new reading. A warmed snapshot's size depends on the window
lengths, which are full in every one of them, far more than on the values. Series are
handled one at a time, so memory stays that of one detector.

Prints bytes per key and per series, MiB per epoch and the ratio, the time to encode and to
resume one key's state, and as the last line one JSON object: `series`, `bytes_per_series`
(whole key), `series_bytes` (the ensemble's part), `tracker_bytes`, `exact_bytes_per_series`,
`exact_series_bytes`, `epoch_mib`, `exact_epoch_mib`, `ratio` (exact / default, whole keys).
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import random
import sys
import time
from typing import Any

from config.models import AnomalyConfig
from core.records import Event, Kind
from operators.anomaly import EntityDetector
from operators.anomaly.series import EnsembleSeries

T0 = 1_700_000_000.0 - (1_700_000_000.0 % 86_400)
STEP_S = 300.0
MIB = 1024 * 1024


def reading(seed: int, i: int) -> float:
    """Reading `i` of prototype `seed`: a daily pattern at the prototype's scale, noise and
    occasional spikes (CPU percentages, latencies, byte counts...)."""
    rnd = random.Random(seed * 1_000_003 + i)
    scale = 10.0 ** (seed % 7 - 2)
    level = 50 + 20 * math.sin(2 * math.pi * (i % 288) / 288 + seed)
    value = level + rnd.gauss(0, 2 + seed % 5)
    if rnd.random() < 0.003:
        value *= 3
    return round(value * scale, 6) if seed % 2 else value * scale


def event(entity: str, seed: int, i: int) -> Event:
    return Event(
        event_id=f"{entity}-{i}",
        source=f"metrics[{seed % 4}]@{i}",
        tenant="acme",
        kind=Kind.METRIC,
        entity=entity,
        ts=T0 + i * STEP_S,
        payload={"value": reading(seed, i), "unit": None, "tags": {}},
        ingest_ts=0.0,
    )


def warm(cfg: AnomalyConfig, seed: int, readings: int) -> bytes:
    """A prototype series warmed with `readings` readings, as the pickled state of its key."""
    det = EntityDetector(cfg)
    batch = 500
    for start in range(0, readings, batch):
        stop = min(start + batch, readings)
        det.process([event(f"proto-{seed}", seed, i) for i in range(start, stop)], now=stop)
    return pickle.dumps(det.state())


def measure_one(
    cfg: AnomalyConfig, series: int, prototypes: int, readings: int
) -> dict[str, float]:
    """Bytes and times per key for one configuration."""
    protos = [warm(cfg, seed, readings) for seed in range(min(prototypes, series))]
    whole = part = tracker = 0
    encode = resume = 0.0
    for k in range(series):
        seed = k % len(protos)
        started = time.perf_counter()
        det = EntityDetector(cfg, pickle.loads(protos[seed]))
        resume += time.perf_counter() - started
        det.process([event(f"host-{k:05d}.cpu", seed, readings)], now=readings + 1.0)
        if not isinstance(det.series, EnsembleSeries):
            msg = f"bench.snapshot: the detector is {det.series.name!r}, not the ensemble"
            raise TypeError(msg)
        started = time.perf_counter()
        state = det.state()
        whole += len(pickle.dumps(state))
        encode += time.perf_counter() - started
        part += len(pickle.dumps(state["series"]))
        tracker += len(pickle.dumps(state["change"]))
    return {
        "bytes": whole / series,
        "series_bytes": part / series,
        "tracker_bytes": tracker / series,
        "epoch_mib": whole / MIB,
        "encode_us": encode / series * 1e6,
        "resume_us": resume / series * 1e6,
    }


def measure(series: int, prototypes: int, readings: int) -> dict[str, Any]:
    sketch = measure_one(AnomalyConfig(), series, prototypes, readings)
    exact = measure_one(AnomalyConfig(exact_ranks=True), series, prototypes, readings)
    return {
        "series": series,
        "bytes_per_series": round(sketch["bytes"], 1),
        "series_bytes": round(sketch["series_bytes"], 1),
        "tracker_bytes": round(sketch["tracker_bytes"], 1),
        "exact_bytes_per_series": round(exact["bytes"], 1),
        "exact_series_bytes": round(exact["series_bytes"], 1),
        "epoch_mib": round(sketch["epoch_mib"], 2),
        "exact_epoch_mib": round(exact["epoch_mib"], 2),
        "ratio": round(exact["bytes"] / sketch["bytes"], 3),
        "sketch": sketch,
        "exact": exact,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--series", type=int, default=10_000, help="warmed series touched")
    p.add_argument("--prototypes", type=int, default=16, help="distinct warmed series")
    p.add_argument("--readings", type=int, default=5000, help="readings warming each")
    args = p.parse_args(argv)
    if args.series < 1 or args.prototypes < 1 or args.readings < 1:
        p.error("--series, --prototypes and --readings must be at least 1")

    r = measure(args.series, args.prototypes, args.readings)
    print(f"{r['series']} warmed series, one epoch touching all of them (ensemble):")
    for label, m in (("sketches (default)", r["sketch"]), ("exact windows", r["exact"])):
        print(
            f"  {label:19s} {m['bytes']:9,.1f} bytes/key (series {m['series_bytes']:8,.1f}, "
            f"tracker {m['tracker_bytes']:6,.1f})  {m['epoch_mib']:8.2f} MiB/epoch   "
            f"encode {m['encode_us']:5.0f} µs/key  resume {m['resume_us']:5.0f} µs/key"
        )
    print(f"  ratio exact / default: {r['ratio']:.2f}x")
    print(json.dumps({k: v for k, v in r.items() if k not in ("sketch", "exact")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
