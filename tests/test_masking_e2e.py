"""Masking end to end through MCP: the demo SQLite database, the real PostgreSQL and a local shell.
The agent and the audit log get the same masked result, and the log never holds a masked value."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from mcp import Client

from bastion.policy.masking import mask
from bastion.server.app import create_server
from bastion.server.config import load
from bastion.store import SqliteAuditStore
from bastion.store import events as ev
from tests.conftest import requirement
from tests.postgres_server import PgServer

pytestmark = pytest.mark.anyio
KEY = "e2e-mask-key"
CARD = "4111 1111 1111 1111"

CONFIG = """
[identity]
subject = "demo-agent"
groups = ["developers"]

[audit]
path = "bastion-audit.db"

[connections.demo]
kind = "sqlite"
target = "demo.db"
detectors = ["all"]
mask_key_env = "BASTION_TEST_MASK_KEY"
mask = { "main.customers.email" = "redact", "customers.phone" = "partial", "main.orders.card_last4" = "hash" }

  [[connections.demo.rules]]
  id = "developers-read"
  preset = "read-only"
  groups = ["developers"]
  max_rows = 500

[connections.rw]
kind = "sqlite"
target = "demo.db"
mask_key_env = "BASTION_TEST_MASK_KEY"
mask = { "main.customers.email" = "redact", "main.customers.phone" = "partial", "main.orders.card_last4" = "hash" }
preset = "read-write"

