"""Compact text renderings of tool results, for the model to read."""

from __future__ import annotations

import json
from typing import Any

_CELL = 120


def _cell(value: Any) -> str:
    text = "NULL" if value is None else value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", "\\n").replace("|", "\\|")
    return text if len(text) <= _CELL else text[: _CELL - 1] + "…"


def table(columns: list[str], rows: list[list[Any]], *, footer: str) -> str:
    if not columns:
        return footer
    lines = [" | ".join(columns), " | ".join("---" for _ in columns)]
    lines += [" | ".join(_cell(v) for v in row) for row in rows]
    lines.append(footer)
    return "\n".join(lines)


def masking_note(masking: dict[str, Any] | None) -> str:
    """``; masked: email (redact), phone (partial); redacted: 2 card`` — or "" when nothing was masked."""
    if not masking:
        return ""
    parts = []
    if masking.get("columns"):
        parts.append("masked: " + ", ".join(f"{name} ({m['masker']})" for name, m in masking["columns"].items()))
    if masking.get("detections"):
        parts.append("redacted: " + ", ".join(f"{n} {kind}" for kind, n in masking["detections"].items()))
    return "; " + "; ".join(parts) if parts else ""
