"""Replay shows what changed, row by row (masked values withheld); writes replayed compare the rows
they affected; a backtest of the unchanged config reports no change, masking refusals included."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from bastion.server.build import build_gateway
from bastion.server.cli import main
from bastion.server.config import load
from bastion.tools.calls import Caller
from bastion.tools.replay import compare

SANDBOX = '''
[connections.demo_sandbox]
kind = "sqlite"
target = "sandbox.db"
sandbox = true
  [[connections.demo_sandbox.rules]]
  id = "sandbox-write"
  preset = "read-write"
  groups = ["developers", "maintainers"]
  write_tables = ["main.orders"]
'''


@pytest.fixture
def config(demo_config: Path) -> Path:
    shutil.copy(demo_config.parent / "demo.db", demo_config.parent / "sandbox.db")
    text = demo_config.read_text().replace('groups = ["developers"]\n\n[audit]', 'groups = ["maintainers"]\n\n[audit]')
    text = text.replace('  "customers.phone" = "partial"    # keeps the last 4\n',
                        '  "customers.phone" = "partial"    # keeps the last 4\n\n'
                        '  [connections.demo.mask_predicates]\n  email = "deny"\n')
    demo_config.write_text(text + SANDBOX)
    assert load(demo_config).identity.groups == ["maintainers"]
    return demo_config


async def record(config: Path, *texts: str) -> None:
    gateway = build_gateway(load(config))
    caller = Caller(load(config).identity.to_identity(), session="session-1")
    for text in texts:
        try:
            await gateway.sql_query(caller, "demo", text, "replay test")
        except Exception:
            pass
    await gateway.close()


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_compare_names_the_first_differing_rows_and_columns() -> None:
    recorded = {"columns": ["id", "name"], "rows": [[1, "a"], [2, "b"], [3, "c"]]}
    assert compare(recorded, 3, {"columns": ["id", "name"], "rows": [(1, "a"), (2, "b"), (3, "c")]}, 3) == []
    assert compare(recorded, 3, {"columns": ["id", "name"], "rows": [[1, "a"], [2, "B"], [3, "c"]]}, 3) == [
        'row 2: name: recorded "b", now "B"']
    assert compare(recorded, 3, {"columns": ["id", "name"], "rows": [[1, "a"]]}, 1) == [
        "row count: 3 recorded, 1 now", 'row 2: only recorded: id=2, name="b"', 'row 3: only recorded: id=3, name="c"']
    assert compare(recorded, 3, {"columns": ["id", "title"], "rows": []}, 0) == [
        "columns: recorded ['id', 'name'], now ['id', 'title']"]
    # A write returns no rows: the rows it affected are compared, not its empty row list.
    assert compare({"columns": [], "rows": []}, 4, {"columns": [], "rows": []}, 4) == []
    assert compare({"columns": [], "rows": []}, 4, {"columns": [], "rows": []}, 0) == ["rows affected: 4 recorded, 0 now"]
    # A truncated recording is compared on the rows it holds.
    assert compare(recorded, 3, {"columns": ["id", "name"], "rows": [[1, "a"], [2, "b"], [3, "c"], [4, "d"]]}, 4,
                   truncated=True) == []


def test_replay_shows_the_rows_that_changed(config: Path) -> None:
    anyio.run(record, config, "SELECT id, name FROM products ORDER BY id")
    conn = sqlite3.connect(config.parent / "sandbox.db")
    conn.execute("UPDATE products SET name = 'Renamed' WHERE id = 3")
    conn.commit()
    code, out = cli("replay", "session-1", "--config", str(config), "--against", "demo_sandbox")
    assert code == 1 and "DIFFERS" in out
    assert 'row 3: name: recorded "' in out and 'now "Renamed"' in out


def test_a_masked_column_is_withheld_where_the_sandbox_does_not_mask(config: Path) -> None:
    anyio.run(record, config, "SELECT id, email FROM customers ORDER BY id LIMIT 2")
    raw = sqlite3.connect(config.parent / "sandbox.db").execute("SELECT email FROM customers ORDER BY id").fetchone()[0]
    code, out = cli("replay", "session-1", "--config", str(config), "--against", "demo_sandbox")
    assert code == 1 and "email: recorded" in out and "(withheld: masked in the recording, not in this re-run)" in out
    assert raw not in out


def test_writes_replayed_compare_the_rows_they_affected(config: Path) -> None:
    anyio.run(record, config, "UPDATE orders SET status = 'paid' WHERE id IN (1, 2)")
    code, out = cli("replay", "session-1", "--config", str(config), "--against", "demo_sandbox", "--include-writes")
    assert code == 0 and " same " in out and "2 rows affected" in out and "DIFFERS" not in out
    conn = sqlite3.connect(config.parent / "sandbox.db")
    conn.execute("DELETE FROM order_items WHERE order_id = 2")
    conn.execute("DELETE FROM orders WHERE id = 2")
    conn.commit()
    code, out = cli("replay", "session-1", "--config", str(config), "--against", "demo_sandbox", "--include-writes")
    assert code == 1 and "rows affected: 2 recorded, 1 now" in out


def test_a_backtest_of_the_unchanged_config_changes_nothing_masking_refusals_included(config: Path) -> None:
    anyio.run(record, config, "SELECT id FROM customers WHERE email LIKE 'a%'", "SELECT id, name FROM products",
              "SELECT count(*) FROM orders")
    store_events = cli("audit", "tail", "--config", str(config), "--json")[1]
    assert '"mask:main.customers.email"' in store_events  # the recording holds a masking refusal
    code, out = cli("policy", "backtest", "--config", str(config))
    assert code == 0 and "3 recorded calls decided again; 0 would change" in out, out
    assert "newly allowed" not in out
    # Without the predicate rule, the draft would allow it: that is a real change.
    draft = config.parent / "draft.toml"
    draft.write_text(config.read_text().replace('  [connections.demo.mask_predicates]\n  email = "deny"\n', ""))
    code, out = cli("policy", "backtest", "--config", str(draft), "--log", str(config.parent / "bastion-audit.db"))
    assert code == 0 and "1 would change" in out and "deny → allow" in out and "newly allowed" in out


def test_a_recorded_egress_refusal_stands_while_the_draft_keeps_the_rule(config: Path) -> None:
    text = config.read_text() + '\n[[alerts]]\nid = "egress"\nkind = "egress"\nmax_rows = 5\naction = "deny"\n'
    config.write_text(text)
    anyio.run(record, config, "SELECT id, name FROM products", "SELECT id, name FROM products")
    code, out = cli("policy", "backtest", "--config", str(config))
    assert code == 0 and "2 recorded calls decided again; 0 would change" in out and "deny → deny" in out, out
    draft = config.parent / "draft.toml"
    draft.write_text(text.replace('action = "deny"', 'action = "alert"'))
    code, out = cli("policy", "backtest", "--config", str(draft), "--log", str(config.parent / "bastion-audit.db"))
    assert code == 0 and "1 would change" in out and "deny → allow" in out
