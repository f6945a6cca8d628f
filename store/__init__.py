"""The append-only, hash-chained audit log. Decides nothing."""

from bastion.store.errors import StoreError
from bastion.store.sqlite_store import SqliteAuditStore

__all__ = ["SqliteAuditStore", "StoreError"]
