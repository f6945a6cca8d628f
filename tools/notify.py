"""Tell approvers about held calls: a webhook when a call is held, approved, denied or expires, in a
Slack-compatible shape (``{"text": ...}`` with mrkdwn and a link) or a generic JSON shape, each with
a link to the approvals page, ``{base_url}/approvals/{hold_id}``.

Wire it to the store once, and every change that store commits is told:

    notifier = ApprovalNotifier([ApprovalWebhook(url, format="slack")], "https://bastion.example.com", audit)
    approvals = ApprovalStore(audit, listeners=[notifier.on_change])

Deliveries run in the background (tools/webhooks.py: retried with backoff) and are recorded as
``approval.webhook.delivered`` / ``approval.webhook.failed`` under the hold id, with
``{hold_id, notice, webhook, attempts, detail}``. A failing webhook never blocks or loses a hold.
Only the process that made a change tells of it: a short-lived one (a CLI approval) calls `flush`
before it exits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

from bastion.store import events as ev
from bastion.store.approvals import Held, HoldStatus
from bastion.store.audit_store import AuditStore
from bastion.tools.webhooks import Format, WebhookSender, slack_escape

Notice = Literal["held", "approved", "denied", "expired"]
NOTICES: tuple[Notice, ...] = ("held", "approved", "denied", "expired")
DELIVERY_EVENT: ev.WebhookKind = "approval.webhook"  # + ".delivered" / ".failed"
PREVIEW_WAIT_S = 1.0
TEXT_LIMIT = 2000  # characters of the held text in a message; the page shows all of it


@dataclass(frozen=True)
class ApprovalWebhook:
    """One webhook for approval notices. ``name`` is recorded with each delivery instead of the
    URL (a Slack URL is a secret); ``notices`` picks which notices it gets."""

    url: str
    format: Format = "generic"
    notices: frozenset[str] = field(default_factory=lambda: frozenset(NOTICES))
    name: str = ""
    secret: bytes | None = field(default=None, repr=False)  # signs each body (tools/webhooks.py)


class ApprovalNotifier:
    """Sends approval notices to webhooks; see the module docstring."""

    def __init__(self, webhooks: Sequence[ApprovalWebhook], base_url: str, store: AuditStore | None, *,
                 retries: int = 3, backoff_s: float = 0.5, timeout_s: float = 5.0) -> None:
        self.webhooks = tuple(webhooks)
        self.base_url = base_url.rstrip("/")
        self.sender = WebhookSender(store, retries=retries, backoff_s=backoff_s, timeout_s=timeout_s)
        # A new hold's notice waits (briefly) for its impact preview, so approvers see it in the chat.
        self._awaiting_preview: dict[str, threading.Timer] = {}
        self._lock = threading.Lock()

    def link(self, hold_id: str) -> str:
        return f"{self.base_url}/approvals/{hold_id}"

    def on_change(self, event_type: str, held: Held) -> None:
        """An `ApprovalStore` listener: a new hold (not a joined one) → held; an approval that made
        the hold approved → approved (a first of two approvals says nothing); a denial → denied;
        an expiry → expired. Consumption is not told. A new hold is told once its impact preview is
        attached, or after `PREVIEW_WAIT_S` without one (not every call has a preview)."""
        notice: Notice | None = None
        if event_type == ev.HELD and not held.joined:
            timer = threading.Timer(PREVIEW_WAIT_S, self._held, args=(held.hold_id, held))
            timer.daemon = True
            with self._lock:
                self._awaiting_preview[held.hold_id] = timer
            timer.start()
        elif event_type == ev.APPROVAL_PREVIEW:
            self._held(held.hold_id, held)
        elif event_type == ev.APPROVAL_GRANTED and held.status is HoldStatus.APPROVED:
            notice = "approved"
        elif event_type == ev.APPROVAL_DENIED:
            notice = "denied"
        elif event_type == ev.APPROVAL_EXPIRED:
            notice = "expired"
        if notice is not None:
            self.notify(notice, held)

    def notify(self, notice: Notice, held: Held) -> list[Future[None]]:
        """Send ``notice`` about ``held`` to every webhook that takes it, in the background."""
        threads = []
        for index, hook in enumerate(self.webhooks):
            if notice not in hook.notices:
                continue
            body = message(notice, held, self.link(held.hold_id), hook.format)
            threads.append(self.sender.send(hook.url, body, event_type=DELIVERY_EVENT, call_id=held.hold_id,
                                            record={"hold_id": held.hold_id, "notice": notice,
                                                    "webhook": hook.name or f"#{index + 1}"}, secret=hook.secret))
        return threads

    def held(self, held: Held) -> list[Future[None]]:
        return self.notify("held", held)

    def approved(self, held: Held) -> list[Future[None]]:
        return self.notify("approved", held)

    def denied(self, held: Held) -> list[Future[None]]:
        return self.notify("denied", held)

    def expired(self, held: Held) -> list[Future[None]]:
        return self.notify("expired", held)

    def _held(self, hold_id: str, held: Held) -> None:
        """Send the held notice once: with the preview if it came first, else without."""
        with self._lock:
            timer = self._awaiting_preview.pop(hold_id, None)
        if timer is not None:
            timer.cancel()
            self.notify("held", held)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait for held notices still waiting for a preview, then for deliveries under way (see
        `WebhookSender.flush`)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            waiting = list(self._awaiting_preview.values())
        for timer in waiting:
            timer.join(max(deadline - time.monotonic(), 0.0))
        return self.sender.flush(max(deadline - time.monotonic(), 0.0))


def _clip(text: str) -> str:
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + f"… ({len(text):,} characters in all)"


def _decider(held: Held) -> dict[str, Any] | None:
    """The vote that settled it: the denial, else the last approval."""
    votes = [v for v in held.votes if not v.approve] or [v for v in held.votes if v.approve]
    return votes[-1].as_record() if votes else None


def impact(preview: dict[str, Any]) -> str:
    """One line of a hold's impact preview: rows each statement's rolled-back dry run touched, or the
    first line of its plan."""
    if "error" in preview:
        return f"the preview failed ({preview['error']})"
    parts = []
    for item in preview.get("statements") or ():
        if "rows" in item:
            parts.append(f"{item.get('kind', '?')} touches {item['rows']} row{'s' if item['rows'] != 1 else ''} (dry run, rolled back)")
        elif item.get("plan"):
            parts.append(f"{item.get('kind', '?')}: {str(item['plan']).splitlines()[0]}")
    return "; ".join(parts) or "no preview"


def message(notice: Notice, held: Held, link: str, format: Format = "generic") -> dict[str, Any]:
    """The webhook body for one notice: Slack's ``{"text": ...}`` (mrkdwn, user text escaped) or a
    generic JSON object with every field a receiver may want."""
    who = held.requester_subject
    where = f"{held.connection or '-'} ({held.tool})"
    decider = _decider(held) if notice in ("approved", "denied") else None
    if format == "slack":
        e = slack_escape
        head = {
            "held": f":hourglass: *Held for approval* (needs {held.min_approvals} from "
                    f"{', '.join(f'`{e(g)}`' for g in held.approver_groups)})",
            "approved": f":white_check_mark: *Approved* by `{e(', '.join(v.approver for v in held.votes if v.approve))}`",
            "denied": f":no_entry: *Denied* by `{e(decider['approver'] if decider else '?')}`",
            "expired": ":clock3: *Expired* without a decision" if held.approvals == 0 else ":clock3: *Expired* unused",
        }[notice]
        lines = [head, f"Requested by `{e(who)}` on `{e(where)}`, rule `{e(held.rule or '-')}`"]
        if held.reason:
            lines.append(f"Reason: {e(held.reason)}")
        if notice == "denied" and decider and decider.get("reason"):
            lines.append(f"Denied because: {e(decider['reason'])}")
        lines.append("```" + e(_clip(held.text)).replace("```", "`\u200b``") + "```")
        if notice == "held" and held.preview:
            lines.append(f"Impact: {e(impact(held.preview))}")
        lines.append(f"<{link}|{'Review and decide' if notice == 'held' else 'Open'}> · expires {held.expires_at}")
        return {"text": "\n".join(lines)}
    return {
        "event": f"approval.{notice}",
        "notice": notice,
        "hold_id": held.hold_id,
        "status": str(held.status),
        "link": link,
        "message": f"{notice}: `{who}` on {where}, rule {held.rule or '-'}",
        "text": _clip(held.text),
        "text_hash": held.text_hash,
        "connection": held.connection,
        "tool": held.tool,
        "requester": {k: held.requester.get(k) for k in ("subject", "email", "name")},
        "rule": held.rule,
        "reason": held.reason,
        "approver_groups": list(held.approver_groups),
        "min_approvals": held.min_approvals,
        "approvals": held.approvals,
        "decided_by": decider,
        "expires_at": held.expires_at,
        "created": held.created,
        "preview": held.preview,
        "impact": impact(held.preview) if held.preview else None,
    }
