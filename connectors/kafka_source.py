"""The Kafka input: topics read partition by partition, emitting `RawRecord`s with coordinates.

A Bytewax `FixedPartitionedSource` whose resume state is the next offset to read,
snapshotted with the operator state, so a resumed run continues exactly where the last
snapshot was taken.

Unlike Bytewax 0.21.1's own `KafkaSource`, the source here:
- sets `auto.offset.reset=error`: a resume offset lost to retention stops the flow with
  `ResumeOffsetLost` instead of silently skipping to the earliest or latest record;
- emits plain tuples (`RawRecord`) rather than a message object per record;
- bounds librdkafka's read-ahead (`queued.max.messages.kbytes`), which otherwise dominates RSS;
- checks a resumed offset against the partition's watermarks from the first fetch: brokers
  that answer a fetch beyond the end with an empty result instead of OFFSET_OUT_OF_RANGE
  (Tansu does) would otherwise leave the flow waiting silently for offsets that are gone;
- sets `contextstream_input_lag_messages{topic,partition}` (`runtime.metrics.INPUT_LAG`)
  after every poll: the high watermark librdkafka cached from its last fetch response minus
  the next offset to read (no broker round trip);
- lists partitions without creating topics: an admin client's metadata request for a named
  topic makes brokers that allow auto-creation (Tansu always does) create it, with broker
  defaults and no configs, and the flow then waits silently on an empty topic. `list_parts`
  lists all topics instead and raises `MissingTopics` naming the absent ones.

`check_topics` is the start-up check the entry points run before the dataflow (see
`connectors.kafkatool.preflight`): it answers within a few seconds with `BrokerUnreachable`
or `MissingTopics`, whose messages name the problem and the fix, and keeps librdkafka's
connection-error log lines out of the output.

Every partition ends at its current offset once a graceful stop was requested
(`runtime.signals`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from datetime import datetime

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ClusterMetadata

from connectors.kafka_security import diagnose, scrub
from core.records import RawRecord
from runtime import backpressure
from runtime.metrics import INPUT_LAG
from runtime.signals import stop_requested

log = logging.getLogger("contextstream.sources")

CHECK_TIMEOUT_S = 5.0
"""How long `check_topics` (and `list_parts`) wait for the cluster's metadata."""

CREATE_TOPICS_HINT = "python -m connectors.kafkatool create-topics CONFIG"
"""The command that creates every topic a config names (`connectors.kafkatool`)."""


class ResumeOffsetLost(RuntimeError):
    """The offset to resume from no longer exists on the broker (retention deleted it).

    Nothing was skipped. To accept the loss, start with a new recovery directory (after
    deciding how to re-ingest the missing range); to avoid it, keep retention longer than
    the longest outage of this flow.
    """


class SourceError(RuntimeError):
    """The broker reported an error on an input partition; the flow stops so nothing is skipped."""


class KafkaUnavailable(SourceError):
    """The flow cannot start against this cluster; the message names the problem and the fix.

    The entry points print it as one line and exit with code 1 (nothing was read or written).
    """


class BrokerUnreachable(KafkaUnavailable):
    """No broker of `kafka.brokers` answered a metadata request within the check's timeout."""


class MissingTopics(KafkaUnavailable):
    """Topics the config names do not exist on the cluster (`topics`, sorted)."""

    def __init__(self, message: str, topics: Iterable[str]) -> None:
        super().__init__(message)
        self.topics = sorted(topics)


class KafkaSecurityError(BrokerUnreachable):
    """The broker refused the connection's TLS or SASL settings (see `connectors.kafka_security`).

    Raised at the first such refusal, without waiting out the check's timeout: retrying
    cannot fix credentials or certificates. The message names the cause and the setting.
    """


