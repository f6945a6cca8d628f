"""Event types and the canonical form the hash chain is computed over."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any

REQUESTED = "call.requested"
DENIED = "call.denied"
FINISHED = "call.finished"
FAILED = "call.failed"
EXPIRED = "call.expired"
INTERRUPTED = "call.interrupted"
# A call held for approval (not terminal; `result` carries the hold id), and the terminal event of a
# call whose wait ended with its hold still pending: the hold lives on, the agent calls again.
HELD = "call.held"
PENDING = "call.pending"
TERMINAL = (DENIED, FINISHED, FAILED, EXPIRED, INTERRUPTED, PENDING)

# A held call's life (store/approvals.py), recorded under the hold id as `call_id`.
APPROVAL_GRANTED = "approval.granted"  # one approver's approval (the hold is approved once enough)
APPROVAL_DENIED = "approval.denied"  # an approver's denial, with their reason
APPROVAL_CONSUMED = "approval.consumed"  # an approved hold used, once, by a call with its binding
APPROVAL_EXPIRED = "approval.expired"  # a pending or unused approved hold reached its expiry
APPROVAL_PREVIEW = "approval.preview"  # the impact preview approvers were shown

# The fields an event may carry, in the order the chain hashes them. JSON-valued ones are marked.
FIELDS: tuple[str, ...] = (
    "event_id", "type", "call_id", "time", "identity", "client", "session", "connection", "tool",
    "text", "reason", "facts", "decision", "result", "row_count", "truncated", "duration_ms", "error", "instance",
)
JSON_FIELDS = frozenset({"identity", "client", "facts", "decision", "result", "error"})
GENESIS = "0" * 64


def canonical(values: Sequence[Any]) -> bytes:
    """One stored row as the bytes the chain hashes: the JSON array of its FIELDS' values in FIELDS
    order (JSON-valued columns as their stored JSON text), no whitespace, UTF-8."""
    return json.dumps(list(values), separators=(",", ":"), ensure_ascii=False, default=str).encode()


def chain_hash(prev_hash: str, row: dict[str, Any]) -> str:
    return chain_hash_values(prev_hash, [row.get(k) for k in FIELDS])


def chain_hash_values(prev_hash: str, values: Sequence[Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(values)).hexdigest()


def checkpoint_mac(key: bytes, seq: int, hash_: str) -> str:
    """A checkpoint's HMAC-SHA256 over the chain's position and hash at that point."""
    return hmac.new(key, f"{seq}\n{hash_}".encode(), hashlib.sha256).hexdigest()
