"""Configuration models: one TOML file per deployment, parsed into frozen pydantic models.

Every model is frozen and rejects unknown keys, so a typo in a TOML file fails at start with
the key's path instead of being silently ignored. Secrets never live in TOML: a field typed
`SecretStr` is filled from the environment variable named next to it (`*_env`), and its
`repr` is masked.

Nothing here reads the environment or the file system at import time; `load_config` does both
when it is called.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

TENANT_PATTERN = r"^[^/\x00-\x1f\x7f]+$"
"""What a tenant name may be: no "/" and no control characters. Keys, store entries and
output keys are `tenant/entity`; with no "/" in the tenant the first "/" splits them, so two
different (tenant, entity) pairs never share one."""

Adapter = Literal["auto", "chat_message", "metric_reading", "business_event"]
"""The built-in ways raw records of a source are mapped into the canonical event (a source
may also name an adapter declared in `[[input.adapters]]`, see `AdapterSpec`)."""


def detect_adapter(obj: Mapping[str, Any]) -> Adapter | None:
    """Pick an adapter from the keys of a raw record; None if no shape matches.

    The rule of `adapter = "auto"`, shared by the decoder and `connectors.kafkatool produce`.
    """
    if "message_id" in obj or "session_id" in obj:
        return "chat_message"
    if "series" in obj:
        return "metric_reading"
    if "event_type" in obj or "account_id" in obj:
        return "business_event"
    return None


BatchMode = Literal["pack", "fanout"]
"""`pack`: several events in one prompt; `fanout`: one request per event."""

LatePolicy = Literal["count", "dead_letter"]
"""What happens to an event that arrives after its window closed."""

MetricDetector = Literal["ensemble", "ewma"]
"""Metric-series detector of `AnomalyConfig` (see `operators.anomaly`)."""

PLACEHOLDER_MARKERS = ("changeme", "change-me", "placeholder", "xxx", "<", "todo")

_BROKER = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>[0-9]+)$")
"""`host:port` or `[ipv6]:port`."""

SECRET_KAFKA_KEYS = ("password", "secret", "sasl.username", "ssl.key.pem", "oauthbearer.config")
"""Substrings of librdkafka settings that hold credentials: never accepted in `kafka.extra`."""

MANAGED_KAFKA_KEYS = frozenset({"bootstrap.servers", "metadata.broker.list", "security.protocol"})
"""librdkafka settings `KafkaConfig` sets from its own fields (`brokers`, `security_protocol`)."""


def check_broker_address(address: str) -> str | None:
    """Why `address` is not a usable `host:port` (None when it is)."""
    m = _BROKER.match(address.strip())
    if m is None:
        if ":" not in address:
            return f"{address!r} has no port: write host:port, e.g. {address.strip()}:9092"
        return f"{address!r} is not host:port (e.g. 127.0.0.1:9092, [::1]:9092)"
    port = int(m["port"])
    if not 0 < port < 65536:
        return f"{address!r}: port {port} is outside 1..65535"
    return None


def librdkafka_setting_problem(key: str, value: str) -> str | None:
    """Why librdkafka refuses `key = value` (None when a client accepts it).

    Constructs (and drops) a producer with just this setting: no connection is made, nothing
    is logged. Settings of either client type are accepted, as `kafka.extra` goes to
    consumers, producers and admin clients alike. The reason never repeats the value.
    """
    from confluent_kafka import KafkaException, Producer

    try:
        Producer({key: value, "log_level": 0})
    except KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        reason = err.str() if hasattr(err, "str") else str(err)
        return reason.replace(value, "<value>") if value else reason
    return None


class Frozen(BaseModel):
    """Base for every config model: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class AppConfig(Frozen):
    name: str = "contextstream"
    profile: Literal["local", "dev", "production"] = "local"
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    progress_every_s: float = Field(default=10.0, ge=0)
    """Seconds between progress lines in the log (0: none)."""


class SaslConfig(Frozen):
    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    username_env: str = "KAFKA_SASL_USERNAME"
    password_env: str = "KAFKA_SASL_PASSWORD"


class TlsConfig(Frozen):
    ca_location: str | None = None
    certificate_location: str | None = None
    key_location: str | None = None
    endpoint_identification: bool = True


class KafkaConfig(Frozen):
    """Connection to the Kafka cluster; maps onto librdkafka settings.

    Validated at load: every broker is `host:port` (numeric port), and every `extra` key is
    a setting librdkafka accepts with that value (not a credential, not one set from the
    fields here). Error messages never repeat the values of this table.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    brokers: tuple[str, ...] = ("127.0.0.1:9092",)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    tls: TlsConfig = TlsConfig()
    sasl: SaslConfig | None = None
    # Bounded read-ahead: librdkafka's default (64 MiB per partition) dominates RSS otherwise.
    queued_max_messages_kbytes: int = Field(default=16384, ge=1024)
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    """Most records read from a partition per poll (fewer, larger batches under load)."""
    message_max_bytes: int = Field(default=1_000_000, ge=1000)
    delivery_timeout_ms: int = Field(default=30_000, ge=1000)
    extra: dict[str, str] = Field(default_factory=dict)
    """Further librdkafka settings, passed through verbatim (no secrets here)."""

    @field_validator("brokers")
    @classmethod
    def _brokers_host_port(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            msg = "kafka.brokers must name at least one host:port"
            raise ValueError(msg)
        problems = [p for p in map(check_broker_address, v) if p]
        if problems:
            msg = "; ".join(problems)
            raise ValueError(msg)
        return tuple(b.strip() for b in v)

    @field_validator("extra")
    @classmethod
    def _extra_known_to_librdkafka(cls, v: dict[str, str]) -> dict[str, str]:
        problems: list[str] = []
        for key, value in v.items():
            if any(marker in key.lower() for marker in SECRET_KAFKA_KEYS):
                problems.append(
                    f"{key!r} holds a credential, and secrets never live in TOML: use "
                    "kafka.sasl (username_env, password_env) or kafka.tls file locations"
                )
            elif key in MANAGED_KAFKA_KEYS:
                problems.append(
                    f"{key!r} is set from kafka.brokers / kafka.security_protocol; set those"
                )
            elif (reason := librdkafka_setting_problem(key, value)) is not None:
                problems.append(
                    f"{key!r}: {reason} (fix the name or value, or remove it; the settings "
                    "are listed in librdkafka's CONFIGURATION.md)"
                )
        if problems:
            msg = "; ".join(problems)
            raise ValueError(msg)
        return v

    def client_settings(self) -> dict[str, str]:
        """librdkafka settings shared by consumers, producers and admin clients.

        Reads SASL credentials from the environment here, at connection time.
        """
        conf: dict[str, str] = {
            "bootstrap.servers": ",".join(self.brokers),
            "security.protocol": self.security_protocol.lower(),
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            if self.tls.ca_location:
                conf["ssl.ca.location"] = self.tls.ca_location
            if self.tls.certificate_location:
                conf["ssl.certificate.location"] = self.tls.certificate_location
            if self.tls.key_location:
                conf["ssl.key.location"] = self.tls.key_location
            conf["ssl.endpoint.identification.algorithm"] = (
                "https" if self.tls.endpoint_identification else "none"
            )
        if self.sasl is not None:
            user = os.environ.get(self.sasl.username_env, "")
            password = os.environ.get(self.sasl.password_env, "")
            conf["sasl.mechanism"] = self.sasl.mechanism
            conf["sasl.username"] = user
            conf["sasl.password"] = password
        conf.update(self.extra)
        return conf


AdapterKind = Literal["chat", "metric", "business"]
"""The canonical kind an adapter's events have."""

TimestampFormat = Literal["iso8601", "epoch_s", "epoch_ms"]
"""How an adapter's timestamp field is written: ISO 8601 text with a zone offset (`Z` or
`+02:00`), or a JSON number of seconds or milliseconds since the epoch (UTC)."""

BUILTIN_ADAPTERS: tuple[str, ...] = ("chat_message", "metric_reading", "business_event")
"""The presets every deployment has (see `operators.validate.adapters`)."""

