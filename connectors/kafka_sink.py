"""The Kafka output: topics that never drop a message silently.

Items are `(key, value)` pairs of bytes. `ReliableKafkaSink` registers a delivery callback for
every message and flushes at the end of each batch; if any message of the batch failed for
good it raises `DeliveryFailed`, which stops the worker before the epoch's snapshot is
written, so a restart replays the records instead of advancing past a lost message (Bytewax
0.21.1's own `KafkaSink` ignores delivery failures). The producer is idempotent with
`acks=all`.

Failures are of two kinds:
- permanent (a message over `message.max.bytes`, an unknown topic, a fatal producer error):
  the batch fails at once, with the cause and the fix in the message;
- anything else (messages timed out on a stalled broker, transport errors, and the producer
  fencing that follows them): the sink keeps the batch and, with a fresh producer, produces
  the failed messages again until `stall_timeout_s` has passed since the batch began,
  logging a warning every few seconds and setting `contextstream_output_stalled`, so a
  broker paused for a minute holds the flow back (backpressure) instead of failing it. Only
  past `stall_timeout_s` does the batch fail. Re-producing may duplicate a message the
  broker had in fact stored: output is at-least-once, and every record carries its event ids.

A fresh producer is needed because an idempotent producer whose messages timed out bumps its
epoch, and a broker may then fence it ("a newer producer ... fences the current one", seen
with Tansu after a 12 s pause): re-producing through it would fail for good.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from core.records import KV
from runtime.metrics import OUTPUT_REPRODUCED, OUTPUT_STALL_SECONDS, OUTPUT_STALLED

log = logging.getLogger("contextstream.sinks")

#: Delivery errors that producing again cannot fix: the message or the topic is refused.
PERMANENT_DELIVERY_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.POLICY_VIOLATION,
        KafkaError.INVALID_REQUIRED_ACKS,
        KafkaError._INVALID_ARG,
    }
)

_STALL_LOG_EVERY_S = 5.0


class DeliveryFailed(RuntimeError):
    """Messages could not be delivered to an output topic; the run stops before its snapshot.

    Fix the cause named in the message (missing topic, broker down, message too large), then
    restart on the same recovery directory: the records are produced again.
    """


class _KafkaPartition(StatelessSinkPartition[KV]):
    def __init__(
        self,
        make_producer: Callable[[], Producer],
        topic: str,
        flush_timeout_s: float,
        stall_timeout_s: float,
    ) -> None:
        self.make_producer = make_producer
        self.producer = make_producer()
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.errors: list[str] = []
        self.retry: list[KV] = []
        self.retry_reasons: set[str] = set()

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        if self.stall_timeout_s > 0 and err.code() not in PERMANENT_DELIVERY_ERRORS:
            self.retry.append((msg.key(), msg.value() or b""))
            if len(self.retry_reasons) < 5:
                self.retry_reasons.add(err.str())
        elif len(self.errors) < 20:
            self.errors.append(f"{msg.topic()}: {err.str()}")

    def _produce(self, items: list[KV]) -> None:
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
                except KafkaException as exc:
                    err = exc.args[0] if exc.args else None
                    code = err.code() if isinstance(err, KafkaError) else None
                    hint = ""
                    if code == KafkaError.MSG_SIZE_TOO_LARGE:
                        hint = (
                            f" (a {len(value)}-byte record: raise kafka.message_max_bytes and "
                            "the topic's max.message.bytes, then restart on the same recovery "
                            "directory)"
                        )
                    msg = f"delivery to output topic {topic!r} failed: {exc}{hint}"
                    log.error(msg)
                    raise DeliveryFailed(msg) from exc

    def write_batch(self, items: list[KV]) -> None:
        started = time.monotonic()
        self._produce(items)
        # Flush in slices so a stalled broker is reported while we wait for it.
        slice_s = min(_STALL_LOG_EVERY_S, self.flush_timeout_s)
        stalled_since: float | None = None
        last_log = started
        while True:
            remaining = self.producer.flush(slice_s)
            if self.errors:
                break
            if not remaining and not self.retry:
                break
            now = time.monotonic()
            waited = now - started
            if waited >= max(self.flush_timeout_s, self.stall_timeout_s):
                if remaining:
                    self.errors.append(f"{remaining} message(s) still undelivered after flush")
                if self.retry:
                    self.errors.append(
                        f"{len(self.retry)} message(s) timed out while the broker was "
                        f"unreachable for {waited:.0f} s (stall limit {self.stall_timeout_s:g} s)"
                    )
                break
            if stalled_since is None:
                stalled_since = now
                OUTPUT_STALLED.labels(self.topic).set(1)
            if now - last_log >= _STALL_LOG_EVERY_S or self.retry:
                log.warning(
                    "output topic %r: broker stalled for %.0f s; %d message(s) in flight, "
                    "%d to produce again (%s); holding the flow back until it answers",
                    self.topic,
                    now - stalled_since,
                    remaining,
                    len(self.retry),
                    "; ".join(sorted(self.retry_reasons)) or "no answer yet",
                )
                last_log = now
            if self.retry and not remaining:
                # Every message has an outcome: re-produce the failed ones through a fresh
                # producer (the old one may be fenced after its timeouts; see module doc).
                again, self.retry = self.retry, []
                self.retry_reasons.clear()
                OUTPUT_REPRODUCED.labels(self.topic).inc(len(again))
                self.producer.purge()
                self.producer.flush(0)
                self.producer = self.make_producer()
                self._produce(again)
        if stalled_since is not None:
            stall = time.monotonic() - stalled_since
            OUTPUT_STALLED.labels(self.topic).set(0)
            OUTPUT_STALL_SECONDS.labels(self.topic).inc(stall)
            if not self.errors:
                log.warning(
                    "output topic %r: broker answered again after %.1f s", self.topic, stall
                )
        if self.errors:
            errors, self.errors, self.retry = self.errors, [], []
            msg = f"delivery to output topic {self.topic!r} failed: " + "; ".join(errors)
            log.error(msg)
            raise DeliveryFailed(msg)

    def close(self) -> None:
        self.producer.flush(self.flush_timeout_s)


class ReliableKafkaSink(DynamicSink[KV]):
    """Produces `(key, value)` pairs to one topic; fails the run on any lost message.

    `flush_timeout_s` bounds how long a batch may wait for its acknowledgements;
    `stall_timeout_s` (0: no stall tolerance) is how long messages that timed out on a stalled
    broker are produced again before the batch fails.
    """

    def __init__(
        self,
        topic: str,
        settings: Mapping[str, str],
        flush_timeout_s: float = 60.0,
        stall_timeout_s: float = 0.0,
    ):
        self.topic = topic
        self.settings = dict(settings)
        self.flush_timeout_s = flush_timeout_s
        self.stall_timeout_s = stall_timeout_s

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
        return _KafkaPartition(
            lambda: Producer(config), self.topic, self.flush_timeout_s, self.stall_timeout_s
        )
