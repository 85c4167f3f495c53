"""A seeded corpus of records carrying PII with ground-truth spans, and near-misses that are not.

`corpus(n, seed)` makes `n` records, as the pipeline reads them, of four shapes: chat
messages (`chat_message` adapter; PII in `text`), business events (`business_event`; PII in
`attributes` values, free-text notes among them), profile updates (`attributes`) and
knowledge documents (`text`). Every value is generated here (nothing is copied from
anywhere): card numbers of seven brands with valid Luhn digits, compact or grouped with
spaces or dashes; IBANs of ten countries with valid ISO 13616 check digits, compact or in
groups of four; phone numbers of eight countries in E.164 and national formats; emails with
plus tags and subdomains; US SSNs; IPv4 and IPv6 addresses. Near-misses are placed among
them: order, invoice and tracking numbers, timestamps, ISO dates, version strings, lists of
years, UUIDs, amounts, product codes, card-like numbers that fail Luhn.

Each `CorpusRecord` lists its PII as `Truth(path, start, end, kind, value)`: `path` names
the string inside the record (`("text",)`, `("attributes", "contact")`), `start:end` the
value in it. Used by `bench.pii` and its test.
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

KINDS = ("email", "phone", "credit_card", "iban", "ssn", "ip")
"""The PII kinds the corpus carries (`RedactionConfig.kinds`)."""

PLACES = ("chat", "business", "profile", "knowledge")
TENANT = "acme"


@dataclass(frozen=True)
class Truth:
    path: tuple[str, ...]
    start: int
    end: int
    kind: str
    value: str


@dataclass
class CorpusRecord:
    place: str
    """chat | business | profile | knowledge"""
    record: dict[str, Any]
    truth: list[Truth] = field(default_factory=list)

    def strings(self) -> list[tuple[tuple[str, ...], str]]:
        """Every string of the record with its path (the redactor's inputs)."""
        out: list[tuple[tuple[str, ...], str]] = []

        def walk(path: tuple[str, ...], v: Any) -> None:
            if isinstance(v, str):
                out.append((path, v))
            elif isinstance(v, dict):
                for k, x in v.items():
                    walk((*path, k), x)
            elif isinstance(v, list):
                for i, x in enumerate(v):
                    walk((*path, str(i)), x)

        walk((), self.record)
        return out


# --------------------------------------------------------------------------- checksums


def luhn_digit(partial: str) -> str:
    """The Luhn check digit to append to `partial`."""
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(digits: str) -> bool:
    return luhn_digit(digits[:-1]) == digits[-1]


def iban_check_digits(country: str, bban: str) -> str:
    """ISO 13616 check digits of `country` + `bban` (98 - the mod-97 of BBAN+country+00)."""
    number = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    return f"{98 - number % 97:02d}"


def mod97_valid(iban: str) -> bool:
    s = iban.replace(" ", "")
    return int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1


# --------------------------------------------------------------------------- PII values

_BRANDS: tuple[tuple[Callable[[random.Random], str], int], ...] = (
    (lambda r: "4", 16),  # Visa
    (lambda r: "4", 13),
    (lambda r: "4", 19),
    (lambda r: str(r.randint(51, 55)), 16),  # Mastercard
    (lambda r: str(r.randint(2221, 2720)), 16),
    (lambda r: r.choice(("34", "37")), 15),  # Amex
    (lambda r: r.choice(("6011", "65")), 16),  # Discover
    (lambda r: str(r.randint(3528, 3589)), 16),  # JCB
    (lambda r: "36", 14),  # Diners
    (lambda r: "62", 16),  # UnionPay
)


def card(r: random.Random) -> str:
    prefix, n = r.choice(_BRANDS)
    p = prefix(r)
    body = p + "".join(str(r.randrange(10)) for _ in range(n - len(p) - 1))
    digits = body + luhn_digit(body)
    sep = r.choice(("", " ", "-"))
    if not sep:
        return digits
    if n == 15:
        sizes: tuple[int, ...] = (4, 6, 5)
    elif n == 14:
        sizes = (4, 6, 4)
    elif n == 13:
        return digits if r.random() < 0.5 else f"{digits[:4]}{sep}{digits[4:8]}{sep}{digits[8:]}"
    else:
        sizes = (4, 4, 4, 4, 3)[: 4 if n == 16 else 5]
    parts, i = [], 0
    for s in sizes:
        parts.append(digits[i : i + s])
        i += s
    return sep.join(parts)


def _alnum(r: random.Random, n: int, alphabet: str = "0123456789") -> str:
    return "".join(r.choice(alphabet) for _ in range(n))


_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_BBAN: dict[str, Callable[[random.Random], str]] = {
    "DE": lambda r: _alnum(r, 18),
    "GB": lambda r: _alnum(r, 4, _UPPER) + _alnum(r, 14),
    "FR": lambda r: _alnum(r, 23),
    "ES": lambda r: _alnum(r, 20),
    "IT": lambda r: _alnum(r, 1, _UPPER) + _alnum(r, 22),
    "NL": lambda r: _alnum(r, 4, _UPPER) + _alnum(r, 10),
    "BE": lambda r: _alnum(r, 12),
    "CH": lambda r: _alnum(r, 17),
    "PL": lambda r: _alnum(r, 24),
    "AT": lambda r: _alnum(r, 16),
}


def iban(r: random.Random) -> str:
    country = r.choice(sorted(_BBAN))
    bban = _BBAN[country](r)
    compact = country + iban_check_digits(country, bban) + bban
    if r.random() < 0.5:
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def _d(r: random.Random, n: int) -> str:
    return _alnum(r, n)


def _nz(r: random.Random) -> str:
    return str(r.randint(2, 9))


_PHONES: tuple[Callable[[random.Random], str], ...] = (
    # United States
    lambda r: f"+1 {_nz(r)}{_d(r, 2)} {_nz(r)}{_d(r, 2)} {_d(r, 4)}",
    lambda r: f"+1-{_nz(r)}{_d(r, 2)}-{_nz(r)}{_d(r, 2)}-{_d(r, 4)}",
    lambda r: f"+1 ({_nz(r)}{_d(r, 2)}) {_nz(r)}{_d(r, 2)}-{_d(r, 4)}",
    lambda r: f"+1{_nz(r)}{_d(r, 2)}{_nz(r)}{_d(r, 6)}",
    lambda r: f"({_nz(r)}{_d(r, 2)}) {_nz(r)}{_d(r, 2)}-{_d(r, 4)}",
    lambda r: f"{_nz(r)}{_d(r, 2)}-{_nz(r)}{_d(r, 2)}-{_d(r, 4)}",
    lambda r: f"{_nz(r)}{_d(r, 2)}.{_nz(r)}{_d(r, 2)}.{_d(r, 4)}",
    lambda r: f"1-800-{_nz(r)}{_d(r, 2)}-{_d(r, 4)}",
    # United Kingdom
    lambda r: f"+44 20 {_nz(r)}{_d(r, 3)} {_d(r, 4)}",
    lambda r: f"+44 7{_d(r, 3)} {_d(r, 6)}",
    lambda r: f"+44 (0)20 {_nz(r)}{_d(r, 3)} {_d(r, 4)}",
    lambda r: f"+447{_d(r, 9)}",
    lambda r: f"020 {_nz(r)}{_d(r, 3)} {_d(r, 4)}",
    lambda r: f"07{_d(r, 3)} {_d(r, 6)}",
    # Germany
    lambda r: f"+49 30 {_nz(r)}{_d(r, 7)}",
    lambda r: f"+49 151 {_d(r, 8)}",
    lambda r: f"0049 89 {_nz(r)}{_d(r, 6)}",
    lambda r: f"030 {_nz(r)}{_d(r, 7)}",
    lambda r: f"0151 {_d(r, 8)}",
    # France
    lambda r: f"+33 1 {_d(r, 2)} {_d(r, 2)} {_d(r, 2)} {_d(r, 2)}",
    lambda r: f"+33 6 {_d(r, 2)} {_d(r, 2)} {_d(r, 2)} {_d(r, 2)}",
    lambda r: f"0{r.randint(1, 7)} {_d(r, 2)} {_d(r, 2)} {_d(r, 2)} {_d(r, 2)}",
    lambda r: f"0{r.randint(1, 7)}.{_d(r, 2)}.{_d(r, 2)}.{_d(r, 2)}.{_d(r, 2)}",
    # Japan
    lambda r: f"+81 3-{_d(r, 4)}-{_d(r, 4)}",
    lambda r: f"+81 90-{_d(r, 4)}-{_d(r, 4)}",
    lambda r: f"03-{_d(r, 4)}-{_d(r, 4)}",
    # India
    lambda r: f"+91 9{_d(r, 4)} {_d(r, 5)}",
    lambda r: f"+91-9{_d(r, 9)}",
    # Australia
    lambda r: f"+61 2 {_d(r, 4)} {_d(r, 4)}",
    lambda r: f"+61 4{_d(r, 2)} {_d(r, 3)} {_d(r, 3)}",
    lambda r: f"(02) {_d(r, 4)} {_d(r, 4)}",
    lambda r: f"04{_d(r, 2)} {_d(r, 3)} {_d(r, 3)}",
    # Brazil
    lambda r: f"+55 11 9{_d(r, 4)}-{_d(r, 4)}",
    lambda r: f"+55 (21) 9{_d(r, 4)}-{_d(r, 4)}",
)


def phone(r: random.Random) -> str:
    return r.choice(_PHONES)(r)


_FIRST = ("ann", "bob", "chen", "dara", "eli", "fatima", "goran", "hana", "ivan", "jo", "kemal")
_LAST = ("lee", "smith", "okafor", "muller", "rossi", "tanaka", "silva", "novak", "dubois")
_DOMAINS = (
    "example.com", "mail.example.org", "eu.mail.example.net", "example.co.uk", "corp.example.de",
    "students.uni.example.edu", "example.io",
)  # fmt: skip


def email(r: random.Random) -> str:
    first, last = r.choice(_FIRST), r.choice(_LAST)
    local = r.choice(
        (f"{first}.{last}", f"{first}{r.randint(1, 99)}", f"{first[0]}{last}", f"{first}_{last}")
    )
    if r.random() < 0.35:
        local += "+" + r.choice(("shop", "news", "billing", "2024", "tag-a"))
    if r.random() < 0.15:
        local = local.capitalize()
    return f"{local}@{r.choice(_DOMAINS)}"


def ssn(r: random.Random) -> str:
    area = r.choice([a for a in range(1, 900) if a != 666])
    sep = "-" if r.random() < 0.8 else " "
    return f"{area:03d}{sep}{r.randint(1, 99):02d}{sep}{r.randint(1, 9999):04d}"


def ip(r: random.Random) -> str:
    if r.random() < 0.3:
        addr = ipaddress.IPv6Address(r.getrandbits(128))
        if r.random() < 0.5:
            # a typical allocation: a /64 prefix with a short interface id (compresses to ::)
            prefix = (0x2001_0DB8 << 96) | (r.getrandbits(32) << 64)
            addr = ipaddress.IPv6Address(prefix | r.randint(1, 0xFFFF))
        return addr.compressed if r.random() < 0.7 else addr.exploded
    first = r.choice((10, 172, 192, r.randint(1, 223)))
    return f"{first}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"


GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "email": email,
    "phone": phone,
    "credit_card": card,
    "iban": iban,
    "ssn": ssn,
    "ip": ip,
}

