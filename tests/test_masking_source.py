"""Masking at the source, by effect on the real PostgreSQL and on SQLite: each scan of a relation
with masked columns is rewritten so that the masked value replaces the raw one before anything in
the statement sees it.

The proof is differential: every oracle attack is run, the canary in the masked column is then
changed in the database, and the attack is run again. The answers (rows, or the error message) must
be the same both times — nothing the agent gets depends on the value — and the canary appears in no
answer and nowhere in the audit log. Ordinary queries still return their rows, with masked values.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

import psycopg
from sqlglot import exp

from bastion.policy import analyse
from bastion.policy.masking import MASKERS, Catalog, MaskRules, mask
from bastion.policy.masking.plan import statement_plan
from bastion.policy.masking.source import AtSource, _psycopg_text, _unmasked_pg_scan, hmac_pads, masker_sql
from bastion.server.app import create_server
from bastion.server.config import load
from bastion.store import SqliteAuditStore
from bastion.store import events as ev
from tests.conftest import requirement
from tests.postgres_server import PgServer

pytestmark = pytest.mark.anyio
KEY = "source-mask-key"
# Two canaries that differ in every character, length and first letter (t is ASCII 116: `log(0)`,
# division by zero and a negative `sqrt` fire on it).
CANARY = f"tiger-lily-{uuid.uuid4().hex[:8]}"
OTHER = f"Zebra-{uuid.uuid4().hex[:4]}"
CARD = "4242"

# Oracles over `people.secret` (masked: redact): each would tell something about the value.
ORACLES_PG = [
    "SELECT sqrt(100 - ascii(substr(secret, 1, 1))) FROM people WHERE id = 1",
    "SELECT log(ascii(substr(secret, 1, 1)) - 116) FROM people WHERE id = 1",
    "SELECT chr(ascii(substr(secret, 1, 1)) * 10000000) FROM people WHERE id = 1",
    "SELECT CASE WHEN substr(secret, 1, 1) = 't' THEN secret::int ELSE 0 END FROM people WHERE id = 1",
    "SELECT 1 / (ascii(substr(secret, 1, 1)) - 116) FROM people WHERE id = 1",
    "SELECT 1 FROM people WHERE id = 1 AND 1 / (ascii(secret) - 116) > 0",
    "SELECT secret::int FROM people",
    "SELECT id FROM people ORDER BY id LIMIT (SELECT ascii(secret) - 90 FROM people WHERE id = 1)",
    "SELECT id FROM people ORDER BY id OFFSET (SELECT ascii(substr(secret, 2, 1)) - 90 FROM people WHERE id = 1)",
    "SELECT count(*) FROM people p, generate_series(1, ascii(substr(p.secret, 1, 1))) WHERE p.id = 1",
    "SELECT count(*) FROM people p CROSS JOIN LATERAL generate_series(1, length(p.secret)) g WHERE p.id = 1",
    "SELECT string_agg(secret, ',' ORDER BY id) FROM people",
    "SELECT json_build_object('s', secret)::text, to_jsonb(p)::text, row_to_json(p)::text FROM people p WHERE id = 1",
    "SELECT jsonb_path_query_first(to_jsonb(p), '$.secret')::text FROM people p WHERE id = 1",
    "SELECT id, lag(secret) OVER (ORDER BY id), rank() OVER (ORDER BY secret, id), "
    "first_value(ascii(secret)) OVER () FROM people ORDER BY id",
    "WITH RECURSIVE r(i, c) AS (SELECT 1, substr((SELECT secret FROM people WHERE id = 1), 1, 1) UNION ALL "
    "SELECT i + 1, substr((SELECT secret FROM people WHERE id = 1), i + 1, 1) FROM r WHERE i < 24) "
    "SELECT string_agg(ascii(c)::text, ' ' ORDER BY i) FROM r",
    "SELECT note FROM other WHERE id = 2 UNION ALL SELECT secret FROM people WHERE id = 1",
    "SELECT count(*) FROM people a JOIN other o ON o.note = a.secret",
    "SELECT count(*) FROM people WHERE secret LIKE 't%' OR secret > 'm' OR secret ~ '^t'",
    "SELECT contact, length(contact), ascii(contact) FROM contacts WHERE id = 1",
    "SELECT count(*) FROM contacts WHERE contact LIKE 't%'",
    "WITH s AS (SELECT secret FROM people WHERE id = 1) SELECT ascii(secret), length(secret) FROM s",
    "SELECT (SELECT ascii(secret) FROM people WHERE id = 1) AS a, (SELECT max(secret) FROM people) AS m",
    "SELECT x FROM (SELECT secret AS x FROM people) t ORDER BY x LIMIT 1",
    "SELECT id FROM ONLY people WHERE ascii(secret) = 116",
    "SELECT md5(secret) FROM people WHERE id = 1",
]
ORACLES_SQLITE = [
    "SELECT json_extract('{}', secret) FROM people WHERE id = 1",
    "SELECT CASE WHEN substr(secret, 1, 1) = 't' THEN json(secret) ELSE 0 END FROM people WHERE id = 1",
    "SELECT abs(-9223372036854775807 - unicode(secret) + 116) FROM people WHERE id = 1",
    "SELECT id FROM people ORDER BY id LIMIT (SELECT unicode(secret) - 90 FROM people WHERE id = 1)",
    "SELECT id FROM people ORDER BY id LIMIT 50 OFFSET (SELECT unicode(substr(secret, 2, 1)) - 90 FROM people WHERE id = 1)",
    "SELECT group_concat(secret, ',') FROM people",
    "SELECT json_object('s', secret), json_array(secret) FROM people WHERE id = 1",
    "SELECT id, lag(secret) OVER (ORDER BY id), rank() OVER (ORDER BY secret, id) FROM people ORDER BY id",
    "WITH RECURSIVE r(i, c) AS (SELECT 1, substr((SELECT secret FROM people WHERE id = 1), 1, 1) UNION ALL "
    "SELECT i + 1, substr((SELECT secret FROM people WHERE id = 1), i + 1, 1) FROM r WHERE i < 24) "
    "SELECT group_concat(unicode(c), ' ') FROM r",
    "SELECT note FROM other WHERE id = 2 UNION ALL SELECT secret FROM people WHERE id = 1",
    "SELECT count(*) FROM people a JOIN other o ON o.note = a.secret",
    "SELECT count(*) FROM people WHERE secret LIKE 't%' OR secret > 'm' OR secret GLOB 't*'",
    "SELECT contact, length(contact) FROM contacts WHERE id = 1",
    "SELECT count(*) FROM contacts WHERE contact LIKE 't%'",
    "WITH s AS (SELECT secret FROM people WHERE id = 1) SELECT unicode(secret), length(secret) FROM s",
    "SELECT count(*) FROM people p, json_each(json_array(p.secret)) j WHERE p.id = 1 AND j.value LIKE 't%'",
    "SELECT hex(secret), instr(secret, 'lily') FROM main.people WHERE id = 1",
]


def _answer(result: Any) -> Any:
    """What the agent learnt: the rows, or the error message without its call id and timing."""
    if result.is_error:
        return ("error", re.sub(r"call_id \w+|[\d.]+ ms", "", result.content[0].text))
    return ("rows", result.structured_content["columns"], result.structured_content["rows"])


async def _differential(client: Client, connection: str, oracles: list[str], change: Callable[[str], None],
                        audit: Path) -> list[Any]:
    """Every oracle, with the canary in the database and then with another value: same answers."""
    first = [_answer(await client.call_tool("sql_query", {"connection": connection, "sql": q})) for q in oracles]
    change(OTHER)
    try:
        again = [_answer(await client.call_tool("sql_query", {"connection": connection, "sql": q})) for q in oracles]
    finally:
        change(CANARY)
    for query, one, two in zip(oracles, first, again):
        assert one == two, f"the answer depends on the masked value: {query}\n{one}\n{two}"
        assert CANARY not in str(one) and OTHER not in str(two), (query, one)
    log = " ".join(str(e) for e in SqliteAuditStore(audit).iter_all()) + audit.read_bytes().decode("utf-8", "replace")
    assert CANARY not in log and OTHER not in log
    return first


# -- PostgreSQL -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def src(pg_server: PgServer) -> Iterator[tuple[PgServer, str]]:
    with pg_server.scratch_schema("src", f"""
        CREATE TABLE {{schema}}.people (id int PRIMARY KEY, name text NOT NULL, secret text, card text);
        INSERT INTO {{schema}}.people SELECT g, 'user' || g, '{CANARY}', CASE WHEN g % 2 = 0 THEN '{CARD}' ELSE '99' || g END
          FROM generate_series(1, 30) g;
        CREATE TABLE {{schema}}.other (id int PRIMARY KEY, note text);
        INSERT INTO {{schema}}.other VALUES (1, '{CANARY}'), (2, 'plain note');
        CREATE VIEW {{schema}}.contacts AS SELECT id, secret AS contact FROM {{schema}}.people;
        CREATE TABLE {{schema}}.archive (id int, secret text);
    """) as schema:
        yield pg_server, schema


@pytest.fixture
def pg_config(src: tuple[PgServer, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pg, schema = src
    monkeypatch.setenv("BASTION_TEST_SOURCE_KEY", KEY)
    config = tmp_path / "bastion.toml"
    config.write_text(f"""
