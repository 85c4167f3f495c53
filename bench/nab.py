"""Numenta Anomaly Benchmark runs of the pipeline's own detectors, plus their cost.

    python -m bench.nab --data DIR --out DIR [--config config/local.toml] [--detector NAME]
    python -m bench.nab --cost [--points 20000]
    python -m bench.nab --cost --against REV [--points 40000] [--repeat 3]
    python -m bench.nab --throughput [--events 200000] [--repeat 2]
    python -m bench.nab --synthetic [--seeds 20] [--seed-offset 0] [--hold N]
    python -m bench.nab --rates [--seeds 5] [--repeat 5]

`--data` is laid out like NAB's `data/` folder (`<category>/<file>.csv`, columns
`timestamp,value`, any depth). Each series goes through `operators.anomaly.series.make_series`
(the code the pipeline's `anomaly` step runs per metric series), with the `[anomaly]` table of
`--config` (default: the model's defaults with `detector = "ensemble"`), one fresh detector per
file and the same configuration for every file. It writes `OUT/<category>/<file>.csv` with
`timestamp,value,anomaly_score,alert` (`alert` is 1 where the detector itself alerted at its
configured threshold), ready for NAB's scorer:

    python NABSCORE OUT                       # NAB's threshold sweep
    python NABSCORE OUT --threshold 0.9       # the configured threshold

where NABSCORE is a scorer implementing NAB's rules (such as the NAB repository's; it is not
part of this project, and scorers usually need numpy, which is not a project dependency).
The last stdout line is one JSON object: `files`, `readings`, `seconds`, `detector`,
`alert_threshold`.

`--cost` times each detector alone on a synthetic series (µs per reading); with `--against
REV` it times the default series detector of this checkout against that of git revision REV
(checked out in a temporary worktree; or of the checkout in directory REV), in alternating
subprocesses on the same readings,
best of `--repeat` rounds each, on one long series (`steady`) and on 200 young series
interleaved (`young`): the budget check against an earlier release. `--throughput`
runs `bench.throughput`'s workload once through a Bytewax passthrough and then through the
pipeline with each metric detector, in one broker session, so the ratios compare.
`--synthetic` runs generated series with known changes of each kind through the pipeline's
per-entity detector and reports detection, delay, false alarms and the kinds named
(`bench.synthetic`). `--rates` runs generated busy event-rate entities with a known burst
and drop through it, with and without the rate series (`bench.rates`): detection, delay,
the detector that raised them, false alarms, µs per event and snapshot bytes.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import rates as rates_bench
from bench import synthetic as kinds_bench
from config.models import AnomalyConfig
from operators.anomaly.series import make_series


def load_anomaly_config(path: str | None, detector: str | None = None) -> AnomalyConfig:
    """The `[anomaly]` table of a deployment file (or the defaults with the ensemble)."""
    raw: dict[str, Any] = {"detector": "ensemble"}
    if path:
        with open(path, "rb") as f:
            raw.update(tomllib.load(f).get("anomaly", {}))
    if detector:
        raw["detector"] = detector
    return AnomalyConfig.model_validate(raw)


def _epoch(text: str) -> float:
    dt = datetime.fromisoformat(text.strip())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def run_file(src: Path, dst: Path, cfg: AnomalyConfig) -> int:
    """Score one `timestamp,value` CSV into a NAB result file; returns the number of rows."""
    det = make_series(cfg)
    with src.open(newline="") as f:
        rows = list(csv.reader(f))[1:]
    dst.parent.mkdir(parents=True, exist_ok=True)
    with dst.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["timestamp", "value", "anomaly_score", "alert"])
        for row in rows:
            if not row:
                continue
            v = det.update(_epoch(row[0]), float(row[1]))
            score = min(1.0, max(0.0, v.score))
            out.writerow([row[0], row[1], f"{score:.6f}", int(v.alert)])
    return len(rows)


def run_dir(data: Path, out: Path, cfg: AnomalyConfig) -> tuple[int, int, float]:
    """Score every CSV under `data` into the same layout under `out`."""
    files = sorted(data.rglob("*.csv"))
    if not files:
        msg = f"no CSV files under {data}"
        raise FileNotFoundError(msg)
    started = time.perf_counter()
    rows = sum(run_file(p, out / p.relative_to(data), cfg) for p in files)
    return len(files), rows, time.perf_counter() - started


# --- cost -----------------------------------------------------------------------------------


def synthetic(n: int, seed: int = 7) -> list[tuple[float, float]]:
    """A daily-seasonal noisy series with occasional spikes, 5-minute readings."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        ts = 1_600_000_000.0 + 300.0 * i
        v = 50 + 20 * math.sin(2 * math.pi * (i % 288) / 288) + rnd.gauss(0, 3)
        if rnd.random() < 0.002:
            v += 60
        out.append((ts, v))
    return out


