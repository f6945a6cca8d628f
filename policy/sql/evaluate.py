"""One rule against one statement → an Outcome. The checks run in the order listed in CHECKS.

An Outcome is ``allow``, ``review``, ``deny`` (an explicit prohibition: it beats every allow), or
``none``: this rule does not cover the statement, with a reason saying what it would need.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from collections.abc import Iterable
from typing import Callable

from bastion.policy.decision import Verdict
from bastion.policy.outcome import Effect, Outcome, first_outcome
from bastion.policy.patterns import matches
from bastion.policy.presets import SENSITIVE_CATALOG, SENSITIVE_CATALOG_PATTERNS, STATS_CATALOG
from bastion.policy.rules import SqlRule
from bastion.policy.sql import catalog as function_catalog
from bastion.policy.sql import dangerous_functions
from bastion.policy.sql.catalog import FunctionCatalog
from bastion.policy.sql.facts import WRITE_KINDS, Kind, Statement

def _dangerous(dialect: str) -> dict[str, dangerous_functions.FunctionRisk]:
    return dangerous_functions.POSTGRES if dialect == "postgres" else dangerous_functions.SQLITE


def _upper(kinds: Iterable[Kind]) -> str:
    return ", ".join(sorted(k.value.upper() for k in kinds))


def check_denied_kinds(rule: SqlRule, stmt: Statement, dialect: str, catalog: FunctionCatalog | None = None) -> Outcome | None:
    """``deny = ["drop"]`` → any DROP, even nested, is denied outright."""
    hit = stmt.kinds & rule.deny
    if hit:
        return Outcome("deny", f"{rule.id}:deny-kind", f"{_upper(hit)} is denied by rule `{rule.id}`")
    return None


def check_denied_functions(rule: SqlRule, stmt: Statement, dialect: str, catalog: FunctionCatalog | None = None) -> Outcome | None:
    """``deny_functions = ["pg_*"]`` → a call to any matching function is denied outright."""
    if not rule.deny_functions:  # most rules deny none: no name to match
        return None
    names = stmt.functions | stmt.attributes  # `c.f` is f(c) when f takes c's row type
    hit = sorted(f for f in names if any(fnmatchcase(f, p.lower()) for p in rule.deny_functions))
    if hit:
        return Outcome("deny", f"{rule.id}:deny-function", f"`{hit[0]}()` is denied by rule `{rule.id}`",
                       hint=f"Rewrite the query without `{hit[0]}()`.")
    return None


def check_sql_text_functions(rule: SqlRule, stmt: Statement, dialect: str,
                             catalog: FunctionCatalog | None = None) -> Outcome | None:
    """``SELECT * FROM ts_stat('SELECT ...')`` → denied, whatever the rule names: a function that runs
    SQL text (or reads a table named in a string) reads what no table rule can see."""
    if dialect != "postgres":
        return None
    hit = sorted(f for f in stmt.functions | stmt.attributes if function_catalog.runs_sql_text(f))
    if hit:
        return function_catalog.sql_text_outcome(rule, f"{hit[0]}()")
    return None


def check_dangerous_functions(rule: SqlRule, stmt: Statement, dialect: str, catalog: FunctionCatalog | None = None) -> Outcome | None:
    """``SELECT pg_read_file('/etc/passwd')`` → not covered unless the rule exempts pg_read_file."""
    risky = _dangerous(dialect)
    # Without the server's catalog, `x.f` may be f(x) (attribute notation): judged by name too.
    names = stmt.functions if catalog is not None else stmt.functions | stmt.attributes
    hit = sorted(f for f in names if f in risky and f not in rule.allow_functions)
    if hit:
        why = risky[hit[0]].why
        return Outcome("none", f"{rule.id}:function", f"`{hit[0]}()` {why}; it is denied by default",
                       hint=f"Rewrite the query without `{hit[0]}()`.")
    return None


def check_catalog_functions(rule: SqlRule, stmt: Statement, dialect: str,
                            catalog: FunctionCatalog | None = None) -> Outcome | None:
    """``SELECT ('/etc/hostname'::text).pg_read_file`` → not covered: every function reference (call,
    attribute notation, operator, cast) is resolved in the server's catalog and judged there
    (policy.sql.catalog). Without a catalog (a policy checked offline) the name lists above decide."""
    if catalog is None or dialect != "postgres":
        return None
    return function_catalog.judge(rule, stmt, catalog)


def check_kinds(rule: SqlRule, stmt: Statement, dialect: str, catalog: FunctionCatalog | None = None) -> Outcome | None:
    """``DROP TABLE t`` under read-only → not covered: the rule allows SELECT, EXPLAIN."""
    missing = stmt.kinds - rule.allow - rule.review
    if missing:
        allowed = _upper(rule.allow) or "nothing"
        what = "creates a table" if stmt.select_into and Kind.CREATE in missing else f"is {_upper(missing)}"
        return Outcome("none", f"{rule.id}:kind", f"the statement {what}; rule `{rule.id}` allows {allowed}",
                       hint=f"Only {allowed} statements would pass here.")
    return None


def check_locking(rule: SqlRule, stmt: Statement, dialect: str, catalog: FunctionCatalog | None = None) -> Outcome | None:
    """``SELECT ... FOR UPDATE`` → not covered unless the rule allows locking clauses."""
    if stmt.locking and not rule.allow_locking:
        return Outcome("none", f"{rule.id}:locking", f"locking clauses (FOR UPDATE/SHARE) are not allowed by rule `{rule.id}`",
                       hint="Remove the FOR UPDATE/FOR SHARE clause.")
    return None


def check_tables(rule: SqlRule, stmt: Statement, dialect: str, catalog: FunctionCatalog | None = None) -> Outcome | None:
    """``SELECT * FROM pg_authid`` → not covered: the table is outside the rule's read patterns.
    With the server's catalog, unqualified names are resolved along the search path and a parent's
    inheritance children and partitions are judged with it."""
    reads, writes = catalog.tables(stmt) if catalog is not None and dialect == "postgres" else (stmt.reads, stmt.writes)
    for table in sorted(writes):
        if not matches(rule.write_tables, table):
            return Outcome("none", f"{rule.id}:table", f"rule `{rule.id}` does not allow writing `{table}`",
                           hint=f"Writable tables: {', '.join(rule.write_tables) or 'none'}.")
    for table in sorted(reads):
        if table in STATS_CATALOG and not reads_every_table(rule):
            return Outcome("none", f"{rule.id}:table", f"`{table}` shows sample values of columns in every table the login "
                           f"can read, and rule `{rule.id}` does not let you read every table",
                           hint="Query the tables themselves (e.g. SELECT col, count(*) ... GROUP BY col).")
        if matches(SENSITIVE_CATALOG_PATTERNS, table):
            return Outcome("none", f"{rule.id}:table", f"`{table}` holds secrets or other sessions' activity; "
                           "no rule can read it through Bastion")
        if not (matches(rule.read_tables, table) or matches(rule.write_tables, table)):
            return Outcome("none", f"{rule.id}:table", f"rule `{rule.id}` does not allow reading `{table}`",
                           hint=f"Readable tables: {', '.join(rule.read_tables)}.")
    return None


def reads_every_table(rule: SqlRule) -> bool:
    """Whether a rule's patterns read every table (``*``, excluding at most the sensitive catalog)."""
    patterns = set(rule.read_tables) | set(rule.write_tables)
    return "*" in patterns and all(not p.startswith("!") or p in SENSITIVE_CATALOG for p in patterns)


