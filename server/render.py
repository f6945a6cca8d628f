"""Compact text renderings of tool results, for the model to read."""

from __future__ import annotations

import json
import math
from typing import Any

_CELL = 120


def _cell(value: Any) -> str:
    # The common cells (text, integers) without json.dumps: a 1,000-row table is rendered per call.
    kind = type(value)
    if kind is str:
        text = value
    elif kind is int:
        text = str(value)
    elif kind is float and abs(value) < math.inf:  # finite: as json.dumps writes it (NaN and inf are not)
        text = repr(value)
    elif value is None:
        return "NULL"
    else:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if "\n" in text or "|" in text:
        text = text.replace("\n", "\\n").replace("|", "\\|")
    return text if len(text) <= _CELL else text[: _CELL - 1] + "…"


def table(columns: list[str], rows: list[list[Any]], *, footer: str) -> str:
    if not columns:
        return footer
    lines = [" | ".join(columns), " | ".join("---" for _ in columns)]
    lines += [" | ".join(map(_cell, row)) for row in rows]
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


def connections(items: list[dict[str, Any]]) -> str:
    """One line per connection: `demo (sqlite): description. Rules: ...`."""
    if not items:
        return "No connections you may use."
    lines = []
    for item in items:
        about = f" {item['description'].rstrip('.')}." if item.get("description") else ""
        lines.append(f"{item['name']} ({item['kind']}):{about} Rules: {item['rules']}")
    return "\n".join(lines)


def column(col: dict[str, Any]) -> str:
    """`email text masked:redact` — a column as describe shows it."""
    text = f"{col['name']} {col['type'] or '?'}"
    if not col.get("nullable", True):
        text += " not null"
    if col.get("masked"):
        text += f" masked:{col['masked']}"
    return text


def _kind(kind: str) -> str:
    return "" if kind == "table" else f" ({kind})"


def tables(items: list[dict[str, Any]], *, total: int, offset: int, next_offset: int | None) -> str:
    """One line per table: `main.customers (table): id integer not null, email text masked:redact, ...`."""
    lines = [f"{t['schema']}.{t['name']}{_kind(t['kind'])}: " + ", ".join(column(c) for c in t["columns"]) for t in items]
    if not items:
        lines.append("No tables you may read here." if total == 0 else f"No tables from offset {offset} (there are {total}).")
    shown = f"tables {offset + 1}-{offset + len(items)} of {total}" if (offset or next_offset is not None) else f"{total} tables"
    footer = f"({shown}; masked:<masker> = values come back masked"
    footer += f"; more: describe with offset={next_offset})" if next_offset is not None else ")"
    lines.append(footer)
    return "\n".join(lines)


def check(outcome: dict[str, Any]) -> str:
    """`deny [rule:check] reason` / `hint: ...` / `facts: {...}`: the same facts as the structured result."""
    lines = [f"{outcome['verdict']} [{', '.join(outcome['rules'])}] {outcome['reason']}"]
    if outcome.get("hint"):
        lines.append(f"hint: {outcome['hint']}")
    if outcome.get("facts"):
        lines.append("facts: " + json.dumps(outcome["facts"], ensure_ascii=False, separators=(",", ":")))
    return "\n".join(lines)


def holds(items: list[dict[str, Any]]) -> str:
    """Held calls as an approver reads them: who asked what where, under which rule, why, and its impact."""
    if not items:
        return "No held calls for you."
    blocks = []
    for h in items:
        who = (h.get("requester") or {}).get("subject", "?")
        lines = [f"{h['hold_id']} {h['status']}: {who} on {h['connection']} ({h['tool']}; rule {h['rule']}; "
                 f"{h['approvals']}/{h['min_approvals']} approvals by {', '.join(h.get('approver_groups') or [])}; "
                 f"until {str(h['expires_at'])[:19]}Z)", f"  text: {' '.join(h['text'].split())}"]
        if h.get("reason"):
            lines.append(f"  reason: {h['reason']}")
        if h.get("preview"):
            lines.append("  preview: " + json.dumps(h["preview"], ensure_ascii=False, separators=(",", ":"))[:2000])
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def decided(hold: dict[str, Any]) -> str:
    return f"{hold['hold_id']}: {hold['status']} ({hold['approvals']} of {hold['min_approvals']} approvals)"
