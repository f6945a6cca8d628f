"""A connection's masking rules: which columns are sensitive (and how they are masked), what a
predicate on them may do, and which value detectors run.

Column patterns are ``schema.table.column`` globs, matched case-insensitively. When several
patterns match one column, the strongest masker wins (a column is never masked less because a
second, weaker pattern also names it).

>>> rules = MaskRules.build({"main.customers.email": "redact", "*.*.phone": "partial"})
>>> rules.column("main.customers.email").masker, rules.column("main.customers.phone").rule
('redact', 'mask:*.*.phone')
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from functools import cached_property
from glob import escape as glob_escape

from bastion.policy.decision import Verdict
from bastion.policy.masking.maskers import MASKERS, STRENGTH

# How a predicate uses a sensitive column. Probing uses compare it with values the caller picks:
# each answer narrows the value down (`email LIKE 'a%'`, then `'ad%'`, ...), so they reveal it.
PROBING = frozenset({"equality", "like", "regex", "range", "filter"})
# Uses that reveal order or grouping, not values.
SHAPING = frozenset({"order", "group", "join", "partition", "window-order", "distinct-count", "null-check"})
USES = PROBING | SHAPING

# By default probing a `redact` or `null` column is denied (a masked value you can probe for is
# not masked); every other use, and every use of a weaker masker's column, is allowed.
DEFAULT_PREDICATES: tuple[tuple[str, str, Verdict], ...] = tuple(
    (masker, use, Verdict.DENY) for masker in ("redact", "null") for use in sorted(PROBING))


@dataclass(frozen=True)
class SensitiveColumn:
    """One configured pattern: ``schema.table.column`` (globs allowed) → masker, and the id of the
    config entry that declared it (decisions and audit records cite it)."""

    pattern: str
    masker: str
    rule: str

    def __post_init__(self) -> None:
        if self.masker not in STRENGTH:
            raise ValueError(f"unknown masker `{self.masker}` for `{self.pattern}`; expected one of {', '.join(MASKERS)}")
        if len(self.pattern.split(".")) != 3:
            raise ValueError(f"a masked column is `schema.table.column`; found `{self.pattern}`")

    @property
    def table_pattern(self) -> str:
        return self.pattern.rsplit(".", 1)[0].lower()

    @property
    def column_pattern(self) -> str:
        return self.pattern.rsplit(".", 1)[1].lower()


@dataclass(frozen=True)
class MaskRules:
    columns: tuple[SensitiveColumn, ...] = ()
    # (masker, use, verdict) overrides of DEFAULT_PREDICATES; a use not listed anywhere is allowed.
    predicates: tuple[tuple[str, str, Verdict], ...] = DEFAULT_PREDICATES
    # Value detectors to run over every text result (see policy.masking.detectors.KINDS).
    detectors: frozenset[str] = frozenset()
    # The (masker, use) pairs the connection set itself (``mask_predicates``), not by default.
    configured: frozenset[tuple[str, str]] = frozenset()
    _memo: dict[str, SensitiveColumn | None] = field(default_factory=dict, repr=False, compare=False, hash=False)

    @classmethod
    def build(cls, columns: Mapping[str, str], *, predicates: Iterable[tuple[str, str, Verdict]] = (),
              detectors: Iterable[str] = ()) -> MaskRules:
        """From config-shaped data: pattern → masker; predicate overrides on top of the defaults."""
        merged = {(m, u): v for m, u, v in DEFAULT_PREDICATES}
        overrides = {(m, u): v for m, u, v in predicates}
        merged.update(overrides)
        return cls(tuple(SensitiveColumn(p, m, f"mask:{p}") for p, m in columns.items()),
                   tuple((m, u, v) for (m, u), v in sorted(merged.items())), frozenset(detectors), frozenset(overrides))

    @property
    def active(self) -> bool:
        return bool(self.columns or self.detectors)

    def column(self, name: str) -> SensitiveColumn | None:
        """The strongest pattern matching ``schema.table.column``, or None when it is not sensitive."""
        key = name.lower()
        if key not in self._memo:
            found = [c for c in self.columns if fnmatchcase(key, c.pattern.lower())]
            self._memo[key] = max(found, key=lambda c: STRENGTH[c.masker]) if found else None
        return self._memo[key]

    def covering(self, table: str) -> SensitiveColumn | None:
        """The strongest pattern that could name some column of ``schema.table``: for a table whose
        columns are not known, any of them may be the sensitive one."""
        key = table.lower()
        found = [c for c in self.columns if fnmatchcase(key, c.table_pattern)]
        return max(found, key=lambda c: STRENGTH[c.masker]) if found else None

    def inherited(self, ancestors: Mapping[str, Iterable[str]], columns: Mapping[str, Iterable[str]]) -> MaskRules:
        """These rules with each masked column of a parent (inheritance, partitioning) masked alike
        in every descendant: ``ancestors`` maps a table to its ancestors at any depth, ``columns`` a
        table to its columns. The added rule cites the parent's (the configured entry)."""
        added: list[SensitiveColumn] = []
        for table, parents in ancestors.items():
            for column in columns.get(table, ()):
                own = self.column(f"{table}.{column}")
                found = [c for c in (self.column(f"{p}.{column}") for p in parents) if c is not None]
                best = max(found, key=lambda c: STRENGTH[c.masker]) if found else None
                if best is not None and (own is None or STRENGTH[own.masker] < STRENGTH[best.masker]):
                    added.append(SensitiveColumn(glob_escape(f"{table}.{column}"), best.masker, best.rule))
        return replace(self, columns=self.columns + tuple(added), _memo={}) if added else self

    @cached_property
    def _verdicts(self) -> dict[tuple[str, str], Verdict]:
        return {(m, u): v for m, u, v in self.predicates}

    def predicate_verdict(self, masker: str, use: str) -> Verdict:
        return self._verdicts.get((masker, use), Verdict.ALLOW)

    def strongest_masker(self) -> str | None:
        return max((c.masker for c in self.columns), key=STRENGTH.__getitem__, default=None)
