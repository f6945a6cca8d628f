"""Approval notices by webhook to a real local HTTP server: both shapes, a link to the page, retries
with backoff, failures recorded, and never a blocked or lost hold."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bastion.policy.approvals import ApprovalPolicy
from bastion.policy.identity import Identity
from bastion.store import events as ev
from bastion.store.approvals import ApprovalStore, Held
from bastion.store.sqlite_store import SqliteAuditStore
from bastion.tools.notify import ApprovalNotifier, ApprovalWebhook, message
from bastion.tools.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, post_json, verify_signature

ALICE = Identity("alice", frozenset({"dev"}), email="alice@example.com")
BOB = Identity("bob", frozenset({"dba"}))
TEXT = "DELETE FROM orders WHERE note = '<b>&</b>'"


class Receiver:
    """A real HTTP server on loopback that records what it receives; ``replies`` sets the status
    codes of the next requests to a path (204 once they run out)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.raw: list[tuple[bytes, dict[str, str]]] = []  # each body as sent, with its headers
        self.replies: dict[str, list[int]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                data = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.raw.append((data, dict(self.headers)))
                receiver.received.append((self.path, json.loads(data)))
                queue = receiver.replies.get(self.path)
                status = queue.pop(0) if queue else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.received if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[SqliteAuditStore]:
    store = SqliteAuditStore(tmp_path / "audit.db")
    yield store
    store.close()


def wired(audit: SqliteAuditStore, hooks: list[ApprovalWebhook]) -> tuple[ApprovalStore, ApprovalNotifier]:
    notifier = ApprovalNotifier(hooks, "https://bastion.example.com/", audit, backoff_s=0.01)
    return ApprovalStore(audit, listeners=[notifier.on_change]), notifier


def hold(store: ApprovalStore, call_id: str = "call-1", min_approvals: int = 1, ttl_s: float = 600) -> Held:
    return store.hold(call_id=call_id, requester=ALICE, connection="prod", tool="sql_execute", text=TEXT,
                      policy=ApprovalPolicy(frozenset({"dba"}), min_approvals=min_approvals, ttl_s=ttl_s),
                      rule="read-write:unfiltered", reason="clean up the test orders")


def deliveries(audit: SqliteAuditStore, outcome: str) -> list[dict[str, Any]]:
    return [e["result"] for e in audit.iter_all() if e["type"] == f"approval.webhook.{outcome}"]


def test_a_held_call_is_told_in_slack_and_generic_shapes_with_a_link(audit: SqliteAuditStore,
                                                                    receiver: Receiver) -> None:
    approvals, notifier = wired(audit, [ApprovalWebhook(f"{receiver.url}/slack", "slack", name="chat"),
                                        ApprovalWebhook(f"{receiver.url}/generic")])
    held = hold(approvals)
    assert notifier.flush(10)
    link = f"https://bastion.example.com/approvals/{held.hold_id}"
    (slack,) = receiver.bodies("/slack")
    assert list(slack) == ["text"]
    assert f"<{link}|Review and decide>" in slack["text"] and "*Held for approval*" in slack["text"]
    assert "`alice`" in slack["text"] and "`read-write:unfiltered`" in slack["text"]
    assert "Reason: clean up the test orders" in slack["text"]
    assert "note = '&lt;b&gt;&amp;&lt;/b&gt;'" in slack["text"]  # user text escaped for mrkdwn
    (generic,) = receiver.bodies("/generic")
    assert generic["event"] == "approval.held" and generic["hold_id"] == held.hold_id and generic["link"] == link
    assert generic["text"] == TEXT and generic["requester"] == {"subject": "alice", "email": "alice@example.com",
                                                                "name": None}
    assert generic["rule"] == "read-write:unfiltered" and generic["reason"] == "clean up the test orders"
    assert generic["approver_groups"] == ["dba"] and generic["expires_at"] == held.expires_at
    assert sorted(d["webhook"] for d in deliveries(audit, "delivered")) == ["#2", "chat"]
    assert all(d["hold_id"] == held.hold_id and d["attempts"] == 1 and d["detail"] == "HTTP 204"
               for d in deliveries(audit, "delivered"))
    # Recorded under the hold id, beside the hold's own events.
    assert [e["type"] for e in audit.call(held.hold_id)] == ["approval.webhook.delivered"] * 2


def test_approved_denied_and_expired_are_told_once_each(audit: SqliteAuditStore, receiver: Receiver) -> None:
    approvals, notifier = wired(audit, [ApprovalWebhook(f"{receiver.url}/generic")])
    approved = hold(approvals, "c1", min_approvals=2)
    hold(approvals, "c2", min_approvals=2)  # joined: not told again
    approvals.decide(approved.hold_id, BOB, True)  # one of two: not told yet
    approvals.decide(approved.hold_id, Identity("carol", frozenset({"dba"})), True, "fine")
    approvals.consume(approved.hold_id, "c2", approved.binding)  # not told
    denied = hold(approvals, "c3")
    approvals.decide(denied.hold_id, BOB, False, "use the archive job")
    expiring = hold(approvals, "c4", ttl_s=600)
    approvals.expire_due(approvals.clock() + timedelta(seconds=601))
    assert notifier.flush(10)
    # Each notice is delivered by its own thread: they may arrive in any order.
    notices = sorted((b["notice"], b["hold_id"]) for b in receiver.bodies("/generic"))
    assert notices == sorted([("held", approved.hold_id), ("approved", approved.hold_id), ("held", denied.hold_id),
                       ("denied", denied.hold_id), ("held", expiring.hold_id), ("expired", expiring.hold_id)])
    by_notice = {b["notice"]: b for b in receiver.bodies("/generic")}
    assert by_notice["approved"]["decided_by"]["approver"] == "carol" and by_notice["approved"]["approvals"] == 2
    assert by_notice["denied"]["decided_by"] == {**by_notice["denied"]["decided_by"], "approver": "bob",
                                                 "approve": False, "reason": "use the archive job"}
    assert by_notice["expired"]["status"] == "expired"


def test_a_failing_webhook_is_retried_then_recorded_as_failed_without_blocking_the_hold(
        audit: SqliteAuditStore, receiver: Receiver) -> None:
    approvals, notifier = wired(audit, [ApprovalWebhook("http://127.0.0.1:1/nowhere", name="down"),
                                        ApprovalWebhook(f"{receiver.url}/generic")])
    notifier.sender.backoff_s = 0.5  # three attempts take at least 1.5 s
    started = time.monotonic()
    held = hold(approvals)
    assert time.monotonic() - started < 1.0  # the hold does not wait for its notices
    assert approvals.get(held.hold_id) is not None
    assert notifier.flush(20)
    (failed,) = deliveries(audit, "failed")
    assert failed["webhook"] == "down" and failed["attempts"] == 3 and failed["notice"] == "held"
    assert "127.0.0.1:1" not in failed["detail"] and failed["detail"]
    assert len(receiver.bodies("/generic")) == 1 and len(deliveries(audit, "delivered")) == 1


def test_server_errors_are_retried_with_backoff_and_client_errors_are_not(receiver: Receiver) -> None:
    receiver.replies["/flaky"] = [503, 500, 204]
    receiver.replies["/refuses"] = [400, 204]
    sleeps: list[float] = []
    flaky = post_json(f"{receiver.url}/flaky", {"x": 1}, retries=4, backoff_s=0.5, sleep=sleeps.append)
    assert (flaky.ok, flaky.attempts, flaky.detail) == (True, 3, "HTTP 204") and sleeps == [0.5, 1.0]
    refused = post_json(f"{receiver.url}/refuses", {"x": 1}, retries=4, sleep=sleeps.append)
    assert (refused.ok, refused.attempts, refused.detail) == (False, 1, "HTTP 400")
    down = post_json("http://127.0.0.1:1/", {}, retries=3, backoff_s=0.25, sleep=sleeps.append)
    assert not down.ok and down.attempts == 3 and sleeps[-2:] == [0.25, 0.5]


def test_a_notice_goes_only_to_the_webhooks_that_take_it(audit: SqliteAuditStore, receiver: Receiver) -> None:
    approvals, notifier = wired(audit, [ApprovalWebhook(f"{receiver.url}/decisions", notices=frozenset({"approved"}))])
    held = hold(approvals)
    approvals.decide(held.hold_id, BOB, True)
    assert notifier.flush(10)
    assert [b["notice"] for b in receiver.bodies("/decisions")] == ["approved"]


def test_the_slack_message_clips_long_texts_and_keeps_code_fences_closed() -> None:
    from bastion.store.approvals import HoldStatus

    held = Held("hold-1", "b", "c", "t0", "t1", HoldStatus.PENDING, {"subject": "alice"}, "alice", "prod", "sql_execute",
                "SELECT 1 ```x``` " + "y" * 5000, "h", None, None, "r", ("dba",), 1, None, None, None)
    text = message("held", held, "https://b/approvals/hold-1", "slack")["text"]
    assert "(5,017 characters in all)" in text and text.count("```") == 2
    assert json.loads(json.dumps(message("held", held, "l")))["text"].startswith("SELECT 1")


def test_the_event_types_for_notices_are_documented() -> None:
    docs = (Path(__file__).resolve().parent.parent / "docs" / "audit.md").read_text()
    for kind in (ev.HELD, ev.PENDING, ev.APPROVAL_GRANTED, ev.APPROVAL_DENIED, ev.APPROVAL_CONSUMED,
                 ev.APPROVAL_EXPIRED, ev.APPROVAL_PREVIEW, "approval.webhook.delivered", "approval.webhook.failed"):
        assert f"`{kind}`" in docs, kind


def test_a_webhook_with_a_secret_is_signed_and_a_receiver_can_check_it(audit: SqliteAuditStore,
                                                                        receiver: Receiver) -> None:
    secret = b"a-shared-secret-given-by-reference"
    approvals, notifier = wired(audit, [ApprovalWebhook(f"{receiver.url}/signed", secret=secret),
                                        ApprovalWebhook(f"{receiver.url}/plain")])
    hold(approvals)
    assert notifier.flush(10)
    by_path = {path: raw for (path, _), raw in zip(receiver.received, receiver.raw)}
    body, headers = by_path["/signed"]
    stamp, signed = headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]
    assert signed.startswith("v1=") and verify_signature(secret, stamp, body, signed)
    assert not verify_signature(secret, stamp, body.replace(b"alice", b"mallo"), signed), "a changed body fails"
    assert not verify_signature(b"another secret", stamp, body, signed)
    assert not verify_signature(secret, stamp, body, signed, now=int(stamp) + 3600), "a replayed old notice fails"
    assert SIGNATURE_HEADER not in by_path["/plain"][1]


def test_the_held_notice_carries_the_impact_preview(audit: SqliteAuditStore, receiver: Receiver) -> None:
    approvals, notifier = wired(audit, [ApprovalWebhook(f"{receiver.url}/generic"),
                                        ApprovalWebhook(f"{receiver.url}/slack", "slack")])
    held = hold(approvals)
    approvals.set_preview(held.hold_id, {"statements": [{"kind": "DELETE", "plan": "Delete on orders", "rows": 42}],
                                         "rolled_back": True})
    assert notifier.flush(10)
    (generic,) = receiver.bodies("/generic")
    assert generic["preview"]["statements"][0]["rows"] == 42
    assert generic["impact"] == "DELETE touches 42 rows (dry run, rolled back)"
    (slack,) = receiver.bodies("/slack")
    assert "Impact: DELETE touches 42 rows (dry run, rolled back)" in slack["text"]
