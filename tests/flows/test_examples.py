"""The example deployments under config/examples, each run end to end (file in, files out,
the LLM simulator over HTTP), checked on what they produce.

Each config is loaded as shipped (its task files resolve against its directory); only where
it writes (outputs, stores) moves to a temporary directory, its inputs are read from the
repository, and the LLM endpoint is the test's simulator. Every input line is accounted for
(`in = ledger + dead letters`), every answer validates against its task's schema and is in
the file of its task's topic, and every event or alert routed to a task has its answer.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import cluster_main, run_main
from jsonschema import Draft202012Validator

from config.models import Settings, SourceConfig, load_config
from flows.pipeline import build_flow
from inference import prompts
from llmsim import LLMSimulator
from state.stores import close_all

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "config" / "examples"


@pytest.fixture(autouse=True)
def _close_stores():
    yield
    close_all()


def _here(src: SourceConfig | None) -> SourceConfig | None:
    if src is None or src.path is None:
        return src
    return src.model_copy(update={"path": str(REPO / src.path)})


def relocated(settings: Settings, tmp: Path, base_url: str) -> Settings:
    """`settings` reading its inputs from the repository and writing under `tmp`."""
    inp = settings.input
    stores = settings.stores
    seed = None if stores.profiles_seed is None else str(REPO / stores.profiles_seed)
    return settings.model_copy(
        update={
            "input": inp.model_copy(
                update={
                    "sources": tuple(_here(s) for s in inp.sources),
                    "knowledge": _here(inp.knowledge),
                    "profiles": _here(inp.profiles),
                }
            ),
            "output": settings.output.model_copy(update={"dir": str(tmp / "out")}),
            "stores": stores.model_copy(update={"dir": str(tmp / "stores"), "profiles_seed": seed}),
            "llm": settings.llm.model_copy(update={"base_url": base_url}),
        }
    )


def read(tmp: Path, name: str) -> list[dict[str, Any]]:
    """The records of output `name`: `name.jsonl`, or `name.wN.jsonl` of each worker."""
    out = tmp / "out"
    files = [out / f"{name}.jsonl", *sorted(out.glob(f"{name}.w[0-9]*.jsonl"))]
    return [
        json.loads(line)
        for f in files
        if f.exists()
        for line in f.read_text(encoding="utf-8").splitlines()
    ]


RUNNERS = ["run_main", "cluster_main_2_workers"]


def run_example(
    name: str, tmp: Path, sim: LLMSimulator, runner: str
) -> tuple[Settings, dict[str, Any]]:
    """Run the example `name`; check what every example must do; return its outputs."""
    settings = relocated(load_config(EXAMPLES / name / f"{name}.toml"), tmp, sim.base_url)
    flow = build_flow(settings)
    if runner == "run_main":
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=2)
    out: dict[str, Any] = {
        n: read(tmp, n) for n in ("ledger", "dead_letters", "alerts", "audit", "responses")
    }
    tasks = {t.name: t for t in settings.llm.tasks}
    topics = {t.output_topic for t in tasks.values() if t.output_topic}
    out["topics"] = {topic: read(tmp, topic) for topic in topics}

    # in = ok + dead letters, per input line.
    lines = sum(
        1
        for s in settings.input.sources
        for line in Path(str(s.path)).read_text(encoding="utf-8").splitlines()
        if line.strip()
    )
    assert len(out["ledger"]) + len(out["dead_letters"]) == lines
    assert all(d["step_id"] == "decode" and d["raw"] for d in out["dead_letters"])

    # Every answer validates against its task's schema and is in its task's topic.
    answers: list[dict[str, Any]] = []
    for file, records in [("responses", out["responses"]), *out["topics"].items()]:
        for r in records:
            task = tasks[r["task"]]
            assert (task.output_topic or "responses") == file, (r["task"], file)
            check = Draft202012Validator(prompts.task_spec(task).schema)
            assert list(check.iter_errors(r["answer"])) == [], r
            answers.append(r)

    # Everything routed to a task is answered once (the simulator injects no faults).
    routed = [e["event_id"] for e in out["ledger"] if e["route"] in tasks]
    routed += [a["alert_id"] for a in out["alerts"] if _alert_task(settings)]
    assert sorted(r["item_id"] for r in answers) == sorted(routed)
    assert {a["route"] for a in out["audit"]} == {r["task"] for r in answers}
    return settings, out


def _alert_task(settings: Settings) -> str | None:
    return next((r.tasks[0] for r in settings.llm.routes if r.kind == "alert" and r.tasks), None)


def prompts_of(sim: LLMSimulator, fmt: str) -> list[str]:
    """The user messages the simulator got for requests of response format `fmt`."""
    return [
        r["messages"][-1]["content"]
        for r in sim.requests()
        if r["response_format_name"] == fmt and r["status"] == 200
    ]


@pytest.mark.parametrize("runner", RUNNERS)
def test_support_chat(tmp_path: Path, llm_sim: LLMSimulator, runner: str) -> None:
    _, out = run_example("support-chat", tmp_path, llm_sim, runner)
    replies = out["responses"]
    assert len(replies) == 8 and {r["task"] for r in replies} == {"support_reply"}
    assert {r["answer"]["tone"] for r in replies} <= {"neutral", "apologetic", "upbeat"}
    cited = {c["doc_id"] for r in replies for c in r["citations"]}
    assert {"kb-login", "kb-export"} <= cited  # knowledge retrieved for the messages
    sent = prompts_of(llm_sim, "support_reply_batch")
    assert sent and all("kb-" in p for p in sent)
    assert any('"plan":"pro"' in p for p in sent)  # the profile
    assert any('"memory":[' in p for p in sent)  # the session's earlier turns
    assert len(out["dead_letters"]) == 2


@pytest.mark.parametrize("runner", RUNNERS)
def test_iot_metrics(tmp_path: Path, llm_sim: LLMSimulator, runner: str) -> None:
    _, out = run_example("iot-metrics", tmp_path, llm_sim, runner)
    explained = out["topics"]["iot.anomaly_explanations"]
    alerts = {a["alert_id"]: a for a in out["alerts"]}
    assert {a["entity"] for a in alerts.values()} == {
        "plant-3.boiler.temp",
        "plant-3.pump.vibration",
    }
    assert sorted(r["item_id"] for r in explained) == sorted(alerts)
    assert out["responses"] == []  # the task's answers went to its own topic
    for r in explained:
        assert r["task"] == "explain_spike" and 0 <= r["answer"]["confidence"] <= 1
        assert r["event_ids"] == alerts[r["item_id"]]["event_ids"]
    sent = prompts_of(llm_sim, "explain_spike_batch")
    assert len(sent) == 2  # fanout: one request per alert
    assert all('"normal":' in p and '"memory"' not in p for p in sent)  # context = profile
    assert len(out["dead_letters"]) == 2


@pytest.mark.parametrize("runner", RUNNERS)
def test_business_triage(tmp_path: Path, llm_sim: LLMSimulator, runner: str) -> None:
    settings, out = run_example("business-triage", tmp_path, llm_sim, runner)
    triaged = out["topics"]["ops.triage"]
    business = [e for e in out["ledger"] if e["kind"] == "business"]
    assert len(triaged) == len(business) == 24
    assert {r["answer"]["priority"] for r in triaged} <= {"p1", "p2", "p3"}
    assert Counter(r["task"] for r in out["responses"]) == {"chat_reply": 3, "explain_anomaly": 1}
    sent = prompts_of(llm_sim, "triage_batch")
    assert any('"memory":[' in p for p in sent) and all('"segment":' in p for p in sent)

    # The built-in tasks written out as files are the built-ins.
    tasks = {t.name: t for t in settings.llm.tasks}
    for name, builtin in (("chat_reply", "chat_reply"), ("explain_anomaly", "anomaly_explanation")):
        spec, expected = prompts.task_spec(tasks[name]), prompts.builtin_spec(builtin)
        assert (spec.schema, spec.instructions) == (expected.schema, expected.instructions)
    assert prompts.task_spec(tasks["chat_reply"]).conversation == "chat_reply"
