"""OpenAI-compatible chat-completions simulator served over loopback HTTP.

The simulator lets tests and the local demo exercise the real ``openai`` client (HTTP,
keep-alive, retries, timeouts, error classes) without a network or an API key::

    with LLMSimulator(SimConfig(latency_ms=5)) as sim:
        client = OpenAI(base_url=sim.base_url, api_key="sim", max_retries=0)
        client.chat.completions.create(model="sim-1", messages=[...])

Endpoints
---------
``POST /v1/chat/completions``
    Deterministic answers: the content is derived from the SHA-256 of the canonical JSON
    of ``(model, messages, response_format)`` only (``temperature`` etc. are ignored), so
    the same request always gets the same content. With a ``json_schema`` response format
    the content is a JSON document generated from that schema (see
    :func:`fake_from_schema`); with ``json_object`` it is ``{"answer": "[simulated] ..."}``;
    otherwise it is plain text. Every generated text starts with ``"[simulated] "``.
    ``max_tokens`` is accepted and ignored; ``stream=true`` and ``n>1`` are rejected (400).
``POST /v1/embeddings``
    Deterministic, simulated embeddings of ``input`` (a string or a list of strings; token
    arrays are rejected): each text's lower-cased words (a few English stopwords dropped,
    common suffixes stripped: a crude stem) are feature-hashed into ``dimensions`` (default
    :data:`EMBEDDING_DIMENSIONS`) signed buckets, weighted ``1 + log(tf)``, and the vector is
    L2-normalised, so texts sharing words are close and the same text always gets the same
    vector (see :func:`embed_text`). ``encoding_format`` ``float`` or ``base64`` (the
    ``openai`` client's default: little-endian float32). The response's ``model`` is the
    requested one suffixed ``" (simulated)"`` and it carries ``x-llmsim: simulated``. The
    same faults and latency model apply as for chat (outage, concurrency and RPM limits,
    500s, hangs; the prompt tokens are the inputs' tokens); logged apart from the chat
    requests (``requests("embeddings")``).
``GET /v1/models``
    Lists the single model ``sim-1`` (any model name is accepted and echoed back).
``GET /_sim/health``, ``GET /_sim/requests``, ``GET /_sim/embedding-requests``,
``GET /_sim/config``,
``POST /_sim/config`` (JSON body of :class:`SimConfig` field changes), ``POST /_sim/reset``
    Admin endpoints so a simulator running in another process can be observed and driven.

Token counts (``usage``) come from :func:`count_tokens`, a word and punctuation count in the
manner of a BPE tokenizer, not from the 4-characters-a-token rule clients estimate with: JSON
(one token per brace, quote, colon and comma) and text outside ASCII (a token per CJK
character, one per two other letters) count more tokens per character than English prose, so
a client that calibrates its estimate from ``usage`` is really tested.

Latency model (see :class:`SimConfig`): an admitted request is answered after its service time
``latency_ms + jitter + ms_per_prompt_token * prompt_tokens + ms_per_completion_token *
completion_tokens``, with the token counts the response reports in ``usage``: a fixed part,
a prefill part that grows with the prompt and a decode part that grows with the answer, as
on a real inference server. The per-token parts default to 0 (a fixed latency). Each
request's service time is in the request log (``service_ms``).

Fault injection (see :class:`SimConfig`) is applied in this order: a chat prompt over
``max_context_tokens`` (400 ``exceed_context_size_error``, as llama-server answers), outage
(503), concurrency limit (429), requests-per-minute limit (429), ``fail_next``/``error_rate``
(500), then ``timeout_rate`` (hang), ``malformed_rate`` and ``drop_item_rate``. Only the
fault injection uses randomness, from an RNG seeded with ``SimConfig.seed``.

Queueing mode (``queue_slots``): like llama-server's slots, at most that many admitted chat
requests are served at once; the others wait for a free slot (their latency grows, no 429),
first come first served. Each log entry has ``in_flight`` (admitted requests, queued or in
service, counting itself, at its admission) and ``queued_ms``.

Every response carries ``x-llm-simulator: true`` (embeddings also ``x-llmsim: simulated``),
and the ``x-ratelimit-*-requests`` headers when an RPM limit is set; 429 responses also
carry ``retry-after``. Error bodies are OpenAI-style
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import random
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, TypeGuard, cast
from urllib.parse import urlsplit

__all__ = [
    "MODEL_ID",
    "SIMULATED_PREFIX",
    "LLMSimulator",
    "SimConfig",
    "count_tokens",
    "embed_text",
    "estimate_tokens",
    "fake_from_schema",
]

log = logging.getLogger("llmsim")

MODEL_ID = "sim-1"
"""The model listed by ``GET /v1/models`` (requests may name any model)."""

SIMULATED_PREFIX = "[simulated] "
"""Every generated text starts with this marker."""

EMBEDDING_DIMENSIONS = 256
"""Length of a simulated embedding when the request gives no ``dimensions``."""

MAX_EMBEDDING_DIMENSIONS = 4096
MAX_EMBEDDING_INPUTS = 2048

_MAX_DEPTH = 12  # beyond this, optional parts of a schema are left out (recursive models)
_HARD_DEPTH = 64  # beyond this, the schema is rejected as unsatisfiable recursion


class SchemaError(ValueError):
    """The requested JSON schema cannot be satisfied or is malformed (answered with 400)."""


class _BadRequest(Exception):
    """A request the simulator answers with HTTP 400."""


# --------------------------------------------------------------------------- config


_RATE_FIELDS = ("error_rate", "timeout_rate", "malformed_rate", "drop_item_rate")
_DURATION_FIELDS = (
    "latency_ms",
    "ms_per_prompt_token",
    "ms_per_completion_token",
    "jitter_ms",
    "hang_s",
)


@dataclass
class SimConfig:
    """Behaviour of a simulator; change it at runtime with :meth:`LLMSimulator.configure`.

    The simulator keeps its own copy, so mutating an instance after passing it to
    :class:`LLMSimulator` has no effect. Values are validated (``ValueError``/``TypeError``)
    on construction and on every ``configure`` call.
    """

    latency_ms: float = 20.0
    """Fixed part of the service time of every admitted request (also of injected 500s)."""
    ms_per_prompt_token: float = 0.0
    """Prefill cost: service time per prompt token (``usage.prompt_tokens``); injected 500s
    pay it too (the prompt was read before the failure)."""
    ms_per_completion_token: float = 0.0
    """Decode cost: service time per completion token (``usage.completion_tokens``)."""
    jitter_ms: float = 0.0
    """Uniform random extra latency in ``[0, jitter_ms)``, drawn from the seeded RNG."""
    max_concurrency: int = 64
    """A request arriving while this many are in flight gets 429 at once (not counted)."""
    rpm_limit: int | None = None
    """Optional requests-per-minute limit over a sliding 60 s window; excess gets 429.
    Only admitted requests count toward the window."""
    error_rate: float = 0.0
    """Probability that an admitted request gets HTTP 500."""
    timeout_rate: float = 0.0
    """Probability that a request hangs ``hang_s`` seconds before answering normally."""
    hang_s: float = 30.0
    """How long an injected timeout hangs."""
    malformed_rate: float = 0.0
    """Probability that a JSON-mode answer (``json_schema`` or ``json_object``) is cut off
    so that it is not valid JSON."""
    drop_item_rate: float = 0.0
    """With a ``json_schema`` answer, probability that each required top-level property
    is omitted (simulates a packed answer missing items)."""
    fail_next: int = 0
    """The next N admitted requests get HTTP 500 (decremented per request)."""
    down: bool = False
    """While true, every chat and embeddings request gets HTTP 503 at once (outage)."""
    queue_slots: int | None = None
    """Queueing mode: requests served at once; further admitted ones wait for a slot (their
    latency grows) instead of a 429. None: each admitted request is served at once."""
    max_context_tokens: int | None = None
    """A chat prompt of more tokens (``usage`` counting) gets llama-server's 400
    ``exceed_context_size_error``. None: no limit."""
    seed: int = 0
    """Seed of the fault-injection RNG; setting it via ``configure`` reseeds the RNG."""

    def __post_init__(self) -> None:
        _validate_changes(dataclasses.asdict(self))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view of the configuration."""
        return dataclasses.asdict(self)

    def service_ms(self, prompt_tokens: float, completion_tokens: float) -> float:
        """Service time of an answered request with these token counts, without jitter."""
        return (
            self.latency_ms
            + self.ms_per_prompt_token * prompt_tokens
            + self.ms_per_completion_token * completion_tokens
        )


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(SimConfig))
_OPTIONAL_INT_FIELDS = ("rpm_limit", "queue_slots", "max_context_tokens")


