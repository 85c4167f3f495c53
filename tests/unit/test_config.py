"""Unit tests of `config.models`: loading deployment files, validation, production checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from config.models import ConfigError, RouteRule, Settings, load_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
SECRET_ENV = ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "OPENAI_API_KEY", "OPENAI_BASE_URL")
REAL_USER = "svc-contextstream-prod"
REAL_PASSWORD = "Zq8vR2mT9pL4wB7kDf3N"
REAL_API_KEY = "sk-proj-4fJ9a8Bc7De6Fg5Hi3Jk"
MINIMAL = '[input]\nsources = [{ name = "s", path = "in.jsonl" }]\n'


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECRET_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def real_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SASL_USERNAME", REAL_USER)
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", REAL_PASSWORD)
    monkeypatch.setenv("OPENAI_API_KEY", REAL_API_KEY)


def write(tmp_path: Path, text: str, name: str = "deploy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def production_variant(tmp_path: Path, old: str, new: str) -> Path:
    text = (CONFIG_DIR / "production.toml").read_text(encoding="utf-8")
    assert old in text
    return write(tmp_path, text.replace(old, new), "production.toml")


# --- shipped files --------------------------------------------------------------------------


def test_load_local() -> None:
    s = load_config(CONFIG_DIR / "local.toml")
    assert s.app.profile == "local"
    assert s.input.kind == "file"
    assert [(src.name, src.path, src.adapter) for src in s.input.sources] == [
        ("sample", "data/sample_events.jsonl", "auto")
    ]
    assert s.output.kind == "file"
    assert s.anomaly.z_threshold == 5.0
    assert s.stores.profiles_seed == "data/profiles.jsonl"
    tasks = {t.name: t for t in s.llm.tasks}
    assert set(tasks) == {"chat_reply", "explain_anomaly", "summarize_memory"}
    assert tasks["explain_anomaly"].urgent
    assert tasks["chat_reply"].model == "sim-1"
    assert tasks["chat_reply"].knowledge is not None
    assert s.memory.max_tokens and s.memory.summary_task == "summarize_memory"
    assert s.input.knowledge is not None and s.input.knowledge.path == "data/knowledge.jsonl"


def test_load_kafka_dev() -> None:
    s = load_config(CONFIG_DIR / "kafka-dev.toml")
    assert s.app.profile == "dev"
    assert s.input.kind == "kafka"
    assert {src.topic: src.adapter for src in s.input.sources} == {
        "events.chat": "chat_message",
        "events.metrics": "metric_reading",
        "events.business": "business_event",
    }
    assert s.input.profiles is not None
    assert s.input.profiles.topic == "reference.profiles"
    assert s.kafka.security_protocol == "PLAINTEXT"
    assert s.output.ledger == "contextstream.ledger"
    conf = s.kafka.client_settings()
    assert conf["bootstrap.servers"] == "127.0.0.1:9092"
    assert conf["security.protocol"] == "plaintext"


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")
    bad = write(tmp_path, "[app\nname = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(bad)
    assert str(bad) in str(info.value)


# --- strictness -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[app]\nnmae = "x"\n' + MINIMAL, "nmae"),
        ("[validation]\nmax_byte = 100\n" + MINIMAL, "max_byte"),
        ('[input]\nsources = [{ name = "s", path = "p", adaptor = "auto" }]\n', "adaptor"),
        ("[surprise]\nx = 1\n" + MINIMAL, "surprise"),
    ],
)
def test_unknown_keys_are_rejected_by_name(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert key in msg
    assert str(path) in msg
    assert "xtra" in msg  # pydantic: "Extra inputs are not permitted"


def test_invalid_values_are_rejected(tmp_path: Path) -> None:
    text = '[input]\nkind = "kafka"\nsources = [{ name = "s", path = "in.jsonl" }]\n'
    with pytest.raises(ConfigError, match="has no `topic`"):
        load_config(write(tmp_path, text))
    text = '[input]\nsources = [{ name = "s", path = "a", topic = "b" }]\n'
    with pytest.raises(ConfigError, match="exactly one of"):
        load_config(write(tmp_path, text))


def test_models_are_frozen() -> None:
    s = load_config(CONFIG_DIR / "local.toml")
    with pytest.raises(ValidationError, match="frozen"):
        s.app.name = "other"
    with pytest.raises(ValidationError, match="frozen"):
        s.validation.max_bytes = 1
    with pytest.raises(ValidationError, match="frozen"):
        s.llm.tasks[0].max_batch = 1
    assert isinstance(s.input.sources, tuple)


def test_route_naming_unknown_task_is_rejected(tmp_path: Path) -> None:
    text = MINIMAL + '[[llm.routes]]\nkind = "chat"\ntask = "summarise"\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert "unknown task 'summarise'" in str(info.value)


def test_route_to_none_needs_no_task(tmp_path: Path) -> None:
    text = MINIMAL + '[[llm.routes]]\nkind = "chat"\ntask = "none"\n'
    s = load_config(write(tmp_path, text))
    assert s.llm.routes == (RouteRule(kind="chat", task="none"),)


def test_duplicate_task_names_are_rejected(tmp_path: Path) -> None:
    task = '[[llm.tasks]]\nname = "t"\nschema_name = "chat_reply"\n'
    with pytest.raises(ConfigError, match="unique"):
        load_config(write(tmp_path, MINIMAL + task + task))


# --- production -----------------------------------------------------------------------------


def test_production_refused_while_secrets_unset() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CONFIG_DIR / "production.toml")
    msg = str(info.value)
    assert "production profile refused" in msg
    for name in ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "OPENAI_API_KEY"):
        assert f"environment variable {name} is unset or a placeholder" in msg


@pytest.mark.parametrize("placeholder", ["changeme", "<your key>", "TODO", "xxx-xxx", "  "])
def test_production_refused_with_placeholder_secrets(
    monkeypatch: pytest.MonkeyPatch, real_secrets: None, placeholder: str
) -> None:
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", placeholder)
    with pytest.raises(ConfigError) as info:
        load_config(CONFIG_DIR / "production.toml")
    msg = str(info.value)
    assert "KAFKA_SASL_PASSWORD is unset or a placeholder" in msg
    assert "KAFKA_SASL_USERNAME" not in msg
    assert "OPENAI_API_KEY" not in msg


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_production_refused_with_plaintext_broker(
    tmp_path: Path, real_secrets: None, protocol: str
) -> None:
    path = production_variant(
        tmp_path, 'security_protocol = "SASL_SSL"', f'security_protocol = "{protocol}"'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"kafka.security_protocol is {protocol}" in str(info.value)


def test_production_accepted_with_sasl_ssl_and_real_secrets(real_secrets: None) -> None:
    s = load_config(CONFIG_DIR / "production.toml")
    assert s.app.profile == "production"
    assert s.kafka.security_protocol == "SASL_SSL"
    assert s.validation.max_past_age_s == 604800
    conf = s.kafka.client_settings()
    assert conf["security.protocol"] == "sasl_ssl"
    assert conf["ssl.ca.location"] == "/etc/contextstream/ca.pem"
    assert conf["ssl.endpoint.identification.algorithm"] == "https"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (conf["sasl.username"], conf["sasl.password"]) == (REAL_USER, REAL_PASSWORD)
    assert s.llm.api_key().get_secret_value() == REAL_API_KEY


def test_secrets_never_in_repr_or_error(
    monkeypatch: pytest.MonkeyPatch, real_secrets: None
) -> None:
    s = load_config(CONFIG_DIR / "production.toml")
    key = s.llm.api_key()
    for text in (repr(s), str(s), repr(s.llm), repr(key), str(key)):
        for secret in (REAL_USER, REAL_PASSWORD, REAL_API_KEY):
            assert secret not in text
    assert "**" in repr(key)

    # A refused start names the variables, never their values.
    leaked_key = "sk-placeholder-9fK2mQ7vX1"
    monkeypatch.setenv("OPENAI_API_KEY", leaked_key)
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "changeme-user-77")
    with pytest.raises(ConfigError) as info:
        load_config(CONFIG_DIR / "production.toml")
    msg = str(info.value)
    assert "OPENAI_API_KEY" in msg
    assert "KAFKA_SASL_USERNAME" in msg
    for secret in (leaked_key, "changeme-user-77", REAL_PASSWORD):
        assert secret not in msg
        assert secret not in repr(info.value)


def test_non_production_profiles_skip_the_checks(tmp_path: Path) -> None:
    path = production_variant(tmp_path, 'profile = "production"', 'profile = "dev"')
    s = load_config(path)
    assert s.app.profile == "dev"


def test_settings_defaults_are_safe() -> None:
    s = Settings.model_validate({"input": {"sources": [{"name": "s", "path": "p"}]}})
    assert s.app.profile == "local"
    assert s.validation.max_past_age_s is None
    assert s.kafka.security_protocol == "PLAINTEXT"
    assert [r.task for r in s.llm.routes] == ["chat_reply", "explain_anomaly", "none", "none"]
