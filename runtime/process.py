"""Process-level setup, called explicitly by the entry points (`run.py`, `flows.pipeline.build`).

Nothing here runs on import. An entry point calls, in order:

1. `setup_process(app)`: logging (`runtime.logs`) and the graceful-stop signal handlers
   (`runtime.signals`);
2. builds the flow;
3. `tune_gc()`: moves the start-up objects out of the collector's view;
4. `start_progress(every_s)`: a daemon thread that logs one progress line every `every_s`
   seconds (events in and their rate, valid, dead letters, alerts, LLM requests, answers,
   input lag), from the process-wide metrics registry (`runtime.metrics`).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from config.models import AppConfig
from runtime import metrics
from runtime.logs import setup_logging
from runtime.signals import install_graceful_stop

log = logging.getLogger("contextstream.progress")


def setup_process(app: AppConfig) -> None:
    """Configure logging and make SIGTERM/SIGINT stop the flow gracefully (idempotent)."""
    setup_logging(app)
    install_graceful_stop()


def _flag(argv: Sequence[str], short: str, long: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg in (short, long) and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(long + "="):
            return arg.split("=", 1)[1]
    return None


def process_position(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> tuple[int, int]:
    """`(index, count)` of this process in a `python -m bytewax.run` cluster.

    Read the way Bytewax 0.21.1's launcher reads them (it passes them to the runtime only):
    `-i/--process-id` or `BYTEWAX_PROCESS_ID` (or the Helm chart's `BYTEWAX_POD_NAME` minus
    `BYTEWAX_STATEFULSET_NAME-`), and `-a/--addresses` or `BYTEWAX_ADDRESSES` (or the file
    `BYTEWAX_HOSTFILE_PATH`), one address per process. A single process is `(0, 1)`.

    >>> process_position(["-i", "1", "-a", "h:2101;h:2102"], {})
    (1, 2)
    >>> process_position(["flows.pipeline:build('c.toml')"], {})
    (0, 1)
    """
    argv = sys.argv if argv is None else argv
    env = os.environ if env is None else env
    index_text = _flag(argv, "-i", "--process-id") or env.get("BYTEWAX_PROCESS_ID")
    if index_text is None and "BYTEWAX_POD_NAME" in env and "BYTEWAX_STATEFULSET_NAME" in env:
        index_text = env["BYTEWAX_POD_NAME"].replace(env["BYTEWAX_STATEFULSET_NAME"] + "-", "")
    addresses = _flag(argv, "-a", "--addresses") or env.get("BYTEWAX_ADDRESSES")
    if addresses is None and index_text is not None and "BYTEWAX_HOSTFILE_PATH" in env:
        with open(env["BYTEWAX_HOSTFILE_PATH"]) as hostfile:
            addresses = ";".join(line.strip() for line in hostfile if line.strip())
    count = len([a for a in (addresses or "").split(";") if a.strip()]) or 1
    index = int(index_text) if index_text is not None else 0
    return index, count


def tune_gc() -> None:
    """Move start-up objects out of the collector's view and collect young objects less often.

    The flow allocates many short-lived objects per event; with the default threshold (700)
    the collector ran often enough to cost about a sixth of the time in profiles. Measured
    with `bench/throughput.py`, which gives its baseline the same setup.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def progress_line(now: dict[str, float], before: dict[str, float], elapsed_s: float) -> str:
    """One progress line from two `metrics.snapshot()`s taken `elapsed_s` apart.

    >>> before = dict.fromkeys(metrics.snapshot(), 0.0)
    >>> now = {**before, "in": 500.0, "valid": 480.0, "dead_letters": 20.0, "lag": 7.0}
    >>> progress_line(now, before, 2.0)
    'in 500 (250/s) valid 480 dead letters 20 alerts 0 llm requests 0 answers 0 lag 7'
    """
    rate = (now["in"] - before["in"]) / elapsed_s if elapsed_s > 0 else 0.0
    return (
        f"in {now['in']:.0f} ({rate:.0f}/s) valid {now['valid']:.0f} "
        f"dead letters {now['dead_letters']:.0f} alerts {now['alerts']:.0f} "
        f"llm requests {now['llm_requests']:.0f} answers {now['answers']:.0f} "
        f"lag {now['lag']:.0f}"
    )


class Progress:
    """Logs a progress line every `every_s` seconds on a daemon thread until `stop()`."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def start(self) -> Progress:
        self._thread.start()
        return self

    def _run(self) -> None:
        before, at = metrics.snapshot(), time.monotonic()
        while not self._stop.wait(self.every_s):
            now, t = metrics.snapshot(), time.monotonic()
            log.info("[%6.1fs] %s", t - self.started, progress_line(now, before, t - at))
            before, at = now, t

    def stop(self) -> None:
        self._stop.set()


_progress: Progress | None = None
_progress_lock = threading.Lock()


def start_progress(every_s: float) -> Progress | None:
    """Start the process's progress reporter (one per process; 0 disables it)."""
    global _progress
    if every_s <= 0:
        return None
    with _progress_lock:
        if _progress is None:
            _progress = Progress(every_s).start()
        return _progress


def stop_progress() -> None:
    global _progress
    with _progress_lock:
        if _progress is not None:
            _progress.stop()
            _progress = None
