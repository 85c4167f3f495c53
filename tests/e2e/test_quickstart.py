"""The README's Kafka quickstart, run as written: the fenced block is read from README.md.

The block runs with bash in a temporary directory holding links to `config/` and `data/`
(so the run writes nothing into the checkout), on the ports the README uses (9092 for the
broker, 8000 for the simulator). It runs in its own session: whatever it leaves running is
stopped through the process group, and the test fails if the block did not stop its
background processes itself.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SECTION = "## Running against Kafka"
NEXT_SECTION = "## The data path"
PORTS = {9092: "the Kafka broker", 8000: "the LLM simulator"}
RUN_TIMEOUT_S = 240
"""Generous bound for the whole block (it takes about 15 s); only a hang reaches it."""


def quickstart_block(readme: Path = REPO / "README.md") -> str:
    """The first ```bash block of the README's Kafka section."""
    text = readme.read_text(encoding="utf-8")
    start = text.index(SECTION)
    section = text[start : text.index(NEXT_SECTION, start)]
    match = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"no ```bash block in the README section {SECTION!r}"
    return match.group(1)


def _port_busy(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)  # poll interval
    return True


def _stop_group(pgid: int) -> None:
    """SIGTERM the block's process group, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _group_alive(pgid):
            return
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        _wait_group_gone(pgid, 10)


def _logs(workdir: Path) -> str:
    parts = []
    for name in ("quickstart.out", "flow.log", "broker.log", "llmsim.log"):
        path = workdir / name
        if path.exists():
            parts.append(f"--- {name}:\n{path.read_text(errors='replace')[-3000:]}")
    return "\n".join(parts)


def test_readme_kafka_quickstart_accounts_for_every_sample_record(tmp_path: Path) -> None:
    busy = [f"{port} ({what})" for port, what in PORTS.items() if _port_busy(port)]
    if busy:
        pytest.fail(
            f"port(s) {', '.join(busy)} are in use; the README quickstart needs them free. "
            "Stop whatever listens there (e.g. a broker from an earlier run) and run again."
        )
    for name in ("config", "data"):
        (tmp_path / name).symlink_to(REPO / name, target_is_directory=True)
    script = tmp_path / "quickstart.sh"
    script.write_text(quickstart_block(), encoding="utf-8")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BYTEWAX_", "KAFKA_"))
    }
    # As in the repository root: the project's packages first on the path.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    out_path = tmp_path / "quickstart.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            ["bash", str(script)],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pgid = proc.pid
    try:
        try:
            code = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the quickstart did not finish in {RUN_TIMEOUT_S} s:\n{_logs(tmp_path)}")
        left_running = not _wait_group_gone(pgid, 20)
    finally:
        _stop_group(pgid)

    output = out_path.read_text(errors="replace")
    sample = REPO / "data" / "sample_events.jsonl"
    records = sum(1 for line in sample.read_bytes().splitlines() if line.strip())
    assert code == 0, _logs(tmp_path)
    assert not left_running, "the block left processes running:\n" + _logs(tmp_path)
    assert f"produced {records} records from data/sample_events.jsonl" in output, output
    assert f"OK: all {records} records from data/sample_events.jsonl" in output, _logs(tmp_path)
    assert "flow exited with 0" in output, _logs(tmp_path)
    flow_log = (tmp_path / "flow.log").read_text(errors="replace")
    assert "flow built" in flow_log and "Traceback" not in flow_log, flow_log[-3000:]
    assert not any(_port_busy(port) for port in PORTS), "a port is still taken after the block"
