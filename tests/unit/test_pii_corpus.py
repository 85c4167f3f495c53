"""Unit tests of `support.pii_corpus` (generated values are valid) and of the redactor on
each kind's variants and near-misses."""

from __future__ import annotations

import random

import pytest

from operators.redact import RegexRedactor, card_ok, iban_ok, luhn_ok, phone_ok
from support.pii_corpus import (
    GENERATORS,
    KINDS,
    NEAR_MISSES,
    Finder,
    card,
    corpus,
    iban,
    iban_check_digits,
    luhn_digit,
    mod97_valid,
)


def test_luhn_digit_completes_known_numbers() -> None:
    assert luhn_digit("411111111111111") == "1"
    assert luhn_digit("7992739871") == "3"


def test_iban_check_digits_of_a_known_iban() -> None:
    assert iban_check_digits("DE", "370400440532013000") == "89"
    assert iban_check_digits("GB", "WEST12345698765432") == "82"


def test_generated_cards_pass_luhn_and_the_validator() -> None:
    r = random.Random(1)
    for _ in range(2000):
        c = card(r)
        assert luhn_ok(c.replace(" ", "").replace("-", "")), c
        assert card_ok(c), c


def test_generated_ibans_pass_mod97() -> None:
    r = random.Random(2)
    countries = set()
    for _ in range(2000):
        v = iban(r)
        countries.add(v[:2])
        assert mod97_valid(v) and iban_ok(v), v
    assert len(countries) >= 6


@pytest.mark.parametrize("kind", KINDS)
def test_every_variant_of_a_kind_is_found_whole(kind: str) -> None:
    red = RegexRedactor(KINDS)
    r = random.Random(3)
    for _ in range(500):
        value = GENERATORS[kind](r)
        text = f"note: {value} ok"
        assert red.find(text) == [(6, 6 + len(value), kind)], value


def test_near_misses_are_not_pii() -> None:
    red = RegexRedactor(KINDS)
    r = random.Random(4)
    for gen in NEAR_MISSES:
        for _ in range(200):
            text = f"see {gen(r)} now"
            assert red.find(text) == [], text


@pytest.mark.parametrize(
    "text",
    ["1990 1995 2000", "1990 1995 2000 2005", "12 500 000 000", "2024-01-15 10:30:00",
     "9400 1234 5678 9012 3456 78", "v1.2.3.4", "10.0.19045.1", "build 4411.23"],
)  # fmt: skip
def test_known_lookalikes_are_left_alone(text: str) -> None:
    assert RegexRedactor(KINDS).redact(text) == (text, 0)


def test_compact_national_phone_needs_a_phone_word() -> None:
    assert phone_ok("4155550123", "please call ")
    assert not phone_ok("4155550123", "order ")


def test_corpus_is_seeded_and_covers_every_kind_in_every_place() -> None:
    a, b = corpus(2000, 5), corpus(2000, 5)
    assert [c.record for c in a] == [c.record for c in b]
    seen = {(c.place, t.kind) for c in a for t in c.truth}
    assert seen == {(p, k) for p in ("chat", "business", "profile", "knowledge") for k in KINDS}
    for c in a:
        strings = dict(c.strings())
        for t in c.truth:
            assert strings[t.path][t.start : t.end] == t.value


def test_finder_finds_values_as_written_and_without_separators() -> None:
    records = corpus(300, 6)
    truth = [t for c in records for t in c.truth]
    finder = Finder(truth)
    raw = " ".join(s for c in records for _, s in c.strings())
    assert len(finder.found(raw)) == len({t.value for t in truth})
    cards = [t.value for t in truth if t.kind == "credit_card"]
    assert finder.found(f"x {cards[0].replace(' ', '').replace('-', '')} y")
    red = RegexRedactor(KINDS)
    assert (
        finder.found(" ".join(red.redact(s)[0] for c in records for _, s in c.strings())) == set()
    )
