"""Step ids are part of the recovery format: a renamed step orphans its recovered state.

`tests/flows/step_ids.txt` records the recovery step ids of the built flow (inputs and
stateful steps). The test fails when the built flow's ids differ from the record, and when
an id that left the record has no migration note (in the file and in README's "Step ids").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import FixedPartitionedSink

from config.models import Settings
from flows.pipeline import build_flow

REPO = Path(__file__).resolve().parents[2]
RECORD = Path(__file__).with_name("step_ids.txt")
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


def _settings(tmp: Path) -> Settings:
    return Settings.model_validate(
        {
            "app": {"profile": "dev"},
            "input": {
                "kind": "file",
                "sources": [{"name": "s", "path": str(tmp / "x.jsonl")}],
                "profiles": {"name": "p", "path": str(tmp / "p.jsonl")},
            },
            "output": {"kind": "file", "dir": str(tmp / "out")},
            "stores": {"dir": str(tmp / "stores")},
            "llm": {"base_url": "http://127.0.0.1:9/v1"},
        }
    )


def test_recovery_step_ids_match_the_record(tmp_path: Path) -> None:
    built = recovery_step_ids(build_flow(_settings(tmp_path)))
    problems = step_id_problems(built, readme=REPO / "README.md")
    assert not problems, "\n".join(problems)


def test_a_renamed_step_without_a_note_is_caught(tmp_path: Path) -> None:
    """The check itself: renaming a stateful step (here, the dedup step) is reported."""
    flow = build_flow(_settings(tmp_path))
    built = recovery_step_ids(flow) - {"contextstream.dedup.seen"} | {"contextstream.dedupe.seen"}
    problems = step_id_problems(built)
    assert any("'contextstream.dedup.seen' is gone" in p for p in problems)
    assert any("new recovery step 'contextstream.dedupe.seen'" in p for p in problems)


def test_a_migration_note_settles_a_rename(tmp_path: Path) -> None:
    record = tmp_path / "ids.txt"
    text = RECORD.read_text().replace("contextstream.dedup.seen", "contextstream.dedupe.seen")
    record.write_text(
        text + "migration: contextstream.dedup.seen -> contextstream.dedupe.seen: dedup marks "
        "restart empty; replayed events within dedup_ttl_s are not recognised\n"
    )
    built = recovery_step_ids(build_flow(_settings(tmp_path)))
    built = built - {"contextstream.dedup.seen"} | {"contextstream.dedupe.seen"}
    readme = tmp_path / "README.md"
    readme.write_text("### Step ids\ncontextstream.dedup.seen renamed\n")
    assert step_id_problems(built, record, readme) == []


def test_stateful_operators_are_detected() -> None:
    flow = Dataflow("t")
    from bytewax.testing import TestingSource

    s = op.input("inp", flow, TestingSource([1]))
    k = op.key_on("k", s, str)
    op.stateful_map("sm", k, lambda st, v: (st, v))
    assert recovery_step_ids(flow) == {"t.inp", "t.sm.stateful_flat_map.stateful.stateful_batch"}
