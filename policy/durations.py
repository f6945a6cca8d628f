"""The one duration grammar: config keys (`wait`, `ttl`, an alert's `window`) and the CLI's `--since`
and `--until` read durations through it.

    duration = number [unit]      number: digits, optionally with a decimal part
    unit     = s | m | h | d      none: seconds

Blanks around the number and the unit are ignored: ``30``, ``30s``, ``1.5h``, ``2 d``.
Pure: `ago` is given the moment to count back from.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}  # seconds per unit
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
EXAMPLES = "30s, 10m, 1h, 2d"


def seconds(value: str | float) -> float:
    """A duration in seconds: a number is seconds already, a text is read by the grammar above.

    >>> seconds("10m"), seconds("1.5h"), seconds("45"), seconds(2)
    (600.0, 5400.0, 45.0, 2.0)
    """
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION.fullmatch(value)
    if not m:
        raise ValueError(f"expected a duration such as {EXAMPLES}; found {value!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def ago(value: str, now: datetime) -> datetime:
    """A moment in UTC: an ISO time as given (UTC when it names no zone), else ``now`` less a duration.

    An ISO time is tried first, so a compact date such as ``20261207`` is that day, never seconds.

    >>> now = datetime(2026, 12, 7, 12, tzinfo=timezone.utc)
    >>> ago("1h", now).isoformat(), ago("2026-12-01", now).isoformat()
    ('2026-12-07T11:00:00+00:00', '2026-12-01T00:00:00+00:00')
    """
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        try:
            return (now - timedelta(seconds=seconds(value))).astimezone(timezone.utc)
        except ValueError:
            raise ValueError(f"expected a duration such as {EXAMPLES}, or an ISO time; found {value!r}") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
