"""Webhook delivery: POST a JSON body in a background thread, retry with exponential backoff, record
the outcome as an audit event. A failing webhook never blocks the caller and never loses what it
reports (that is in the log already); the delivery event says how it went.

    sender = WebhookSender(store, retries=3, backoff_s=0.5)
    sender.send(url, {"text": "..."}, event_type="alert.webhook", call_id=call_id, record={"rule": "big"})
    # later, in the background: `alert.webhook.delivered` or `alert.webhook.failed`,
    # result = {"rule": "big", "attempts": n, "detail": "HTTP 204" or the last error}

Retried: network errors, timeouts, HTTP 408, 429 and 5xx. Not retried: other 4xx (the receiver
refused the body; sending it again would not help) and redirects (not followed: a POST turned into
a GET would look delivered). The URL never appears in the recorded detail: Slack-style URLs hold a
secret.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from bastion.store.sqlite_store import SqliteAuditStore

log = logging.getLogger(__name__)
Format = Literal["generic", "slack"]
_RETRIED_STATUS = frozenset({408, 429})


@dataclass(frozen=True)
class Delivery:
    """How one delivery ended: delivered or not, after how many attempts, and the last response or error."""

    ok: bool
    attempts: int
    detail: str


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx surfaces as an HTTPError


_opener = urllib.request.build_opener(_NoRedirects)


def post_json(url: str, body: Any, *, retries: int = 3, backoff_s: float = 0.5, timeout_s: float = 5.0,
              sleep: Callable[[float], None] = time.sleep) -> Delivery:
    """POST ``body`` as JSON to ``url`` up to ``retries`` times, sleeping ``backoff_s``, then twice
    that, and so on between attempts. Blocking; never raises."""
    data = json.dumps(body, ensure_ascii=False, default=str).encode()
    detail = ""
    attempts = max(retries, 1)
    for attempt in range(1, attempts + 1):
        retry = True
        try:
            request = urllib.request.Request(url, data=data, method="POST",
                                             headers={"Content-Type": "application/json",
                                                      "User-Agent": "bastion-webhook"})
            with _opener.open(request, timeout=timeout_s) as response:  # noqa: S310 (a configured URL)
                return Delivery(True, attempt, f"HTTP {response.status}")
        except urllib.error.HTTPError as failure:
            detail = f"HTTP {failure.code}"
            retry = failure.code in _RETRIED_STATUS or failure.code >= 500
        except Exception as failure:  # network errors, timeouts, a bad URL: reported, never raised
            detail = f"{type(failure).__name__}: {str(failure)[:200]}"
        detail = detail.replace(url, "<webhook url>")
        if not retry:
            return Delivery(False, attempt, detail)
        if attempt < attempts:
            sleep(backoff_s * 2 ** (attempt - 1))
    return Delivery(False, attempts, detail)


class WebhookSender:
    """Delivers webhooks in daemon threads and records each outcome in ``store``.

    ``retries``, ``backoff_s`` and ``timeout_s`` may be changed after construction (tests shorten
    the backoff). `flush` waits for deliveries still under way: a short-lived process (a CLI
    command that approved a call) calls it before it exits, or its notifications die with it.
    """

    def __init__(self, store: SqliteAuditStore | None, *, retries: int = 3, backoff_s: float = 0.5,
                 timeout_s: float = 5.0) -> None:
        self.store = store
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def send(self, url: str, body: Any, *, event_type: str, call_id: str | None = None,
             record: dict[str, Any] | None = None) -> threading.Thread:
        """Deliver ``body`` to ``url`` in the background; then append ``<event_type>.delivered`` or
        ``<event_type>.failed`` under ``call_id``, its ``result`` being ``record`` plus ``attempts``
        and ``detail``. Returns the delivering thread (already started)."""
        thread = threading.Thread(target=self._deliver, args=(url, body, event_type, call_id, dict(record or {})),
                                  name="bastion-webhook", daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()
        return thread

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait up to ``timeout_s`` for deliveries under way; True when none is left."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        with self._lock:
            return not any(t.is_alive() for t in self._threads)

    def _deliver(self, url: str, body: Any, event_type: str, call_id: str | None, record: dict[str, Any]) -> None:
        try:
            delivery = post_json(url, body, retries=self.retries, backoff_s=self.backoff_s, timeout_s=self.timeout_s)
            if self.store is not None:
                self.store.append({
                    "type": f"{event_type}.{'delivered' if delivery.ok else 'failed'}", "call_id": call_id,
                    "result": {**record, "attempts": delivery.attempts, "detail": delivery.detail}})
            elif not delivery.ok:
                log.warning("webhook delivery failed after %d attempts: %s", delivery.attempts, delivery.detail)
        except Exception:
            log.exception("recording a webhook delivery")
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())


def slack_escape(text: str) -> str:
    """Text for Slack's mrkdwn: ``&``, ``<`` and ``>`` escaped, as Slack asks."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
