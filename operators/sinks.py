"""Outputs: Kafka topics that never drop a message silently, and JSON-lines files.

Items are `(key, value)` pairs of bytes. `ReliableKafkaSink` registers a delivery callback for
every message and flushes at the end of each batch; if any message of the batch failed (or is
still undelivered when the flush times out) it raises `DeliveryFailed`, which stops the
worker before the epoch's snapshot is written, so a restart replays the records instead of
advancing past a lost message (Bytewax 0.21.1's own `KafkaSink` ignores delivery failures).
The producer is idempotent with `acks=all`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, Message, Producer

KV = tuple[bytes | None, bytes]
log = logging.getLogger("contextstream.sinks")


class DeliveryFailed(RuntimeError):
    """Messages could not be delivered to an output topic; the run stops before its snapshot.

    Fix the cause named in the message (missing topic, broker down, message too large), then
    restart on the same recovery directory: the records are produced again.
    """


class _KafkaPartition(StatelessSinkPartition[KV]):
    def __init__(self, producer: Producer, topic: str, flush_timeout_s: float) -> None:
        self.producer = producer
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        self.errors: list[str] = []

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None and len(self.errors) < 20:
            self.errors.append(f"{msg.topic()}: {err.str()}")

    def write_batch(self, items: list[KV]) -> None:
        produce, poll, topic, cb = (
            self.producer.produce,
            self.producer.poll,
            self.topic,
            self._on_delivery,
        )
        for key, value in items:
            while True:
                try:
                    produce(topic, value, key, on_delivery=cb)
                    break
                except BufferError:
                    poll(0.05)  # local queue full: let deliveries drain
        remaining = self.producer.flush(self.flush_timeout_s)
        if remaining:
            self.errors.append(f"{remaining} message(s) still undelivered after flush")
        if self.errors:
            errors, self.errors = self.errors, []
            msg = f"delivery to output topic {self.topic!r} failed: " + "; ".join(errors)
            log.error(msg)
            raise DeliveryFailed(msg)

    def close(self) -> None:
        self.producer.flush(self.flush_timeout_s)


class ReliableKafkaSink(DynamicSink[KV]):
    """Produces `(key, value)` pairs to one topic; fails the run on any delivery failure."""

    def __init__(self, topic: str, settings: Mapping[str, str], flush_timeout_s: float = 60.0):
        self.topic = topic
        self.settings = dict(settings)
        self.flush_timeout_s = flush_timeout_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _KafkaPartition:
        config: dict[str, str | bool] = {
            "enable.idempotence": "true",
            "acks": "all",
            "linger.ms": "5",
            # The callback then runs only for failed messages: no Python call per success.
            # `flush` still waits for every message, so success is known when it returns 0.
            "delivery.report.only.error": True,
            "compression.type": "lz4",
            **self.settings,
        }
        return _KafkaPartition(Producer(config), self.topic, self.flush_timeout_s)


class _FilePartition(StatelessSinkPartition[KV]):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "ab")  # noqa: SIM115 - closed in close()

    def write_batch(self, items: list[KV]) -> None:
        self.f.write(b"".join(value + b"\n" for _, value in items))
        self.f.flush()

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


class JsonlFileSink(DynamicSink[KV]):
    """Appends values as JSON lines to `dir/name.jsonl` (`name.wN.jsonl` with several workers)."""

    def __init__(self, directory: str, name: str) -> None:
        self.directory = directory
        self.name = name

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _FilePartition:
        suffix = "" if worker_count == 1 else f".w{worker_index}"
        return _FilePartition(Path(self.directory) / f"{self.name}{suffix}.jsonl")
