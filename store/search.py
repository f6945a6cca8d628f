"""Search and export over the audit log: full-text (SQLite's FTS5; words matched with ILIKE on
PostgreSQL) with filters, and JSON Lines for SIEMs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timezone

from bastion.policy.durations import ago
from bastion.store.audit_store import AuditStore
from bastion.store.events import StoredEvent

# Exported lines carry this; it changes only with an incompatible change to the event shape.
EXPORT_SCHEMA = "bastion.audit.event/1"


def since(value: str) -> str:
    """`1h`, `30m`, `2d`, `45s` ago (policy/durations.py's grammar), or an ISO time, as the ISO time the log compares with."""
    return ago(value, datetime.now(timezone.utc)).isoformat(timespec="microseconds")


# The fields a word may match in, as SQLite's full-text table indexes them (migration 0004_search).
_WORD_COLUMNS = ("e.text", "json_extract(e.identity, '$.subject')", "e.connection", "e.tool",
                 "json_extract(e.decision, '$.verdict')")


def _terms(text: str) -> list[str]:
    return ['"' + w.replace('"', '""') + '"' for w in re.findall(r"\w+", text)]


def search(store: AuditStore, text: str = "", *, user: str | None = None, connection: str | None = None,
           verdict: str | None = None, tool: str | None = None, after: str | None = None,
           before: str | None = None, limit: int = 50) -> list[StoredEvent]:
    """Requested calls matching ``text`` (all words, any field) and the filters, newest first.

    Everything is one FTS5 query walked newest first (rowid = seq), so a search stops as soon as it
    has ``limit`` calls: the filters narrow it through their FTS columns and are then checked exactly.
    """
    match = _terms(text)
    exact, params = [], []
    for column, fts_column, value in (("json_extract(e.identity, '$.subject')", "subject", user),
                                      ("e.connection", "connection", connection),
                                      ("json_extract(e.decision, '$.verdict')", "verdict", verdict),
                                      ("e.tool", "tool", tool)):
        if value is None:
            continue
        words = _terms(value)
        if words:
            match.append(f"{fts_column} : ({' AND '.join(words)})")
        exact.append(f"{column} = ?")
        params.append(value)
    # Time bounds become seq bounds (seq grows with time), which FTS5 applies to its rowids directly.
    bounds = []
    if after:
        low = store.read("SELECT min(seq) FROM events WHERE time >= ?", (after,))[0][0]
        if low is None:
            return []
        bounds.append(f"events_fts.rowid >= {int(low)}")
    if before:
        high = store.read("SELECT max(seq) FROM events WHERE time < ?", (before,))[0][0]
        if high is None:
            return []
        bounds.append(f"events_fts.rowid <= {int(high)}")
    if match and not store.full_text:  # PostgreSQL: every word in some field, case-insensitively
        for word in re.findall(r"\w+", text):
            exact.append("(" + " OR ".join(f"{column} ILIKE ?" for column in _WORD_COLUMNS) + ")")
            params += [f"%{word}%"] * len(_WORD_COLUMNS)
        match = []
    if not match:  # no words at all: the newest requested calls that pass the filters
        where = " AND ".join(["e.type = 'call.requested'", *exact, *(b.replace("events_fts.rowid", "e.seq") for b in bounds)])
        return store._query(f"SELECT e.* FROM events e WHERE {where} ORDER BY e.seq DESC LIMIT ?", (*params, limit))
    where = " AND ".join(["events_fts MATCH ?", *bounds, *exact])
    sql = (f"SELECT e.* FROM events_fts JOIN events e ON e.seq = events_fts.rowid WHERE {where} "
           f"ORDER BY events_fts.rowid DESC LIMIT ?")
    return store._query(sql, (" AND ".join(match), *params, limit))


def export(store: AuditStore, *, after_seq: int = 0) -> Iterator[str]:
    """Every event after ``after_seq`` as one JSON line; resume from the last exported seq."""
    seq = after_seq
    while batch := store.after(seq, 5000):
        for event in batch:
            yield json.dumps({"schema": EXPORT_SCHEMA, **event}, ensure_ascii=False, sort_keys=True)
        seq = batch[-1]["seq"]
