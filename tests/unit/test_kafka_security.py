"""`connectors.kafka_security.diagnose` on librdkafka's reports (no broker: the branches
that need no probe of a broker address)."""

from __future__ import annotations

from confluent_kafka import KafkaError

from connectors.kafka_security import diagnose, scrub

SETTINGS = {
    "bootstrap.servers": "kafka-1.example:9093",
    "security.protocol": "sasl_ssl",
    "sasl.mechanism": "SCRAM-SHA-256",
    "sasl.username": "svc",
    "sasl.password": "canary-unit-pw",
}


def test_sasl_refusal_names_user_variables_and_mechanism_but_not_the_password() -> None:
    err = KafkaError(
        KafkaError._AUTHENTICATION,
        "sasl_ssl://kafka-1.example:9093/bootstrap: SASL authentication error: Authentication "
        "failed during authentication due to invalid credentials with SASL mechanism "
        "SCRAM-SHA-256 (after 3ms in state AUTH_REQ)",
    )
    cause = diagnose(SETTINGS, [err], [], sasl_env=("APP_USER", "APP_PASS"))
    assert cause is not None
    assert "SASL authentication failed for user 'svc' with SCRAM-SHA-256" in cause
    assert "APP_USER / APP_PASS" in cause and "kafka.sasl.mechanism" in cause
    assert "canary-unit-pw" not in cause


def test_other_handshake_failures_quote_the_reason_and_name_the_settings() -> None:
    err = KafkaError(
        KafkaError._SSL,
        "ssl://kafka-1.example:9093/bootstrap: SSL handshake failed: no shared cipher "
        "(after 1ms in state SSL_HANDSHAKE)",
    )
    cause = diagnose(SETTINGS, [err], [])
    assert cause is not None
    assert "no shared cipher" in cause and "kafka.tls.*" in cause


def test_plain_connection_refusals_are_not_security_problems() -> None:
    err = KafkaError(KafkaError._TRANSPORT, "Connect to ipv4#10.0.0.1:9093 failed: refused")
    assert diagnose(SETTINGS, [err], ["FAIL ... Connection refused (in state CONNECT)"]) is None


def test_scrub_removes_the_password() -> None:
    assert scrub("x canary-unit-pw y", SETTINGS) == "x *** y"
    assert scrub("x", {}) == "x"
