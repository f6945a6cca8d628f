"""The Merkle tree is RFC 6962 / RFC 9162's; checkpoints are C2SP signed notes; a call's inclusion
proof checks offline against an independent implementation of RFC 9162's verification algorithm,
against `bastion audit verify-proof` and against the standalone docs/verify_proof.py."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bastion.server.cli import main
from bastion.store import SqliteAuditStore
from bastion.store import events as ev
from bastion.store.checkpoints import FileWitness, Signer, Verifier, keygen
from bastion.store.merkle import Frontier, consistency_path, inclusion_path, leaf_hash, root_of
from bastion.store import AuditStore
from tests.store_backends import StoreAt
from bastion.store.proofs import ProofError, prove, prove_consistency, verify_consistency_proof, verify_proof
from tests.conftest import ROOT


# -- an independent reference, written from the RFCs' text -------------------------------------------

def sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def mth(d: list[bytes]) -> bytes:
    """RFC 9162 2.1.1: the Merkle Tree Hash, recursively, over leaf *data*."""
    n = len(d)
    if n == 0:
        return sha(b"")
    if n == 1:
        return sha(b"\x00" + d[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return sha(b"\x01" + mth(d[:k]) + mth(d[k:]))


def path(m: int, d: list[bytes]) -> list[bytes]:
    """RFC 9162 2.1.3.1: PATH(m, D[n]), recursively."""
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return path(m, d[:k]) + [mth(d[k:])]
    return path(m - k, d[k:]) + [mth(d[:k])]


def rfc9162_verify(leaf_index: int, tree_size: int, leaf_data: bytes, inclusion_path: list[bytes], root: bytes) -> bool:
    """RFC 9162 2.1.3.2, step by step as the RFC numbers them."""
    # 1. Compare leaf_index from the inclusion_proof against tree_size. If leaf_index is greater than
    #    or equal to tree_size, then fail the proof verification.
    if leaf_index >= tree_size:
        return False
    # 2. Set fn to leaf_index and sn to tree_size - 1.
    fn, sn = leaf_index, tree_size - 1
    # 3. Set r to hash.
    r = sha(b"\x00" + leaf_data)
    # 4. For each value p in the inclusion_path array:
    for p in inclusion_path:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            return False
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn % 2 == 1 or fn == sn:
            # i. Set r to HASH(0x01 || p || r).
            r = sha(b"\x01" + p + r)
            # ii. If LSB(fn) is not set, then right-shift both fn and sn equally until either LSB(fn)
            #     is set or fn is 0.
            if fn % 2 == 0:
                while not (fn % 2 == 1 or fn == 0):
                    fn //= 2
                    sn //= 2
        # Otherwise: Set r to HASH(0x01 || r || p).
        else:
            r = sha(b"\x01" + r + p)
        # c. Finally, right-shift both fn and sn one time.
        fn //= 2
        sn //= 2
    # 5. Compare sn to 0. Compare r against the root_hash. If sn is equal to 0 and r and the root_hash
    #    are equal, then the log has proven the inclusion of hash.
    return sn == 0 and r == root


def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """RFC 9162 2.1.4.1: SUBPROOF(m, D[n], b), recursively."""
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return subproof(m, d[:k], b) + [mth(d[k:])]
    return subproof(m - k, d[k:], False) + [mth(d[:k])]


def rfc9162_consistent(first: int, second: int, first_hash: bytes, second_hash: bytes, consistency_path: list[bytes]) -> bool:
    """RFC 9162 2.1.4.2, step by step (for 0 < first < second)."""
    # 1. If consistency_path is an empty array, stop and fail the proof verification.
    if not consistency_path:
        return False
    # 2. If first is an exact power of 2, then prepend first_hash to the consistency_path array.
    path = list(consistency_path)
    if first & (first - 1) == 0:
        path = [first_hash] + path
    # 3. Set fn to first - 1 and sn to second - 1.
    fn, sn = first - 1, second - 1
    # 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set.
    while fn % 2 == 1:
        fn //= 2
        sn //= 2
    # 5. Set both fr and sr to the first value in the consistency_path array.
    fr = sr = path[0]
    # 6. For each subsequent value c in the consistency_path array:
    for c in path[1:]:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            return False
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn % 2 == 1 or fn == sn:
            fr = sha(b"\x01" + c + fr)  # i.
            sr = sha(b"\x01" + c + sr)  # ii.
            # iii. If LSB(fn) is not set, then right-shift both fn and sn equally until either LSB(fn)
            #      is set or fn is 0.
            if fn % 2 == 0:
                while not (fn % 2 == 1 or fn == 0):
                    fn //= 2
                    sn //= 2
        else:  # Otherwise: Set sr to HASH(0x01 || sr || c).
            sr = sha(b"\x01" + sr + c)
        # c. Finally, right-shift both fn and sn one time.
        fn //= 2
        sn //= 2
    # 7. Verify that fr is first_hash, sr is second_hash, and sn is 0.
    return fr == first_hash and sr == second_hash and sn == 0


def note_checkpoint(note: str, public_key_line: str) -> tuple[str, int, bytes]:
    """c2sp.org/signed-note + tlog-checkpoint, parsed and verified independently of bastion.store."""
    name, key_hex, key_b64 = public_key_line.split("+", 2)
    raw = base64.b64decode(key_b64)
    assert raw[0] == 1 and sha(name.encode() + b"\x0a" + raw)[:4].hex() == key_hex
    text, sigs = note.split("\n\n")
    (line,) = sigs.rstrip("\n").split("\n")
    assert line.startswith("\u2014 " + name + " ")
    blob = base64.b64decode(line.split(" ")[2])
    assert blob[:4].hex() == key_hex
    Ed25519PublicKey.from_public_bytes(raw[1:]).verify(blob[4:], (text + "\n").encode())
    origin, size, root = text.split("\n")
    return origin, int(size), base64.b64decode(root)


# -- the tree ---------------------------------------------------------------------------------------

# The RFC 6962 test vectors of certificate-transparency (and transparency-dev/merkle).
CT_LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43", b"\x50\x51\x52\x53\x54\x55\x56\x57",
             bytes(range(0x60, 0x70))]
CT_ROOTS = ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"]
CT_CONSISTENCY = {(1, 8): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                           "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                           "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
                  (6, 8): ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                           "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                           "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]}
CT_PATHS = {(0, 8): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                     "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                     "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
            (5, 8): ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                     "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                     "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]}


def test_the_tree_gives_the_rfc_6962_test_vectors() -> None:
    leaves = [leaf_hash(d) for d in CT_LEAVES]
    tree = Frontier()
    for n, leaf in enumerate(leaves, 1):
        tree.append(leaf)
        assert tree.root().hex() == CT_ROOTS[n - 1] == root_of(leaves[:n]).hex()
    assert Frontier().root() == sha(b"")
    for (m, n), expected in CT_PATHS.items():
        assert [h.hex() for h in inclusion_path(leaves, m, n)] == expected
    for (m, n), expected in CT_CONSISTENCY.items():
        assert [h.hex() for h in consistency_path(leaves, m, n)] == expected


def test_consistency_proofs_agree_with_the_rfc_at_every_pair_of_sizes() -> None:
    data = [f"event {i}".encode() for i in range(40)]
    leaves = [leaf_hash(d) for d in data]
    for n in range(1, len(data) + 1):
        for m in range(1, n):
            proof = consistency_path(leaves, m, n)
            assert proof == subproof(m, data[:n], True)
            assert rfc9162_consistent(m, n, mth(data[:m]), mth(data[:n]), proof)
            forked = data[:m - 1] + [b"rewritten"] + data[m:n]
            assert not rfc9162_consistent(m, n, mth(forked[:m]), mth(data[:n]), proof)
            assert not rfc9162_consistent(m, n, mth(data[:m]), mth(forked), proof)


def test_roots_and_paths_agree_with_the_recursive_definition_at_every_size() -> None:
    data = [f"event {i}".encode() for i in range(70)]
    leaves = [leaf_hash(d) for d in data]
    tree = Frontier()
    for n in range(1, len(data) + 1):
        tree.append(leaves[n - 1])
        root = mth(data[:n])
        assert tree.root() == root
        assert len(tree.nodes) == bin(n).count("1")  # O(log n) state
        resumed = Frontier.from_json(n, tree.to_json())
        assert resumed.root() == root
        for m in range(n):
            proof = inclusion_path(leaves, m, n)
            assert proof == path(m, data[:n])
            assert rfc9162_verify(m, n, data[m], proof, root)
            assert not rfc9162_verify(m, n, data[m] + b"!", proof, root)
            if proof:
                assert not rfc9162_verify(m, n, data[m], proof[:-1], root)
                assert not rfc9162_verify(m, n, data[m], [proof[0][::-1], *proof[1:]], root)
            if n > 1:
                assert not rfc9162_verify((m + 1) % n, n, data[m], proof, root)


# -- a real store -----------------------------------------------------------------------------------

@pytest.fixture
def signed(tmp_path: Path, store_at: StoreAt) -> tuple[AuditStore, Signer, Path, Path]:
    private, public = keygen(tmp_path / "keys", "audit.test.example/log")
    signer = Signer.parse(private.read_text())
    store = store_at.open(signer=signer, checkpoint_every=8, witness=FileWitness(tmp_path / "witness.jsonl"))
    (tmp_path / "audit-line").write_text(store_at.config_line())
    for i in range(13):
        store.append({"type": ev.REQUESTED, "call_id": f"c{i}", "text": f"SELECT {i}", "identity": {"subject": "alice"}})
        store.append_many([{"type": ev.FINISHED, "call_id": f"c{i}", "row_count": 1, "duration_ms": 0.5,
                            "result": {"columns": ["n"], "rows": [[i]]}}])
    return store, signer, public, tmp_path


def test_keys_are_signed_note_keys_and_checkpoints_c2sp_notes(signed: tuple[AuditStore, Signer, Path, Path]) -> None:
    store, signer, public, tmp_path = signed
    assert (tmp_path / "keys" / "audit-checkpoint.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys" / "audit-checkpoint.key").read_text().startswith("PRIVATE+KEY+audit.test.example/log+")
    assert Verifier.parse(public.read_text()) == signer.verifier
    rows = store.read("SELECT size, note FROM tree_checkpoints ORDER BY size")
    assert [r[0] for r in rows] == [8, 16, 24]  # exactly at the cadence, though appends came in batches
    for size, note in rows:
        origin, signed_size, root = note_checkpoint(note, public.read_text().strip())
        assert (origin, signed_size) == ("audit.test.example/log", size)
        data = [ev.canonical(tuple(r)) for r in store.read(f"SELECT {', '.join(ev.FIELDS)} FROM events "
                                                           f"WHERE seq <= ? ORDER BY seq", (size,))]
        assert root == mth(data)


def test_a_calls_proof_checks_offline_against_the_rfc_algorithm(signed: tuple[AuditStore, Signer, Path, Path]) -> None:
    store, signer, public, tmp_path = signed
    assert store.checkpoint() == 26
    proof = json.loads(json.dumps(prove(store, "c3")))
    origin, size, root = note_checkpoint(proof["checkpoint"], public.read_text().strip())
    assert size == 26 and [e["seq"] for e in proof["events"]] == [7, 8]
    for event in proof["events"]:
        assert rfc9162_verify(event["index"], size, event["leaf"].encode(),
                              [base64.b64decode(h) for h in event["path"]], root)
        assert json.loads(event["leaf"])[2] == "c3"
    assert verify_proof(proof, signer.verifier) == [(7, ev.REQUESTED), (8, ev.FINISHED)]
    # Against an older checkpoint that already covered the call.
    older = prove(store, "c3", size=8)
    assert note_checkpoint(older["checkpoint"], public.read_text().strip())[1] == 8
    assert verify_proof(older, signer.verifier)


def test_an_altered_proof_or_another_key_is_refused(signed: tuple[AuditStore, Signer, Path, Path]) -> None:
    store, signer, _, _ = signed
    store.checkpoint()
    proof = prove(store, "c5")
    edited = json.loads(json.dumps(proof))
    edited["events"][1]["leaf"] = edited["events"][1]["leaf"].replace("[[5]]", "[[6]]")
    assert edited != proof
    with pytest.raises(ProofError, match="not in the log"):
        verify_proof(edited, signer.verifier)
    moved = json.loads(json.dumps(proof))
    moved["call_id"] = "c6"
    with pytest.raises(ProofError, match="not an event of call"):
        verify_proof(moved, signer.verifier)
    forged = json.loads(json.dumps(proof))
    forged["checkpoint"] = forged["checkpoint"].replace("\n26\n", "\n27\n")
    with pytest.raises(ProofError, match="signature does not verify"):
        verify_proof(forged, signer.verifier)
    with pytest.raises(ProofError, match="not signed by"):
        verify_proof(proof, Signer.generate("audit.test.example/log").verifier)


def test_prove_and_verify_proof_from_the_command_line_and_the_standalone_script(
        signed: tuple[AuditStore, Signer, Path, Path]) -> None:
    store, signer, public, tmp_path = signed
    config = tmp_path / "bastion.toml"
    config.write_text(f'[audit]\n{(tmp_path / "audit-line").read_text()}\ncheckpoint_key_file = "keys/audit-checkpoint.key"\n'
                      f'checkpoint_every = 8\nwitness = "file://{tmp_path}/witness.jsonl"\n')
    runner = CliRunner()
    result = runner.invoke(main, ["audit", "prove", "c12", "--config", str(config)])
    assert result.exit_code == 1 and "no signed checkpoint covers event 26 yet" in result.output
    result = runner.invoke(main, ["audit", "checkpoint", "--config", str(config)])
    assert result.exit_code == 0 and "signed a checkpoint at 26 events, witnessed" in result.output
    proof_file = tmp_path / "c12.proof.json"
    result = runner.invoke(main, ["audit", "prove", "c12", "--config", str(config), "-o", str(proof_file)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["audit", "verify-proof", str(proof_file), "--public-key", str(public)])
    assert result.exit_code == 0 and "event 25 (call.requested) of call c12 is in it" in result.output
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "verify_proof.py"), str(proof_file), str(public)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and "ok: proved" in done.stdout and "event 26 (call.finished" in done.stdout
    proof_file.write_text(proof_file.read_text().replace('\\"SELECT 12\\"', '\\"SELECT 13\\"'))
    result = runner.invoke(main, ["audit", "verify-proof", str(proof_file), "--public-key", str(public)])
    assert result.exit_code == 1 and "not proved: event 25 is not in the log" in result.output
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "verify_proof.py"), str(proof_file), str(public)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1 and "not proved: event 25 is not in the signed log" in done.stdout


def test_a_consistency_proof_between_two_checkpoints_checks_offline(signed: tuple[AuditStore, Signer, Path, Path]) -> None:
    store, signer, public, tmp_path = signed
    store.checkpoint()
    proof = json.loads(json.dumps(prove_consistency(store, 8)))
    old, new = note_checkpoint(proof["old"], public.read_text().strip()), note_checkpoint(proof["new"], public.read_text().strip())
    assert (old[1], new[1]) == (8, 26)
    assert rfc9162_consistent(8, 26, old[2], new[2], [base64.b64decode(h) for h in proof["path"]])
    assert verify_consistency_proof(proof, signer.verifier) == (8, 26)
    proof_file = tmp_path / "consistency.json"
    proof_file.write_text(json.dumps(proof))
    result = CliRunner().invoke(main, ["audit", "verify-proof", str(proof_file), "--public-key", str(public)])
    assert result.exit_code == 0 and "the log of 8 events signed by audit.test.example/log is a prefix of its log of 26" in result.output
    proof["path"] = proof["path"][::-1]
    with pytest.raises(ProofError, match="not a prefix"):
        verify_consistency_proof(proof, signer.verifier)
    config = tmp_path / "bastion.toml"
    config.write_text(f'[audit]\n{(tmp_path / "audit-line").read_text()}\ncheckpoint_every = 8\n')
    result = CliRunner().invoke(main, ["audit", "verify", "--consistency", "8", "26", "--public-key", str(public),
                                       "--config", str(config)])
    assert result.exit_code == 0 and "the log of 8 events is a prefix of the log of 26 events" in result.output
    result = CliRunner().invoke(main, ["audit", "verify", "--consistency", "8", "9", "--public-key", str(public),
                                       "--config", str(config)])
    assert result.exit_code == 1 and "not proved" in result.output


def test_proofs_read_stored_subtrees_not_the_whole_log_and_survive_a_damaged_one(tmp_path: Path) -> None:
    from bastion.store.proofs import _Subtrees

    signer = Signer.generate("audit.test.example/log")
    store = SqliteAuditStore(tmp_path / "audit.db", signer=signer, checkpoint_every=1000)
    store.conn.execute("PRAGMA synchronous=OFF")
    for i in range(0, 5000, 250):
        store.append_many([{"type": ev.REQUESTED, "call_id": f"c{j}", "text": f"SELECT {j}"} for j in range(i, i + 250)])
    store.append({"type": ev.FINISHED, "call_id": "c1234", "row_count": 0})
    store.checkpoint()
    data = [ev.canonical(tuple(r)) for r in store.read(f"SELECT {', '.join(ev.FIELDS)} FROM events ORDER BY seq")]
    nodes = store.read("SELECT level, idx, hash FROM tree_nodes ORDER BY level, idx")
    assert [(lv, i) for lv, i, _ in nodes] == [(10, 0), (10, 1), (10, 2), (10, 3), (11, 0), (11, 1), (12, 0)]
    for level, idx, hash_ in nodes:
        assert bytes.fromhex(hash_) == mth(data[idx << level:(idx + 1) << level])
    origin, size, root = note_checkpoint(prove(store, "c1234")["checkpoint"], signer.verifier.text())
    subtrees = _Subtrees(store)
    path = inclusion_path(None, 1234, size, subtrees)
    assert subtrees.read < 1024 + (size % 1024)  # its own block and the ragged right edge, not 5001 events
    assert path == [mth(data[a:b]) for a, b in _ranges(1234, size)]
    proof = prove(store, "c1234")
    assert [e["seq"] for e in proof["events"]] == [1235, 5001] and verify_proof(proof, signer.verifier)
    for e in proof["events"]:
        assert rfc9162_verify(e["index"], size, e["leaf"].encode(), [base64.b64decode(h) for h in e["path"]], root)
    # A damaged cached subtree (it is unsigned): the proof is built again from the events.
    conn = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    conn.execute("DROP TRIGGER tree_nodes_append_only_update")
    conn.execute("UPDATE tree_nodes SET hash = ? WHERE level = 11 AND idx = 1", ("00" * 32,))
    assert verify_proof(prove(store, "c1234"), signer.verifier)
    assert verify_consistency_proof(prove_consistency(store, 2000), signer.verifier) == (2000, 5001)


def _ranges(index: int, size: int) -> list[tuple[int, int]]:
    from bastion.store.merkle import inclusion_ranges

    return inclusion_ranges(index, size)
