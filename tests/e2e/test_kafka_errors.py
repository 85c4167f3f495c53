"""Start-up errors against Kafka end in one line naming the problem and the fix, with the
documented exit code, under both entry points (`python run.py CONFIG` and `python -m
bytewax.run "flows.pipeline:build('CONFIG')"`); and the `connectors.kafkatool` commands
against the real broker (topic creation, missing topics, consuming, accounting)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from support.broker import Record, consume_all, create_topic, produce, topic_names

REPO = Path(__file__).resolve().parents[2]
OUTPUTS = ("responses", "alerts", "dead_letters", "audit", "ledger")
CMD_TIMEOUT_S = 120
"""Generous bound on one command (they answer within seconds); only a hang reaches it."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BYTEWAX_", "KAFKA_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OPENAI_API_KEY"] = "sim-key"
    return env


def _write_config(
    path: Path, bootstrap: str, topics: dict[str, str], kafka: str = "", tail: bool = False
) -> Path:
    path.write_text(
        f"""
[app]
profile = "dev"
[kafka]
brokers = ["{bootstrap}"]
{kafka}
[input]
kind = "kafka"
tail = {str(tail).lower()}
sources = [
  {{ name = "chat", topic = "{topics["chat"]}", adapter = "chat_message" }},
  {{ name = "metrics", topic = "{topics["metrics"]}", adapter = "metric_reading" }},
]
profiles = {{ name = "profiles", topic = "{topics["profiles"]}" }}
[output]
kind = "kafka"
{chr(10).join(f'{name} = "{topics[name]}"' for name in OUTPUTS)}
[stores]
dir = "{path.parent / "stores"}"
[llm]
base_url = "http://127.0.0.1:9/v1"
""",
        encoding="utf-8",
    )
    return path


def _topics(tag: str) -> dict[str, str]:
    return {name: f"{name}-{tag}" for name in ("chat", "metrics", "profiles", *OUTPUTS)}


def _entry_points(config: Path, workdir: Path) -> dict[str, list[str]]:
    recovery = workdir / "recovery"
    return {
        "run.py": [sys.executable, str(REPO / "run.py"), str(config), "-r", str(recovery)],
        "bytewax.run": [
            sys.executable,
            "-m",
            "bytewax.run",
            f"flows.pipeline:build('{config}')",
            "-r",
            str(recovery),
            "-s",
            "10",
            "-b",
            "0",
        ],
    }


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=CMD_TIMEOUT_S,
        check=False,
    )