# --------------------------------------------------------------------------- near-misses


def _hex(r: random.Random, n: int) -> str:
    return _alnum(r, n, "0123456789abcdef")


def _date(r: random.Random) -> datetime:
    return datetime.fromtimestamp(r.randint(946_684_800, 1_800_000_000), UTC)


def _bad_luhn(r: random.Random) -> str:
    body = "4" + _d(r, 14)
    digits = body + str((int(luhn_digit(body)) + r.randint(1, 9)) % 10)
    return " ".join(digits[i : i + 4] for i in range(0, 16, 4))


NEAR_MISSES: tuple[Callable[[random.Random], str], ...] = (
    lambda r: f"ORD-{r.randint(2015, 2026)}-{_d(r, 6)}",
    lambda r: f"#{r.randint(1_000_000, 9_999_999)}",
    lambda r: f"order {r.randint(4_500_000_000, 4_599_999_999)}",
    lambda r: f"INV-{r.randint(2015, 2026)}-{_d(r, 5)}",
    lambda r: f"INV{r.randint(2015, 2026)}{_d(r, 6)}",
    lambda r: _date(r).strftime("%Y-%m-%dT%H:%M:%SZ"),
    lambda r: _date(r).strftime("%Y-%m-%d %H:%M:%S"),
    lambda r: _date(r).isoformat(),
    lambda r: str(int(_date(r).timestamp())),
    lambda r: str(int(_date(r).timestamp() * 1000)),
    lambda r: _date(r).strftime("%Y-%m-%d"),
    lambda r: _date(r).strftime("%d.%m.%Y"),
    lambda r: _date(r).strftime("%m/%d/%Y"),
    lambda r: _date(r).strftime("%H:%M:%S"),
    lambda r: f"v{r.randint(0, 20)}.{r.randint(0, 40)}.{r.randint(0, 300)}",
    lambda r: f"{r.randint(0, 20)}.{r.randint(0, 40)}.{r.randint(0, 300)}",
    lambda r: f"v{r.randint(1, 12)}.{r.randint(0, 9)}.{r.randint(0, 9)}.{r.randint(0, 999)}",
    lambda r: f"10.0.{r.randint(10000, 22999)}",
    lambda r: f"{r.randint(1, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}-rc.{r.randint(1, 5)}",
    lambda r: " ".join(str(y) for y in sorted(r.sample(range(1950, 2026), r.randint(3, 5)))),
    lambda r: ", ".join(str(y) for y in sorted(r.sample(range(1950, 2026), 3))),
    lambda r: f"{r.randint(1950, 2000)}-{r.randint(2001, 2026)}",
    lambda r: (
        f"{_hex(r, 8)}-{_hex(r, 4)}-4{_hex(r, 3)}-{r.choice('89ab')}{_hex(r, 3)}-{_hex(r, 12)}"
    ),
    lambda r: f"{_d(r, 8)}-{_d(r, 4)}-4{_d(r, 3)}-8{_d(r, 3)}-{_d(r, 12)}",
    lambda r: f"${r.randint(1, 99)},{r.randint(100, 999)}.{r.randint(10, 99)}",
    lambda r: f"€ {r.randint(1, 99)} {r.randint(100, 999)},{r.randint(10, 99)}",
    lambda r: f"{r.randint(1, 9)} {r.randint(100, 999)} {r.randint(100, 999)} USD",
    lambda r: (
        f"{r.randint(10, 99)} {r.randint(100, 999)} {r.randint(100, 999)} {r.randint(100, 999)}"
    ),
    lambda r: f"USD {r.randint(1, 9)},{r.randint(100, 999)}.00",
    lambda r: f"1Z{_alnum(r, 6, _UPPER + '0123456789')}{_d(r, 10)}",
    lambda r: "9400 " + " ".join(_d(r, 4) for _ in range(4)) + f" {_d(r, 2)}",
    lambda r: f"tracking {_d(r, 12)}",
    lambda r: f"SKU-{_alnum(r, 2, _UPPER)}{_d(r, 2)}-{_d(r, 4)}",
    lambda r: f"PRD-{_d(r, 4)}-{_d(r, 2)}",
    lambda r: f"X{r.randint(100, 999)}-{r.choice((8, 16, 32))}GB",
    _bad_luhn,
    lambda r: f"ticket {r.randint(10_000, 99_999)}",
    lambda r: f"{r.randint(2, 48)} x {r.randint(100, 999)} g",
    lambda r: f"{r.randint(1, 99)}.{r.randint(0, 9)}%",
    lambda r: f"build {r.randint(1000, 9999)}.{r.randint(1, 99)}",
    lambda r: f"{_date(r).strftime('%H:%M')}-{_date(r).strftime('%H:%M')}",
    lambda r: f"@{r.choice(_FIRST)}{r.randint(1, 99)}",
    lambda r: f"room {r.randint(100, 999)}, floor {r.randint(1, 40)}",
)