[identity]
subject = "alice@example.com"
groups = ["analysts"]

[audit]
path = "bastion-audit.db"

[connections.pg]
kind = "postgres"
target = "{pg.dsn(user=pg.gateway_role)}"
search_path = "{schema}"
accept_rights = ["write-grants"]
mask_key_env = "BASTION_TEST_SOURCE_KEY"
mask = {{ "{schema}.people.secret" = "redact", "{schema}.people.card" = "hash" }}
preset = "read-only"
""")
    return config


@pytest.mark.postgres
@requirement("mask:at-source", "mask:error-values", "mask:audit-masked")
async def test_postgres_oracles_learn_nothing_of_a_value_masked_at_the_source(pg_config: Path, src: tuple[PgServer, str]) -> None:
    pg, schema = src
    # Straight to the server, the oracles do read the canary.
    assert pg.execute(f"SELECT count(*) FROM {schema}.people a JOIN {schema}.other o ON o.note = a.secret") == [(30,)]

    def change(value: str) -> None:
        pg.execute(f"UPDATE {schema}.people SET secret = %s", (value,))
        pg.execute(f"UPDATE {schema}.other SET note = %s WHERE id = 1", (value,))

    async with Client(create_server(load(pg_config))) as client:
        answers = await _differential(client, "pg", ORACLES_PG, change, pg_config.parent / "bastion-audit.db")
    # The join on the masked column found no match ('[redacted]' is no note), and the count over
    # generate_series is the code of '[' — answers about the masked value, not the canary.
    assert answers[ORACLES_PG.index("SELECT count(*) FROM people a JOIN other o ON o.note = a.secret")] == ("rows", ["count"], [[0]])
    assert answers[9] == ("rows", ["count"], [[ord("[")]])


@pytest.mark.postgres
@requirement("mask:at-source", "mask:audit-masked")
async def test_postgres_ordinary_reads_return_the_same_rows_masked_and_hash_joins_work(pg_config: Path, src: tuple[PgServer, str]) -> None:
    pg, schema = src
    raw = pg.execute(f"SELECT id, name, secret, card FROM {schema}.people ORDER BY id")
    async with Client(create_server(load(pg_config))) as client:
        got = await client.call_tool("sql_query", {"connection": "pg", "sql": "SELECT * FROM people ORDER BY id"})
        assert not got.is_error, got.content[0].text
        assert got.structured_content["columns"] == ["id", "name", "secret", "card"]
        # The SQL hash at the source is the Python masker's, under the connection's key.
        assert got.structured_content["rows"] == [[i, n, "[redacted]", mask("hash", c, KEY.encode())] for i, n, _, c in raw]
        # Equality on a hashed column, a join on it and GROUP BY keep working: equal values hash alike.
        pairs = await client.call_tool("sql_query", {"connection": "pg", "sql":
                                                     "SELECT count(*) FROM people a JOIN people b ON a.card = b.card AND a.id < b.id"})
        assert pairs.structured_content["rows"] == [[15 * 14 // 2]]
        groups = await client.call_tool("sql_query", {"connection": "pg", "sql":
                                                      "SELECT card, count(*) FROM people GROUP BY card HAVING count(*) > 1"})
        assert groups.structured_content["rows"] == [[mask("hash", CARD, KEY.encode()), 15]]
        # The record keeps the agent's text; the text that ran is beside it, without the key.
        text = "SELECT name, secret FROM people WHERE id = 1"
        await client.call_tool("sql_query", {"connection": "pg", "sql": text})
    events = list(SqliteAuditStore(pg_config.parent / "bastion-audit.db").iter_all())
    (requested,) = [e for e in events if e["type"] == ev.REQUESTED and e.get("text") == text]
    (rewritten,) = requested["facts"]["masking"]["at_source"]  # type: ignore[index]
    assert rewritten["relations"] == [f"{schema}.people"] and "'[redacted]'" in rewritten["text"]
    log = " ".join(str(e) for e in events)
    assert KEY not in log and CANARY not in log


# -- SQLite -----------------------------------------------------------------------------------------

@pytest.fixture
def sqlite_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BASTION_TEST_SOURCE_KEY", KEY)
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(f"""
            CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, secret TEXT, card TEXT);
            CREATE TABLE other (id INTEGER PRIMARY KEY, note TEXT);
            CREATE TABLE archive (id INTEGER, secret TEXT);
            INSERT INTO other VALUES (1, '{CANARY}'), (2, 'plain note');
            CREATE VIEW contacts AS SELECT id, secret AS contact FROM people;
        """)
        conn.executemany("INSERT INTO people VALUES (?, ?, ?, ?)",
                         [(g, f"user{g}", CANARY, CARD if g % 2 == 0 else f"99{g}") for g in range(1, 31)])
    config = tmp_path / "bastion.toml"
    masks = '{ "main.people.secret" = "redact", "main.people.card" = "hash", "main.archive.secret" = "redact" }'
    config.write_text(f"""
