"""Webhook delivery: POST a JSON body (httpx) in the background, retry with exponential backoff, record
the outcome as an audit event. A failing webhook never blocks the caller and never loses what it
reports (that is in the log already); the delivery event says how it went.

    sender = WebhookSender(store, retries=3, backoff_s=0.5)
    sender.send(url, {"text": "..."}, event_type="alert.webhook", call_id=call_id, record={"rule": "big"})
    # later, in the background: `alert.webhook.delivered` or `alert.webhook.failed`,
    # result = {"rule": "big", "attempts": n, "detail": "HTTP 204" or the last error}

Signed when the webhook has a secret (by reference in the config): the headers
``X-Bastion-Timestamp`` (Unix seconds) and ``X-Bastion-Signature: v1=<hex HMAC-SHA256(secret,
"<timestamp>.<body>")>``, the body being the exact bytes sent — the scheme of Stripe and Slack. A
receiver checks it with `verify_signature` (or the same three lines) and refuses an old timestamp.

Retried: network errors, timeouts, HTTP 408, 429 and 5xx. Not retried: other 4xx (the receiver
refused the body; sending it again would not help) and redirects (not followed: a POST turned into
a GET would look delivered). The URL never appears in the recorded detail: Slack-style URLs hold a
secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from bastion.store import events as ev
from bastion.store.audit_store import AuditStore

log = logging.getLogger(__name__)
Format = Literal["generic", "slack"]
_RETRIED_STATUS = frozenset({408, 429})
_DELIVERERS = 4  # deliveries under way at once; more wait their turn


@dataclass(frozen=True)
class Delivery:
    """How one delivery ended: delivered or not, after how many attempts, and the last response or error."""

    ok: bool
    attempts: int
    detail: str


SIGNATURE_HEADER, TIMESTAMP_HEADER = "X-Bastion-Signature", "X-Bastion-Timestamp"


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    return "v1=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, timestamp: str, body: bytes, signed: str, *, tolerance_s: float = 300,
                     now: float | None = None) -> bool:
    """What a receiver does: the signature matches these bytes and the timestamp is recent (a replayed
    old notice fails)."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance_s and hmac.compare_digest(signature(secret, timestamp, body), signed)


def post_json(url: str, body: Any, *, retries: int = 3, backoff_s: float = 0.5, timeout_s: float = 5.0,
              sleep: Callable[[float], None] = time.sleep, client: httpx.Client | None = None,
              secret: bytes | None = None) -> Delivery:
    """POST ``body`` as JSON to ``url`` up to ``retries`` times, sleeping ``backoff_s``, then twice
    that, and so on between attempts. Blocking; never raises. (httpx's own transport retries cover
    failed connects only; a 5xx or 429 is retried here, with backoff.)"""
    owned = client is None
    client = client or httpx.Client(follow_redirects=False, headers={"User-Agent": "bastion-webhook"})
    data = json.dumps(body, ensure_ascii=False, default=str).encode()
    detail = ""
    attempts = max(retries, 1)
    try:
        for attempt in range(1, attempts + 1):
            retry = True
            headers = {"Content-Type": "application/json"}
            if secret is not None:  # signed per attempt: a retry carries a fresh timestamp
                stamp = str(int(time.time()))
                headers |= {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: signature(secret, stamp, data)}
            try:
                response = client.post(url, content=data, headers=headers, timeout=timeout_s)
                detail = f"HTTP {response.status_code}"
                if response.is_success:
                    return Delivery(True, attempt, detail)
                retry = response.status_code in _RETRIED_STATUS or response.status_code >= 500
            except Exception as failure:  # network errors, timeouts, a bad URL: reported, never raised
                detail = f"{type(failure).__name__}: {str(failure)[:200]}"
            detail = detail.replace(url, "<webhook url>")
            if not retry:  # another 4xx, or a redirect (a POST turned into a GET would look delivered)
                return Delivery(False, attempt, detail)
            if attempt < attempts:
                sleep(backoff_s * 2 ** (attempt - 1))
        return Delivery(False, attempts, detail)
    finally:
        if owned:
            client.close()


class WebhookSender:
    """Delivers webhooks from a small pool of threads (one httpx client, its connections reused) and
    records each outcome in ``store``.

    ``retries``, ``backoff_s`` and ``timeout_s`` may be changed after construction (tests shorten
    the backoff). `flush` waits for deliveries still under way: a short-lived process (a CLI
    command that approved a call) calls it before it exits, or its notifications die with it.
    """

    def __init__(self, store: AuditStore | None, *, retries: int = 3, backoff_s: float = 0.5,
                 timeout_s: float = 5.0) -> None:
        self.store = store
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self._client = httpx.Client(follow_redirects=False, headers={"User-Agent": "bastion-webhook"},
                                    transport=httpx.HTTPTransport(retries=1))
        self._pool = ThreadPoolExecutor(_DELIVERERS, thread_name_prefix="bastion-webhook")
        self._pending: set[Future[None]] = set()
        self._lock = threading.Lock()

    def send(self, url: str, body: Any, *, event_type: ev.WebhookKind, call_id: str | None = None,
             record: dict[str, object] | None = None, secret: bytes | None = None) -> Future[None]:
        """Deliver ``body`` to ``url`` in the background; then append ``<event_type>.delivered`` or
        ``<event_type>.failed`` under ``call_id``, its ``result`` being ``record`` plus ``attempts``
        and ``detail``. Signed with ``secret`` when given."""
        future = self._pool.submit(self._deliver, url, body, event_type, call_id, dict(record or {}), secret)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait up to ``timeout_s`` for deliveries under way; True when none is left."""
        with self._lock:
            pending = list(self._pending)
        return not wait(pending, timeout=timeout_s).not_done

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)

    def _deliver(self, url: str, body: Any, event_type: ev.WebhookKind, call_id: str | None,
                 record: dict[str, object], secret: bytes | None) -> None:
        try:
            delivery = post_json(url, body, retries=self.retries, backoff_s=self.backoff_s, timeout_s=self.timeout_s,
                                 client=self._client, secret=secret)
            if self.store is not None:
                self.store.append(ev.WebhookDelivery(
                    type=ev.delivery_type(event_type, delivery.ok), call_id=call_id,
                    result={**record, "attempts": delivery.attempts, "detail": delivery.detail}))
            elif not delivery.ok:
                log.warning("webhook delivery failed after %d attempts: %s", delivery.attempts, delivery.detail)
        except Exception:
            log.exception("recording a webhook delivery")


def slack_escape(text: str) -> str:
    """Text for Slack's mrkdwn: ``&``, ``<`` and ``>`` escaped, as Slack asks."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
