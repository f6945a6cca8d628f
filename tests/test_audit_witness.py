"""Signed checkpoints and the witness answer an insider who can write the audit file: each attack is
done to a real store file, and `bastion audit verify --public-key --witness` finds it.

The attacks: checkpoints deleted and the chain re-hashed; the store rolled back to an older copy; the
whole log regenerated with another key; history rewritten (without the key, and re-signed with it).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from bastion.server.cli import main
from bastion.store import SqliteAuditStore, StoreError
from bastion.store import events as ev
from bastion.store.checkpoints import FileWitness, Signer, keygen
from bastion.store.verify import verify
from tests.conftest import requirement

EVERY = 5


class Log:
    """A gateway's audit log with an Ed25519 key and a witness, as `bastion serve` keeps it."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.db = tmp_path / "audit.db"
        self.witness = tmp_path / "witness" / "checkpoints.jsonl"
        private, self.public = keygen(tmp_path / "keys", "audit.test.example/prod")
        self.signer = Signer.parse(private.read_text())
        self.config = tmp_path / "bastion.toml"
        self.config.write_text(f'[audit]\npath = "audit.db"\ncheckpoint_key_file = "keys/audit-checkpoint.key"\n'
                               f'checkpoint_every = {EVERY}\nwitness = "file://{self.witness}"\n')
        # An auditor's: the log, the cadence, nothing of the gateway's secrets or witness.
        self.audit_config = tmp_path / "verify.toml"
        self.audit_config.write_text(f'[audit]\npath = "audit.db"\ncheckpoint_every = {EVERY}\n')

    def store(self, signer: Signer | None = None, path: Path | None = None) -> SqliteAuditStore:
        return SqliteAuditStore(path or self.db, signer=signer or self.signer, checkpoint_every=EVERY,
                                witness=FileWitness(self.witness) if path is None else None)

    def verify(self, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, ["audit", "verify", "--config", str(self.audit_config), *args])
        return result.exit_code, result.output


def calls(store: SqliteAuditStore, start: int, n: int) -> None:
    for i in range(start, start + n):
        store.append_many([{"type": ev.REQUESTED, "call_id": f"c{i}", "text": f"SELECT {i}"}])


def hack(path: Path) -> sqlite3.Connection:
    """Someone with write access to the file: every append-only trigger dropped."""
    conn = sqlite3.connect(path, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%append_only%'"):
        conn.execute(f"DROP TRIGGER {name}")
    return conn


def rehash(conn: sqlite3.Connection, start: int) -> None:
    """Recompute the chain from event ``start`` on, as anyone can without a key."""
    prev = conn.execute("SELECT hash FROM events WHERE seq = ?", (start - 1,)).fetchone()[0]
    columns = list(ev.FIELDS)
    for seq, *values in conn.execute(f"SELECT seq, {', '.join(columns)} FROM events WHERE seq >= ? ORDER BY seq",
                                     (start,)).fetchall():
        new = ev.chain_hash(prev, dict(zip(columns, values)))
        conn.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, new, seq))
        prev = new


@pytest.fixture
def log(tmp_path: Path) -> Log:
    log = Log(tmp_path)
    store = log.store()
    calls(store, 0, 23)
    store.checkpoint()  # at shutdown
    store.close()
    return log


def test_an_untouched_log_verifies_with_the_public_key_and_the_witness(log: Log) -> None:
    code, out = log.verify("--public-key", str(log.public), "--witness", str(log.witness))
    assert code == 0, out
    assert "23 events, 5 signed checkpoints checked, 5 witnessed checkpoints" in out
    assert "ok: the chain is intact and every checkpoint holds" in out
    assert [line.count('"note"') for line in log.witness.read_text().splitlines()] == [1] * 5


def test_deleted_checkpoints_with_a_rehashed_chain_are_found(log: Log) -> None:
    conn = hack(log.db)
    conn.execute("UPDATE events SET text = 'SELECT nothing happened' WHERE seq = 18")
    rehash(conn, 18)
    conn.execute("DELETE FROM tree_checkpoints WHERE size >= 20")  # the ones that would betray the edit
    assert verify(conn).ok  # the chain alone holds
    code, out = log.verify("--public-key", str(log.public))  # the key and cadence
    assert code == 1 and "event 20: the signed checkpoint due at 20 events is missing (deleted)" in out
    code, out = log.verify("--public-key", str(log.public), "--witness", str(log.witness), "--every", "1000000")
    assert code == 1 and "the witness saw the first 20 events with another Merkle root" in out
    conn.execute("DELETE FROM tree_checkpoints")  # all of them
    code, out = log.verify("--public-key", str(log.public))
    assert code == 1 and "no signed checkpoint, though one is due every 5 events" in out