[identity]
subject = "alice@example.com"

[audit]
path = "bastion-audit.db"

[connections.app]
kind = "sqlite"
target = "{db}"
mask_key_env = "BASTION_TEST_SOURCE_KEY"
mask = {masks}
preset = "read-only"

[connections.rw]
kind = "sqlite"
target = "{db}"
mask_key_env = "BASTION_TEST_SOURCE_KEY"
mask = {masks}
preset = "read-write"
""")
    return config


@requirement("mask:at-source", "mask:error-values", "mask:audit-masked")
async def test_sqlite_oracles_learn_nothing_of_a_value_masked_at_the_source(sqlite_config: Path) -> None:
    db = sqlite_config.parent / "app.db"

    def change(value: str) -> None:
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE people SET secret = ?", (value,))
            conn.execute("UPDATE other SET note = ? WHERE id = 1", (value,))

    async with Client(create_server(load(sqlite_config))) as client:
        answers = await _differential(client, "app", ORACLES_SQLITE, change, sqlite_config.parent / "bastion-audit.db")
    assert answers[ORACLES_SQLITE.index("SELECT count(*) FROM people a JOIN other o ON o.note = a.secret")][2] == [[0]]


@requirement("mask:at-source", "mask:write-flow")
async def test_sqlite_reads_are_masked_at_the_source_and_writes_run_as_written(sqlite_config: Path) -> None:
    db = sqlite_config.parent / "app.db"
    async with Client(create_server(load(sqlite_config))) as client:
        got = await client.call_tool("sql_query", {"connection": "app", "sql": "SELECT p.* FROM people p ORDER BY p.id"})
        assert not got.is_error, got.content[0].text
        assert got.structured_content["rows"] == [
            [g, f"user{g}", "[redacted]", mask("hash", CARD if g % 2 == 0 else f"99{g}", KEY.encode())] for g in range(1, 31)]
        pairs = await client.call_tool("sql_query", {"connection": "app", "sql":
                                                     "SELECT count(*) FROM people a JOIN people b ON a.card = b.card AND a.id < b.id"})
        assert pairs.structured_content["rows"] == [[15 * 14 // 2]]
        # A write's sources are not rewritten: a copy into a column masked as strongly keeps the
        # real value (the write-flow rule allows it), and a copy into an unmasked one is denied.
        copied = await client.call_tool("sql_query", {"connection": "rw", "sql": "INSERT INTO archive SELECT id, secret FROM people WHERE id = 1"})
        assert not copied.is_error, copied.content[0].text
        leaked = await client.call_tool("sql_query", {"connection": "rw", "sql": "INSERT INTO other (id, note) SELECT 9, secret FROM people WHERE id = 1"})
        assert leaked.is_error and "mask:main.people.secret" in leaked.content[0].text
        # A condition of a write sees raw values, so probing there is still denied.
        probe = await client.call_tool("sql_query", {"connection": "rw", "sql": "DELETE FROM archive WHERE secret LIKE 't%'"})
        assert probe.is_error and "mask:main.archive.secret" in probe.content[0].text
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT secret FROM archive").fetchall() == [(CANARY,)]
        assert conn.execute("SELECT count(*) FROM other").fetchone() == (2,)


# -- each masker's SQL against the Python masker, and the rewrite itself ---------------------------

VALUES = ["ada@example.com", "+1-555-123-4567", "@", "@@", "a@", "x", "ab", "abc", "héllo@wörld.de", "", "1234", None,
          "a@b@c.org", "100% off", "'quoted'"]


@pytest.mark.postgres
@requirement("mask:at-source")
def test_each_maskers_sql_gives_the_python_maskers_value(pg_server: PgServer) -> None:
    key = KEY.encode()
    lite = sqlite3.connect(":memory:")
    lite.create_function("bastion_mask_hash_test", 1, lambda v: mask("hash", v, key), deterministic=True)
    column = exp.column("v", quoted=True)
    with psycopg.connect(pg_server.dsn()) as pg:
        for masker in MASKERS:
            for keyed in (True, False):
                on_sqlite, _ = masker_sql(masker, column, "sqlite", keyed=keyed, hash_function="bastion_mask_hash_test")
                on_pg, uses_key = masker_sql(masker, column, "postgres", keyed=keyed)
                query = _psycopg_text(f"SELECT {on_pg.sql('postgres')} FROM (SELECT CAST(%(v)s AS text) AS v) AS t")
                query = query.replace("%%(v)s", "%(v)s")
                for value in VALUES:
                    want = mask(masker, value, key if keyed else None)
                    got_sqlite = lite.execute(f"SELECT {on_sqlite.sql('sqlite')} FROM (SELECT ? AS v)", (value,)).fetchone()[0]
                    got_pg = pg.execute(query, {"v": value, **(hmac_pads(key) if uses_key else {})}).fetchone()[0]
                    assert want == got_sqlite == got_pg, (masker, keyed, value, want, got_sqlite, got_pg)


def test_the_rewrite_masks_every_scan_and_leaves_ctes_writes_and_the_rest_of_the_text_alone() -> None:
    catalog = Catalog.build("postgres", "app", {"app.people": ("id", "secret"), "app.other": ("id", "note")})
    rules = MaskRules.build({"app.people.secret": "redact"})
    at = AtSource(keyed=False)

    def rewritten(text: str) -> str | None:
        found = statement_plan(analyse(text, "postgres", "app").statements[0], catalog, rules, at)
        return found.rewrites[0].text if found.rewrites else None

    scan = '(SELECT "id", CASE WHEN "secret" IS NULL THEN NULL ELSE \'[redacted]\' END AS "secret" FROM {})'
    assert rewritten("SELECT p.secret FROM people p WHERE p.secret LIKE 'a%'") == (
        f"SELECT p.secret FROM {scan.format('people')} p WHERE p.secret LIKE 'a%'")
    assert rewritten("SELECT * FROM ONLY app.people") == f"SELECT * FROM {scan.format('ONLY app.people')} AS people"
    # A CTE named like the table: its body reads the table (masked), the main query reads the CTE.
    assert rewritten("WITH p AS (SELECT * FROM people) SELECT * FROM p") == (
        f"WITH p AS (SELECT * FROM {scan.format('people')} AS people) SELECT * FROM p")
    # PostgreSQL's own parser must agree that every scan is masked: it cannot tell the CTE `people`
    # from the table without scoping, so that text runs as written under the output-side rules.
    assert rewritten("WITH people AS (SELECT * FROM people) SELECT * FROM people") is None
    assert _unmasked_pg_scan(f"SELECT * FROM {scan.format('people')} a, app.people b", frozenset({"app.people"}),
                             catalog, rules) == "app.people"
    # Only the select list the rewrite builds counts as masked: a look-alike that passes the value through does not.
    look_alike = '(SELECT "id", CASE WHEN "secret" IS NULL THEN NULL ELSE "secret" END AS "secret" FROM people) AS p'
    assert _unmasked_pg_scan(f"SELECT * FROM {look_alike}", frozenset({"app.people"}), catalog, rules) == "app.people"
    assert _unmasked_pg_scan(f"SELECT * FROM {scan.format('people')} AS p", frozenset({"app.people"}), catalog, rules) is None
    # Every branch, subquery and lateral.
    text = rewritten("SELECT note FROM other UNION SELECT (SELECT max(secret) FROM people) FROM other o, "
                     "LATERAL (SELECT secret FROM people q WHERE q.id = o.id) l")
    assert text is not None and text.count(scan.format("people")) == 2
    # Writes, locking reads, TABLESAMPLE and texts naming Bastion's own parameters run as written.
    for text in ("SELECT secret, bastion_mask_hash_0011('x') FROM people","UPDATE other SET note = 'x' WHERE id IN (SELECT id FROM people WHERE secret IS NULL)",
                 "SELECT id FROM people FOR UPDATE", "SELECT secret FROM people TABLESAMPLE SYSTEM (50)",
                 "EXPLAIN ANALYZE SELECT secret FROM people"):
        assert rewritten(text) is None, text



@requirement("mask:at-source")
async def test_the_sqlite_hash_function_cannot_hash_a_value_of_the_agents_choosing(sqlite_config: Path) -> None:
    async with Client(create_server(load(sqlite_config))) as client:
        names = {}
        for connection in ("app", "rw"):  # `check` shows the text that runs, the function's name in it
            checked = (await client.call_tool("check", {"connection": connection, "text": "SELECT card FROM people"})).structured_content
            (rewritten,) = checked["facts"]["masking"]["at_source"]
            names[connection] = re.search(r"bastion_mask_hash_[0-9a-f]+", rewritten["text"], re.I).group()  # type: ignore[union-attr]
        # In the statement masked at the source, or beside it in the same call (a write that would
        # store the hash of a chosen value where it can be read back).
        for connection, text in (("app", f"SELECT card, {names['app']}('{CARD}') FROM people WHERE id = 2"),
                                 ("rw", f"INSERT INTO other VALUES (5, {names['rw']}('{CARD}')); SELECT card FROM people WHERE id = 2")):
            refused = await client.call_tool("sql_query", {"connection": connection, "sql": text})
            assert refused.is_error, (text, refused.content[0].text)
            assert mask("hash", CARD, KEY.encode()) not in refused.content[0].text
    with sqlite3.connect(sqlite_config.parent / "app.db") as conn:
        assert conn.execute("SELECT count(*) FROM other WHERE id = 5").fetchone() == (0,)
