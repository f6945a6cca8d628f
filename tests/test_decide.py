"""How rules combine: deny wins, allow beats review, no covering rule is a default deny."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bastion.policy import ConnectionPolicy, Identity, Kind, Limits, SqlRule, Verdict, analyse, decide
from bastion.policy.presets import READ_ONLY, READ_WRITE
from bastion.policy.sql import analyze as analyze_module
from tests.conftest import requirement
from bastion.tools.guard import safe_check

ALICE = Identity("alice", frozenset({"analysts"}))
DBA = Identity("dora", frozenset({"analysts", "dba"}))


def policy(*rules: SqlRule, dialect: str = "postgres") -> ConnectionPolicy:
    return ConnectionPolicy("db", dialect, rules)


def test_no_rule_for_the_identity_is_a_default_deny_naming_the_subject() -> None:
    only_dba = replace(READ_WRITE, id="dba", groups=frozenset({"dba"}))
    decision = decide(ALICE, policy(only_dba), analyse("SELECT 1", "postgres"))
    assert decision.verdict is Verdict.DENY and decision.rules == ("default-deny",)
    assert "alice" in decision.reason


def test_a_rule_for_a_subject_applies_only_to_that_subject() -> None:
    rule = replace(READ_ONLY, id="just-alice", subjects=frozenset({"alice"}))
    assert decide(ALICE, policy(rule), analyse("SELECT 1", "postgres")).allowed
    assert not decide(Identity("bob"), policy(rule), analyse("SELECT 1", "postgres")).allowed


def test_a_second_rule_can_allow_what_the_first_does_not_cover() -> None:
    everyone = replace(READ_ONLY, id="everyone")
    dba = replace(READ_WRITE, id="dba", groups=frozenset({"dba"}))
    text = analyse("UPDATE orders SET status = 'x' WHERE id = 1", "postgres")
    assert decide(ALICE, policy(everyone, dba), text).verdict is Verdict.DENY
    assert decide(DBA, policy(everyone, dba), text).rules == ("dba",)


def test_decisions_are_memoised_per_policy_identity_and_analysis() -> None:
    everyone = replace(READ_ONLY, id="everyone")
    dba = replace(READ_WRITE, id="dba", groups=frozenset({"dba"}))
    rules = policy(everyone, dba)
    text = analyse("UPDATE orders SET status = 'x' WHERE id = 1", "postgres")
    first = decide(ALICE, rules, text)
    assert decide(ALICE, rules, text) is first  # a hit
    assert decide(DBA, rules, text).allowed and not decide(ALICE, rules, text).allowed  # per identity
    # An equal analysis that is another object (a text too big for the analysis cache) is decided anew.
    again = analyse("UPDATE orders SET status = 'x' WHERE id = 1 ", "postgres")
    assert again is not text and decide(ALICE, rules, again) == first
    assert decide(DBA, policy(everyone), text).verdict is Verdict.DENY  # per policy
    big = analyse("SELECT 1 AS " + "x" * 20_000, "postgres")
    decide(ALICE, rules, big)
    assert all(entry[0] is not big for entry in rules.decisions.values())  # big texts are not kept alive


def test_an_explicit_deny_beats_every_allow() -> None:
    no_delete = SqlRule("no-delete", deny=frozenset({Kind.DELETE}))
    dba = replace(READ_WRITE, id="dba", groups=frozenset({"dba"}))
    decision = decide(DBA, policy(dba, no_delete), analyse("DELETE FROM orders WHERE id = 1", "postgres"))
    assert decision.verdict is Verdict.DENY and decision.rules == ("no-delete:deny-kind",)


def test_deny_functions_patterns_deny_outright() -> None:
    rule = replace(READ_ONLY, deny_functions=("crypt*",))
    decision = decide(ALICE, policy(rule), analyse("SELECT crypt('a', 'b')", "postgres"))
    assert decision.rules == ("read-only:deny-function",)


def test_allow_beats_review_when_another_rule_fully_allows() -> None:
    held = replace(READ_WRITE, id="writers")
    trusted = replace(READ_WRITE, id="trusted", subjects=frozenset({"dora"}), unfiltered_writes=Verdict.ALLOW)
    decision = decide(DBA, policy(held, trusted), analyse("DELETE FROM scratch", "postgres"))
    assert decision.verdict is Verdict.ALLOW and decision.rules == ("trusted",)


@requirement("sql:multi-statement")
def test_any_held_statement_holds_the_whole_text() -> None:
    text = "UPDATE orders SET total = 0 WHERE id = 1; TRUNCATE orders; SELECT 2"
    decision = decide(ALICE, policy(READ_WRITE), analyse(text, "postgres"))
    assert decision.verdict is Verdict.REVIEW and decision.rules == ("read-write:review-kind",)


@requirement("sql:multi-statement")
def test_a_denied_statement_denies_the_text_and_says_which() -> None:
    decision = decide(ALICE, policy(READ_ONLY), analyse("SELECT 1; SELECT 2; DELETE FROM t WHERE id = 1", "postgres"))
    assert decision.verdict is Verdict.DENY and decision.reason.startswith("statement 3 of 3")


def test_limits_are_the_tightest_of_the_allowing_rules() -> None:
    rule = replace(READ_ONLY, limits=Limits(max_rows=5, max_bytes=100, timeout_s=2))
    decision = decide(ALICE, policy(rule), analyse("SELECT 1", "postgres"))
    assert decision.limits == Limits(5, 100, 2)


@requirement("sql:multi-statement")
def test_several_statements_that_return_rows_are_refused_clearly() -> None:
    """A call returns one statement's result; the others' rows would be lost without a word."""
    decision = decide(ALICE, policy(READ_ONLY), analyse("SELECT 1; SELECT 2; SELECT 3", "postgres"))
    assert decision.verdict is Verdict.DENY and decision.rules == ("guard:several-results",)
    assert "statements 1, 2 and 3 of 3" in decision.reason and "call of its own" in (decision.hint or "")
    returning = decide(ALICE, policy(READ_WRITE), analyse("UPDATE orders SET total = 0 WHERE id = 1 RETURNING id; SELECT 1", "postgres"))
    assert returning.rules == ("guard:several-results",)
    one = decide(ALICE, policy(READ_WRITE), analyse("UPDATE orders SET total = 0 WHERE id = 1; SELECT total FROM orders", "postgres"))
    assert one.verdict is Verdict.ALLOW


def test_reads_are_marked_read_only_and_writes_are_not() -> None:
    assert decide(ALICE, policy(READ_WRITE), analyse("SELECT * FROM orders", "postgres")).read_only
    assert not decide(ALICE, policy(READ_WRITE), analyse("DELETE FROM orders WHERE id = 1", "postgres")).read_only


def test_table_patterns_limit_reads_and_name_the_table() -> None:
    rule = replace(READ_ONLY, read_tables=("public.*", "!public.secrets"))
    assert decide(ALICE, policy(rule), analyse("SELECT * FROM orders", "postgres")).allowed
    decision = decide(ALICE, policy(rule), analyse("SELECT * FROM orders JOIN secrets USING (id)", "postgres"))
    assert decision.rules == ("read-only:table",) and "public.secrets" in decision.reason


def test_cte_names_are_not_tables_but_real_tables_inside_ctes_are() -> None:
    rule = replace(READ_ONLY, read_tables=("public.orders",))
    text = "WITH recent AS (SELECT * FROM orders) SELECT * FROM recent"
    assert decide(ALICE, policy(rule), analyse(text, "postgres")).allowed
    text = "WITH recent AS (SELECT * FROM customers) SELECT * FROM recent"
    assert decide(ALICE, policy(rule), analyse(text, "postgres")).rules == ("read-only:table",)


def test_a_cte_name_does_not_hide_a_same_named_table_outside_its_scope() -> None:
    facts = analyse("SELECT * FROM (WITH secrets AS (SELECT 1) SELECT * FROM secrets) a, secrets", "postgres")
    assert "public.secrets" in facts.statements[0].reads


@requirement("inv:fail-closed-guard-error")
def test_an_exception_inside_the_guard_denies(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object) -> None:
        raise RuntimeError("boom")

    analyze_module._analyse_cached.cache_clear()
    monkeypatch.setattr(analyze_module, "_analyse_postgres", explode)
    decision = safe_check(policy(READ_ONLY), ALICE, "SELECT 1 AS fresh_text")
    assert decision.verdict is Verdict.DENY and decision.rules == ("guard:internal-error",)


def test_analysis_is_cached_by_dialect_and_text() -> None:
    first = analyse("SELECT 42", "postgres")
    assert analyse("SELECT 42", "postgres") is first
    assert analyse("SELECT 42", "sqlite") is not first


@requirement("sql:parsers-disagree")
def test_statements_sqlglot_misreads_are_caught_by_postgres_parser() -> None:
    for text in ("LISTEN channel", "START TRANSACTION", "DEALLOCATE p"):
        decision = decide(ALICE, policy(READ_WRITE), analyse(text, "postgres"))
        assert decision.verdict is Verdict.DENY and decision.rules == ("guard:parsers-disagree",), text


@requirement("sql:opaque-statement")
def test_statements_neither_parser_classifies_are_opaque_and_denied() -> None:
    for text in ("CHECKPOINT", "DISCARD ALL", "CLUSTER orders", "REFRESH MATERIALIZED VIEW mv"):
        decision = decide(ALICE, policy(READ_WRITE), analyse(text, "postgres"))
        assert decision.verdict is Verdict.DENY and decision.rules == ("guard:opaque",), text


def test_statement_text_is_exactly_what_postgres_splits() -> None:
    facts = analyse("SELECT 'a;b' ; /* c; */ SELECT $x$;$x$;", "postgres")
    assert [s.text for s in facts.statements] == ["SELECT 'a;b'", "SELECT $x$;$x$"]


@requirement("sql:dangerous-function")
def test_the_references_read_while_decoding_match_a_full_walk_of_postgres_tree() -> None:
    """parse() reads function references as json.loads decodes libpg_query's JSON (object_hook),
    not by walking the loaded tree: both must find the same, and the names deny lists read."""
    import json
    import tomllib
    from pathlib import Path

    from pglast import parser

    from bastion.policy.sql import postgres_parser
    from bastion.policy.sql.facts import FunctionRef

    def names(node: object, key: str, out: set[str]) -> None:  # an independent walk, the way it was done before
        if isinstance(node, list):
            for value in node:
                names(value, key, out)
        elif isinstance(node, dict):
            if key == "FuncCall" and isinstance(node.get("FuncCall"), dict):
                out.add(node["FuncCall"]["funcname"][-1]["String"]["sval"].lower())
            if key == "ColumnRef" and isinstance(node.get("ColumnRef"), dict):
                fields = node["ColumnRef"]["fields"]
                if len(fields) >= 2 and "String" in fields[-1]:
                    out.add(fields[-1]["String"]["sval"].lower())
            if key == "ColumnRef" and isinstance(node.get("A_Indirection"), dict):  # (expr).field
                out.update(i["String"]["sval"].lower() for i in node["A_Indirection"]["indirection"] if "String" in i)
            for value in node.values():
                names(value, key, out)

    cases = tomllib.loads((Path(__file__).parent / "golden" / "sql_cases.toml").read_text())["case"]
    texts = [c["text"] for c in cases if c["dialect"] == "postgres"] + [
        'SELECT "x]"."pg_read_file"(\'a\'), \'"FuncCall":{\'', 'SELECT t.*, t."Q""x", s.t."a\\b", u.v FROM t',
        'SELECT \'"ColumnRef":{"fields":[\' AS x, "We""ird"."Fn"(1) FROM t', "SELECT (c).leak, (x).y.z FROM customers c"]
    compared = 0
    for text in texts:
        try:
            tree = json.loads(parser.parse_sql_json(text))
        except parser.ParseError:
            continue
        stmts = postgres_parser.parse(text)
        for item, stmt in zip(tree["stmts"], stmts, strict=True):
            walked: set[FunctionRef] = set()
            postgres_parser._calls(item["stmt"], walked)
            assert stmt.calls == walked, text
            functions: set[str] = set()
            attributes: set[str] = set()
            names(item["stmt"], "FuncCall", functions)
            names(item["stmt"], "ColumnRef", attributes)
            assert (stmt.functions, stmt.attributes) == (functions, attributes), text
            compared += 1
    assert compared > 200


def test_an_exempted_sequence_function_gets_a_writable_transaction() -> None:
    decision = decide(ALICE, policy(READ_WRITE), analyse("SELECT nextval('orders_id_seq')", "postgres"))
    assert decision.allowed and not decision.read_only
    assert not decide(ALICE, policy(READ_ONLY), analyse("SELECT nextval('s')", "postgres")).allowed


def test_attribute_notation_is_checked_against_denied_functions() -> None:
    rule = replace(READ_ONLY, deny_functions=("leak",))
    for text in ("SELECT leak(c) FROM customers c", "SELECT c.leak FROM customers c", "SELECT (c).leak FROM customers c"):
        assert decide(ALICE, policy(rule), analyse(text, "postgres")).rules == ("read-only:deny-function",), text


def test_sqlite_function_names_are_read_as_written_and_without_case() -> None:
    rule = replace(READ_ONLY, deny_functions=("sqlite_*", "randomblob"))
    for text in ("SELECT sqlite_version()", 'SELECT "RANDOMBLOB"(4)'):
        assert decide(ALICE, policy(rule, dialect="sqlite"), analyse(text, "sqlite")).verdict is Verdict.DENY, text
