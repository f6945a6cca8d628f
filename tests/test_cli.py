"""The `bastion` command: check (one text, --jsonl, preset or config), audit tail/show, config validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bastion.server.cli import main
from bastion.server.config import load
from bastion.tools.calls import Caller
from bastion.server.build import build_gateway


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=input)
    return result.exit_code, result.output


def test_check_against_a_preset_needs_no_config() -> None:
    code, out = run("check", "--preset", "read-only", "--dialect", "sqlite", input="DROP TABLE orders")
    assert code == 1 and out.startswith("deny  [read-only:kind]") and "hint:" in out
    code, out = run("check", "SELECT 1", "--preset", "read-only")
    assert code == 0 and out.startswith("allow  [read-only]")


def test_check_jsonl_answers_line_by_line_and_survives_bad_lines() -> None:
    lines = "\n".join([json.dumps({"id": "a", "text": "SELECT 1"}), "not json",
                       json.dumps({"id": 7, "text": "DELETE FROM t"}), json.dumps({"id": "x", "text": ""})])
    code, out = run("check", "--jsonl", "--preset", "read-write", input=lines)
    answers = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [a["id"] for a in answers] == ["a", None, 7, "x"]
    assert [a["verdict"] for a in answers] == ["allow", "deny", "review", "deny"]
    assert answers[1]["rules"] == ["guard:invalid-input"] and answers[3]["rules"] == ["guard:invalid-input"]
    assert set(answers[2]) == {"id", "verdict", "rules", "reason", "hint"}


def test_check_against_a_config_uses_the_connection_user_and_groups(demo_config: Path) -> None:
    base = ["check", "--config", str(demo_config), "--connection", "demo"]
    assert run(*base, "--group", "developers", "SELECT * FROM orders")[0] == 0
    code, out = run(*base, "--group", "maintainers", "UPDATE orders SET status = 'x' WHERE id = 1")
    assert code == 0 and "maintainers-write" in out
    code, out = run(*base, "--user", "eve", "SELECT 1")
    assert code == 1 and "default-deny" in out and "eve" in out


def test_check_against_a_config_decides_as_its_identity_unless_told_otherwise(demo_config: Path) -> None:
    base = ["check", "--config", str(demo_config), "--connection", "demo"]
    code, out = run(*base, "SELECT * FROM orders")  # demo-agent, group developers
    assert code == 0 and out.startswith("allow  [developers-read]")
    code, out = run(*base, "--user", "eve", "SELECT * FROM orders")
    assert code == 1 and "default-deny" in out and "`eve`" in out


def test_check_names_an_unknown_connection(demo_config: Path) -> None:
    code, out = run("check", "--config", str(demo_config), "--connection", "prod", "SELECT 1")
    assert code == 2 and "no connection `prod`" in out and "demo" in out


def test_config_validate_summarises_or_explains(demo_config: Path, tmp_path: Path) -> None:
    code, out = run("config", "validate", "--config", str(demo_config))
    assert code == 0 and "demo (sqlite): developers-read" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[connections.x]\nkind = "oracle"\ntarget = "x"\n')
    code, out = run("config", "validate", "--config", str(bad))
    assert code == 1 and out == f"Error: {bad}:2: connections.x.kind: found \"oracle\"; expected one of 'postgres', 'sqlite', 'local', 'ssh', 'container'\n"


@pytest.mark.anyio
async def test_audit_tail_and_show_read_every_call(demo_config: Path) -> None:
    gateway = build_gateway(load(demo_config))
    caller = Caller(load(demo_config).identity.to_identity())
    done = await gateway.sql_query(caller, "demo", "SELECT count(*) FROM products", "count them")
    with pytest.raises(Exception):
        await gateway.sql_query(caller, "demo", "DROP TABLE products", None)
    code, out = run("audit", "tail", "--config", str(demo_config), "-n", "4")
    assert code == 0 and "call.finished" in out and "call.denied" in out and "DROP TABLE products" in out
    code, out = run("audit", "show", done.call_id, "--config", str(demo_config))
    assert code == 0 and "reason: count them" in out and "result: 1 rows" in out
    code, out = run("audit", "show", done.call_id, "--config", str(demo_config), "--json")
    assert [e["type"] for e in json.loads(out)] == ["call.requested", "call.finished"]
    code, out = run("audit", "show", "nope", "--config", str(demo_config))
    assert code == 1 and "no call `nope`" in out


def test_serve_refuses_a_bad_listen_address(demo_config: Path) -> None:
    code, out = run("serve", "--config", str(demo_config), "--http", "localhost")
    assert code == 2 and "expected HOST:PORT" in out


def test_audit_verify_says_intact_or_names_the_broken_event(demo_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from bastion.store.checkpoints import Signer

    monkeypatch.setenv("BASTION_TEST_AUDIT_KEY", Signer.generate("audit.test.example/cli").text())
    text = demo_config.read_text().replace('[audit]\npath = "bastion-audit.db"',
                                           '[audit]\npath = "bastion-audit.db"\ncheckpoint_key_env = "BASTION_TEST_AUDIT_KEY"')
    demo_config.write_text(text)
    config = load(demo_config)
    store = build_gateway(config).store
    for i in range(3):
        store.append({"type": "call.requested", "call_id": f"c{i}", "text": "SELECT 1"})
    assert store.checkpoint() == 3
    code, out = run("audit", "verify", "--config", str(demo_config))
    assert code == 0 and "3 events, 1 signed checkpoints checked" in out and "ok: the chain is intact" in out
    conn = sqlite3.connect(demo_config.parent / "bastion-audit.db", isolation_level=None)
    conn.execute("DROP TRIGGER events_append_only_update")
    conn.execute("UPDATE events SET text = 'DROP TABLE x' WHERE seq = 2")
    code, out = run("audit", "verify", "--config", str(demo_config))
    assert code == 1 and "event 2: its content does not match its hash (the event was edited)" in out


@pytest.mark.anyio
async def test_audit_search_and_export(demo_config: Path) -> None:
    gateway = build_gateway(load(demo_config))
    alice = Caller(load(demo_config).identity.to_identity())
    with pytest.raises(Exception):
        await gateway.sql_query(alice, "demo", "DROP TABLE orders", None)
    await gateway.sql_query(alice, "demo", "SELECT count(*) FROM orders", None)
    code, out = run("audit", "search", "drop table", "--config", str(demo_config), "--since", "1h")
    assert code == 0 and "DROP TABLE orders" in out and "SELECT count" not in out
    code, out = run("audit", "search", "orders", "--verdict", "allow", "--user", "demo-agent", "--config", str(demo_config), "--json")
    assert [json.loads(line)["text"] for line in out.splitlines()] == ["SELECT count(*) FROM orders"]
    code, out = run("audit", "search", "--user", "nobody", "--config", str(demo_config))
    assert code == 0 and out == ""
    code, out = run("audit", "export", "--config", str(demo_config))
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines and all(line["schema"] == "bastion.audit.event/1" for line in lines)
    code, rest = run("audit", "export", "--config", str(demo_config), "--after", str(lines[1]["seq"]))
    assert [json.loads(line)["seq"] for line in rest.splitlines()] == [line["seq"] for line in lines[2:]]
