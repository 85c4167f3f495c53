"""Run the real flow as a subprocess against the broker and the LLM simulator, then account.

Used by the end-to-end tests and the benchmarks. `Deployment` owns the topics and a config
file; `start_flow` launches `python -m bytewax.run "flows.pipeline:build('<config>')"` with
recovery; `drain` reads every output topic back; `account` checks `in = ok + dead letters`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bytewax.recovery import init_db_dir

from tests.fixtures.broker import Record, consume_all, create_topic

REPO = Path(__file__).resolve().parents[2]
OUTPUTS = ("responses", "alerts", "dead_letters", "audit", "ledger")


@dataclass
class Deployment:
    """Topics and a config file for one end-to-end run (uuid-named, so runs never collide)."""

    bootstrap: str
    workdir: Path
    llm_url: str
    partitions: int = 2
    tail: bool = False
    extra_toml: str = ""
    topics: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tag = uuid.uuid4().hex[:10]
        for name in ("chat", "metrics", "business", "profiles", *OUTPUTS):
            parts = self.partitions if name in ("chat", "metrics", "business") else 1
            self.topics[name] = create_topic(self.bootstrap, f"{name}-{tag}", parts)
        self.recovery = self.workdir / "recovery"
        self.recovery.mkdir(parents=True, exist_ok=True)
        init_db_dir(self.recovery, 1)
        self.config = self.workdir / "flow.toml"
        self.write_config()

    def write_config(self, *, tail: bool | None = None) -> None:
        t = self.topics
        tail_value = str(self.tail if tail is None else tail).lower()
        self.config.write_text(
            f"""
[app]
name = "e2e"
profile = "dev"

[kafka]
brokers = ["{self.bootstrap}"]

[input]
kind = "kafka"
tail = {tail_value}
sources = [
  {{ name = "chat", topic = "{t["chat"]}", adapter = "chat_message" }},
  {{ name = "metrics", topic = "{t["metrics"]}", adapter = "metric_reading" }},
  {{ name = "business", topic = "{t["business"]}", adapter = "business_event" }},
]
profiles = {{ name = "profiles", topic = "{t["profiles"]}" }}

[output]
kind = "kafka"
responses = "{t["responses"]}"
alerts = "{t["alerts"]}"
dead_letters = "{t["dead_letters"]}"
audit = "{t["audit"]}"
ledger = "{t["ledger"]}"

[stores]
dir = "{self.workdir / "stores"}"

[llm]
base_url = "{self.llm_url}"
concurrency = 8
timeout_s = 10
max_attempts = 4
backoff_base_s = 0.05
{self.extra_toml}
"""
        )

    def start_flow(self, *, snapshot_s: int = 1, log_name: str = "flow") -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{log_name}.log", "ab")  # noqa: SIM115 - owned by the process
        cmd = [
            sys.executable,
            "-m",
            "bytewax.run",
            f"flows.pipeline:build('{self.config}')",
            "-r",
            str(self.recovery),
            "-s",
            str(snapshot_s),
            "-b",
            "0",
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OPENAI_API_KEY": "sim-key"}
        return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)

    def log(self, log_name: str = "flow") -> str:
        return (self.workdir / f"{log_name}.log").read_text(errors="replace")

    def drain(self, name: str, idle_s: float = 2.0) -> list[dict[str, Any]]:
        recs: list[Record] = consume_all(self.bootstrap, self.topics[name], idle_s=idle_s)
        return [json.loads(r.value) for r in recs if r.value is not None]


@dataclass
class Accounting:
    sent: set[str]
    ledger: Counter[str]
    dead: Counter[str]
    dead_raw: int
    responses: Counter[str]
    lost: set[str]

    @property
    def duplicates(self) -> int:
        return sum(c - 1 for c in self.ledger.values() if c > 1)


def account(
    sent_ids: set[str],
    ledger: list[dict[str, Any]],
    dead: list[dict[str, Any]],
    responses: list[dict[str, Any]],
) -> Accounting:
    """Every sent event id must be in the ledger or the dead letters (lost = the rest)."""
    led = Counter(e["event_id"] for e in ledger)
    dl = Counter(d["event_id"] for d in dead if d.get("event_id"))
    resp = Counter(i for r in responses for i in r["event_ids"])
    lost = {i for i in sent_ids if i not in led and i not in dl}
    return Accounting(sent_ids, led, dl, sum(1 for d in dead if not d.get("event_id")), resp, lost)
