"""Step ids are part of the recovery format: a renamed step orphans its recovered state.

`flows/step_ids.txt` records the recovery step ids of the built flow (inputs and stateful
steps). The test fails when the built flow's ids differ from the record, and when an id that
left the record has no migration note (in the file and in README's "Step ids"); the checks
live in `support.stepids`.
"""

from __future__ import annotations

from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from flows.pipeline import build_flow
from support.stepids import RECORD, contract_settings, recovery_step_ids, step_id_problems

REPO = Path(__file__).resolve().parents[2]


def test_recovery_step_ids_match_the_record(tmp_path: Path) -> None:
    built = recovery_step_ids(build_flow(contract_settings(tmp_path)))
    problems = step_id_problems(built, readme=REPO / "README.md")
    assert not problems, "\n".join(problems)


def test_a_renamed_step_without_a_note_is_caught(tmp_path: Path) -> None:
    """The check itself: renaming a stateful step (here, the dedup step) is reported."""
    flow = build_flow(contract_settings(tmp_path))
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
    built = recovery_step_ids(build_flow(contract_settings(tmp_path)))
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
