"""Event types, their shapes, and the canonical form the hash chain is computed over.

Every event is one row of the `events` table: the columns `FIELDS` plus seq, prev_hash and hash.
Each kind's TypedDict below says which columns the code writes for it (`AuditEvent` is any of
them); the store fills in the `Envelope` when it appends. Read back, a row carries every column,
None where its kind wrote nothing: that is `StoredEvent`. tests/test_event_types.py checks both
against the events of a real guarded run.
"""

# No `from __future__ import annotations` here: on Python 3.11 a TypedDict only sees NotRequired
# in an evaluated annotation (its __required_keys__ are wrong otherwise, and tests read them).
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, NotRequired, TypedDict, Union, get_args

from bastion.policy.identity import IdentityRecord

REQUESTED: Final = "call.requested"
DENIED: Final = "call.denied"
FINISHED: Final = "call.finished"
FAILED: Final = "call.failed"
EXPIRED: Final = "call.expired"
INTERRUPTED: Final = "call.interrupted"
# A call held for approval (not terminal; `result` carries the hold id), and the terminal event of a
# call whose wait ended with its hold still pending: the hold lives on, the agent calls again.
HELD: Final = "call.held"
PENDING: Final = "call.pending"
TERMINAL = (DENIED, FINISHED, FAILED, EXPIRED, INTERRUPTED, PENDING)
# The guard's end of a call whose `call.requested` (with the decision) is already on disk. With
# `[audit] sync = "before-run"` a transaction of only these commits at once (safe from a killed
# gateway) and is fsynced within FLUSH_S: a power loss in between leaves the call open, and
# start-up closes it as interrupted. Everything else is fsynced before the caller goes on.
FLUSHED_LATER = frozenset({DENIED, FINISHED, FAILED})
FLUSH_S = 0.05

# A held call's life (store/approvals.py), recorded under the hold id as `call_id`.
APPROVAL_GRANTED: Final = "approval.granted"  # one approver's approval (the hold is approved once enough)
APPROVAL_DENIED: Final = "approval.denied"  # an approver's denial, with their reason
APPROVAL_CONSUMED: Final = "approval.consumed"  # an approved hold used, once, by a call with its binding
APPROVAL_EXPIRED: Final = "approval.expired"  # a pending or unused approved hold reached its expiry
APPROVAL_PREVIEW: Final = "approval.preview"  # the impact preview approvers were shown

# The fields an event may carry, in the order the chain hashes them. JSON-valued ones are marked.
FIELDS: tuple[str, ...] = (
    "event_id", "type", "call_id", "time", "identity", "client", "session", "connection", "tool",
    "text", "reason", "facts", "decision", "result", "row_count", "truncated", "duration_ms", "error", "instance",
)
JSON_FIELDS = frozenset({"identity", "client", "facts", "decision", "result", "error"})
GENESIS = "0" * 64


# JSON objects inside an event whose shape is their producer's (a tool's result, a policy's facts and
# decision, a webhook's delivery record): read as JSON is, by whoever knows that producer.
JsonObject = dict[str, Any]


class ErrorRecord(TypedDict):
    """Why a call did not run or did not finish (tools/guard.py's `error_record`)."""

    code: str
    message: str
    hint: NotRequired[str]
    detail: NotRequired[str]


class Envelope(TypedDict):
    """What the store fills in when it appends any event (absent before, present after)."""

    event_id: NotRequired[str]
    time: NotRequired[str]
    instance: NotRequired[str | None]  # the gateway process that wrote it; None in logs before 0002
    seq: NotRequired[int]
    prev_hash: NotRequired[str]
    hash: NotRequired[str]


# -- a guarded call's life (tools/guard.py, tools/holds.py) -------------------------------------

