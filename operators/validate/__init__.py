"""Decode and validate raw records into canonical events; everything else becomes a dead letter.

One adapter per source shape maps a raw JSON record into the canonical `Event`:

- `chat_message`: `{"message_id", "session_id", "text", "sent_at", "tenant"?, "user_id"?,
  "role"?, "channel"?}`; the entity is the session.
- `metric_reading`: `{"series", "value", "timestamp", "tenant"?, "reading_id"?, "unit"?,
  "tags"?}`; the entity is the series; without a `reading_id` the event id is derived from
  series and timestamp, so a re-sent reading is recognised as a duplicate.
- `business_event`: `{"event_id", "event_type", "account_id", "occurred_at", "tenant"?,
  "amount"?, "currency"?, "attributes"?}`; the entity is the account.

These three are presets of `operators.validate.adapters`; a deployment may declare further
shapes in `[[input.adapters]]` (`config.models.AdapterSpec`), compiled by the same code once at
start, and a source names one by its `adapter`. A source configured with adapter `auto` picks one of
the three built-in shapes from the keys present.
Checks: size limit, UTF-8, JSON object, the adapter's schema (pydantic, finite numbers,
timezone-aware timestamps), and event time no further in the future than the allowed skew
(and, if configured, no older than the maximum age). Nothing raises out of the operator: a
record that fails becomes a `DeadLetter` carrying its original bytes, coordinates and reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard, cast

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from pydantic import BaseModel, ValidationError

from config.models import Adapter, AdapterSpec, SourceConfig, ValidationConfig, detect_adapter
from core.clock import Clock
from core.records import DeadLetter, Event, RawRecord, coords
from operators.validate.adapters import CompiledAdapter, MappingError, compile_adapters
from runtime import metrics


def _sniff(value: bytes) -> Adapter | None:
    """Guess the adapter from the raw bytes (a guess: the slow path corrects a wrong one)."""
    if b'"message_id"' in value or b'"session_id"' in value:
        return "chat_message"
    if b'"series"' in value:
        return "metric_reading"
    if b'"event_type"' in value or b'"account_id"' in value:
        return "business_event"
    return None


class Decoder:
    """Pure decoding logic: raw record in, `Event` or `DeadLetter` out. No runtime needed.

    `clock` returns the current wall time in epoch seconds (injected for tests). `adapters`
    are the declared source shapes (`input.adapters`), compiled here, once; the built-in
    presets are always there. Raises ValueError when a source names an adapter that is
    neither (`InputConfig` refuses such a config at load already).
    """

    def __init__(
        self,
        step_id: str,
        sources: Mapping[str, SourceConfig],
        cfg: ValidationConfig,
        clock: Clock = time.time,
        adapters: Sequence[AdapterSpec] = (),
    ) -> None:
        self.step_id = step_id
        self._sources = sources
        self._cfg = cfg
        self._clock = clock
        self._adapters: dict[str, CompiledAdapter] = compile_adapters(adapters)
        for src in sources.values():
            if src.adapter != "auto" and src.adapter not in self._adapters:
                msg = (
                    f"source {src.name!r} names adapter {src.adapter!r}; known: auto, "
                    f"{', '.join(self._adapters)}"
                )
                raise ValueError(msg)

    def _dead(
        self, raw: RawRecord, reason: str, event_id: str | None = None, **detail: Any
    ) -> DeadLetter:
        return DeadLetter(
            step_id=self.step_id,
            reason=reason,
            source=coords(raw.origin, raw.partition, raw.offset),
            raw=raw.value,
            event_id=event_id,
            detail=detail,
        )

    def decode_batch(self, batch: list[RawRecord]) -> list[Event | DeadLetter]:
        metrics.EVENTS_IN.inc(len(batch))
        decode = self.decode
        return [decode(raw) for raw in batch]

    def decode(self, raw: RawRecord) -> Event | DeadLetter:
        value = raw.value
        if value is None:
            return self._dead(raw, "empty record (null value): nothing to decode")
        if len(value) > self._cfg.max_bytes:
            return self._dead(
                raw,
                f"record is {len(value)} bytes, over the {self._cfg.max_bytes}-byte limit "
                "(validation.max_bytes)",
            )
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return self._dead(raw, f"not UTF-8: invalid byte at position {exc.start}")
        src = self._sources.get(raw.source_name)
        configured = src.adapter if src is not None else "auto"

        # Fast path: parse and validate in one pass (pydantic-core) with the adapter the
        # source names or the bytes suggest. Any failure falls through to the slow path,
        # which finds the precise reason (and the right adapter, if the guess was wrong).
        guess = _sniff(value) if configured == "auto" else configured
        if guess is not None:
            compiled = self._adapters[guess]
            try:
                model = compiled.model.model_validate_json(value)
            except ValidationError:
                pass
            else:
                return self._checked(self._event(compiled, model, raw, src), raw)

        try:
            obj = json.loads(text)
        except ValueError as exc:
            return self._dead(raw, f"not valid JSON: {exc}")
        except RecursionError:
            return self._dead(raw, "JSON nested too deeply to decode")
        if not isinstance(obj, dict):
            return self._dead(raw, f"expected a JSON object, got {type(obj).__name__}")

        adapter: str | None = detect_adapter(obj) if configured == "auto" else configured
        if adapter is None:
            return self._dead(
                raw,
                "unknown record shape: expected a chat message (message_id, session_id), "
                "a metric reading (series, value) or a business event (event_type, "
                "account_id)",
            )
        compiled = self._adapters[adapter]
        try:
            model = compiled.model.model_validate(obj)
        except ValidationError as exc:
            return self._dead(raw, compiled.reason(exc), adapter=adapter)
        return self._checked(self._event(compiled, model, raw, src), raw)

    def _checked(self, event: Event | DeadLetter, raw: RawRecord) -> Event | DeadLetter:
        """Apply the event-time checks (skew, age) to a decoded event."""
        if isinstance(event, DeadLetter):
            return event
        now = self._clock()
        if event.ts > now + self._cfg.max_future_skew_s:
            return self._dead(
                raw,
                f"event time is {event.ts - now:.0f} s in the future, beyond the allowed "
                f"skew of {self._cfg.max_future_skew_s:.0f} s (validation.max_future_skew_s)",
                event_id=event.event_id,
            )
        max_age = self._cfg.max_past_age_s
        if max_age is not None and event.ts < now - max_age:
            return self._dead(
                raw,
                f"event time is {now - event.ts:.0f} s old, beyond the maximum age of "
                f"{max_age:.0f} s (validation.max_past_age_s)",
                event_id=event.event_id,
            )
        return event

    def _event(
        self,
        adapter: CompiledAdapter,
        model: BaseModel,
        raw: RawRecord,
        src: SourceConfig | None,
    ) -> Event | DeadLetter:
        try:
            event_id, tenant, entity, ts, payload = adapter.build(model)
        except MappingError as exc:
            return self._dead(raw, str(exc), adapter=adapter.name)
        tenant = tenant or (src.tenant if src is not None else None)
        if tenant is None:
            return self._dead(
                raw,
                "no tenant: the record names none and its source has no default tenant "
                "(input.sources[].tenant)",
                event_id=event_id,
            )
        if src is not None and src.tenants is not None and tenant not in src.tenants:
            return self._dead(
                raw,
                f"tenant {tenant!r} not allowed on source {src.name!r} (allowed: "
                f"{', '.join(src.tenants)}; input.sources[].tenants)",
                event_id=event_id,
                refused_tenant=tenant,
                source_name=src.name,
                allowed=list(src.tenants),
            )
        return Event(
            event_id=event_id,
            source=coords(raw.origin, raw.partition, raw.offset),
            tenant=tenant,
            kind=adapter.kind,
            entity=entity,
            ts=ts,
            payload=payload,
            ingest_ts=self._clock(),
        )


def _is_event(x: Event | DeadLetter) -> TypeGuard[Event]:
    # `__class__ is` rather than `isinstance`: this runs once per record.
    return x.__class__ is Event


@dataclass(frozen=True)
class ValidateOut:
    """Valid canonical events and dead letters."""

    oks: Stream[Event]
    errs: Stream[DeadLetter]


@operator
def decode_validate(
    step_id: str,
    up: Stream[RawRecord],
    sources: Mapping[str, SourceConfig],
    cfg: ValidationConfig,
    clock: Clock = time.time,
    adapters: Sequence[AdapterSpec] = (),
) -> ValidateOut:
    """Decode raw records into canonical events; invalid ones go to `errs` as dead letters.

    Stateless. Never raises on input: every record comes out on exactly one of the streams.
    `clock` (epoch seconds) is the wall time of the skew and age checks and of `ingest_ts`;
    `adapters` are the declared source shapes a source may name (`input.adapters`).

    >>> import bytewax.operators as op
    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> from core.records import RawRecord
    >>> from config.models import SourceConfig, ValidationConfig
    >>> chat = (
    ...     b'{"message_id": "m1", "session_id": "s1", "tenant": "acme", "text": "hi", '
    ...     b'"sent_at": "2026-11-01T08:00:00Z"}'
    ... )
    >>> raw = [RawRecord("chat", 0, 0, None, chat, "chat"),
    ...        RawRecord("chat", 0, 1, None, b"not json", "chat")]
    >>> flow = Dataflow("decode_eg")
    >>> sources = {"chat": SourceConfig(name="chat", topic="chat")}
    >>> out = decode_validate("decode", op.input("in", flow, TestingSource(raw)), sources,
    ...                       ValidationConfig(), clock=lambda: 1793520000.0)
    >>> oks, errs = [], []
    >>> op.output("oks", out.oks, TestingSink(oks))
    >>> op.output("errs", out.errs, TestingSink(errs))
    >>> run_main(flow)
    >>> [(e.event_id, e.kind.value, e.key, e.payload["text"]) for e in oks]
    [('m1', 'chat', 'acme/s1', 'hi')]
    >>> [(d.step_id, d.source, d.raw, d.reason.split(":")[0]) for d in errs]
    [('decode', 'chat[0]@1', b'not json', 'not valid JSON')]
    """
    # Dead letters name the step as configured in the flow ("decode"), not its full path.
    decoder = Decoder(step_id.rsplit(".", 1)[-1], sources, cfg, clock, adapters)
    decoded = op.flat_map_batch("decode", up, decoder.decode_batch)
    split = op.branch("split", decoded, _is_event)
    # The TypeGuard narrows `trues`; Bytewax types `falses` as the upstream type, and what is
    # not an `Event` is a `DeadLetter` (Bytewax's own `_kafka_error_split` casts the same way).
    errs = cast(Stream[DeadLetter], split.falses)
    return ValidateOut(oks=split.trues, errs=errs)
