"""End to end over TLS and SASL/SCRAM: `config/production.toml` runs the whole pipeline
through the secured broker of `tests.fixtures.kafka_secure` (librdkafka's real TLS and SCRAM
client code against a TLS + SCRAM front before Tansu), and every wrong security setting
stops the start at once with one line naming the cause and the setting. The password is a
canary value searched for in every output: logs, stderr, output topics, dead letters, files
and reprs; it never appears.

The derived config is production.toml's text with only the deployment's addresses replaced
(broker, CA file, stores directory, LLM endpoint, topic names) and `tail = false` so the
run ends; each replacement must match exactly once, so a reshaped production.toml breaks
this test instead of silently testing something else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from config.models import load_config
from llmsim import LLMSimulator
from runtime.run_audit import config_fingerprint
from support import workload
from support.broker import consume_all, produce
from support.harness import account
from tests.fixtures.kafka_secure import CANARY_PASSWORD, SecureKafka

REPO = Path(__file__).resolve().parents[2]
PRODUCTION = REPO / "config" / "production.toml"
OUTPUTS = ("responses", "alerts", "dead_letters", "audit", "ledger")
CMD_TIMEOUT_S = 300
"""Generous bound on one command; only a hang reaches it."""


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"config/production.toml no longer has exactly one {old!r}"
    return text.replace(old, new)


def derived_production(
    path: Path,
    kafka: SecureKafka,
    llm_url: str,
    *,
    broker: str | None = None,
    ca: Path | None = None,
    mechanism: str = "SCRAM-SHA-512",
    protocol: str = "SASL_SSL",
    profile: str = "production",
) -> tuple[Path, dict[str, str]]:
    """production.toml with this test's addresses; returns the file and its topic names."""
    tag = uuid.uuid4().hex[:8]
    topics = {
        "chat": f"events-{tag}.chat",
        "metrics": f"events-{tag}.metrics",
        "business": f"events-{tag}.business",
        "profiles": f"reference-{tag}.profiles",
        **{name: f"out-{tag}.{name}" for name in OUTPUTS},
    }
    text = PRODUCTION.read_text(encoding="utf-8")
    text = _replace_once(
        text,
        'brokers = ["kafka-1.internal.example:9093", "kafka-2.internal.example:9093"]',
        f'brokers = ["{broker or kafka.bootstrap}"]',
    )
    text = _replace_once(text, '"/etc/contextstream/ca.pem"', f'"{ca or kafka.pki.ca}"')
    text = _replace_once(text, 'mechanism = "SCRAM-SHA-512"', f'mechanism = "{mechanism}"')
    text = _replace_once(
        text, 'security_protocol = "SASL_SSL"', f'security_protocol = "{protocol}"'
    )
    text = _replace_once(text, 'profile = "production"', f'profile = "{profile}"')
    for name in ("chat", "metrics", "business"):
        text = _replace_once(text, f'topic = "events.{name}"', f'topic = "{topics[name]}"')
    text = _replace_once(text, 'topic = "reference.profiles"', f'topic = "{topics["profiles"]}"')
    text = _replace_once(
        text, '[input]\nkind = "kafka"\n', '[input]\nkind = "kafka"\ntail = false\n'
    )
    outputs = "".join(f'{name} = "{topics[name]}"\n' for name in OUTPUTS)
    text = _replace_once(text, '[output]\nkind = "kafka"\n', f'[output]\nkind = "kafka"\n{outputs}')
    text = _replace_once(
        text, 'dir = "/var/lib/contextstream/stores"', f'dir = "{path.parent / "stores"}"'
    )
    text = _replace_once(text, 'base_url = "https://api.openai.com/v1"', f'base_url = "{llm_url}"')
    path.write_text(text, encoding="utf-8")
    return path, topics


def _env(user: str, password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BYTEWAX_", "KAFKA_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["OPENAI_API_KEY"] = "sim-key-for-tests"
    env["KAFKA_SASL_USERNAME"] = user
    env["KAFKA_SASL_PASSWORD"] = password
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=CMD_TIMEOUT_S,
        check=False,
    )