class CallRequested(Envelope):
    """Recorded before anything runs. A call refused before the guard decided has no facts or decision."""

    type: Literal["call.requested"]
    call_id: str
    identity: IdentityRecord
    client: JsonObject | None  # what the MCP client said about itself, or its address
    session: str | None
    connection: str
    tool: str
    text: str
    reason: str | None
    facts: NotRequired[JsonObject | None]
    decision: NotRequired[JsonObject | None]  # Decision.as_record(), plus run_as / confirmed_by


class CallDenied(Envelope):
    """Terminal: the policy, the guard, or an approver refused it (an approver's: `result` names the hold)."""

    type: Literal["call.denied"]
    call_id: str
    error: ErrorRecord
    decision: NotRequired[JsonObject | None]
    result: NotRequired[JsonObject | None]


class CallFinished(Envelope):
    """Terminal: the result exactly as returned to the agent. Calls that run nothing guarded
    (describe, list_connections, check) record only the result."""

    type: Literal["call.finished"]
    call_id: str
    result: JsonObject | None
    connection: NotRequired[str | None]
    tool: NotRequired[str | None]
    duration_ms: NotRequired[float | None]
    row_count: NotRequired[int | None]
    truncated: NotRequired[bool | None]


class Outcome(TypedDict):
    """The columns a tool's result fills in its `call.finished` (tools/sql.py's `result_record` and
    the like): the result as returned to the agent, and how much of it there was."""

    result: JsonObject
    row_count: NotRequired[int]
    truncated: NotRequired[bool]


class CallFailed(Envelope):
    """Terminal: it started and failed (or the client cancelled it)."""

    type: Literal["call.failed"]
    call_id: str
    error: ErrorRecord
    duration_ms: float


class CallExpired(Envelope):
    """Terminal: its hold expired or closed before it was approved."""

    type: Literal["call.expired"]
    call_id: str
    error: ErrorRecord
    result: JsonObject  # {hold_id, status}


class CallPending(Envelope):
    """Terminal: the wait ended with the hold still pending (no error: the client cancelled)."""

    type: Literal["call.pending"]
    call_id: str
    result: JsonObject  # {hold_id, status[, cancelled]}
    error: NotRequired[ErrorRecord | None]


class CallInterrupted(Envelope):
    """Terminal, written at start-up: the gateway stopped before the call ended."""

    type: Literal["call.interrupted"]
    call_id: str
    error: ErrorRecord


# -- a held call's life (store/approvals.py), under the hold id as `call_id` ----------------------

class _HoldChange(Envelope):
    call_id: str
    connection: str | None
    tool: str
    result: JsonObject  # the hold's summary (ApprovalStore._summary) and what changed


class CallHeld(_HoldChange):
    """Not terminal: the call waits for approvers (the call's own id; `result` has the hold id)."""

    type: Literal["call.held"]


VoteType = Literal["approval.granted", "approval.denied"]


class ApprovalVote(_HoldChange):
    """One approver's vote; a denial carries their reason."""

    type: VoteType
    identity: IdentityRecord
    reason: str | None


class ApprovalConsumed(_HoldChange):
    type: Literal["approval.consumed"]


class ApprovalExpired(_HoldChange):
    type: Literal["approval.expired"]


class ApprovalPreview(_HoldChange):
    type: Literal["approval.preview"]


# -- around the calls ---------------------------------------------------------------------------

class AuthRefused(Envelope):
    """A presented token was refused: why and from where, never the token."""

    type: Literal["auth.refused"]
    client: JsonObject | None
    error: JsonObject  # an ErrorRecord plus the refusal's details


def auth_refused(reason: str, client: JsonObject | None, details: Mapping[str, object]) -> AuthRefused:
    """The event of a refused token (the gateway's and `bastion`'s own, one shape)."""
    return AuthRefused(type="auth.refused", client=client or None,
                       error={"code": "auth_refused", "message": reason, **details})


class ConnectionChecked(Envelope):
    """At start-up: the privileges a connection's login was found to have, accepted or refused."""

    type: Literal["connection.checked"]
    connection: str
    result: JsonObject


AlertType = Literal["alert.denials", "alert.large-result", "alert.egress"]


