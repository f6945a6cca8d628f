"""The catalog lineage resolves names against: plain data the executor read from the database.

``tables`` maps ``schema.table`` (views too) to its ordered column names; ``views`` maps a view to
its defining SQL (a SELECT, or the whole ``CREATE VIEW ... AS SELECT``). Names are as the database
stores them; on SQLite, whose names are case-insensitive, they are folded to lower case.

A Catalog compares and hashes by identity: the caller builds one per refresh, and what is derived
from it (sqlglot's schema, each view's lineage) is worked out once and kept in ``memo``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sqlglot.schema import MappingSchema


@dataclass(frozen=True, eq=False)
class Catalog:
    dialect: str
    default_schema: str
    tables: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    views: Mapping[str, str] = field(default_factory=dict)
    # A table's inheritance parents and partitioned tables, any depth (PostgreSQL's pg_inherits).
    ancestors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, dialect: str, default_schema: str, tables: Mapping[str, tuple[str, ...] | list[str]],
              views: Mapping[str, str] | None = None, ancestors: Mapping[str, tuple[str, ...]] | None = None) -> Catalog:
        fold = str.lower if dialect == "sqlite" else (lambda s: s)
        return cls(dialect, fold(default_schema),
                   {fold(name): tuple(fold(c) for c in cols) for name, cols in tables.items()},
                   {fold(name): sql for name, sql in (views or {}).items()},
                   {name: tuple(found) for name, found in (ancestors or {}).items() if found})

    def columns(self, table: str) -> tuple[str, ...] | None:
        found = self.tables.get(table)
        if found is None and self.dialect == "sqlite":
            found = self.tables.get(table.lower())
        return found

    def has_column(self, table: str, column: str) -> bool:
        cols = self._column_sets.get(table)
        if cols is None and self.dialect == "sqlite":
            cols = self._column_sets.get(table.lower())
        return cols is not None and (column in cols or (self.dialect == "sqlite" and column.lower() in cols))

    def is_view(self, table: str) -> bool:
        return table in self.views or (self.dialect == "sqlite" and table.lower() in self.views)

    @cached_property
    def _column_sets(self) -> dict[str, frozenset[str]]:
        return {name: frozenset(cols) for name, cols in self.tables.items()}

    @cached_property
    def schema(self) -> MappingSchema:
        """sqlglot's view of the catalog, for qualifying columns and expanding stars. Names are
        passed as stored (no normalisation): the parsed query's identifiers are normalised instead."""
        nested: dict[str, dict[str, dict[str, str]]] = {}
        for name, cols in self.tables.items():
            schema, _, table = name.partition(".")
            nested.setdefault(schema, {})[table] = {c: "UNKNOWN" for c in cols}
        # A shallow copy: MappingSchema asks for dict[str, object], and dict is invariant in its values.
        return MappingSchema(dict[str, object](nested), dialect=self.dialect, normalize=False)


EMPTY_SQLITE = Catalog("sqlite", "main")
