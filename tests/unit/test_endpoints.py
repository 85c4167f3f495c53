"""The endpoint pool's choice (`inference.endpoints`) and the `llm.endpoints` config.

Pure logic: the pool's limiters run on an injected clock and its clients are never used, so
breakers open, expire and close without a server and without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import openai
import pytest

from config.models import (
    ConfigError,
    EndpointConfig,
    FallbackConfig,
    LLMConfig,
    Settings,
    TaskConfig,
    check_production,
    load_config,
)
from inference.endpoints import Endpoint, EndpointPool, Pick
from inference.limits import Outcome


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class NoClient:
    def close(self) -> None:
        pass


def endpoint(name: str, *models: str, **kw: Any) -> EndpointConfig:
    return EndpointConfig(name=name, base_url=f"http://{name}/v1", models=models, **kw)


def llm(*endpoints: EndpointConfig, task: TaskConfig | None = None, **kw: Any) -> LLMConfig:
    task = task or TaskConfig(name="chat", schema_name="chat_reply", model="sim-1")
    return LLMConfig(tasks=(task,), routes=(), endpoints=endpoints, **kw)


def pool(cfg: LLMConfig, clock: Clock) -> EndpointPool:
    return EndpointPool(
        cfg.endpoint_list(None),
        adaptive=False,
        connect=lambda e: cast(openai.OpenAI, NoClient()),
        clock=clock,
    )


def send(p: EndpointPool, task: TaskConfig, kind: str, avoid: Endpoint | None = None) -> Pick:
    """One attempt through the pool, as the executor makes it: choose, send, report."""
    pick = p.choose(task, avoid)
    assert pick is not None
    lim = pick.endpoint.limiter
    lim.acquire(0)
    lim.release(Outcome(kind), 0)
    p.observe(pick.endpoint)
    p.release(pick.endpoint)
    return pick


TASK = TaskConfig(name="chat", schema_name="chat_reply", model="sim-1")
FB_TASK = TaskConfig(
    name="chat",
    schema_name="chat_reply",
    model="sim-1",
    fallback=FallbackConfig(model="sim-small", endpoint="backup", after_s=5.0),
)


def test_least_outstanding_wins_and_ties_go_in_configured_order() -> None:
    clock = Clock()
    p = pool(llm(endpoint("a", "sim-1"), endpoint("b", "sim-1"), concurrency=4), clock)
    picks = [p.choose(TASK) for _ in range(5)]
    assert [x.endpoint.name for x in picks if x] == ["a", "b", "a", "b", "a"]
    a = p.by_name("a")
    p.release(a)
    p.release(a)  # a: 1 outstanding, b: 2
    # a (1 -> 2), then a tie that a wins (2 -> 3), then b (2 -> 3).
    assert [x.endpoint.name for x in (p.choose(TASK) for _ in range(3)) if x] == ["a", "a", "b"]


def test_only_endpoints_serving_the_model_and_with_a_free_slot_are_chosen() -> None:
    clock = Clock()
    cfg = llm(endpoint("other", "sim-9"), endpoint("a", "sim-1", concurrency=2))
    p = pool(cfg, clock)
    first, second = p.choose(TASK), p.choose(TASK)
    assert first and second and {first.endpoint.name, second.endpoint.name} == {"a"}
    assert p.choose(TASK) is None  # a is full; "other" does not serve sim-1
    p.release(first.endpoint)
    again = p.choose(TASK)
    assert again is not None and again.endpoint.name == "a" and not again.fallback


def test_an_open_breaker_moves_traffic_and_its_probe_brings_it_back() -> None:
    clock = Clock()
    cfg = llm(endpoint("a", "sim-1"), endpoint("b", "sim-1"), breaker_failures=2)
    p = pool(cfg, clock)
    a, b = p.by_name("a"), p.by_name("b")
    for _ in range(2):
        assert send(p, TASK, "failure", avoid=b).endpoint is a
    assert a.limiter.breaker_open() and a.down_since == clock.now
    # While a is open, everything goes to b, however many requests b already carries.
    held = [p.choose(TASK) for _ in range(5)]
    assert {x.endpoint.name for x in held if x} == {"b"}
    clock.now += 2.0  # a's open period (breaker_open_s) is over: it gets the one probe
    probe = p.choose(TASK)
    assert probe is not None and probe.endpoint is a
    assert {x.endpoint.name for x in (p.choose(TASK), p.choose(TASK)) if x} == {"b"}
    a.limiter.acquire(0)
    a.limiter.release(Outcome("ok"), 0)
    p.observe(a)
    p.release(a)
    assert not a.limiter.breaker_open() and a.down_since is None
    # Closed again with nothing outstanding: a takes the new requests until it matches b.
    assert [x.endpoint.name for x in (p.choose(TASK) for _ in range(3)) if x] == ["a"] * 3


def test_a_retry_avoids_the_endpoint_that_failed_when_another_can_take_it() -> None:
    clock = Clock()
    p = pool(llm(endpoint("a", "sim-1"), endpoint("b", "sim-1")), clock)
    a, b = p.by_name("a"), p.by_name("b")
    assert send(p, TASK, "failure").endpoint is a
    assert p.elsewhere(TASK, a)
    retry = p.choose(TASK, avoid=a)
    assert retry is not None and retry.endpoint is b
    # The only candidate is taken even if it is the one that failed.
    single = pool(llm(endpoint("a", "sim-1")), clock)
    sa = single.by_name("a")
    assert send(single, TASK, "failure").endpoint is sa
    assert not single.elsewhere(TASK, sa)
    again = single.choose(TASK, avoid=sa)
    assert again is not None and again.endpoint is sa


def test_all_breakers_open_holds_then_the_first_to_recover_serves() -> None:
    clock = Clock()
    cfg = llm(endpoint("a", "sim-1"), endpoint("b", "sim-1"), breaker_failures=1)
    p = pool(cfg, clock)
    a, b = p.by_name("a"), p.by_name("b")
    send(p, TASK, "failure")
    send(p, TASK, "failure", avoid=a)
    assert a.limiter.breaker_open() and b.limiter.breaker_open()
    assert p.choose(TASK) is None and not p.can_serve(TASK)
    clock.now += 2.0
    probe = p.choose(TASK)
    assert probe is not None and probe.endpoint is a  # the first due, in configured order
    pick = p.choose(TASK)
    assert pick is not None and pick.endpoint is b  # b's own probe


def test_fallback_after_the_primary_has_been_down_for_after_s_and_back() -> None:
    clock = Clock()
    cfg = llm(
        endpoint("primary", "sim-1"),
        endpoint("backup", "sim-small"),
        task=FB_TASK,
        breaker_failures=1,
        breaker_open_s=30.0,
        breaker_max_open_s=30.0,
    )
    p = pool(cfg, clock)
    primary, backup = p.by_name("primary"), p.by_name("backup")
    assert send(p, FB_TASK, "failure").endpoint is primary
    assert p.down_for("sim-1") == 0.0 and primary.down_since == clock.now
    assert p.can_serve(FB_TASK)  # the fallback's endpoint is up: nothing is shed
    clock.now += 4.9
    assert p.choose(FB_TASK) is None  # held until after_s
    assert p.down_for("sim-1") == pytest.approx(4.9)
    clock.now += 0.1
    fb = p.choose(FB_TASK)
    assert fb == Pick(backup, "sim-small", True)
    p.release(backup)
    clock.now += 25.0  # the primary's probe is due: it goes there, not to the fallback
    probe = p.choose(FB_TASK)
    assert probe == Pick(primary, "sim-1", False)
    primary.limiter.acquire(0)
    primary.limiter.release(Outcome("ok"), 0)
    p.observe(primary)
    p.release(primary)
    assert p.down_for("sim-1") == 0.0
    back = p.choose(FB_TASK)
    assert back == Pick(primary, "sim-1", False)


def test_fallback_on_the_primary_model_of_another_endpoint_is_still_marked() -> None:
    clock = Clock()
    task = TASK.model_copy(update={"fallback": FallbackConfig(model="sim-1", after_s=0.0)})
    p = pool(llm(endpoint("only", "sim-1"), task=task, breaker_failures=1), clock)
    send(p, task, "failure")
    assert p.choose(task) is None  # the fallback's endpoint is the one that is down
    assert not p.can_serve(task)


# -- config ------------------------------------------------------------------------------


def test_without_endpoints_the_implicit_default_serves_every_model() -> None:
    cfg = LLMConfig(concurrency=6, breaker_failures=3, api_key_env="K")
    [e] = cfg.endpoint_list("http://x/v1")
    assert (e.name, e.base_url, e.api_key_env, e.models) == ("default", "http://x/v1", "K", ())
    assert (e.concurrency, e.breaker_failures) == (6, 3) and e.serves("anything")


def test_endpoints_inherit_unset_limits_and_split_their_own_per_process() -> None:
    cfg = llm(
        endpoint("a", "sim-1", concurrency=5, rpm_limit=61),
        endpoint("b", "sim-1"),
        concurrency=8,
        tpm_limit=1000,
    )
    a, b = cfg.endpoint_list(None)
    assert (a.concurrency, a.rpm_limit, a.tpm_limit) == (5, 61, 1000)
    assert (b.concurrency, b.rpm_limit, b.tpm_limit) == (8, None, 1000)
    shares = [cfg.process_share(i, 2).endpoint_list(None) for i in range(2)]
    assert [s[0].concurrency for s in shares] == [3, 2]
    assert [s[0].rpm_limit for s in shares] == [31, 30]
    assert [s[1].concurrency for s in shares] == [4, 4]  # inherited from the split [llm]
    assert [s[1].tpm_limit for s in shares] == [500, 500]
    with pytest.raises(ConfigError, match=r"llm\.endpoints\[a\]\.concurrency"):
        cfg.process_share(5, 6)


@pytest.mark.parametrize(
    ("endpoints", "task", "message"),
    [
        ((endpoint("a", "sim-1"), endpoint("a", "sim-1")), TASK, "names must be unique"),
        ((EndpointConfig(name="a", models=("sim-1",)),), TASK, r"llm.endpoints\[a\]: base_url"),
        ((EndpointConfig(name="a", base_url="u"),), TASK, r"llm.endpoints\[a\]: base_url"),
        ((endpoint("a", "sim-2"),), TASK, r"llm.tasks\[chat\].model 'sim-1' is served by no"),
        ((endpoint("a", "sim-1"),), FB_TASK, r"fallback.endpoint 'backup' is not an endpoint"),
        (
            (endpoint("a", "sim-1"), endpoint("backup", "sim-1")),
            FB_TASK,
            r"fallback.model 'sim-small' is not served by endpoint 'backup'",
        ),
        (
            (endpoint("a", "sim-1"),),
            TASK.model_copy(update={"fallback": FallbackConfig(model="x")}),
            r"fallback.model 'x' is not served by no llm.endpoints entry",
        ),
    ],
)
def test_endpoint_config_errors_name_the_field(
    endpoints: tuple[EndpointConfig, ...], task: TaskConfig, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        llm(*endpoints, task=task)


AGREED_TOML = """
[input]
kind = "file"
sources = [{ name = "chat", path = "x.jsonl" }]