def _validate_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Check field names, types and ranges; return the changes with floats normalised."""
    out: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in _FIELD_NAMES:
            raise ValueError(f"unknown SimConfig field {name!r}")
        if name in _RATE_FIELDS or name in _DURATION_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
            if name in _RATE_FIELDS and value > 1:
                raise ValueError(f"{name} is a probability in [0, 1], got {value!r}")
            out[name] = float(value)
        elif name == "down":
            if not isinstance(value, bool):
                raise TypeError(f"down must be a bool, got {value!r}")
            out[name] = value
        elif name in _OPTIONAL_INT_FIELDS and value is None:
            out[name] = None
        else:  # max_concurrency, rpm_limit, queue_slots, max_context_tokens, fail_next, seed
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if name != "seed" and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
            if name in ("queue_slots", "max_context_tokens") and value < 1:
                raise ValueError(f"{name} must be >= 1 (or None), got {value!r}")
            out[name] = value
    return out


# --------------------------------------------------------------------------- tokens


def _content_text(content: Any) -> str:
    """Text of a message ``content`` (a string, a list of content parts, or None)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return "".join(p for p in parts if isinstance(p, str))
    return str(content)


def estimate_tokens(text: str) -> int:
    """The 4-characters-a-token rule of thumb, ``ceil(len(text) / 4)`` (not used for ``usage``)."""
    return math.ceil(len(text) / 4)


_TOKENS = re.compile(
    r"[A-Za-z]{1,6}|\d{1,3}|[\u3000-\U0002ffff]|[^\W\d_]{1,2}|\s{2,}|[^\S ]|[^\w\s]|_"
)


def count_tokens(text: str) -> int:
    """Tokens of ``text`` as ``usage`` reports them: a stand-in for a BPE tokenizer.

    An ASCII word is a token per 6 letters (started), a number a token per 3 digits, a CJK
    (or other wide) character a token, other letters a token per 2, a single space nothing
    (it joins the next word), any other whitespace run or symbol a token each. One regular
    expression, counted in C: a request's prompt is counted in well under a millisecond.

    >>> count_tokens("Where is my order?"), count_tokens('{"id":"m1"}'), count_tokens("注文はどこ")
    (5, 10, 5)
    """
    return len(_TOKENS.findall(text))


def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(count_tokens(_content_text(m.get("content"))) + 4 for m in messages)


# --------------------------------------------------------------------------- embeddings

_STOPWORDS_TEXT = """a an and are as at be by do does for from has have how i in is it its my
    of on or our so that the their this to was we were what when which who why will with you
    your"""
_EMBED_STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
_EMBED_WORD = re.compile(r"[^\W_]+")
_SUFFIXES = ("ingly", "edly", "ation", "ness", "ment", "ing", "ies", "ied", "ed", "es", "ly", "s")


def _stem(word: str) -> str:
    """A crude suffix stripper (good enough for "reset", "resets", "resetting" to meet)."""
    for suffix in _SUFFIXES:
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            word = word[: -len(suffix)]
            break
    if len(word) > 3 and word[-1] == word[-2]:  # resett -> reset
        word = word[:-1]
    return word


