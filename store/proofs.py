"""Inclusion proofs: a call's events, each with its RFC 9162 audit path to a signed checkpoint.

A proof (schema `bastion.audit.proof/1`) is a JSON object:

    {"schema": "bastion.audit.proof/1", "call_id": "...", "checkpoint": "<signed note>",
     "events": [{"seq": 17, "index": 16, "type": "call.requested",
                 "leaf": "<the event's canonical JSON array>", "path": ["<base64 hash>", ...]}]}

A third party checks it offline with the log's public key alone: the note's signature, then for each
event SHA-256(0x00 || leaf) climbed along `path` to the checkpoint's root (RFC 9162 section 2.1.3.2),
and that the leaf names the call. docs/verify_proof.py does it with hashlib and cryptography only.

A consistency proof (schema `bastion.audit.consistency/1`) shows the log an older checkpoint signs is
a prefix of the log a newer one signs (RFC 9162 section 2.1.4): `{"old": note, "new": note,
"path": [...]}`, checked with the public key alone.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

from bastion.store import events as ev
from bastion.store.checkpoints import NoteError, Verifier, open_checkpoint
from bastion.store.errors import StoreError
from bastion.store.merkle import consistency_path, inclusion_path, leaf_hash, verify_consistency, verify_inclusion

if TYPE_CHECKING:
    from bastion.store.sqlite_store import SqliteAuditStore

SCHEMA = "bastion.audit.proof/1"
CONSISTENCY = "bastion.audit.consistency/1"
_CALL_ID = ev.FIELDS.index("call_id")


class ProofError(StoreError):
    """A proof that does not prove what it says."""


def prove(store: SqliteAuditStore, call_id: str, size: int | None = None) -> dict[str, Any]:
    """The inclusion proof of ``call_id``'s events against the latest signed checkpoint that covers
    them (or the one at ``size``). Reads every event up to the checkpoint: O(n) hashing."""
    seqs = [row[0] for row in store.read("SELECT seq FROM events WHERE call_id = ? ORDER BY seq", (call_id,))]
    if not seqs:
        raise StoreError(f"no call `{call_id}` in the audit log")
    if size is None:
        rows = store.read("SELECT size, note FROM tree_checkpoints WHERE size >= ? ORDER BY size DESC LIMIT 1",
                          (seqs[-1],))
    else:
        rows = store.read("SELECT size, note FROM tree_checkpoints WHERE size = ?", (size,))
    if not rows:
        raise StoreError(f"no signed checkpoint covers event {seqs[-1]} yet" if size is None else
                         f"no signed checkpoint at {size} events",
                         )
    size, note = rows[0][0], rows[0][1]
    if size < seqs[-1]:
        raise StoreError(f"the checkpoint at {size} events does not cover event {seqs[-1]} of the call")
    data: dict[int, tuple[str, str]] = {}
    leaves = _leaves(store, size, set(seqs), data)
    return {"schema": SCHEMA, "call_id": call_id, "checkpoint": note,
            "events": [{"seq": s, "index": s - 1, "type": data[s][1], "leaf": data[s][0],
                        "path": [base64.b64encode(h).decode() for h in inclusion_path(leaves, s - 1, size)]}
                       for s in seqs]}


def _leaves(store: SqliteAuditStore, size: int, wanted: frozenset[int] | set[int] = frozenset(),
            data: dict[int, tuple[str, str]] | None = None) -> list[bytes]:
    """The leaf hashes of events 1..size, in slices on the reader connection; the canonical text and
    type of the ``wanted`` ones into ``data``."""
    leaves: list[bytes] = []
    seq = 0
    while seq < size:
        batch = store.read(f"SELECT seq, {', '.join(ev.FIELDS)} FROM events WHERE seq > ? AND seq <= ? ORDER BY seq "
                           f"LIMIT 50000", (seq, size))
        if not batch:
            break
        for row in batch:
            if row[0] != len(leaves) + 1:
                raise StoreError(f"event {len(leaves) + 1} is missing from the log: it cannot be proved")
            canonical = ev.canonical(tuple(row)[1:])
            leaves.append(leaf_hash(canonical))
            if data is not None and row[0] in wanted:
                data[row[0]] = (canonical.decode(), row[2])
        seq = batch[-1][0]
    if len(leaves) != size:
        raise StoreError(f"the log holds {len(leaves)} events, fewer than its checkpoint's {size}")
    return leaves


def prove_consistency(store: SqliteAuditStore, old: int, new: int | None = None) -> dict[str, Any]:
    """The consistency proof between the signed checkpoints at ``old`` and ``new`` events (default:
    the latest)."""
    rows = {size: note for size, note in store.read(
        "SELECT size, note FROM tree_checkpoints WHERE size = ? OR size = coalesce(?, (SELECT max(size) FROM "
        "tree_checkpoints))", (old, new))}
    new = new if new is not None else max(rows, default=0)
    for size in (old, new):
        if size not in rows:
            raise StoreError(f"no signed checkpoint at {size} events")
    if old > new:
        raise StoreError(f"the older checkpoint ({old} events) is larger than the newer ({new})")
    path = consistency_path(_leaves(store, new), old, new)
    return {"schema": CONSISTENCY, "old": rows[old], "new": rows[new],
            "path": [base64.b64encode(h).decode() for h in path]}


def verify_consistency_proof(proof: dict[str, Any], verifier: Verifier) -> tuple[int, int]:
    """(old size, new size) when both checkpoints verify and the older log is a prefix of the newer."""
    try:
        old, new = open_checkpoint(proof["old"], verifier), open_checkpoint(proof["new"], verifier)
        path = [base64.b64decode(h, validate=True) for h in proof["path"]]
    except NoteError as error:
        raise ProofError(f"a checkpoint of the proof: {error}") from None
    except (KeyError, TypeError, ValueError) as error:
        raise ProofError(f"a malformed consistency proof ({error})") from None
    if not verify_consistency(old.size, new.size, old.root, new.root, path):
        raise ProofError(f"the log of {old.size} events is not a prefix of the log of {new.size} "
                         "(history was rewritten between them, or the proof was altered)")
    return old.size, new.size


def verify_proof(proof: dict[str, Any], verifier: Verifier) -> list[tuple[int, str]]:
    """(seq, type) of each event the proof shows in the signed log; raises ProofError otherwise."""
    if not isinstance(proof, dict) or proof.get("schema") != SCHEMA:
        raise ProofError(f"not a proof of schema {SCHEMA}")
    try:
        checkpoint = open_checkpoint(proof["checkpoint"], verifier)
    except NoteError as error:
        raise ProofError(f"the proof's checkpoint: {error}") from None
    shown = []
    for entry in proof.get("events") or []:
        try:
            leaf, index, seq = entry["leaf"], int(entry["index"]), int(entry["seq"])
            path = [base64.b64decode(h, validate=True) for h in entry["path"]]
            values = json.loads(leaf)
        except (KeyError, TypeError, ValueError) as error:
            raise ProofError(f"a malformed event in the proof ({error})") from None
        if index != seq - 1:
            raise ProofError(f"event {seq} is given at leaf {index}, not {seq - 1}")
        if not isinstance(values, list) or len(values) != len(ev.FIELDS) or values[_CALL_ID] != proof.get("call_id"):
            raise ProofError(f"event {seq} is not an event of call `{proof.get('call_id')}`")
        if not verify_inclusion(leaf_hash(leaf.encode()), index, checkpoint.size, path, checkpoint.root):
            raise ProofError(f"event {seq} is not in the log the checkpoint at {checkpoint.size} events signs "
                             "(the proof or the event was altered)")
        shown.append((seq, values[ev.FIELDS.index("type")]))
    if not shown:
        raise ProofError("the proof shows no event")
    return shown