def near_miss(r: random.Random) -> str:
    return r.choice(NEAR_MISSES)(r)


# --------------------------------------------------------------------------- records

_PII_CLAUSES: dict[str, tuple[str, ...]] = {
    "email": ("you can reach me at {}", "my email is {}", "send the receipt to {}",
              "write to {} please", "contact: {}", "(email {})"),
    "phone": ("call me on {}", "my number is {}", "phone: {}", "reach me at {} after six",
              "tel {}", "my mobile {} is new"),
    "credit_card": ("my card {} was charged twice", "card number {}", "I paid with {}",
                    "charge it to {}"),
    "iban": ("refund to IBAN {}", "my account is {}", "IBAN: {}", "wire it to {} please"),
    "ssn": ("my SSN is {}", "social security number {}", "SSN {} for the tax form"),
    "ip": ("I connected from {}", "the server at {} is down", "my IP is {}",
           "requests from {} fail"),
}  # fmt: skip
_NEAR_CLAUSES = (
    "order {} has not arrived",
    "it was placed at {}",
    "the app version is {}",
    "reference {}",
    "see {}",
    "we talked about {}",
    "the total was {}",
    "noted {}",
)
_TOPICS = (
    "billing address",
    "password",
    "invoice",
    "refund",
    "delivery",
    "two-factor login",
    "subscription",
    "API key",
    "data export",
    "payment method",
)


