"""Kafka tooling for a deployment config: create its topics, feed it, read it, account for it.

    python -m connectors.kafkatool create-topics CONFIG [--partitions N] [--wait S]
    python -m connectors.kafkatool produce CONFIG FILE [--profiles FILE]
    python -m connectors.kafkatool consume CONFIG NAME [--from-beginning] [--max N] [--idle S]
    python -m connectors.kafkatool check CONFIG --expect FILE [--timeout S]

- `create-topics` creates every topic CONFIG names: the inputs (`--partitions`, default 3),
  the profiles topic and the outputs (1 partition each, with the answer topics of tasks
  that have an `output_topic`), all with explicit configs
  (`retention.ms` 7 days, `cleanup.policy=delete`; Tansu reports only configs set
  explicitly). Existing topics are left as they are (idempotent).
- `produce` sends a JSON-lines file of events to the input topics: each line goes to the
  source whose adapter matches its shape (chat message, metric reading, business event; a
  source with adapter `auto` takes any), keyed `tenant/entity` (the entity alone when the
  record names no tenant and the source has no default); lines that match no shape or
  are not JSON go, unchanged, to the first source, where the flow dead-letters them. Blank
  lines are skipped (as the file source does). `--profiles FILE` sends profile updates to the
  profiles topic.
- `consume` prints the records of an output (`responses`, `alerts`, `dead_letters`,
  `audit`, `ledger`), an input source name, or a topic, one value per line. It assigns
  partitions (no consumer group, so no group-join delay).
- `check` accounts for every record `produce` sent from FILE: each one must be in an input
  topic and, by its coordinates `topic[partition]@offset`, in the ledger or the dead letters.
  It waits up to `--timeout` seconds for that, then prints a summary and exits 0 (all
  accounted for) or 1.

Every command exits 2 on a bad config, 1 on an unreachable broker or missing topics (one line
naming the fix). `preflight` is the start-up check the flow's entry points run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from config.models import ConfigError, Settings, SourceConfig, detect_adapter, load_config
from connectors.kafka_source import (
    CHECK_TIMEOUT_S,
    CREATE_TOPICS_HINT,
    BrokerUnreachable,
    KafkaUnavailable,
    check_topics,
    cluster_metadata,
)
from core.records import coords

PROG = "python -m connectors.kafkatool"

INPUT_PARTITIONS = 3
"""Default partitions of each input topic (`create-topics --partitions`)."""

TOPIC_CONFIG: dict[str, str] = {
    "retention.ms": str(7 * 24 * 3600 * 1000),
    "cleanup.policy": "delete",
}
"""Explicit configs of every created topic (Tansu reports only explicit ones). Inputs are
read with `auto.offset.reset=error`: keep retention longer than any outage of the flow."""

OUTPUT_NAMES = ("responses", "alerts", "dead_letters", "audit", "ledger")

_ENTITY_KEY = {
    "chat_message": "session_id",
    "metric_reading": "series",
    "business_event": "account_id",
}


class ToolError(RuntimeError):
    """A command cannot go on; the message says why and what to do (exit code 1)."""


# -- topics of a config -------------------------------------------------------------------


@dataclass(frozen=True)
class TopicSpec:
    """One topic a config names: its role (`input`, `profiles`, `output`) and how to create it."""

    name: str
    role: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_plan(settings: Settings, *, input_partitions: int = INPUT_PARTITIONS) -> list[TopicSpec]:
    """Every Kafka topic `settings` names (inputs, profiles, outputs, tasks' answer topics),
    without duplicates."""
    specs: dict[str, TopicSpec] = {}
    inp, out = settings.input, settings.output
    if inp.kind == "kafka":
        for src in inp.sources:
            assert src.topic is not None
            specs.setdefault(
                src.topic, TopicSpec(src.topic, "input", input_partitions, TOPIC_CONFIG)
            )
        if inp.profiles is not None and inp.profiles.topic:
            name = inp.profiles.topic
            specs.setdefault(name, TopicSpec(name, "profiles", 1, TOPIC_CONFIG))
        if inp.erasures is not None and inp.erasures.topic:
            name = inp.erasures.topic
            specs.setdefault(name, TopicSpec(name, "erasures", 1, TOPIC_CONFIG))
    if out.kind == "kafka":
        names = [getattr(out, attr) for attr in OUTPUT_NAMES]
        names += [t.output_topic for t in settings.llm.tasks if t.output_topic]
        for name in names:
            if name:
                cfg = TOPIC_CONFIG
                if name == out.dead_letters and out.dead_letter_retention_ms is not None:
                    # Dead letters keep the original bytes (PII included) for reprocessing.
                    cfg = {**TOPIC_CONFIG, "retention.ms": str(out.dead_letter_retention_ms)}
                specs.setdefault(name, TopicSpec(name, "output", 1, cfg))
    return list(specs.values())


def create_hint(config_path: str | Path) -> str:
    """The command that creates every topic of `config_path`."""
    return f"{PROG} create-topics {config_path}"


def preflight(settings: Settings, config_path: str | Path) -> None:
    """The flow's start-up check: the broker answers and every topic the config names exists.

    A no-op without Kafka input or output. Raises `BrokerUnreachable` (its subclass
    `KafkaSecurityError` at once for a refused TLS handshake or SASL login) or
    `MissingTopics` (all `KafkaUnavailable`) within a few seconds, with one-line messages
    that name the fix (`create-topics` with `config_path` for missing topics; the setting
    for TLS and SASL). Creates nothing.
    """
    topics = [t.name for t in topic_plan(settings)]
    if topics:
        sasl = settings.kafka.sasl
        check_topics(
            settings.kafka.client_settings(),
            topics,
            create_hint=create_hint(config_path),
            sasl_env=(sasl.username_env, sasl.password_env) if sasl is not None else None,
        )


def _wait_for_cluster(settings: dict[str, str], wait_s: float) -> None:
    """Return once the broker answers; retry for `wait_s` seconds, then `BrokerUnreachable`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            cluster_metadata(settings, timeout_s=min(CHECK_TIMEOUT_S, max(1.0, wait_s)))
            return
        except BrokerUnreachable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)  # retry interval while the broker starts


