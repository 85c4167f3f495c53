"""The Kafka test helpers work against the real (Tansu) broker, Bytewax included."""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest
from bytewax import operators as op
from bytewax.connectors.kafka import (
    KafkaError,
    KafkaSink,
    KafkaSinkMessage,
    KafkaSource,
    KafkaSourceMessage,
)
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main

from support.broker import (
    ProduceError,
    TansuBroker,
    consume_all,
    create_topic,
    produce,
    topic_names,
)
from tests.fixtures.kafka import TopicFactory


def test_produce_then_consume_exactly_1000_from_three_partitions(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory("roundtrip", partitions=3)
    sent = {f"k{i}".encode(): f"v{i}".encode() for i in range(1000)}

    assert produce(kafka_bootstrap, topic, sent.items()) == 1000
    # No ``expected``: stops on idleness, so duplicates/extras would show up.
    records = consume_all(kafka_bootstrap, topic, idle_s=1.0)

    assert len(records) == 1000
    assert {r.key: r.value for r in records} == sent
    per_partition = Counter(r.partition for r in records)
    assert set(per_partition) == {0, 1, 2}
    for partition, count in per_partition.items():
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == list(range(count))
    assert all(r.topic == topic for r in records)


def test_headers_partition_and_null_key_round_trip(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory("headers", partitions=2)
    produce(
        kafka_bootstrap,
        topic,
        [
            {
                "key": b"a",
                "value": b"1",
                "partition": 1,
                "headers": [("trace", b"t-1"), ("n", b"")],
            },
            {"value": b"2", "partition": 0, "headers": [("trace", b"t-2"), ("trace", b"dup")]},
            b"3",
        ],
        key=b"default",
    )

    records = consume_all(kafka_bootstrap, topic, expected=3)

    by_value = {r.value: r for r in records}
    assert len(records) == 3
    assert by_value[b"1"].partition == 1
    assert by_value[b"1"].key == b"a"
    assert by_value[b"1"].headers == (("trace", b"t-1"), ("n", b""))
    assert by_value[b"2"].partition == 0
    assert by_value[b"2"].key == b"default"
    assert by_value[b"2"].headers == (("trace", b"t-2"), ("trace", b"dup"))
    assert by_value[b"3"].key == b"default"
    assert by_value[b"3"].headers == ()


def test_consume_all_with_expected_returns_promptly(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory("prompt", partitions=3)
    produce(kafka_bootstrap, topic, [f"v{i}".encode() for i in range(50)])

    started = time.monotonic()
    records = consume_all(kafka_bootstrap, topic, expected=50, idle_s=30.0, timeout_s=30.0)
    elapsed = time.monotonic() - started

    assert len(records) == 50
    assert elapsed < 5.0, f"consume_all took {elapsed:.1f}s despite expected=50"


def test_consume_all_on_empty_topic_returns_after_idle(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory("empty")
    started = time.monotonic()
    assert consume_all(kafka_bootstrap, topic, idle_s=0.3, timeout_s=10.0) == []
    assert time.monotonic() - started < 5.0


def test_topic_factory_names_are_unique_and_created(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    names = [topic_factory("uniq", partitions=2) for _ in range(5)]

    assert len(set(names)) == 5
    assert all(name.startswith("uniq-") for name in names)
    assert set(names) <= topic_names(kafka_bootstrap)


def test_create_topic_rejects_duplicates(kafka_bootstrap: str, topic_factory: TopicFactory) -> None:
    name = topic_factory("dup")
    with pytest.raises(Exception, match="TOPIC_ALREADY_EXISTS"):
        create_topic(kafka_bootstrap, name)


def test_private_broker_lifecycle_pause_and_resume() -> None:
    with TansuBroker() as broker:
        assert broker.is_running
        assert broker.bootstrap == f"127.0.0.1:{broker.port}"
        topic = create_topic(broker.bootstrap, "lifecycle")

        with broker.paused():
            assert broker.is_paused
            with pytest.raises(ProduceError):
                produce(broker.bootstrap, topic, [b"lost"], timeout_s=1.0)
        assert not broker.is_paused

        produce(broker.bootstrap, topic, [b"after-resume"])
        assert [r.value for r in consume_all(broker.bootstrap, topic, expected=1)] == [
            b"after-resume"
        ]
        pid = broker.pid
    assert not broker.is_running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _shout(
    msg: KafkaSourceMessage[bytes | None, bytes | None] | KafkaError[bytes | None, bytes | None],
) -> KafkaSinkMessage[bytes, bytes]:
    # raise_on_errors=True (the default) means errors never reach the dataflow.
    assert isinstance(msg, KafkaSourceMessage)
    assert msg.key is not None and msg.value is not None
    return KafkaSinkMessage(key=msg.key, value=msg.value.upper())


def test_bytewax_kafka_connectors_run_against_broker(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    source_topic = topic_factory("bw-in", partitions=3)
    sink_topic = topic_factory("bw-out", partitions=1)
    sent = {f"k{i}".encode(): f"value-{i}".encode() for i in range(300)}
    produce(kafka_bootstrap, source_topic, sent.items())

    flow = Dataflow("broker_fixture_smoke")
    messages = op.input(
        "in", flow, KafkaSource(brokers=[kafka_bootstrap], topics=[source_topic], tail=False)
    )
    shouted = op.map("shout", messages, _shout)
    op.output("out", shouted, KafkaSink(brokers=[kafka_bootstrap], topic=sink_topic))
    # tail=False: the source ends at partition EOF, so run_main returns.
    run_main(flow)

    records = consume_all(kafka_bootstrap, sink_topic, idle_s=1.0)
    assert len(records) == len(sent)
    assert {r.key: r.value for r in records} == {k: v.upper() for k, v in sent.items()}