def embed_text(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """The simulated embedding of ``text``: a feature-hashed bag of word stems, L2-normalised.

    Each lower-cased word (stopwords dropped) is stemmed and hashed (BLAKE2b) to a bucket and
    a sign; a stem occurring ``tf`` times adds ``1 + log(tf)``. A text without words gets a
    fixed unit vector of its own bucket. Deterministic, no model: a fair smoke test of vector
    retrieval (texts sharing words are close), not a semantic embedding.

    >>> a, b, c = (embed_text(t, 64) for t in ("reset the router", "resetting routers", "tax"))
    >>> round(sum(x * y for x, y in zip(a, b)), 3), round(sum(x * y for x, y in zip(a, c)), 3)
    (1.0, 0.0)
    """
    counts: dict[str, int] = {}
    for word in _EMBED_WORD.findall(text.lower()):
        if word not in _EMBED_STOPWORDS:
            stem = _stem(word)
            counts[stem] = counts.get(stem, 0) + 1
    vec = [0.0] * dimensions
    for stem, tf in (counts or {"": 1}).items():
        h = int.from_bytes(hashlib.blake2b(stem.encode(), digest_size=8).digest(), "little")
        vec[h % dimensions] += (1.0 if (h >> 32) & 1 else -1.0) * (1.0 + math.log(tf))
    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
    return [x / norm for x in vec]


@dataclass
class _EmbeddingRequest:
    model: str
    inputs: list[str]
    dimensions: int
    encoding: str  # "float" | "base64"


def _parse_embedding_request(raw: bytes) -> _EmbeddingRequest:
    try:
        body = json.loads(raw or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _BadRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _BadRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("'model' must be a non-empty string")
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if (
        not isinstance(inputs, list)
        or not inputs
        or not all(isinstance(t, str) and t for t in inputs)
    ):
        raise _BadRequest("'input' must be a non-empty string or a list of non-empty strings")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise _BadRequest(f"'input' holds more than {MAX_EMBEDDING_INPUTS} texts")
    dims = body.get("dimensions")
    if dims is None:
        dims = EMBEDDING_DIMENSIONS
    if (
        isinstance(dims, bool)
        or not isinstance(dims, int)
        or not 1 <= dims <= MAX_EMBEDDING_DIMENSIONS
    ):
        raise _BadRequest(f"'dimensions' must be an integer in 1..{MAX_EMBEDDING_DIMENSIONS}")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise _BadRequest("'encoding_format' must be 'float' or 'base64'")
    return _EmbeddingRequest(model, inputs, dims, encoding)


def _encode_embedding(vec: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vec
    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()


# --------------------------------------------------------------------------- schema faker


_FORMATS: dict[str, str] = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "duration": "PT1S",
    "email": "simulated@example.com",
    "idn-email": "simulated@example.com",
    "hostname": "simulated.example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "uri": "https://example.com/simulated",
    "iri": "https://example.com/simulated",
    "uri-reference": "https://example.com/simulated",
}

_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment"})
_FILLER = " lorem ipsum"


def _path_str(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _resolve_ref(root: Any, ref: Any) -> Any:
    """Resolve a local JSON-pointer ``$ref`` (``#/$defs/X``, ``#/definitions/X``, ...)."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise SchemaError(f"only local $ref is supported, got {ref!r}")
    node = root
    for raw in ref[1:].split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise SchemaError(f"unresolvable $ref {ref!r}")
    return node


class _SchemaFaker:
    """Generates one JSON value that validates against a JSON schema (draft 2020-12 subset).

    Supported: ``type`` (also lists), object ``properties``/``required``/
    ``additionalProperties``/``minProperties``, string ``enum``/``minLength``/``maxLength``/
    ``format``, integer/number bounds (inclusive and exclusive) and ``multipleOf``,
    boolean, null, array ``items``/``prefixItems``/``minItems``/``maxItems``/
    ``uniqueItems``, ``anyOf``/``oneOf`` (first branch), ``allOf`` (merged), ``$ref`` to any
    local JSON pointer (``#/$defs/...``, ``#/definitions/...``), ``const``, and ``default``
    for schemas without type information. ``pattern`` is ignored.
    """

    def __init__(self, root: Any, rng: random.Random, tag: str) -> None:
        self.root = root
        self.rng = rng
        self.tag = tag

    def generate(self) -> Any:
        return self._gen(self.root, (), 0)

    def _resolve(self, ref: Any) -> Any:
        return _resolve_ref(self.root, ref)

    def _text(self, path: tuple[str | int, ...]) -> str:
        names = [i for i, p in enumerate(path) if isinstance(p, str)]
        if not names:
            return f"{SIMULATED_PREFIX}text for request {self.tag}"
        idx = names[-1]
        name = str(path[idx]).replace("_", " ")
        items = "".join(f" #{p + 1}" for p in path[idx + 1 :] if isinstance(p, int))
        owner = _path_str(path[:idx]) or f"request {self.tag}"
        return f"{SIMULATED_PREFIX}{name}{items} for {owner}"

    def _gen(self, schema: Any, path: tuple[str | int, ...], depth: int) -> Any:
        if depth > _HARD_DEPTH:
            raise SchemaError(f"schema recursion too deep at {_path_str(path) or '<root>'}")
        if schema is True:
            schema = {}
        if not isinstance(schema, dict):
            raise SchemaError(f"unsatisfiable or invalid schema at {_path_str(path) or '<root>'}")

        if "$ref" in schema:
            target = self._resolve(schema["$ref"])
            extra = {k: v for k, v in schema.items() if k != "$ref" and k not in _ANNOTATIONS}
            if extra and isinstance(target, dict):
                target = {**target, **extra}
            return self._gen(target, path, depth + 1)
        if "const" in schema:
            return copy.deepcopy(schema["const"])
        if "enum" in schema:
            choices = schema["enum"]
            if not isinstance(choices, list) or not choices:
                raise SchemaError("enum must be a non-empty list")
            return copy.deepcopy(self.rng.choice(choices))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                branches = schema[key]
                if not isinstance(branches, list) or not branches:
                    raise SchemaError(f"{key} must be a non-empty list")
                branch = branches[0]
                if depth >= _MAX_DEPTH:
                    nulls = [b for b in branches if isinstance(b, dict) and b.get("type") == "null"]
                    branch = nulls[0] if nulls else branch
                return self._gen(branch, path, depth + 1)
        if "allOf" in schema:
            return self._gen(self._merge_all_of(schema), path, depth + 1)

        kind = schema.get("type")
        if isinstance(kind, list):
            non_null = [k for k in kind if k != "null"]
            kind = non_null[0] if non_null else "null"
        if kind is None:
            if "properties" in schema or "additionalProperties" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            elif "default" in schema:
                return copy.deepcopy(schema["default"])
            else:
                kind = "string"

        if kind == "object":
            return self._object(schema, path, depth)
        if kind == "array":
            return self._array(schema, path, depth)
        if kind == "string":
            return self._string(schema, path)
        if kind in ("integer", "number"):
            return self._number(schema, integer=kind == "integer")
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        raise SchemaError(f"unsupported type {kind!r}")

    def _merge_all_of(self, schema: dict[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for entry in schema["allOf"]:
            sub = entry
            for _ in range(_HARD_DEPTH):
                if not (isinstance(sub, dict) and "$ref" in sub):
                    break
                sub = self._resolve(sub["$ref"])
            if not isinstance(sub, dict):
                raise SchemaError("allOf entries must be objects")
            for key, value in sub.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required":
                    merged["required"] = list(dict.fromkeys([*merged.get("required", []), *value]))
                else:
                    merged.setdefault(key, value)
        return merged

    def _object(
        self, schema: dict[str, Any], path: tuple[str | int, ...], depth: int
    ) -> dict[str, Any]:
        props: dict[str, Any] = schema.get("properties") or {}
        required: list[str] = list(schema.get("required") or [])
        additional = schema.get("additionalProperties", True)
        out: dict[str, Any] = {}
        for name, sub in props.items():
            if depth >= _MAX_DEPTH and name not in required:
                continue
            out[name] = self._gen(sub, (*path, name), depth + 1)
        for name in required:
            if name not in out:
                if additional is False:
                    raise SchemaError(f"required property {name!r} not allowed by the schema")
                out[name] = self._gen(additional, (*path, name), depth + 1)
        wanted = int(schema.get("minProperties", 0))
        if not props and isinstance(additional, dict) and depth < _MAX_DEPTH:
            wanted = max(wanted, 1)
        i = 0
        while len(out) < wanted:
            if additional is False:
                raise SchemaError("minProperties cannot be met without additionalProperties")
            i += 1
            key = f"key{i}"
            if key not in out:
                out[key] = self._gen(additional, (*path, key), depth + 1)
        return out

    def _array(self, schema: dict[str, Any], path: tuple[str | int, ...], depth: int) -> list[Any]:
        prefix: list[Any] = list(schema.get("prefixItems") or [])
        items = schema.get("items", True)
        min_items = int(schema.get("minItems", 0))
        max_items = schema.get("maxItems")
        count = min_items if depth >= _MAX_DEPTH else max(min_items, len(prefix) or 1)
        if items is False:
            count = min(count, len(prefix))
        if max_items is not None:
            count = min(count, int(max_items))
        if count < min_items:
            raise SchemaError(f"array at {_path_str(path) or '<root>'} cannot have minItems")
        out: list[Any] = []
        seen: set[str] = set()
        attempts = 0
        while len(out) < count:
            i = len(out)
            sub = prefix[i] if i < len(prefix) else items
            value = self._gen(sub, (*path, i), depth + 1)
            if schema.get("uniqueItems"):
                key = json.dumps(value, sort_keys=True)
                attempts += 1
                if key in seen:
                    if attempts > 20 * (count + 1):
                        raise SchemaError("cannot generate enough unique items")
                    continue
                seen.add(key)
            out.append(value)
        return out

    def _string(self, schema: dict[str, Any], path: tuple[str | int, ...]) -> str:
        fmt = schema.get("format")
        if fmt == "uuid":
            value = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        elif isinstance(fmt, str) and fmt in _FORMATS:
            value = _FORMATS[fmt]
        else:
            value = self._text(path)
        min_len = int(schema.get("minLength", 0))
        max_len = schema.get("maxLength")
        while len(value) < min_len:
            value += _FILLER
        if max_len is not None and len(value) > int(max_len):
            value = value[: int(max_len)]
        return value

    def _number(self, schema: dict[str, Any], *, integer: bool) -> int | float:
        lo, lo_open, hi, hi_open = _bounds(schema)
        step = schema.get("multipleOf")
        if integer:
            ilo = (
                -math.inf if lo == -math.inf else (math.floor(lo) + 1 if lo_open else math.ceil(lo))
            )
            ihi = math.inf if hi == math.inf else (math.ceil(hi) - 1 if hi_open else math.floor(hi))
            if ilo == -math.inf and ihi == math.inf:
                ilo, ihi = 0, 100
            elif ilo == -math.inf:
                ilo = ihi - 100
            elif ihi == math.inf:
                ihi = ilo + 100
            istep = step if isinstance(step, int) and not isinstance(step, bool) and step > 0 else 1
            klo, khi = math.ceil(ilo / istep), math.floor(ihi / istep)
            if klo > khi:
                raise SchemaError("integer bounds are unsatisfiable")
            return int(self.rng.randint(int(klo), int(khi)) * istep)

        if lo == -math.inf and hi == math.inf:
            lo, hi = 0.0, 1.0
        elif lo == -math.inf:
            lo = hi - 1.0
        elif hi == math.inf:
            hi = lo + 1.0

        def ok(v: float) -> bool:
            return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

        if _is_real(step) and step > 0:
            klo = math.ceil(lo / step)
            candidates = [k * step for k in range(klo, klo + 1000) if ok(k * step)]
            if not candidates:
                raise SchemaError("multipleOf cannot be met within the bounds")
            return float(self.rng.choice(candidates))
        value = round(self.rng.uniform(lo, hi), 3)
        if not ok(value):
            value = (lo + hi) / 2
        if not ok(value):
            raise SchemaError("number bounds are unsatisfiable")
        return value


def _is_real(v: object) -> TypeGuard[float]:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _bounds(schema: dict[str, Any]) -> tuple[float, bool, float, bool]:
    """(low, low_exclusive, high, high_exclusive) of a numeric schema; infinite if unset."""
    lo, lo_open, hi, hi_open = -math.inf, False, math.inf, False
    minimum, maximum = schema.get("minimum"), schema.get("maximum")
    ex_min, ex_max = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if _is_real(minimum):
        lo = float(minimum)
        lo_open = ex_min is True  # draft-4 boolean form
    if _is_real(ex_min) and ex_min >= lo:
        lo, lo_open = float(ex_min), True
    if _is_real(maximum):
        hi = float(maximum)
        hi_open = ex_max is True
    if _is_real(ex_max) and ex_max <= hi:
        hi, hi_open = float(ex_max), True
    return lo, lo_open, hi, hi_open


def fake_from_schema(schema: Any, key: str = "") -> Any:
    """Return a JSON value that validates against ``schema``, deterministic in ``key``.

    Texts look like ``"[simulated] reply for e1"`` (the property name, then the path of
    the object holding it); enum values, numbers and booleans are picked with an RNG
    seeded from ``key``. Raises :class:`SchemaError` for malformed or unsatisfiable schemas.
    """
    digest = hashlib.sha256(key.encode()).hexdigest()
    return _SchemaFaker(schema, random.Random(digest), digest[:8]).generate()


# --------------------------------------------------------------------------- answers


@dataclass
class _ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    response_format: dict[str, Any] | None
    mode: str  # "text" | "json_object" | "json_schema"
    schema: Any
    schema_name: str | None
    digest: str


def _parse_chat_request(raw: bytes) -> _ChatRequest:
    try:
        body = json.loads(raw or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _BadRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _BadRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("'model' must be a non-empty string")
    messages = body.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
    ):
        raise _BadRequest("'messages' must be a non-empty list of {role, content} objects")
    if body.get("stream"):
        raise _BadRequest("llmsim does not support stream=true")
    if body.get("n") not in (None, 1):
        raise _BadRequest("llmsim only supports n=1")
    fmt = body.get("response_format")
    mode, schema, name = "text", None, None
    if fmt is not None:
        if not isinstance(fmt, dict):
            raise _BadRequest("'response_format' must be an object")
        kind = fmt.get("type")
        if kind == "json_object":
            mode = "json_object"
        elif kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict):
                raise _BadRequest("response_format.json_schema must be an object")
            mode = "json_schema"
            schema = spec.get("schema", {})
            raw_name = spec.get("name")
            name = raw_name if isinstance(raw_name, str) else None
        elif kind != "text":
            raise _BadRequest(f"unsupported response_format type {kind!r}")
    canonical = json.dumps(
        [model, messages, fmt], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return _ChatRequest(model, messages, fmt, mode, schema, name, digest)


def _plain_answer(req: _ChatRequest) -> str:
    users = [m for m in req.messages if m.get("role") == "user"]
    last = _content_text((users or req.messages)[-1].get("content"))
    snippet = " ".join(last.split())
    if len(snippet) > 80:
        snippet = snippet[:77] + "..."
    return f"{SIMULATED_PREFIX}answer {req.digest[:8]} from {req.model} to: {snippet}"


def _top_required(root: Any) -> list[str]:
    """Required top-level property names of an answer schema (following ``$ref``)."""
    node = root
    for _ in range(_HARD_DEPTH):
        if not (isinstance(node, dict) and "$ref" in node):
            break
        node = _resolve_ref(root, node["$ref"])
    required = node.get("required") if isinstance(node, dict) else None
    return [k for k in required if isinstance(k, str)] if isinstance(required, list) else []


def _make_malformed(content: str) -> str:
    """Cut the document off like a truncated generation; guaranteed not to be valid JSON."""
    cut = content[: max(1, len(content) * 2 // 3)]
    try:
        json.loads(cut)
    except ValueError:
        return cut
    return "Sure! Here is the JSON you asked for: " + cut


@dataclass
class _Plan:
    """Fault decisions for one admitted request."""

    seq: int
    fail: bool
    hang: bool
    malformed: bool
    dropped: list[str]
    base_ms: float  # the fixed part plus this request's jitter
    ms_per_prompt_token: float
    ms_per_completion_token: float
    hang_s: float


# --------------------------------------------------------------------------- HTTP


@dataclass
class _Response:
    status: int
    payload: Any
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


def _error(status: int, message: str, etype: str, code: str | None) -> _Response:
    body = {"error": {"message": message, "type": etype, "param": None, "code": code}}
    return _Response(status, body)


def _context_error(n_prompt: int, n_ctx: int) -> _Response:
    """llama-server's answer to a prompt longer than a slot's context."""
    msg = (
        f"request ({n_prompt} tokens) exceeds the available context size ({n_ctx} tokens), "
        "try increasing it"
    )
    error = {
        "code": 400,
        "message": msg,
        "type": "exceed_context_size_error",
        "n_prompt_tokens": n_prompt,
        "n_ctx": n_ctx,
    }
    return _Response(400, {"error": error})


def _fmt_seconds(seconds: float) -> str:
    return f"{max(0.0, seconds):.3f}".rstrip("0").rstrip(".") or "0"


class _SimHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: LLMSimulator) -> None:
        self.sim = sim
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # client went away, reset, timeout: not our problem
            return
        log.exception("llmsim: error while handling a request from %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "llmsim/1.0"
    sys_version = ""
    timeout = 120  # idle keep-alive connections are closed after this many seconds

    @property
    def sim(self) -> LLMSimulator:
        return cast(_SimHTTPServer, self.server).sim

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without NODELAY, Nagle plus the client's
        # delayed ACK would add ~40 ms to every keep-alive response.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sim._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.sim._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        """Silence the per-request access log."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        try:
            body = self._read_body() if method == "POST" else b""
        except (ValueError, OSError):
            self.close_connection = True
            return
        sim = self.sim
        resp: _Response | None
        try:
            if method == "POST" and path == "/v1/chat/completions":
                resp = sim._chat(body)
            elif method == "POST" and path == "/v1/embeddings":
                resp = sim._embeddings(body)
            elif method == "GET" and path == "/v1/models":
                model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "llmsim"}
                resp = _Response(200, {"object": "list", "data": [model]})
            elif path.startswith("/_sim/"):
                resp = sim._admin(method, path, body)
            else:
                resp = _error(404, f"no route {method} {path}", "invalid_request_error", None)
        except Exception:
            log.exception("llmsim: internal error on %s %s", method, path)
            resp = _error(500, "llmsim internal error", "server_error", "internal_error")
        if resp is None:  # the simulator is stopping: drop the connection without answering
            self.close_connection = True
            return
        self._send(resp)

    def _send(self, resp: _Response) -> None:
        data = json.dumps(resp.payload, ensure_ascii=False).encode()
        try:
            self.send_response(resp.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-llm-simulator", "true")
            for name, value in {**self.sim._ratelimit_headers(), **resp.headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:  # the client gave up (e.g. its timeout fired during a hang)
            self.close_connection = True


# --------------------------------------------------------------------------- simulator


class LLMSimulator:
    """An OpenAI-compatible chat-completions server on a loopback port (IPv4).

    ``start()`` binds (``port=0`` picks a free port) and serves from a daemon thread;
    ``stop()`` shuts the server down, wakes requests sleeping for latency or a hang (their
    connections are dropped without an answer) and closes idle keep-alive connections.
    Usable as a context manager. All methods are thread-safe.
    """

    def __init__(
        self, config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._config = dataclasses.replace(config) if config is not None else SimConfig()
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._rng = random.Random(self._config.seed)
        self._in_flight = 0
        self._serving = 0  # requests holding a slot (queueing mode)
        self._slot_free = threading.Condition(self._lock)
        self._answering = 0  # requests being answered, not yet logged
        self._all_logged = threading.Condition(self._lock)
        self._next_ticket = 0
        self._now_serving = 0
        self._window: deque[float] = deque()
        self._log: list[dict[str, Any]] = []
        self._embed_log: list[dict[str, Any]] = []
        self._counter = 0
        self._server: _SimHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()

    # ----- lifecycle

    def start(self) -> LLMSimulator:
        """Bind and start serving in a daemon thread; returns ``self``."""
        if self._server is not None:
            raise RuntimeError("LLMSimulator is already running")
        self._stopping.clear()
        server = _SimHTTPServer((self._host, self._port), self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="llmsim", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port; requests being answered are dropped (logged with
        status 0) before it returns. Idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)
        with self._lock:  # the dropped requests log themselves as they wake: wait for them
            self._all_logged.wait_for(lambda: self._answering == 0, timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> LLMSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- addresses

    @property
    def port(self) -> int:
        """The bound TCP port (only while running)."""
        if self._server is None:
            raise RuntimeError("LLMSimulator is not running; call start() first")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:PORT`` (admin endpoints live under ``/_sim/``)."""
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The ``base_url`` for the OpenAI client, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    # ----- configuration and observation

    @property
    def config(self) -> SimConfig:
        """A copy of the current configuration."""
        with self._lock:
            return dataclasses.replace(self._config)

    def configure(self, **changes: Any) -> None:
        """Change :class:`SimConfig` fields at runtime (validated; all-or-nothing).

        Takes effect for requests admitted afterwards. Changing ``seed`` reseeds the
        fault-injection RNG.
        """
        checked = _validate_changes(changes)
        with self._lock:
            for name, value in checked.items():
                setattr(self._config, name, value)
            if "seed" in checked:
                self._rng.seed(checked["seed"])

    @property
    def in_flight(self) -> int:
        """Number of requests (chat and embeddings) currently admitted and not yet answered."""
        with self._lock:
            return self._in_flight

    @property
    def serving(self) -> int:
        """Chat requests holding a slot (in service); in queueing mode at most ``queue_slots``."""
        with self._lock:
            return self._serving

    def requests(self, endpoint: Literal["chat", "embeddings"] = "chat") -> list[dict[str, Any]]:
        """Copy of the request log of ``endpoint``, oldest first.

        ``requests("embeddings")``: one dict per ``/v1/embeddings`` request, appended when it
        finished: ``ts``, ``model``, ``inputs`` (the texts), ``dimensions``, ``status``,
        ``prompt_tokens``, ``service_ms``, ``latency_s``, ``fault`` (None, "429", "500",
        "503" or "timeout"); requests answered 400 have ``inputs`` None.

        One dict per ``/v1/chat/completions`` request, appended when it finished:
        ``ts`` (arrival, epoch seconds), ``model``, ``messages``, ``response_format_name``
        (the json_schema name or None), ``status`` (HTTP status; 0 if the simulator was
        stopped before answering), ``prompt_tokens``, ``completion_tokens`` (as in
        ``usage``), ``service_ms`` (the service time the latency model gave the request:
        fixed part, jitter, prefill and decode; 0 for requests rejected at once, such as
        429s; a hang's ``hang_s`` is not included), ``latency_s`` (arrival to answer),
        ``fault`` (None, "429", "500", "503", "timeout", "malformed", "dropped_items" or
        "context": a prompt over ``max_context_tokens``), ``in_flight`` (admitted requests at
        its admission, itself included, queued or not; None if not admitted) and
        ``queued_ms`` (its wait for a slot in queueing mode). A hung request is logged with
        status 200 and fault "timeout" even if the client had already given up.
        """
        with self._lock:
            return copy.deepcopy(self._log if endpoint == "chat" else self._embed_log)

    def reset_log(self) -> None:
        """Clear the request logs (configuration, RNG and rate windows are untouched)."""
        with self._lock:
            self._log.clear()
            self._embed_log.clear()

    # ----- internals used by the handler

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the simulator stops first; return False if it stopped."""
        return seconds <= 0 or not self._stopping.wait(seconds)

    def _prune_window(self, now: float) -> None:
        while self._window and self._window[0] <= now - 60.0:
            self._window.popleft()

    def _ratelimit_headers(self) -> dict[str, str]:
        """``x-ratelimit-*-requests`` for the RPM window when ``rpm_limit`` is set.

        As with OpenAI, these headers describe a per-minute budget; a concurrency limit has
        no such header (its 429s carry ``retry-after``), so without ``rpm_limit`` none is sent.
        """
        with self._lock:
            limit = self._config.rpm_limit
            if limit is None:
                return {}
            else:
                now = time.monotonic()
                self._prune_window(now)
                remaining = max(0, limit - len(self._window))
                wait = self._window[0] + 60.0 - now if self._window else 0.0
                reset = f"{_fmt_seconds(wait)}s"
        return {
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": reset,
        }

    def _admin(self, method: str, path: str, body: bytes) -> _Response:
        if method == "GET" and path == "/_sim/health":
            with self._lock:
                n_in_flight, n_log = self._in_flight, len(self._log)
            return _Response(200, {"status": "ok", "in_flight": n_in_flight, "requests": n_log})
        if method == "GET" and path == "/_sim/requests":
            return _Response(200, self.requests())
        if method == "GET" and path == "/_sim/embedding-requests":
            return _Response(200, self.requests("embeddings"))
        if method == "GET" and path == "/_sim/config":
            return _Response(200, self.config.to_dict())
        if method == "POST" and path == "/_sim/config":
            try:
                changes = json.loads(body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("body must be a JSON object of SimConfig field changes")
                self.configure(**changes)
            except (ValueError, TypeError) as exc:
                return _error(400, str(exc), "invalid_request_error", "invalid_config")
            return _Response(200, self.config.to_dict())
        if method == "POST" and path == "/_sim/reset":
            self.reset_log()
            return _Response(200, {"status": "ok"})
        return _error(404, f"no route {method} {path}", "invalid_request_error", None)

    def _chat(self, raw: bytes) -> _Response | None:
        """Answer one chat request (sleeping as configured) and log it.

        Returns None if the simulator stopped while the request was sleeping.
        """
        entry: dict[str, Any] = {
            "ts": time.time(),
            "model": None,
            "messages": None,
            "response_format_name": None,
            "status": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "service_ms": 0.0,
            "latency_s": 0.0,
            "fault": None,
            "in_flight": None,
            "queued_ms": 0.0,
        }
        return self._served("a chat", self._answer_chat, raw, entry, self._log)

    def _served(
        self,
        what: str,
        answer: Callable[[bytes, dict[str, Any]], _Response | None],
        raw: bytes,
        entry: dict[str, Any],
        into: list[dict[str, Any]],
    ) -> _Response | None:
        """`answer(raw, entry)`, a 500 if it fails, and `entry` logged `into` with the status
        and latency either way."""
        started = time.monotonic()
        resp: _Response | None = None
        with self._lock:
            self._answering += 1
        try:
            resp = answer(raw, entry)
            return resp
        except Exception:
            log.exception("llmsim: internal error while answering %s request", what)
            resp = _error(500, "llmsim internal error", "server_error", "internal_error")
            return resp
        finally:
            entry["status"] = resp.status if resp is not None else 0
            entry["latency_s"] = time.monotonic() - started
            with self._lock:
                into.append(entry)
                self._answering -= 1
                self._all_logged.notify_all()

    def _answer_chat(self, raw: bytes, entry: dict[str, Any]) -> _Response | None:
        try:
            req = _parse_chat_request(raw)
            content_obj: Any = None
            if req.mode == "json_schema":
                faker = _SchemaFaker(req.schema, random.Random(req.digest), req.digest[:8])
                content_obj = faker.generate()
            elif req.mode == "json_object":
                content_obj = {"answer": f"{SIMULATED_PREFIX}answer for request {req.digest[:8]}"}
        except (_BadRequest, SchemaError) as exc:
            return _error(400, str(exc), "invalid_request_error", None)
        entry.update(
            model=req.model,
            messages=req.messages,
            response_format_name=req.schema_name,
            prompt_tokens=_prompt_tokens(req.messages),
        )
        n_ctx = self.config.max_context_tokens
        if n_ctx is not None and entry["prompt_tokens"] > n_ctx:
            entry["fault"] = "context"
            return _context_error(int(entry["prompt_tokens"]), n_ctx)
        plan = self._admit(req, content_obj, entry)
        if isinstance(plan, _Response):
            return plan
        try:
            with self._slot(entry) as served:
                return self._serve(req, content_obj, plan, entry) if served else None
        finally:
            with self._lock:
                self._in_flight -= 1

    @contextlib.contextmanager
    def _slot(self, entry: dict[str, Any]) -> Iterator[bool]:
        """In queueing mode, wait (first come, first served) for one of ``queue_slots``
        and hold it; yields False if the simulator stopped meanwhile. Records ``queued_ms``."""
        started = time.monotonic()
        with self._lock:
            ticket = self._next_ticket
            self._next_ticket += 1
            while True:
                slots = self._config.queue_slots
                if ticket == self._now_serving and (slots is None or self._serving < slots):
                    got = True
                    break
                if self._stopping.is_set():
                    got = False  # give up our turn
                    break
                self._slot_free.wait(0.05)
            self._now_serving += 1
            self._serving += got
            self._slot_free.notify_all()
        if not got:
            yield False
            return
        entry["queued_ms"] = (time.monotonic() - started) * 1000
        try:
            yield True
        finally:
            with self._lock:
                self._serving -= 1
                self._slot_free.notify_all()

    def _admit(
        self, req: _ChatRequest | None, content_obj: Any, entry: dict[str, Any]
    ) -> _Response | _Plan:
        """Apply outage and rate limits; on admission count the request in flight and draw
        its faults. Returns the rejection response or the plan for serving it. `req` is None
        for an embeddings request (no malformed or dropped answers)."""
        with self._lock:
            cfg = self._config
            if cfg.down:
                entry["fault"] = "503"
                msg = "The simulated server is temporarily unavailable (outage)."
                return _error(503, msg, "server_error", "service_unavailable")
            if self._in_flight >= cfg.max_concurrency:
                entry["fault"] = "429"
                msg = f"Rate limit reached: {cfg.max_concurrency} concurrent requests."
                resp = _error(429, msg, "requests", "rate_limit_exceeded")
                resp.headers["retry-after"] = _fmt_seconds(max(0.05, cfg.latency_ms / 1000.0))
                return resp
            now = time.monotonic()
            if cfg.rpm_limit is not None:
                self._prune_window(now)
                if len(self._window) >= cfg.rpm_limit:
                    entry["fault"] = "429"
                    msg = f"Rate limit reached: {cfg.rpm_limit} requests per minute."
                    resp = _error(429, msg, "requests", "rate_limit_exceeded")
                    wait = self._window[0] + 60.0 - now if self._window else 60.0
                    resp.headers["retry-after"] = _fmt_seconds(max(0.1, math.ceil(wait * 10) / 10))
                    return resp
                self._window.append(now)
            self._in_flight += 1
            entry["in_flight"] = self._in_flight
            self._counter += 1
            rng = self._rng
            fail = cfg.fail_next > 0
            if fail:
                cfg.fail_next -= 1
            fail = rng.random() < cfg.error_rate or fail
            hang = rng.random() < cfg.timeout_rate
            jitter_ms = rng.uniform(0.0, cfg.jitter_ms) if cfg.jitter_ms > 0 else 0.0
            malformed = req is not None and req.mode != "text" and rng.random() < cfg.malformed_rate
            dropped: list[str] = []
            if req is not None and isinstance(content_obj, dict) and req.mode == "json_schema":
                dropped = [
                    k for k in _top_required(req.schema) if rng.random() < cfg.drop_item_rate
                ]
            return _Plan(
                seq=self._counter,
                fail=fail,
                hang=hang,
                malformed=malformed,
                dropped=dropped,
                base_ms=cfg.latency_ms + jitter_ms,
                ms_per_prompt_token=cfg.ms_per_prompt_token,
                ms_per_completion_token=cfg.ms_per_completion_token,
                hang_s=cfg.hang_s,
            )

    def _serve(
        self, req: _ChatRequest, content_obj: Any, plan: _Plan, entry: dict[str, Any]
    ) -> _Response | None:
        """Sleep as planned and build the answer of an admitted request."""
        prefill_ms = plan.ms_per_prompt_token * int(entry["prompt_tokens"])
        if plan.fail:
            entry["fault"] = "500"
            entry["service_ms"] = plan.base_ms + prefill_ms
            if not self._sleep(entry["service_ms"] / 1000.0):
                return None
            msg = "The simulated server had an error while processing your request."
            return _error(500, msg, "server_error", "internal_error")

        if isinstance(content_obj, dict):
            for key in plan.dropped:
                content_obj.pop(key, None)
        if req.mode == "text":
            content = _plain_answer(req)
        else:
            content = json.dumps(content_obj, ensure_ascii=False)
        if plan.malformed:
            content = _make_malformed(content)
        completion_tokens = max(1, count_tokens(content))
        entry["completion_tokens"] = completion_tokens
        if plan.hang:
            entry["fault"] = "timeout"
        elif plan.malformed:
            entry["fault"] = "malformed"
        elif plan.dropped:
            entry["fault"] = "dropped_items"

        entry["service_ms"] = (
            plan.base_ms + prefill_ms + plan.ms_per_completion_token * completion_tokens
        )
        if plan.hang and not self._sleep(plan.hang_s):
            return None
        if not self._sleep(entry["service_ms"] / 1000.0):
            return None

        prompt_tokens = int(entry["prompt_tokens"])
        payload = {
            "id": f"chatcmpl-sim-{req.digest[:12]}-{plan.seq}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "system_fingerprint": "llmsim",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return _Response(200, payload, {"x-request-id": f"req_sim_{plan.seq}"})

    def _embeddings(self, raw: bytes) -> _Response | None:
        """Answer one embeddings request (faults and latency as for chat) and log it."""
        entry: dict[str, Any] = {
            "ts": time.time(),
            "model": None,
            "inputs": None,
            "dimensions": None,
            "status": 0,
            "prompt_tokens": 0,
            "service_ms": 0.0,
            "latency_s": 0.0,
            "fault": None,
        }
        return self._served("an embeddings", self._answer_embeddings, raw, entry, self._embed_log)

    def _answer_embeddings(self, raw: bytes, entry: dict[str, Any]) -> _Response | None:
        try:
            req = _parse_embedding_request(raw)
        except _BadRequest as exc:
            return _error(400, str(exc), "invalid_request_error", None)
        tokens = sum(count_tokens(t) for t in req.inputs)
        entry.update(
            model=req.model,
            inputs=list(req.inputs),
            dimensions=req.dimensions,
            prompt_tokens=tokens,
        )
        plan = self._admit(None, None, entry)
        if isinstance(plan, _Response):
            return plan
        try:
            entry["service_ms"] = plan.base_ms + plan.ms_per_prompt_token * tokens
            if plan.fail:
                entry["fault"] = "500"
                if not self._sleep(entry["service_ms"] / 1000.0):
                    return None
                msg = "The simulated server had an error while processing your request."
                return _error(500, msg, "server_error", "internal_error")
            if plan.hang:
                entry["fault"] = "timeout"
                if not self._sleep(plan.hang_s):
                    return None
            if not self._sleep(entry["service_ms"] / 1000.0):
                return None
            data = [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": _encode_embedding(embed_text(t, req.dimensions), req.encoding),
                }
                for i, t in enumerate(req.inputs)
            ]
            payload = {
                "object": "list",
                "data": data,
                "model": f"{req.model} (simulated)",
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
            headers = {"x-request-id": f"req_sim_{plan.seq}", "x-llmsim": "simulated"}
            return _Response(200, payload, headers)
        finally:
            with self._lock:
                self._in_flight -= 1