def create_topics(
    settings: Settings,
    *,
    input_partitions: int = INPUT_PARTITIONS,
    overrides: dict[str, str] | None = None,
    wait_s: float = 0.0,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the missing topics of `settings`; return one report line per topic.

    Existing topics are left alone (a partition count other than planned is reported, not
    changed). Waits until every created topic shows all its partitions with a leader.
    """
    conf = settings.kafka.client_settings()
    _wait_for_cluster(conf, wait_s)
    plan = topic_plan(settings, input_partitions=input_partitions)
    if not plan:
        msg = "the config names no Kafka topics (input.kind and output.kind are both file)"
        raise ToolError(msg)
    meta = cluster_metadata(conf)
    admin = AdminClient({**conf, "log_level": 0})
    lines: list[str] = []
    new: list[TopicSpec] = []
    for spec in plan:
        existing = meta.topics.get(spec.name)
        if existing is not None and existing.error is None and existing.partitions:
            n = len(existing.partitions)
            note = "" if n == spec.partitions else f"; planned {spec.partitions}, left as is"
            lines.append(f"exists   {spec.name} ({spec.role}, {n} partition(s){note})")
        else:
            new.append(spec)
    if new:
        configs_of = {s.name: {**s.config, **(overrides or {})} for s in new}
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, 1, config=configs_of[s.name]) for s in new],
            operation_timeout=timeout_s,
            request_timeout=timeout_s,
        )
        for spec in new:
            try:
                futures[spec.name].result(timeout=timeout_s)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    lines.append(f"exists   {spec.name} ({spec.role}, created meanwhile)")
                    continue
                msg = f"could not create topic {spec.name}: {exc}"
                raise ToolError(msg) from None
            configs = ", ".join(f"{k}={v}" for k, v in sorted(configs_of[spec.name].items()))
            lines.append(
                f"created  {spec.name} ({spec.role}, {spec.partitions} partition(s), {configs})"
            )
        _wait_for_leaders(conf, {s.name: s.partitions for s in new}, timeout_s)
    return lines


def _wait_for_leaders(conf: dict[str, str], wanted: dict[str, int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        meta = cluster_metadata(conf)
        pending = [
            name
            for name, n in wanted.items()
            if (t := meta.topics.get(name)) is None
            or t.error is not None
            or len(t.partitions) < n
            or any(p.leader < 0 for p in t.partitions.values())
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            msg = f"topics {', '.join(pending)} created but not ready after {timeout_s:.0f} s"
            raise ToolError(msg)
        time.sleep(0.05)  # poll interval


# -- routing records of a JSON-lines file -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    """One non-blank line of a JSON-lines file and where `produce` sends it."""

    number: int
    topic: str
    key: bytes | None
    value: bytes


def _route(value: bytes, sources: Sequence[SourceConfig]) -> tuple[str, bytes | None]:
    try:
        obj = json.loads(value)
    except (ValueError, RecursionError):
        obj = None
    adapter = detect_adapter(obj) if isinstance(obj, dict) else None
    first = sources[0]
    target = first
    if adapter is not None:
        target = next(
            (s for s in sources if s.adapter in (adapter, "auto")),
            first,
        )
    assert target.topic is not None
    key: bytes | None = None
    if adapter is not None and isinstance(obj, dict):
        entity = obj.get(_ENTITY_KEY[adapter])
        if isinstance(entity, str) and entity:
            tenant = obj.get("tenant") or target.tenant
            key = (f"{tenant}/{entity}" if isinstance(tenant, str) else entity).encode()
    return target.topic, key


def read_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """`(line number, bytes without the line break)` of every non-blank line."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            value = raw.rstrip(b"\r\n")
            if value.strip():
                yield number, value


def route_events(settings: Settings, path: str | Path) -> list[Line]:
    """Where each event line of `path` goes (see the module doc); needs Kafka input."""
    sources = [s for s in settings.input.sources if s.topic]
    if settings.input.kind != "kafka" or not sources:
        msg = "the config reads files (input.kind = file): there is no input topic to feed"
        raise ToolError(msg)
    out = []
    for number, value in read_lines(path):
        topic, key = _route(value, sources)
        out.append(Line(number, topic, key, value))
    return out


def route_profiles(settings: Settings, path: str | Path) -> list[Line]:
    """Profile update lines of `path`, keyed `tenant/entity`, for the profiles topic."""
    prof = settings.input.profiles
    if settings.input.kind != "kafka" or prof is None or prof.topic is None:
        msg = "the config has no profiles topic (input.profiles)"
        raise ToolError(msg)
    out = []
    for number, value in read_lines(path):
        key = None
        try:
            obj = json.loads(value)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("entity"), str):
            key = f"{obj.get('tenant')}/{obj['entity']}".encode()
        out.append(Line(number, prof.topic, key, value))
    return out


