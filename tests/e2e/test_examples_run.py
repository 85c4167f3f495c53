"""The example deployments run as the README says: `python run.py config/examples/...`.

Each run is a subprocess in a temporary directory holding a link to `config/` (so it writes
nothing into the checkout), with the bundled simulator run.py starts for the local profile.
The summary line accounts for every input record, and the answers are in the files of their
tasks' topics. (`tests/flows/test_examples.py` checks the answers' content in depth.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 300
"""Generous bound for one run (a few seconds each); only a hang reaches it."""


def readme_commands() -> dict[str, str]:
    """Example name -> config path, from the README's example deployments block."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Example deployments") :]
    block = section[section.index("```bash\n") : section.index("```\n", 8)]
    found = re.findall(r"python run\.py (config/examples/([\w-]+)/[\w-]+\.toml)", block)
    return {name: path for path, name in found}


EXPECTED_FILES = {
    "support-chat": {"responses": "support_reply"},
    "iot-metrics": {"iot.anomaly_explanations": "explain_spike"},
    "business-triage": {"ops.triage": "triage", "responses": "chat_reply"},
}


def test_the_readme_lists_every_example() -> None:
    assert set(readme_commands()) == set(EXPECTED_FILES)
    assert {p.parent.name for p in (REPO / "config" / "examples").glob("*/*.toml")} == set(
        EXPECTED_FILES
    )


@pytest.mark.parametrize("name", sorted(EXPECTED_FILES))
def test_an_example_runs_as_the_readme_says(tmp_path: Path, name: str) -> None:
    (tmp_path / "config").symlink_to(REPO / "config")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, str(REPO / "run.py"), readme_commands()[name], "--progress-every", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])["summary"]
    assert summary["in"] > 0 and summary["in"] == summary["valid"] + summary["invalid"]
    assert summary["dead_letters"] == summary["invalid"] == 2
    out = tmp_path / "out" / "examples" / name
    answers = 0
    for file, task in EXPECTED_FILES[name].items():
        records = [json.loads(line) for line in (out / f"{file}.jsonl").read_text().splitlines()]
        assert records and {r["task"] for r in records} >= {task}
        answers += len(records)
    assert answers == summary["answers"]