RESERVED_PAYLOAD: dict[str, frozenset[str]] = {
    "chat": frozenset({"text"}),
    "metric": frozenset({"value", "metric"}),
    "business": frozenset(),
}
"""Payload keys an adapter of each kind fills from its own parts (`text`, `value`, `metric`):
a `payload` entry may not target them."""

_PATH = re.compile(r"^[^.\s]+(?:\.[^.\s]+)*$")
"""A dotted path into nested JSON objects: non-empty keys without blanks, joined by dots."""

_LEAF_ORDER = {"any": 0, "part": 1}
"""Leaf types that yield when one path has several uses (`AdapterSpec.leaves`)."""


def _prefixes(path: str, among: Mapping[str, Any]) -> list[str]:
    """The paths of `among` that name an object holding `path` (`a` and `a.b` for `a.b.c`)."""
    keys = path.split(".")
    return [p for i in range(1, len(keys)) if (p := ".".join(keys[:i])) in among]


class DerivedId(Frozen):
    """An event id made from fields of the record: their values joined by `|` (a timestamp
    field contributes its instant, so another notation of it gives the same id), optionally
    hashed (BLAKE2b, 20 hex digits), after `prefix`."""

    fields: tuple[str, ...] = Field(min_length=1)
    hash: bool = False
    prefix: str = Field(default="", max_length=64)


class TimestampSpec(Frozen):
    field: str
    format: TimestampFormat = "iso8601"


class TenantSpec(Frozen):
    """The tenant from a field of the record (missing or null: the source's tenant), or a
    fixed value."""

    field: str | None = None
    value: str | None = Field(default=None, min_length=1, max_length=128)

    @model_validator(mode="after")
    def _one_of(self) -> TenantSpec:
        if (self.field is None) == (self.value is None):
            msg = "tenant: set exactly one of `field` or `value`"
            raise ValueError(msg)
        return self


class AdapterSpec(Frozen):
    """A source shape declared in `[[input.adapters]]`: where each part of the canonical event
    is in a raw JSON record, as dotted paths into nested objects.

    `event_id` is a path or a `DerivedId`; `entity` a path; `timestamp` a path and format;
    `tenant` a field or a value (None: the source's tenant); `text` (chat only, required),
    `value` (metric only, required) and `metric` (metric only, optional) fill the payload keys
    of the same name; `payload` maps further payload keys (dotted: nested, e.g.
    `"attributes.region"`) to the paths they are taken from. Every mapped field must be in a
    record, else the record is a dead letter (the tenant field may be absent). Validated at
    load: paths are well formed, no path is both a value and an object holding another
    (`leaves`), the parts fit the kind.
    """

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: AdapterKind
    event_id: str | DerivedId
    entity: str
    timestamp: TimestampSpec
    tenant: TenantSpec | None = None
    text: str | None = None
    value: str | None = None
    metric: str | None = None
    payload: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _fits_kind(self) -> AdapterSpec:
        where = f"adapter {self.name!r}"
        if self.name in (*BUILTIN_ADAPTERS, "auto"):
            msg = f"{where}: the name is taken by a built-in adapter; choose another"
            raise ValueError(msg)
        for part, kinds in (("text", ("chat",)), ("value", ("metric",)), ("metric", ("metric",))):
            if getattr(self, part) is not None and self.kind not in kinds:
                msg = (
                    f"{where}: `{part}` is only for a {kinds[0]} adapter (this one is {self.kind})"
                )
                raise ValueError(msg)
        required = {"chat": "text", "metric": "value"}.get(self.kind)
        if required is not None and getattr(self, required) is None:
            msg = f"{where}: a {self.kind} adapter needs `{required}` (the path of the {required})"
            raise ValueError(msg)
        reserved = RESERVED_PAYLOAD[self.kind]
        targets = sorted(self.payload)
        for target in targets:
            if not _PATH.match(target):
                msg = (
                    f"{where}: payload key {target!r} is not a dotted path (e.g. attributes.region)"
                )
                raise ValueError(msg)
            head = target.split(".", 1)[0]
            if head in reserved:
                msg = (
                    f"{where}: payload key {target!r} is filled by the adapter's "
                    f"`{head}`; choose another key"
                )
                raise ValueError(msg)
            if self.kind == "chat" and head == "role" and head != target:
                msg = f"{where}: payload key {target!r}: a chat event's role is a string"
                raise ValueError(msg)
        for b in targets:
            for a in _prefixes(b, self.payload):
                msg = f"{where}: payload keys {a!r} and {b!r} overlap (one holds the other)"
                raise ValueError(msg)
        self.leaves()
        return self

    def uses(self) -> list[tuple[str, str, str]]:
        """`(role, path, leaf type)` of every mapped field, in declaration order."""
        out: list[tuple[str, str, str]] = []
        if isinstance(self.event_id, DerivedId):
            out.extend(("event_id", f, "part") for f in self.event_id.fields)
        else:
            out.append(("event_id", self.event_id, "id"))
        out.append(("entity", self.entity, "id"))
        out.append(("timestamp", self.timestamp.field, self.timestamp.format))
        if self.tenant is not None and self.tenant.field is not None:
            out.append(("tenant", self.tenant.field, "tenant"))
        if self.text is not None:
            out.append(("text", self.text, "text"))
        if self.value is not None:
            out.append(("value", self.value, "number"))
        if self.metric is not None:
            out.append(("metric", self.metric, "id"))
        for target, path in self.payload.items():
            kind = "role" if self.kind == "chat" and target == "role" else "any"
            out.append((f"payload.{target}", path, kind))
        return out

    def leaves(self) -> dict[str, str]:
        """Each mapped path and the type its value must have (one type per path).

        Raises ValueError naming the field when a path is malformed, when a path is mapped
        with two incompatible types (say as the timestamp and as the value), or when a path
        is a value and also an object holding another mapped path (a field that cannot exist).
        """
        where = f"adapter {self.name!r}"
        leaves: dict[str, str] = {}
        role_of: dict[str, str] = {}
        for role, path, kind in self.uses():
            if not _PATH.match(path):
                msg = (
                    f"{where}: {role} = {path!r} is not a dotted path (keys without blanks "
                    "joined by dots, e.g. order.id)"
                )
                raise ValueError(msg)
            have = leaves.get(path)
            if have is None or _LEAF_ORDER.get(have, 9) < _LEAF_ORDER.get(kind, 9):
                leaves[path], role_of[path] = kind, role
            elif have != kind and _LEAF_ORDER.get(kind, 9) == 9 == _LEAF_ORDER.get(have, 9):
                msg = (
                    f"{where}: field {path!r} is mapped as {role_of[path]} and as {role}, "
                    "which need different types"
                )
                raise ValueError(msg)
        for b in leaves:
            for a in _prefixes(b, leaves):
                msg = (
                    f"{where}: field {a!r} ({role_of[a]}) cannot exist: {role_of[b]} = {b!r} "
                    f"needs {a!r} to be an object"
                )
                raise ValueError(msg)
        return leaves


class SourceConfig(Frozen):
    """One input: a Kafka topic or a JSON-lines file, and the adapter for its records."""

    name: str
    topic: str | None = None
    path: str | None = None
    adapter: str = "auto"
    """A built-in adapter (`Adapter`), "auto", or the name of an `[[input.adapters]]` entry."""
    tenant: str | None = None
    """Tenant for records that do not name one; None means such records are invalid."""
    tenants: tuple[str, ...] | None = None
    """The tenants this source may carry; a record naming another is dead-lettered (and
    audited as `tenant_refused`), never processed. None: any tenant (declare it in production)."""

    @model_validator(mode="after")
    def _one_location(self) -> SourceConfig:
        if (self.topic is None) == (self.path is None):
            msg = f"source {self.name!r}: set exactly one of `topic` or `path`"
            raise ValueError(msg)
        if self.tenant is not None and not re.match(TENANT_PATTERN, self.tenant):
            msg = (
                f'source {self.name!r}: `tenant` may not be empty or have "/" or control characters'
            )
            raise ValueError(msg)
        if self.tenants is not None:
            if not self.tenants or any(not re.match(TENANT_PATTERN, t) for t in self.tenants):
                msg = (
                    f"source {self.name!r}: `tenants` lists no tenant, or a name that is empty "
                    'or has "/" or control characters'
                )
                raise ValueError(msg)
            if self.tenant is not None and self.tenant not in self.tenants:
                msg = (
                    f"source {self.name!r}: its default `tenant` {self.tenant!r} is not in "
                    f"its `tenants` {list(self.tenants)}"
                )
                raise ValueError(msg)
        return self


