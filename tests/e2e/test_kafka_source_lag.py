"""Input lag per partition (`contextstream_input_lag_messages{topic,partition}`), set by the
Kafka source from librdkafka's cached high watermark after every poll, on a real broker."""

from __future__ import annotations

import time

from prometheus_client import REGISTRY

from connectors.kafka_source import RawKafkaSource
from runtime import metrics
from support.broker import produce

POLL_TIMEOUT_S = 60.0
"""Generous bound for waiting on the broker; the test waits for conditions, not durations."""


def lag(topic: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value(
        "contextstream_input_lag_messages", {"topic": topic, "partition": str(partition)}
    )


def test_lag_is_the_high_watermark_minus_the_next_offset(
    kafka_bootstrap: str, topic_factory
) -> None:
    topic = topic_factory("lag", partitions=2)
    produce(kafka_bootstrap, topic, [{"value": f"a{i}", "partition": 0} for i in range(60)])
    produce(kafka_bootstrap, topic, [{"value": f"b{i}", "partition": 1} for i in range(40)])
    source = RawKafkaSource(
        {topic: "events"}, {"bootstrap.servers": kafka_bootstrap}, batch_size=25
    )
    assert source.list_parts() == [f"0-{topic}", f"1-{topic}"]
    p0 = source.build_part("ingest", f"0-{topic}", None)
    p1 = source.build_part("ingest", f"1-{topic}", 10)  # resumed at offset 10
    try:
        # Partition 0: one batch of at most 25 records, read from the beginning.
        read0 = 0
        deadline = time.monotonic() + POLL_TIMEOUT_S
        while read0 == 0 and time.monotonic() < deadline:
            read0 = len(p0.next_batch())
        assert 0 < read0 <= 25
        assert lag(topic, 0) == 60 - read0
        # Partition 1: read to the end from the resume offset; lag falls to zero.
        read1 = 0
        while read1 < 30 and time.monotonic() < deadline:
            read1 += len(p1.next_batch())
        assert read1 == 30
        p1.next_batch()  # nothing new: the lag is set from the cached watermark again
        assert lag(topic, 1) == 0
        assert metrics.snapshot()["lag"] >= 60 - read0
        # More records arrive: the next poll's fetch reports the new high watermark.
        produce(kafka_bootstrap, topic, [{"value": f"c{i}", "partition": 1} for i in range(7)])
        seen = 0.0
        while time.monotonic() < deadline:
            got = len(p1.next_batch())
            seen = lag(topic, 1) or 0.0
            if got or seen:
                break
        # Once a fetch has seen them (some read, or all waiting), next offset + lag = 47.
        assert p1.snapshot() + seen == 47
    finally:
        p0.close()
        p1.close()