def cost(points: int) -> dict[str, float]:
    """µs per reading of each detector alone and of each configured series detector."""
    from operators.anomaly.detectors import (
        ContextNovelty,
        EwmaZScore,
        RankShift,
        SeasonalResidual,
        ShapeNovelty,
    )

    cfg = load_anomaly_config(None)
    series = synthetic(points)
    timings: dict[str, float] = {}

    def timed(name: str, step: Any) -> None:
        started = time.perf_counter()
        for ts, v in series:
            step(ts, v)
        timings[name] = (time.perf_counter() - started) / len(series) * 1e6

    ewma = EwmaZScore(cfg.ewma_alpha, cfg.z_threshold, cfg.warmup, cfg.suppress_s)
    timed("ewma_zscore", lambda ts, v: ewma.update(v, ts))
    season = SeasonalResidual(
        cfg.season_slots, cfg.season_alpha, cfg.rank_window, cfg.season_period_s
    )
    ranks: list[float] = []
    timed("seasonal_residual", lambda ts, v: ranks.append(season.update(v, ts)))
    shift = RankShift(cfg.shift_span, cfg.rank_window)
    it = iter(ranks)
    timed(f"residual_shift(span={cfg.shift_span})", lambda ts, v: shift.update(next(it)))
    for lv, order in zip(cfg.context_levels, cfg.context_orders, strict=True):
        ctx = ContextNovelty(lv, order, cfg.context_capacity)
        timed(f"context_novelty(levels={lv},orders={order})", lambda ts, v, c=ctx: c.update(v))
    shapes = ShapeNovelty(cfg.shape_levels or (8,), cfg.shape_capacity)
    timed(f"shape_novelty(levels={shapes.levels})", lambda ts, v: shapes.update(v))
    for name in ("ewma", "ensemble"):
        det = make_series(load_anomaly_config(None, name))
        timed(f"series:{name}", det.update)
    # The baseline of the default sketches, in the same run: the ensemble on exact windows.
    exact = load_anomaly_config(None).model_copy(update={"exact_ranks": True})
    timed("series:ensemble(exact windows)", make_series(exact).update)
    # and without the new-category gate on the seasonal residual (`shape_levels = ()`)
    ungated = load_anomaly_config(None).model_copy(update={"shape_levels": ()})
    timed("series:ensemble(no shape gate)", make_series(ungated).update)
    # and with neither: the ensemble as it was before both (stop 19)
    before = exact.model_copy(update={"shape_levels": ()})
    timed("series:ensemble(exact windows, no gate)", make_series(before).update)
    return timings


_TIMED_CHILD = """
import pickle, sys, time
sys.path.insert(0, sys.argv[1])
from bench.nab import load_anomaly_config
from operators.anomaly.series import make_series
n, readings = pickle.loads(sys.stdin.buffer.read())
dets = [make_series(load_anomaly_config(None)) for _ in range(n)]
started = time.perf_counter()
for k, ts, v in readings:
    dets[k].update(ts, v)
print((time.perf_counter() - started) / len(readings) * 1e6)
"""

YOUNG_SERIES, YOUNG_READINGS = 200, 400
"""`cost_against`'s second workload: this many series, interleaved, of (at most) this many
readings each (`points` / 100)."""


