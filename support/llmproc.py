"""The LLM simulator as a child process (`python -m llmsim`), for failover tests and benches.

A `SimProcess` can be killed outright (SIGKILL: connections reset, nothing answered, as when
a model server dies) and started again on the same port, so a client configured with its
URL finds it back. Its request log is read over HTTP (`/_sim/requests`) while it runs.

`QueueSource` is a Bytewax source fed by the test or bench while the flow runs (`put`
items, `close` to end the input), so an endpoint can be killed between two phases of input.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bytewax.inputs import DynamicSource, StatelessSourcePartition

from core.records import WorkItem

REPO = Path(__file__).resolve().parents[1]


class SimProcess:
    """One `python -m llmsim` child; `args` are its command-line options (not `--port`)."""

    def __init__(self, *args: str, port: int = 0) -> None:
        self.args = args
        self.port = port
        self.proc: subprocess.Popen[str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 30.0) -> SimProcess:
        """Start it (on the port it had before, once it has one) and wait for its ready line."""
        cmd = [sys.executable, "-m", "llmsim", "--port", str(self.port), *self.args]
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert proc.stdout is not None
        out = proc.stdout
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(out.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=timeout_s)
        except queue.Empty:
            proc.kill()
            proc.wait()
            msg = f"llmsim did not report ready within {timeout_s:g} s"
            raise RuntimeError(msg) from None
        if not line.startswith("LLMSIM_READY "):
            proc.kill()
            proc.wait()
            msg = f"llmsim did not start: {line!r} (exit {proc.poll()})"
            raise RuntimeError(msg)
        self.port = int(line.split()[1].rsplit(":", 1)[1].split("/")[0])
        self.proc = proc
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the server dies mid-request, as a crashed model server does."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None

    def requests(self) -> list[dict[str, Any]]:
        """The running simulator's chat request log (since its last start)."""
        url = f"http://127.0.0.1:{self.port}/_sim/requests"
        with urllib.request.urlopen(url, timeout=10) as resp:
            log: list[dict[str, Any]] = json.loads(resp.read())
        return log

    def __enter__(self) -> SimProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.kill()


_END = object()


class _QueuePartition(StatelessSourcePartition[WorkItem]):
    def __init__(self, q: queue.Queue[object]) -> None:
        self.q = q
        self.ended = False

    def next_batch(self) -> list[WorkItem]:
        if self.ended:
            raise StopIteration
        out: list[WorkItem] = []
        while len(out) < 256:
            try:
                got = self.q.get_nowait()
            except queue.Empty:
                break
            if got is _END:
                self.ended = True
                break
            assert isinstance(got, WorkItem)
            out.append(got)
        return out

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + timedelta(milliseconds=5)


class QueueSource(DynamicSource[WorkItem]):
    """Items `put` while the flow runs; the input ends after `close` (one worker only)."""

    def __init__(self) -> None:
        self.q: queue.Queue[object] = queue.Queue()

    def put(self, items: Iterable[WorkItem]) -> None:
        for item in items:
            self.q.put(item)

    def close(self) -> None:
        self.q.put(_END)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _QueuePartition:
        return _QueuePartition(self.q)
