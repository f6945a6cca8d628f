"""Replay a recorded session against a sandbox and diff; backtest a draft policy on a recorded log."""

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



@pytest.fixture
def with_sandbox(demo_config: Path) -> Path:
    shutil.copy(demo_config.parent / "demo.db", demo_config.parent / "sandbox.db")
    demo_config.write_text(demo_config.read_text() + '''
[connections.demo_sandbox]
kind = "sqlite"
target = "sandbox.db"
sandbox = true
  [[connections.demo_sandbox.rules]]
  preset = "read-only"
''')
    return demo_config


async def record_session(config: Path) -> str:
    gateway = build_gateway(load(config))
    caller = Caller(load(config).identity.to_identity(), session="session-1")
    await gateway.sql_query(caller, "demo", "SELECT count(*) FROM orders WHERE status = 'paid'", "paid orders")
    await gateway.sql_query(caller, "demo", "SELECT id, name FROM products ORDER BY id", "products")
    with pytest.raises(Exception):
        await gateway.sql_query(caller, "demo", "DELETE FROM orders", None)
    await gateway.close()
    return "session-1"


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_replay_prints_the_timeline_of_a_session(with_sandbox: Path) -> None:
    session = anyio.run(record_session, with_sandbox)  # the CLI runs its own event loop
    code, out = cli("replay", session, "--config", str(with_sandbox))
    assert code == 0 and out.count("sql_query") == 3
    assert "1 rows, digest" in out and "10 rows, digest" in out and "denied" in out


def test_replay_against_a_sandbox_finds_what_changed(with_sandbox: Path) -> None:
    session = anyio.run(record_session, with_sandbox)  # the CLI runs its own event loop
    code, out = cli("replay", session, "--config", str(with_sandbox), "--against", "demo_sandbox")
    assert code == 0 and out.count(" same ") == 2 and "skipped" in out
    conn = sqlite3.connect(with_sandbox.parent / "sandbox.db")
    conn.execute("UPDATE products SET name = 'Renamed' WHERE id = 3")
    conn.commit()
    code, out = cli("replay", session, "--config", str(with_sandbox), "--against", "demo_sandbox")
    assert code == 1 and out.count(" same ") == 1 and "DIFFERS" in out


def test_replay_refuses_a_connection_that_is_not_a_sandbox(with_sandbox: Path) -> None:
    session = anyio.run(record_session, with_sandbox)  # the CLI runs its own event loop
    code, out = cli("replay", session, "--config", str(with_sandbox), "--against", "demo")
    assert code == 1 and "not a connection marked `sandbox = true`" in out


def test_backtest_reports_what_a_draft_would_change(with_sandbox: Path, tmp_path: Path) -> None:
    anyio.run(record_session, with_sandbox)
    draft = tmp_path / "draft.toml"
    text = with_sandbox.read_text().replace('id = "developers-read"\n  preset = "read-only"',
                                            'id = "developers-read"\n  preset = "read-only"\n  read_tables = ["main.orders"]')
    draft.write_text(text)
    code, out = cli("policy", "backtest", "--config", str(draft), "--log", str(with_sandbox.parent / "bastion-audit.db"))
    assert code == 0 and "3 recorded calls decided again; 1 would change" in out
    assert "allow → deny" in out and "newly denied" in out and "SELECT id, name FROM products" in out
    assert "developers-read:table" in out