def check_uncounted_writes(rule: SqlRule, stmt: Statement, dialect: str,
                           catalog: FunctionCatalog | None = None) -> Outcome | None:
    """``WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d`` under ``max_rows_affected`` → not
    covered: the rows a write nested in another statement changes cannot be counted."""
    if rule.limits.max_rows_affected is None:
        return None
    nested = stmt.kinds & WRITE_KINDS - {stmt.kind}
    analysed = stmt.explained is not None and stmt.explain_analyze and stmt.explained.kinds & WRITE_KINDS
    if nested or analysed:
        return Outcome("none", f"{rule.id}:rows-affected",
                       f"rule `{rule.id}` bounds the rows a call may change ({rule.limits.max_rows_affected}), and the rows "
                       "changed by a write inside WITH or EXPLAIN ANALYZE cannot be counted",
                       hint="Send the INSERT, UPDATE or DELETE as a statement of its own.")
    return None


def check_unfiltered(rule: SqlRule, stmt: Statement, dialect: str, catalog: FunctionCatalog | None = None) -> Outcome | None:
    """``DELETE FROM t`` (no WHERE) → the rule's ``unfiltered_writes`` verdict (review by default)."""
    if stmt.unfiltered and rule.unfiltered_writes is not Verdict.ALLOW:
        effect: Effect = "deny" if rule.unfiltered_writes is Verdict.DENY else "review"
        return Outcome(effect, f"{rule.id}:unfiltered", f"{_upper(stmt.unfiltered)} without a WHERE clause changes every row",
                       hint="Add a WHERE clause that names the rows to change.")
    return None


def check_review_kinds(rule: SqlRule, stmt: Statement, dialect: str, catalog: FunctionCatalog | None = None) -> Outcome | None:
    """``TRUNCATE t`` under read-write → held for review."""
    held = stmt.kinds & rule.review - rule.allow
    if held:
        return Outcome("review", f"{rule.id}:review-kind", f"{_upper(held)} needs approval under rule `{rule.id}`")
    return None


Check = Callable[[SqlRule, Statement, str, "FunctionCatalog | None"], "Outcome | None"]

# Order: prohibitions first, then coverage (none), then what holds a call for review.
CHECKS: tuple[Check, ...] = (
    check_denied_kinds,
    check_denied_functions,
    check_sql_text_functions,
    check_dangerous_functions,
    check_catalog_functions,
    check_kinds,
    check_locking,
    check_tables,
    check_uncounted_writes,
    check_unfiltered,
    check_review_kinds,
)


def evaluate(rule: SqlRule, stmt: Statement, dialect: str, catalog: FunctionCatalog | None = None) -> Outcome:
    """The first prohibition or gap wins; otherwise review if any check holds, else allow."""
    return first_outcome(rule.id, (check(rule, stmt, dialect, catalog) for check in CHECKS))
