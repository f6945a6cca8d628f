"""The one small cache helper (policy/cache.py) that decide()'s memo and the PostgreSQL executor's
rendered session set-ups use; before, each wrote its own clear-at-N dict."""

from __future__ import annotations

import doctest

import pytest

from bastion.policy import cache
from bastion.policy.cache import ClearingCache


def test_a_full_cache_starts_afresh_with_the_new_entry() -> None:
    memo = ClearingCache[int, str](3)
    for n in range(3):
        memo.put(n, str(n))
    assert len(memo) == 3 and memo.get(0) == "0"
    memo.put(3, "3")
    assert len(memo) == 1 and memo.get(0) is None and memo.get(3) == "3"
    memo.put(3, "three")  # putting a key again counts once
    assert len(memo) == 1 and list(memo.values()) == ["three"]


def test_a_new_scope_drops_what_was_made_under_the_old_one() -> None:
    memo = ClearingCache[str, int](10)
    old, new = object(), object()
    memo.within(old)
    memo.put("a", 1)
    memo.within(old)  # the same scope keeps its entries
    assert memo.get("a") == 1
    memo.within(new)
    assert memo.get("a") is None and memo.scope is new
    memo.put("b", 2)
    memo.clear()
    assert len(memo) == 0 and memo.scope is new  # clearing keeps the scope


def test_a_cache_holds_at_least_one_entry() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ClearingCache(0)


def test_the_examples_in_the_docstrings_hold() -> None:
    assert doctest.testmod(cache).failed == 0
