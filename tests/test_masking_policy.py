"""policy.masking: maskers, rules, the plan's fail-closed paths, and masking a result by its plan."""

from __future__ import annotations

import json

import pytest

from bastion.policy import Verdict, analyse
from bastion.policy.masking import Catalog, ColumnMask, MaskPlan, MaskRules, mask, mask_result, plan, strongest
from bastion.policy.masking.maskers import MASKERS, STRENGTH
from tests.conftest import requirement
from tests.test_lineage import CATALOGS, RULES

KEY = b"test-key"


@pytest.mark.parametrize(("masker", "value", "expected"), [
    ("redact", "ada@example.com", "[redacted]"),
    ("redact", 42, "[redacted]"),
    ("redact", None, None),
    ("null", "anything", None),
    ("email", "ada@example.com", "***@example.com"),
    ("email", "not an address", "[redacted]"),
    ("email", "trailing@", "[redacted]"),
    ("partial", "+1-555-123-4567", "****4567"),
    ("partial", "1234", "****34"),  # never more than half of the value
    ("partial", "ab", "****b"),
    ("partial", "", "****"),
    ("partial", 4111111111111111, "****1111"),
    ("partial", None, None),
])
def test_maskers(masker: str, value: object, expected: object) -> None:
    assert mask(masker, value, KEY) == expected


def test_hash_is_keyed_stable_and_type_blind() -> None:
    a = mask("hash", "1234", KEY)
    assert a == mask("hash", "1234", KEY) == mask("hash", 1234, KEY)
    assert a.startswith("h:") and len(a) == 18
    assert a != mask("hash", "1234", b"other-key") and a != mask("hash", "1235", KEY)


def test_hash_without_a_key_redacts() -> None:
    assert mask("hash", "1234", None) == "[redacted]"


@pytest.mark.parametrize("value", ["s", 1, 1.5, True, b"\x00\xff", [1, "a"], {"k": ["v"]}])
def test_every_masker_takes_any_json_value(value: object) -> None:
    for masker in MASKERS:
        json.dumps(mask(masker, value, KEY))


def test_the_strongest_masker_wins() -> None:
    assert [m for m, _ in sorted(STRENGTH.items(), key=lambda kv: -kv[1])] == ["null", "redact", "hash", "email", "partial"]
    assert strongest(["partial", "email"]) == "email" and strongest([]) is None


@requirement("mask:strongest-wins")
def test_overlapping_patterns_take_the_strongest() -> None:
    rules = MaskRules.build({"*.*.email": "email", "main.customers.email": "redact", "main.*.phone": "partial"})
    assert rules.column("main.customers.email").masker == "redact"  # type: ignore[union-attr]
    assert rules.column("main.staff.email").masker == "email"  # type: ignore[union-attr]
    assert rules.column("MAIN.Customers.Phone").rule == "mask:main.*.phone"  # type: ignore[union-attr]
    assert rules.column("main.customers.name") is None


def test_bad_patterns_and_maskers_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown masker `scramble`"):
        MaskRules.build({"main.t.c": "scramble"})
    with pytest.raises(ValueError, match="schema.table.column"):
        MaskRules.build({"customers.email": "redact"})


@requirement("mask:inference-channel")
def test_predicate_verdicts_can_be_set_per_masker_and_use() -> None:
    statements = analyse("SELECT id FROM customers WHERE email = 'x'", "sqlite").statements
    relaxed = MaskRules.build({"main.customers.email": "redact"}, predicates=[("redact", "equality", Verdict.REVIEW)])
    decision = plan(statements, CATALOGS["sqlite"], relaxed).decision
    assert decision is not None and decision.verdict is Verdict.REVIEW and decision.rules == ("mask:main.customers.email",)
    allowing = MaskRules.build({"main.customers.email": "redact"}, predicates=[("redact", "equality", Verdict.ALLOW)])
    assert plan(statements, CATALOGS["sqlite"], allowing).decision is None
    strict = MaskRules.build({"main.customers.phone": "partial"}, predicates=[("partial", "order", Verdict.DENY)])
    ordered = analyse("SELECT id FROM customers ORDER BY phone", "sqlite").statements
    denied = plan(ordered, CATALOGS["sqlite"], strict).decision
    assert denied is not None and denied.verdict is Verdict.DENY and "ORDER BY" in denied.reason


@requirement("mask:inference-channel")
def test_a_denied_channel_explains_itself() -> None:
    decision = plan(analyse("SELECT name FROM customers WHERE email LIKE 'a%'", "sqlite").statements,
                    CATALOGS["sqlite"], RULES["sqlite"]).decision
    assert decision is not None
    assert "`main.customers.email`" in decision.reason and "pattern" in decision.reason
    assert decision.hint and "mask_predicates" in decision.hint


