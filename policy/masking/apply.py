"""Masking a result by its plan: masked columns through their maskers, every other column through
the value detectors. Returns the rows as the agent (and the audit log) will see them, and a record
of what was done that names columns, maskers, rules and counts, never a value.

>>> from policy.masking.plan import ColumnMask, MaskPlan
>>> plan = MaskPlan((None, ColumnMask("email", ("mask:main.customers.email",))), detectors=frozenset({"card"}))
>>> mask_result(["note", "email"], [["card 4111 1111 1111 1111", "ada@example.com"]], plan)
([['card [redacted:card]', '***@example.com']], {'columns': {'email': {'masker': 'email', 'rules': ['mask:main.customers.email']}}, 'detections': {'card': 1}})
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, cast

from bastion.policy.masking.detectors import Detectors
from bastion.policy.masking.maskers import REDACTED, mask
from bastion.policy.masking.plan import ColumnMask, MaskPlan


def mask_result(columns: Sequence[str], rows: Sequence[Sequence[Any]], plan: MaskPlan, *,
                key: bytes | None = None, in_place: bool = False) -> tuple[list[list[Any]], dict[str, Any]]:
    """(masked rows, record). The record is empty when nothing was masked or detected.
    ``in_place``: ``rows`` is a list of lists the caller gives up; its cells are replaced where
    they change (saves copying a large result)."""
    masks = plan.for_result(len(columns))
    # Recorded, but masked here only when not masked at the source already.
    masked = [j for j, m in enumerate(masks) if m is not None and not m.at_source]
    detectors = _detectors(plan.detectors)
    # A masker's output holds nothing to find; a column masked at the source is scanned still (its
    # value may hold other columns too: `row_to_json(c)`).
    scanned = [j for j, m in enumerate(masks) if m is None or m.at_source] if detectors.kinds else []
    record: dict[str, Any] = {}
    if any(m is not None for m in masks):
        record["columns"] = _names(columns, masks)
    # in_place: the caller promised a list of lists (the docstring), so the cells can be written.
    out: list[list[Any]] = cast("list[list[Any]]", rows) if in_place else [list(r) for r in rows]
    if not rows or (not masked and not scanned):
        return out, record
    # Columns are masked and scanned whole (a masker once per distinct value; the detectors over a
    # column as one text), then written back into the rows.
    by_column: list[Sequence[Any]] = list(zip(*rows))
    changed: dict[int, Sequence[Any]] = {j: _mask_column(m.masker, by_column[j], key)
                                         for j, m in enumerate(masks) if m is not None and not m.at_source}
    if scanned:
        replaced, counts = detectors.scan_columns([by_column[j] for j in scanned], [columns[j] for j in scanned])
        changed.update((j, cells) for j, cells in zip(scanned, replaced) if cells is not None)
        if counts:
            record["detections"] = dict(sorted(counts.items()))
    for j, cells in changed.items():
        for row, cell in zip(out, cells):
            row[j] = cell
    return out, record


def mask_text(text: str, kinds: frozenset[str]) -> tuple[str, dict[str, int]]:
    """A text result (shell output) through the detectors: (text, counts per kind)."""
    if not kinds or not text:
        return text, {}
    masked, counts = _detectors(kinds).scan_text(text)
    return masked, dict(sorted(counts.items()))


def _names(columns: Sequence[str], masks: Sequence[ColumnMask | None]) -> dict[str, Any]:
    """Masked columns by result name; a repeated name gets its position (``id#3``)."""
    out: dict[str, Any] = {}
    for j, m in enumerate(masks):
        if m is None:
            continue
        name = columns[j] if columns[j] not in out else f"{columns[j]}#{j + 1}"
        out[name] = m.as_record()
    return out


@lru_cache(maxsize=64)
def _detectors(kinds: frozenset[str]) -> Detectors:
    return Detectors(kinds)


def _mask_column(name: str, cells: Sequence[Any], key: bytes | None) -> list[Any]:
    # The two common maskers inline; the others once per distinct value (a 10,000-row column is a
    # hot loop, and its values repeat).
    if name == "redact":
        return [None if v is None else REDACTED for v in cells]
    if name == "null":
        return [None] * len(cells)
    memo: dict[Any, Any] = {}
    out = []
    for v in cells:
        try:
            out.append(memo[v])
        except KeyError:
            out.append(memo.setdefault(v, mask(name, v, key)))
        except TypeError:  # a list or dict cell: not hashable
            out.append(mask(name, v, key))
    return out