def produce_lines(
    settings: Settings,
    lines: Sequence[Line],
    *,
    timeout_s: float = 60.0,
    hint: str = CREATE_TOPICS_HINT,
) -> Counter[str]:
    """Produce `lines` (idempotent, acks=all) and return the count per topic.

    Checks first that the topics exist (producing to a missing topic would auto-create it on
    brokers that allow it, with broker defaults). Raises `ToolError` if any record is not
    acknowledged within `timeout_s`. `hint` is the create-topics command named when topics
    are missing.
    """
    conf = settings.kafka.client_settings()
    check_topics(conf, sorted({ln.topic for ln in lines}), create_hint=hint)
    producer = Producer(
        {
            **conf,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "log_level": 0,
            "message.max.bytes": settings.kafka.message_max_bytes,
        }
    )
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None and len(failures) < 5:
            failures.append(f"{msg.topic()}: {err.str()}")

    counts: Counter[str] = Counter()
    for ln in lines:
        while True:
            try:
                producer.produce(ln.topic, ln.value, ln.key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)  # local queue full: let deliveries drain
        counts[ln.topic] += 1
    remaining = producer.flush(timeout_s)
    if failures or remaining:
        detail = (
            "; ".join(failures) or f"{remaining} record(s) unacknowledged after {timeout_s:g} s"
        )
        msg = f"producing failed: {detail}"
        raise ToolError(msg)
    return counts