def _files_with(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.fixture
def secure_env(secure_kafka: SecureKafka, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The flow's environment; also set here, so configs load in this process too."""
    env = _env(secure_kafka.user, CANARY_PASSWORD)
    for key in ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "OPENAI_API_KEY"):
        monkeypatch.setenv(key, env[key])
    return env


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256"])
def test_production_profile_runs_the_pipeline_over_sasl_ssl(
    secure_kafka: SecureKafka,
    secure_env: dict[str, str],
    llm_sim: LLMSimulator,
    tmp_path: Path,
    mechanism: str,
) -> None:
    """production.toml's security settings, SASL_SSL with SCRAM: topics created, events in,
    answers out, in = ok + dead letters; the canary password is in no output."""
    config, topics = derived_production(
        tmp_path / "production.toml", secure_kafka, llm_sim.base_url, mechanism=mechanism
    )
    prod, derived = load_config(PRODUCTION), load_config(config)
    assert derived.app.profile == prod.app.profile == "production"
    assert derived.kafka.security_protocol == prod.kafka.security_protocol == "SASL_SSL"
    assert derived.kafka.tls.endpoint_identification is prod.kafka.tls.endpoint_identification
    assert derived.kafka.sasl is not None and prod.kafka.sasl is not None
    assert derived.kafka.sasl.model_dump() == {
        **prod.kafka.sasl.model_dump(),
        "mechanism": mechanism,
    }
    logins_before = len(secure_kafka.front.logins)

    created = _run(["-m", "connectors.kafkatool", "create-topics", str(config)], secure_env)
    assert created.returncode == 0, created.stderr
    client = secure_kafka.client_config(mechanism)
    chats = workload.chats(60, sessions=12)
    metrics = workload.metrics(300, series=6)
    business = workload.business(60, accounts=10)
    bad = workload.malformed(6)
    # A record claiming a tenant the chat source does not carry: refused, dead-lettered.
    intruder = workload.chats(1, sessions=1, tenant="intruder", prefix="x")
    produce(
        secure_kafka.bootstrap,
        topics["chat"],
        [v for _, v in chats + bad + intruder],
        producer_config=client,
    )
    produce(
        secure_kafka.bootstrap, topics["metrics"], [v for _, v in metrics], producer_config=client
    )
    produce(
        secure_kafka.bootstrap, topics["business"], [v for _, v in business], producer_config=client
    )

    run = _run(["run.py", str(config), "-r", str(tmp_path / "recovery"), "-s", "1"], secure_env)
    assert run.returncode == 0, run.stderr[-3000:]

    def drain(name: str) -> list[dict[str, Any]]:
        recs = consume_all(secure_kafka.bootstrap, topics[name], idle_s=1.0, client_config=client)
        return [json.loads(r.value) for r in recs if r.value is not None]

    with ThreadPoolExecutor(max_workers=len(OUTPUTS)) as pool:  # the idle waits overlap
        out = dict(zip(OUTPUTS, pool.map(drain, OUTPUTS), strict=True))
    sent = {i for i, _ in chats + metrics + business + intruder if i}
    acc = account(sent, out["ledger"], out["dead_letters"], out["responses"])
    assert acc.lost == set()
    assert acc.dead_raw == len(bad)
    assert acc.dead == {intruder[0][0]: 1}
    refused = [d for d in out["dead_letters"] if d["detail"].get("refused_tenant") == "intruder"]
    assert len(refused) == 1 and refused[0]["reason"].startswith("tenant 'intruder' not allowed")
    answered = {i for r in out["responses"] if r["task"] == "chat_reply" for i in r["event_ids"]}
    assert answered == {i for i, _ in chats}
    # The run's start and stop are on the audit topic, with the config's fingerprint.
    activity = [r for r in out["audit"] if r["type"] == "activity"]
    assert [(r["activity"], r["tenant"]) for r in activity if r["tenant"]] == [
        ("tenant_refused", "intruder")
    ]
    runs = [r for r in activity if r["activity"].startswith("run_")]
    assert [r["activity"] for r in runs] == ["run_started", "run_stopped"]
    assert {r["config_fingerprint"] for r in runs} == {config_fingerprint(derived)}
    assert runs[0]["profile"] == "production" and runs[1]["outcome"] == "finished"
    # Every login of this run was SCRAM with this mechanism, and none failed.
    logins = secure_kafka.front.logins[logins_before:]
    assert logins and all(x.ok and x.mechanism == mechanism and x.user == "ctx-app" for x in logins)

    canary = CANARY_PASSWORD.encode()
    texts = [created.stdout, created.stderr, run.stdout, run.stderr, json.dumps(out)]
    texts += [
        repr(derived),
        repr(derived.kafka),
        str(derived.model_dump()),
        repr(secure_kafka.front),
    ]
    texts += [repr(x) for x in secure_kafka.front.logins + secure_kafka.front.refused]
    assert not [t for t in texts if CANARY_PASSWORD in t]
    assert _files_with(tmp_path, canary) == []


CASES = {
    "wrong password": (
        {},
        {"KAFKA_SASL_PASSWORD": "canary-wrong-0b1e-pw"},
        1,
        ["SASL authentication failed for user 'ctx-app'", "KAFKA_SASL_PASSWORD", "kafka.sasl"],
    ),
    "unknown user": (
        {},
        {"KAFKA_SASL_USERNAME": "nobody"},
        1,
        ["SASL authentication failed for user 'nobody'", "KAFKA_SASL_USERNAME", "kafka.sasl"],
    ),
    "untrusted CA": (
        {"ca": "other_ca"},
        {},
        1,
        ["certificate of broker", "is not trusted", "kafka.tls.ca_location", "other-ca.pem"],
    ),
    "hostname mismatch": (
        {"broker": "wrong_host"},
        {},
        1,
        ["not issued for the host name 127.0.0.1", "kafka.brokers", "endpoint_identification"],
    ),
    "plaintext client": (
        {"protocol": "SASL_PLAINTEXT", "profile": "dev"},
        {},
        1,
        ["speaks TLS but kafka.security_protocol is SASL_PLAINTEXT", '"SASL_SSL"'],
    ),
    "plaintext refused by the production profile": (
        {"protocol": "SASL_PLAINTEXT"},
        {},
        2,
        ["kafka.security_protocol is SASL_PLAINTEXT: production needs SSL or SASL_SSL"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("entry", ["run.py", "bytewax.run"])
def test_wrong_security_settings_stop_the_start_with_the_cause(
    secure_kafka: SecureKafka,
    secure_env: dict[str, str],
    tmp_path: Path,
    case: str,
    entry: str,
) -> None:
    """One `error:` line naming the cause and the setting, the documented exit code, no
    librdkafka log lines, no retry loop (the cause is named at the first refusal rather
    than after the check's timeout), and neither password anywhere in the output."""
    changes, env_changes, code, expected = CASES[case]
    kwargs: dict[str, Any] = {}
    if "ca" in changes:
        kwargs["ca"] = secure_kafka.pki.other_ca
    if "broker" in changes:
        kwargs["broker"] = secure_kafka.wrong_host_front.bootstrap
    for key in ("protocol", "profile"):
        if key in changes:
            kwargs[key] = changes[key]
    config, _ = derived_production(
        tmp_path / "production.toml", secure_kafka, "http://127.0.0.1:9/v1", **kwargs
    )
    env = {**secure_env, **env_changes}
    recovery = tmp_path / "recovery"
    args = {
        "run.py": ["run.py", str(config), "-r", str(recovery)],
        "bytewax.run": [
            "-m",
            "bytewax.run",
            f"flows.pipeline:build('{config}')",
            "-r",
            str(recovery),
            "-s",
            "1",
            "-b",
            "0",
        ],
    }[entry]
    if entry == "bytewax.run":
        recovery.mkdir()
        from bytewax.recovery import init_db_dir

        init_db_dir(recovery, 1)
    result = _run(args, env)
    assert result.returncode == code, result.stderr[-2000:]
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    message = result.stderr[result.stderr.index("error:") :]  # a config error lists lines
    for fragment in expected:
        assert fragment in message, message
    assert "%3|" not in result.stderr and "%6|" not in result.stderr and "%4|" not in result.stderr
    assert "KafkaSecurityError" not in result.stderr  # a message, not a traceback
    assert "is unreachable" not in message  # named at the first refusal, not after a timeout
    output = result.stdout + result.stderr
    for secret in {CANARY_PASSWORD, env["KAFKA_SASL_PASSWORD"]}:
        assert secret not in output
        assert _files_with(tmp_path, secret.encode()) == []
    print(f"{case} via {entry}: {message}")
