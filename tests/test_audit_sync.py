"""When the audit store's commits reach the disk (`[audit] sync`): `call.requested` is fsynced before
anything runs; with "before-run" (the default) a call's end is committed before the answer (a killed
gateway loses nothing) and fsynced within events.FLUSH_S; with "every-event" before the answer too."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bastion.store import SqliteAuditStore
from bastion.store import events as ev
from tests.conftest import requirement
from tests.store_backends import StoreAt

BASTION = str(Path(sys.executable).parent / "bastion")


def synchronous(store: SqliteAuditStore) -> int:
    return int(store.conn.execute("PRAGMA synchronous").fetchone()[0])  # 2 FULL, 1 NORMAL


def wait_until_flushed(store: SqliteAuditStore, within_s: float = 10.0) -> float:
    started = time.monotonic()
    while store.unflushed():
        assert time.monotonic() - started < within_s, "the flusher never fsynced the WAL"
        time.sleep(0.005)
    return time.monotonic() - started


def test_a_calls_end_is_committed_at_once_and_fsynced_soon_after(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.db")
    store.append({"type": ev.REQUESTED, "call_id": "c1", "text": "SELECT 1"})
    assert synchronous(store) == 2 and not store.unflushed()
    store.append({"type": ev.FINISHED, "call_id": "c1", "row_count": 1})
    assert synchronous(store) == 1 and store.unflushed()
    # Committed: another connection (another process would be the same) reads it at once.
    assert sqlite3.connect(tmp_path / "audit.db").execute("SELECT count(*) FROM events").fetchone()[0] == 2
    wait_until_flushed(store)
    # A FULL commit's fsync covers the WAL before it: nothing is left for the flusher.
    store.append({"type": ev.DENIED, "call_id": "c2"})
    assert store.unflushed()
    store.append({"type": ev.REQUESTED, "call_id": "c3", "text": "SELECT 3"})
    assert synchronous(store) == 2 and not store.unflushed()
    store.close()


def test_a_batch_with_anything_else_in_it_is_fsynced_before_it_returns(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.db")
    store.append_many([{"type": ev.FINISHED, "call_id": "c1"}, {"type": ev.REQUESTED, "call_id": "c2"}])
    assert synchronous(store) == 2 and not store.unflushed()
    store.append({"type": ev.EXPIRED, "call_id": "c2"})
    assert synchronous(store) == 2 and not store.unflushed()


def test_every_event_mode_fsyncs_every_commit(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.db", sync="every-event")
    store.append({"type": ev.REQUESTED, "call_id": "c1"})
    store.append({"type": ev.FINISHED, "call_id": "c1"})
    assert synchronous(store) == 2 and not store.unflushed()


def test_an_unknown_sync_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="before-run, every-event"):
        SqliteAuditStore(tmp_path / "audit.db", sync="never")


def test_a_checkpoint_reaches_the_witness_only_once_on_disk(tmp_path: Path) -> None:
    """A call's end that completes a signed checkpoint is fsynced before the witness hears of it: a
    power loss must never leave the witness vouching for events the log lost."""
    from bastion.store.checkpoints import FileWitness, Signer

    witness = FileWitness(tmp_path / "witness.log")
    store = SqliteAuditStore(tmp_path / "audit.db", signer=Signer.generate("test-gateway"), checkpoint_every=2, witness=witness)
    store.append({"type": ev.REQUESTED, "call_id": "c1"})
    store.append({"type": ev.FINISHED, "call_id": "c1"})  # event 2: a checkpoint, in a commit that was not durable
    assert not store.unflushed() and len((tmp_path / "witness.log").read_text().splitlines()) == 1
    store.append({"type": ev.FINISHED, "call_id": "c0"})  # event 3: no checkpoint, flushed later
    assert store.unflushed()
    assert store.checkpoint() == 3 and not store.unflushed()  # a checkpoint at will is durable too
    assert synchronous(store) == 2


def test_closing_flushes(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.db")
    store.append({"type": ev.FINISHED, "call_id": "c1"})
    assert store.unflushed()
    store.close()
    assert not store.unflushed()


def test_on_either_backend_a_calls_end_is_seen_at_once_and_the_next_event_is_durable_again(store_at: StoreAt) -> None:
    writer = store_at.open()
    writer.append({"type": ev.REQUESTED, "call_id": "c1", "text": "SELECT 1"})
    writer.append({"type": ev.FINISHED, "call_id": "c1", "row_count": 1})
    reader = store_at.open()  # another gateway sharing the store
    assert [e["type"] for e in reader.call("c1")] == [ev.REQUESTED, ev.FINISHED]
    if not isinstance(writer, SqliteAuditStore):  # SET LOCAL: the asynchronous commit ended with its transaction
        assert writer.conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        return
    assert synchronous(writer) == 1
    writer.append({"type": ev.REQUESTED, "call_id": "c2", "text": "SELECT 2"})
    assert synchronous(writer) == 2 and not writer.unflushed()


def _rpc(proc: subprocess.Popen[bytes], message: dict[str, object]) -> dict[str, object] | None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(message).encode() + b"\n")
    proc.stdin.flush()
    if "id" not in message:
        return None
    while True:  # skip notifications (logging, progress) until the answer to this request
        line = proc.stdout.readline()
        assert line, "the gateway closed stdout"
        answer = json.loads(line)
        if answer.get("id") == message["id"]:
            return answer  # type: ignore[no-any-return]


@requirement("inv:record-before-run")
@pytest.mark.parametrize("sync", ["before-run", "every-event"])
def test_a_gateway_killed_right_after_answering_has_the_answer_in_its_log(demo_config: Path, sync: str) -> None:
    """The effect: SIGKILL the moment the answer arrives; the log still holds the call's end, with the
    rows the agent was given."""
    config = demo_config.read_text()
    demo_config.write_text(config.replace("[audit]\n", f'[audit]\nsync = "{sync}"\n', 1) if "[audit]\n" in config
                           else config + f'\n[audit]\nsync = "{sync}"\n')
    with subprocess.Popen([BASTION, "serve", "--config", str(demo_config)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=demo_config.parent) as proc:
        _rpc(proc, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "kill-test", "version": "1"}}})
        _rpc(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        answer = _rpc(proc, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "sql_query", "arguments": {"connection": "demo", "sql": "SELECT id, status FROM orders WHERE id = 7"}}})
        os.kill(proc.pid, signal.SIGKILL)
    assert answer is not None and not answer["result"].get("isError"), answer  # type: ignore[union-attr]
    log = sqlite3.connect(demo_config.parent / "bastion-audit.db")
    types = [t for (t,) in log.execute("SELECT type FROM events WHERE tool = 'sql_query' OR type = 'call.finished' ORDER BY seq")]
    assert types[-2:] == [ev.REQUESTED, ev.FINISHED]
    (result,) = log.execute("SELECT result FROM events WHERE type = 'call.finished' ORDER BY seq DESC LIMIT 1").fetchone()
    assert json.loads(result)["rows"][0][0] == 7
