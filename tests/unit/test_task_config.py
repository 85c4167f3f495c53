"""Unit tests of tasks defined in config: instructions and answer schemas (inline or in files),
their checks at load, the task spec the LLM stage builds from them, and answer topics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from config.models import ConfigError, Settings, TaskConfig, load_config
from connectors.kafkatool import topic_plan
from core.records import WorkItem
from flows.pipeline import task_topics
from inference import prompts
from inference.schemas import SCHEMAS

MINIMAL = '[input]\nsources = [{ name = "s", path = "in.jsonl" }]\n[llm]\nroutes = []\n'
FRAUD: dict[str, Any] = {
    "type": "object",
    "required": ["risk", "reasons"],
    "additionalProperties": False,
    "properties": {
        "risk": {"enum": ["low", "high"]},
        "reasons": {"type": "array", "items": {"$ref": "#/$defs/reason"}, "minItems": 1},
    },
    "$defs": {
        "reason": {
            "type": "object",
            "required": ["code"],
            "properties": {"code": {"type": "string", "pattern": "^R[0-9]+$"}},
        }
    },
}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, task: str, extra: str = "") -> Settings:
    return load_config(write(tmp_path / "deploy.toml", MINIMAL + extra + task))


def refused(tmp_path: Path, task: str, extra: str = "") -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, task, extra)
    return str(info.value)


def item(data: dict[str, Any], context: dict[str, Any] | None = None) -> WorkItem:
    return WorkItem("e1", ("e1",), "acme", "s1", "u1", "fraud", "src", data, context or {}, 0.0)


# --- load ---------------------------------------------------------------------------------


def test_files_resolve_against_the_config_directory(tmp_path: Path) -> None:
    write(tmp_path / "tasks" / "fraud.md", "You check refunds for fraud.\n")
    write(tmp_path / "tasks" / "fraud.schema.json", json.dumps(FRAUD))
    task = (
        '[[llm.tasks]]\nname = "fraud"\ninstructions_file = "tasks/fraud.md"\n'
        'schema_file = "tasks/fraud.schema.json"\noutput_topic = "shop.fraud"\n'
        'context = ["profile"]\n'
    )
    s = load(tmp_path, task)
    t = s.llm.tasks[0]
    assert t.schema_file == str(tmp_path / "tasks" / "fraud.schema.json")
    assert t.custom_schema() == FRAUD
    assert t.custom_instructions() == "You check refunds for fraud."
    assert (t.context, t.output_topic) == (("profile",), "shop.fraud")
    assert "You check refunds for fraud." in prompts.system_prompt(prompts.task_spec(t))


def test_an_inline_schema_is_a_toml_table(tmp_path: Path) -> None:
    task = (
        '[[llm.tasks]]\nname = "fraud"\ninstructions = "Check refunds."\n'
        'schema = { type = "object", required = ["risk"], '
        'properties = { risk = { enum = ["low", "high"] } } }\n'
    )
    t = load(tmp_path, task).llm.tasks[0]
    assert t.custom_schema() == {
        "type": "object",
        "required": ["risk"],
        "properties": {"risk": {"enum": ["low", "high"]}},
    }
    assert hash(t) == hash(t.model_copy())  # an inline schema (a dict) keeps configs hashable


def test_built_in_tasks_keep_their_defaults_and_may_get_new_instructions(tmp_path: Path) -> None:
    task = '[[llm.tasks]]\nname = "c"\nschema_name = "chat_reply"\ninstructions = "Be brief."\n'
    t = load(tmp_path, task).llm.tasks[0]
    spec = prompts.task_spec(t)
    assert spec.instructions == "Be brief." and spec.label == "chat_reply"
    assert spec.schema == SCHEMAS["chat_reply"].model_json_schema()
    assert prompts.task_spec(TaskConfig(name="c", schema_name="chat_reply")).instructions != (
        "Be brief."
    )


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ('schema_name = "chat_reply"\nschema_file = "x.json"\n', "set exactly one of"),
        ('instructions = "x"\n', "set exactly one of schema_name, schema or schema_file"),
        ('schema = { type = "object" }\n', "a custom schema needs instructions"),
        (
            'schema_name = "chat_reply"\ninstructions = "a"\ninstructions_file = "a.md"\n',
            "not both",
        ),
        ('schema_name = "chat_reply"\ninstructions = "  "\n', "instructions are empty"),
        ('instructions = "x"\nschema = { type = "objekt" }\n', "is not a valid JSON Schema"),
        ('instructions = "x"\nschema = { type = "array" }\n', "must describe an object"),
        (
            'instructions = "x"\nschema = { type = "object", properties = '
            '{ a = { "$ref" = "#/$defs/missing" } } }\n',
            "must name one of its own $defs",
        ),
        ('instructions = "x"\nschema_file = "absent.json"\n', "cannot read"),
        ('schema_name = "chat_reply"\ncontext = ["memory", "memory"]\n', "names a section twice"),
        ('schema_name = "chat_reply"\ncontext = ["history"]\n', "context"),
        (
            'schema_name = "chat_reply"\ncontext = ["memory"]\nknowledge = { top_k = 2 }\n',
            "leaves out 'knowledge'",
        ),
        ('schema_name = "chat_reply"\noutput_topic = "a/b"\n', "is not a topic name"),
        ('schema_name = "chat_reply"\noutput_topic = "contextstream.audit"\n', "output.audit"),
        ('schema_name = "chat_reply"\noutput_topic = "alerts"\n', "output.alerts topic (or file)"),
    ],
)
def test_bad_tasks_are_refused_naming_the_task(tmp_path: Path, task: str, expected: str) -> None:
    msg = refused(tmp_path, f'[[llm.tasks]]\nname = "t1"\n{task}')
    assert expected in msg
    assert "tasks" in msg and ("t1" in msg or "context" in msg)


def test_an_answer_topic_is_never_an_input_topic(tmp_path: Path) -> None:
    kafka = '[input]\nkind = "kafka"\nsources = [{ name = "orders", topic = "shop.orders" }]\n'
    task = '[[llm.tasks]]\nname = "t1"\nschema_name = "chat_reply"\noutput_topic = "shop.orders"\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path / "k.toml", kafka + "[llm]\nroutes = []\n" + task))
    assert "output_topic 'shop.orders' is the input source 'orders'" in str(info.value)


def test_a_schema_file_that_is_not_json_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "s.json", "{ not json")
    msg = refused(
        tmp_path, '[[llm.tasks]]\nname = "t1"\ninstructions = "x"\nschema_file = "s.json"\n'
    )
    assert "llm.tasks[t1].schema_file" in msg and "is not valid JSON" in msg


def test_the_schema_problem_is_named(tmp_path: Path) -> None:
    task = (
        '[[llm.tasks]]\nname = "t1"\ninstructions = "x"\n'
        'schema = { type = "object", properties = { risk = { minLength = -1 } } }\n'
    )
    msg = refused(tmp_path, task)
    assert "llm.tasks[t1].schema is not a valid JSON Schema" in msg
    assert "properties/risk/minLength" in msg


# --- spec: response format, validation, fingerprints --------------------------------------


def fraud_spec(**over: Any) -> prompts.TaskSpec:
    fields: dict[str, Any] = {"name": "fraud", "instructions": "Check refunds.", "schema": FRAUD}
    fields.update(over)
    return prompts.task_spec(TaskConfig(**fields))


def test_the_response_format_carries_the_task_schema_with_its_defs() -> None:
    fmt = prompts.response_format(fraud_spec(), ["e1", "e2"])
    assert fmt["json_schema"]["name"] == "fraud_batch"
    schema = fmt["json_schema"]["schema"]
    Draft202012Validator.check_schema(schema)
    good = {"risk": "high", "reasons": [{"code": "R12"}]}
    validator = Draft202012Validator(schema)
    assert list(validator.iter_errors({"e1": good, "e2": good})) == []
    assert list(validator.iter_errors({"e1": good, "e2": {**good, "reasons": [{"code": "x"}]}}))
    assert list(validator.iter_errors({"e1": good}))  # every id is required


def test_the_item_schema_does_not_shadow_a_definition_of_the_same_name() -> None:
    spec = fraud_spec(name="reason")
    schema = prompts.response_format(spec, ["e1"])["json_schema"]["schema"]
    assert (
        spec.def_name == "reason_answer" and schema["$defs"]["reason"] == FRAUD["$defs"]["reason"]
    )
    good = {"risk": "high", "reasons": [{"code": "R1"}]}
    assert list(Draft202012Validator(schema).iter_errors({"e1": good})) == []


def test_answers_are_validated_against_the_task_schema_naming_the_path() -> None:
    good = {"risk": "low", "reasons": [{"code": "R1"}]}
    content = json.dumps(
        {
            "e1": good,
            "e2": {**good, "reasons": [{"code": "R1"}, {"code": "nope"}]},
            "e3": {"risk": "low"},
            "e4": {**good, "extra": 1},
            "e5": {**good, "risk": "medium"},
        }
    )
    ok, bad = prompts.parse_answers(fraud_spec(), content, ["e1", "e2", "e3", "e4", "e5"])
    assert ok == {"e1": good}
    assert bad["e2"].startswith("answer fails the fraud schema: reasons.1.code: 'nope'")
    assert bad["e3"].startswith("answer fails the fraud schema: reasons: ")
    assert bad["e4"].startswith("answer fails the fraud schema: extra: ")
    assert bad["e5"].startswith("answer fails the fraud schema: risk: ")


def test_the_fingerprint_changes_with_the_schema_and_the_instructions() -> None:
    base = fraud_spec()
    looser = fraud_spec(schema={**FRAUD, "required": ["risk"]})
    reworded = fraud_spec(instructions="Check refunds carefully.")
    digests = {base.digest, looser.digest, reworded.digest}
    assert len(digests) == 3
    fps = {prompts.item_fingerprint("fraud", "m", item({"a": 1}), d) for d in digests}
    assert len(fps) == 3
    assert fraud_spec().digest == base.digest  # stable for the same config
    msgs = [{"role": "user", "content": "x"}]
    assert prompts.messages_fingerprint("m", msgs, base.digest) != prompts.messages_fingerprint(
        "m", msgs, looser.digest
    )


def test_a_configured_reply_is_part_of_the_conversation() -> None:
    reply = {"type": "object", "properties": {"reply": {"type": "string"}}}
    other = {"type": "object", "properties": {"risk": {"type": "string"}}}
    assert fraud_spec(schema=reply).conversation == "chat_reply"
    assert fraud_spec(schema=other).conversation == ""


def test_context_is_scoped_to_the_task_sections() -> None:
    full = item(
        {"text": "hi"},
        {"profile": {"plan": "pro"}, "memory": [1], "summary": "s", "knowledge": [2], "x": 3},
    )
    assert prompts.scope_context(full, ("profile", "memory", "knowledge")) is full
    assert prompts.scope_context(full, ("profile",)).context == {"profile": {"plan": "pro"}, "x": 3}
    assert prompts.scope_context(full, ()).context == {"x": 3}
    assert set(prompts.scope_context(full, ("memory",)).context) == {"memory", "summary", "x"}


# --- answer topics ------------------------------------------------------------------------


def test_task_topics_are_planned_and_grouped(tmp_path: Path) -> None:
    tasks = (
        '[[llm.tasks]]\nname = "a"\nschema_name = "chat_reply"\noutput_topic = "shop.fraud"\n'
        '[[llm.tasks]]\nname = "b"\nschema_name = "chat_reply"\noutput_topic = "shop.fraud"\n'
        '[[llm.tasks]]\nname = "c"\nschema_name = "chat_reply"\n'
        '[[llm.tasks]]\nname = "d"\nschema_name = "chat_reply"\n'
        'output_topic = "contextstream.responses"\n'
    )
    kafka = (
        '[input]\nkind = "kafka"\nsources = [{ name = "s", topic = "in" }]\n'
        '[output]\nkind = "kafka"\n[llm]\nroutes = []\n'
    )
    s = load_config(write(tmp_path / "k.toml", kafka + tasks))
    assert task_topics(s) == {"shop.fraud": frozenset({"a", "b"})}
    planned = [t.name for t in topic_plan(s) if t.role == "output"]
    assert planned.count("shop.fraud") == 1 and "contextstream.responses" in planned


def test_the_readme_task_example_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Your own tasks") :]
    block = section[section.index("```toml\n") + 8 : section.index("```\n", 8)]
    write(tmp_path / "fraud.md", "Check refund requests for fraud.")
    inp = '[input]\nsources = [{ name = "s", path = "in.jsonl" }]\n'
    s = load_config(write(tmp_path / "deploy.toml", inp + block))
    (task,) = s.llm.tasks
    assert (task.name, task.output_topic, task.context) == (
        "fraud_check",
        "shop.fraud",
        ("profile", "memory"),
    )
    assert prompts.task_spec(task).instructions == "Check refund requests for fraud."
    assert s.llm.routes[0].task == "fraud_check"
