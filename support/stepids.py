"""The step-id contract: the built flow's recovery step ids against `flows/step_ids.txt`.

Bytewax keys snapshots by step id, so a renamed or removed stateful step orphans its state.
`recovery_step_ids` lists the ids of a built flow whose state Bytewax snapshots;
`step_id_problems` compares them with the record and its migration notes. Used by
`tests/flows/test_step_ids.py` and the `step_ids` fault scenario.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

from bytewax.dataflow import Dataflow
from bytewax.outputs import FixedPartitionedSink

from config.models import Settings

RECORD = Path(str(resources.files("flows") / "step_ids.txt"))
"""The record of the flow's recovery step ids, kept next to the flow."""
_MIGRATION = re.compile(r"^#?\s*migration:\s*(\S+)\s*->\s*(\S+)\s*:\s*(.+)$")


def recovery_step_ids(flow: Dataflow) -> set[str]:
    """Ids of the steps whose state Bytewax snapshots: inputs, stateful steps, and outputs
    to partitioned (stateful) sinks."""

    def walk(steps: Iterable[object]) -> Iterator[object]:
        for s in steps:
            yield s
            yield from walk(getattr(s, "substeps", ()))

    ids = set()
    for s in walk(flow.substeps):
        kind = type(s).__name__
        if kind in ("input", "stateful_batch") or (
            kind == "output" and isinstance(getattr(s, "sink", None), FixedPartitionedSink)
        ):
            ids.add(s.step_id)  # type: ignore[attr-defined]
    return ids


def read_record(path: Path = RECORD) -> tuple[set[str], dict[str, str]]:
    """The recorded ids and the migration notes (`old id -> note`)."""
    ids: set[str] = set()
    notes: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = _MIGRATION.match(line.strip())
        if m:
            notes[m.group(1)] = f"{m.group(2)}: {m.group(3)}"
        elif line.strip() and not line.lstrip().startswith("#"):
            ids.add(line.strip())
    return ids, notes


def step_id_problems(
    built: set[str], record: Path = RECORD, readme: Path | None = None
) -> list[str]:
    """What is wrong between the built flow's ids and the record (empty: the contract holds)."""
    recorded, notes = read_record(record)
    problems = []
    for sid in sorted(recorded - built):
        problems.append(
            f"recovery step {sid!r} is gone from the built flow: its state in existing recovery "
            f"directories is orphaned. Add 'migration: {sid} -> <new id or removed>: <what to "
            f"do>' to {record.name} and README's 'Step ids' section, then update the list"
        )
    for sid in sorted(built - recorded):
        problems.append(
            f"new recovery step {sid!r}: add it to {record.name} (and, if it replaces an old "
            "id, a migration note)"
        )
    readme_text = readme.read_text() if readme is not None and readme.exists() else None
    for old in sorted(notes):
        if old in built:
            problems.append(f"migration note for {old!r}, but the built flow still has it")
        if readme_text is not None and old not in readme_text:
            problems.append(f"migration note for {old!r} is missing from README's 'Step ids'")
    return problems


def contract_settings(tmp: Path) -> Settings:
    """A deployment with every input (events, profiles, knowledge, erasures), for building
    the flow."""
    return Settings.model_validate(
        {
            "app": {"profile": "dev"},
            "input": {
                "kind": "file",
                "sources": [{"name": "s", "path": str(tmp / "x.jsonl")}],
                "profiles": {"name": "p", "path": str(tmp / "p.jsonl")},
                "knowledge": {"name": "k", "path": str(tmp / "k.jsonl")},
                "erasures": {"name": "e", "path": str(tmp / "e.jsonl")},
            },
            "output": {"kind": "file", "dir": str(tmp / "out")},
            "stores": {"dir": str(tmp / "stores")},
            "llm": {"base_url": "http://127.0.0.1:9/v1"},
        }
    )