@requirement("mask:fail-closed")
def test_with_no_catalog_every_output_of_a_sensitive_table_is_masked() -> None:
    empty = Catalog.build("sqlite", "main", {})
    found = plan(analyse("SELECT id, name FROM customers", "sqlite").statements, empty, RULES["sqlite"])
    assert [m.masker if m else None for m in found.for_result(2)] == ["redact", "redact"]
    assert all(m and m.note for m in found.for_result(2))


@requirement("mask:fail-closed")
def test_a_result_wider_than_the_plan_is_masked_whole() -> None:
    found = plan(analyse("SELECT * FROM customers", "sqlite").statements, CATALOGS["sqlite"], RULES["sqlite"])
    assert [m.masker if m else None for m in found.for_result(6)] == [None, None, "redact", "partial", None, None]
    # The table grew a column since the catalog was read: positions cannot be trusted.
    assert [m.masker if m else None for m in found.for_result(7)] == ["redact"] * 7


@requirement("mask:fail-closed")
def test_a_view_whose_definition_cannot_be_followed_is_sensitive() -> None:
    catalog = Catalog.build("sqlite", "main", {"main.customers": ("id", "email"), "main.v": ("a",)},
                            {"main.v": "SELECT FROM WHERE ((("})
    found = plan(analyse("SELECT a FROM v", "sqlite").statements, catalog, MaskRules.build({"main.customers.email": "redact"}))
    assert found.for_result(1)[0] is not None


def test_no_rules_means_no_plan_work() -> None:
    found = plan(analyse("SELECT email FROM customers WHERE email = 'x'", "sqlite").statements, CATALOGS["sqlite"],
                 MaskRules.build({}, detectors=["email"]))
    assert not found.masks_columns and found.decision is None and found.detectors == {"email"}


@requirement("mask:audit-masked")
def test_masking_a_result_keeps_values_out_of_the_record() -> None:
    statements = analyse("SELECT c.id, email, phone, note FROM customers c JOIN notes n ON n.id = c.id", "sqlite").statements
    catalog = Catalog.build("sqlite", "main", {"main.customers": ("id", "email", "phone"), "main.notes": ("id", "note")})
    rules = MaskRules.build({"main.customers.email": "redact", "main.customers.phone": "partial"}, detectors=["card", "email"])
    found = plan(statements, catalog, rules)
    rows = [[1, "ada@example.com", "+1-555-123-4567", "paid with 4111 1111 1111 1111, mail grace@example.org"]]
    out, record = mask_result(["id", "email", "phone", "note"], rows, found, key=KEY)
    assert out == [[1, "[redacted]", "****4567", "paid with [redacted:card], mail [redacted:email]"]]
    assert record == {"columns": {"email": {"masker": "redact", "rules": ["mask:main.customers.email"], "from": ["main.customers.email"]},
                                  "phone": {"masker": "partial", "rules": ["mask:main.customers.phone"], "from": ["main.customers.phone"]}},
                      "detections": {"card": 1, "email": 1}}
    text = json.dumps(record)
    assert "ada@" not in text and "4567" not in text and "4111" not in text
    assert rows[0][1] == "ada@example.com"  # the input was not touched


@requirement("mask:fail-closed")
def test_an_ambiguous_column_is_masked() -> None:
    catalog = Catalog.build("sqlite", "main", {"main.customers": ("id", "email"), "main.notes": ("id", "note")})
    found = plan(analyse("SELECT id FROM customers c JOIN notes n ON n.id = c.id", "sqlite").statements, catalog,
                 MaskRules.build({"main.customers.email": "redact"}))
    assert found.for_result(1)[0] is not None


def test_masking_in_place_and_repeated_column_names() -> None:
    masks = (ColumnMask("redact", ("r",)), ColumnMask("hash", ("h",)))
    rows = [["a", "x"], ["b", "x"], [None, None]]
    out, record = mask_result(["id", "id"], rows, MaskPlan(masks), key=KEY, in_place=True)
    assert out is rows and rows[0][0] == "[redacted]" and rows[2] == [None, None]
    assert rows[0][1] == rows[1][1] == mask("hash", "x", KEY)
    assert set(record["columns"]) == {"id", "id#2"}


def test_an_empty_result_and_a_plan_with_nothing_to_do() -> None:
    assert mask_result(["a"], [], MaskPlan((ColumnMask("redact", ("r",)),))) == ([], {"columns": {"a": {"masker": "redact", "rules": ["r"]}}})
    assert mask_result(["a"], [["x"]], MaskPlan()) == ([["x"]], {})
