"""The one small cache helper: a dict that empties itself when full, for memos whose entries are cheap
to make again (decide()'s decisions, the PostgreSQL executor's rendered session set-ups, the function
catalog's resolved references, the sandbox's safe git configs, the HTTP app's unauthenticated callers).

Emptying all at once, rather than evicting one entry, keeps it safe for threads without a lock:
``dict.clear`` is one step, while evicting one entry as another thread inserts is not. An entry may
be made twice by two threads at once; both are right, and the last one stays.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ClearingCache(dict[K, V], Generic[K, V]):
    """A dict of at most ``size`` entries, added with `put`: the one put when it is full starts it
    afresh. Reading is a dict's own (``get`` costs what a dict's does: it is on every call's path).

    ``scope`` is what every entry was made under (decide(): the function catalog). `within` a new
    scope drops every entry, so nothing made under the old one is kept, nor keeps it alive.

    >>> cache = ClearingCache[str, int](2)
    >>> cache.put("a", 1); cache.put("b", 2); cache.put("c", 3)
    >>> cache.get("a"), cache.get("c"), len(cache)
    (None, 3, 1)
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"a cache holds at least one entry; found size {size}")
        self.size = size
        self.scope: Any = None

    def put(self, key: K, value: V) -> None:
        if len(self) >= self.size and key not in self:
            self.clear()  # one C call: atomic, unlike evicting one entry while another thread may insert
        self[key] = value

    def within(self, scope: Any) -> None:
        """Entries from now on are made under ``scope``; a scope other than the current one drops them all."""
        if self.scope is not scope:
            self.clear()
            self.scope = scope
