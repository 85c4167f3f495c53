"""A frozen copy of the decoder as it was before adapters were declared in config (issue 11).

Test and benchmark support, not product code: `tests/unit/test_adapters.py` checks on generated
records that `operators.validate.Decoder` with the built-in presets gives the same events and
dead letters as this one, and `bench/decode.py` compares their rates. Do not change it: it is
the reference the presets are measured against. The operator wrapper is left out.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any, Literal, cast

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from config.models import Adapter, SourceConfig, ValidationConfig, detect_adapter
from core.clock import Clock
from core.records import DeadLetter, Event, Kind, RawRecord, coords
from runtime import metrics

_Id = Field(min_length=1, max_length=256)


class _RawModel(BaseModel):
    # Foreign input: unknown keys are ignored (producers add fields), numbers must be finite.
    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False, strict=False)


class ChatMessageIn(_RawModel):
    message_id: str = _Id
    session_id: str = _Id
    text: str = Field(min_length=1)
    sent_at: AwareDatetime
    tenant: str | None = Field(default=None, min_length=1, max_length=128)
    user_id: str | None = Field(default=None, max_length=256)
    role: Literal["user", "assistant"] = "user"
    channel: str | None = Field(default=None, max_length=64)


class MetricReadingIn(_RawModel):
    series: str = _Id
    value: float
    timestamp: AwareDatetime
    tenant: str | None = Field(default=None, min_length=1, max_length=128)
    reading_id: str | None = Field(default=None, min_length=1, max_length=256)
    unit: str | None = Field(default=None, max_length=32)
    tags: dict[str, str] = Field(default_factory=dict)


class BusinessEventIn(_RawModel):
    event_id: str = _Id
    event_type: str = Field(min_length=1, max_length=128)
    account_id: str = _Id
    occurred_at: AwareDatetime
    tenant: str | None = Field(default=None, min_length=1, max_length=128)
    amount: float | None = None
    currency: str | None = Field(default=None, min_length=3, max_length=3)
    attributes: dict[str, str | int | float | bool | None] = Field(default_factory=dict)


_MODELS: dict[str, type[_RawModel]] = {
    "chat_message": ChatMessageIn,
    "metric_reading": MetricReadingIn,
    "business_event": BusinessEventIn,
}


def _sniff(value: bytes) -> Adapter | None:
    """Guess the adapter from the raw bytes (a guess: the slow path corrects a wrong one)."""
    if b'"message_id"' in value or b'"session_id"' in value:
        return "chat_message"
    if b'"series"' in value:
        return "metric_reading"
    if b'"event_type"' in value or b'"account_id"' in value:
        return "business_event"
    return None


def _error_summary(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "<record>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


class LegacyDecoder:
    """Pure decoding logic: raw record in, `Event` or `DeadLetter` out. No runtime needed.

    `clock` returns the current wall time in epoch seconds (injected for tests).
    """

    def __init__(
        self,
        step_id: str,
        sources: Mapping[str, SourceConfig],
        cfg: ValidationConfig,
        clock: Clock = time.time,
    ) -> None:
        self.step_id = step_id
        self._sources = sources
        self._cfg = cfg
        self._clock = clock

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
        configured = cast(Adapter, src.adapter) if src is not None else "auto"
        default_tenant = src.tenant if src is not None else None

        # Fast path: parse and validate in one pass (pydantic-core) with the adapter the
        # source names or the bytes suggest. Any failure falls through to the slow path,
        # which finds the precise reason (and the right adapter, if the guess was wrong).
        guess = _sniff(value) if configured == "auto" else configured
        if guess is not None:
            try:
                model = _MODELS[guess].model_validate_json(value)
            except ValidationError:
                pass
            else:
                return self._checked(self._event(guess, model, raw, default_tenant), raw)

        try:
            obj = json.loads(text)
        except ValueError as exc:
            return self._dead(raw, f"not valid JSON: {exc}")
        except RecursionError:
            return self._dead(raw, "JSON nested too deeply to decode")
        if not isinstance(obj, dict):
            return self._dead(raw, f"expected a JSON object, got {type(obj).__name__}")

        adapter = detect_adapter(obj) if configured == "auto" else configured
        if adapter is None:
            return self._dead(
                raw,
                "unknown record shape: expected a chat message (message_id, session_id), "
                "a metric reading (series, value) or a business event (event_type, "
                "account_id)",
            )
        try:
            model = _MODELS[adapter].model_validate(obj)
        except ValidationError as exc:
            return self._dead(raw, f"invalid {adapter}: {_error_summary(exc)}", adapter=adapter)
        return self._checked(self._event(adapter, model, raw, default_tenant), raw)

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
        self, adapter: Adapter, model: _RawModel, raw: RawRecord, default_tenant: str | None
    ) -> Event | DeadLetter:
        source = coords(raw.origin, raw.partition, raw.offset)
        now = self._clock()
        if adapter == "chat_message":
            m = model
            assert isinstance(m, ChatMessageIn)
            tenant, kind, entity = m.tenant or default_tenant, Kind.CHAT, m.session_id
            event_id, ts = m.message_id, m.sent_at.timestamp()
            payload: dict[str, Any] = {
                "text": m.text,
                "role": m.role,
                "user_id": m.user_id,
                "channel": m.channel,
            }
        elif adapter == "metric_reading":
            r = model
            assert isinstance(r, MetricReadingIn)
            tenant, kind, entity = r.tenant or default_tenant, Kind.METRIC, r.series
            ts = r.timestamp.timestamp()
            event_id = r.reading_id or (
                "m-" + hashlib.blake2b(f"{r.series}|{ts!r}".encode(), digest_size=10).hexdigest()
            )
            payload = {"value": r.value, "unit": r.unit, "tags": r.tags}
        else:
            b = model
            assert isinstance(b, BusinessEventIn)
            tenant, kind, entity = b.tenant or default_tenant, Kind.BUSINESS, b.account_id
            event_id, ts = b.event_id, b.occurred_at.timestamp()
            payload = {
                "event_type": b.event_type,
                "amount": b.amount,
                "currency": b.currency,
                "attributes": b.attributes,
            }
        if tenant is None:
            return self._dead(
                raw,
                "no tenant: the record names none and its source has no default tenant "
                "(input.sources[].tenant)",
                event_id=event_id,
            )
        return Event(
            event_id=event_id,
            source=source,
            tenant=tenant,
            kind=kind,
            entity=entity,
            ts=ts,
            payload=payload,
            ingest_ts=now,
        )