class InputConfig(Frozen):
    kind: Literal["file", "kafka"] = "file"
    sources: tuple[SourceConfig, ...]
    profiles: SourceConfig | None = None
    """Entity profile updates (a topic, or a JSON-lines file in local mode)."""
    knowledge: SourceConfig | None = None
    """Knowledge documents and deletions (a topic, or a JSON-lines file in local mode);
    see docs/KNOWLEDGE.md for the record schema."""
    erasures: SourceConfig | None = None
    """Erasure requests `{"request_id", "tenant", "subject", "requested_at"?}` (a topic, or
    a JSON-lines file in local mode); see docs/STATE.md, "Erasure"."""
    tail: bool = True
    """Kafka: keep waiting for new records at the end of a topic (False stops at the end)."""
    adapters: tuple[AdapterSpec, ...] = ()
    """Source shapes declared in `[[input.adapters]]`, named by `sources[].adapter`."""

    @model_validator(mode="after")
    def _kinds_match(self) -> InputConfig:
        wanted = "topic" if self.kind == "kafka" else "path"
        refs = tuple(r for r in (self.profiles, self.knowledge, self.erasures) if r is not None)
        for src in (*self.sources, *refs):
            if getattr(src, wanted) is None:
                msg = f"input.kind is {self.kind!r} but source {src.name!r} has no `{wanted}`"
                raise ValueError(msg)
        if not self.sources:
            msg = "input.sources must list at least one source"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _adapters_known(self) -> InputConfig:
        names = [a.name for a in self.adapters]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            msg = f"input.adapters: adapter names must be unique, {dup} repeat"
            raise ValueError(msg)
        known = ("auto", *BUILTIN_ADAPTERS, *names)
        for src in self.sources:
            if src.adapter not in known:
                msg = (
                    f"source {src.name!r} names adapter {src.adapter!r}, which is neither "
                    f"built in nor declared in [[input.adapters]]; known: {', '.join(known)}"
                )
                raise ValueError(msg)
        return self


class OutputConfig(Frozen):
    """Where results go: Kafka topics (kind=kafka) or JSON-lines files under `dir`."""

    kind: Literal["file", "kafka"] = "file"
    dir: str = "out"
    responses: str = "contextstream.responses"
    alerts: str = "contextstream.alerts"
    dead_letters: str = "contextstream.dlq"
    audit: str = "contextstream.audit"
    ledger: str = "contextstream.ledger"
    """One compact record per accepted event (its route): lets consumers account for events
    that produce no answer. An empty string disables it."""
    dead_letter_retention_ms: int | None = Field(default=None, ge=60_000)
    """Kafka: `retention.ms` of the dead-letter topic when `kafkatool create-topics` creates
    it (None: the default of every topic, 7 days). Dead letters keep the original bytes,
    PII included, for reprocessing; bound how long. File output is not rotated by the flow."""


class ValidationConfig(Frozen):
    max_bytes: int = Field(default=64 * 1024, ge=64)
    max_future_skew_s: float = Field(default=300.0, ge=0)
    max_past_age_s: float | None = None
    """Reject events older than this (None accepts any age, e.g. replays of history)."""
    dedup_ttl_s: float = Field(default=3600.0, gt=0)
    dedup_max_ids_per_entity: int = Field(default=10_000, ge=1)


class RedactionConfig(Frozen):
    enabled: bool = True
    kinds: tuple[Literal["email", "phone", "credit_card", "iban", "ssn", "ip"], ...] = (
        "email",
        "phone",
        "credit_card",
        "iban",
        "ssn",
        "ip",
    )


class AnomalyConfig(Frozen):
    """Anomaly detection per entity (`operators.anomaly`); the same settings drive `bench.nab`.

    `detector` picks the metric-series detector: `ensemble` (the default: seasonal residual,
    a shift detector on its ranks and context novelty at three resolutions, fused, with a rest
    period; measured on NAB with `bench/nab.py`) or `ewma` (the cheap EWMA z-score against
    `z_threshold`). Event-rate windows run with either; a busy entity's window counts also
    go through the same detector once warm (`rate_series`, `rate_series_min_baseline`,
    `rate_series_quiet_windows`; see `operators.anomaly`).
    """

    detector: MetricDetector = "ensemble"
    alert_threshold: float = Field(default=0.9, gt=0, le=1)
    """Ensemble: a fused score at or above this raises an alert (scores are in [0, 1])."""
    rest_points: int = Field(default=50, ge=0)
    """Ensemble: no alert while any of the last `rest_points` scores reached the threshold."""
    component_rest_points: int = Field(default=100, ge=0)
    """Ensemble: a component whose score reached the threshold in its last
    `component_rest_points` readings is left out of the fusion (the same source repeating
    its alarm), unless its score exceeds the highest it reached meanwhile (escalation)."""
    shift_rest_points: int = Field(default=300, ge=0)
    """Ensemble: the component rest of the shift detector alone (its mean carries one event for
    `shift_span` readings and more after a level change; see operators/anomaly/NAB.md)."""
    min_points: int = Field(default=150, ge=2)
    """Ensemble: readings a series needs before it may alert (its detectors learn meanwhile)."""
    season_slots: int = Field(default=288, ge=1, le=10_000)
    season_period_s: float = Field(default=86_400.0, gt=0)
    season_alpha: float = Field(default=0.25, gt=0, le=1)
    rank_window: int = Field(default=3000, ge=50, le=20_000)
    """Ensemble: history kept to rank a new residual (and a new shift mean) against (8 bytes
    each, twice, per ranked statistic: 2 x 2 x 8 x 3000 = 96 kB per series)."""
    season_sharpness: float = Field(default=100.0, ge=1)
    """Ensemble: the seasonal and shift ranks enter the fusion as rank ** sharpness
    (0.999 -> 0.90)."""
    shift_span: int = Field(default=30, ge=2, le=1000)
    """Ensemble: readings the shift detector averages the residual ranks' surprise over."""
    exact_ranks: bool = False
    """Ensemble: rank against exact windows of `rank_window` values (8 bytes a value, a
    snapshot of about 33 KB) instead of the default sketches (`rank_sketch_*`, about 6 KB)."""
    rank_sketch_accuracy: float = Field(default=0.1, gt=0, lt=0.5)
    """Ensemble: the relative accuracy of the log-spaced bins the seasonal residuals and the
    shift means are ranked in (`WindowSketch`: the same sliding window of `rank_window`
    readings, counted in `rank_sketch_blocks` blocks of bins, its `rank_sketch_tail` largest
    values kept exactly, so the ranks that can raise an alert are exact; with the rest of the
    series a snapshot of about 7 KB)."""
    rank_sketch_blocks: int = Field(default=16, ge=1, le=1000)
    """Ensemble, sketch: blocks the window is counted in (the oldest leaves as a whole: the
    window holds between `rank_window` x (1 - 1 / blocks) and `rank_window` readings)."""
    rank_sketch_tail: int = Field(default=64, ge=1, le=10_000)
    """Ensemble, sketch: the window's largest values kept exactly (8 bytes each)."""
    shape_levels: tuple[int, ...] = (8,)
    """Ensemble: the seasonal residual may alarm only when the shape of the last 8 readings
    is a new category at one of these resolutions at least (after ARTime: Haar details of the
    window and its last reading's level, in units of the series' running range / L, rounded;
    `ShapeNovelty`). Empty: no such gate. See operators/anomaly/NAB.md (issue 13, the
    new-category gate; one resolution of 8 chosen by cross-validation in stop 22)."""
    shape_capacity: int = Field(default=64, ge=1, le=100_000)
    """Ensemble: shape categories remembered per resolution (the least recently seen are
    forgotten)."""
    context_levels: tuple[int, ...] = (5, 6, 7)
    context_orders: tuple[int, ...] = (1, 1, 1)
    context_capacity: int = Field(default=2048, ge=16, le=100_000)
    """Ensemble: (context, level) pairs each context detector remembers (least recent go)."""
    evidence_points: int = Field(default=8, ge=1, le=100)
    """Recent readings an alert carries as evidence."""
    ewma_alpha: float = Field(default=0.05, gt=0, lt=1)
    z_threshold: float = Field(default=4.0, gt=0)
    warmup: int = Field(default=30, ge=2)
    suppress_s: float = Field(default=300.0, ge=0)
    """Further alerts on a series are suppressed this long after one (event time)."""
    rate_window_s: float = Field(default=60.0, gt=0)
    rate_factor: float = Field(default=5.0, gt=1)
    rate_min_count: int = Field(default=20, ge=1)
    rate_warmup_windows: int = Field(default=3, ge=1)
    rate_series: bool = True
    """Event rates of busy entities go through the series detector too (`detector`, the same
    ensemble as metric series): each closed window's count, silent windows as zeros, is a
    reading. False: the window threshold rule (`rate_factor`, `rate_min_count`) only."""
    rate_series_min_baseline: float = Field(default=20.0, gt=0)
    """Events per window that an entity's window baseline (the EWMA of its earlier windows)
    must reach before it gets a rate series: sparse entities (most chat users) never get one.
    Until the series is warm (`min_points` windows; `warmup` with `ewma`) the threshold rule
    raises the entity's rate alerts."""
    rate_series_quiet_windows: int = Field(default=180, ge=1)
    """A rate series is dropped (its state freed) after this many windows in a row with fewer
    than `rate_series_min_baseline / rate_factor` events (3 h with the defaults)."""
    allowed_lateness_s: float = Field(default=30.0, ge=0)
    late_policy: LatePolicy = "count"
    idle_ttl_s: float = Field(default=6 * 3600.0, gt=0)
    """Per-entity detector state is discarded after this long without events (wall clock)."""
    change_hold_points: int = Field(default=12, ge=0, le=64)
    """Readings a metric alert waits for so its `change` (spike, level shift, trend, variance,
    seasonality; `operators.anomaly.kinds`) is named from readings after it too; a spike is
    released as soon as three readings are back. Alerts raised meanwhile on the series are
    the same change and go out with it. 0: every alert at once, its kind named from the
    readings before it only (level shifts then look like spikes: `bench.nab --synthetic`)."""
    change_hold_s: float = Field(default=3600.0, gt=0)
    """The longest (wall clock) an alert waits for those readings: a series that stops
    reporting releases its alert named from what it has."""

    @model_validator(mode="after")
    def _context_pairs(self) -> AnomalyConfig:
        if len(self.context_levels) != len(self.context_orders) or not self.context_levels:
            msg = "anomaly.context_levels and anomaly.context_orders need the same, non-zero length"
            raise ValueError(msg)
        if any(v < 2 for v in self.context_levels) or any(o < 1 for o in self.context_orders):
            msg = "anomaly.context_levels need >= 2 levels and context_orders >= 1"
            raise ValueError(msg)
        if any(v < 2 for v in self.shape_levels):
            msg = "anomaly.shape_levels need >= 2 levels each"
            raise ValueError(msg)
        return self


