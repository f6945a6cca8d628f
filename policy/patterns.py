"""Table patterns: ``schema.table`` globs, gitignore-style: the last matching pattern wins and a
leading ``!`` excludes.

>>> matches(("*", "!pg_catalog.*"), "public.orders"), matches(("*", "!pg_catalog.*"), "pg_catalog.pg_authid")
(True, False)
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from functools import lru_cache


@lru_cache(maxsize=8192)
def matches(patterns: tuple[str, ...], name: str) -> bool:
    name = name.lower()
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern[1:] if negated else pattern
        if fnmatchcase(name, glob.lower()):
            result = not negated
    return result
