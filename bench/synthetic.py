"""Alert kinds on generated series with known change points (`python -m bench.nab --synthetic`).

    python -m bench.nab --synthetic [--seeds 20] [--seed-offset 0] [--hold N] [--config FILE]

For each change kind (`support.changes.KINDS`: spike, level shift, trend, variance,
seasonality) and for clean series, `--seeds` generated series (seeds from `--seed-offset`,
default 0; five-minute readings of a daily pattern with noise, three quiet days or more, then
the change) go through
`operators.anomaly.EntityDetector`, the pipeline's own per-entity detector (the series
detector of `[anomaly]`, default the ensemble, and the change tracker that names each
alert's kind), as metric events, the wall clock following the event times. Per kind:

- `detected`: the share of series with an alert within a day (288 readings) of the change;
- `delay`: readings from the change to that alert's reading (median), and `held`: readings
  from the alert's reading to its emission (the tracker waits for readings after it to
  name the change; median);
- `kind_accuracy`: the share of detected changes whose first alert names the right kind, and
  `named`: how often each kind was named for them;
- `false_alarms_per_10k`: alerts before the change (and anywhere in a clean series) per
  10,000 such readings.

The last line is one JSON object: `seeds`, `hold`, `kinds` (per kind, the figures above) and
`false_alarms_per_10k`.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from config.models import AnomalyConfig
from core.records import Alert, Event, Kind
from operators.anomaly import EntityDetector
from support.changes import DAY, KINDS, changed_series


def _events(ts: tuple[float, ...], values: tuple[float, ...]) -> list[Event]:
    return [
        Event(
            f"m{i}",
            f"synthetic@{i}",
            "bench",
            Kind.METRIC,
            "series",
            t,
            {"value": v, "unit": None, "tags": {}},
            t,
        )
        for i, (t, v) in enumerate(zip(ts, values, strict=True))
    ]


def run_series(cfg: AnomalyConfig, kind: str | None, seed: int) -> dict[str, Any]:
    """One generated series through a fresh detector: its alerts (reading index where they
    were raised, where they were emitted, the kind named) and the change point."""
    series = changed_series(kind, seed)
    det = EntityDetector(cfg)
    index = {t: i for i, t in enumerate(series.ts)}
    alerts: list[tuple[int, int, str | None]] = []
    for i, e in enumerate(_events(series.ts, series.values)):
        for f in det.process([e], now=e.ts):
            if isinstance(f, Alert) and "event_rate" not in f.detector:
                alerts.append((index[f.ts], i, f.change["kind"] if f.change else None))
    for f in det.flush(series.ts[-1]):
        if isinstance(f, Alert) and "event_rate" not in f.detector:
            alerts.append((index[f.ts], len(series.ts) - 1, f.change["kind"] if f.change else None))
    return {"change_at": series.change_at, "n": len(series.ts), "alerts": alerts}


def synthetic(cfg: AnomalyConfig, seeds: int, offset: int = 0) -> dict[str, Any]:
    kinds: dict[str, Any] = {}
    fa_alerts = fa_readings = 0
    for kind in (*KINDS, None):
        detected = 0
        delays: list[int] = []
        held: list[int] = []
        named: Counter[str] = Counter()
        for seed in range(offset, offset + seeds):
            run = run_series(cfg, kind, seed)
            c = run["change_at"] if run["change_at"] is not None else run["n"]
            fa_alerts += sum(1 for at, _, _ in run["alerts"] if at < c)
            fa_readings += c
            if kind is None:
                continue
            hits = [a for a in run["alerts"] if c <= a[0] < c + DAY]
            if hits:
                at, out, name = hits[0]
                detected += 1
                delays.append(at - c)
                held.append(out - at)
                named[name or "none"] += 1
        if kind is None:
            continue
        kinds[kind] = {
            "detected": round(detected / seeds, 3),
            "delay": statistics.median(delays) if delays else None,
            "held": statistics.median(held) if held else None,
            "kind_accuracy": round(named[kind] / detected, 3) if detected else None,
            "named": dict(named.most_common()),
        }
    return {
        "seeds": seeds,
        "seed_offset": offset,
        "hold": cfg.change_hold_points,
        "kinds": kinds,
        "false_alarms_per_10k": round(fa_alerts / max(1, fa_readings) * 10_000, 2),
    }


def report(cfg: AnomalyConfig, seeds: int, hold: int | None, offset: int = 0) -> dict[str, Any]:
    if hold is not None:
        cfg = cfg.model_copy(update={"change_hold_points": hold})
    # The generated series are event-time only: no reading is late, the wall clock follows.
    cfg = cfg.model_copy(update={"allowed_lateness_s": 1e12})
    result = synthetic(cfg, seeds, offset)
    print(
        f"{seeds} series per kind (seeds from {offset}), detector {cfg.detector}, "
        f"change_hold_points {cfg.change_hold_points}"
    )
    print(f"{'kind':13s} {'detected':>8s} {'delay':>6s} {'held':>5s} {'kind ok':>8s}  named")
    for kind, r in result["kinds"].items():
        delay = "-" if r["delay"] is None else f"{r['delay']:g}"
        held = "-" if r["held"] is None else f"{r['held']:g}"
        acc = "-" if r["kind_accuracy"] is None else f"{r['kind_accuracy']:.2f}"
        print(f"{kind:13s} {r['detected']:8.2f} {delay:>6s} {held:>5s} {acc:>8s}  {r['named']}")
    print(f"false alarms per 10,000 readings before a change: {result['false_alarms_per_10k']}")
    return result
