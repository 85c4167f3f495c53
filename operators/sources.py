"""Inputs: Kafka topics and JSON-lines files, both emitting `RawRecord`s with coordinates.

Both are Bytewax `FixedPartitionedSource`s whose resume state is the next offset to read (a
Kafka offset, or a file's byte offset plus line number), snapshotted with the operator state,
so a resumed run continues exactly where the last snapshot was taken.

Unlike Bytewax 0.21.1's own `KafkaSource`, the Kafka source here:
- sets `auto.offset.reset=error`: a resume offset lost to retention stops the flow with
  `ResumeOffsetLost` instead of silently skipping to the earliest or latest record;
- emits plain tuples (`RawRecord`) rather than a message object per record;
- bounds librdkafka's read-ahead (`queued.max.messages.kbytes`), which otherwise dominates RSS;
- checks a resumed offset against the partition's watermarks from the first fetch: brokers
  that answer a fetch beyond the end with an empty result instead of OFFSET_OUT_OF_RANGE
  (Tansu does) would otherwise leave the flow waiting silently for offsets that are gone.

Graceful stop: `install_graceful_stop()` makes SIGTERM and SIGINT end every input at its
current offset. The dataflow then finishes like a finite input: the LLM stage waits for its
requests in flight, the sinks flush, the final snapshot is written and the process exits 0,
so a restart repeats nothing. If that takes longer than the deadline (an LLM outage, a stalled
broker), or a second signal arrives, the process exits at once with 128 + the signal number
(143 for SIGTERM, 130 for SIGINT) without a final snapshot: a restart then replays from the
last snapshot (at-least-once; answers already cached are not requested again).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import FrameType

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from operators.model import RawRecord

log = logging.getLogger("contextstream.sources")

_STOP = threading.Event()
"""Set by `request_stop` (a signal): every input partition ends at its current offset."""

GRACEFUL_STOP_DEADLINE_S = 8.0
"""How long a graceful stop may take before the process exits without a final snapshot."""


def request_stop() -> None:
    """End every input at its current offset (the flow then finishes and snapshots)."""
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def _exit_now(signum: int, why: str) -> None:
    log.error("%s; exiting with code %d without a final snapshot", why, 128 + signum)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(128 + signum)


def _watchdog(signum: int, deadline_s: float) -> None:
    time.sleep(deadline_s)
    why = (
        f"graceful stop did not finish within {deadline_s:g} s (requests in flight to a slow "
        "or unavailable LLM endpoint, or a stalled broker); the restart replays from the last "
        "snapshot"
    )
    _exit_now(signum, why)


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if _STOP.is_set():
        _exit_now(signum, f"second {name} during a graceful stop")
    _STOP.set()
    log.warning(
        "%s received: ending input, finishing work in flight and writing a final snapshot "
        "(at most %g s; send it again to exit at once)",
        name,
        _deadline_s,
    )
    threading.Thread(
        target=_watchdog, args=(signum, _deadline_s), name="graceful-stop", daemon=True
    ).start()


_deadline_s = GRACEFUL_STOP_DEADLINE_S


def install_graceful_stop(deadline_s: float = GRACEFUL_STOP_DEADLINE_S) -> None:
    """Make SIGTERM and SIGINT stop the flow gracefully (see the module docstring).

    Call from the main thread before the dataflow runs (`flows.pipeline.build` and `run.py`
    do). Exit codes: 0 when the graceful stop finished (final snapshot written), 143 / 130
    when it ran past `deadline_s` or a second signal arrived.
    """
    global _deadline_s
    _deadline_s = deadline_s
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be installed from the main thread
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)


class ResumeOffsetLost(RuntimeError):
    """The offset to resume from no longer exists on the broker (retention deleted it).

    Nothing was skipped. To accept the loss, start with a new recovery directory (after
    deciding how to re-ingest the missing range); to avoid it, keep retention longer than
    the longest outage of this flow.
    """


class SourceError(RuntimeError):
    """The broker reported an error on an input partition; the flow stops so nothing is skipped."""


class _FilePartition(StatefulSourcePartition[RawRecord, tuple[int, int]]):
    def __init__(self, path: str, name: str, resume: tuple[int, int] | None, batch: int) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._origin = f"file:{path}"
        self._name = name
        self._batch = batch
        pos, line = resume or (0, 0)
        self._f.seek(pos)
        self._line = line

    def next_batch(self) -> list[RawRecord]:
        if _STOP.is_set():
            raise StopIteration
        out: list[RawRecord] = []
        for _ in range(self._batch):
            raw = self._f.readline()
            if not raw:
                if not out:
                    raise StopIteration
                break
            self._line += 1
            value = raw.rstrip(b"\r\n")
            if not value.strip():
                continue  # blank lines carry no record
            out.append(RawRecord(self._origin, 0, self._line, None, value, self._name))
        return out

    def snapshot(self) -> tuple[int, int]:
        return (self._f.tell(), self._line)

    def close(self) -> None:
        self._f.close()


class JsonlFileSource(FixedPartitionedSource[RawRecord, tuple[int, int]]):
    """Reads JSON-lines files (one partition per file); coordinates are `file:path:line`.

    `files` maps each file path to the name of its source config (for its adapter).
    """

    def __init__(self, files: Mapping[str, str], batch_size: int = 1000) -> None:
        self.files = dict(files)
        self.batch_size = batch_size

    def list_parts(self) -> list[str]:
        return list(self.files)

    def build_part(
        self, step_id: str, for_part: str, resume_state: tuple[int, int] | None
    ) -> _FilePartition:
        return _FilePartition(for_part, self.files[for_part], resume_state, self.batch_size)


class _KafkaPartition(StatefulSourcePartition[RawRecord, int]):
    def __init__(
        self,
        config: dict[str, str],
        topic: str,
        part: int,
        name: str,
        resume: int | None,
        batch: int,
    ) -> None:
        self._offset = OFFSET_BEGINNING if resume is None else resume
        self._consumer = Consumer(config)
        self._tp = TopicPartition(topic, part, self._offset)
        self._consumer.assign([self._tp])
        # A resumed offset is checked against the first fetch's watermarks (see module doc).
        self._check_resume = resume is not None and resume >= 0  # not OFFSET_BEGINNING
        self._topic = topic
        self._part = part
        self._name = name
        self._batch = batch
        self._eof = False

    def _resume_offset_lost(self) -> None:
        lo, hi = self._consumer.get_watermark_offsets(self._tp, cached=True)
        if lo < 0 or hi < 0:
            return  # no fetch answered yet
        if lo <= self._offset <= hi:
            self._check_resume = False
            return
        msg = (
            f"input {self._topic}[{self._part}]: the resume offset {self._offset} no longer "
            f"exists on the broker (the partition now holds offsets {lo}..{hi - 1}; was the "
            "topic deleted, re-created or truncated by retention?). Nothing was skipped; see "
            "ResumeOffsetLost in operators/sources.py for what to do."
        )
        raise ResumeOffsetLost(msg)

    def next_batch(self) -> list[RawRecord]:
        if self._eof or _STOP.is_set():
            raise StopIteration
        msgs = self._consumer.consume(self._batch, 0.001)
        if self._check_resume:
            if msgs and msgs[0].error() is None:
                self._check_resume = False
            else:
                self._resume_offset_lost()
        out = []
        topic, part, name = self._topic, self._part, self._name
        last = None
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof = True
                    break
                if err.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
                    msg_text = (
                        f"input {topic}[{part}]: the resume offset {self._offset} no longer "
                        f"exists on the broker ({err.str()}). Nothing was skipped; see "
                        "ResumeOffsetLost in operators/sources.py for what to do."
                    )
                    raise ResumeOffsetLost(msg_text)
                if err.fatal() or not err.retriable():
                    msg_text = f"input {topic}[{part}]: broker error: {err.str()}"
                    raise SourceError(msg_text)
                continue  # transient: librdkafka retries by itself
            last = msg.offset() or 0
            out.append(RawRecord(topic, part, last, msg.key(), msg.value(), name))
        if last is not None:
            self._offset = last + 1
        return out

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class RawKafkaSource(FixedPartitionedSource[RawRecord, int]):
    """Reads Kafka topics partition by partition, resuming from the snapshotted offsets.

    `topics` maps each topic to the name of its source config. `settings` are librdkafka
    client settings (security included); `tail=False` stops at the end of each partition.
    """

    def __init__(
        self,
        topics: Mapping[str, str],
        settings: Mapping[str, str],
        *,
        tail: bool = True,
        batch_size: int = 1000,
        queued_max_kbytes: int = 16384,
    ) -> None:
        self.topics = dict(topics)
        self.settings = dict(settings)
        self.tail = tail
        self.batch_size = batch_size
        self.queued_max_kbytes = queued_max_kbytes

    def list_parts(self) -> list[str]:
        admin = AdminClient(dict(self.settings))
        parts: list[str] = []
        for topic in self.topics:
            meta = admin.list_topics(topic, timeout=30)
            tmeta = meta.topics.get(topic)
            if tmeta is None or tmeta.error is not None or not tmeta.partitions:
                err = tmeta.error.str() if tmeta is not None and tmeta.error else "no partitions"
                msg = f"input topic {topic!r} is not available: {err}"
                raise SourceError(msg)
            parts.extend(f"{i}-{topic}" for i in sorted(tmeta.partitions))
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _KafkaPartition:
        idx, topic = for_part.split("-", 1)
        if topic not in self.topics:
            msg = (
                f"recovery state names input topic {topic!r}, which is no longer configured; "
                "restore it in input.sources or start a new recovery directory"
            )
            raise SourceError(msg)
        config = {
            **self.settings,
            "group.id": "contextstream-unused",  # partitions are assigned, never joined
            "enable.auto.commit": "false",
            "enable.auto.offset.store": "false",
            "auto.offset.reset": "error",
            "enable.partition.eof": str(not self.tail).lower(),
            "queued.max.messages.kbytes": str(self.queued_max_kbytes),
        }
        return _KafkaPartition(
            config, topic, int(idx), self.topics[topic], resume_state, self.batch_size
        )


def file_map(entries: Iterable[tuple[str, str]]) -> dict[str, str]:
    """`{path: source name}`; paths stay as configured, since they name recovery partitions."""
    return {str(Path(p)): name for p, name in entries}