def test_a_store_rolled_back_to_an_older_copy_is_found(tmp_path: Path) -> None:
    log = Log(tmp_path)
    store = log.store()
    calls(store, 0, 12)
    backup = tmp_path / "backup.db"
    with sqlite3.connect(backup) as copy:
        store.conn.backup(copy)
    calls(store, 12, 11)
    store.checkpoint()
    store.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{log.db}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, log.db)  # the older copy, whole and self-consistent
    code, out = log.verify("--public-key", str(log.public))
    assert code == 0  # its own checkpoints (5, 10) hold: only something outside the file remembers more
    code, out = log.verify("--public-key", str(log.public), "--witness", str(log.witness))
    assert code == 1 and "event 13: the witness saw 15 events, but the log holds 12 (it was cut, or rolled back" in out


def test_a_log_regenerated_with_another_key_is_found(log: Log) -> None:
    forger = Signer.generate("audit.test.example/prod")  # same name, another key
    fake = log.dir / "fake.db"
    store = log.store(signer=forger, path=fake)
    old = SqliteAuditStore(log.db)
    for event in old.iter_all():  # the same calls, one of them "corrected"
        text = "SELECT 'nothing'" if event["seq"] == 3 else event["text"]
        store.append({"type": event["type"], "call_id": event["call_id"], "text": text})
    store.checkpoint()
    store.close()
    old.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{log.db}{suffix}").unlink(missing_ok=True)
    shutil.copy(fake, log.db)
    code, out = log.verify("--public-key", str(log.public))
    assert code == 1 and "event 5: the signed checkpoint at 5 events does not verify" in out and "another key" in out
    # Even given the forger's public key (the .pub beside the config replaced), the witness tells.
    forged_pub = log.dir / "forged.pub"
    forged_pub.write_text(forger.verifier.text())
    code, out = log.verify("--public-key", str(forged_pub), "--every", "5")
    assert code == 0  # self-consistent: nothing inside the file can tell
    code, out = log.verify("--public-key", str(forged_pub), "--witness", str(log.witness))
    assert code == 1 and "the witness holds a checkpoint that does not verify with this public key" in out


def test_rewritten_history_is_found_without_the_key_and_with_it(log: Log) -> None:
    conn = hack(log.db)
    conn.execute("UPDATE events SET text = 'SELECT harmless' WHERE seq = 3")
    rehash(conn, 3)
    code, out = log.verify("--public-key", str(log.public))
    assert code == 1 and "event 5: a signed checkpoint vouches for the first 5 events with another Merkle root" in out
    # An insider holding the signing key regenerates the log and re-signs every checkpoint.
    resigned = log.dir / "resigned.db"
    store = log.store(path=resigned)
    for event in SqliteAuditStore(log.db).iter_all():
        store.append({"type": event["type"], "call_id": event["call_id"], "text": event["text"]})
    store.checkpoint()
    store.close()
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{log.db}{suffix}").unlink(missing_ok=True)
    shutil.copy(resigned, log.db)
    code, out = log.verify("--public-key", str(log.public))
    assert code == 0  # every checkpoint in the file is genuine: the key signed them
    code, out = log.verify("--public-key", str(log.public), "--witness", str(log.witness))
    assert code == 1 and "event 5: the witness saw the first 5 events with another Merkle root" in out


def test_the_tree_resumes_across_reopens_and_processes_sharing_the_log(tmp_path: Path) -> None:
    log = Log(tmp_path)
    first = log.store()
    calls(first, 0, 7)
    second = log.store()  # another gateway process on the same file
    calls(second, 7, 4)
    conn = sqlite3.connect(log.db, isolation_level=None)  # a hold's transaction that rolls back
    conn.execute("BEGIN IMMEDIATE")
    first.append_in(conn, [{"type": ev.REQUESTED, "call_id": f"gone{i}"} for i in range(6)])
    conn.execute("ROLLBACK")
    conn.close()
    calls(first, 11, 3)
    first.close()
    third = log.store()  # a restart: resumes from the last checkpoint's frontier
    calls(third, 14, 9)
    third.checkpoint()
    report = verify(third.conn, verifier=log.signer.verifier, witness=FileWitness(log.witness), every=EVERY)
    assert report.ok and report.events == 23 and report.checkpoints == 5, report.problems
    assert report.covered == 23


@requirement("inv:audit-unavailable-blocks")
def test_an_unwritable_witness_fails_the_append_closed(tmp_path: Path) -> None:
    signer = Signer.generate("audit.test.example/prod")
    store = SqliteAuditStore(tmp_path / "audit.db", signer=signer, checkpoint_every=2,
                             witness=FileWitness(tmp_path / "witness"))
    store.append({"type": ev.REQUESTED, "call_id": "c0"})
    (tmp_path / "witness").mkdir()  # the witness is gone (a folder where the file was)
    with pytest.raises(StoreError, match="cannot append to the witness"):
        store.append({"type": ev.REQUESTED, "call_id": "c1"})  # the checkpoint at 2 cannot be witnessed


