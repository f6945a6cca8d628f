"""Alerts over the event stream: denials, large results, egress budgets (which then deny), webhooks."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from bastion.policy.errors import Denied
from bastion.server.build import build_gateway
from bastion.server.config import load
from bastion.tools.calls import Caller

pytestmark = pytest.mark.anyio


def gateway_with(config: Path, alerts: str):  # type: ignore[no-untyped-def]
    config.write_text(config.read_text() + alerts)
    cfg = load(config)
    return build_gateway(cfg), Caller(cfg.identity.to_identity())


def alerts_of(gateway, kind: str) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    return [e for e in gateway.store.iter_all() if e["type"] == kind]


async def test_many_denials_by_one_identity_raise_one_alert(demo_config: Path) -> None:
    gw, caller = gateway_with(demo_config, '\n[[alerts]]\nid = "denials"\nkind = "denials"\nthreshold = 3\nwindow = "10m"\n')
    for _ in range(4):
        with pytest.raises(Denied):
            await gw.sql_query(caller, "demo", "DROP TABLE orders", None)
    (alert,) = alerts_of(gw, "alert.denials")
    assert alert["result"]["rule"] == "denials" and alert["result"]["count"] == 3
    assert alert["identity"]["subject"] == "demo-agent" and "3 denials" in alert["reason"]


async def test_one_large_result_raises_an_alert(demo_config: Path) -> None:
    gw, caller = gateway_with(demo_config, '\n[[alerts]]\nid = "big"\nkind = "large-result"\nmax_rows = 50\n')
    await gw.sql_query(caller, "demo", "SELECT id FROM orders LIMIT 10", None)
    assert alerts_of(gw, "alert.large-result") == []
    await gw.sql_query(caller, "demo", "SELECT * FROM orders", None)
    (alert,) = alerts_of(gw, "alert.large-result")
    assert alert["result"]["rows"] == 200


async def test_an_egress_budget_denies_reads_once_exceeded(demo_config: Path) -> None:
    gw, caller = gateway_with(demo_config, '\n[[alerts]]\nid = "egress"\nkind = "egress"\nmax_rows = 300\n'
                                           'window = "1h"\naction = "deny"\n')
    await gw.sql_query(caller, "demo", "SELECT * FROM orders", None)
    await gw.sql_query(caller, "demo", "SELECT * FROM customers", None)
    with pytest.raises(Denied) as caught:
        await gw.sql_query(caller, "demo", "SELECT 1", None)
    assert caught.value.decision.rules == ("alert:egress",) and "over the egress budget" in caught.value.for_agent()
    assert len(alerts_of(gw, "alert.egress")) == 1


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []  # type: ignore[type-arg]

    def do_POST(self) -> None:  # noqa: N802
        _Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


async def test_webhooks_are_delivered_in_slack_and_generic_shapes_and_failures_are_recorded(demo_config: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        gw, caller = gateway_with(demo_config, f'''
[[alerts]]
id = "slack"
kind = "large-result"
max_rows = 5
webhook = "{url}"
webhook_format = "slack"

[[alerts]]
id = "generic"
kind = "large-result"
max_rows = 5
webhook = "{url}"

[[alerts]]
id = "down"
kind = "large-result"
max_rows = 5
webhook = "http://127.0.0.1:1/nowhere"
''')
        gw.guard.alerts.backoff_s = 0.01  # type: ignore[union-attr]
        started = time.monotonic()
        await gw.sql_query(caller, "demo", "SELECT * FROM products", None)
        assert time.monotonic() - started < 2  # delivery never blocks the call
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (len(_Hook.received) >= 2 and alerts_of(gw, "alert.webhook.failed")):
            time.sleep(0.05)
        shapes = {tuple(sorted(body)) for body in _Hook.received}
        assert ("text",) in shapes and any("alert" in s for s in shapes)
        (failed,) = alerts_of(gw, "alert.webhook.failed")
        assert failed["result"]["rule"] == "down" and failed["result"]["attempts"] == 3
        assert len(alerts_of(gw, "alert.webhook.delivered")) == 2
    finally:
        server.shutdown()
        server.server_close()
