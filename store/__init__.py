"""The append-only, hash-chained audit log. Decides nothing."""

from store.errors import StoreError
from store.sqlite_store import SqliteAuditStore

__all__ = ["SqliteAuditStore", "StoreError"]
