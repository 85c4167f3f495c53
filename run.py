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
`ResumeOffsetLost`).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from bytewax._bytewax import cli_main
from bytewax.recovery import (
    InconsistentPartitionsError,
    MissingPartitionsError,
    NoPartitionsError,
    RecoveryConfig,
    init_db_dir,
)

from config.logs import setup_logging
from config.models import ConfigError, Settings, load_config
from operators import metrics
from operators.sources import install_graceful_stop


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python run.py", description=__doc__.split("\n")[0])
    p.add_argument("config", nargs="?", default="config/local.toml", help="deployment TOML")
    p.add_argument("-r", "--recovery-directory", type=Path, default=None)
    p.add_argument("-s", "--snapshot-interval", type=float, default=5.0, help="seconds")
    p.add_argument("-b", "--backup-interval", type=float, default=0.0, help="seconds")
    p.add_argument("-w", "--workers-per-process", type=int, default=1)
    p.add_argument("--progress-every", type=float, default=2.0, help="seconds; 0 disables")
    return p.parse_args(argv)


RECOVERY_MARKER = "contextstream-recovery.json"
"""Written next to the partitions when this launcher creates them."""


class RecoveryDirectoryError(RuntimeError):
    """The recovery directory is damaged or mismatched; nothing was deleted or re-created.

    The message names the fix: restore the named partition files from one consistent backup,
    or point `-r` at a new empty directory to start over (re-reading the inputs from their
    beginning; answers still in the LLM response cache are not requested again).
    """


def recovery_problems(directory: Path) -> list[str]:
    """What is wrong with the partition files in `directory` (empty: usable or new)."""
    parts = sorted(directory.glob("part-*.sqlite3"))
    marker = directory / RECOVERY_MARKER
    if not parts:
        if marker.exists():
            return [
                f"{directory} has no partition files, but {RECOVERY_MARKER} says "
                f"{marker.read_text().strip()}: the partitions were deleted. Restore them from "
                "backup, or point -r at a new empty directory to start over"
            ]
        return []
    problems: list[str] = []
    found: dict[int, tuple[str, int]] = {}
    for p in parts:
        try:
            con = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
            try:
                rows = con.execute("select part_index, part_count from parts").fetchall()
            finally:
                con.close()
        except sqlite3.Error as exc:
            problems.append(
                f"{p} is not a readable Bytewax recovery partition ({exc}); restore it from "
                "the same backup as the other partition files"
            )
            continue
        if len(rows) != 1:
            problems.append(f"{p} holds {len(rows)} partition records; restore it from backup")
            continue
        index, count = rows[0]
        if index in found:
            problems.append(
                f"{p} and {found[index][0]} are both partition {index}; keep the one that "
                "belongs with the others (restore a consistent backup)"
            )
        found[index] = (p.name, count)
    counts = {c for _, c in found.values()}
    if len(counts) > 1:
        detail = ", ".join(f"{n}: {i} of {c}" for i, (n, c) in sorted(found.items()))
        problems.append(
            f"partition files in {directory} come from different recovery directories "
            f"({detail}); restore a consistent set of partition backups"
        )
    elif counts:
        (count,) = counts
        missing = sorted(set(range(count)) - set(found))
        if missing and not problems:
            problems.append(
                f"{directory} is missing partition(s) {missing} of {count}; restore them from "
                "backup, or point -r at a new empty directory to start over"
            )
    return problems


def check_recovery_directory(directory: Path) -> None:
    """Raise `RecoveryDirectoryError` naming the fix if `directory` is damaged."""
    problems = recovery_problems(directory)
    if problems:
        msg = (
            "recovery directory refused (nothing was deleted): "
            + "; ".join(problems)
            + ". See docs/RELIABILITY.md, 'Damaged recovery directory'."
        )
        raise RecoveryDirectoryError(msg)


def prepare_recovery(directory: Path, partitions: int) -> None:
    """Create recovery partitions in a new directory; refuse a damaged one (never deletes)."""
    directory.mkdir(parents=True, exist_ok=True)
    check_recovery_directory(directory)
    if not any(directory.glob("part-*.sqlite3")):
        init_db_dir(directory, partitions)
        (directory / RECOVERY_MARKER).write_text(
            json.dumps({"partitions": partitions, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        )


def _progress(stop: threading.Event, every: float, started: float) -> None:
    last = 0.0
    while not stop.wait(every):
        s = metrics.snapshot()
        rate = (s["in"] - last) / every
        last = s["in"]
        print(
            f"[{time.monotonic() - started:6.1f}s] in {s['in']:.0f} ({rate:.0f}/s) "
            f"valid {s['valid']:.0f} dead {s['dead_letters']:.0f} alerts {s['alerts']:.0f} "
            f"llm requests {s['llm_requests']:.0f} answers {s['answers']:.0f}",
            file=sys.stderr,
            flush=True,
        )


def _start_simulator(settings: Settings) -> object | None:
    if settings.app.profile != "local" or settings.llm.resolved_base_url():
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
    setup_logging(settings.app)
    recovery_dir = args.recovery_directory or Path(
        f"{settings.output.dir}/recovery" if settings.output.kind == "file" else "recovery"
    )
    try:
        prepare_recovery(recovery_dir, args.workers_per_process)
    except RecoveryDirectoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    sim = _start_simulator(settings)

    from flows.pipeline import build_flow, load_profile_seed, tune_gc

    if settings.stores.profiles_seed:
        load_profile_seed(settings)
    try:
        flow = build_flow(settings)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tune_gc()
    install_graceful_stop()

    started = time.monotonic()
    stop = threading.Event()
    if args.progress_every > 0:
        threading.Thread(
            target=_progress, args=(stop, args.progress_every, started), daemon=True
        ).start()
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
    finally:
        stop.set()
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
