"""Tests of the LLM simulator through the real ``openai`` client over loopback HTTP."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from llmsim import LLMSimulator, SimConfig
from llmsim.server import SchemaError, count_tokens, embed_text, fake_from_schema

REPO_ROOT = Path(__file__).resolve().parents[2]
MESSAGES: list[Any] = [
    {"role": "system", "content": "You answer support tickets."},
    {"role": "user", "content": "My invoice is wrong, please help."},
]


class Category(StrEnum):
    billing = "billing"
    bug = "bug"
    other = "other"


class ReplyAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    category: Category
    reply: str


PackAnswer = create_model("PackAnswer", e1=(ReplyAnswer, ...), e2=(ReplyAnswer, ...))


def pack_format(name: str = "pack") -> Any:
    schema = PackAnswer.model_json_schema()
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


@pytest.fixture
def sim() -> Iterator[LLMSimulator]:
    with LLMSimulator(SimConfig(latency_ms=1)) as s:
        yield s


def make_client(sim: LLMSimulator, timeout: float = 5.0) -> OpenAI:
    return OpenAI(base_url=sim.base_url, api_key="sim", max_retries=0, timeout=timeout)


@pytest.fixture
def client(sim: LLMSimulator) -> Iterator[OpenAI]:
    with make_client(sim) as c:
        yield c


def ask(client: OpenAI, messages: Any = None, **kwargs: Any) -> Any:
    return client.chat.completions.create(model="sim-1", messages=messages or MESSAGES, **kwargs)


def http_json(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.headers["x-llm-simulator"] == "true"
        return json.loads(resp.read())


def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# --------------------------------------------------------------------------- answers


def test_plain_answer(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="sim-1", messages=MESSAGES)
    assert raw.headers["x-llm-simulator"] == "true"
    # no RPM limit configured: no per-minute budget headers (as with OpenAI)
    assert "x-ratelimit-remaining-requests" not in raw.headers
    resp = raw.parse()
    assert resp.object == "chat.completion"
    assert resp.model == "sim-1"
    assert resp.system_fingerprint == "llmsim"
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content is not None
    assert choice.message.content.startswith("[simulated] ")
    assert "My invoice is wrong" in choice.message.content


def test_models_endpoint(client: OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["sim-1"]


def test_json_schema_pack_answer_validates(client: OpenAI) -> None:
    fmt = pack_format()
    assert "$defs" in fmt["json_schema"]["schema"]  # the pack references a shared model
    content = ask(client, response_format=fmt).choices[0].message.content
    pack = PackAnswer.model_validate_json(content)
    assert pack.e1.reply == "[simulated] reply for e1"  # type: ignore[attr-defined]
    assert pack.e2.reply == "[simulated] reply for e2"  # type: ignore[attr-defined]
    assert isinstance(pack.e1.category, Category)  # type: ignore[attr-defined]


def test_openai_parse_helper(client: OpenAI) -> None:
    completion = client.chat.completions.parse(
        model="sim-1", messages=MESSAGES, response_format=PackAnswer
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, PackAnswer)


def test_json_object_answer(client: OpenAI) -> None:
    content = ask(client, response_format={"type": "json_object"}).choices[0].message.content
    answer = json.loads(content)
    assert answer["answer"].startswith("[simulated] ")


class Node(BaseModel):
    name: str
    children: list[Node] = []


class Rich(BaseModel):
    """Exercises most schema keywords pydantic emits."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["a", "b"]
    fixed: Literal["only"]
    maybe: str | None
    short: str = Field(min_length=30, max_length=40)
    tiny: str = Field(max_length=5)
    count: int = Field(ge=3, le=7)
    ratio: float = Field(gt=0, lt=1)
    flag: bool
    when: datetime
    tags: list[str] = Field(min_length=2, max_length=3)
    pair: tuple[int, str]
    scores: dict[str, int]
    tree: Node
    answers: list[ReplyAnswer]