def _tool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "connectors.kafkatool", *args], cwd)


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single line the command printed (stdout and stderr together)."""
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n" + "\n".join(lines[:40])
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def _prepare_recovery(workdir: Path) -> None:
    (workdir / "recovery").mkdir(parents=True, exist_ok=True)
    from bytewax.recovery import init_db_dir

    init_db_dir(workdir / "recovery", 1)


# --- the flow's entry points ---------------------------------------------------------------


@pytest.mark.parametrize("entry", ["run.py", "bytewax.run"])
def test_an_unreachable_broker_ends_in_one_line_exit_1(tmp_path: Path, entry: str) -> None:
    port = _free_port()  # nothing listens there
    config = _write_config(tmp_path / "c.toml", f"127.0.0.1:{port}", _topics("x"))
    _prepare_recovery(tmp_path)
    proc = _run(_entry_points(config, tmp_path)[entry], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = _one_line(proc)
    assert f"127.0.0.1:{port}" in line and "unreachable" in line
    assert "Connection refused" in line  # librdkafka's reason, once
    assert "python -m support.broker" in line and "kafka.brokers" in line  # the fix


@pytest.mark.parametrize("entry", ["run.py", "bytewax.run"])
def test_a_misspelled_extra_key_is_bad_configuration_exit_2(tmp_path: Path, entry: str) -> None:
    config = _write_config(
        tmp_path / "c.toml",
        "127.0.0.1:9",
        _topics("x"),
        kafka='extra = { "sesion.timeout.ms" = "6000" }',
    )
    _prepare_recovery(tmp_path)
    proc = _run(_entry_points(config, tmp_path)[entry], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_line(proc)
    assert "kafka.extra" in line and "'sesion.timeout.ms'" in line and "fix the name" in line


@pytest.mark.parametrize("entry", ["run.py", "bytewax.run"])
def test_a_broker_without_a_port_is_bad_configuration_exit_2(tmp_path: Path, entry: str) -> None:
    config = _write_config(tmp_path / "c.toml", "127.0.0.1", _topics("x"))
    _prepare_recovery(tmp_path)
    proc = _run(_entry_points(config, tmp_path)[entry], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_line(proc)
    assert "kafka.brokers" in line and "has no port" in line and "127.0.0.1:9092" in line


@pytest.mark.parametrize("entry", ["run.py", "bytewax.run"])
def test_missing_topics_are_named_with_the_command_that_creates_them(
    kafka_bootstrap: str, tmp_path: Path, entry: str
) -> None:
    topics = _topics(uuid.uuid4().hex[:10])
    # Only some exist: the message names exactly the others.
    create_topic(kafka_bootstrap, topics["metrics"], 2)
    create_topic(kafka_bootstrap, topics["ledger"], 1)
    config = _write_config(tmp_path / "c.toml", kafka_bootstrap, topics)
    _prepare_recovery(tmp_path)
    proc = _run(_entry_points(config, tmp_path)[entry], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = _one_line(proc)
    missing = [t for name, t in topics.items() if name not in ("metrics", "ledger")]
    assert all(t in line for t in missing)
    assert topics["metrics"] not in line and topics["ledger"] not in line
    assert f"python -m connectors.kafkatool create-topics {config}" in line
    # The check created nothing (an admin metadata request naming a topic would have).
    assert not set(missing) & topic_names(kafka_bootstrap)


# --- connectors.kafkatool ------------------------------------------------------------------


def test_create_topics_creates_every_topic_with_explicit_configs_and_is_idempotent(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = _topics(uuid.uuid4().hex[:10])
    config = _write_config(tmp_path / "c.toml", kafka_bootstrap, topics)
    first = _tool("create-topics", str(config), "--partitions", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created ") == len(topics)
    meta = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10)
    assert len(meta.topics[topics["chat"]].partitions) == 2
    assert len(meta.topics[topics["profiles"]].partitions) == 1
    assert len(meta.topics[topics["ledger"]].partitions) == 1
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    described = admin.describe_configs([ConfigResource("topic", topics["chat"])])
    configs = {k: v.value for k, v in next(iter(described.values())).result().items()}
    assert configs["retention.ms"] == "604800000" and configs["cleanup.policy"] == "delete"

    again = _tool("create-topics", str(config), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "created " not in again.stdout and again.stdout.count("exists ") == len(topics)
    # The existing 2-partition inputs are reported, not changed, against the default 3.
    assert "planned 3, left as is" in again.stdout


def test_tool_commands_name_missing_topics_and_an_unreachable_broker(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = _topics(uuid.uuid4().hex[:10])
    config = _write_config(tmp_path / "c.toml", kafka_bootstrap, topics)
    events = tmp_path / "e.jsonl"
    events.write_text('{"series": "a", "value": 1, "timestamp": "2026-01-01T00:00:00Z"}\n')
    for args in (
        ("produce", str(config), str(events)),
        ("consume", str(config), "ledger", "--max", "1"),
        ("check", str(config), "--expect", str(events), "--timeout", "1"),
    ):
        proc = _tool(*args, cwd=tmp_path)
        assert proc.returncode == 1, (args, proc.stderr)
        line = _one_line(proc)
        assert "do not exist" in line and f"create-topics {config}" in line
    assert not set(topics.values()) & topic_names(kafka_bootstrap)  # nothing auto-created

    down = _write_config(tmp_path / "down.toml", f"127.0.0.1:{_free_port()}", topics)
    proc = _tool("create-topics", str(down), cwd=tmp_path)
    assert proc.returncode == 1
    assert "unreachable" in _one_line(proc)


def test_produce_consume_and_check_account_for_every_record(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """`check` is exact: it fails while a record is in neither the ledger nor the dead
    letters (naming its coordinates) and passes once each is. The ledger and dead letters
    are written here by hand, as the flow would, from the coordinates of the inputs."""
    topics = _topics(uuid.uuid4().hex[:10])
    config = _write_config(tmp_path / "c.toml", kafka_bootstrap, topics)
    assert _tool("create-topics", str(config), cwd=tmp_path).returncode == 0
    events = tmp_path / "events.jsonl"
    lines = [
        json.dumps({"series": f"s{i % 3}", "value": i, "timestamp": "2026-01-01T00:00:00Z"})
        for i in range(20)
    ]
    lines += [
        json.dumps({"message_id": f"c{i}", "session_id": "s", "text": "hi"}) for i in range(5)
    ]
    lines += ["not json", lines[0]]  # a malformed line and an identical repeat
    events.write_text("\n".join(lines) + "\n\n")
    produced = _tool("produce", str(config), str(events), cwd=tmp_path)
    assert produced.returncode == 0, produced.stderr
    assert f"produced {len(lines)} records" in produced.stdout

    chat = consume_all(kafka_bootstrap, topics["chat"], expected=6)
    metrics = consume_all(kafka_bootstrap, topics["metrics"], expected=21)
    assert len(chat) == 6 and len(metrics) == 21  # 5 chats + "not json"; 20 + the repeat
    assert any(r.value == b"not json" and r.key is None for r in chat)

    def source(r: Record) -> str:
        return f"{r.topic}[{r.partition}]@{r.offset}"

    ledger = [json.dumps({"type": "ledger", "source": source(r)}) for r in metrics + chat[:-1]]
    dead_one = chat[-1]
    produce(kafka_bootstrap, topics["ledger"], ledger[:-1])  # one ledger entry missing...
    produce(
        kafka_bootstrap,
        topics["dead_letters"],
        [
            json.dumps(
                {
                    "type": "dead_letter",
                    "step_id": "contextstream.decode",
                    "source": source(dead_one),
                }
            )
        ],
    )

    partial = _tool("check", str(config), "--expect", str(events), "--timeout", "2", cwd=tmp_path)
    assert partial.returncode == 1, partial.stderr
    assert "NOT ACCOUNTED FOR" in partial.stdout and "1 are in neither" in partial.stdout
    missing = json.loads(ledger[-1])["source"]
    assert missing in partial.stdout

    produce(kafka_bootstrap, topics["ledger"], [ledger[-1]])
    ok = _tool("check", str(config), "--expect", str(events), "--timeout", "60", cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"OK: all {len(lines)} records")
    assert "dead-lettered (decode 1)" in ok.stdout

    printed = _tool("consume", str(config), "chat", "--from-beginning", "--max", "3", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    shown = printed.stdout.splitlines()
    assert len(shown) == 3 and set(shown) <= {(r.value or b"").decode() for r in chat}
