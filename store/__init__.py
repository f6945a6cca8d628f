"""The append-only, hash-chained audit log. Decides nothing."""

from pathlib import Path
from typing import Any

from bastion.store.audit_store import AuditStore
from bastion.store.errors import StoreError
from bastion.store.sqlite_store import SqliteAuditStore

__all__ = ["AuditStore", "SqliteAuditStore", "StoreError", "open_store"]


def open_store(target: str | Path, **options: Any) -> AuditStore:
    """The audit store at ``target``: a postgresql:// URL, else a SQLite file's path. ``options``
    as the backends take them (signer, checkpoint_every, witness; password for PostgreSQL)."""
    if isinstance(target, str) and target.split(":", 1)[0].lower() in ("postgres", "postgresql"):
        from bastion.store.postgres_store import PostgresAuditStore

        return PostgresAuditStore(target, **options)
    return SqliteAuditStore(target, **options)
