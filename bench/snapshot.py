"""Bytes one epoch's snapshot writes for warmed metric series: packed format vs the old layout.

    python -m bench.snapshot [--series 10000] [--prototypes 16] [--readings 5000]

Every key a Bytewax epoch touched is snapshotted again: the `anomaly.detect` step pickles each
key's `EntityDetector.state()` (default `AnomalyConfig`, ensemble detector). This builds
`--series` warmed, active series, touches each with one new reading, and sums the pickled
size of each key's state, once as the flow writes it (format 2, `EnsembleSeries.state`) and
once with the series in the unversioned layout the loader still accepts
(`series.legacy_state`), the baseline.

Warming 10,000 series from scratch would take minutes, so `--prototypes` series are warmed
with `--readings` readings each (daily patterns with noise and spikes at different scales),
and every series is resumed from one of them, as a restarted flow resumes its keys, under its
own entity name, before its new reading. A warmed snapshot's size depends on the window
lengths, which are full in every one of them, not on the values. Series are handled one at a
time, so memory stays that of one detector.

Prints bytes per series, MiB per epoch and the ratio, the time to encode and to resume one
key's state, and as the last line one JSON object: `series`, `bytes_per_series`,
`legacy_bytes_per_series`, `epoch_mib`, `ratio`.
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
from operators.anomaly.series import EnsembleSeries, legacy_state

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


def measure(series: int, prototypes: int, readings: int) -> dict[str, Any]:
    cfg = AnomalyConfig()
    protos = [warm(cfg, seed, readings) for seed in range(min(prototypes, series))]
    packed = legacy = 0
    encode = encode_legacy = resume = 0.0
    for k in range(series):
        seed = k % len(protos)
        started = time.perf_counter()
        det = EntityDetector(cfg, pickle.loads(protos[seed]))
        resume += time.perf_counter() - started
        det.process([event(f"host-{k:05d}.cpu", seed, readings)], now=readings + 1.0)

        started = time.perf_counter()
        packed += len(pickle.dumps(det.state()))
        encode += time.perf_counter() - started

        started = time.perf_counter()
        series_det = det.series
        if not isinstance(series_det, EnsembleSeries):
            msg = f"bench.snapshot: the default detector is {series_det.name!r}, not the ensemble"
            raise TypeError(msg)
        old = {**det.state(), "series": ("ensemble", legacy_state(series_det))}
        legacy += len(pickle.dumps(old))
        encode_legacy += time.perf_counter() - started
    return {
        "series": series,
        "bytes_per_series": round(packed / series, 1),
        "legacy_bytes_per_series": round(legacy / series, 1),
        "epoch_mib": round(packed / MIB, 2),
        "legacy_epoch_mib": round(legacy / MIB, 2),
        "ratio": round(legacy / packed, 3),
        "encode_us": encode / series * 1e6,
        "encode_legacy_us": encode_legacy / series * 1e6,
        "resume_us": resume / series * 1e6,
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
    print(
        f"{r['series']} warmed series, one epoch touching all of them "
        f"(ensemble, default AnomalyConfig):"
    )
    print(
        f"  packed (format 2): {r['bytes_per_series']:9,.1f} bytes/series "
        f"{r['epoch_mib']:8.2f} MiB/epoch   encode {r['encode_us']:6.0f} µs/key"
    )
    print(
        f"  unversioned:       {r['legacy_bytes_per_series']:9,.1f} bytes/series "
        f"{r['legacy_epoch_mib']:8.2f} MiB/epoch   encode {r['encode_legacy_us']:6.0f} µs/key"
    )
    print(f"  ratio {r['ratio']:.2f}x; resuming one key from its state: {r['resume_us']:.0f} µs")
    keys = ("series", "bytes_per_series", "legacy_bytes_per_series", "epoch_mib", "ratio")
    print(json.dumps({k: r[k] for k in keys}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