class _Text:
    """Builds a text clause by clause, recording where each PII value lands."""

    def __init__(self, path: tuple[str, ...]) -> None:
        self.path = path
        self.parts: list[str] = []
        self.size = 0
        self.truth: list[Truth] = []

    def add(self, s: str) -> None:
        self.parts.append(s)
        self.size += len(s)

    def clause(self, template: str, value: str, kind: str | None) -> None:
        head, tail = template.split("{}")
        self.add(head)
        if kind is not None:
            self.truth.append(Truth(self.path, self.size, self.size + len(value), kind, value))
        self.add(value)
        self.add(tail)

    def text(self) -> str:
        return "".join(self.parts)


def _free_text(
    r: random.Random, path: tuple[str, ...], kinds: list[str], opening: str
) -> tuple[str, list[Truth]]:
    """A sentence or two: `opening`, then clauses with the PII of `kinds` and near-misses
    in random order."""
    t = _Text(path)
    t.add(opening)
    slots: list[str | None] = [*kinds, *([None] * r.randint(1, 3))]
    r.shuffle(slots)
    for i, kind in enumerate(slots):
        t.add(r.choice((", ", ". ", "; ")) if i else " ")
        if kind is None:
            t.clause(r.choice(_NEAR_CLAUSES), near_miss(r), None)
        else:
            t.clause(r.choice(_PII_CLAUSES[kind]), GENERATORS[kind](r), kind)
    t.add(r.choice((".", "!", "", " thanks")))
    return t.text(), t.truth


