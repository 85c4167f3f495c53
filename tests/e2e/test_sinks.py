"""The Kafka sink delivers everything or fails the run; it never drops a message silently."""

from __future__ import annotations

import socket

import pytest

from connectors.kafka_sink import DeliveryFailed, ReliableKafkaSink
from support.broker import consume_all


def _dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there


def test_batch_is_delivered(kafka_bootstrap: str, topic_factory) -> None:
    topic = topic_factory("sink")
    part = ReliableKafkaSink(topic, {"bootstrap.servers": kafka_bootstrap}).build("s", 0, 1)
    part.write_batch([(b"k%d" % i, b"v%d" % i) for i in range(500)])
    part.close()
    got = consume_all(kafka_bootstrap, topic, expected=500)
    assert sorted(r.value or b"" for r in got) == sorted(b"v%d" % i for i in range(500))


def test_undeliverable_batch_fails_the_run() -> None:
    """The broker is unreachable: `write_batch` raises instead of returning, so Bytewax
    stops before the epoch's snapshot and a restart produces the records again."""
    settings = {"bootstrap.servers": _dead_address(), "message.timeout.ms": "1500"}
    part = ReliableKafkaSink("out", settings, flush_timeout_s=20).build("s", 0, 1)
    with pytest.raises(DeliveryFailed, match="delivery to output topic 'out' failed"):
        part.write_batch([(None, b"x"), (None, b"y")])
