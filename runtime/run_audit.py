"""`run_started` and `run_stopped` activity records, written around the dataflow.

The flow's own audit sink only exists while the dataflow runs, so the two records of a run are
written by the entry point: `run.py` (before `cli_main` and after it returns) and
`flows.pipeline.build` under `python -m bytewax.run` (at build, and at interpreter exit).
They go where the flow's audit records go: the audit topic (one producer, flushed), or
`<output.dir>/audit.jsonl` with file output. Each process of a cluster writes its own pair.

A run that dies without running Python's exit handlers (`kill -9`, an OOM kill) leaves a
`run_started` without its `run_stopped`: that absence is the record of a crash. A graceful
stop that overruns its deadline writes `run_stopped` with outcome `exited_without_snapshot`
before it exits.

The config fingerprint is the SHA-256 of the loaded settings as canonical JSON. Settings hold
no secret values (only the names of the environment variables that carry them: see
`config.models`), so neither the fingerprint's input nor the record carries one; a changed
variable *name* changes the fingerprint, a rotated password does not.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import platform
import socket
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from config.models import Settings
from core.activity import activity_record, run_id
from core.clock import Clock
from runtime import metrics, signals

log = logging.getLogger("contextstream.audit")

FLUSH_TIMEOUT_S = 10.0
"""How long writing a run record to the audit topic may wait for the broker."""

Writer = Callable[[dict[str, Any]], None]


def config_fingerprint(settings: Settings) -> str:
    """SHA-256 (hex) of the settings as canonical JSON: the same config gives the same
    fingerprint on every machine; secrets are not part of it (they are not in settings)."""
    canonical = json.dumps(settings.model_dump(mode="json"), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def audit_writer(settings: Settings) -> Writer:
    """A function writing one record where the flow's audit records go."""
    out = settings.output
    if out.kind == "file":
        path = Path(out.dir) / "audit.jsonl"

        def write_file(record: dict[str, Any]) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
            # One write of one line with O_APPEND: the flow's sink appends to the same file.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

        return write_file

    from confluent_kafka import Producer

    conf = settings.kafka.client_settings()
    topic = out.audit

    def write_kafka(record: dict[str, Any]) -> None:
        # One record, sent once: no idempotent producer (its producer-id round trip would
        # lengthen every start and stop).
        producer = Producer({**conf, "linger.ms": "0"})
        key = (record.get("tenant") or "").encode()
        producer.produce(topic, value=json.dumps(record).encode(), key=key)
        left = producer.flush(FLUSH_TIMEOUT_S)
        if left:
            log.warning(
                "audit record %s not delivered to topic %s within %g s",
                record["activity"],
                topic,
                FLUSH_TIMEOUT_S,
            )

    return write_kafka


class RunAudit:
    """The start and stop records of one process's run.

    `stopped` writes once, whichever of the entry point, the exit handler or the graceful-stop
    deadline calls it first.
    """

    def __init__(
        self,
        settings: Settings,
        config_path: str,
        process: tuple[int, int] = (0, 1),
        *,
        workers_per_process: int | None = None,
        write: Writer | None = None,
        clock: Clock = time.time,
    ) -> None:
        self._settings = settings
        self._config_path = config_path
        self._process = process
        self._workers = workers_per_process
        self._write = write or audit_writer(settings)
        self._clock = clock
        self._started_at: float | None = None
        self._stopped = False
        self.fingerprint = config_fingerprint(settings)

    def _emit(self, activity: str, **fields: Any) -> None:
        record = activity_record(
            activity,
            about=(run_id(), self._process[0]),
            tenant=None,
            at=self._clock(),
            process=self._process[0],
            processes=self._process[1],
            config_fingerprint=self.fingerprint,
            **fields,
        ).record
        try:
            self._write(record)
        except Exception as exc:  # the run's own outcome matters more than its audit line
            log.error("could not write the %s audit record: %s", activity, exc)

    def started(self) -> None:
        self._started_at = self._clock()
        s = self._settings
        self._emit(
            "run_started",
            config_path=self._config_path,
            profile=s.app.profile,
            input=s.input.kind,
            output=s.output.kind,
            sources=sorted(src.name for src in s.input.sources),
            workers_per_process=self._workers,
            host=socket.gethostname(),
            pid=os.getpid(),
            versions={
                "contextstream": _version("contextstream"),
                "bytewax": _version("bytewax"),
                "python": platform.python_version(),
            },
        )

    def stopped(self, outcome: str, exit_code: int, error: str | None = None) -> None:
        """Write `run_stopped` (once); `error` names the exception type of a failed run."""
        if self._stopped:
            return
        self._stopped = True
        counts = metrics.snapshot()
        seconds = None if self._started_at is None else self._clock() - self._started_at
        self._emit(
            "run_stopped",
            outcome=outcome,
            exit_code=exit_code,
            seconds=None if seconds is None else round(seconds, 3),
            counts={k: int(v) for k, v in counts.items() if k != "lag"},
            error=error,
        )

    def stop_at_exit(self) -> None:
        """For entry points that do not see the end of the run (`python -m bytewax.run`):
        write `run_stopped` at interpreter exit (outcome `failed` after an uncaught
        exception), and before a graceful stop's forced exit."""
        failed: list[BaseException] = []
        previous = sys.excepthook

        def note_failure(kind: Any, value: BaseException, tb: Any) -> None:
            failed.append(value)
            previous(kind, value, tb)

        sys.excepthook = note_failure

        def at_exit() -> None:
            if failed:
                self.stopped("failed", 1, error=type(failed[0]).__name__)
            else:
                self.stopped(outcome_of(0), 0)

        atexit.register(at_exit)
        signals.before_forced_exit(lambda code: self.stopped("exited_without_snapshot", code))


def outcome_of(exit_code: int) -> str:
    """`finished` (input ended), `stopped` (a graceful SIGTERM/SIGINT stop) or `failed`."""
    if exit_code != 0:
        return "failed"
    return "stopped" if signals.stop_requested() else "finished"
