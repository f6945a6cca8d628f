"""The golden lineage corpus: each query's masked outputs and its inference-channel verdict."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bastion.policy import analyse
from bastion.policy.masking import Catalog, MaskRules, plan

CASES = tomllib.loads((Path(__file__).parent / "golden" / "lineage_cases.toml").read_text())["case"]
RUNS = [(case, dialect) for case in CASES for dialect in case["dialects"]]

TABLES = {
    "customers": ("id", "name", "email", "phone", "city", "created_at"),
    "products": ("id", "name", "category", "price"),
    "orders": ("id", "customer_id", "status", "ordered_at", "card_last4"),
    "order_items": ("order_id", "product_id", "quantity", "unit_price"),
    "order_totals": ("order_id", "customer_id", "status", "total"),
    "customer_contacts": ("id", "name", "contact"),
    "contact_domains": ("id", "domain"),
}
VIEWS = {
    "order_totals": "SELECT o.id AS order_id, o.customer_id, o.status, sum(i.quantity * i.unit_price) AS total "
                    "FROM orders o JOIN order_items i ON i.order_id = o.id GROUP BY o.id, o.customer_id, o.status",
    "customer_contacts": "CREATE VIEW customer_contacts AS SELECT id, name, email AS contact FROM customers",
    "contact_domains": "SELECT id, lower(substr(contact, instr(contact, '@') + 1)) AS domain FROM customer_contacts",
}
SCHEMA = {"sqlite": "main", "postgres": "public"}


def demo_catalog(dialect: str) -> Catalog:
    schema = SCHEMA[dialect]
    views = {f"{schema}.{k}": v for k, v in VIEWS.items()}
    if dialect == "postgres":  # pg_views.definition holds the SELECT only; instr is strpos there
        views = {k: v.split(" AS ", 1)[1] if v.startswith("CREATE") else v.replace("instr(", "strpos(") for k, v in views.items()}
    return Catalog.build(dialect, schema, {f"{schema}.{k}": v for k, v in TABLES.items()}, views)


def demo_rules(dialect: str) -> MaskRules:
    schema = SCHEMA[dialect]
    return MaskRules.build({f"{schema}.customers.email": "redact", f"{schema}.customers.phone": "partial",
                            f"{schema}.orders.card_last4": "hash"})


CATALOGS = {d: demo_catalog(d) for d in SCHEMA}
RULES = {d: demo_rules(d) for d in SCHEMA}


def outcome(sql: str, dialect: str) -> dict[str, object]:
    analysis = analyse(sql, dialect)
    assert analysis.error is None, analysis.error
    found = plan(analysis.statements, CATALOGS[dialect], RULES[dialect])
    out: dict[str, object] = {}
    if not found.known and found.fallback is not None:
        out["masked_all"] = found.fallback.masker
    else:
        out["masked"] = {m.output: m.masker for m in found.columns if m is not None}
    decision = found.decision
    out["verdict"] = decision.verdict.value if decision else "allow"
    # Rule ids name the schema of the dialect; the corpus writes them for `main`.
    out["rules"] = [r.replace(".public.", ".main.").replace("mask:public.", "mask:main.") for r in decision.rules] if decision else []
    return out


def expected(case: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    if "masked_all" in case:
        out["masked_all"] = case["masked_all"]
    else:
        out["masked"] = case["masked"]
    out["verdict"] = case["verdict"]
    out["rules"] = case["rules"]
    return out


def test_corpus_is_large_and_titles_are_unique() -> None:
    titles = [case["title"] for case in CASES]
    assert len(CASES) >= 60
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize(("case", "dialect"), RUNS, ids=[f"{c['title']} [{d}]" for c, d in RUNS])
def test_lineage_case(case: dict[str, object], dialect: str) -> None:
    got = outcome(str(case["sql"]), dialect)
    assert got == expected(case), f"{case['title']} [{dialect}]: {case['sql']}"


def test_corpus_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs the whole corpus and prints the cases that fail (the parametrized test says why)."""
    failed = []
    for case, dialect in RUNS:
        try:
            if outcome(str(case["sql"]), dialect) != expected(case):
                failed.append(f"{case['title']} [{dialect}]")
        except Exception as error:  # reported, then counted as failed
            failed.append(f"{case['title']} [{dialect}] ({type(error).__name__})")
    with capsys.disabled():
        print(f"\nlineage corpus: {len(RUNS) - len(failed)}/{len(RUNS)} pass" + "".join(f"\n  FAIL {f}" for f in failed))
    assert not failed