def _kinds(r: random.Random) -> list[str]:
    """0-3 PII kinds for one record (a quarter of the records carry none)."""
    k = r.choice((0, 1, 1, 2, 3))
    return [r.choice(KINDS) for _ in range(k)]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def corpus(n: int = 10_000, seed: int = 7, *, now: float | None = None) -> list[CorpusRecord]:
    """`n` records: 40 % chats, 25 % business events, 20 % profile updates, 15 % knowledge
    documents (of tenant `TENANT`), each with its ground truth. The same `n` and `seed` give
    the same records (timestamps: `now` minus up to an hour; default a fixed instant)."""
    r = random.Random(seed)
    t0 = (1_780_000_000.0 if now is None else now) - 3600
    users = max(1, n // 20)
    out: list[CorpusRecord] = []
    rec: dict[str, Any]
    for i in range(n):
        x = r.random()
        kinds = _kinds(r)
        ts = t0 + i * 3600 / n
        topic = r.choice(_TOPICS)
        if x < 0.40:
            text, truth = _free_text(r, ("text",), kinds, f"Hi, I need help with my {topic}.")
            rec = {
                "message_id": f"m-{i:06d}",
                "session_id": f"s-{i % users:05d}",
                "tenant": TENANT,
                "user_id": f"u-{i % users:05d}",
                "text": text,
                "sent_at": _iso(ts),
            }
            out.append(CorpusRecord("chat", rec, truth))
        elif x < 0.65:
            attrs, truth = _attributes(r, kinds, topic)
            rec = {
                "event_id": f"b-{i:06d}",
                "event_type": r.choice(("order_placed", "refund_requested", "address_changed")),
                "tenant": TENANT,
                "account_id": f"acct-{i % users:05d}",
                "occurred_at": _iso(ts),
                "amount": round(r.uniform(5, 900), 2),
                "currency": r.choice(("USD", "EUR", "GBP")),
                "attributes": attrs,
            }
            out.append(CorpusRecord("business", rec, _prefix(("attributes",), truth)))
        elif x < 0.85:
            attrs, truth = _attributes(r, kinds, topic)
            entity = f"u-{i % users:05d}" if r.random() < 0.7 else f"acct-{i % users:05d}"
            rec = {
                "tenant": TENANT,
                "entity": entity,
                "attributes": attrs,
                "version": i,
            }
            out.append(CorpusRecord("profile", rec, _prefix(("attributes",), truth)))
        else:
            text, truth = _free_text(
                r, ("text",), kinds, f"How to change the {topic}: open Settings and choose it."
            )
            rec = {
                "tenant": TENANT,
                "doc_id": f"kb-{i:06d}",
                "version": 1,
                "title": f"Changing the {topic}",
                "text": text,
            }
            out.append(CorpusRecord("knowledge", rec, truth))
    return out


_ATTR_KEYS = {
    "email": "contact_email",
    "phone": "contact_phone",
    "credit_card": "card",
    "iban": "payout_iban",
    "ssn": "tax_id",
    "ip": "last_ip",
}


def _attributes(
    r: random.Random, kinds: list[str], topic: str
) -> tuple[dict[str, Any], list[Truth]]:
    """Attributes: each PII value alone under a telling key or inside a free-text `note`,
    plus near-misses under their own keys."""
    attrs: dict[str, Any] = {"plan": r.choice(("free", "pro", "enterprise")), "topic": topic}
    truth: list[Truth] = []
    in_note: list[str] = []
    for n, kind in enumerate(kinds):
        if r.random() < 0.5:
            in_note.append(kind)
            continue
        key = f"{_ATTR_KEYS[kind]}{'' if n == 0 else f'_{n}'}"
        value = GENERATORS[kind](r)
        attrs[key] = value
        truth.append(Truth((key,), 0, len(value), kind, value))
    for j in range(r.randint(1, 3)):
        attrs[r.choice(("order_ref", "invoice", "build", "updated", "tracking", "sku"))
              + f"_{j}"] = near_miss(r)  # fmt: skip
    if in_note or r.random() < 0.3:
        text, note_truth = _free_text(r, ("note",), in_note, "Customer says:")
        attrs["note"] = text
        truth.extend(note_truth)
    return attrs, truth


def _prefix(path: tuple[str, ...], truth: list[Truth]) -> list[Truth]:
    return [Truth((*path, *t.path), t.start, t.end, t.kind, t.value) for t in truth]


def jsonl(records: list[CorpusRecord], place: str) -> bytes:
    """The records of one place as JSON lines (the pipeline's file input)."""
    return b"".join(
        json.dumps(c.record, ensure_ascii=False).encode() + b"\n"
        for c in records
        if c.place == place
    )


# --------------------------------------------------------------------------- search


def _norm(s: str) -> str:
    return re.sub(r"[^0-9a-z@]", "", s.lower())


_IP_TOKEN = re.compile(r"[0-9A-Fa-f:.]{3,}")


class Finder:
    """Finds ground-truth values in texts: as written, normalized, IPs as addresses."""

    def __init__(self, truth: Iterable[Truth]) -> None:
        self.prefix: dict[str, set[str]] = {}
        self.ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        for t in truth:
            if t.kind == "ip":
                self.ips.add(ipaddress.ip_address(t.value))
            else:
                v = _norm(t.value)
                self.prefix.setdefault(v[:8], set()).add(v)

    def found(self, text: str) -> set[str]:
        """The normalized values (and IP addresses) that occur in `text`."""
        out: set[str] = set()
        for tok in _IP_TOKEN.findall(text):
            try:
                addr = ipaddress.ip_address(tok.strip(".:"))
            except ValueError:
                continue
            if addr in self.ips:
                out.add(str(addr))
        h = _norm(text)
        for i in range(len(h) - 7):
            cands = self.prefix.get(h[i : i + 8])
            if cands:
                out.update(v for v in cands if h.startswith(v, i))
        return out
