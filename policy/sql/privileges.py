"""Least privilege, verified: what a PostgreSQL login can do beyond what a connection's rules allow.

tools/ reads the login's rights (``RIGHTS_SQL``) and hands them here as ``LoginRights``; ``excess``
says, right by right, what the login could do that no rule lets an agent do. A connection is served
only when every excess right is named in its config's ``accept_rights`` (docs/identity.md).

>>> rights = LoginRights("gw", memberships=frozenset({"pg_read_server_files"}))
>>> [e.right for e in excess(rights, writes_allowed=False)]
['pg_read_server_files']
>>> excess(rights, writes_allowed=False, accepted=frozenset({"pg_read_server_files"}))
()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Role attributes, by the name a config accepts them under.
ATTRIBUTES: dict[str, str] = {
    "superuser": "is a superuser: no grant, row-level security policy or read-only role binds it",
    "bypassrls": "bypasses row-level security (BYPASSRLS)",
    "createrole": "creates and alters roles (CREATEROLE), so it can grant itself more",
    "replication": "may start replication and read every change in the cluster (REPLICATION)",
    "createdb": "creates databases (CREATEDB)",
}
# Predefined roles that reach past table grants, held directly or through other roles.
PREDEFINED: dict[str, str] = {
    "pg_read_server_files": "reads any file on the database server (COPY FROM a file, pg_read_file)",
    "pg_write_server_files": "writes any file on the database server (COPY TO a file)",
    "pg_execute_server_program": "runs programs on the database server (COPY ... PROGRAM)",
    "pg_signal_backend": "cancels or ends other sessions",
    "pg_read_all_stats": "reads every session's activity and query text",
    "pg_monitor": "reads every session's activity, query text and the server's statistics",
    "pg_read_all_settings": "reads every server setting, file paths included",
    "pg_read_all_data": "reads every table, whatever its grants",
    "pg_write_all_data": "writes every table, whatever its grants",
}

# What tools/ runs as the login (for %(role)s, or the login itself when it is NULL): its attributes, the predefined roles it holds (a member of, at any
# depth), up to five tables it owns (an owner skips row-level security and may drop or alter the
# table) and up to five it may change.
RIGHTS_SQL = f"""
SELECT r.rolname, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolreplication, r.rolcreatedb,
       array(SELECT p FROM unnest(array[{", ".join(f"'{name}'" for name in PREDEFINED)}]) p
             WHERE pg_has_role(r.oid, p, 'MEMBER')),
       array(SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname !~ '^pg_' AND pg_has_role(r.oid, c.relowner, 'MEMBER') ORDER BY 1 LIMIT 5),
       array(SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname !~ '^pg_' AND has_table_privilege(r.oid, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')
             ORDER BY 1 LIMIT 5)
FROM pg_roles r WHERE r.rolname = coalesce(%(role)s, current_user)
"""


@dataclass(frozen=True)
class LoginRights:
    """What one login holds, as RIGHTS_SQL reads it."""

    login: str
    attributes: frozenset[str] = frozenset()  # keys of ATTRIBUTES it has
    memberships: frozenset[str] = frozenset()  # keys of PREDEFINED it holds
    owns: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> LoginRights:
        login, superuser, bypassrls, createrole, replication, createdb, held, owns, writable = row
        flags = {"superuser": superuser, "bypassrls": bypassrls, "createrole": createrole,
                 "replication": replication, "createdb": createdb}
        return cls(login, frozenset(k for k, v in flags.items() if v), frozenset(held or ()), tuple(owns or ()),
                   tuple(writable or ()))


@dataclass(frozen=True)
class LeastPrivilege:
    """What a connection's rules need of its logins: whether any rule writes, the rights the config
    accepts beyond that, and the mapped roles (each is checked too)."""

    writes_allowed: bool
    accepted: frozenset[str] = frozenset()
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Excess:
    """One right the login has beyond what the rules allow: the name a config accepts it under,
    and what it lets the login do."""

    right: str
    why: str


def excess(rights: LoginRights, *, writes_allowed: bool, accepted: frozenset[str] = frozenset()) -> tuple[Excess, ...]:
    """Every right of ``rights`` that no rule needs and ``accepted`` does not name, in a fixed order."""
    found = [Excess(a, ATTRIBUTES[a]) for a in ATTRIBUTES if a in rights.attributes]
    found += [Excess(p, PREDEFINED[p]) for p in PREDEFINED if p in rights.memberships]
    if rights.owns:
        found.append(Excess("ownership", f"owns {', '.join(rights.owns)}{' and more' if len(rights.owns) == 5 else ''}, "
                                         "so it skips their row-level security and may alter or drop them"))
    if rights.writable and not writes_allowed:
        found.append(Excess("write-grants", f"may change {', '.join(rights.writable)}"
                                            f"{' and more' if len(rights.writable) == 5 else ''}, and no rule allows a write"))
    return tuple(e for e in found if e.right not in accepted)


ACCEPTABLE = frozenset(ATTRIBUTES) | frozenset(PREDEFINED) | {"ownership", "write-grants"}


def explain(login: str, found: tuple[Excess, ...]) -> str:
    """One sentence an operator (and an agent, who can do nothing about it) can read."""
    return f"the login `{login}` can do more than the rules allow: " + "; ".join(f"{e.why} (`{e.right}`)" for e in found)
