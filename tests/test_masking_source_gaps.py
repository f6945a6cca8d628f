"""Masking at the source, by effect on the real PostgreSQL, where a red team found it bypassed or
broken: a partition or inheritance child read on its own, EXPLAIN's row estimates, `TABLE t`,
`t *`, and `schema.table.column` references. The canary never appears in an answer or the audit log.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from bastion.policy.masking import Catalog, MaskRules
from bastion.server.app import create_server
from bastion.server.config import load
from bastion.store import SqliteAuditStore
from bastion.tools.masking import Masking
from tests.conftest import requirement
from tests.postgres_server import PgServer

pytestmark = pytest.mark.anyio
CANARY = f"tiger-lily-{uuid.uuid4().hex[:8]}"
# The canary as the agent guesses it, spelt so that the text itself does not hold it (the planner
# folds the concatenation into the constant it estimates with).
GUESS = f"'{CANARY[:6]}' || '{CANARY[6:]}'"


@pytest.fixture(scope="module")
def gaps(pg_server: PgServer) -> Iterator[tuple[PgServer, str]]:
    with pg_server.scratch_schema("gaps", f"""
        CREATE TABLE {{schema}}.cards (id int, region text, pan text) PARTITION BY LIST (region);
        CREATE TABLE {{schema}}.cards_eu PARTITION OF {{schema}}.cards FOR VALUES IN ('eu') PARTITION BY LIST (id);
        CREATE TABLE {{schema}}.cards_eu_1 PARTITION OF {{schema}}.cards_eu FOR VALUES IN (1);
        INSERT INTO {{schema}}.cards VALUES (1, 'eu', '{CANARY}');
        CREATE TABLE {{schema}}.people (id int, secret text);
        CREATE TABLE {{schema}}.people_vip (vip boolean) INHERITS ({{schema}}.people);
        INSERT INTO {{schema}}.people_vip VALUES (1, '{CANARY}', true);
        CREATE TABLE {{schema}}.accounts (id int, secret text);
        INSERT INTO {{schema}}.accounts SELECT g, CASE WHEN g < 60 THEN '{CANARY}' ELSE 'x' || g END FROM generate_series(1, 100) g;
        ANALYZE {{schema}}.accounts;
    """) as schema:
        yield pg_server, schema


@pytest.fixture
def config(gaps: tuple[PgServer, str], tmp_path: Path) -> Path:
    pg, schema = gaps
    path = tmp_path / "bastion.toml"
    path.write_text(f"""
[identity]
subject = "alice@example.com"

[audit]
path = "bastion-audit.db"

