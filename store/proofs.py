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
from bastion.store.merkle import (SINK_LEVEL, _split, consistency_path, inclusion_path, leaf_hash, node_hash, root_of,
                                  verify_consistency, verify_inclusion)

if TYPE_CHECKING:
    from bastion.store.audit_store import AuditStore

SCHEMA = "bastion.audit.proof/1"
CONSISTENCY = "bastion.audit.consistency/1"
_CALL_ID = ev.FIELDS.index("call_id")


class ProofError(StoreError):
    """A proof that does not prove what it says."""


class _Subtrees:
    """Subtree hashes of the log's tree: a perfect subtree of 1024 leaves or more from `tree_nodes`
    where it is there, anything else from its halves, down to the events themselves."""

    def __init__(self, store: AuditStore, cached: bool = True) -> None:
        self.store, self.cached = store, cached
        self.read = 0  # events read, for the curious

    def leaves(self, a: int, b: int) -> list[bytes]:
        rows = self.store.read(f"SELECT seq, {', '.join(ev.FIELDS)} FROM events WHERE seq > ? AND seq <= ? ORDER BY seq",
                               (a, b))
        if len(rows) != b - a or (rows and (rows[0][0] != a + 1 or rows[-1][0] != b)):
            raise StoreError(f"events {a + 1}..{b} are not all in the log: it cannot be proved")
        self.read += len(rows)
        return [leaf_hash(ev.canonical(tuple(row)[1:])) for row in rows]

    def __call__(self, a: int, b: int) -> bytes:
        n = b - a
        if self.cached and n >= 1 << SINK_LEVEL and n & (n - 1) == 0:
            level = n.bit_length() - 1
            row = self.store.read("SELECT hash FROM tree_nodes WHERE level = ? AND idx = ?", (level, a >> level))
            if row:
                return bytes.fromhex(row[0][0])
        if n <= 1 << SINK_LEVEL:
            return root_of(self.leaves(a, b))
        k = _split(n)
        return node_hash(self(a, a + k), self(a + k, b))


def _checkpoint_at(store: AuditStore, size: int | None, covering: int) -> tuple[int, bytes, str]:
    if size is None:
        rows = store.read("SELECT size, root, note FROM tree_checkpoints WHERE size >= ? ORDER BY size DESC LIMIT 1",
                          (covering,))
        if not rows:
            raise StoreError(f"no signed checkpoint covers event {covering} yet")
    else:
        rows = store.read("SELECT size, root, note FROM tree_checkpoints WHERE size = ?", (size,))
        if not rows:
            raise StoreError(f"no signed checkpoint at {size} events")
    return rows[0][0], bytes.fromhex(rows[0][1]), rows[0][2]


def prove(store: AuditStore, call_id: str, size: int | None = None) -> dict[str, Any]:
    """The inclusion proof of ``call_id``'s events against the latest signed checkpoint that covers
    them (or the one at ``size``). Reads the call's events, the stored subtrees of its path and at
    most about two thousand other events; a path that does not reach the checkpoint's root (a damaged
    stored subtree) is built again from the events alone."""
    events = store.read(f"SELECT seq, {', '.join(ev.FIELDS)} FROM events WHERE call_id = ? ORDER BY seq", (call_id,))
    if not events:
        raise StoreError(f"no call `{call_id}` in the audit log")
    size, root, note = _checkpoint_at(store, size, events[-1][0])
    if size < events[-1][0]:
        raise StoreError(f"the checkpoint at {size} events does not cover event {events[-1][0]} of the call")
    proved = []
    for row in events:
        seq, data = row[0], ev.canonical(tuple(row)[1:])
        path = inclusion_path(None, seq - 1, size, _Subtrees(store))
        if not verify_inclusion(leaf_hash(data), seq - 1, size, path, root):
            path = inclusion_path(None, seq - 1, size, _Subtrees(store, cached=False))
            if not verify_inclusion(leaf_hash(data), seq - 1, size, path, root):
                raise StoreError(f"event {seq} no longer hashes to the checkpoint at {size} events (the log was "
                                 "changed: run `bastion audit verify`)")
        proved.append({"seq": seq, "index": seq - 1, "type": row[2], "leaf": data.decode(),
                       "path": [base64.b64encode(h).decode() for h in path]})
    return {"schema": SCHEMA, "call_id": call_id, "checkpoint": note, "events": proved}


def prove_consistency(store: AuditStore, old: int, new: int | None = None) -> dict[str, Any]:
    """The consistency proof between the signed checkpoints at ``old`` and ``new`` events (default:
    the latest)."""
    if new is None:
        latest = store.read("SELECT max(size) FROM tree_checkpoints")[0][0]
        if latest is None:
            raise StoreError("no signed checkpoint yet")
        new = latest
    (old_size, old_root, old_note), (new_size, new_root, new_note) = _checkpoint_at(store, old, 0), _checkpoint_at(store, new, 0)
    if old_size > new_size:
        raise StoreError(f"the older checkpoint ({old_size} events) is larger than the newer ({new_size})")
    path = consistency_path(None, old_size, new_size, _Subtrees(store))
    if not verify_consistency(old_size, new_size, old_root, new_root, path):
        path = consistency_path(None, old_size, new_size, _Subtrees(store, cached=False))
        if not verify_consistency(old_size, new_size, old_root, new_root, path):
            raise StoreError(f"the log no longer holds what the checkpoints at {old_size} and {new_size} events sign "
                             "(run `bastion audit verify`)")
    return {"schema": CONSISTENCY, "old": old_note, "new": new_note,
            "path": [base64.b64encode(h).decode() for h in path]}


def verify_consistency_proof(proof: dict[str, Any], verifier: Verifier | list[Verifier]) -> tuple[int, int]:
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


def verify_proof(proof: dict[str, Any], verifier: Verifier | list[Verifier]) -> list[tuple[int, str]]:
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
