"""`bastion config validate --connect`: does each target answer, and is its login what the rules assume?

A probe runs nothing an agent asked for: a catalog read on a database (and, on PostgreSQL, the login
role's attributes and write grants), `true` on a shell. Each returns what it found, in plain words.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from bastion.policy import Identity
from bastion.policy.errors import BastionError
from bastion.policy.sql.facts import Kind
from bastion.policy.sql.privileges import excess, explain
from bastion.tools.connections import Connection, ShellConnection
from bastion.tools.executors.postgres import PostgresExecutor
from bastion.tools.executors.shell_base import ShellRunRequest

PROBE_TIMEOUT_S = 15.0
WRITES = frozenset({Kind.INSERT, Kind.UPDATE, Kind.DELETE, Kind.MERGE, Kind.TRUNCATE, Kind.CREATE, Kind.ALTER,
                    Kind.DROP, Kind.GRANT, Kind.REVOKE, Kind.COPY, Kind.COMMENT})

# The login's own attributes, and up to five tables it may change (directly or through a role it inherits).
LOGIN_SQL = "SELECT current_user, rolsuper, rolbypassrls, rolcreaterole FROM pg_roles WHERE rolname = current_user"
WRITABLE_SQL = """
SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%' AND has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')
ORDER BY 1 LIMIT 5"""


@dataclass(frozen=True)
class Probe:
    ok: bool
    said: str  # what answered, or why not
    problems: tuple[str, ...] = ()  # the login is not what the rules assume


def _writes_allowed(connection: Connection) -> bool:
    return any((rule.allow | rule.review) & WRITES for rule in connection.policy.rules)


async def probe_sql(connection: Connection) -> Probe:
    try:
        with anyio.fail_after(PROBE_TIMEOUT_S):
            tables = await connection.executor.catalog()
            problems: tuple[str, ...] = ()
            login = ""
            if isinstance(connection.executor, PostgresExecutor):
                login, problems = await _postgres_login(connection, connection.executor)
    except TimeoutError:
        return Probe(False, f"no answer within {PROBE_TIMEOUT_S:g} s")
    except BastionError as error:
        return Probe(False, error.message)
    except Exception as error:  # a driver's own error: its class is enough, never its text (it may hold a DSN)
        return Probe(False, f"cannot connect ({type(error).__name__})")
    return Probe(True, f"answers{login}; {len(tables)} tables and views readable", problems)


async def _postgres_login(connection: Connection, executor: PostgresExecutor) -> tuple[str, tuple[str, ...]]:
    pool = await executor._pool()
    async with pool.connection(timeout=PROBE_TIMEOUT_S) as conn:
        row = await (await conn.execute(LOGIN_SQL)).fetchone()
        assert row is not None  # a query of current_user's own pg_roles row: always one
        user, superuser, bypassrls, createrole = row
        writable = [row[0] for row in await (await conn.execute(WRITABLE_SQL)).fetchall()]
    problems = []
    if superuser:
        problems.append(f"the login `{user}` is a superuser: grants, row-level security and read-only roles do not bind "
                        "it, so the database is no boundary. Log in as a role with only the grants the rules need")
    elif bypassrls:
        problems.append(f"the login `{user}` bypasses row-level security (BYPASSRLS)")
    if createrole and not superuser:
        problems.append(f"the login `{user}` may create roles (CREATEROLE)")
    if writable and not _writes_allowed(connection) and not connection.scoping.entries:
        problems.append(f"no rule allows writes, but the login `{user}` may change {', '.join(writable)}"
                        f"{' and more' if len(writable) == 5 else ''}: grant it SELECT only")
    # What else the gateway refuses to serve at start (tools/executors/postgres.py): the rights the
    # checks above do not name, of the login and of each mapped role, unless accept_rights names them.
    expected = executor.least_privilege
    if expected is not None:
        named = {"superuser", "bypassrls", "createrole", "write-grants"}
        for role, rights in await executor.login_rights():
            if rights is None:
                problems.append(f"the mapped role `{role}` does not exist")
                continue
            extra = [e for e in excess(rights, writes_allowed=expected.writes_allowed, accepted=expected.accepted)
                     if e.right not in named or rights.login != user]
            if extra:
                problems.append(explain(rights.login, tuple(extra)) + "; the gateway will not serve this connection "
                                "until they are revoked or named in `accept_rights`")
    return f" as `{user}`", tuple(problems)


async def probe_shell(connection: ShellConnection) -> Probe:
    request = ShellRunRequest("true", connection.policy.cwd, PROBE_TIMEOUT_S, 4096, Identity("bastion-probe", frozenset()))
    try:
        with anyio.fail_after(PROBE_TIMEOUT_S + 5):
            result = await connection.executor.run(request)
    except TimeoutError:
        return Probe(False, f"no answer within {PROBE_TIMEOUT_S:g} s")
    except BastionError as error:
        return Probe(False, error.for_agent())
    except Exception as error:
        return Probe(False, f"cannot run a command ({type(error).__name__})")
    if result.exit_code != 0:
        return Probe(False, f"`true` exited {result.exit_code}: {result.stderr.strip()[:200]}")
    return Probe(True, f"runs commands in {connection.policy.cwd}")
