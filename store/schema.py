"""The audit store's schema, described once: each named migration's tables, columns, indexes and
which tables are append-only. Each backend renders it in its own SQL through a `Dialect` (SQLite's in
store/migrations.py, PostgreSQL's in store/pg_migrations.py), which also holds what only that backend
has (SQLite's full-text table; PostgreSQL's refusal function and the NOTIFY on `holds`).

Append new migrations; never edit old ones: a database records the names it has applied and never
runs them again, so an edit would make a new store differ from an old one (tests/test_schema.py
opens stores made by the migrations as first written and compares them with new ones).

Values the chain hashes are stored the same way on every backend (JSON as its text, times as ISO
strings, `truncated` as 0/1), so an event hashes the same on either and `verify` is one walk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # a key of `Dialect.types`: text, int, bigint, real, or seq (the log's own key)
    spec: str = ""  # constraints, spelled alike in both dialects: "NOT NULL", "PRIMARY KEY", ...


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    constraints: tuple[str, ...] = ()  # table constraints: "UNIQUE (hold_id, approver)"
    append_only: str = ""  # what its rows are ("audit events"), for the refusal; "" for a table whose rows change
    by_rowid: bool = False  # the shared code orders its rows by `rowid` (SQLite's own; PostgreSQL adds a column)
    without_rowid: bool = False  # keyed by its primary key alone (SQLite's WITHOUT ROWID; any PostgreSQL table)


@dataclass(frozen=True)
class Index:
    name: str
    table: str
    columns: str
    unique: bool = False
    where: str = ""  # a partial index's condition


@dataclass(frozen=True)
class AddColumn:
    table: str
    column: Column


@dataclass(frozen=True)
class Migration:
    name: str
    steps: tuple[Table | Index | AddColumn, ...]


@dataclass(frozen=True)
class Dialect:
    """How one backend spells the schema, and what it alone has."""

    types: Mapping[str, str]
    append_only: Callable[[str, str], list[str]]  # (table, what its rows are) -> the statements refusing change
    rowid: str  # the column a `by_rowid` table gets first; "" where the engine keeps its own
    without_rowid: str  # the table option for `without_rowid`; "" where every table is so
    before: Mapping[str, str]  # per migration, this backend's own statements before the shared ones
    after: Mapping[str, str]  # ... and after them


def render(dialect: Dialect, migrations: tuple[Migration, ...]) -> tuple[tuple[str, str], ...]:
    """(name, SQL) per migration, statements separated by ";\\n" as store/migrations.py's `migrate` runs them."""
    rendered = []
    for migration in migrations:
        statements = [dialect.before.get(migration.name, "")]
        for step in migration.steps:
            statements.extend(_step(dialect, step))
        statements.append(dialect.after.get(migration.name, ""))
        rendered.append((migration.name, ";\n".join(s.strip() for s in statements if s.strip())))
    return tuple(rendered)


def _column(dialect: Dialect, column: Column) -> str:
    return " ".join(part for part in (column.name, dialect.types[column.type], column.spec) if part)


def _step(dialect: Dialect, step: Table | Index | AddColumn) -> list[str]:
    if isinstance(step, AddColumn):
        return [f"ALTER TABLE {step.table} ADD COLUMN {_column(dialect, step.column)}"]
    if isinstance(step, Index):
        where = f" WHERE {step.where}" if step.where else ""
        return [f"CREATE {'UNIQUE ' if step.unique else ''}INDEX {step.name} ON {step.table} ({step.columns}){where}"]
    parts = [dialect.rowid] if step.by_rowid and dialect.rowid else []
    parts += [_column(dialect, column) for column in step.columns] + list(step.constraints)
    option = f" {dialect.without_rowid}" if step.without_rowid and dialect.without_rowid else ""
    table = f"CREATE TABLE {step.name} ({', '.join(parts)}){option}"
    return [table, *(dialect.append_only(step.name, step.append_only) if step.append_only else [])]


def _text(*names: str, spec: str = "") -> tuple[Column, ...]:
    return tuple(Column(name, "text", spec) for name in names)


_NOT_NULL = "NOT NULL"

MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_events", (
        Table("events", (
            Column("seq", "seq"),
            Column("event_id", "text", "NOT NULL UNIQUE"),
            Column("type", "text", _NOT_NULL),
            Column("call_id", "text"),
            Column("time", "text", _NOT_NULL),
            *_text("identity", "client", "session", "connection", "tool", "text", "reason", "facts", "decision",
                   "result"),
            Column("row_count", "bigint"),
            Column("truncated", "int"),
            Column("duration_ms", "real"),
            Column("error", "text"),
            *_text("prev_hash", "hash", spec=_NOT_NULL),
        ), append_only="audit events"),
        Index("events_call", "events", "call_id"),
        Index("events_type", "events", "type"),
    )),
    # Several gateway processes may share one log: each records which process wrote an event, so
    # start-up closes only dead processes' calls.
    Migration("0002_instances", (
        AddColumn("events", Column("instance", "text")),
        Table("instances", (Column("id", "text", "PRIMARY KEY"), Column("host", "text", _NOT_NULL),
                            Column("pid", "int", _NOT_NULL), Column("started", "text", _NOT_NULL))),
    )),
    # Keyed checkpoints: an HMAC over (seq, hash) with a key kept outside the database, so that
    # whoever can write the store cannot forge a consistent chain, or cut its tail unseen (legacy).
    Migration("0003_checkpoints", (
        Table("checkpoints", (Column("seq", "bigint", "PRIMARY KEY"), *_text("hash", "time", "mac", spec=_NOT_NULL)),
              append_only="audit checkpoints"),
    )),
    # Searching calls by time (store/search.py); SQLite's full-text table is its own (store/migrations.py).
    Migration("0004_search", (
        Index("events_time", "events", "time"),
    )),
    # Held calls and approvals (store/approvals.py). Unlike `events`, `holds` changes state
    # (pending → approved/denied/expired, approved → consumed/expired); every change is also an
    # event in the chain, written in the same transaction. At most one live (pending or approved)
    # hold per binding, enforced by a partial unique index. Votes are append-only, one per approver.
    Migration("0005_approvals", (
        Table("holds", (
            Column("hold_id", "text", "PRIMARY KEY"),
            *_text("binding", "call_id", "created", "expires_at", spec=_NOT_NULL),
            Column("status", "text", "NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'consumed'))"),
            *_text("requester", "requester_subject", spec=_NOT_NULL),
            Column("connection", "text"),
            *_text("tool", "text", "text_hash", spec=_NOT_NULL),
            *_text("facts", "reason", "rule"),
            Column("approver_groups", "text", _NOT_NULL),
            Column("min_approvals", "int", "NOT NULL DEFAULT 1 CHECK (min_approvals >= 1)"),
            *_text("preview", "decided_at", "consumed_by_call"),
        ), by_rowid=True),
        Index("holds_binding", "holds", "binding, status"),
        Index("holds_due", "holds", "status, expires_at"),
        Index("holds_one_live", "holds", "binding", unique=True, where="status IN ('pending', 'approved')"),
        Table("votes", (
            Column("hold_id", "text", "NOT NULL REFERENCES holds (hold_id)"),
            Column("approver", "text", _NOT_NULL),
            Column("approve", "int", _NOT_NULL),
            Column("reason", "text"),
            Column("at", "text", _NOT_NULL),
            Column("identity", "text"),
        ), constraints=("UNIQUE (hold_id, approver)",), append_only="approval votes", by_rowid=True),
    )),
    # Signed checkpoints (store/checkpoints.py): a C2SP checkpoint note (origin, tree size, Merkle
    # root) signed with Ed25519, so that verifying needs only the public key. `chain_hash` (the
    # hash of event `size`) and `frontier` (the tree's O(log n) state) are unsigned caches that
    # let a gateway resume the tree without re-reading the log; verify ignores them.
    Migration("0006_tree_checkpoints", (
        Table("tree_checkpoints", (Column("size", "bigint", "PRIMARY KEY"),
                                   *_text("root", "chain_hash", "frontier", "time", "note", spec=_NOT_NULL)),
              append_only="audit checkpoints"),
    )),
    # Perfect subtrees of 1024 leaves and more (store/merkle.py SINK_LEVEL), written as the tree
    # grows (about one row per 512 events): a proof reads them instead of hashing the whole log.
    # An unsigned cache: a proof built from a damaged row fails its own check and is rebuilt
    # from the events.
    Migration("0007_tree_nodes", (
        Table("tree_nodes", (Column("level", "int", _NOT_NULL), Column("idx", "bigint", _NOT_NULL),
                             Column("hash", "text", _NOT_NULL)),
              constraints=("PRIMARY KEY (level, idx)",), append_only="audit tree nodes", without_rowid=True),
    )),
    # Per-identity limits ([limits], store/limits.py): one row per admitted call, so that
    # concurrent calls and calls per minute are counted across every gateway sharing the store.
    # Not the record (that is `events`): rows end, and are pruned once out of every window.
    Migration("0008_call_slots", (
        Table("call_slots", (Column("call_id", "text", "PRIMARY KEY"), *_text("subject", "started", spec=_NOT_NULL),
                             Column("ended", "text"), Column("instance", "text", _NOT_NULL))),
        Index("call_slots_subject", "call_slots", "subject, started"),
    )),
    # Replicas on several hosts sharing a PostgreSQL store cannot see each other's pids: a
    # heartbeat (AuditStore.heartbeat) tells a starting gateway which other-host processes live.
    Migration("0009_instance_seen", (
        AddColumn("instances", Column("seen", "text")),
    )),
)
