"""Kafka settings validated at load (brokers, `kafka.extra`), and the pure parts of
`connectors.kafkatool` (topic plan, routing of a JSON-lines file, name resolution)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from config.models import (
    ConfigError,
    Settings,
    check_broker_address,
    detect_adapter,
    load_config,
)
from connectors.kafkatool import (
    TOPIC_CONFIG,
    resolve_topic,
    route_events,
    route_profiles,
    topic_plan,
)

REPO = Path(__file__).resolve().parents[2]
DEV = REPO / "config" / "kafka-dev.toml"
SAMPLE = REPO / "data" / "sample_events.jsonl"
INPUT = '[input]\nsources = [{ name = "s", path = "in.jsonl" }]\n'


def kafka_toml(tmp_path: Path, kafka: str) -> Path:
    path = tmp_path / "deploy.toml"
    path.write_text(f"[kafka]\n{kafka}\n{INPUT}", encoding="utf-8")
    return path


def dev() -> Settings:
    return load_config(DEV)


# --- kafka.brokers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address", ["127.0.0.1:9092", "kafka-1.internal:19092", "[::1]:9092", "b_2:1"]
)
def test_broker_addresses_with_a_port_are_accepted(address: str) -> None:
    assert check_broker_address(address) is None


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "has no port"),
        ("kafka-1", "has no port"),
        ("kafka-1:", "is not host:port"),
        ("kafka-1:http", "is not host:port"),
        ("kafka-1:9092,kafka-2:9092", "is not host:port"),
        ("kafka-1:70000", "outside 1..65535"),
        ("kafka-1:0", "outside 1..65535"),
    ],
)
def test_broker_addresses_without_a_numeric_port_are_refused(
    tmp_path: Path, address: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(kafka_toml(tmp_path, f'brokers = ["{address}"]'))
    msg = str(info.value)
    assert "kafka.brokers" in msg and reason in msg
    assert "\n" not in msg  # one line
    if reason == "has no port":
        assert "host:port" in msg and ":9092" in msg  # names the fix


def test_broker_addresses_are_stripped(tmp_path: Path) -> None:
    s = load_config(kafka_toml(tmp_path, 'brokers = [" 127.0.0.1:9092 "]'))
    assert s.kafka.client_settings()["bootstrap.servers"] == "127.0.0.1:9092"


# --- kafka.extra ---------------------------------------------------------------------------


def test_a_misspelled_extra_key_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(kafka_toml(tmp_path, 'extra = { "sesion.timeout.ms" = "6000" }'))
    msg = str(info.value)
    assert "kafka.extra" in msg and "'sesion.timeout.ms'" in msg
    assert "No such configuration property" in msg and "fix the name" in msg
    assert "\n" not in msg


def test_an_invalid_extra_value_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"session\.timeout\.ms.*Invalid value"):
        load_config(kafka_toml(tmp_path, 'extra = { "session.timeout.ms" = "soon" }'))


def test_consumer_and_producer_settings_are_both_accepted(tmp_path: Path) -> None:
    extra = {"fetch.min.bytes": "1", "linger.ms": "5", "session.timeout.ms": "6000"}
    toml = "extra = { " + ", ".join(f'"{k}" = "{v}"' for k, v in extra.items()) + " }"
    s = load_config(kafka_toml(tmp_path, toml))
    conf = s.kafka.client_settings()
    assert all(conf[k] == v for k, v in extra.items())


@pytest.mark.parametrize("key", ["sasl.password", "ssl.key.password", "sasl.username"])
def test_credentials_in_extra_are_refused_without_repeating_them(tmp_path: Path, key: str) -> None:
    secret = "Zq8vR2mT9pL4wB7kDf3N"
    with pytest.raises(ConfigError) as info:
        load_config(kafka_toml(tmp_path, f'extra = {{ "{key}" = "{secret}" }}'))
    assert key in str(info.value) and "secrets never live in TOML" in str(info.value)
    assert secret not in str(info.value) and secret not in repr(info.value)


def test_an_invalid_value_is_never_repeated(tmp_path: Path) -> None:
    value = "not-a-number-Zq8vR2"
    with pytest.raises(ConfigError) as info:
        load_config(kafka_toml(tmp_path, f'extra = {{ "socket.timeout.ms" = "{value}" }}'))
    assert value not in str(info.value)


def test_settings_from_typed_fields_cannot_be_overridden_in_extra(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'bootstrap\.servers' is set from kafka\.brokers"):
        load_config(kafka_toml(tmp_path, 'extra = { "bootstrap.servers" = "x:1" }'))


# --- topic plan ----------------------------------------------------------------------------


def test_the_dev_config_plans_every_topic_with_explicit_configs() -> None:
    plan = {t.name: t for t in topic_plan(dev())}
    assert {n: (t.role, t.partitions) for n, t in plan.items()} == {
        "events.chat": ("input", 3),
        "events.metrics": ("input", 3),
        "events.business": ("input", 3),
        "reference.profiles": ("profiles", 1),
        "contextstream.responses": ("output", 1),
        "contextstream.alerts": ("output", 1),
        "contextstream.dlq": ("output", 1),
        "contextstream.audit": ("output", 1),
        "contextstream.ledger": ("output", 1),
    }
    assert all(t.config == TOPIC_CONFIG and "retention.ms" in t.config for t in plan.values())
    assert {t.partitions for t in topic_plan(dev(), input_partitions=6) if t.role == "input"} == {6}


def test_dead_letter_retention_is_applied_to_the_dead_letter_topic_only() -> None:
    settings = dev().model_copy(
        update={"output": dev().output.model_copy(update={"dead_letter_retention_ms": 86_400_000})}
    )
    plan = {t.name: t for t in topic_plan(settings)}
    assert plan["contextstream.dlq"].config == {**TOPIC_CONFIG, "retention.ms": "86400000"}
    others = [t for n, t in plan.items() if n != "contextstream.dlq"]
    assert all(t.config == TOPIC_CONFIG for t in others)


def test_dead_letter_retention_below_a_minute_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[input]\nkind = "file"\nsources = [{ name = "a", path = "a.jsonl" }]\n'
        "[output]\ndead_letter_retention_ms = 10\n"
    )
    with pytest.raises(ConfigError, match="dead_letter_retention_ms"):
        load_config(path)


def test_a_file_config_plans_no_topics() -> None:
    assert topic_plan(load_config(REPO / "config" / "local.toml")) == []


# --- routing a JSON-lines file -------------------------------------------------------------


def _is_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def test_the_sample_is_split_by_shape_and_keyed_by_entity() -> None:
    lines = route_events(dev(), SAMPLE)
    raw = [ln for ln in SAMPLE.read_bytes().splitlines() if ln.strip()]
    assert [ln.value for ln in lines] == raw  # every line, unchanged, in order
    counts = Counter(ln.topic for ln in lines)
    assert set(counts) == {"events.chat", "events.metrics", "events.business"}
    for ln in lines:
        try:
            obj = json.loads(ln.value)
        except ValueError:
            obj = None
        shape = detect_adapter(obj) if isinstance(obj, dict) else None
        if shape is None:
            assert ln.topic == "events.chat" and ln.key is None  # dead-lettered by the flow
            continue
        assert (
            ln.topic
            == {
                "chat_message": "events.chat",
                "metric_reading": "events.metrics",
                "business_event": "events.business",
            }[shape]
        )
        field = {"chat_message": "session_id", "metric_reading": "series"}.get(shape, "account_id")
        entity = obj.get(field)
        if isinstance(entity, str) and entity:
            tenant = obj.get("tenant")
            assert ln.key == (f"{tenant}/{entity}" if isinstance(tenant, str) else entity).encode()
        else:
            assert ln.key is None


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    metric = b'{"series": "a", "value": 1, "timestamp": "2026-01-01T00:00:00Z"}'
    path.write_bytes(metric + b"\n\n  \n[1]\n")
    lines = route_events(dev(), path)
    assert [(ln.number, ln.topic) for ln in lines] == [(1, "events.metrics"), (4, "events.chat")]


def test_an_auto_source_takes_every_shape(tmp_path: Path) -> None:
    cfg = tmp_path / "auto.toml"
    cfg.write_text(
        '[input]\nkind = "kafka"\nsources = [{ name = "all", topic = "in.all" }]\n',
        encoding="utf-8",
    )
    assert {ln.topic for ln in route_events(load_config(cfg), SAMPLE)} == {"in.all"}


def test_profiles_go_to_the_profiles_topic() -> None:
    lines = route_profiles(dev(), REPO / "data" / "profiles.jsonl")
    assert lines and {ln.topic for ln in lines} == {"reference.profiles"}
    first = json.loads(lines[0].value)
    assert lines[0].key == f"{first['tenant']}/{first['entity']}".encode()


def test_names_resolve_to_topics() -> None:
    s = dev()
    assert resolve_topic(s, "responses") == "contextstream.responses"
    assert resolve_topic(s, "dead_letters") == "contextstream.dlq"
    assert resolve_topic(s, "chat") == "events.chat"
    assert resolve_topic(s, "profiles") == "reference.profiles"
    assert resolve_topic(s, "some.topic") == "some.topic"
