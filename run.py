"""Launch ContextStream: validate config, prepare recovery, run the flow, print a summary.

    python run.py                               # the embedded default (config/local.toml)
    python run.py config/kafka-dev.toml -r recovery -s 10 -b 0

With the local profile and no LLM endpoint configured (`llm.base_url` or `OPENAI_BASE_URL`),
the bundled LLM simulator is started on loopback and its answers are marked "[simulated]".

Recovery: the directory (default `out/recovery` for file output, `recovery` otherwise) gets
its partitions created when it is new (then a marker file records how many); it is never
deleted or re-created. A directory whose partition files are missing (the marker says they
existed), unreadable, or from different directories is refused with the fix in the message
(exit 3), here and, through `check_recovery_directory`, under `python -m bytewax.run`.
Running again on the same directory resumes where the last snapshot left off; a finished
file input stays finished (delete `./out` to start the demo from scratch).

Exit codes: 0 finished, or stopped gracefully by SIGTERM/SIGINT (input ended at its current
offsets, work in flight finished, final snapshot written); 2 bad configuration; 3 damaged or
mismatched recovery directory (nothing deleted; the message names the fix); 130 / 143 a
SIGINT / SIGTERM whose graceful stop ran past its deadline or was repeated (no final
snapshot: the restart replays from the last one); 1 any other failure (e.g. `DeliveryFailed`,
`ResumeOffsetLost`, an unreachable broker or missing topics at start).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

from bytewax.recovery import (
    InconsistentPartitionsError,
    MissingPartitionsError,
    NoPartitionsError,
    RecoveryConfig,
)
from bytewax.run import cli_main

from config.models import ConfigError, Settings, load_config
from connectors.kafka_source import KafkaUnavailable
from connectors.kafkatool import preflight
from connectors.reference import ReferenceBootstrapError
from flows.pipeline import build_flow, prepare_stores
from runtime import metrics, signals
from runtime.process import setup_process, start_progress, stop_progress, tune_gc
from runtime.run_audit import RunAudit, outcome_of
from state.recovery import RecoveryDirectoryError, prepare_recovery
from state.stores import StoreError


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python run.py",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("config", nargs="?", default="config/local.toml", help="deployment TOML")
    p.add_argument(
        "-r",
        "--recovery-directory",
        type=Path,
        default=None,
        help="recovery directory (default: OUTPUT_DIR/recovery for file output, else ./recovery)",
    )
    p.add_argument("-s", "--snapshot-interval", type=float, default=5.0, help="seconds")
    p.add_argument("-b", "--backup-interval", type=float, default=0.0, help="seconds")
    p.add_argument("-w", "--workers-per-process", type=int, default=1)
    p.add_argument(
        "--progress-every", type=float, default=2.0, help="seconds between progress lines; 0: none"
    )
    return p.parse_args(argv)


def _start_simulator(settings: Settings) -> object | None:
    if (
        settings.app.profile != "local"
        or settings.llm.endpoints
        or settings.llm.resolved_base_url()
    ):
        return None
    from llmsim import LLMSimulator, SimConfig

    sim = LLMSimulator(SimConfig(latency_ms=40, jitter_ms=20, max_concurrency=64)).start()
    os.environ["OPENAI_BASE_URL"] = sim.base_url
    print(f"LLM simulator (not a real model) on {sim.base_url}", file=sys.stderr)
    return sim


def summary(started: float) -> dict[str, float]:
    s = metrics.snapshot()
    s["seconds"] = round(time.monotonic() - started, 2)
    return s


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        settings = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        preflight(settings, args.config)
    except KafkaUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    setup_process(settings.app)
    recovery_dir = args.recovery_directory or Path(
        f"{settings.output.dir}/recovery" if settings.output.kind == "file" else "recovery"
    )
    try:
        prepare_recovery(recovery_dir, args.workers_per_process)
    except RecoveryDirectoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    sim = _start_simulator(settings)

    try:
        flow = build_flow(settings)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        prepare_stores(settings)
    except (StoreError, ReferenceBootstrapError, KafkaUnavailable) as exc:
        # A store locked by another process or of another format; reference data unread.
        print(f"error: {exc}", file=sys.stderr)
        return 1
    tune_gc()

    started = time.monotonic()
    run = RunAudit(settings, args.config, workers_per_process=args.workers_per_process)
    run.started()
    signals.before_forced_exit(lambda exit_code: run.stopped("exited_without_snapshot", exit_code))
    start_progress(args.progress_every)
    code = 0
    try:
        cli_main(
            flow,
            workers_per_process=args.workers_per_process,
            epoch_interval=timedelta(seconds=args.snapshot_interval),
            recovery_config=RecoveryConfig(
                str(recovery_dir), timedelta(seconds=args.backup_interval)
            ),
        )
    except (NoPartitionsError, MissingPartitionsError) as exc:
        print(
            f"error: recovery directory {recovery_dir} is incomplete ({exc}). Restore the "
            "missing partition files from backup, or point -r at a new empty directory to "
            "start over (nothing was deleted).",
            file=sys.stderr,
        )
        code = 3
    except InconsistentPartitionsError as exc:
        print(
            f"error: recovery partitions in {recovery_dir} are from different times ({exc}). "
            "Restore a consistent set of partition backups (nothing was deleted).",
            file=sys.stderr,
        )
        code = 3
    except KeyboardInterrupt:
        code = 130
    except BaseException as exc:
        run.stopped("failed", 1, error=type(exc).__name__)
        raise
    finally:
        stop_progress()
        run.stopped(outcome_of(code), code)
        if sim is not None:
            sim.stop()  # type: ignore[attr-defined]
    s = summary(started)
    print(
        "\nsummary: "
        f"events in {s['in']:.0f}, valid {s['valid']:.0f}, duplicates {s['duplicates']:.0f}, "
        f"dead-lettered {s['dead_letters']:.0f}, alerts {s['alerts']:.0f}, "
        f"LLM requests {s['llm_requests']:.0f}, answers {s['answers']:.0f} "
        f"(cache hits {s['cache_hits']:.0f}), time {s['seconds']:.1f} s",
        file=sys.stderr,
    )
    if s["in"] == 0 and code == 0:
        print(
            f"(nothing new to read: the input was already processed, per the recovery state "
            f"in {recovery_dir}; delete it and the outputs to run from scratch)",
            file=sys.stderr,
        )
    if settings.output.kind == "file":
        print(f"outputs: {Path(settings.output.dir).resolve()}/*.jsonl", file=sys.stderr)
    print(json.dumps({"summary": s}))
    return code


if __name__ == "__main__":
    sys.exit(main())
