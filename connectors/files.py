"""JSON-lines files as input and output, for the embedded default and local runs.

`JsonlFileSource` reads one partition per file; its resume state is the byte offset plus the
line number, snapshotted with the operator state, and records carry `file:path:line`
coordinates. `JsonlFileSink` appends one JSON value per line to `dir/name.jsonl`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from core.records import KV, RawRecord
from runtime import backpressure
from runtime.signals import stop_requested


class _FileSourcePartition(StatefulSourcePartition[RawRecord, tuple[int, int]]):
    def __init__(self, path: str, name: str, resume: tuple[int, int] | None, batch: int) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._origin = f"file:{path}"
        self._name = name
        self._batch = batch
        pos, line = resume or (0, 0)
        self._f.seek(pos)
        self._line = line
        self._paused = False

    def next_batch(self) -> list[RawRecord]:
        if stop_requested():
            raise StopIteration
        if backpressure.saturated():
            self._paused = True
            return []  # the LLM stage is full: the rest waits in the file
        self._paused = False
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

    def next_awake(self) -> datetime | None:
        return backpressure.pause_until() if self._paused else None

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
    ) -> _FileSourcePartition:
        return _FileSourcePartition(for_part, self.files[for_part], resume_state, self.batch_size)


def file_map(entries: Iterable[tuple[str, str]]) -> dict[str, str]:
    """`{path: source name}`; paths stay as configured, since they name recovery partitions."""
    return {str(Path(p)): name for p, name in entries}


class _FileSinkPartition(StatelessSinkPartition[KV]):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "ab")  # noqa: SIM115 - closed in close()

    def write_batch(self, items: list[KV]) -> None:
        self.f.write(b"".join(value + b"\n" for _, value in items))
        self.f.flush()

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


class JsonlFileSink(DynamicSink[KV]):
    """Appends values as JSON lines to `dir/name.jsonl` (`name.wN.jsonl` with several workers)."""

    def __init__(self, directory: str, name: str) -> None:
        self.directory = directory
        self.name = name

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _FileSinkPartition:
        suffix = "" if worker_count == 1 else f".w{worker_index}"
        return _FileSinkPartition(Path(self.directory) / f"{self.name}{suffix}.jsonl")