class _Capture(logging.Handler):
    """Keeps librdkafka's log lines of one check (for diagnosis) instead of printing them."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) < 200:
            self.lines.append(record.getMessage())


def cluster_metadata(
    settings: Mapping[str, str],
    *,
    timeout_s: float = CHECK_TIMEOUT_S,
    sasl_env: tuple[str, str] | None = None,
) -> ClusterMetadata:
    """Metadata of every topic (no topic is created), or `BrokerUnreachable` within `timeout_s`.

    librdkafka's connection errors are collected (not printed) and the distinct ones end up
    in the exception's message; so does `bootstrap.servers`. A refused TLS handshake or SASL
    login raises `KafkaSecurityError` at once, naming the cause and the setting to fix
    (`sasl_env`: the environment variables of the user name and password, for the message).
    Nothing else from `settings` (credentials) is ever put in a message.
    """
    errors: dict[str, None] = {}  # insertion-ordered set of distinct reasons
    reports: list[KafkaError] = []
    all_down = False

    def on_error(err: KafkaError) -> None:
        nonlocal all_down
        if len(reports) < 50:
            reports.append(err)
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            all_down = True
        elif len(errors) < 4:
            errors[err.str()] = None

    # librdkafka's own log lines (a "Connection refused" every ~100 ms) are not printed but
    # kept for `diagnose`; the errors reach `on_error`. A `debug` setting in kafka.extra
    # prints them instead (log_level 7).
    conf: dict[str, object] = {**settings, "error_cb": on_error}
    capture = _Capture()
    if "debug" not in settings:
        logger = logging.Logger("contextstream.kafka.check")
        logger.addHandler(capture)
        logger.propagate = False
        conf["logger"] = logger
    admin = AdminClient(conf)  # type: ignore[arg-type]
    started = time.monotonic()
    deadline = started + timeout_s
    attempts = 0
    while True:
        remaining = deadline - time.monotonic()
        try:
            return admin.list_topics(timeout=max(0.05, min(0.5, remaining)))
        except KafkaException:
            attempts += 1
        admin.poll(0)  # serves error_cb and the logger
        cause = diagnose(settings, reports, capture.lines, sasl_env=sasl_env)
        if cause is not None:
            raise KafkaSecurityError(
                scrub(
                    f"Kafka broker {settings.get('bootstrap.servers', '')}"
                    f" (kafka.brokers): {cause}",
                    settings,
                )
            )
        # Every bootstrap broker refused the connection twice: waiting longer will not help.
        if remaining <= 0 or (all_down and attempts >= 2):
            break
    servers = settings.get("bootstrap.servers", "")
    waited = time.monotonic() - started
    reasons = "; ".join(errors) or (
        f"no Kafka answer within {waited:.0f} s (is it a Kafka broker, and does "
        "kafka.security_protocol match its listener?)"
    )
    msg = (
        f"Kafka broker {servers} (kafka.brokers) is unreachable: {reasons}. Start the broker "
        "(for development: `python -m support.broker --port PORT`) or fix kafka.brokers"
    )
    raise BrokerUnreachable(scrub(msg, settings))


def check_topics(
    settings: Mapping[str, str],
    topics: Iterable[str],
    *,
    timeout_s: float = CHECK_TIMEOUT_S,
    create_hint: str = CREATE_TOPICS_HINT,
    sasl_env: tuple[str, str] | None = None,
) -> dict[str, list[int]]:
    """The partitions of each of `topics`; raises `BrokerUnreachable` or `MissingTopics`.

    Answers within about `timeout_s`. Never creates a topic (see the module doc). The
    `MissingTopics` message names every absent topic and `create_hint`, the command that
    creates them.
    """
    wanted = list(dict.fromkeys(topics))
    meta = cluster_metadata(settings, timeout_s=timeout_s, sasl_env=sasl_env)
    parts: dict[str, list[int]] = {}
    missing: list[str] = []
    for topic in wanted:
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            missing.append(topic)
        else:
            parts[topic] = sorted(tmeta.partitions)
    if missing:
        names = ", ".join(missing)
        servers = settings.get("bootstrap.servers", "")
        msg = (
            f"topic(s) {names} do not exist on {servers}; create them with `{create_hint}` "
            "(it creates every topic the config names and leaves existing ones alone)"
        )
        raise MissingTopics(msg, missing)
    return parts


class _KafkaPartition(StatefulSourcePartition[RawRecord, int]):
    def __init__(
        self,
        config: dict[str, str],
        topic: str,
        part: int,
        name: str,
        resume: int | None,
        batch: int,
    ) -> None:
        self._offset = OFFSET_BEGINNING if resume is None else resume
        self._consumer = Consumer(config)
        self._tp = TopicPartition(topic, part, self._offset)
        self._consumer.assign([self._tp])
        # A resumed offset is checked against the first fetch's watermarks (see module doc).
        self._check_resume = resume is not None and resume >= 0  # not OFFSET_BEGINNING
        self._topic = topic
        self._part = part
        self._name = name
        self._batch = batch
        self._eof = False
        self._paused = False
        self._lag = INPUT_LAG.labels(topic, str(part))

    def _record_lag(self) -> None:
        """Lag = the high watermark of librdkafka's last fetch response - the next offset."""
        lo, hi = self._consumer.get_watermark_offsets(self._tp, cached=True)
        if hi < 0:
            return  # no fetch answered yet
        nxt = self._offset if self._offset >= 0 else lo
        if nxt >= 0:
            self._lag.set(max(0, hi - nxt))

    def _resume_offset_lost(self) -> None:
        lo, hi = self._consumer.get_watermark_offsets(self._tp, cached=True)
        if lo < 0 or hi < 0:
            return  # no fetch answered yet
        if lo <= self._offset <= hi:
            self._check_resume = False
            return
        msg = (
            f"input {self._topic}[{self._part}]: the resume offset {self._offset} no longer "
            f"exists on the broker (the partition now holds offsets {lo}..{hi - 1}; was the "
            "topic deleted, re-created or truncated by retention?). Nothing was skipped; see "
            "ResumeOffsetLost in connectors/kafka_source.py for what to do."
        )
        raise ResumeOffsetLost(msg)

    def next_batch(self) -> list[RawRecord]:
        if self._eof or stop_requested():
            raise StopIteration
        if backpressure.saturated():
            self._paused = True
            return []  # the LLM stage is full: the backlog waits in Kafka
        self._paused = False
        msgs = self._consumer.consume(self._batch, 0.001)
        if self._check_resume:
            if msgs and msgs[0].error() is None:
                self._check_resume = False
            else:
                self._resume_offset_lost()
        out = []
        topic, part, name = self._topic, self._part, self._name
        last = None
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof = True
                    break
                if err.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
                    msg_text = (
                        f"input {topic}[{part}]: the resume offset {self._offset} no longer "
                        f"exists on the broker ({err.str()}). Nothing was skipped; see "
                        "ResumeOffsetLost in connectors/kafka_source.py for what to do."
                    )
                    raise ResumeOffsetLost(msg_text)
                if err.fatal() or not err.retriable():
                    msg_text = f"input {topic}[{part}]: broker error: {err.str()}"
                    raise SourceError(msg_text)
                continue  # transient: librdkafka retries by itself
            last = msg.offset() or 0
            out.append(RawRecord(topic, part, last, msg.key(), msg.value(), name))
        if last is not None:
            self._offset = last + 1
        self._record_lag()
        return out

    def next_awake(self) -> datetime | None:
        return backpressure.pause_until() if self._paused else None

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class RawKafkaSource(FixedPartitionedSource[RawRecord, int]):
    """Reads Kafka topics partition by partition, resuming from the snapshotted offsets.

    `topics` maps each topic to the name of its source config. `settings` are librdkafka
    client settings (security included); `tail=False` stops at the end of each partition.
    `list_parts` raises `BrokerUnreachable` or `MissingTopics` (within `CHECK_TIMEOUT_S`);
    `create_hint` is the command its message names for creating missing topics.
    """

    def __init__(
        self,
        topics: Mapping[str, str],
        settings: Mapping[str, str],
        *,
        tail: bool = True,
        batch_size: int = 1000,
        queued_max_kbytes: int = 16384,
        create_hint: str = CREATE_TOPICS_HINT,
    ) -> None:
        self.topics = dict(topics)
        self.settings = dict(settings)
        self.tail = tail
        self.batch_size = batch_size
        self.queued_max_kbytes = queued_max_kbytes
        self.create_hint = create_hint

    def list_parts(self) -> list[str]:
        found = check_topics(self.settings, self.topics, create_hint=self.create_hint)
        return [f"{i}-{topic}" for topic, parts in found.items() for i in parts]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _KafkaPartition:
        idx, topic = for_part.split("-", 1)
        if topic not in self.topics:
            msg = (
                f"recovery state names input topic {topic!r}, which is no longer configured; "
                "restore it in input.sources or start a new recovery directory"
            )
            raise SourceError(msg)
        config = {
            **self.settings,
            "group.id": "contextstream-unused",  # partitions are assigned, never joined
            "enable.auto.commit": "false",
            "enable.auto.offset.store": "false",
            "auto.offset.reset": "error",
            "enable.partition.eof": str(not self.tail).lower(),
            "queued.max.messages.kbytes": str(self.queued_max_kbytes),
        }
        return _KafkaPartition(
            config, topic, int(idx), self.topics[topic], resume_state, self.batch_size
        )