def cost_against(rev: str, points: int, rounds: int) -> dict[str, Any]:
    """µs per reading of the default series detector here and at git revision `rev` (or in
    the checkout at the directory `rev`).

    Two workloads: one long series (`synthetic(points)`, a detector in its steady state) and
    `YOUNG_SERIES` series interleaved, up to `YOUNG_READINGS` noisy readings each (bench.snapshot's
    prototypes: detectors learning, as in a pipeline that just met its entities). `rev` is
    checked out in a temporary worktree (removed afterwards); each round times both trees in
    fresh subprocesses, alternating, on the same readings, and the best round of each counts
    (a shared machine's noise only ever adds time)."""
    import pickle
    import subprocess
    import tempfile

    from bench.snapshot import STEP_S, T0, reading

    here = Path(__file__).resolve().parent.parent
    young = [
        (k, T0 + STEP_S * i, reading(k % 16, i))
        for i in range(min(YOUNG_READINGS, max(points // 100, 1)))
        for k in range(YOUNG_SERIES)
    ]
    workloads = {
        "steady": pickle.dumps((1, [(0, ts, v) for ts, v in synthetic(points)])),
        "young": pickle.dumps((YOUNG_SERIES, young)),
    }

    def timed(tree: Path, payload: bytes) -> float:
        out = subprocess.run(
            [sys.executable, "-c", _TIMED_CHILD, str(tree)],
            input=payload,
            capture_output=True,
            cwd=tree,
            check=True,
        )
        return float(out.stdout.decode().split()[-1])

    runs: dict[str, dict[str, list[float]]] = {w: {"here": [], rev: []} for w in workloads}

    def alternate(old: Path) -> None:
        for _ in range(rounds):
            for w, payload in workloads.items():
                runs[w][rev].append(timed(old, payload))
                runs[w]["here"].append(timed(here, payload))

    if Path(rev).is_dir():  # another checkout, as it is
        alternate(Path(rev).resolve())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            old = Path(tmp) / "rev"
            git = ["git", "-C", str(here)]
            subprocess.run([*git, "worktree", "add", "-q", "--detach", str(old), rev], check=True)
            try:
                alternate(old)
            finally:
                subprocess.run([*git, "worktree", "remove", "--force", str(old)], check=False)
    result: dict[str, Any] = {"points": points, "rev": rev}
    for w, by_tree in runs.items():
        best = {k: min(v) for k, v in by_tree.items()}
        result[w] = {
            "us_per_reading": {k: [round(x, 2) for x in v] for k, v in by_tree.items()},
            "best": {k: round(v, 2) for k, v in best.items()},
            "ratio": round(best["here"] / best[rev], 3),
        }
    return result


# --- throughput -----------------------------------------------------------------------------


def throughput(events: int, repeat: int, detectors: list[str]) -> dict[str, Any]:
    """Passthrough vs the pipeline with each metric detector, on one broker and workload."""
    import tempfile
    import zlib

    from bench import throughput as tp
    from support import workload
    from support.broker import TansuBroker, create_topic, produce

    records = workload.metrics(int(events * 0.7), series=1000)
    records += workload.business(int(events * 0.28), accounts=1000)
    records += workload.malformed(events - len(records))
    records.sort(key=lambda r: zlib.crc32(r[1]) % 1000)
    best: dict[str, float] = {}
    with TansuBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        bootstrap = broker.bootstrap
        topic = create_topic(bootstrap, "bench-in", 1)
        produce(bootstrap, topic, [v for _, v in records])
        for i in range(repeat):
            out = create_topic(bootstrap, f"bench-pass-{i}", 1)
            r = tp._run_child(["passthrough", bootstrap, topic, out])
            best["passthrough"] = min(best.get("passthrough", math.inf), r["seconds"])
            for name in detectors:
                outs = {
                    k: create_topic(bootstrap, f"bench-{name}-{k}-{i}", 1)
                    for k in ("responses", "alerts", "dead_letters", "audit", "ledger")
                }
                work = Path(tmp) / f"run-{name}-{i}"
                work.mkdir()
                cfg_path = tp._config(bootstrap, topic, outs, work)
                with cfg_path.open("a") as f:
                    f.write(f'\n[anomaly]\ndetector = "{name}"\n')
                r = tp._run_child(["pipeline", str(cfg_path)])
                best[name] = min(best.get(name, math.inf), r["seconds"])
    rates = {k: events / s for k, s in best.items()}
    return {
        "events": events,
        "events_per_s": {k: round(v) for k, v in rates.items()},
        "ratio_to_passthrough": {
            k: round(v / rates["passthrough"], 3) for k, v in rates.items() if k != "passthrough"
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, help="folder laid out like NAB's data/")
    p.add_argument("--out", type=Path, help="results folder (NAB results layout)")
    p.add_argument("--config", help="deployment TOML whose [anomaly] table to use")
    p.add_argument("--detector", choices=["ensemble", "ewma"], help="override anomaly.detector")
    p.add_argument("--cost", action="store_true", help="µs per reading of each detector")
    p.add_argument("--points", type=int, help="readings timed (20,000; 40,000 with --against)")
    p.add_argument(
        "--against", metavar="REV", help="with --cost: this checkout vs git REV (or a directory)"
    )
    p.add_argument("--throughput", action="store_true", help="pipeline events/s per detector")
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument(
        "--repeat", type=int, help="rounds (--throughput 1, --cost --against 3, --rates 5 at least)"
    )
    p.add_argument("--synthetic", action="store_true", help="alert kinds on generated series")
    p.add_argument("--seeds", type=int, default=20, help="generated series per kind")
    p.add_argument("--seed-offset", type=int, default=0, help="--synthetic: first seed")
    p.add_argument("--hold", type=int, help="override anomaly.change_hold_points")
    p.add_argument("--rates", action="store_true", help="event-rate series, burst and drop")
    args = p.parse_args(argv)

    if args.cost and args.against:
        result = cost_against(args.against, args.points or 40_000, args.repeat or 3)
        for w in ("steady", "young"):
            for name, us in result[w]["best"].items():
                rounds = result[w]["us_per_reading"][name]
                print(f"{w:6s} series:ensemble at {name:12s} {us:7.2f} µs/reading {rounds}")
            print(f"{w} ratio here / {args.against}: {result[w]['ratio']:.2f}")
        print(json.dumps(result))
        return 0
    if args.cost:
        for name, us in cost(args.points or 20_000).items():
            print(f"{name:45s} {us:7.2f} µs/reading")
        return 0
    if args.synthetic:
        result = kinds_bench.report(
            load_anomaly_config(args.config, args.detector),
            args.seeds,
            args.hold,
            args.seed_offset,
        )
        print(json.dumps(result))
        return 0
    if args.rates:
        seeds = 5 if args.seeds == 20 else args.seeds  # 20 is --synthetic's default
        result = rates_bench.report(
            load_anomaly_config(args.config, args.detector), seeds, max(args.repeat or 5, 5)
        )
        print(json.dumps(result))
        return 0
    if args.throughput:
        result = throughput(args.events, args.repeat or 1, ["ewma", "ensemble"])
        for name, rate in result["events_per_s"].items():
            ratio = result["ratio_to_passthrough"].get(name)
            extra = f"   ratio to passthrough {ratio:.2f}" if ratio is not None else ""
            print(f"{name:12s} {rate:10,d} events/s{extra}")
        print(json.dumps(result))
        return 0
    if args.data is None or args.out is None:
        p.error("--data and --out are required (or use --cost / --throughput)")
    cfg = load_anomaly_config(args.config, args.detector)
    files, rows, seconds = run_dir(args.data, args.out, cfg)
    threshold = cfg.alert_threshold if cfg.detector == "ensemble" else 0.5
    print(
        f"{files} files, {rows} readings in {seconds:.1f} s "
        f"({seconds / max(rows, 1) * 1e6:.1f} µs/reading), detector {cfg.detector}, "
        f"alert threshold {threshold}"
    )
    summary = {"files": files, "readings": rows, "seconds": round(seconds, 3)}
    print(json.dumps({**summary, "detector": cfg.detector, "alert_threshold": threshold}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
