"""Every refusal says what would pass, concretely: a scripted set of realistic refused calls on the
demo, each answered with a hint from which the passing call follows, and that passing call passes.

A case is (refused call, the rule that refused, words its hint must hold, the call the hint leads
to). The refused call goes through the real MCP tools on the demo (`sql_query`, `shell_run`,
`describe`); the passing call runs too (SQL reads, describe) or, where running would write or hold
for an approver, is checked with the `check` tool and must not be denied. Policy-level refusals
come from the guard; database refusals of what the policy let through are mapped to `engine:*`
rules (policy/hints.py). Shell hints come from policy/shell.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from bastion.policy import Identity
from bastion.server.app import create_server
from bastion.server.config import load

pytestmark = pytest.mark.anyio
MAINTAINER = Identity("mia", frozenset({"developers", "maintainers"}))


@dataclass(frozen=True)
class Case:
    title: str
    tool: str
    args: dict[str, Any]
    rule: str  # in the refusal's `(rule: ...)`
    hint: tuple[str, ...]  # words the hint holds, from which the passing call follows
    passing: tuple[str, dict[str, Any]]  # run it (sql_query reads, describe) or check it (anything else)
    who: Identity | None = None  # None: the demo's own identity (demo-agent, developers)


def sql(text: str) -> dict[str, Any]:
    return {"connection": "demo", "sql": text}


def sh(command: str, **extra: Any) -> dict[str, Any]:
    return {"connection": "workspace", "command": command, **extra}


def describe(table: str | None = None) -> tuple[str, dict[str, Any]]:
    return ("describe", {"connection": "demo", **({"table": table} if table else {})})


def query(text: str) -> tuple[str, dict[str, Any]]:
    return ("sql_query", sql(text))


def check_sql(text: str) -> tuple[str, dict[str, Any]]:
    return ("check", {"connection": "demo", "text": text})


def check_sh(command: str) -> tuple[str, dict[str, Any]]:
    return ("check", {"connection": "workspace", "text": command})


D = 'describe(connection="demo"'
CASES = [
    # -- catalog queries: describe gives the same facts ---------------------------------------------
    Case("PRAGMA table_info", "sql_query", sql("PRAGMA table_info(orders)"), "guard:opaque", (f'{D}, table="orders")',), describe("orders")),
    Case("PRAGMA table_info quoted", "sql_query", sql("PRAGMA table_info('customers')"), "guard:opaque", (f'{D}, table="customers")',), describe("customers")),
    Case("PRAGMA index_list", "sql_query", sql("PRAGMA index_list(orders)"), "guard:opaque", (f'{D}, table="orders")',), describe("orders")),
    Case("PRAGMA foreign_key_list", "sql_query", sql("PRAGMA foreign_key_list(order_items)"), "guard:opaque", (f'{D}, table="order_items")',), describe("order_items")),
    Case("pragma_table_info()", "sql_query", sql("SELECT * FROM pragma_table_info('orders')"), "engine:catalog", (f'{D}, table="orders")',), describe("orders")),
    Case("pragma_table_info() columns", "sql_query", sql("SELECT name, type FROM pragma_table_info('products')"), "engine:catalog", (f'{D}, table="products")',), describe("products")),
    Case("information_schema.columns", "sql_query", sql("SELECT * FROM information_schema.columns"), "engine:catalog", (f"{D})",), describe()),
    Case("information_schema for one table", "sql_query", sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'orders'"), "engine:catalog", (f'{D}, table="orders")',), describe("orders")),
    Case("information_schema.tables", "sql_query", sql("SELECT table_name FROM information_schema.tables"), "engine:catalog", (f"{D})",), describe()),
    Case("SHOW TABLES", "sql_query", sql("SHOW TABLES"), "guard:opaque", (f"{D})",), describe()),
    Case("DESCRIBE orders", "sql_query", sql("DESCRIBE orders"), "guard:", (f'{D}, table="orders")',), describe("orders")),
    Case("psql \\d table", "sql_query", sql("\\d customers"), "guard:parse-error", (f'{D}, table="customers")',), describe("customers")),
    Case("psql \\dt", "sql_query", sql("\\dt"), "guard:parse-error", (f"{D})",), describe()),
    # -- names that do not exist: what does, with a did-you-mean -------------------------------------
    Case("misspelt table", "sql_query", sql("SELECT * FROM ordrs LIMIT 5"), "engine:no-such-table", ("did you mean `main.orders`",), query("SELECT * FROM orders LIMIT 5")),
    Case("singular table", "sql_query", sql("SELECT id, name FROM customer"), "engine:no-such-table", ("did you mean `main.customers`",), query("SELECT id, name FROM customers")),
    Case("product for products", "sql_query", sql("SELECT name, price FROM product LIMIT 3"), "engine:no-such-table", ("did you mean `main.products`",), query("SELECT name, price FROM products LIMIT 3")),
    Case("order_item for order_items", "sql_query", sql("SELECT count(*) FROM order_item"), "engine:no-such-table", ("did you mean `main.order_items`",), query("SELECT count(*) FROM order_items")),
    Case("a table from another app", "sql_query", sql("SELECT * FROM users"), "engine:no-such-table", ("Tables: main.customers", "main.orders"), query("SELECT id, name FROM customers LIMIT 5")),
    Case("misspelt column", "sql_query", sql("SELECT nme FROM customers"), "engine:no-such-column", ("did you mean `name`",), query("SELECT name FROM customers")),
    Case("statuss", "sql_query", sql("SELECT id, statuss FROM orders"), "engine:no-such-column", ("did you mean `status`",), query("SELECT id, status FROM orders")),
    Case("prce", "sql_query", sql("SELECT name, prce FROM products"), "engine:no-such-column", ("did you mean `price`",), query("SELECT name, price FROM products")),
    Case("unitprice", "sql_query", sql("SELECT quantity * unitprice FROM order_items"), "engine:no-such-column", ("did you mean `unit_price`",), query("SELECT quantity * unit_price FROM order_items")),
    Case("customer for customer_id", "sql_query", sql("SELECT customer FROM orders LIMIT 3"), "engine:no-such-column", ("did you mean `customer_id`",), query("SELECT customer_id FROM orders LIMIT 3")),
    Case("created for created_at", "sql_query", sql("SELECT created FROM customers"), "engine:no-such-column", ("did you mean `created_at`",), query("SELECT created_at FROM customers")),
    Case("a column of another table", "sql_query", sql("SELECT category FROM orders"), "engine:no-such-column", ("Columns of main.orders: id, customer_id, status",), query("SELECT status FROM orders")),
    # -- writes: the rule that refused and what it needs ---------------------------------------------
    Case("UPDATE without WHERE", "sql_query", sql("UPDATE orders SET status = 'shipped'"), "developers-update-orders:unfiltered", ("Add a WHERE clause",), check_sql("UPDATE orders SET status = 'shipped' WHERE id = 7")),
    Case("UPDATE of a table the rule does not write", "sql_query", sql("UPDATE customers SET city = 'Oslo' WHERE id = 3"), "developers-update-orders:table", ("Writable tables: main.orders",), check_sql("UPDATE orders SET status = 'paid' WHERE id = 3")),
    # Two rules cover UPDATE but not products: the first of them explains (not developers-read's kinds).
    Case("maintainer: UPDATE products", "sql_query", sql("UPDATE products SET price = 10 WHERE id = 1"), "developers-update-orders:table", ("does not allow writing `main.products`", "Writable tables: main.orders"), check_sql("UPDATE orders SET status = 'paid' WHERE id = 1"), MAINTAINER),
    Case("maintainer: DELETE a product", "sql_query", sql("DELETE FROM products WHERE id = 3"), "maintainers-write:table", ("Writable tables: main.orders, main.order_items",), check_sql("DELETE FROM order_items WHERE product_id = 3"), MAINTAINER),
    Case("maintainer: INSERT a product", "sql_query", sql("INSERT INTO products (name, category, price) VALUES ('Mouse', 'hardware', 25)"), "maintainers-write:table", ("Writable tables: main.orders, main.order_items",), check_sql("INSERT INTO order_items (order_id, product_id, quantity, unit_price) VALUES (1, 1, 1, 129)"), MAINTAINER),
    # -- the wrong tool or connection ----------------------------------------------------------------
    Case("an unknown connection", "sql_query", {"connection": "prod", "sql": "SELECT count(*) FROM orders"}, "", ("`demo`",), query("SELECT count(*) FROM orders")),
    Case("SQL on the shell connection", "sql_query", {"connection": "workspace", "sql": "SELECT 1"}, "", ("Use shell_run",), check_sh("ls")),
    Case("a shell command on the database", "shell_run", {"connection": "demo", "command": "ls"}, "", ("Use sql_query",), query("SELECT 1")),
    Case("describe a misspelt table", "describe", {"connection": "demo", "table": "ordrs"}, "", ("main.orders",), describe("orders")),
    Case("an empty query", "sql_query", sql("  "), "", ("SELECT * FROM orders LIMIT 10",), query("SELECT * FROM orders LIMIT 10")),
    # -- shell (hints from policy/shell) -------------------------------------------------------------
    Case("sed -i", "shell_run", sh("sed -i s/paid/PAID/ logs/app.log"), "developers-inspect:argument", ("sed -n '1,50p' FILE",), check_sh("sed -n '1,50p' logs/app.log")),
    Case("less", "shell_run", sh("less README.md"), "developers-inspect:launcher", ("head -n 100 FILE",), check_sh("head -n 100 README.md")),
    Case("vim", "shell_run", sh("vim src/orders.py"), "developers-inspect:launcher", ("cat FILE",), check_sh("cat src/orders.py")),
    Case("a pager at the end of a pipe", "shell_run", sh("grep -rn status src | more"), "developers-inspect:launcher", ("cat FILE",), check_sh("grep -rn status src")),
    Case("output to a file", "shell_run", sh("ls -R > files.txt"), "developers-inspect:redirect", ("drop the redirection",), check_sh("ls -R")),
    Case("grep into a file", "shell_run", sh("grep -rn paid logs > hits.txt"), "developers-inspect:redirect", ("drop the redirection",), check_sh("grep -rn paid logs")),
    Case("tee", "shell_run", sh("grep -c paid logs/app.log | tee count.txt"), "developers-inspect:program", ("drop `| tee FILE`",), check_sh("grep -c paid logs/app.log")),
    Case("awk system()", "shell_run", sh("awk '{system(\"echo \" $3)}' logs/app.log"), "developers-inspect:argument", ("awk '/re/ {print NR\": \"$0}' FILE",), check_sh("awk '/paid/ {print NR\": \"$0}' logs/app.log")),
    Case("find -delete", "shell_run", sh("find . -name '*.log' -delete"), "developers-inspect:argument", ("-exec grep -l PATTERN {} +",), check_sh("find . -name '*.py' -exec grep -l STATUSES {} +")),
    Case("piping into sh", "shell_run", sh("cat README.md | sh"), "developers-inspect:program", ("Send the commands themselves",), check_sh("cat README.md")),
    Case("env prefix", "shell_run", sh("env ls src"), "developers-inspect:launcher", ("Drop `env`",), check_sh("ls src")),
    Case("sudo", "shell_run", sh("sudo ls"), "developers-inspect:launcher", ("directly",), check_sh("ls")),
    Case("a background job", "shell_run", sh("grep -r paid . &"), "developers-inspect:operator", ("Allowed operators",), check_sh("grep -r paid .")),
    Case("cd out of the workspace", "shell_run", sh("cd .. && ls"), "developers-inspect:cd", ("relative paths or the `cwd` argument",), check_sh("ls src")),
]


def text_of(result: Any) -> str:
    return result.content[0].text


@pytest.mark.parametrize("case", CASES, ids=[c.title for c in CASES])
async def test_a_refusal_says_what_would_pass_and_that_passes(case: Case, demo_config: Path) -> None:
    who = case.who
    server = create_server(load(demo_config), identity_for=(lambda ctx: who) if who else None)
    async with Client(server) as client:
        refused = await client.call_tool(case.tool, case.args)
        assert refused.is_error, f"{case.title}: not refused: {text_of(refused)[:200]}"
        message = text_of(refused)
        if case.rule:
            assert f"(rule: {case.rule}" in message or f", {case.rule}" in message, message
        for words in case.hint:
            assert words in message, f"{case.title}: the hint lacks {words!r}: {message}"
        tool, args = case.passing
        passed = await client.call_tool(tool, args)
        assert not passed.is_error, f"{case.title}: the passing call failed: {text_of(passed)[:300]}"
        if tool == "check":
            assert passed.structured_content["verdict"] in ("allow", "review"), text_of(passed)


def test_there_are_at_least_40_cases_with_sql_and_shell() -> None:
    assert len(CASES) >= 40
    assert sum(c.tool == "shell_run" for c in CASES) >= 10 and sum(c.tool == "sql_query" for c in CASES) >= 30


@pytest.mark.postgres
async def test_postgres_refusals_are_mapped_to_an_engine_rule_and_a_hint(tmp_path: Path, pg_server: Any) -> None:
    import uuid

    schema = f"hints_{uuid.uuid4().hex[:8]}"
    role = pg_server.gateway_role
    for statement in (f"CREATE SCHEMA {schema}", f"CREATE TABLE {schema}.orders (id int PRIMARY KEY, status text)",
                      f"INSERT INTO {schema}.orders VALUES (1, 'paid')", f"GRANT USAGE ON SCHEMA {schema} TO {role}",
                      f"GRANT SELECT ON {schema}.orders TO {role}"):
        pg_server.execute(statement)
    config = tmp_path / "bastion.toml"
    config.write_text(f'[identity]\nsubject = "ana"\ngroups = ["analysts"]\n\n[connections.shop]\nkind = "postgres"\n'
                      f'target = "{pg_server.dsn(user=role)}"\nsearch_path = "{schema}"\n\n'
                      f'  [[connections.shop.rules]]\n  id = "analysts"\n  preset = "read-only"\n  groups = ["analysts"]\n'
                      f'  read_tables = ["{schema}.*"]\n')
    try:
        async with Client(create_server(load(config))) as client:
            column = await client.call_tool("sql_query", {"connection": "shop", "sql": "SELECT statuss FROM orders"})
            table = await client.call_tool("sql_query", {"connection": "shop", "sql": "SELECT * FROM ordrs"})
            setting = await client.call_tool("sql_query", {"connection": "shop", "sql": "SHOW search_path"})
            passing = [await client.call_tool("sql_query", {"connection": "shop", "sql": text})
                       for text in ("SELECT status FROM orders", "SELECT * FROM orders", "SELECT current_setting('search_path')")]
    finally:
        pg_server.execute(f"DROP SCHEMA {schema} CASCADE")
    assert column.is_error and "did you mean `status`?" in text_of(column) and "(rule: engine:no-such-column)" in text_of(column)
    assert table.is_error and f"did you mean `{schema}.orders`?" in text_of(table) and "(rule: engine:no-such-table)" in text_of(table)
    assert setting.is_error and "SELECT current_setting('search_path')" in text_of(setting)
    assert not any(p.is_error for p in passing), [text_of(p) for p in passing]