# -- reading topics -----------------------------------------------------------------------


def resolve_topic(settings: Settings, name: str) -> str:
    """An output name, an input source name, `profiles`, or a topic name, as a topic."""
    out = settings.output
    if name in OUTPUT_NAMES and out.kind == "kafka" and getattr(out, name):
        return str(getattr(out, name))
    for src in (
        *settings.input.sources,
        *((settings.input.profiles,) if settings.input.profiles else ()),
    ):
        if src.name == name and src.topic:
            return src.topic
    if name == "profiles" and settings.input.profiles and settings.input.profiles.topic:
        return settings.input.profiles.topic
    return name


def _reader(
    settings: Settings, topics: Sequence[str], start: int, hint: str = CREATE_TOPICS_HINT
) -> Consumer:
    """A consumer assigned every partition of `topics` at `start` (no group join)."""
    conf = settings.kafka.client_settings()
    parts = check_topics(conf, topics, create_hint=hint)
    consumer = Consumer(
        {
            **conf,
            "group.id": f"contextstream-kafkatool-{uuid.uuid4().hex[:8]}",  # never joined
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "log_level": 0,
        }
    )
    consumer.assign([TopicPartition(t, p, start) for t, ps in parts.items() for p in ps])
    return consumer


def _records(consumer: Consumer, wait_s: float) -> list[Message]:
    """One poll's records; transient errors (librdkafka retries them) are skipped."""
    out = []
    for msg in consumer.consume(10_000, wait_s):
        err = msg.error()
        if err is None:
            out.append(msg)
        elif err.fatal() or not (err.retriable() or err.code() < 0):
            raise ToolError(f"reading {msg.topic()} failed: {err.str()}")
    return out


def consume(
    settings: Settings,
    name: str,
    *,
    from_beginning: bool = False,
    max_records: int | None = None,
    idle_s: float | None = None,
    keys: bool = False,
    out: Any = None,
    hint: str = CREATE_TOPICS_HINT,
) -> int:
    """Print records of `name` (see `resolve_topic`) to `out`, one value per line.

    Starts at the end (new records only) unless `from_beginning`; stops after `max_records`
    records, or once nothing new arrived for `idle_s` seconds, else runs until interrupted.
    Returns the number printed.
    """
    out = out or sys.stdout
    topic = resolve_topic(settings, name)
    start = OFFSET_BEGINNING if from_beginning else OFFSET_END
    consumer = _reader(settings, [topic], start, hint)
    printed = 0
    last = time.monotonic()
    try:
        while max_records is None or printed < max_records:
            batch = _records(consumer, 0.2)
            now = time.monotonic()
            if batch:
                last = now
            elif idle_s is not None and now - last >= idle_s:
                break
            for msg in batch:
                if max_records is not None and printed >= max_records:
                    break
                value = (msg.value() or b"").decode("utf-8", errors="replace")
                if keys:
                    key = (msg.key() or b"").decode("utf-8", errors="replace")
                    value = f"{key}\t{value}"
                out.write(value + "\n")
                printed += 1
            out.flush()
    finally:
        consumer.close()
    return printed


# -- accounting ---------------------------------------------------------------------------


