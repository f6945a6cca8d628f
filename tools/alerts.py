"""Alerts over the event stream: many denials by one identity, one very large result, an egress
budget exceeded (after which reads are held or denied). Each emits an `alert.<kind>` event and,
where configured, a webhook (delivered in the background with retries; delivery is recorded)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from bastion.policy import Decision, Identity
from bastion.store import events as ev
from bastion.store.audit_store import AuditStore
from bastion.tools.webhooks import WebhookSender

Kind = Literal["denials", "large-result", "egress"]
_TYPE: dict[Kind, ev.AlertType] = {"denials": "alert.denials", "large-result": "alert.large-result", "egress": "alert.egress"}


@dataclass(frozen=True)
class AlertRule:
    id: str
    kind: Kind
    threshold: int = 5  # denials
    window_s: float = 600.0
    max_rows: int | None = None  # large-result, egress
    max_bytes: int | None = None
    action: Literal["alert", "review", "deny"] = "alert"  # egress: what reads get once over budget
    webhook: str | None = None
    webhook_format: Literal["generic", "slack"] = "generic"


def _ago(seconds: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds)).isoformat(timespec="microseconds")


class Alerts:
    def __init__(self, rules: tuple[AlertRule, ...], store: AuditStore, *, retries: int = 3,
                 backoff_s: float = 0.5) -> None:
        self.rules = rules
        self.store = store
        self.webhooks = WebhookSender(store, retries=retries, backoff_s=backoff_s)

    @property
    def retries(self) -> int:
        return self.webhooks.retries

    @retries.setter
    def retries(self, value: int) -> None:
        self.webhooks.retries = value

    @property
    def backoff_s(self) -> float:
        return self.webhooks.backoff_s

    @backoff_s.setter
    def backoff_s(self, value: float) -> None:
        self.webhooks.backoff_s = value

    # -- before a call runs ----------------------------------------------------------------------

    def egress_block(self, identity: Identity) -> Decision | None:
        """A denial or hold for an identity over its egress budget, per the first rule that says so."""
        for rule in self.rules:
            if rule.kind != "egress" or rule.action == "alert":
                continue
            rows, size = self._egress(identity.subject, rule.window_s)
            if self._over(rule, rows, size):
                why = (f"`{identity.subject}` has read {rows:,} rows / {size:,} bytes in the last "
                       f"{rule.window_s:g} s, over the egress budget of rule `{rule.id}`")
                decision = Decision.deny(f"alert:{rule.id}", why, hint="Wait for the window to pass, or ask for approval.")
                if rule.action == "review":
                    from bastion.policy import Verdict

                    return Decision(Verdict.REVIEW, decision.rules, why, hint=decision.hint)
                return decision
        return None

    # -- after a call ended ----------------------------------------------------------------------

    def after(self, requested: ev.CallRequested, terminal: ev.Terminal) -> list[ev.Alert]:
        """Evaluate the rules after one call ended; returns the alert events written."""
        subject = requested["identity"]["subject"]
        fired = []
        for rule in self.rules:
            found = self._check(rule, subject, terminal)
            if found is None or self._recently_fired(rule, subject):
                continue
            message, details = found
            event = self.store.append(ev.Alert(
                type=_TYPE[rule.kind], call_id=requested["call_id"], identity=requested["identity"],
                connection=requested["connection"], tool=requested["tool"],
                reason=message, result={"rule": rule.id, **details}))
            fired.append(event)
            if rule.webhook:
                # In the background, retried with backoff; `alert.webhook.delivered` or `.failed` follows.
                self.webhooks.send(rule.webhook, payload(rule, event), event_type="alert.webhook",
                                   call_id=event.get("call_id"), record={"rule": rule.id, "alert_seq": event.get("seq")})
        return fired

    def _check(self, rule: AlertRule, subject: str, terminal: ev.Terminal) -> tuple[str, dict[str, int]] | None:
        """The alert's message and figures, when ``rule`` fires after ``terminal``."""
        if rule.kind == "denials" and terminal["type"] == "call.denied":
            count = self.store.read(
                "SELECT count(*) FROM events d JOIN events r ON r.call_id = d.call_id AND r.type = 'call.requested' "
                "WHERE d.type = 'call.denied' AND d.time >= ? AND json_extract(r.identity, '$.subject') = ?",
                (_ago(rule.window_s), subject))[0][0]
            if count >= rule.threshold:
                return f"{count} denials for `{subject}` in {rule.window_s:g} s", {"count": count}
        if rule.kind == "large-result" and terminal["type"] == "call.finished":
            rows = terminal.get("row_count") or 0
            size = len(json.dumps(terminal.get("result"), default=str))
            if self._over(rule, rows, size):
                return f"one result of {rows:,} rows / {size:,} bytes for `{subject}`", {"rows": rows, "bytes": size}
        if rule.kind == "egress" and terminal["type"] == "call.finished":
            rows, size = self._egress(subject, rule.window_s)
            if self._over(rule, rows, size):
                return f"`{subject}` read {rows:,} rows / {size:,} bytes in {rule.window_s:g} s", {"rows": rows, "bytes": size}
        return None

    @staticmethod
    def _over(rule: AlertRule, rows: int, size: int) -> bool:
        return (rule.max_rows is not None and rows > rule.max_rows) or (rule.max_bytes is not None and size > rule.max_bytes)

    def _egress(self, subject: str, window_s: float) -> tuple[int, int]:
        rows, size = self.store.read(
            "SELECT coalesce(sum(f.row_count), 0), coalesce(sum(length(f.result)), 0) FROM events f "
            "JOIN events r ON r.call_id = f.call_id AND r.type = 'call.requested' "
            "WHERE f.type = 'call.finished' AND f.time >= ? AND json_extract(r.identity, '$.subject') = ?",
            (_ago(window_s), subject))[0]
        return int(rows), int(size)

    def _recently_fired(self, rule: AlertRule, subject: str) -> bool:
        """One alert per rule and identity per window, not one per call."""
        return self.store.read(
            "SELECT 1 FROM events WHERE type = ? AND time >= ? AND json_extract(result, '$.rule') = ? "
            "AND json_extract(identity, '$.subject') = ? LIMIT 1",
            (f"alert.{rule.kind}", _ago(rule.window_s), rule.id, subject)) != []


def payload(rule: AlertRule, event: ev.Alert) -> dict[str, object]:
    """The webhook body: Slack's `{"text": ...}` or a generic JSON object."""
    identity = event["identity"]
    who = identity["subject"] if identity else ""
    text = f"Bastion alert `{rule.id}` ({rule.kind}): {event.get('reason')} (call {event.get('call_id')})"
    if rule.webhook_format == "slack":
        return {"text": text}
    return {"alert": rule.id, "kind": rule.kind, "subject": who, "connection": event.get("connection"),
            "call_id": event.get("call_id"), "message": event.get("reason"), "details": event.get("result"),
            "seq": event.get("seq"), "time": event.get("time")}