[connections.pg]
kind = "postgres"
target = "{pg.dsn(user=pg.gateway_role)}"
search_path = "{schema}"
accept_rights = ["write-grants"]
mask = {{ "{schema}.cards.pan" = "redact", "{schema}.people.secret" = "redact", "{schema}.accounts.secret" = "redact" }}
preset = "read-only"
""")
    return path


async def _ask(client: Client, sql: str) -> Any:
    return await client.call_tool("sql_query", {"connection": "pg", "sql": sql})


def _no_canary(path: Path, *answers: Any) -> None:
    for answer in answers:
        assert CANARY not in str(answer.content) and CANARY not in str(answer.structured_content)
    audit = path.parent / "bastion-audit.db"
    log = " ".join(str(e) for e in SqliteAuditStore(audit).iter_all()) + audit.read_bytes().decode("utf-8", "replace")
    assert CANARY not in log


@pytest.mark.postgres
@requirement("mask:at-source", "mask:audit-masked")
async def test_a_parents_mask_covers_every_partition_and_inheritance_child(config: Path, gaps: tuple[PgServer, str]) -> None:
    pg, schema = gaps
    assert pg.execute(f"SELECT pan FROM {schema}.cards_eu_1") == [(CANARY,)]  # straight to the server: raw
    answers = []
    async with Client(create_server(load(config))) as client:
        for sql, want in (("SELECT * FROM cards_eu", [[1, "eu", "[redacted]"]]),
                          ("SELECT * FROM cards_eu_1", [[1, "eu", "[redacted]"]]),
                          (f"SELECT id, pan FROM {schema}.cards_eu_1 WHERE id = 1", [[1, "[redacted]"]]),
                          ("SELECT * FROM people_vip", [[1, "[redacted]", True]]),
                          ("SELECT length(secret) FROM people_vip", [[len("[redacted]")]]),
                          ("SELECT * FROM people", [[1, "[redacted]"]])):
            got = await _ask(client, sql)
            assert not got.is_error, (sql, got.content[0].text)
            assert got.structured_content["rows"] == want, sql
            answers.append(got)
        # A probe of the child's inherited column compares the masked value: it finds nothing.
        for probe in (f"SELECT id FROM people_vip WHERE secret = {GUESS}", f"SELECT id FROM cards_eu WHERE pan LIKE 'tiger%'"):
            got = await _ask(client, probe)
            assert not got.is_error and got.structured_content["rows"] == [], (probe, got.content[0].text)
            answers.append(got)
    _no_canary(config, *answers)


@pytest.mark.postgres
@requirement("mask:at-source")
async def test_explain_of_a_condition_on_a_masked_column_is_refused(config: Path, gaps: tuple[PgServer, str]) -> None:
    pg, schema = gaps
    # Straight to the server, the estimate tells the common value from another.
    estimate = [pg.execute(f"EXPLAIN SELECT id FROM {schema}.accounts WHERE secret {c}") for c in (f"= {GUESS}", "= 'nope'")]
    assert estimate[0] != estimate[1]
    async with Client(create_server(load(config))) as client:
        refused = []
        for condition in (f"= {GUESS}", "= 'nope'", f"LIKE '{CANARY[:6]}%'", "LIKE 'nope%'", "> 'm'"):
            got = await _ask(client, f"EXPLAIN SELECT id FROM accounts WHERE secret {condition}")
            assert got.is_error and "mask:explain" in got.content[0].text, (condition, got.content[0].text)
            refused.append(got)
        plain = await _ask(client, "EXPLAIN SELECT id, secret FROM accounts WHERE id = 3")
        assert not plain.is_error, plain.content[0].text
    _no_canary(config, *refused, plain)


@pytest.mark.postgres
@requirement("mask:at-source")
async def test_table_star_and_schema_qualified_references_are_masked_and_answered(config: Path, gaps: tuple[PgServer, str]) -> None:
    _, schema = gaps
    answers = []
    async with Client(create_server(load(config))) as client:
        for sql in ("TABLE accounts", "TABLE ONLY accounts", "SELECT * FROM accounts *", "SELECT a.* FROM accounts * a",
                    "SELECT t.secret FROM (TABLE accounts) t", f"SELECT {schema}.accounts.secret FROM {schema}.accounts",
                    f"SELECT {schema}.accounts.id, {schema}.accounts.secret FROM {schema}.accounts ORDER BY {schema}.accounts.id"):
            got = await _ask(client, sql)
            assert not got.is_error, (sql, got.content[0].text)
            rows = got.structured_content["rows"]
            assert len(rows) == 100 and all("[redacted]" in row for row in rows), sql
            answers.append(got)
    _no_canary(config, *answers)


async def test_the_name_check_parses_off_the_event_loop() -> None:
    seen: list[int] = []
    masking = Masking(MaskRules.build({"app.t.c": "redact"}))
    masking._catalog = Catalog.build("postgres", "app", {"app.t": ("c",)})
    masking._read_at = time.monotonic()  # recent: only the name check could make it read again

    def names_unknown(connection: Any, text: str) -> bool:
        seen.append(threading.get_ident())
        return False

    masking._names_unknown = names_unknown  # type: ignore[method-assign]
    await masking.refresh(None, "SELECT c FROM t")  # type: ignore[arg-type]
    assert seen and seen[0] != threading.get_ident()


def test_the_rewrite_of_table_star_and_qualified_references_and_its_fallback() -> None:
    from bastion.policy import analyse
    from bastion.policy.masking.plan import statement_plan
    from bastion.policy.masking.source import AtSource

    catalog = Catalog.build("postgres", "app", {"app.accounts": ("id", "secret")})
    rules = MaskRules.build({"app.accounts.secret": "redact"})

    def rewritten(text: str) -> str | None:
        found = statement_plan(analyse(text, "postgres", "app").statements[0], catalog, rules, AtSource())
        return found.rewrites[0].text if found.rewrites else None

    scan = '(SELECT "id", CASE WHEN "secret" IS NULL THEN NULL ELSE \'[redacted]\' END AS "secret" FROM {})'
    assert rewritten("TABLE accounts") == f"SELECT * FROM {scan.format('accounts')} AS accounts"
    assert rewritten("SELECT a.id FROM accounts * a") == f"SELECT a.id FROM {scan.format('accounts')} a"
    assert rewritten("SELECT app.accounts.secret FROM app.accounts WHERE app.accounts.id = 1") == (
        f"SELECT accounts.secret FROM {scan.format('app.accounts')} AS accounts WHERE accounts.id = 1")
    # A text the splice leaves unreadable to PostgreSQL runs as written, under the output-side rules.
    assert rewritten("TABLE /* c */ accounts") is None


def test_inherited_rules_cite_the_parents_and_never_weaken_a_childs_own() -> None:
    rules = MaskRules.build({"app.cards.pan": "hash", "app.cards_eu.pan": "null", "app.people.*": "redact"})
    got = rules.inherited({"app.cards_eu": ("app.cards",), "app.cards_eu_1": ("app.cards", "app.cards_eu"),
                           "app.vip[1]": ("app.people",)},
                          {"app.cards_eu": ("id", "pan"), "app.cards_eu_1": ("id", "pan"), "app.vip[1]": ("id", "extra")})
    found = got.column("app.cards_eu_1.pan")
    assert found is not None and found.masker == "null" and found.rule == "mask:app.cards_eu.pan"
    assert got.column("app.cards_eu.pan").masker == "null"  # type: ignore[union-attr]
    assert got.column("app.vip[1].id").rule == "mask:app.people.*"  # type: ignore[union-attr]
    # A glob over the parent's columns covers the child's own too (more masked, never less); the
    # child's name is matched literally (`[1]` is no character class).
    assert got.column("app.vip[1].extra").masker == "redact"  # type: ignore[union-attr]
    assert got.column("app.vip1.id") is None