@dataclass
class Accounting:
    """What `check` found: FILE's records and where each one ended up."""

    expected: int = 0
    found: int = 0
    """Records of FILE found in the input topics."""
    ledger: int = 0
    ledger_duplicates: int = 0
    """Ledger entries beyond the first for one record (at-least-once after a restart)."""
    dead: Counter[str] = field(default_factory=Counter)
    """Dead letters per step for records of FILE."""
    not_found: list[int] = field(default_factory=list)
    """Line numbers of FILE not (yet) found in the input topics."""
    unaccounted: list[str] = field(default_factory=list)
    """Coordinates of FILE's records in neither the ledger nor the dead letters."""
    other_inputs: int = 0
    """Input records that are not lines of FILE (produced earlier or by others)."""

    @property
    def ok(self) -> bool:
        return self.found == self.expected and not self.unaccounted

    def summary(self, path: str | Path) -> str:
        dead = sum(self.dead.values())
        steps = ", ".join(f"{s} {n}" for s, n in sorted(self.dead.items())) or "none"
        dup = f" ({self.ledger_duplicates} repeated entries)" if self.ledger_duplicates else ""
        text = (
            f"{self.expected} records from {path}: {self.found} found in the input topics, "
            f"{self.ledger} in the ledger{dup}, {dead} dead-lettered ({steps})"
        )
        if self.other_inputs:
            text += f", {self.other_inputs} other input records ignored"
        if self.ok:
            return f"OK: all {text}"
        problems = []
        if self.not_found:
            first = ", ".join(map(str, self.not_found[:5]))
            problems.append(
                f"{len(self.not_found)} never reached the input topics (lines {first}...; "
                f"run `{PROG} produce`)"
            )
        if self.unaccounted:
            first = ", ".join(self.unaccounted[:5])
            problems.append(
                f"{len(self.unaccounted)} are in neither the ledger nor the dead letters "
                f"({first}...; is the flow running? see its log)"
            )
        return f"NOT ACCOUNTED FOR: {text}; " + "; ".join(problems)


def _step(step_id: str) -> str:
    return step_id.rsplit(".", 1)[-1] if step_id else "?"


def check(
    settings: Settings,
    path: str | Path,
    *,
    timeout_s: float = 60.0,
    poll_s: float = 0.2,
    hint: str = CREATE_TOPICS_HINT,
) -> Accounting:
    """Wait until every record `produce` sent from `path` is accounted for, or `timeout_s`.

    A record is found by its value in the input topic `produce` routes it to (identical lines
    are matched one to one) and accounted for when its coordinates are the `source` of a
    ledger entry or a dead letter. Counts by consuming, never by watermarks. Needs Kafka input
    and output with a ledger.
    """
    out = settings.output
    if out.kind != "kafka" or not out.ledger:
        msg = "the check needs Kafka output with a ledger (output.kind = kafka, output.ledger)"
        raise ToolError(msg)
    lines = route_events(settings, path)
    wanted: dict[tuple[str, bytes], list[int]] = defaultdict(list)
    for ln in lines:
        wanted[(ln.topic, ln.value)].append(ln.number)
    inputs = sorted(
        {ln.topic for ln in lines} | {s.topic for s in settings.input.sources if s.topic}
    )
    consumer = _reader(settings, [*inputs, out.ledger, out.dead_letters], OFFSET_BEGINNING, hint)
    acc = Accounting(expected=len(lines))
    mine: dict[str, int] = {}  # coordinates of FILE's records -> line number
    ledger_seen: Counter[str] = Counter()
    dead_seen: dict[str, str] = {}
    input_set = set(inputs)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            for rec in _records(consumer, poll_s):
                topic = rec.topic() or ""
                value = rec.value() or b""
                if topic in input_set:
                    numbers = wanted.get((topic, value))
                    if numbers:
                        mine[coords(topic, rec.partition() or 0, rec.offset() or 0)] = numbers.pop(
                            0
                        )
                    else:
                        acc.other_inputs += 1
                    continue
                try:
                    doc = json.loads(value)
                except ValueError:
                    continue
                if not isinstance(doc, dict) or not doc.get("source"):
                    continue
                if topic == out.ledger:
                    ledger_seen[doc["source"]] += 1
                else:
                    dead_seen.setdefault(doc["source"], _step(str(doc.get("step_id", ""))))
            if len(mine) == len(lines) and all(c in ledger_seen or c in dead_seen for c in mine):
                break
            if time.monotonic() >= deadline:
                break
    finally:
        consumer.close()
    acc.found = len(mine)
    acc.not_found = sorted(n for numbers in wanted.values() for n in numbers)
    for c in mine:
        if c in ledger_seen:
            acc.ledger += 1
            acc.ledger_duplicates += ledger_seen[c] - 1
        elif c in dead_seen:
            acc.dead[dead_seen[c]] += 1
        else:
            acc.unaccounted.append(c)
    return acc


