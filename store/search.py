"""Search and export over the audit log: full-text (FTS5) with filters, and JSON Lines for SIEMs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from store.sqlite_store import SqliteAuditStore

# Exported lines carry this; it changes only with an incompatible change to the event shape.
EXPORT_SCHEMA = "bastion.audit.event/1"


def since(value: str) -> str:
    """`1h`, `30m`, `2d`, `45s` ago, or an ISO time, as the ISO time the log compares with."""
    m = re.fullmatch(r"(\d+)\s*([smhd])", value.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return (datetime.now(timezone.utc) - timedelta(**{unit: int(m.group(1))})).isoformat(timespec="microseconds")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"expected a duration such as 1h, 30m, 2d, or an ISO time; found {value!r}") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).astimezone(timezone.utc).isoformat(
        timespec="microseconds")


def _match(text: str) -> str:
    """Free text as an FTS5 query: every word must appear (each quoted, so no FTS syntax leaks in)."""
    words = re.findall(r"\w+", text)
    return " ".join('"' + w.replace('"', '""') + '"' for w in words)


def search(store: SqliteAuditStore, text: str = "", *, user: str | None = None, connection: str | None = None,
           verdict: str | None = None, tool: str | None = None, after: str | None = None,
           before: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Requested calls matching ``text`` (all words, any field) and the filters, newest first."""
    where, params = [], []
    query = _match(text)
    if query:
        where.append("e.seq IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ?)")
        params.append(query)
    where.append("e.type = 'call.requested'")
    for column, value in (("json_extract(e.identity, '$.subject')", user), ("e.connection", connection),
                          ("json_extract(e.decision, '$.verdict')", verdict), ("e.tool", tool)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if after:
        where.append("e.time >= ?")
        params.append(after)
    if before:
        where.append("e.time < ?")
        params.append(before)
    sql = f"SELECT e.* FROM events e WHERE {' AND '.join(where)} ORDER BY e.seq DESC LIMIT ?"
    return store._query(sql, (*params, limit))


def export(store: SqliteAuditStore, *, after_seq: int = 0) -> Iterator[str]:
    """Every event after ``after_seq`` as one JSON line; resume from the last exported seq."""
    seq = after_seq
    while batch := store.after(seq, 5000):
        for event in batch:
            yield json.dumps({"schema": EXPORT_SCHEMA, **event}, ensure_ascii=False, sort_keys=True)
        seq = batch[-1]["seq"]