def test_json_schema_generator_covers_pydantic_keywords(client: OpenAI) -> None:
    schema = Rich.model_json_schema()
    fmt = {"type": "json_schema", "json_schema": {"name": "rich", "schema": schema}}
    content = ask(client, response_format=fmt).choices[0].message.content
    rich = Rich.model_validate_json(content)
    assert 30 <= len(rich.short) <= 40
    assert rich.tags[0].startswith("[simulated] tags #1 for request ")
    assert rich.tags[1].startswith("[simulated] tags #2 for request ")
    assert rich.maybe is not None
    assert rich.maybe.startswith("[simulated] maybe for request ")


def test_fake_from_schema_keywords() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "legacy": {"$ref": "#/definitions/Legacy"},
            "choice": {"oneOf": [{"type": "integer", "minimum": 10, "maximum": 10}, {}]},
            "constant": {"const": 42},
            "untyped": {"default": [1, 2]},
            "nums": {"type": "array", "items": {"type": "number", "multipleOf": 0.5}},
            "empty": {"type": "array", "items": {"type": "string"}, "maxItems": 0},
            "nothing": {"type": "null"},
            "merged": {"allOf": [{"$ref": "#/definitions/Legacy"}, {"required": ["x"]}]},
        },
        "required": ["legacy"],
        "additionalProperties": False,
        "definitions": {
            "Legacy": {"type": "object", "properties": {"x": {"type": ["string", "null"]}}}
        },
    }
    value = fake_from_schema(schema, key="k")
    assert value == fake_from_schema(schema, key="k")  # deterministic in the key
    assert set(value) == set(schema["properties"])
    assert value["legacy"] == {"x": "[simulated] x for legacy"}
    assert value["choice"] == 10
    assert value["constant"] == 42
    assert value["untyped"] == [1, 2]
    assert len(value["nums"]) == 1
    assert value["nums"][0] % 0.5 == 0
    assert value["empty"] == []
    assert value["nothing"] is None
    assert value["merged"] == {"x": "[simulated] x for merged"}
    with pytest.raises(SchemaError):
        fake_from_schema({"$ref": "#/$defs/Missing"})


