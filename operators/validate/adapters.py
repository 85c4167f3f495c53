"""Adapters: the shape of a source's raw JSON records, compiled once into a fast decoder.

An `AdapterSpec` (config `[[input.adapters]]`) says where the parts of the canonical event are
in a record, as dotted paths into nested objects. `compile_adapter` turns it, once at start,
into a `CompiledAdapter`:

- `model`: a pydantic model generated from the paths (one nested model per object on the
  way, fields aliased to the JSON keys), so pydantic-core parses and type-checks a record in
  one pass (`model.model_validate_json(raw bytes)`), as the built-in shapes always did;
- `build`: a function generated as Python source and compiled once (`_generate`), with the
  attribute chains (`m.f0.f2`) and the payload's dict literal inlined, that reads the
  validated model into the event's parts: no lookups by name, no loops per record;
- `reason`: the dead-letter reason of a `ValidationError`, naming each field's path:
  `adapter shop_orders: field 'order.total' missing`.

The three built-in shapes (`chat_message`, `metric_reading`, `business_event`) are presets:
`AdapterSpec`s run by the same compiler, with the field types, defaults, field order and
reasons (`invalid chat_message: text: Field required`) of the models they replace, so their
events and dead letters are unchanged (`support/legacy_decode.py` is the reference the tests
compare against). No Bytewax here; `operators.validate` wires it into the flow.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    create_model,
)
from pydantic.fields import FieldInfo

from config.models import (
    BUILTIN_ADAPTERS,
    TENANT_PATTERN,
    AdapterSpec,
    DerivedId,
    TenantSpec,
    TimestampSpec,
)
from core.records import Kind

_RAW_CONFIG = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False, strict=False)
"""Foreign input: unknown keys are ignored (producers add fields), numbers must be finite."""

_Id = Field(min_length=1, max_length=256)
_IdStr = Annotated[str, _Id]
_Tenant = Annotated[str, Field(min_length=1, max_length=128, pattern=TENANT_PATTERN)]
"""A tenant name: no "/" (keys are `tenant/entity`, split at the first "/", so no two
(tenant, entity) pairs share a key) and no control characters."""
_Strict = Field(strict=True)

_FIRST_S, _LAST_S = -62_135_596_800, 253_402_300_799
"""Epoch seconds of 0001-01-01 and 9999-12-31T23:59:59Z: the instants a `datetime` holds (an
ISO 8601 timestamp cannot be outside them, and later stages turn event times into datetimes)."""

# The type a mapped field must have, by its leaf type (`AdapterSpec.leaves`), and the words
# a dead letter uses for it. Ids may be integers (order numbers often are); numbers are JSON
# numbers (a numeric string is refused: the producer should be fixed, not guessed at).
_LEAF_TYPES: dict[str, tuple[Any, str]] = {
    "id": (_IdStr | StrictInt, "a non-empty string (at most 256 characters) or an integer"),
    "text": (Annotated[str, Field(min_length=1)], "a non-empty string"),
    "tenant": (
        _Tenant | None,
        'a non-empty string of at most 128 characters without "/" or control characters',
    ),
    "iso8601": (str, "an ISO 8601 timestamp string with a zone offset"),
    "epoch_s": (
        Annotated[float, Field(strict=True, ge=_FIRST_S, le=_LAST_S)],
        "a finite number of seconds since the epoch",
    ),
    "epoch_ms": (
        Annotated[float, Field(strict=True, ge=_FIRST_S * 1000, le=_LAST_S * 1000)],
        "a finite number of milliseconds since the epoch",
    ),
    "number": (Annotated[float, _Strict], "a finite number"),
    "part": (str | StrictInt | StrictFloat | StrictBool, "a string, number or boolean"),
    "role": (Literal["user", "assistant"], "'user' or 'assistant'"),
    "any": (Any, "any JSON value"),
}

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object"}
_JSON_TYPES |= {list: "array", type(None): "null"}


Parts = tuple[str, str | None, str, float, dict[str, Any]]
"""What `CompiledAdapter.build` reads from a validated record: event id, tenant (None: the
source's), entity, event time (epoch seconds) and payload."""


class MappingError(ValueError):
    """A validated record still cannot be mapped (say, an unparsable timestamp); the message
    is the dead-letter reason."""


@dataclass(frozen=True)
class CompiledAdapter:
    """An adapter ready for the hot path: `model` validates a record (from JSON bytes or a
    parsed dict), `build` maps the model into `Parts` (raising `MappingError`), `reason`
    words a `ValidationError` of `model` as a dead-letter reason."""

    name: str
    kind: Kind
    model: type[BaseModel]
    build: Callable[[BaseModel], Parts]
    reason: Callable[[ValidationError], str]


@dataclass(frozen=True)
class _Preset:
    """What a built-in shape has beyond its `AdapterSpec`: the exact field types, defaults and
    order of the model it replaces, an id derived when `event_id`'s field is absent, and the
    legacy wording of its dead letters."""

    spec: AdapterSpec
    fields: Mapping[str, tuple[Any, Any]]
    fallback_id: DerivedId | None = None


_TENANT_RULE = 'may not contain "/" or control characters (a tenant name)'


def _legacy_reason(name: str) -> Callable[[ValidationError], str]:
    def reason(exc: ValidationError) -> str:
        parts = []
        for err in exc.errors(include_url=False)[:5]:
            loc = ".".join(str(p) for p in err["loc"]) or "<record>"
            msg = _TENANT_RULE if err["type"] == "string_pattern_mismatch" else err["msg"]
            parts.append(f"{loc}: {msg}")
        return f"invalid {name}: {'; '.join(parts)}"

    return reason


def _field_reason(name: str, leaves: Mapping[str, str]) -> Callable[[ValidationError], str]:
    """Reasons that name the dotted path of each failing field and the type it needs."""

    def reason(exc: ValidationError) -> str:
        parts: list[str] = []
        seen: set[str] = set()
        for err in exc.errors(include_url=False):
            # A union adds its member's tag to the location: keep the keys of the record.
            loc = [str(p) for p in err["loc"]]
            path = ".".join(loc)
            while loc and path not in leaves and not any(k.startswith(path + ".") for k in leaves):
                loc.pop()
                path = ".".join(loc)
            path = path or "<record>"
            if path in seen:
                continue
            seen.add(path)
            if err["type"] == "missing":
                parts.append(f"field {path!r} missing")
                continue
            if err["type"] == "string_pattern_mismatch":
                parts.append(f"field {path!r} {_TENANT_RULE}")
                continue
            if err["type"] in ("greater_than_equal", "less_than_equal"):
                parts.append(f"field {path!r} is outside the years 1 to 9999")
                continue
            got = _JSON_TYPES.get(type(err.get("input")), "another value")
            need = _LEAF_TYPES[leaves[path]][1] if path in leaves else "an object"
            parts.append(f"field {path!r} must be {need}, got {got}")
            if len(parts) == 5:
                break
        return f"adapter {name}: {'; '.join(parts)}"

    return reason


def _model(
    name: str, fields: Mapping[str, tuple[Any, Any]]
) -> tuple[type[BaseModel], dict[str, str]]:
    """A (nested) model for `{dotted path: (type, default)}` and each path's attribute chain.

    A key becomes field `f<i>` aliased to it (JSON keys need not be identifiers, and must not
    shadow `BaseModel` attributes); an object on the way is required unless every field under
    it has a default (then it defaults to None).
    """
    tree: dict[str, Any] = {}
    for path in fields:
        node = tree
        keys = path.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = path

    attrs: dict[str, str] = {}
    counter = iter(range(1 << 30))

    def build(node: dict[str, Any], prefix: str, model_name: str) -> tuple[type[BaseModel], bool]:
        defs: dict[str, Any] = {}
        optional = True
        for key, sub in node.items():
            fname = f"f{next(counter)}"
            chain = f"{prefix}.{fname}" if prefix else fname
            if isinstance(sub, str):
                annotation, default = fields[sub]
                attrs[sub] = chain
                optional = optional and default is not ...
            else:
                sub_model, sub_optional = build(sub, chain, f"{model_name}_{key}")
                annotation = sub_model | None if sub_optional else sub_model
                default = None if sub_optional else ...
                optional = optional and sub_optional
            defs[fname] = (annotation, Field(default, alias=key))
        model = create_model(model_name, __config__=_RAW_CONFIG, **defs)
        return model, optional

    # Flat models (the presets) keep their JSON keys as field names, as the models they
    # replace did; nested ones need the aliases.
    if all(p.isidentifier() and not _reserved_name(p) for p in fields):
        flat: dict[str, Any] = {
            p: (t, d if isinstance(d, FieldInfo) else Field(d)) for p, (t, d) in fields.items()
        }
        return create_model(name, __config__=_RAW_CONFIG, **flat), {p: p for p in fields}
    root, _ = build(tree, "", name)
    return root, attrs


def _reserved_name(key: str) -> bool:
    return key.startswith(("_", "model_")) or hasattr(BaseModel, key)


def _getter(chain: str, optional: bool) -> Callable[[BaseModel], Any]:
    """`model.f0.f2`, compiled; with `optional`, None when an object on the way is None."""
    if not optional or "." not in chain:
        return operator.attrgetter(chain)
    steps = [operator.attrgetter(a) for a in chain.split(".")]

    def get(model: BaseModel) -> Any:
        value: Any = model
        for step in steps:
            value = step(value)
            if value is None:
                return None
        return value

    return get


def _part(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _iso_ts(path: str, name: str) -> Callable[[Any], float]:
    fromisoformat = datetime.fromisoformat

    def ts(value: Any) -> float:
        try:
            parsed = fromisoformat(value)
        except ValueError:
            msg = f"adapter {name}: field {path!r} is not an ISO 8601 timestamp"
            raise MappingError(msg) from None
        if parsed.tzinfo is None:
            msg = f"adapter {name}: field {path!r} has no zone offset (write Z or +00:00)"
            raise MappingError(msg)
        return parsed.timestamp()

    return ts


def _id_maker(
    derived: DerivedId,
    getters: Mapping[str, Callable[[BaseModel], Any]],
    ts_path: str,
    name: str,
) -> Callable[[BaseModel, float], str]:
    """The derived id: `prefix` + the fields' values joined by `|` (hashed if asked); the
    timestamp field contributes `repr` of its instant in epoch seconds."""
    gets = [(f, None if f == ts_path else getters[f]) for f in derived.fields]
    prefix, hashed = derived.prefix, derived.hash
    blake2b = hashlib.blake2b

    def make(model: BaseModel, ts: float) -> str:
        parts = []
        for path, get in gets:
            if get is None:
                parts.append(repr(ts))
                continue
            value = get(model)
            if value is None:
                msg = f"adapter {name}: field {path!r} missing (the event id is made from it)"
                raise MappingError(msg)
            parts.append(_part(value))
        joined = "|".join(parts)
        if hashed:
            return prefix + blake2b(joined.encode(), digest_size=10).hexdigest()
        return prefix + joined

    return make


def _generate(
    spec: AdapterSpec,
    preset: _Preset | None,
    attrs: Mapping[str, str],
    getters: Mapping[str, Callable[[BaseModel], Any]],
    optional: set[str],
    ts_parsed: bool,
) -> Callable[[BaseModel], Parts]:
    """The adapter's `build`, generated as Python source once and compiled: attribute chains
    (`m.f0.f2`) and the payload's dict literal are inlined, so a record costs what the
    hand-written mapping of the built-in shapes cost.

    Only field names the compiler made (`f<i>`, or identifiers checked by `_model`) and
    `repr`s of payload keys enter the source; every other value is passed in the namespace.
    """
    name = spec.name
    ns: dict[str, Any] = {}

    def const(value: Any) -> str:
        key = f"_c{len(ns)}"
        ns[key] = value
        return key

    def read(path: str) -> str:
        if path in optional and "." in attrs[path]:
            return f"{const(getters[path])}(m)"
        return f"m.{attrs[path]}"

    # Presets' fields are typed `str` already; declared ids may be integers.
    as_str = (lambda e: e) if preset is not None else (lambda e: f"str({e})")

    ts_spec = spec.timestamp
    ts_raw = read(ts_spec.field)
    if ts_parsed:
        ts_expr = f"{ts_raw}.timestamp()"
    elif ts_spec.format == "epoch_ms":
        ts_expr = f"{ts_raw} / 1000.0"
    elif ts_spec.format == "epoch_s":
        ts_expr = f"float({ts_raw})"
    else:
        ts_expr = f"{const(_iso_ts(ts_spec.field, name))}({ts_raw})"

    if isinstance(spec.event_id, DerivedId):
        derive = _id_maker(spec.event_id, getters, ts_spec.field, name)
        id_expr = f"{const(derive)}(m, ts)"
    else:
        fallback = preset.fallback_id if preset is not None else None
        id_expr = as_str(read(spec.event_id))
        if fallback is not None:
            derive = _id_maker(fallback, getters, ts_spec.field, name)
            id_expr = f"_id if (_id := {id_expr}) is not None else {const(derive)}(m, ts)"

    tenant = spec.tenant
    if tenant is None:
        tenant_expr = "None"
    elif tenant.value is not None:
        tenant_expr = const(tenant.value)
    else:
        assert tenant.field is not None
        tenant_expr = read(tenant.field)

    # The payload: the kind's own parts first, then the mapped keys, in declaration order.
    tree: dict[str, Any] = {}
    if spec.text is not None:
        tree["text"] = read(spec.text)
    if spec.value is not None:
        tree["value"] = f"float({read(spec.value)})"
    if spec.metric is not None:
        tree["metric"] = f"str({read(spec.metric)})"
    for target, path in spec.payload.items():
        node = tree
        keys = target.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = read(path)
    if spec.kind == "chat" and "role" not in spec.payload:
        tree["role"] = repr("user")

    def literal(node: dict[str, Any]) -> str:
        items = (f"{k!r}: {literal(v) if isinstance(v, dict) else v}" for k, v in node.items())
        return "{" + ", ".join(items) + "}"

    source = (
        "def build(m):\n"
        f"    ts = {ts_expr}\n"
        f"    return ({id_expr}, {tenant_expr}, {as_str(read(spec.entity))}, ts, {literal(tree)})\n"
    )
    exec(compile(source, f"<adapter {name}>", "exec"), ns)
    built: Callable[[BaseModel], Parts] = ns["build"]
    return built


def _compile(spec: AdapterSpec, preset: _Preset | None = None) -> CompiledAdapter:
    name = spec.name
    leaves = spec.leaves()
    if preset is not None:
        fields = dict(preset.fields)
    else:
        fields = {p: (_LEAF_TYPES[t][0], None if t == "tenant" else ...) for p, t in leaves.items()}
    model, attrs = _model(f"{name}_record", fields)
    optional = {p for p, (_, default) in fields.items() if default is not ...}
    getters = {p: _getter(attrs[p], p in optional) for p in fields}

    ts_parsed = preset is not None and fields[spec.timestamp.field][0] is AwareDatetime
    build = _generate(spec, preset, attrs, getters, optional, ts_parsed)
    reason = _legacy_reason(name) if preset is not None else _field_reason(name, leaves)
    return CompiledAdapter(name, Kind(spec.kind), model, build, reason)


def compile_adapter(spec: AdapterSpec) -> CompiledAdapter:
    """The decoder of a declared adapter (call once, at start)."""
    return _compile(spec)


_Opt = None  # a field's default: absent or null in the record reads as None

_PRESETS: tuple[_Preset, ...] = (
    _Preset(
        AdapterSpec.model_construct(
            name="chat_message",
            kind="chat",
            event_id="message_id",
            entity="session_id",
            timestamp=TimestampSpec(field="sent_at"),
            tenant=TenantSpec(field="tenant"),
            text="text",
            value=None,
            metric=None,
            payload={"role": "role", "user_id": "user_id", "channel": "channel"},
        ),
        {
            "message_id": (_IdStr, ...),
            "session_id": (_IdStr, ...),
            "text": (Annotated[str, Field(min_length=1)], ...),
            "sent_at": (AwareDatetime, ...),
            "tenant": (_Tenant | None, _Opt),
            "user_id": (Annotated[str, Field(max_length=256)] | None, _Opt),
            "role": (Literal["user", "assistant"], "user"),
            "channel": (Annotated[str, Field(max_length=64)] | None, _Opt),
        },
    ),
    _Preset(
        AdapterSpec.model_construct(
            name="metric_reading",
            kind="metric",
            event_id="reading_id",
            entity="series",
            timestamp=TimestampSpec(field="timestamp"),
            tenant=TenantSpec(field="tenant"),
            text=None,
            value="value",
            metric=None,
            payload={"unit": "unit", "tags": "tags"},
        ),
        {
            "series": (_IdStr, ...),
            "value": (float, ...),
            "timestamp": (AwareDatetime, ...),
            "tenant": (_Tenant | None, _Opt),
            "reading_id": (_IdStr | None, _Opt),
            "unit": (Annotated[str, Field(max_length=32)] | None, _Opt),
            "tags": (dict[str, str], Field(default_factory=dict)),
        },
        # A reading without an id gets one from series and instant, so a re-sent reading is
        # recognised as a duplicate.
        fallback_id=DerivedId(fields=("series", "timestamp"), hash=True, prefix="m-"),
    ),
    _Preset(
        AdapterSpec.model_construct(
            name="business_event",
            kind="business",
            event_id="event_id",
            entity="account_id",
            timestamp=TimestampSpec(field="occurred_at"),
            tenant=TenantSpec(field="tenant"),
            text=None,
            value=None,
            metric=None,
            payload={
                "event_type": "event_type",
                "amount": "amount",
                "currency": "currency",
                "attributes": "attributes",
            },
        ),
        {
            "event_id": (_IdStr, ...),
            "event_type": (Annotated[str, Field(min_length=1, max_length=128)], ...),
            "account_id": (_IdStr, ...),
            "occurred_at": (AwareDatetime, ...),
            "tenant": (_Tenant | None, _Opt),
            "amount": (float | None, _Opt),
            "currency": (Annotated[str, Field(min_length=3, max_length=3)] | None, _Opt),
            "attributes": (
                dict[str, str | int | float | bool | None],
                Field(default_factory=dict),
            ),
        },
    ),
)
assert tuple(p.spec.name for p in _PRESETS) == BUILTIN_ADAPTERS


@cache
def presets() -> Mapping[str, CompiledAdapter]:
    """The built-in adapters, compiled (once per process)."""
    return {p.spec.name: _compile(p.spec, p) for p in _PRESETS}


def compile_adapters(specs: Sequence[AdapterSpec]) -> dict[str, CompiledAdapter]:
    """The presets and the declared adapters by name (names are unique: `InputConfig`)."""
    return {**presets(), **{s.name: compile_adapter(s) for s in specs}}