def test_a_config_still_naming_an_hmac_key_says_what_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.policy.errors import ConfigError
    from bastion.server.config import load

    monkeypatch.setenv("BASTION_TEST_HMAC", "an-old-hmac-secret")
    config = tmp_path / "bastion.toml"
    config.write_text('[audit]\ncheckpoint_key_env = "BASTION_TEST_HMAC"\n')
    with pytest.raises(ConfigError) as caught:
        load(config).checkpoint_signer()
    assert "audit.checkpoint_key_env" in caught.value.message and "bastion audit keygen" in (caught.value.hint or "")


def test_keygen_writes_a_pair_the_gateway_and_verify_use_and_never_overwrites(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["audit", "keygen", str(tmp_path / "keys"), "--name", "audit.example.com/prod"])
    assert result.exit_code == 0 and "audit-checkpoint.pub  audit.example.com/prod+" in result.output
    again = runner.invoke(main, ["audit", "keygen", str(tmp_path / "keys")])
    assert again.exit_code == 1 and "exists" in again.output
    config = tmp_path / "bastion.toml"
    config.write_text('[audit]\npath = "audit.db"\ncheckpoint_key_file = "keys/audit-checkpoint.key"\ncheckpoint_every = 2\n'
                      f'witness = "file://{tmp_path}/witness.jsonl"\n')
    from bastion.server.build import build_gateway
    from bastion.server.config import load

    store = build_gateway(load(config)).store
    calls(store, 0, 5)
    result = runner.invoke(main, ["audit", "verify", "--config", str(config)])  # key and witness from the config
    assert result.exit_code == 0 and "5 events, 2 signed checkpoints checked, 2 witnessed checkpoints" in result.output
    assert "event 5 is after the last checkpoint: only the chain vouches for them" in result.output
    result = runner.invoke(main, ["audit", "verify", "--config", str(config), "--witness", str(tmp_path / "elsewhere")])
    assert result.exit_code == 1 and "no witness file at" in result.output


def test_a_rotated_key_verifies_with_both_public_keys(log: Log) -> None:
    private, public = keygen(log.dir / "keys-2026", "audit.test.example/prod")  # same log, a new key
    store = SqliteAuditStore(log.db, signer=Signer.parse(private.read_text()), checkpoint_every=EVERY,
                             witness=FileWitness(log.witness))
    calls(store, 23, 9)
    store.checkpoint()
    store.close()
    code, out = log.verify("--public-key", str(public), "--witness", str(log.witness))
    assert code == 1 and "does not verify" in out  # the old key's checkpoints, under the new key alone
    code, out = log.verify("--public-key", str(log.public), "--public-key", str(public), "--witness", str(log.witness))
    assert code == 0 and "32 events, 8 signed checkpoints checked" in out, out


class _Endpoint:
    """A witness endpoint on loopback: keeps each POSTed body as a line of a file (what its operator
    would export), or answers 500 when told to."""

    def __init__(self, path: Path) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        endpoint = self
        self.path, self.failing = path, False

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if endpoint.failing:
                    self.send_response(500)
                else:
                    with open(endpoint.path, "ab") as f:
                        f.write(body + b"\n")
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/witness"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_http_witness_receives_every_checkpoint_and_a_failing_one_fails_closed(tmp_path: Path) -> None:
    endpoint = _Endpoint(tmp_path / "exported.jsonl")
    try:
        log = Log(tmp_path)
        log.config.write_text(log.config.read_text().replace(f"file://{log.witness}", endpoint.url))
        from bastion.server.build import build_gateway
        from bastion.server.config import load

        store = build_gateway(load(log.config)).store
        calls(store, 0, 12)
        assert CliRunner().invoke(main, ["audit", "checkpoint", "--config", str(log.config)]).exit_code == 0
        code, out = log.verify("--public-key", str(log.public), "--witness", str(endpoint.path))
        assert code == 0 and "12 events, 3 signed checkpoints checked, 3 witnessed checkpoints" in out, out
        result = CliRunner().invoke(main, ["audit", "verify", "--config", str(log.config)])
        assert result.exit_code == 1 and "export what it holds to a file" in result.output
        endpoint.failing = True
        with pytest.raises(StoreError, match="answered 500"):
            calls(store, 12, 3)  # the checkpoint at 15 cannot be witnessed: the append fails
        endpoint.failing = False
        calls(store, 15, 1)  # the next transaction witnesses it
        sizes = [int(json.loads(line)["note"].split("\n")[1]) for line in endpoint.path.read_text().splitlines()]
        assert sorted(set(sizes)) == [5, 10, 12, 15]  # 12 twice: the CLI's, then this gateway's catching up
        code, out = log.verify("--public-key", str(log.public), "--witness", str(endpoint.path))
        assert code == 0, out
    finally:
        endpoint.close()