def test_bad_requests_get_400(sim: LLMSimulator, client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        ask(client, response_format={"type": "json_schema", "json_schema": {"schema": False}})
    req = urllib.request.Request(f"{sim.base_url}/chat/completions", data=b"not json")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    with info.value as error:
        assert error.code == 400
        assert "not valid JSON" in json.loads(error.read())["error"]["message"]
    assert [r["status"] for r in sim.requests()] == [400, 400]


def test_deterministic_answers(client: OpenAI) -> None:
    first = ask(client, response_format=pack_format()).choices[0].message.content
    second = ask(client, response_format=pack_format()).choices[0].message.content
    assert first == second
    other = [{"role": "user", "content": "Something else entirely."}]
    assert ask(client).choices[0].message.content == ask(client).choices[0].message.content
    assert ask(client, other).choices[0].message.content != ask(client).choices[0].message.content


def test_usage_token_counts(client: OpenAI) -> None:
    resp = ask(client)
    usage = resp.usage
    assert usage is not None
    expected_prompt = sum(count_tokens(m["content"]) + 4 for m in MESSAGES)
    assert usage.prompt_tokens == expected_prompt
    assert usage.completion_tokens == count_tokens(resp.choices[0].message.content)
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


# --------------------------------------------------------------------------- faults


def test_concurrency_limit_gives_429_with_retry_after(sim: LLMSimulator, client: OpenAI) -> None:
    sim.configure(max_concurrency=1, latency_ms=400)
    results: queue.Queue[Any] = queue.Queue()

    def call() -> None:
        try:
            results.put(ask(client))
        except Exception as exc:
            results.put(exc)

    slow = threading.Thread(target=call)
    slow.start()
    wait_for(lambda: sim.in_flight == 1)
    fast = threading.Thread(target=call)
    fast.start()
    fast.join(timeout=5)
    slow.join(timeout=5)
    outcomes = [results.get_nowait(), results.get_nowait()]
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert len(errors) == 1
    assert isinstance(errors[0], openai.RateLimitError)
    headers = errors[0].response.headers
    assert float(headers["retry-after"]) > 0
    assert "x-ratelimit-limit-requests" not in headers
    assert errors[0].body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    assert sorted(r["fault"] or "" for r in sim.requests()) == ["", "429"]


def test_queue_slots_queue_requests_instead_of_429(sim: LLMSimulator) -> None:
    """Queueing mode: one slot serves, the others wait in line; none is refused."""
    sim.configure(queue_slots=1, latency_ms=60_000)
    client = make_client(sim, timeout=120)
    errors: queue.Queue[Any] = queue.Queue()

    def call() -> None:
        try:
            ask(client)
        except Exception as exc:
            errors.put(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: sim.in_flight == 3, timeout=30)
    assert sim.serving == 1
    sim.stop()  # wakes the one in service and the two waiting: all dropped unanswered
    for t in threads:
        t.join(timeout=30)
    assert errors.qsize() == 3
    log = sim.requests()
    assert sorted(r["in_flight"] for r in log) == [1, 2, 3]
    assert {r["fault"] for r in log} == {None} and {r["status"] for r in log} == {0}


def test_queue_slots_serve_everyone_in_turn(sim: LLMSimulator) -> None:
    sim.configure(queue_slots=2, latency_ms=30)
    client = make_client(sim, timeout=60)
    answers: queue.Queue[Any] = queue.Queue()
    threads = [threading.Thread(target=lambda: answers.put(ask(client))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert answers.qsize() == 6
    log = sim.requests()
    assert [r["status"] for r in log] == [200] * 6 and sim.serving == 0


def test_max_context_tokens_gets_llama_servers_400(sim: LLMSimulator, client: OpenAI) -> None:
    sim.configure(max_context_tokens=20)
    assert ask(client, [{"role": "user", "content": "short"}]).choices
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, [{"role": "user", "content": "many words " * 30}])
    body = err.value.body
    assert isinstance(body, dict) and body["type"] == "exceed_context_size_error"
    assert body["n_ctx"] == 20 and body["n_prompt_tokens"] > 20
    assert [r["fault"] for r in sim.requests()] == [None, "context"]
    with pytest.raises(ValueError):
        sim.configure(max_context_tokens=0)
    sim.configure(max_context_tokens=None, queue_slots=None)


def test_rpm_limit(sim: LLMSimulator, client: OpenAI) -> None:
    sim.configure(rpm_limit=2)
    ask(client)
    ask(client)
    with pytest.raises(openai.RateLimitError) as info:
        ask(client)
    assert 0 < float(info.value.response.headers["retry-after"]) <= 60
    assert info.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert info.value.response.headers["x-ratelimit-limit-requests"] == "2"


def test_fail_next_then_success(sim: LLMSimulator, client: OpenAI) -> None:
    sim.configure(fail_next=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as info:
            ask(client)
        assert info.value.status_code == 500
    assert ask(client).choices[0].message.content.startswith("[simulated] ")
    assert sim.config.fail_next == 0
    assert [r["fault"] for r in sim.requests()] == ["500", "500", None]


def test_error_rate(sim: LLMSimulator, client: OpenAI) -> None:
    sim.configure(error_rate=1.0)
    with pytest.raises(openai.InternalServerError):
        ask(client)


def test_outage_gives_503(sim: LLMSimulator, client: OpenAI) -> None:
    sim.configure(down=True)
    with pytest.raises(openai.InternalServerError) as info:
        ask(client)
    assert info.value.status_code == 503
    sim.configure(down=False)
    assert ask(client).choices[0].message.content


def test_timeout_injection(sim: LLMSimulator) -> None:
    sim.configure(timeout_rate=1.0, hang_s=1.0)
    started = time.monotonic()
    with make_client(sim, timeout=0.2) as client, pytest.raises(openai.APITimeoutError):
        ask(client)
    assert time.monotonic() - started < 0.9
    wait_for(lambda: len(sim.requests()) == 1)
    entry = sim.requests()[0]
    assert entry["fault"] == "timeout"
    assert entry["latency_s"] >= 1.0


def test_stop_interrupts_hanging_requests(sim: LLMSimulator) -> None:
    sim.configure(timeout_rate=1.0, hang_s=30.0)
    with make_client(sim, timeout=0.2) as client, pytest.raises(openai.APITimeoutError):
        ask(client)
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 2.0
    wait_for(lambda: len(sim.requests()) == 1)
    assert sim.requests()[0]["status"] == 0  # stopped before answering
    assert sim.requests()[0]["fault"] == "timeout"


def test_malformed_json(sim: LLMSimulator, client: OpenAI) -> None:
    sim.configure(malformed_rate=1.0)
    content = ask(client, response_format=pack_format()).choices[0].message.content
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)
    assert sim.requests()[-1]["fault"] == "malformed"


def test_dropped_items(sim: LLMSimulator, client: OpenAI) -> None:
    sim.configure(drop_item_rate=1.0)
    content = ask(client, response_format=pack_format()).choices[0].message.content
    answer = json.loads(content)
    assert "e1" not in answer
    assert "e2" not in answer
    with pytest.raises(ValidationError):
        PackAnswer.model_validate(answer)
    assert sim.requests()[-1]["fault"] == "dropped_items"


def test_latency_is_applied(sim: LLMSimulator, client: OpenAI) -> None:
    sim.configure(latency_ms=150)
    started = time.monotonic()
    ask(client)
    assert time.monotonic() - started >= 0.15


def test_latency_model_charges_usage_tokens(sim: LLMSimulator, client: OpenAI) -> None:
    """Service time = fixed + prefill x prompt tokens + decode x completion tokens, with the
    token counts the response reports in `usage`."""
    sim.configure(latency_ms=5, ms_per_prompt_token=0.5, ms_per_completion_token=0.25)
    short = ask(client, [{"role": "user", "content": "Hi."}])
    long = ask(client, [{"role": "user", "content": "My invoice is wrong. " * 100}])
    packed = ask(client, [{"role": "user", "content": "Hi."}], response_format=pack_format())
    entries = sim.requests()
    assert len(entries) == 3
    for resp, entry in zip((short, long, packed), entries, strict=True):
        usage = resp.usage
        assert usage is not None
        assert (entry["prompt_tokens"], entry["completion_tokens"]) == (
            usage.prompt_tokens,
            usage.completion_tokens,
        )
        expected = 5 + 0.5 * usage.prompt_tokens + 0.25 * usage.completion_tokens
        assert entry["service_ms"] == pytest.approx(expected)
        assert entry["service_ms"] == pytest.approx(
            sim.config.service_ms(usage.prompt_tokens, usage.completion_tokens)
        )
        assert entry["latency_s"] >= entry["service_ms"] / 1000  # the delay was served
    assert long.usage is not None and short.usage is not None and packed.usage is not None
    assert long.usage.prompt_tokens >= short.usage.prompt_tokens + 400
    # More prompt tokens: longer service (prefill), by 0.5 ms per extra token.
    extra_prompt = long.usage.prompt_tokens - short.usage.prompt_tokens
    extra_completion = long.usage.completion_tokens - short.usage.completion_tokens
    assert entries[1]["service_ms"] - entries[0]["service_ms"] == pytest.approx(
        0.5 * extra_prompt + 0.25 * extra_completion
    )
    assert entries[1]["service_ms"] >= entries[0]["service_ms"] + 200
    # A longer answer (same prompt, a two-item JSON answer): longer service (decode).
    assert packed.usage.completion_tokens > short.usage.completion_tokens
    assert entries[2]["service_ms"] > entries[0]["service_ms"]


def test_latency_model_defaults_and_faults(sim: LLMSimulator, client: OpenAI) -> None:
    assert SimConfig().service_ms(1000, 1000) == SimConfig().latency_ms  # no per-token cost
    sim.configure(latency_ms=2, ms_per_prompt_token=1.0, ms_per_completion_token=100.0)
    sim.configure(fail_next=1)
    with pytest.raises(openai.InternalServerError):
        ask(client)
    failed = sim.requests()[-1]
    # An injected 500 pays the fixed part and the prefill, not a decode.
    assert failed["fault"] == "500"
    assert failed["service_ms"] == pytest.approx(2 + failed["prompt_tokens"])
    sim.configure(max_concurrency=0)
    with pytest.raises(openai.RateLimitError):
        ask(client)
    assert sim.requests()[-1]["service_ms"] == 0.0  # rejected at once
    with pytest.raises(ValueError):
        sim.configure(ms_per_prompt_token=-1)
    with pytest.raises(TypeError):
        sim.configure(ms_per_completion_token="fast")


def test_many_concurrent_requests(sim: LLMSimulator, client: OpenAI) -> None:
    sim.configure(latency_ms=20)
    errors: list[Exception] = []

    def worker() -> None:
        try:
            for _ in range(3):
                ask(client)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert errors == []
    assert len(sim.requests()) == 96


def test_config_validation(sim: LLMSimulator) -> None:
    with pytest.raises(ValueError):
        sim.configure(nope=1)
    with pytest.raises(ValueError):
        sim.configure(error_rate=1.5)
    with pytest.raises(TypeError):
        sim.configure(down="yes")
    with pytest.raises(ValueError):
        SimConfig(latency_ms=-1)


# --------------------------------------------------------------------------- log and admin


def test_request_log(sim: LLMSimulator, client: OpenAI) -> None:
    ask(client, response_format=pack_format("tickets"))
    log = sim.requests()
    assert len(log) == 1
    entry = log[0]
    assert set(entry) == {
        "ts",
        "model",
        "messages",
        "response_format_name",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "service_ms",
        "latency_s",
        "fault",
        "in_flight",
        "queued_ms",
    }
    assert entry["in_flight"] == 1
    assert entry["model"] == "sim-1"
    assert entry["messages"] == MESSAGES
    assert entry["response_format_name"] == "tickets"
    assert entry["status"] == 200
    assert entry["fault"] is None
    assert entry["prompt_tokens"] > 0
    assert entry["completion_tokens"] > 0
    assert entry["service_ms"] == 1.0  # the fixture's latency_ms; no per-token cost by default
    assert entry["latency_s"] >= 0
    assert abs(entry["ts"] - time.time()) < 10
    log[0]["status"] = 999  # a copy
    assert sim.requests()[0]["status"] == 200
    sim.reset_log()
    assert sim.requests() == []


def test_admin_endpoints(sim: LLMSimulator, client: OpenAI) -> None:
    ask(client)
    assert http_json(f"{sim.url}/_sim/health")["status"] == "ok"
    remote_log = http_json(f"{sim.url}/_sim/requests")
    assert remote_log == sim.requests()
    assert remote_log[0]["status"] == 200

    new_config = http_json(f"{sim.url}/_sim/config", {"down": True, "ms_per_prompt_token": 0.5})
    assert new_config["down"] is True
    assert new_config["ms_per_prompt_token"] == 0.5
    assert sim.config.ms_per_prompt_token == 0.5
    with pytest.raises(openai.InternalServerError):
        ask(client)
    http_json(f"{sim.url}/_sim/config", {"down": False})
    ask(client)

    with pytest.raises(urllib.error.HTTPError) as info:
        http_json(f"{sim.url}/_sim/config", {"error_rate": 7})
    with info.value as error:
        assert error.code == 400
        assert "error_rate" in json.loads(error.read())["error"]["message"]

    assert http_json(f"{sim.url}/_sim/reset", {}) == {"status": "ok"}
    assert http_json(f"{sim.url}/_sim/requests") == []


# --------------------------------------------------------------------------- CLI


def test_cli_ready_line_serves_and_stops_on_sigterm() -> None:
    cmd = [sys.executable, "-m", "llmsim", "--port", "0", "--latency-ms", "1", "--seed", "3"]
    cmd += ["--ms-per-prompt-token", "0.01", "--ms-per-completion-token", "0.02"]
    with subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            stdout = proc.stdout
            lines: queue.Queue[str] = queue.Queue()
            threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
            line = lines.get(timeout=10)
            assert line.startswith("LLMSIM_READY http://127.0.0.1:")
            base_url = line.split()[1]
            assert base_url.endswith("/v1")
            config = http_json(base_url.removesuffix("/v1") + "/_sim/config")
            assert (config["ms_per_prompt_token"], config["ms_per_completion_token"]) == (
                0.01,
                0.02,
            )
            with OpenAI(base_url=base_url, api_key="sim", max_retries=0, timeout=5) as client:
                assert ask(client).choices[0].message.content.startswith("[simulated] ")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5) == 0
            assert stdout.read() == ""  # nothing but the ready line
        finally:
            if proc.poll() is None:
                proc.kill()


# --------------------------------------------------------------------------- embeddings


def test_embeddings_shape_and_marked_simulated(sim: LLMSimulator, client: OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["Reset the router", "resetting routers", "tax"]
    )
    assert raw.headers["x-llmsim"] == "simulated"
    resp = raw.parse()
    assert resp.model == "text-embedding-3-small (simulated)"
    assert [d.index for d in resp.data] == [0, 1, 2]
    vecs = [d.embedding for d in resp.data]
    assert all(len(v) == 256 for v in vecs)
    assert all(abs(sum(x * x for x in v) - 1) < 1e-5 for v in vecs)  # L2-normalised

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vecs[0], vecs[1]) > 0.99  # shared stems
    assert abs(cos(vecs[0], vecs[2])) < 0.5
    assert resp.usage.prompt_tokens == sum(
        count_tokens(t) for t in ("Reset the router", "resetting routers", "tax")
    )
    # one string, explicit dimensions and float encoding; deterministic
    again = client.embeddings.create(
        model="m", input="Reset the router", dimensions=32, encoding_format="float"
    )
    assert len(again.data) == 1 and len(again.data[0].embedding) == 32
    assert again.data[0].embedding == embed_text("Reset the router", 32)
    log = sim.requests("embeddings")
    assert [e["inputs"] for e in log] == [
        ["Reset the router", "resetting routers", "tax"],
        ["Reset the router"],
    ]
    assert [e["dimensions"] for e in log] == [256, 32] and {e["status"] for e in log} == {200}
    assert sim.requests() == []  # the chat log is apart
    assert http_json(f"{sim.url}/_sim/embedding-requests") == sim.requests("embeddings")


def test_embeddings_bad_requests_and_faults(sim: LLMSimulator, client: OpenAI) -> None:
    bads: list[dict[str, Any]] = [{"input": []}, {"input": [""]}, {"input": [1]}, {"dimensions": 0}]
    for bad in bads:
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(**{"model": "m", "input": "x", **bad})
    sim.configure(down=True)
    with pytest.raises(openai.InternalServerError) as err:
        client.embeddings.create(model="m", input="x")
    assert err.value.status_code == 503
    sim.configure(down=False, fail_next=1)
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="m", input="x")
    assert client.embeddings.create(model="m", input="x").data
    faults = [e["fault"] for e in sim.requests("embeddings")]
    assert faults[-3:] == ["503", "500", None]