# -- command line -------------------------------------------------------------------------


def _config_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        msg = f"expected KEY=VALUE, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return key, value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create-topics", help="create every topic CONFIG names (idempotent)")
    c.add_argument("config")
    c.add_argument("--partitions", type=int, default=INPUT_PARTITIONS, help="per input topic")
    c.add_argument(
        "--config",
        dest="topic_config",
        type=_config_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="topic config for created topics (repeatable; default retention.ms=7 days)",
    )
    c.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the broker")
    pr = sub.add_parser("produce", help="send a JSON-lines file of events to the input topics")
    pr.add_argument("config")
    pr.add_argument("file", help="events, one JSON object per line")
    pr.add_argument("--profiles", help="profile updates for the profiles topic")
    co = sub.add_parser("consume", help="print the records of an output, input or topic")
    co.add_argument("config")
    co.add_argument("name", help=f"{', '.join(OUTPUT_NAMES)}, a source name, or a topic")
    co.add_argument("--from-beginning", action="store_true", help="else new records only")
    co.add_argument("--max", type=int, default=None, help="stop after N records")
    co.add_argument("--idle", type=float, default=None, help="stop after S seconds without one")
    co.add_argument("--keys", action="store_true", help="print KEY<tab>VALUE")
    ch = sub.add_parser("check", help="account for every record produced from a file")
    ch.add_argument("config")
    ch.add_argument("--expect", required=True, help="the file given to `produce`")
    ch.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; exit codes: 0 done, 1 failed (named), 2 bad config."""
    args = _parser().parse_args(argv)
    try:
        settings = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    hint = create_hint(args.config)
    try:
        if args.command == "create-topics":
            for line in create_topics(
                settings,
                input_partitions=args.partitions,
                overrides=dict(args.topic_config),
                wait_s=args.wait,
            ):
                print(line)
        elif args.command == "produce":
            counts = produce_lines(settings, route_events(settings, args.file), hint=hint)
            per_topic = ", ".join(f"{t} {n}" for t, n in sorted(counts.items()))
            print(f"produced {sum(counts.values())} records from {args.file}: {per_topic}")
            if args.profiles:
                profiles = route_profiles(settings, args.profiles)
                counts = produce_lines(settings, profiles, hint=hint)
                per_topic = ", ".join(f"{t} {n}" for t, n in counts.items())
                total = sum(counts.values())
                print(f"produced {total} profile updates from {args.profiles}: {per_topic}")
        elif args.command == "consume":
            consume(
                settings,
                args.name,
                from_beginning=args.from_beginning,
                max_records=args.max,
                idle_s=args.idle,
                keys=args.keys,
                hint=hint,
            )
        else:
            acc = check(settings, args.expect, timeout_s=args.timeout, hint=hint)
            print(acc.summary(args.expect))
            return 0 if acc.ok else 1
    except BrokenPipeError:  # e.g. `consume ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 0
    except (KafkaUnavailable, ToolError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