[connections.workspace]
kind = "local"
cwd = "ws"
detectors = ["all"]
preset = "inspect"
"""


@pytest.fixture
def masked_config(tmp_path: Path, demo_db: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BASTION_TEST_MASK_KEY", KEY)
    db = tmp_path / "demo.db"
    db.write_bytes(demo_db.read_bytes())
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE VIEW customer_contacts AS SELECT id, name, email AS contact FROM customers")
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes VALUES (1, ?), (2, 'shipped on time')",
                     (f"customer paid with {CARD}, reach them at someone@example.org",))
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "deploy.cfg").write_text("DB_HOST=db.internal\nDB_PASSWORD=hunter2-secret\n"
                                         "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n")
    config = tmp_path / "bastion.toml"
    config.write_text(CONFIG)
    return config


@pytest.fixture
async def client(masked_config: Path) -> AsyncIterator[Client]:
    async with Client(create_server(load(masked_config))) as c:
        yield c


def sensitive_values(db: Path) -> list[str]:
    """Every email and phone number in the demo database: none of them may reach the log."""
    with sqlite3.connect(db) as conn:
        return [v for row in conn.execute("SELECT email, phone FROM customers") for v in row]


def audit_text(config: Path) -> str:
    """The whole audit log as text: every event, and the raw bytes of its database file."""
    events = " ".join(str(e) for e in SqliteAuditStore(config.parent / "bastion-audit.db").iter_all())
    return events + (config.parent / "bastion-audit.db").read_bytes().decode("utf-8", "replace")


def finished(config: Path) -> list[dict[str, object]]:
    return [e for e in SqliteAuditStore(config.parent / "bastion-audit.db").iter_all() if e["type"] == ev.FINISHED]


@requirement("mask:audit-masked", "mask:star-expansion")
async def test_the_agent_and_the_log_get_the_same_masked_rows(client: Client, masked_config: Path) -> None:
    result = await client.call_tool("sql_query", {"connection": "demo", "sql": "SELECT * FROM customers ORDER BY id LIMIT 200"})
    assert not result.is_error, result.content[0].text
    rows = result.structured_content["rows"]
    assert result.structured_content["columns"] == ["id", "name", "email", "phone", "city", "created_at"]
    assert {r[2] for r in rows} == {"[redacted]"} and all(r[3].startswith("****") and len(r[3]) == 8 for r in rows)
    assert rows[0][1] and rows[0][4]  # the other columns are untouched
    assert "masked: email (redact), phone (partial)" in result.content[0].text
    (event,) = [e for e in finished(masked_config) if "result" in e and e.get("tool") == "sql_query"]
    assert event["result"]["rows"] == rows  # type: ignore[index]
    assert event["result"]["masking"] == {"columns": {  # type: ignore[comparison-overlap]
        "email": {"masker": "redact", "rules": ["mask:main.customers.email"], "from": ["main.customers.email"], "at": "source"},
        "phone": {"masker": "partial", "rules": ["mask:main.customers.phone"], "from": ["main.customers.phone"], "at": "source"}}}
    log = audit_text(masked_config)
    leaked = [v for v in sensitive_values(masked_config.parent / "demo.db") if v in log]
    assert not leaked, leaked[:3]


@requirement("mask:lineage", "mask:views")
async def test_derived_outputs_and_views_are_masked(client: Client, masked_config: Path) -> None:
    sql = ("SELECT lower(c.email) AS e, c.name || ' <' || c.email || '>' AS who, v.contact, "
           "(SELECT max(phone) FROM customers) AS top_phone FROM customers c JOIN customer_contacts v ON v.id = c.id LIMIT 20")
    result = await client.call_tool("sql_query", {"connection": "demo", "sql": sql})
    assert not result.is_error, result.content[0].text
    for e, who, contact, top in result.structured_content["rows"]:
        # Masked at the source: what is built from the email is built from its masked value.
        assert e == contact == "[redacted]" and who.endswith(" <[redacted]>") and top.startswith("****")
    log = audit_text(masked_config)
    assert not [v for v in sensitive_values(masked_config.parent / "demo.db") if v in log]


async def test_a_hashed_column_keeps_equal_values_equal_across_calls(client: Client) -> None:
    sql = "SELECT id, card_last4 FROM orders WHERE id IN (1, 2) ORDER BY id"
    first = (await client.call_tool("sql_query", {"connection": "demo", "sql": sql})).structured_content["rows"]
    again = (await client.call_tool("sql_query", {"connection": "demo", "sql": sql})).structured_content["rows"]
    assert first == again
    assert all(h.startswith("h:") for _, h in first)


@requirement("mask:inference-channel")
async def test_probing_a_redacted_column_is_denied_and_says_why(client: Client, masked_config: Path) -> None:
    # A read is masked at the source: its condition sees '[redacted]', never the address.
    probed = await client.call_tool("sql_query", {"connection": "demo",
                                                  "sql": "SELECT count(*) FROM customers WHERE email LIKE 'user1%'"})
    assert not probed.is_error and probed.structured_content["rows"] == [[0]], probed.content[0].text
    # A write runs as written (its sources are what it writes): there the channel is still denied.
    refused = await client.call_tool("sql_query", {"connection": "rw",
                                                   "sql": "UPDATE customers SET name = name WHERE email LIKE 'user1%'"})
    assert refused.is_error
    text = refused.content[0].text
    assert "`main.customers.email` is masked (redact)" in text and "mask:main.customers.email" in text
    assert "mask_predicates" in text
    (denied,) = [e for e in SqliteAuditStore(masked_config.parent / "bastion-audit.db").iter_all() if e["type"] == ev.DENIED]
    assert denied["decision"]["rules"] == ["mask:main.customers.email"]  # type: ignore[index]
    allowed = await client.call_tool("sql_query", {"connection": "demo",
                                                   "sql": "SELECT count(*) FROM customers WHERE phone LIKE '+1-555-1%'"})
    assert not allowed.is_error  # partial: probing is allowed by default


async def test_check_says_which_columns_are_masked(client: Client) -> None:
    result = await client.call_tool("check", {"connection": "demo", "text": "SELECT name, email, phone FROM customers"})
    outcome = result.structured_content
    assert outcome["verdict"] == "allow"
    masked = {c["column"]: c["masker"] for c in outcome["facts"]["masking"]["columns"]}
    assert masked == {"email": "redact", "phone": "partial"}
    probe = (await client.call_tool("check", {"connection": "demo", "text": "SELECT id FROM customers WHERE email = 'x'"})).structured_content
    # Masked at the source, the comparison sees the masked value: allowed, still listed, and the
    # text that runs is shown.
    assert probe["verdict"] == "allow" and probe["facts"]["masking"]["predicates"] == [
        {"column": "main.customers.email", "use": "equality", "clause": "where"}]
    (rewritten,) = probe["facts"]["masking"]["at_source"]
    assert rewritten["relations"] == ["main.customers"] and "'[redacted]'" in rewritten["text"]


@requirement("mask:views")
async def test_describe_says_which_columns_are_masked(client: Client) -> None:
    tables = {t["name"]: t for t in (await client.call_tool("describe", {"connection": "demo"})).structured_content["tables"]}
    masked = {t: {c["name"]: c["masked"] for c in tables[t]["columns"] if c.get("masked")} for t in tables}
    assert masked["customers"] == {"email": "redact", "phone": "partial"}
    assert masked["orders"] == {"card_last4": "hash"}
    assert masked["customer_contacts"] == {"contact": "redact"}
    assert masked["products"] == {} and masked["order_totals"] == {}


@requirement("mask:detectors", "mask:audit-masked")
async def test_detectors_catch_what_no_column_mask_covers(client: Client, masked_config: Path) -> None:
    result = await client.call_tool("sql_query", {"connection": "demo", "sql": "SELECT id, body FROM notes ORDER BY id"})
    assert result.structured_content["rows"] == [
        [1, "customer paid with [redacted:card], reach them at [redacted:email]"], [2, "shipped on time"]]
    assert "redacted: 1 card, 1 email" in result.content[0].text
    event = [e for e in finished(masked_config) if e.get("tool") == "sql_query"][-1]
    assert event["result"]["masking"] == {"detections": {"card": 1, "email": 1}}
    log = audit_text(masked_config)
    assert CARD not in log and "someone@example.org" not in log


@requirement("mask:detectors", "mask:audit-masked")
async def test_shell_output_goes_through_the_detectors(client: Client, masked_config: Path) -> None:
    result = await client.call_tool("shell_run", {"connection": "workspace", "command": "cat deploy.cfg"})
    assert not result.is_error, result.content[0].text
    stdout = result.structured_content["stdout"]
    assert stdout == ("DB_HOST=db.internal\nDB_PASSWORD=[redacted:password]\n"
                      "AWS_ACCESS_KEY_ID=[redacted:cloud_key]\n")
    event = [e for e in finished(masked_config) if e.get("tool") == "shell_run"][-1]
    assert event["result"]["stdout"] == stdout  # type: ignore[index]
    assert event["result"]["masking"] == {"detections": {"cloud_key": 1, "password": 1}}
    log = audit_text(masked_config)
    assert "hunter2-secret" not in log and "AKIAIOSFODNN7EXAMPLE" not in log


@requirement("mask:fail-closed", "mask:views")
async def test_a_view_created_after_start_is_followed(client: Client, masked_config: Path) -> None:
    await client.call_tool("sql_query", {"connection": "demo", "sql": "SELECT 1 FROM customers LIMIT 1"})  # catalog read
    with sqlite3.connect(masked_config.parent / "demo.db") as conn:
        conn.execute("CREATE VIEW fresh AS SELECT id, upper(email) AS shout FROM customers")
    result = await client.call_tool("sql_query", {"connection": "demo", "sql": "SELECT shout FROM fresh LIMIT 3"})
    assert not result.is_error, result.content[0].text
    assert {r[0] for r in result.structured_content["rows"]} == {"[redacted]"}


@requirement("mask:returning", "mask:write-flow")
async def test_returning_is_masked_and_copying_a_masked_value_is_denied(client: Client, masked_config: Path) -> None:
    done = await client.call_tool("sql_query", {"connection": "rw",
                                                "sql": "UPDATE customers SET city = 'Oslo' WHERE id = 1 RETURNING id, email, phone"})
    assert not done.is_error, done.content[0].text
    ((ident, email, phone),) = done.structured_content["rows"]
    assert (ident, email) == (1, "[redacted]") and phone.startswith("****")
    refused = await client.call_tool("sql_query", {"connection": "rw", "sql": "UPDATE customers SET name = email WHERE id = 2"})
    assert refused.is_error and "reading it back would bypass the mask" in refused.content[0].text
    with sqlite3.connect(masked_config.parent / "demo.db") as conn:
        assert "@" not in conn.execute("SELECT name FROM customers WHERE id = 2").fetchone()[0]
    assert not [v for v in sensitive_values(masked_config.parent / "demo.db") if v in audit_text(masked_config)]


def test_a_hash_mask_without_a_key_is_a_config_error(tmp_path: Path) -> None:
    from bastion.policy.errors import ConfigError

    config = tmp_path / "bastion.toml"
    config.write_text('[connections.demo]\nkind = "sqlite"\ntarget = "demo.db"\npreset = "read-only"\n'
                      'mask = { "main.orders.card_last4" = "hash" }\n')
    with pytest.raises(ConfigError, match="the `hash` masker needs a key"):
        load(config)


# -- the real PostgreSQL ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def crm(pg_server: PgServer) -> Iterator[PgServer]:
    pg_server.execute("""
        DROP SCHEMA IF EXISTS crm CASCADE;
        CREATE SCHEMA crm;
        CREATE TABLE crm.customers (id int PRIMARY KEY, name text, email text, phone text, ssn text);
        INSERT INTO crm.customers SELECT g, 'Customer ' || g, 'person' || g || '@corp.example', '+1-555-010-' || lpad(g::text, 4, '0'),
               lpad((100 + g)::text, 3, '0') || '-45-' || lpad(g::text, 4, '0') FROM generate_series(1, 50) g;
        CREATE VIEW crm.contacts AS SELECT id, email AS address FROM crm.customers;
        CREATE MATERIALIZED VIEW crm.domains AS SELECT id, split_part(email, '@', 2) AS domain FROM crm.customers;
    """)
    role = pg_server.gateway_role
    pg_server.execute(f'GRANT USAGE ON SCHEMA crm TO "{role}"; GRANT SELECT ON ALL TABLES IN SCHEMA crm TO "{role}"')
    yield pg_server


@pytest.fixture
def crm_config(crm: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BASTION_TEST_MASK_KEY", KEY)
    config = tmp_path / "bastion.toml"
    config.write_text(f"""
