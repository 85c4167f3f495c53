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
  (Tansu does) would otherwise leave the flow waiting silently for offsets that are gone.

Every partition ends at its current offset once a graceful stop was requested
(`runtime.signals`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from core.records import RawRecord
from runtime.signals import stop_requested

log = logging.getLogger("contextstream.sources")

class ResumeOffsetLost(RuntimeError):
    """The offset to resume from no longer exists on the broker (retention deleted it).

    Nothing was skipped. To accept the loss, start with a new recovery directory (after
    deciding how to re-ingest the missing range); to avoid it, keep retention longer than
    the longest outage of this flow.
    """


class SourceError(RuntimeError):
    """The broker reported an error on an input partition; the flow stops so nothing is skipped."""


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
        return out

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class RawKafkaSource(FixedPartitionedSource[RawRecord, int]):
    """Reads Kafka topics partition by partition, resuming from the snapshotted offsets.

    `topics` maps each topic to the name of its source config. `settings` are librdkafka
    client settings (security included); `tail=False` stops at the end of each partition.
    """

    def __init__(
        self,
        topics: Mapping[str, str],
        settings: Mapping[str, str],
        *,
        tail: bool = True,
        batch_size: int = 1000,
        queued_max_kbytes: int = 16384,
    ) -> None:
        self.topics = dict(topics)
        self.settings = dict(settings)
        self.tail = tail
        self.batch_size = batch_size
        self.queued_max_kbytes = queued_max_kbytes

    def list_parts(self) -> list[str]:
        admin = AdminClient(dict(self.settings))
        parts: list[str] = []
        for topic in self.topics:
            meta = admin.list_topics(topic, timeout=30)
            tmeta = meta.topics.get(topic)
            if tmeta is None or tmeta.error is not None or not tmeta.partitions:
                err = tmeta.error.str() if tmeta is not None and tmeta.error else "no partitions"
                msg = f"input topic {topic!r} is not available: {err}"
                raise SourceError(msg)
            parts.extend(f"{i}-{topic}" for i in sorted(tmeta.partitions))
        return parts

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