class MemoryConfig(Frozen):
    max_turns: int = Field(default=8, ge=1, le=200)
    max_chars_per_turn: int = Field(default=500, ge=16)
    idle_ttl_s: float = Field(default=1800.0, gt=0)
    max_tokens: int | None = Field(default=None, ge=50)
    """Estimated tokens of a session's memory (its turns and the replies to them, a reply
    counted as long as its turn) past which the older half of the turns folds into a
    running summary written by the task `summary_task`; the same happens when the memory
    holds `max_turns`. None: no summaries; the oldest turn beyond `max_turns` is dropped."""
    summary_task: str = "summarize_memory"
    """The LLM task (schema `conversation_summary`) that writes the summaries."""


class StoresConfig(Frozen):
    dir: str = "state-stores"
    """Directory holding the rocksdict stores (profiles, LLM response cache)."""
    profiles_seed: str | None = None
    """JSON-lines file of profiles loaded (idempotently) at start."""
    bootstrap_timeout_s: float = Field(default=120.0, gt=0)
    """How long a process may take at start to read the reference inputs (profiles) to their
    end offsets before the flow enriches any event; past it the run stops with the reason."""


class EmbeddingsConfig(Frozen):
    """An OpenAI-compatible embeddings endpoint (`[knowledge.embeddings]`): every chunk also
    gets a vector, and searches fuse the lexical and the vector ranking (docs/KNOWLEDGE.md)."""

    base_url: str
    """e.g. `https://api.openai.com/v1` (the `/embeddings` path is the client's)."""
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    """The environment variable holding the key (never in TOML; empty: no key sent)."""
    dimensions: int | None = Field(default=None, ge=1, le=8192)
    """Vector length asked of the endpoint (`text-embedding-3-*` accept it); None: its own."""
    timeout_s: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=20)
    """Attempts per batch while indexing (429, 5xx, timeouts); a query's vector gets one."""
    backoff_base_s: float = Field(default=0.25, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    """Longest wait between attempts, and between backfill rounds while the endpoint is down."""
    batch_size: int = Field(default=64, ge=1, le=2048)
    """Texts per request."""
    rrf_k: int = Field(default=60, ge=1)
    """Reciprocal-rank fusion constant: a document scores sum(1 / (rrf_k + rank))."""
    vector_candidates: int = Field(default=100, ge=1, le=10_000)
    """Documents taken from each ranking (lexical, vector) into the fusion (at least top_k)."""

    def api_key(self) -> SecretStr:
        """The API key from the environment (empty when unset)."""
        return SecretStr(os.environ.get(self.api_key_env, ""))


class KnowledgeConfig(Frozen):
    """How knowledge documents are chunked and searched (docs/KNOWLEDGE.md has the figures
    behind the defaults). Chunk settings apply to documents written after a change."""

    chunk_tokens: int = Field(default=512, ge=16)
    overlap_tokens: int = Field(default=64, ge=0)
    max_doc_bytes: int = Field(default=1 << 20, ge=64)
    """Documents larger than this (raw record bytes) are dead-lettered."""
    title_weight: float = Field(default=2.0, ge=0)
    proximity_weight: float = Field(default=0.3, ge=0)
    proximity_window: int = Field(default=3, ge=0)
    embeddings: EmbeddingsConfig | None = None
    """Hybrid retrieval with vectors from this endpoint (None: lexical only)."""

    @model_validator(mode="after")
    def _overlap_fits(self) -> KnowledgeConfig:
        if self.overlap_tokens >= self.chunk_tokens // 2:
            msg = "knowledge.overlap_tokens must be less than half of chunk_tokens"
            raise ValueError(msg)
        return self


class KnowledgeUse(Frozen):
    """Retrieval for one task: its items' prompts get the best chunks of their tenant's
    knowledge documents for the item's text (a chat message's text, an alert's message)."""

    top_k: int = Field(default=3, ge=1, le=50)
    min_score: float = Field(default=0.0, ge=0)
    """Chunks scoring below this (FTS5 bm25, higher is better) are left out; with embeddings it
    filters the lexical candidates, and the hits' scores are the fused (RRF) ones."""
    tags: tuple[str, ...] = ()
    """Only documents carrying every one of these tags."""


CONTEXT_PRIORITY: tuple[str, ...] = ("item", "profile", "summary", "memory", "knowledge")
"""Default order of a prompt's sections, most important first (`TaskConfig.context_priority`)."""


BuiltinSchema = Literal["chat_reply", "anomaly_explanation", "conversation_summary"]
"""Answer schemas (and default instructions) that ship with the code (`inference.schemas`)."""

ContextSection = Literal["profile", "memory", "knowledge"]
"""Context a task's prompts may carry (`TaskConfig.context`); "memory" includes its summary."""

_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
"""A legal Kafka topic name, which is also a safe file name (`<output.dir>/<topic>.jsonl`)."""


def _resolve(path: str, info: ValidationInfo) -> str:
    """`path` against the config file's directory (`load_config` passes it as context)."""
    base = (info.context or {}).get("config_dir")
    p = Path(path)
    return str(p if p.is_absolute() or base is None else Path(base) / p)


def _schema_refs(doc: Any) -> list[str]:
    """Every `$ref` value in a JSON Schema document."""
    if isinstance(doc, dict):
        own = [doc["$ref"]] if isinstance(doc.get("$ref"), str) else []
        return own + [r for v in doc.values() for r in _schema_refs(v)]
    if isinstance(doc, list):
        return [r for v in doc for r in _schema_refs(v)]
    return []


def check_answer_schema(task: str, doc: Any) -> None:
    """Refuse an answer schema the LLM stage cannot use, naming the task and the problem.

    It must be a valid JSON Schema (draft 2020-12), an object schema at the top level, and
    refer only to its own `$defs` (`#/$defs/<name>`): in a packed request the item schema
    sits under the request schema's `$defs`, and its definitions beside it.
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    where = f"llm.tasks[{task}].schema"
    if not isinstance(doc, dict):
        msg = f"{where} must be a JSON object (a JSON Schema), got {type(doc).__name__}"
        raise ValueError(msg)
    try:
        Draft202012Validator.check_schema(doc)
    except SchemaError as exc:
        at = "/".join(str(p) for p in exc.absolute_path) or "<top>"
        msg = f"{where} is not a valid JSON Schema: {exc.message} (at {at})"
        raise ValueError(msg) from None
    if doc.get("type") != "object":
        msg = f'{where} must describe an object at the top level (type = "object")'
        raise ValueError(msg)
    defs = doc.get("$defs", {})
    for ref in _schema_refs(doc):
        name = ref.removeprefix("#/$defs/")
        if not ref.startswith("#/$defs/") or name not in defs:
            msg = f"{where}: $ref {ref!r} must name one of its own $defs (#/$defs/<name>)"
            raise ValueError(msg)


class FallbackConfig(Frozen):
    """A task's fallback (`llm.tasks[].fallback`): the model (and, optionally, the one
    endpoint) its requests go to once no endpoint serving the primary model has been up
    (circuit breaker closed) for `after_s` seconds; back to the primary once one is again."""

    model: str
    endpoint: str | None = None
    """The endpoint that serves the fallback; None: any endpoint serving `model`."""
    after_s: float = Field(default=5.0, ge=0)


class EndpointConfig(Frozen):
    """One OpenAI-compatible endpoint of `llm.endpoints`, with its own limits and breaker.

    Limits left unset take the `[llm]` values; like those, `concurrency`, `rpm_limit` and
    `tpm_limit` are the deployment's, shared by its processes (`LLMConfig.process_share`).
    """

    name: str = Field(min_length=1)
    base_url: str | None = None
    """The endpoint's URL; required in `llm.endpoints` (None only for the implicit default
    endpoint, which then uses OPENAI_BASE_URL or the bundled simulator)."""
    api_key_env: str = "OPENAI_API_KEY"
    models: tuple[str, ...] = ()
    """Models the endpoint serves; at least one in `llm.endpoints` (empty only for the
    implicit default endpoint, which serves every model)."""
    concurrency: int | None = Field(default=None, ge=1, le=1024)
    rpm_limit: int | None = Field(default=None, ge=1)
    tpm_limit: int | None = Field(default=None, ge=1)
    breaker_failures: int | None = Field(default=None, ge=1)
    breaker_open_s: float | None = Field(default=None, gt=0)
    breaker_max_open_s: float | None = Field(default=None, gt=0)

    def api_key(self) -> SecretStr:
        """The API key from the environment (empty when unset)."""
        return SecretStr(os.environ.get(self.api_key_env, ""))

    def serves(self, model: str) -> bool:
        return not self.models or model in self.models


class TaskConfig(Frozen):
    """One LLM task: its instructions and answer schema, which model, how its requests are
    batched, which context its prompts carry and where its answers go.

    The answer schema is exactly one of `schema_name` (built in), `schema` (an inline JSON
    Schema, a TOML table) or `schema_file` (a JSON file). A custom schema needs
    `instructions` or `instructions_file`; a built-in one has default instructions, which
    these replace. Files are read once, at load, relative to the config file's directory;
    a schema is checked at load (`check_answer_schema`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str
    schema_name: BuiltinSchema | None = None
    answer_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    """An inline JSON Schema of one answer (TOML key `schema`)."""
    schema_file: str | None = None
    """A JSON file holding the answer's JSON Schema."""
    instructions: str | None = None
    """What the model is asked to do for each item (the system prompt's task part)."""
    instructions_file: str | None = None
    """A UTF-8 text file holding `instructions`."""
    context: tuple[ContextSection, ...] = ("profile", "memory", "knowledge")
    """Context sections the prompts get, where the item has them ("memory" brings the
    conversation summary with it; "knowledge" needs `knowledge` set to retrieve any)."""
    output_topic: str | None = None
    """Topic (Kafka) or file `<output.dir>/<topic>.jsonl` of this task's answers; None: the
    responses output. Audit records and dead letters stay on their own outputs."""
    _schema_doc: dict[str, Any] | None = PrivateAttr(default=None)
    _instructions_text: str | None = PrivateAttr(default=None)
    model: str = "gpt-4o-mini"
    mode: BatchMode = "pack"
    max_batch: int = Field(default=16, ge=1, le=256)
    max_batch_tokens: int = Field(default=6000, ge=100)
    max_wait_ms: float = Field(default=200.0, ge=0)
    urgent: bool = False
    max_tokens: int = Field(default=1024, ge=16)
    temperature: float = Field(default=0.0, ge=0, le=2)
    knowledge: KnowledgeUse | None = None
    """Retrieval from the knowledge documents for this task's prompts (None: none)."""

    prompt_budget_tokens: int | None = Field(default=None, ge=256)
    """Most prompt tokens one request may use, as the endpoint counts them: the system prompt
    and every item of the request (a pack shares it; a fanout request is one item). Context is
    trimmed to fit, in reverse `context_priority`, with the offline estimate calibrated from
    reported usage (`inference.budget`). None: no budget, context is sent whole."""
    context_priority: tuple[str, ...] = CONTEXT_PRIORITY
    """Prompt sections from most to least important: "item" (the item's own data, never
    dropped) first, then context keys. Keys not listed are dropped before any listed one."""
    fallback: FallbackConfig | None = None
    """Model (and endpoint) used while the primary model is unavailable (None: none)."""

    @field_validator("schema_file", "instructions_file")
    @classmethod
    def _relative_to_config(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else _resolve(v, info)

    @model_validator(mode="after")
    def _schema_and_instructions(self) -> TaskConfig:
        where = f"llm.tasks[{self.name}]"
        given = [
            k
            for k, v in (
                ("schema_name", self.schema_name),
                ("schema", self.answer_schema),
                ("schema_file", self.schema_file),
            )
            if v is not None
        ]
        if len(given) != 1:
            msg = (
                f"{where}: set exactly one of schema_name, schema or schema_file"
                f" (got {', '.join(given) or 'none'})"
            )
            raise ValueError(msg)
        if self.instructions is not None and self.instructions_file is not None:
            msg = f"{where}: set instructions or instructions_file, not both"
            raise ValueError(msg)
        text = self.instructions
        if self.instructions_file is not None:
            text = _read_text(f"{where}.instructions_file", self.instructions_file)
        if text is not None and not text.strip():
            msg = f"{where}: instructions are empty"
            raise ValueError(msg)
        if text is None and self.schema_name is None:
            msg = f"{where}: a custom schema needs instructions or instructions_file"
            raise ValueError(msg)
        doc = self.answer_schema
        if self.schema_file is not None:
            raw = _read_text(f"{where}.schema_file", self.schema_file)
            try:
                doc = json.loads(raw)
            except ValueError as exc:
                msg = f"{where}.schema_file {self.schema_file} is not valid JSON: {exc}"
                raise ValueError(msg) from None
        if doc is not None:
            check_answer_schema(self.name, doc)
        if len(set(self.context)) != len(self.context):
            msg = f"{where}.context names a section twice: {list(self.context)}"
            raise ValueError(msg)
        if self.knowledge is not None and "knowledge" not in self.context:
            msg = f"{where}: knowledge is set but context leaves out 'knowledge'"
            raise ValueError(msg)
        if self.output_topic is not None and (
            not _TOPIC.match(self.output_topic) or self.output_topic in (".", "..")
        ):
            msg = (
                f"{where}.output_topic {self.output_topic!r} is not a topic name "
                "(letters, digits, '.', '_', '-'; at most 249)"
            )
            raise ValueError(msg)
        self._schema_doc = doc
        self._instructions_text = None if text is None else text.strip()
        return self

    def custom_schema(self) -> dict[str, Any] | None:
        """The answer's JSON Schema as configured (inline or read from its file); None for
        a built-in `schema_name`."""
        return self._schema_doc

    def custom_instructions(self) -> str | None:
        """The instructions as configured (inline or read from their file); None: the
        built-in schema's default instructions."""
        return self._instructions_text

    def __hash__(self) -> int:
        # The inline schema is a dict (unhashable); equal configs share these fields.
        return hash((self.name, self.schema_name, self.model, self.mode, self.output_topic))

    @model_validator(mode="after")
    def _priority_starts_with_item(self) -> TaskConfig:
        p = self.context_priority
        if not p or p[0] != "item" or len(set(p)) != len(p) or not all(p):
            msg = (
                f"llm.tasks[{self.name}].context_priority must start with 'item' and name "
                f"each section once, got {list(p)}"
            )
            raise ValueError(msg)
        return self

    @property
    def batch_tokens(self) -> int:
        """Estimated tokens at which a micro-batch is cut: `max_batch_tokens`, or the prompt
        budget when that is smaller, so a pack is not formed only to lose its context."""
        if self.prompt_budget_tokens is None:
            return self.max_batch_tokens
        return min(self.max_batch_tokens, self.prompt_budget_tokens)


def _read_text(field: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"{field}: cannot read {path}: {exc.strerror or exc}"
        raise ValueError(msg) from None


RouteKind = Literal["chat", "metric", "business", "alert"]
"""What a route rule matches: an event's kind, or an anomaly alert."""

ROUTE_KINDS: frozenset[str] = frozenset(("chat", "metric", "business", "alert"))

ROUTE_OPS: tuple[str, ...] = (
    "==", "!=", "in", "not in", "<", "<=", ">", ">=", "exists", "missing", "contains"
)  # fmt: skip
"""The tests a route condition may apply (`Condition.op`)."""

_EVENTS = frozenset(("chat", "metric", "business"))

ROUTE_FIELDS: dict[str, tuple[str, frozenset[str]]] = {
    "kind": ("kind", ROUTE_KINDS),
    "tenant": ("str", ROUTE_KINDS),
    "entity": ("str", ROUTE_KINDS),
    "source": ("str", ROUTE_KINDS),
    "text": ("str", frozenset(("chat",))),
    "value": ("number", frozenset(("metric",))),
    "redactions": ("number", _EVENTS),
    "flags.prompt_injection": ("bool", _EVENTS),
    "alert.score": ("number", frozenset(("alert",))),
    "alert.detector": ("str", frozenset(("alert",))),
    "alert.value": ("number", frozenset(("alert",))),
}
"""The fields a route condition may test: name -> (type, the kinds that carry it). Besides
these, `payload.<dotted path>` (type "any", events only) reads the event's payload. `source`
is the event's origin: its Kafka topic or `file:<path>` (an alert's: its latest event's)."""

_OPS_FOR: dict[str, frozenset[str]] = {
    "kind": frozenset(("==", "!=", "in", "not in")),
    "str": frozenset(("==", "!=", "in", "not in", "exists", "missing", "contains")),
    "number": frozenset(("==", "!=", "in", "not in", "<", "<=", ">", ">=", "exists", "missing")),
    "bool": frozenset(("==", "!=")),
    "any": frozenset(ROUTE_OPS),
}

Scalar = str | int | float | bool


def route_field(name: str) -> tuple[str, frozenset[str]] | None:
    """The (type, kinds) of route field `name`, None when there is no such field.

    >>> route_field("payload.order.total")
    ('any', frozenset({'business', 'chat', 'metric'}))
    >>> route_field("payload") is None, route_field("payload..x") is None
    (True, True)
    """
    if name.startswith("payload."):
        return ("any", _EVENTS) if all(name.split(".")) else None
    return ROUTE_FIELDS.get(name)


def _fits(ftype: str, value: object) -> bool:
    """Whether scalar `value` can be compared with a field of type `ftype`."""
    if ftype == "kind":
        return value.__class__ is str and value in ROUTE_KINDS
    if ftype == "str":
        return value.__class__ is str
    if ftype == "number":
        return value.__class__ in (int, float)
    if ftype == "bool":
        return value.__class__ is bool
    return True


class Condition(Frozen):
    """One test of a route rule: `field op value` (`exists`/`missing` take no value).

    A test on a field the event does not carry (or carries as null) is false, except
    `missing`, `!=` and `not in`, which are the negations of `exists`, `==` and `in`;
    ordering tests are false unless the field is a number. Equality is by type: 1 equals
    1.0 but not true or "1". `contains`: a substring of a string, or an element of a list.
    """

    field: str
    op: str
    value: Scalar | tuple[Scalar, ...] | None = None

    def problem(self, kind: str | None) -> str | None:
        """Why this condition is refused in a rule for `kind` (None: any kind); None if fine."""
        spec = route_field(self.field)
        if spec is None:
            return (
                f"unknown field {self.field!r} (fields: {', '.join(ROUTE_FIELDS)}, payload.<path>)"
            )
        ftype, kinds = spec
        if kind is not None and kind not in kinds:
            return f"field {self.field!r} is never set on {kind} events (only {sorted(kinds)})"
        op, value = self.op, self.value
        values = value if isinstance(value, tuple) else (value,)
        if any(v.__class__ is float and not math.isfinite(v) for v in values):
            return "values must be finite numbers (no nan or inf)"
        if op not in ROUTE_OPS:
            return f"unknown op {op!r} (ops: {', '.join(ROUTE_OPS)})"
        if op not in _OPS_FOR[ftype]:
            return f"op {op!r} does not apply to {ftype} field {self.field!r}"
        if op in ("exists", "missing"):
            return None if value is None else f"op {op!r} takes no value"
        if value is None:
            return f"op {op!r} needs a value"
        if op in ("in", "not in"):
            if not isinstance(value, tuple) or not value:
                return f"op {op!r} needs a non-empty list of values"
            bad = [v for v in value if not _fits(ftype, v)]
            return (
                None if not bad else f"value {bad[0]!r} does not fit {ftype} field {self.field!r}"
            )
        if isinstance(value, tuple):
            return f"op {op!r} needs a single value, not a list"
        if op in ("<", "<=", ">", ">="):
            return None if value.__class__ in (int, float) else f"op {op!r} needs a number"
        if not _fits(ftype, value):
            return f"value {value!r} does not fit {ftype} field {self.field!r}"
        return None


class RouteRule(Frozen):
    """Events (or alerts) matching every part of the rule go to its tasks.

    `kind` (optional when `when` is given), `tenant` (optional) and each of `when`'s
    conditions must all hold. `task` is a task name, a list of them (each gets its own work
    item), or "none": context only (state and ledger, no LLM call).
    """

    kind: RouteKind | None = None
    task: str | tuple[str, ...]
    tenant: str | None = None
    when: tuple[Condition, ...] = ()

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks a match goes to, in order; () for "none"."""
        if isinstance(self.task, str):
            return () if self.task == "none" else (self.task,)
        return self.task

    def problem(self, tasks: set[str]) -> str | None:
        """Why this rule is refused with the task names `tasks` (None if it is fine); the
        reason starts with the part it is about (`.when[0]: ...`, `.task: ...`, `: ...`)."""
        if self.kind is None and not self.when:
            return ": needs a `kind` or `when` conditions"
        for j, cond in enumerate(self.when):
            reason = cond.problem(self.kind)
            if reason is not None:
                return f".when[{j}]: {reason}"
        names = (self.task,) if isinstance(self.task, str) else self.task
        if not names:
            return '.task: the list is empty (write task = "none" for context only)'
        if len(names) > 1 and "none" in names:
            return '.task: "none" cannot be listed with other tasks'
        if len(set(names)) != len(names):
            return ".task: a task is listed twice"
        unknown = [t for t in names if t != "none" and t not in tasks]
        if unknown:
            return f".task: names unknown task {unknown[0]!r} (tasks: {', '.join(sorted(tasks))})"
        return None


class LLMConfig(Frozen):
    base_url: str | None = None
    """OpenAI-compatible endpoint. None: OPENAI_BASE_URL from the environment, else (local
    profile only) the bundled simulator started by run.py."""
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(default=8, ge=1, le=1024)
    """Requests in flight for the whole deployment; each process takes its share
    (`process_share`)."""
    timeout_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=4, ge=1, le=20)
    backoff_base_s: float = Field(default=0.25, gt=0)
    backoff_max_s: float = Field(default=10.0, gt=0)
    max_rate_limited: int = Field(default=20, ge=1)
    """Attempts answered with 429 a request may spend (separate from `max_attempts`)."""
    rpm_limit: int | None = Field(default=None, ge=1)
    """Requests per minute the deployment may send (token bucket); None: no client budget."""
    tpm_limit: int | None = Field(default=None, ge=1)
    """Estimated tokens per minute the deployment may send (token bucket)."""
    adaptive_concurrency: bool = True
    """Find the endpoint's concurrency limit (AIMD on 429s), up to `concurrency`."""
    latency_tolerance: float | None = Field(default=1.5, ge=1.0)
    """Adaptive concurrency also shrinks when the smoothed latency exceeds this multiple of the
    no-load latency (a server that queues instead of answering 429); None: 429s only."""
    latency_queue: float = Field(default=2.0, ge=0)
    """Requests the latency gradient lets queue at the server beyond what it serves at once."""
    breaker_failures: int = Field(default=5, ge=1)
    breaker_open_s: float = Field(default=2.0, gt=0)
    breaker_max_open_s: float = Field(default=30.0, gt=0)
    cache_ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    """How long cached answers are kept: longer than any crash-to-resume gap that should
    replay without paying again; bounds the response cache's size."""
    max_held_items: int = Field(default=10_000, ge=1)
    """Items a task's queue holds while the circuit breaker is open; beyond, dead letters."""
    max_pending_items: int = Field(default=20_000, ge=1)
    """Items the LLM stage of one process may hold (buffered or in flight): at this bound
    the process's inputs stop reading, so the backlog waits in Kafka (`runtime.backpressure`)."""
    shards_per_task: int = Field(default=1, ge=1, le=256)
    """Each task's queue is split over this many keys (spread over workers)."""
    poll_ms: float = Field(default=5.0, gt=0)
    tasks: tuple[TaskConfig, ...] = (
        TaskConfig(name="chat_reply", schema_name="chat_reply"),
        TaskConfig(
            name="explain_anomaly",
            schema_name="anomaly_explanation",
            urgent=True,
            max_batch=4,
            max_wait_ms=0,
        ),
        TaskConfig(name="summarize_memory", schema_name="conversation_summary", max_batch=8),
    )
    routes: tuple[RouteRule, ...] = (
        RouteRule(kind="chat", task="chat_reply"),
        RouteRule(kind="alert", task="explain_anomaly"),
        RouteRule(kind="metric", task="none"),
        RouteRule(kind="business", task="none"),
    )
    endpoints: tuple[EndpointConfig, ...] = ()
    """Several endpoints (`inference.endpoints`); empty: the one implicit endpoint "default"
    at `base_url` (or OPENAI_BASE_URL, or the bundled simulator), serving every model."""

    @model_validator(mode="after")
    def _routes_name_tasks(self) -> LLMConfig:
        names = {t.name for t in self.tasks}
        if len(names) != len(self.tasks):
            msg = "llm.tasks: task names must be unique"
            raise ValueError(msg)
        for i, rule in enumerate(self.routes):
            reason = rule.problem(names)
            if reason is not None:
                msg = f"llm.routes[{i}]{reason}"
                raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _endpoints_serve_tasks(self) -> LLMConfig:
        names = [e.name for e in self.endpoints]
        if len(set(names)) != len(names):
            msg = f"llm.endpoints: endpoint names must be unique, got {names}"
            raise ValueError(msg)
        for e in self.endpoints:
            if not e.base_url or not e.models:
                msg = f"llm.endpoints[{e.name}]: base_url and models (at least one) are required"
                raise ValueError(msg)
        known = names or ["default"]
        serving = self.endpoints or (EndpointConfig(name="default"),)
        for t in self.tasks:
            if not any(e.serves(t.model) for e in serving):
                msg = f"llm.tasks[{t.name}].model {t.model!r} is served by no llm.endpoints entry"
                raise ValueError(msg)
            fb = t.fallback
            if fb is None:
                continue
            if fb.endpoint is not None and fb.endpoint not in known:
                msg = (
                    f"llm.tasks[{t.name}].fallback.endpoint {fb.endpoint!r} is not an endpoint "
                    f"(known: {known})"
                )
                raise ValueError(msg)
            if not any(e.serves(fb.model) and fb.endpoint in (None, e.name) for e in serving):
                where = f"endpoint {fb.endpoint!r}" if fb.endpoint else "no llm.endpoints entry"
                msg = f"llm.tasks[{t.name}].fallback.model {fb.model!r} is not served by {where}"
                raise ValueError(msg)
        return self

    def endpoint_list(self, base_url: str | None) -> tuple[EndpointConfig, ...]:
        """The endpoints with every limit filled in from `[llm]`; without `llm.endpoints`,
        the implicit "default" at `base_url`, serving every model.

        >>> [(e.name, e.concurrency) for e in LLMConfig(concurrency=3).endpoint_list("u")]
        [('default', 3)]
        """
        configured = self.endpoints or (
            EndpointConfig(name="default", base_url=base_url, api_key_env=self.api_key_env),
        )
        keys = (
            "concurrency",
            "rpm_limit",
            "tpm_limit",
            "breaker_failures",
            "breaker_open_s",
            "breaker_max_open_s",
        )
        return tuple(
            e.model_copy(update={k: getattr(self, k) for k in keys if getattr(e, k) is None})
            for e in configured
        )

    def api_key(self) -> SecretStr:
        """The API key from the environment (empty when unset)."""
        return SecretStr(os.environ.get(self.api_key_env, ""))

    def resolved_base_url(self) -> str | None:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or None

    def process_share(self, index: int, count: int) -> LLMConfig:
        """The limits of process `index` of `count`: `concurrency`, `rpm_limit` and
        `tpm_limit` are the deployment's, split so the shares add up to them (the first
        processes take the remainder).

        >>> cfg = LLMConfig(concurrency=8, rpm_limit=601)
        >>> [(s.concurrency, s.rpm_limit) for s in (cfg.process_share(i, 3) for i in range(3))]
        [(3, 201), (3, 200), (2, 200)]
        """
        if count == 1:
            return self

        def share(total: int, name: str) -> int:
            part = total // count + (1 if index < total % count else 0)
            if part < 1:
                msg = (
                    f"llm.{name} = {total} cannot be shared by {count} processes (each needs "
                    f"at least 1): raise llm.{name} to {count} or more, or run fewer processes"
                )
                raise ConfigError(msg)
            return part

        def limits(obj: LLMConfig | EndpointConfig, prefix: str) -> dict[str, int | None]:
            return {
                k: None if (v := getattr(obj, k)) is None else share(v, f"{prefix}{k}")
                for k in ("concurrency", "rpm_limit", "tpm_limit")
            }

        # An endpoint's own limits are split too; those it leaves unset inherit the shares.
        endpoints = tuple(
            e.model_copy(update=limits(e, f"endpoints[{e.name}].")) for e in self.endpoints
        )
        return self.model_copy(update={**limits(self, ""), "endpoints": endpoints})


class TenantConfig(Frozen):
    """What one tenant may use (`[tenants.<name>]`)."""

    tasks: tuple[str, ...] | None = None
    """The LLM tasks this tenant's events and alerts may go to; a route naming another task
    leaves the event context only for this tenant (its ledger route says so). None: every
    task. Internal memory summaries are not restricted."""
    daily_token_budget: int | None = Field(default=None, ge=1)
    """Tokens (prompt and completion, as the endpoint reports them) this tenant's LLM requests
    may spend per UTC day, shared by the deployment's processes (`state.budgets`); cache hits
    are free. None: no budget."""
    on_budget_spent: Literal["wait", "dead_letter"] = "wait"
    """What happens to the tenant's work once the day's budget is spent: `wait` holds it in
    the LLM stage until the next UTC midnight (up to `llm.max_held_items` per key and task;
    beyond that, and at the end of a finite input, it is dead-lettered), `dead_letter`
    dead-letters it at once. Answers already cached are still emitted."""


class Settings(Frozen):
    """The whole deployment. Validation errors never repeat input values (a credential
    pasted into `kafka.extra` must not end up in a log)."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    app: AppConfig = AppConfig()
    kafka: KafkaConfig = KafkaConfig()
    input: Annotated[InputConfig, Field()]
    output: OutputConfig = OutputConfig()
    validation: ValidationConfig = ValidationConfig()
    redaction: RedactionConfig = RedactionConfig()
    anomaly: AnomalyConfig = AnomalyConfig()
    memory: MemoryConfig = MemoryConfig()
    stores: StoresConfig = StoresConfig()
    knowledge: KnowledgeConfig = KnowledgeConfig()
    llm: LLMConfig = LLMConfig()
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)
    """Per-tenant rules, by tenant name (tenants not listed: no restriction)."""

    @model_validator(mode="after")
    def _tenant_rules_name_tasks(self) -> Settings:
        names = {t.name for t in self.llm.tasks}
        for tenant, rules in self.tenants.items():
            if not re.match(TENANT_PATTERN, tenant):
                msg = f'tenants: {tenant!r} is no tenant name (empty, "/" or control characters)'
                raise ValueError(msg)
            unknown = sorted(set(rules.tasks or ()) - names)
            if unknown:
                msg = (
                    f"tenants.{tenant}.tasks: names unknown task {unknown[0]!r} "
                    f"(tasks: {', '.join(sorted(names))})"
                )
                raise ValueError(msg)
        return self

    def token_budgets(self) -> tuple[tuple[str, int, str], ...]:
        """`(tenant, daily_token_budget, on_budget_spent)` of each tenant that has a budget."""
        return tuple(
            (name, rules.daily_token_budget, rules.on_budget_spent)
            for name, rules in sorted(self.tenants.items())
            if rules.daily_token_budget is not None
        )

    def tenant_tasks(self) -> dict[str, frozenset[str]]:
        """The task allow-list of each tenant that has one."""
        return {
            name: frozenset(rules.tasks)
            for name, rules in self.tenants.items()
            if rules.tasks is not None
        }

    @model_validator(mode="after")
    def _task_topics_are_their_own(self) -> Settings:
        out = self.output
        taken = {
            out.alerts: "alerts",
            out.dead_letters: "dead_letters",
            out.audit: "audit",
            out.ledger: "ledger",
        }
        if out.kind == "file":  # the outputs' files are named after the outputs
            taken.update((n, n) for n in ("responses", "alerts", "dead_letters", "audit", "ledger"))
        inp = self.input
        for src in (*inp.sources, inp.profiles, inp.knowledge, inp.erasures):
            if src is not None and src.topic:
                taken[src.topic] = f"input source {src.name!r}"
        for task in self.llm.tasks:
            other = taken.get(task.output_topic or "")
            if other is not None:
                what = other if other.startswith("input") else f"output.{other} topic (or file)"
                msg = (
                    f"llm.tasks[{task.name}].output_topic {task.output_topic!r} is the "
                    f"{what}: answers need a topic of their own"
                )
                raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _summary_task_exists(self) -> Settings:
        if self.memory.max_tokens is None:
            return self
        name = self.memory.summary_task
        task = next((t for t in self.llm.tasks if t.name == name), None)
        if task is None or task.schema_name != "conversation_summary":
            msg = (
                f"memory.max_tokens needs the task memory.summary_task = {name!r}: add "
                f'[[llm.tasks]] name = "{name}", schema_name = "conversation_summary" '
                "(or unset memory.max_tokens to keep no summaries)"
            )
            raise ValueError(msg)
        return self


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file, key and fix."""


def _looks_placeholder(value: str) -> bool:
    low = value.strip().lower()
    return not low or any(marker in low for marker in PLACEHOLDER_MARKERS)


def check_production(settings: Settings) -> None:
    """Refuse a production profile with plaintext brokers or placeholder secrets.

    Raises `ConfigError` naming every problem at once; reads only environment variables.
    """
    problems: list[str] = []
    uses_kafka = settings.input.kind == "kafka" or settings.output.kind == "kafka"
    if uses_kafka:
        if settings.kafka.security_protocol in ("PLAINTEXT", "SASL_PLAINTEXT"):
            problems.append(
                f"kafka.security_protocol is {settings.kafka.security_protocol}: "
                "production needs SSL or SASL_SSL"
            )
        if settings.kafka.sasl is not None:
            for env in (settings.kafka.sasl.username_env, settings.kafka.sasl.password_env):
                if _looks_placeholder(os.environ.get(env, "")):
                    problems.append(f"environment variable {env} is unset or a placeholder")
    if not settings.llm.endpoints and _looks_placeholder(settings.llm.api_key().get_secret_value()):
        problems.append(
            f"environment variable {settings.llm.api_key_env} is unset or a placeholder"
        )
    for e in settings.llm.endpoints:
        if _looks_placeholder(e.api_key().get_secret_value()):
            problems.append(
                f"environment variable {e.api_key_env} (llm.endpoints[{e.name}]) is unset "
                "or a placeholder"
            )
    embeddings = settings.knowledge.embeddings
    if embeddings is not None and _looks_placeholder(embeddings.api_key().get_secret_value()):
        problems.append(
            f"environment variable {embeddings.api_key_env} (knowledge.embeddings) is unset "
            "or a placeholder"
        )
    if problems:
        msg = "production profile refused:\n  - " + "\n  - ".join(problems)
        raise ConfigError(msg)


def _problems(exc: ValidationError) -> str:
    """`key.path: reason` for each error, on one line (no input values, no pydantic links)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "<file>"
        reason = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {reason}")
    return "; ".join(parts)


def load_config(path: str | Path) -> Settings:
    """Parse a TOML deployment file into `Settings`; relative paths resolve against the file.

    Raises `ConfigError` with the file name on a missing file, bad TOML or invalid keys, and
    for a production profile that `check_production` refuses.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        msg = f"config file {path} not found"
        raise ConfigError(msg) from exc
    except tomllib.TOMLDecodeError as exc:
        msg = f"config file {path} is not valid TOML: {exc}"
        raise ConfigError(msg) from exc
    try:
        settings = Settings.model_validate(raw, context={"config_dir": path.parent})
    except ValidationError as exc:
        msg = f"config file {path} is invalid: {_problems(exc)}"
        raise ConfigError(msg) from None
    except ValueError as exc:
        msg = f"config file {path} is invalid: {exc}"
        raise ConfigError(msg) from exc
    if settings.app.profile == "production":
        check_production(settings)
    return settings
