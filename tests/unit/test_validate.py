"""Unit tests of `operators.validate.Decoder`: raw bytes in, `Event` or `DeadLetter` out."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.models import SourceConfig, ValidationConfig, detect_adapter
from core.records import DeadLetter, Event, Kind, RawRecord
from operators.validate import Decoder

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
ISO_NOW = "2025-03-01T12:00:00Z"
FILE = "file:data/in.jsonl"

SOURCES: dict[str, SourceConfig] = {
    "auto": SourceConfig(name="auto", path="data/in.jsonl"),
    "auto_acme": SourceConfig(name="auto_acme", path="data/acme.jsonl", tenant="acme"),
    "chat": SourceConfig(name="chat", topic="events.chat", adapter="chat_message"),
    "metrics": SourceConfig(name="metrics", topic="events.metrics", adapter="metric_reading"),
    "business": SourceConfig(name="business", topic="events.business", adapter="business_event"),
}


def make_decoder(
    cfg: ValidationConfig | None = None,
    sources: Mapping[str, SourceConfig] = SOURCES,
    now: float = NOW,
) -> Decoder:
    return Decoder("decode", sources, cfg or ValidationConfig(), clock=lambda: now)


def raw_of(
    value: bytes | dict[str, Any] | None,
    source: str = "auto",
    origin: str = FILE,
    partition: int = 0,
    offset: int = 7,
) -> RawRecord:
    data = json.dumps(value).encode() if isinstance(value, dict) else value
    return RawRecord(origin, partition, offset, None, data, source)


def chat(**over: Any) -> dict[str, Any]:
    rec = {
        "message_id": "msg-1",
        "session_id": "sess-1",
        "text": "Where is my order?",
        "sent_at": "2025-03-01T11:59:00Z",
        "tenant": "acme",
        "user_id": "u-9",
        "channel": "web",
    }
    rec.update(over)
    return rec


def metric(**over: Any) -> dict[str, Any]:
    rec = {
        "series": "web-1.cpu",
        "value": 41.5,
        "timestamp": "2025-03-01T11:58:00+00:00",
        "tenant": "acme",
        "unit": "percent",
        "tags": {"env": "prod"},
    }
    rec.update(over)
    return rec


def business(**over: Any) -> dict[str, Any]:
    rec = {
        "event_id": "biz-1",
        "event_type": "refund_requested",
        "account_id": "acct-3",
        "occurred_at": "2025-03-01T13:00:00+02:00",
        "tenant": "globex",
        "amount": 12.5,
        "currency": "EUR",
        "attributes": {"order": "o-1", "items": 2, "gift": False},
    }
    rec.update(over)
    return rec


def decode_ok(raw: RawRecord, decoder: Decoder | None = None) -> Event:
    out = (decoder or make_decoder()).decode(raw)
    assert isinstance(out, Event), out
    return out


def decode_dead(raw: RawRecord, decoder: Decoder | None = None) -> DeadLetter:
    out = (decoder or make_decoder()).decode(raw)
    assert isinstance(out, DeadLetter), out
    # Every dead letter carries the original bytes, the step and the coordinates.
    assert out.raw == raw.value
    assert out.step_id == "decode"
    return out


# --- adapters -------------------------------------------------------------------------------


def test_chat_message_maps_to_canonical_event() -> None:
    e = decode_ok(raw_of(chat()))
    assert e.event_id == "msg-1"
    assert e.kind is Kind.CHAT
    assert e.entity == "sess-1"
    assert e.tenant == "acme"
    assert e.ts == NOW - 60
    assert e.source == "file:data/in.jsonl:7"
    assert e.ingest_ts == NOW
    assert e.payload == {
        "text": "Where is my order?",
        "role": "user",
        "user_id": "u-9",
        "channel": "web",
    }
    assert e.key == "acme/sess-1"
    assert e.redactions == 0
    assert e.flags == ()


def test_metric_reading_maps_to_canonical_event() -> None:
    e = decode_ok(raw_of(metric(reading_id="r-1"), offset=3))
    assert e.event_id == "r-1"
    assert e.kind is Kind.METRIC
    assert e.entity == "web-1.cpu"
    assert e.tenant == "acme"
    assert e.ts == NOW - 120
    assert e.payload == {"value": 41.5, "unit": "percent", "tags": {"env": "prod"}}


def test_business_event_maps_to_canonical_event_with_offset_timestamp() -> None:
    e = decode_ok(raw_of(business()))
    assert e.event_id == "biz-1"
    assert e.kind is Kind.BUSINESS
    assert e.entity == "acct-3"
    assert e.tenant == "globex"
    # 13:00 at +02:00 is 11:00 UTC.
    assert e.ts == NOW - 3600
    assert e.payload == {
        "event_type": "refund_requested",
        "amount": 12.5,
        "currency": "EUR",
        "attributes": {"order": "o-1", "items": 2, "gift": False},
    }


def test_kafka_coordinates_in_event_source() -> None:
    e = decode_ok(raw_of(chat(), source="chat", origin="events.chat", partition=2, offset=41))
    assert e.source == "events.chat[2]@41"


@pytest.mark.parametrize(
    ("record", "kind"),
    [
        (chat(), Kind.CHAT),
        ({"session_id": "s", "message_id": "m", "text": "hi", "sent_at": ISO_NOW}, Kind.CHAT),
        (metric(), Kind.METRIC),
        (business(), Kind.BUSINESS),
    ],
)
def test_auto_detection_picks_adapter_from_keys(record: dict[str, Any], kind: Kind) -> None:
    e = decode_ok(raw_of(record, source="auto_acme"))
    assert e.kind is kind


def test_detect_adapter_shapes() -> None:
    assert detect_adapter({"message_id": "x"}) == "chat_message"
    assert detect_adapter({"session_id": "x"}) == "chat_message"
    assert detect_adapter({"series": "x"}) == "metric_reading"
    assert detect_adapter({"event_type": "x"}) == "business_event"
    assert detect_adapter({"account_id": "x"}) == "business_event"
    assert detect_adapter({"foo": 1}) is None


def test_unknown_source_name_falls_back_to_auto_detection() -> None:
    e = decode_ok(raw_of(metric(), source="not-configured"))
    assert e.kind is Kind.METRIC


def test_configured_adapter_wins_over_keys() -> None:
    # A chat-shaped record on a metrics source is validated as a metric reading, and fails.
    dead = decode_dead(raw_of(chat(), source="metrics", origin="events.metrics", offset=5))
    assert dead.reason.startswith("invalid metric_reading:")
    assert "series" in dead.reason
    assert dead.detail == {"adapter": "metric_reading"}
    assert dead.source == "events.metrics[0]@5"


def test_configured_adapter_accepts_record_with_misleading_extra_keys() -> None:
    # `series` would make auto-detection pick metric_reading; the chat adapter ignores it.
    e = decode_ok(raw_of(chat(series="looks-like-a-metric"), source="chat", origin="events.chat"))
    assert e.kind is Kind.CHAT
    assert e.entity == "sess-1"


def test_default_tenant_from_source_config() -> None:
    rec = chat()
    del rec["tenant"]
    e = decode_ok(raw_of(rec, source="auto_acme"))
    assert e.tenant == "acme"


def test_record_tenant_overrides_source_default() -> None:
    e = decode_ok(raw_of(chat(tenant="globex"), source="auto_acme"))
    assert e.tenant == "globex"


def test_derived_metric_id_is_stable_for_same_series_and_time() -> None:
    a = decode_ok(raw_of(metric(value=1.0)))
    # Same instant written with a different offset, a different value: same id (a re-send).
    b = decode_ok(raw_of(metric(value=2.0, timestamp="2025-03-01T12:58:00+01:00"), offset=99))
    c = decode_ok(raw_of(metric(timestamp="2025-03-01T11:58:01Z")))
    d = decode_ok(raw_of(metric(series="web-2.cpu")))
    assert a.event_id.startswith("m-")
    assert a.event_id == b.event_id
    assert a.event_id != c.event_id
    assert a.event_id != d.event_id
    # And stable across decoder instances (no per-process salt).
    assert decode_ok(raw_of(metric()), make_decoder()).event_id == a.event_id


# --- rejections -----------------------------------------------------------------------------


def test_null_value_is_dead_letter() -> None:
    dead = decode_dead(raw_of(None, offset=12))
    assert dead.raw is None
    assert dead.source == "file:data/in.jsonl:12"
    assert "null value" in dead.reason


def test_oversize_record_is_dead_letter() -> None:
    cfg = ValidationConfig(max_bytes=100)
    value = json.dumps(chat(text="x" * 200)).encode()
    dead = decode_dead(raw_of(value), make_decoder(cfg))
    assert f"record is {len(value)} bytes" in dead.reason
    assert "100-byte limit" in dead.reason
    assert "validation.max_bytes" in dead.reason


def test_record_at_exactly_the_size_limit_is_accepted() -> None:
    value = json.dumps(chat()).encode()
    cfg = ValidationConfig(max_bytes=len(value))
    decode_ok(raw_of(value), make_decoder(cfg))


def test_invalid_utf8_is_dead_letter_with_base64_raw() -> None:
    value = b'{"text": "caf\xe9"}'
    dead = decode_dead(raw_of(value, origin="events.chat", partition=1, offset=8, source="chat"))
    assert "not UTF-8" in dead.reason
    bad_at = value.index(0xE9)
    assert f"invalid byte at position {bad_at}" in dead.reason
    assert dead.source == "events.chat[1]@8"
    doc = dead.to_json()
    assert doc["raw_encoding"] == "base64"
    assert base64.b64decode(doc["raw"]) == value
    assert doc["type"] == "dead_letter"
    assert doc["source"] == "events.chat[1]@8"
    json.dumps(doc)  # serialisable as is


def test_utf8_dead_letter_to_json_keeps_text() -> None:
    dead = decode_dead(raw_of(b"not json"))
    doc = dead.to_json()
    assert doc["raw_encoding"] == "utf-8"
    assert doc["raw"] == "not json"


def test_not_json_is_dead_letter() -> None:
    dead = decode_dead(raw_of(b'{"message_id": '))
    assert dead.reason.startswith("not valid JSON:")
    assert dead.source == "file:data/in.jsonl:7"


@pytest.mark.parametrize(("value", "name"), [(b"[1, 2]", "list"), (b'"x"', "str"), (b"3", "int")])
def test_json_that_is_not_an_object_is_dead_letter(value: bytes, name: str) -> None:
    dead = decode_dead(raw_of(value))
    assert dead.reason == f"expected a JSON object, got {name}"


def test_deeply_nested_json_is_dead_letter_not_a_crash() -> None:
    """2 KB of `[` is well under the size limit; the decoder must not raise RecursionError."""
    value = b"[" * 2000 + b"]" * 2000
    dead = decode_dead(raw_of(value))
    assert "JSON" in dead.reason


def test_unknown_shape_is_dead_letter() -> None:
    dead = decode_dead(raw_of({"hello": "world"}))
    assert dead.reason.startswith("unknown record shape")
    assert "message_id" in dead.reason
    assert "series" in dead.reason


def test_missing_field_is_dead_letter_naming_the_field() -> None:
    rec = chat()
    del rec["text"]
    dead = decode_dead(raw_of(rec))
    assert dead.reason.startswith("invalid chat_message:")
    assert "text: Field required" in dead.reason
    assert dead.detail == {"adapter": "chat_message"}


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (chat(text=42), "text"),
        (metric(value="high"), "value"),
        (metric(tags={"env": 1}), "tags.env"),
        (business(attributes={"nested": {"a": 1}}), "attributes.nested"),
        (chat(role="system"), "role"),
    ],
)
def test_wrong_type_is_dead_letter_naming_the_field(record: dict[str, Any], field: str) -> None:
    dead = decode_dead(raw_of(record))
    assert dead.reason.startswith("invalid ")
    assert f"{field}" in dead.reason


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (b'{"series": "s", "value": NaN, "timestamp": "2025-03-01T11:00:00Z"}', "value"),
        (b'{"series": "s", "value": Infinity, "timestamp": "2025-03-01T11:00:00Z"}', "value"),
        (b'{"series": "s", "value": 1e999, "timestamp": "2025-03-01T11:00:00Z"}', "value"),
        (b'{"series": "s", "value": -1e999, "timestamp": "2025-03-01T11:00:00Z"}', "value"),
        (
            b'{"event_id": "b", "event_type": "t", "account_id": "a", "amount": 1e999, '
            b'"occurred_at": "2025-03-01T11:00:00Z"}',
            "amount",
        ),
    ],
)
def test_non_finite_numbers_are_dead_letters(value: bytes, field: str) -> None:
    dead = decode_dead(raw_of(value, source="auto_acme"))
    assert dead.reason.startswith("invalid ")
    assert f"{field}: Input should be a finite number" in dead.reason


def test_naive_timestamp_is_dead_letter() -> None:
    dead = decode_dead(raw_of(chat(sent_at="2025-03-01T11:00:00")))
    assert "sent_at" in dead.reason
    assert "timezone" in dead.reason


def test_future_timestamp_beyond_skew_is_dead_letter() -> None:
    cfg = ValidationConfig(max_future_skew_s=300)
    dead = decode_dead(raw_of(chat(sent_at="2025-03-01T12:10:00Z")), make_decoder(cfg))
    assert "600 s in the future" in dead.reason
    assert "validation.max_future_skew_s" in dead.reason
    # The decoded id travels with the letter, so the record can be traced.
    assert dead.event_id == "msg-1"


def test_future_timestamp_within_skew_is_accepted() -> None:
    cfg = ValidationConfig(max_future_skew_s=300)
    e = decode_ok(raw_of(chat(sent_at="2025-03-01T12:05:00Z")), make_decoder(cfg))
    assert e.ts == NOW + 300


def test_too_old_is_dead_letter_when_max_age_set() -> None:
    cfg = ValidationConfig(max_past_age_s=3600)
    old = raw_of(chat(sent_at="2025-03-01T10:00:00Z"))
    dead = decode_dead(old, make_decoder(cfg))
    assert "7200 s old" in dead.reason
    assert "validation.max_past_age_s" in dead.reason
    assert dead.event_id == "msg-1"
    # Without a maximum age, history is accepted.
    decode_ok(old, make_decoder(ValidationConfig()))
    # Within the maximum age it is accepted too.
    decode_ok(raw_of(chat(sent_at="2025-03-01T11:30:00Z")), make_decoder(cfg))


def test_no_tenant_is_dead_letter() -> None:
    rec = chat()
    del rec["tenant"]
    dead = decode_dead(raw_of(rec, source="auto"))
    assert dead.reason.startswith("no tenant")
    assert "input.sources[].tenant" in dead.reason
    assert dead.event_id == "msg-1"


def test_empty_tenant_is_dead_letter() -> None:
    dead = decode_dead(raw_of(chat(tenant=""), source="auto_acme"))
    assert "tenant" in dead.reason


@pytest.mark.parametrize("currency", ["EURO", "EU", ""])
def test_currency_of_wrong_length_is_dead_letter(currency: str) -> None:
    dead = decode_dead(raw_of(business(currency=currency)))
    assert dead.reason.startswith("invalid business_event:")
    assert "currency" in dead.reason


def test_dead_letter_reason_lists_at_most_five_errors() -> None:
    dead = decode_dead(raw_of({"message_id": ""}))
    assert dead.reason.count(";") <= 4
    assert "message_id" in dead.reason


# --- property -------------------------------------------------------------------------------

FIELD_NAMES = [
    *("message_id", "session_id", "text", "sent_at", "series", "value", "timestamp"),
    *("event_type", "account_id", "occurred_at", "tenant", "currency", "tags"),
]


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(
        st.binary(max_size=300),
        st.dictionaries(
            st.sampled_from(FIELD_NAMES),
            st.one_of(st.none(), st.booleans(), st.floats(), st.integers(), st.text()),
        ).map(lambda d: json.dumps(d).encode()),
    ),
    source=st.sampled_from([*SOURCES, "unknown"]),
)
def test_decode_never_raises(value: bytes, source: str) -> None:
    decoder = make_decoder(ValidationConfig(max_bytes=256))
    out = decoder.decode(raw_of(value, source=source))
    assert isinstance(out, Event | DeadLetter)
    if isinstance(out, DeadLetter):
        assert out.raw == value
        assert out.reason
        assert out.source == "file:data/in.jsonl:7"
