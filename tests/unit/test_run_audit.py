"""Run start and stop records: the config fingerprint, the fields, no secrets, written once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from config.models import load_config
from core.activity import ACTIVITIES, activity_id, activity_record, run_id
from runtime.run_audit import RunAudit, audit_writer, config_fingerprint, outcome_of

REPO = Path(__file__).resolve().parents[2]
CANARY = "canary-0c4f-not-a-real-secret"


def test_the_fingerprint_is_stable_and_follows_the_config(tmp_path: Path) -> None:
    a = load_config(REPO / "config" / "local.toml")
    b = load_config(REPO / "config" / "local.toml")
    assert config_fingerprint(a) == config_fingerprint(b)
    changed = a.model_copy(update={"memory": a.memory.model_copy(update={"max_turns": 3})})
    assert config_fingerprint(changed) != config_fingerprint(a)


def test_secret_values_are_in_no_record_and_do_not_move_the_fingerprint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    variables = ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "OPENAI_API_KEY")
    for var in variables:
        monkeypatch.setenv(var, "rotated-" + var.lower())
    before = config_fingerprint(load_config(REPO / "config" / "production.toml"))
    for var in variables:
        monkeypatch.setenv(var, CANARY)
    settings = load_config(REPO / "config" / "production.toml")
    assert config_fingerprint(settings) == before  # settings name variables, not values
    written: list[dict[str, Any]] = []
    run = RunAudit(settings, "config/production.toml", (1, 2), write=written.append)
    run.started()
    run.stopped("finished", 0)
    assert [r["activity"] for r in written] == ["run_started", "run_stopped"]
    assert CANARY not in json.dumps(written)
    assert all(r["config_fingerprint"] == before for r in written)
    assert all((r["process"], r["processes"]) == (1, 2) for r in written)


def test_a_run_writes_one_start_and_one_stop_with_its_ids() -> None:
    settings = load_config(REPO / "config" / "local.toml")
    written: list[dict[str, Any]] = []
    times = iter([100.0, 100.0, 107.5, 107.5, 200.0])
    run = RunAudit(settings, "c.toml", write=written.append, clock=lambda: next(times))
    run.started()
    run.stopped("stopped", 0)
    run.stopped("failed", 1)  # the exit handler after the entry point: nothing more
    start, stop = written
    assert start["type"] == stop["type"] == "activity"
    assert start["run_id"] == stop["run_id"] == run_id()
    assert start["activity_id"] != stop["activity_id"]
    assert start["config_path"] == "c.toml" and start["profile"] == "local"
    assert start["versions"]["bytewax"] == "0.21.1"
    assert stop["outcome"] == "stopped" and stop["exit_code"] == 0
    assert stop["seconds"] == 7.5 and set(stop["counts"]) >= {"in", "dead_letters", "answers"}


def test_a_failing_writer_does_not_fail_the_run(caplog: pytest.LogCaptureFixture) -> None:
    def broken(record: dict[str, Any]) -> None:
        raise OSError("disk full")

    run = RunAudit(load_config(REPO / "config" / "local.toml"), "c.toml", write=broken)
    run.started()
    assert "could not write the run_started audit record: disk full" in caplog.text


def test_the_file_writer_appends_lines_to_the_audit_file(tmp_path: Path) -> None:
    settings = load_config(REPO / "config" / "local.toml")
    settings = settings.model_copy(
        update={"output": settings.output.model_copy(update={"dir": str(tmp_path / "o")})}
    )
    write = audit_writer(settings)
    write({"a": 1})
    write({"b": 2})
    lines = (tmp_path / "o" / "audit.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"a": 1}, {"b": 2}]


def test_outcomes() -> None:
    assert outcome_of(0) == "finished"
    assert outcome_of(1) == "failed"


def test_activity_ids_are_stable_and_activities_are_checked() -> None:
    assert activity_id("tenant_refused", "kafka:t:0:5") == activity_id(
        "tenant_refused", "kafka:t:0:5"
    )
    assert activity_id("tenant_refused", "a", "b") != activity_id("tenant_refused", "a/b")
    rec = activity_record("budget_spent", about=("acme", "2026-12-02"), tenant="acme", at=1.0)
    assert rec.record["activity"] in ACTIVITIES and rec.record["tenant"] == "acme"
    with pytest.raises(ValueError, match="unknown activity 'nope'"):
        activity_record("nope", about=(), tenant=None, at=0.0)
