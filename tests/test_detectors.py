"""Value detectors: unit cases, then precision and recall per kind on a generated corpus, and the
false positives on random 9- and 16-digit numbers (figures: tests/bench/detector_quality.py)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from bastion.policy.masking.detectors import KINDS, Detectors, card_issuer, find_spans, luhn, valid_iban, valid_ssn
from tests.conftest import requirement
from tests.detector_corpus import Sample, negatives, positives, random_numbers

ALL = Detectors(frozenset(KINDS))

pytestmark = requirement("mask:detectors")


@pytest.mark.parametrize(("text", "expected"), [
    ("write to ada@example.com today", "write to [redacted:email] today"),
    ("card 4111 1111 1111 1111 exp 12/29", "card [redacted:card] exp 12/29"),
    ("amex 3782-822463-10005", "amex [redacted:card]"),
    ("card: 5555555555554444", "card: [redacted:card]"),
    ("ssn 078-05-1120", "ssn [redacted:ssn]"),
    ("IBAN GB82 WEST 1234 5698 7654 32 ok", "IBAN [redacted:iban] ok"),
    ("DE89370400440532013000", "[redacted:iban]"),
    ("key AKIAIOSFODNN7EXAMPLE used", "key [redacted:cloud_key] used"),
    ("ghp_" + "a" * 36, "[redacted:github_token]"),
    ("xoxb-1234567890-abcdefghijkl", "[redacted:slack_token]"),
    ("password=hunter2 user=bob", "password=[redacted:password] user=bob"),
    ('{"client_secret": "s3cr3t", "id": 7}', '{"client_secret": "[redacted:password]", "id": 7}'),
    ("postgres://app:Sup3r@db:5432/x", "postgres://app:[redacted:password]@db:5432/x"),
    ("Authorization: Bearer abc.def.ghi123", "Authorization: Bearer [redacted:password]"),
    ("a\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\nz",
     "a\n[redacted:private_key]\nz"),
    ("-----BEGIN PRIVATE KEY-----\nMIIEv (cut short", "[redacted:private_key]"),
])
def test_a_detection_is_replaced_by_its_marker(text: str, expected: str) -> None:
    assert ALL.scan_text(text)[0] == expected


@pytest.mark.parametrize("text", [
    "order 4111111111111112 shipped",  # fails Luhn
    "order 4111111111111111",  # bare digits with no card context: an order id
    "call +1-555-123-4567 on 2026-01-03",
    "ssn 666-12-3456",  # area 666 is never issued
    "token_count=5 and PWD=/home/ada",
    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
    "eyJ0eXAiOiJKV1QifQ.e30.c2ln",  # header without "alg"
    "pkg@1.2.3 and @ada",
])
def test_lookalikes_are_left_alone(text: str) -> None:
    assert ALL.scan_text(text) == (text, Counter())


def test_each_detection_is_counted_per_kind() -> None:
    text, counts = ALL.scan_text("a@x.com b@y.org 4111 1111 1111 1111")
    assert counts == Counter({"email": 2, "card": 1})
    assert "@" not in text


def test_only_the_configured_kinds_run() -> None:
    only_cards = Detectors(frozenset({"card"}))
    assert only_cards.scan_text("ada@example.com 4111 1111 1111 1111") == ("ada@example.com [redacted:card]", Counter({"card": 1}))


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown detectors: phone"):
        Detectors(frozenset({"phone"}))


def test_a_column_named_for_cards_needs_no_context() -> None:
    (cells,), counts = ALL.scan_columns([["4111111111111111", "1234567812345678", None]], ["card_number"])
    assert cells == ["[redacted:card]", "1234567812345678", None] and counts == Counter({"card": 1})
    (cells,), _ = ALL.scan_columns([["4111111111111111"]], ["order_id"])
    assert cells is None


def test_columns_of_any_json_value_are_scanned_in_place() -> None:
    columns = [[1, 2], [4111111111111111, None], [{"mail": "ada@example.com"}, ["x", "b@y.org"]], [1.5, True]]
    out, counts = ALL.scan_columns(columns, ["id", "cc", "doc", "f"])
    assert out[0] is None and out[3] is None
    assert out[1] == ["[redacted:card]", None]
    assert out[2] == [{"mail": "[redacted:email]"}, ["x", "[redacted:email]"]]
    assert counts == Counter({"card": 1, "email": 2})


def test_a_detection_never_spans_two_cells() -> None:
    (cells,), counts = ALL.scan_columns([["card 4111 1111", "1111 1111 end"]], ["note"])
    assert cells is None and not counts


def test_checksums() -> None:
    assert luhn("79927398713") and not luhn("79927398710")
    assert card_issuer("378282246310005") == "amex" and card_issuer("1234567812345670") is None
    assert valid_ssn("078", "05", "1120") and not valid_ssn("900", "12", "3456") and not valid_ssn("123", "00", "4567")
    assert valid_iban("GB82WEST12345698765432") and not valid_iban("GB83WEST12345698765432")


# -- quality on a generated corpus ------------------------------------------------------------------

def measure(samples: list[Sample]) -> dict[str, dict[str, float]]:
    """Per kind: precision (detections of the kind that were right) and recall (samples of the kind found)."""
    found: Counter[str] = Counter()
    right: Counter[str] = Counter()
    total: Counter[str] = Counter(s.kind for s in samples if s.kind)
    hit: Counter[str] = Counter()
    for sample in samples:
        kinds = {k for _, _, k in find_spans(sample.text, KINDS)}
        for kind in kinds:
            found[kind] += 1
            right[kind] += kind == sample.kind
        if sample.kind in kinds:
            hit[sample.kind] += 1
    return {kind: {"precision": right[kind] / found[kind] if found[kind] else 1.0,
                   "recall": hit[kind] / total[kind] if total[kind] else 1.0,
                   "samples": total[kind]} for kind in KINDS}


def corpus(seed: int = 2026, per_kind: int = 400, hard_negatives: int = 6000) -> list[Sample]:
    rng = random.Random(seed)
    return positives(rng, per_kind) + negatives(rng, hard_negatives)


def test_precision_and_recall_per_kind_on_a_generated_corpus() -> None:
    figures = measure(corpus())
    low = {kind: f for kind, f in figures.items() if f["precision"] < 0.99 or f["recall"] < 0.98}
    assert not low, low


def false_positive_rate(numbers: list[str], column: str = "value") -> float:
    (cells,), counts = ALL.scan_columns([numbers], [column])
    return sum(counts.values()) / len(numbers)


def test_random_nine_digit_numbers_are_not_ssns() -> None:
    assert false_positive_rate(random_numbers(random.Random(9), 10_000, 9)) == 0.0


def test_random_sixteen_digit_order_ids_are_not_cards() -> None:
    numbers = random_numbers(random.Random(16), 10_000, 16)
    assert false_positive_rate(numbers, "order_id") == 0.0
    # The same ids in a column named for cards: issuer prefix + Luhn is all that is left (~3%).
    assert 0.01 < false_positive_rate(numbers, "card_number") < 0.05
