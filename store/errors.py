"""The store's own error; tools/ translates it to Bastion's AuditUnavailable at the boundary."""


class StoreError(Exception):
    """The audit store could not be read or written."""
