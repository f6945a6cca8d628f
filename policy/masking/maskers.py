"""Maskers: what a sensitive value becomes before the agent (and the audit log) sees it.

    null     None, whatever the value (not even null-ness is left)
    redact   "[redacted]" (None stays None: only null-ness is left)
    hash     "h:" + 16 hex digits of HMAC-SHA256(key, value): equal values stay equal across calls,
             so joins and GROUP BY still work; without a key it redacts (an unkeyed hash of a
             low-entropy value is a lookup table away from the value)
    email    "***@example.com": the domain only
    partial  "****4567": the last 4 characters, at most half of the value, behind a fixed-width
             prefix (so the length is not shown either)

``STRENGTH`` orders them: when an output derives from several sensitive columns, the strongest wins.

>>> mask("partial", "+1-555-123-4567"), mask("email", "ada@example.com"), mask("redact", None)
('****4567', '***@example.com', None)
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

# Stronger first: null hides even null-ness; partial shows the most.
STRENGTH: dict[str, int] = {"null": 5, "redact": 4, "hash": 3, "email": 2, "partial": 1}
MASKERS = tuple(STRENGTH)
REDACTED = "[redacted]"


def strongest(names: Iterable[str]) -> str | None:
    """The strongest of ``names`` (None when there are none).

    >>> strongest(["partial", "hash", "email"])
    'hash'
    """
    best = None
    for name in names:
        if best is None or STRENGTH[name] > STRENGTH[best]:
            best = name
    return best


def at_least(name: str, floor: str) -> str:
    """``name``, or ``floor`` when that is stronger."""
    return name if STRENGTH[name] >= STRENGTH[floor] else floor


def mask(masker: str, value: Any, key: bytes | None = None) -> Any:
    """One cell through one masker. Any JSON-able value: str, int, float, bool, bytes, list, dict, None."""
    if masker == "null":
        return None
    if value is None:
        return None  # null-ness is all that is left; `null` hides even that
    if masker == "redact":
        return REDACTED
    if masker == "hash":
        return keyed_hash(value, key) if key else REDACTED
    text = _text(value)
    if masker == "email":
        at = text.rfind("@") if isinstance(text, str) else -1
        # Without an @ there is no domain to keep: the whole value is hidden.
        return "***" + text[at:] if isinstance(text, str) and 0 <= at < len(text) - 1 else REDACTED
    if masker == "partial":
        if isinstance(text, bytes):
            text = text.hex()
        keep = min(4, len(text) // 2)
        return "****" + text[len(text) - keep:] if keep else "****"
    raise ValueError(f"unknown masker {masker!r}; expected one of {', '.join(MASKERS)}")


def keyed_hash(value: Any, key: bytes) -> str:
    """HMAC-SHA256 of the value's canonical text: 64 bits, enough to join on, not to reverse."""
    text = _text(value)
    mac = _keyed(key).copy()  # the key's HMAC state, worked out once
    mac.update(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    return "h:" + mac.digest()[:8].hex()


@lru_cache(maxsize=16)
def _keyed(key: bytes) -> hmac.HMAC:
    return hmac.new(key, digestmod=hashlib.sha256)


def _text(value: Any) -> str | bytes:
    """A value's canonical text, so that 42 and '42' hash alike and a JSON cell has one form."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return str(value)
