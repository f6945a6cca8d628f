"""The approvals API (JSON, bearer tokens) and page (browser login) under /approvals. Placeholder
until the page lands: every request is answered 404."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette


def approvals_app(config: Any, gateway: Any, server: Any) -> Starlette:
    return Starlette(routes=[])