[llm]
routes = []

[[llm.endpoints]]
name = "primary"
base_url = "http://127.0.0.1:8001/v1"
api_key_env = "PRIMARY_API_KEY"
models = ["sim-1"]
concurrency = 8

[[llm.endpoints]]
name = "backup"
base_url = "http://127.0.0.1:8002/v1"
models = ["sim-small"]
breaker_open_s = 1.0

[[llm.tasks]]
name = "chat_reply"
schema_name = "chat_reply"
model = "sim-1"
fallback = { model = "sim-small", endpoint = "backup", after_s = 5.0 }
"""


def test_the_agreed_toml_syntax_loads(tmp_path: Path) -> None:
    path = tmp_path / "deploy.toml"
    path.write_text(AGREED_TOML, encoding="utf-8")
    s = load_config(path)
    assert [(e.name, e.concurrency) for e in s.llm.endpoints] == [("primary", 8), ("backup", None)]
    [_, backup] = s.llm.endpoint_list(None)
    assert (backup.concurrency, backup.breaker_open_s) == (8, 1.0)  # [llm]'s, its own
    fb = s.llm.tasks[0].fallback
    assert fb is not None and (fb.model, fb.endpoint, fb.after_s) == ("sim-small", "backup", 5.0)


def test_a_bad_endpoint_config_is_refused_at_load_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "deploy.toml"
    path.write_text(AGREED_TOML.replace('endpoint = "backup"', 'endpoint = "spare"'), "utf-8")
    with pytest.raises(ConfigError, match=r"llm.tasks\[chat_reply\].fallback.endpoint 'spare'"):
        load_config(path)
    path.write_text(AGREED_TOML.replace('models = ["sim-1"]', 'models = ["gpt-x"]'), "utf-8")
    with pytest.raises(ConfigError, match=r"llm.tasks\[chat_reply\].model 'sim-1' is served"):
        load_config(path)


def test_production_checks_every_endpoints_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIMARY_API_KEY", "sk-real-looking-0123456789")
    monkeypatch.delenv("BACKUP_API_KEY", raising=False)
    s = Settings.model_validate(
        {
            "app": {"profile": "production"},
            "input": {"kind": "file", "sources": [{"name": "chat", "path": "x.jsonl"}]},
            "llm": {
                "endpoints": [
                    {
                        "name": "p",
                        "base_url": "https://p/v1",
                        "models": ["gpt-4o-mini"],
                        "api_key_env": "PRIMARY_API_KEY",
                    },
                    {
                        "name": "b",
                        "base_url": "https://b/v1",
                        "models": ["gpt-4o-mini"],
                        "api_key_env": "BACKUP_API_KEY",
                    },
                ]
            },
        }
    )
    with pytest.raises(ConfigError) as err:
        check_production(s)
    assert "BACKUP_API_KEY (llm.endpoints[b])" in str(err.value)
    assert "PRIMARY_API_KEY" not in str(err.value)


def test_waiting_requests_are_served_oldest_request_first() -> None:
    """A request moved off a dead endpoint (an old `priority`) gets the next free slot
    before a newer one that started waiting earlier."""
    clock = Clock()
    p = pool(llm(endpoint("a", "sim-1", concurrency=1)), clock)
    a = p.by_name("a")
    assert p.choose(TASK) is not None  # the only slot is taken
    got: list[str] = []

    def wait(name: str, priority: float) -> None:
        p.acquire(TASK, priority=priority)
        got.append(name)
        p.release(a)

    newer = threading.Thread(target=wait, args=("newer", 5.0))
    newer.start()
    assert wait_until(lambda: len(p.waiting) == 1)
    older = threading.Thread(target=wait, args=("older", 1.0))
    older.start()
    assert wait_until(lambda: len(p.waiting) == 2)
    p.release(a)
    newer.join(30)
    older.join(30)
    assert got == ["older", "newer"]


def wait_until(condition: Callable[[], bool]) -> bool:
    for _ in range(6000):
        if condition():
            return True
        time.sleep(0.005)
    return False