class Alert(Envelope):
    """An alert rule fired after a call ended (tools/alerts.py); the fields are the call's."""

    type: AlertType
    call_id: str | None
    identity: IdentityRecord | None
    connection: str | None
    tool: str | None
    reason: str
    result: JsonObject  # {rule, ...the figures}


WebhookKind = Literal["alert.webhook", "approval.webhook"]
DeliveryType = Literal["alert.webhook.delivered", "alert.webhook.failed",
                       "approval.webhook.delivered", "approval.webhook.failed"]


class WebhookDelivery(Envelope):
    """A webhook delivered, or given up on after its retries (tools/webhooks.py)."""

    type: DeliveryType
    call_id: str | None
    result: JsonObject  # the sender's record plus attempts and detail


def delivery_type(kind: WebhookKind, ok: bool) -> DeliveryType:
    if kind == "alert.webhook":
        return "alert.webhook.delivered" if ok else "alert.webhook.failed"
    return "approval.webhook.delivered" if ok else "approval.webhook.failed"


# Any event, as written or as read back; narrow on ``event["type"]``.
AuditEvent = Union[CallRequested, CallDenied, CallFinished, CallFailed, CallExpired, CallPending, CallInterrupted,
                   CallHeld, ApprovalVote, ApprovalConsumed, ApprovalExpired, ApprovalPreview, AuthRefused,
                   ConnectionChecked, Alert, WebhookDelivery]
# The terminal events of a call (TERMINAL's kinds).
Terminal = Union[CallDenied, CallFinished, CallFailed, CallExpired, CallInterrupted, CallPending]

class StoredEvent(TypedDict):
    """An event as the store reads it back: every column, None where its kind writes nothing."""

    seq: int
    event_id: str
    type: str
    call_id: str | None
    time: str
    identity: IdentityRecord | None
    client: JsonObject | None
    session: str | None
    connection: str | None
    tool: str | None
    text: str | None
    reason: str | None
    facts: JsonObject | None
    decision: JsonObject | None
    result: JsonObject | None
    row_count: int | None
    truncated: bool | None
    duration_ms: float | None
    error: JsonObject | None
    instance: str | None
    prev_hash: str
    hash: str


# Each kind's shape by its `type`, for code and tests that go from a stored row to its TypedDict.
SHAPES: dict[str, type[Mapping[str, object]]] = {
    REQUESTED: CallRequested, DENIED: CallDenied, FINISHED: CallFinished, FAILED: CallFailed,
    EXPIRED: CallExpired, PENDING: CallPending, INTERRUPTED: CallInterrupted, HELD: CallHeld,
    APPROVAL_GRANTED: ApprovalVote, APPROVAL_DENIED: ApprovalVote, APPROVAL_CONSUMED: ApprovalConsumed,
    APPROVAL_EXPIRED: ApprovalExpired, APPROVAL_PREVIEW: ApprovalPreview, "auth.refused": AuthRefused,
    "connection.checked": ConnectionChecked,
    **{kind: Alert for kind in get_args(AlertType)}, **{kind: WebhookDelivery for kind in get_args(DeliveryType)},
}


def canonical(values: Sequence[Any]) -> bytes:
    """One stored row as the bytes the chain hashes: the JSON array of its FIELDS' values in FIELDS
    order (JSON-valued columns as their stored JSON text), no whitespace, UTF-8."""
    return json.dumps(list(values), separators=(",", ":"), ensure_ascii=False, default=str).encode()


def chain_hash(prev_hash: str, row: Mapping[str, object]) -> str:
    return chain_hash_values(prev_hash, [row.get(k) for k in FIELDS])


def chain_hash_values(prev_hash: str, values: Sequence[Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(values)).hexdigest()


def checkpoint_mac(key: bytes, seq: int, hash_: str) -> str:
    """A checkpoint's HMAC-SHA256 over the chain's position and hash at that point."""
    return hmac.new(key, f"{seq}\n{hash_}".encode(), hashlib.sha256).hexdigest()
