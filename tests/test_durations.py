"""One duration grammar (policy/durations.py) for the config's durations and the CLI's --since/--until."""

from __future__ import annotations

import doctest
from datetime import datetime, timedelta, timezone

import pytest

from bastion.policy import durations
from bastion.server.config import AlertConfig, ApprovalsConfig
from bastion.store.search import since

NOW = datetime(2026, 12, 7, 12, tzinfo=timezone.utc)


@pytest.mark.parametrize(("text", "expected"), [
    ("30", 30.0), ("30s", 30.0), ("10m", 600.0), ("1h", 3600.0), ("2d", 172800.0), ("1.5h", 5400.0),
    (" 2 d ", 172800.0), (45, 45.0), (0.5, 0.5),
])
def test_a_duration_is_a_number_with_an_optional_unit(text: str | float, expected: float) -> None:
    assert durations.seconds(text) == expected


@pytest.mark.parametrize("text", ["", "h", "1w", "-1h", "1h30m", "one hour", "1e3"])
def test_anything_else_is_refused_with_examples(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration such as 30s, 10m, 1h, 2d"):
        durations.seconds(text)


def test_the_config_and_the_cli_read_durations_alike() -> None:
    # Before: the config read `1.5h` and `90` (seconds) while --since refused both.
    for text in ("90", "1.5h", "10m", "2 d"):
        config = ApprovalsConfig(ttl=text).ttl_s
        assert AlertConfig(id="a", kind="denials", window=text).to_rule().window_s == config  # type: ignore[call-arg]
        searched = datetime.fromisoformat(since(text))
        assert abs((datetime.now(timezone.utc) - searched) - timedelta(seconds=config)) < timedelta(seconds=5)


def test_ago_reads_an_iso_time_first_then_a_duration() -> None:
    assert durations.ago("1h", NOW) == NOW - timedelta(hours=1)
    assert durations.ago("20261201", NOW) == datetime(2026, 12, 1, tzinfo=timezone.utc)  # a compact date, not seconds
    assert durations.ago("2026-12-07T10:00:00+02:00", NOW) == datetime(2026, 12, 7, 8, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="or an ISO time"):
        durations.ago("yesterday", NOW)


def test_the_examples_in_the_docstrings_hold() -> None:
    assert doctest.testmod(durations).failed == 0