[identity]
subject = "alice@example.com"
groups = ["analysts"]

[connections.crm]
kind = "postgres"
target = "{crm.dsn(user=crm.gateway_role)}"
search_path = "crm"
# The session's shared gateway login is granted writes by tests/test_postgres.py; these rules only read.
accept_rights = ["write-grants"]
detectors = ["all"]
mask_key_env = "BASTION_TEST_MASK_KEY"
mask = {{ "crm.customers.email" = "redact", "customers.phone" = "hash" }}

  [[connections.crm.rules]]
  id = "analysts"
  preset = "read-only"
  groups = ["analysts"]
  read_tables = ["crm.*"]
""")
    return config


@pytest.mark.postgres
@requirement("mask:audit-masked", "mask:views", "mask:detectors")
async def test_postgres_masks_columns_views_and_materialized_views(crm_config: Path, crm: PgServer) -> None:
    async with Client(create_server(load(crm_config))) as client:
        rows = await client.call_tool("sql_query", {"connection": "crm", "sql":
                                                    "SELECT c.id, c.email, c.phone, c.ssn, v.address, d.domain, row_to_json(c) AS whole "
                                                    "FROM customers c JOIN contacts v USING (id) JOIN domains d USING (id) ORDER BY c.id"})
        assert not rows.is_error, rows.content[0].text
        for ident, email, phone, ssn, address, domain, whole in rows.structured_content["rows"]:
            assert email == address == domain == "[redacted]"
            # The hash in SQL at the source is the Python masker's.
            assert phone == mask("hash", f"+1-555-010-{ident:04d}", KEY.encode())
            assert ssn == "[redacted:ssn]"  # no column mask: the detector caught it
            # The whole row is the masked row (the detectors still run over it).
            assert whole["email"] == "[redacted]" and whole["phone"] == phone and whole["ssn"] == "[redacted:ssn]", whole
        # The view's column is masked where the view is scanned: the condition sees '[redacted]'.
        probe = await client.call_tool("sql_query", {"connection": "crm", "sql": "SELECT id FROM contacts WHERE address LIKE 'person1%'"})
        assert not probe.is_error and probe.structured_content["rows"] == [], probe.content[0].text
        described = (await client.call_tool("describe", {"connection": "crm"})).structured_content["tables"]
        masked = {(t["name"], c["name"]): c["masked"] for t in described for c in t["columns"] if c.get("masked")}
        assert masked == {("customers", "email"): "redact", ("customers", "phone"): "hash",
                          ("contacts", "address"): "redact", ("domains", "domain"): "redact"}
    log = audit_text(crm_config)
    values = [v for row in crm.execute("SELECT email, phone, ssn FROM crm.customers") for v in row]
    assert not [v for v in values if v in log]
