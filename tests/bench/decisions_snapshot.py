"""Every decision the guard makes on a broad corpus, written out so that a change meant to be a pure
speed-up can be shown to change none of them (byte-identical output before and after).

    .venv/bin/python tests/bench/decisions_snapshot.py OUT.jsonl [--catalog CATALOG.pickle]

Texts: the golden corpora (tests/golden/sql_cases.toml, lineage_cases.toml), bench_guard.py's
corpus, the peer suites' SQL (/work/shared/peer-suites, when present) and every SQL-looking string
literal in the SQL, catalog, masking, lineage and golden tests (the red-team texts among them).
Each is analysed on PostgreSQL and SQLite and decided under several rules, on PostgreSQL also with
the server's function catalog; its mask plan is worked out against the lineage corpus's catalog.
Every fact of the analysis is written, sets sorted; the script runs itself with PYTHONHASHSEED=0
because a mask's note names one of several missing columns in hash order.

The function catalog is read from the PostgreSQL at $BASTION_TEST_PG_DSN (bench_postgres.ADMIN)
and kept in ``--catalog`` (read from there when the file exists), so that two runs compare the same
catalog even when other sessions create objects meanwhile.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import dataclasses
import enum
import json
import os
import pickle
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bastion.policy import ConnectionPolicy, Identity, analyse, decide  # noqa: E402
from bastion.policy.decision import Limits, Verdict  # noqa: E402
from bastion.policy.masking import plan  # noqa: E402
from bastion.policy.presets import PRESETS, preset  # noqa: E402
from bastion.policy.rules import SqlRule  # noqa: E402
from bastion.policy.sql.facts import Kind  # noqa: E402

PEERS = Path("/work/shared/peer-suites")
TEST_FILES = ("test_sql*.py", "test_function_catalog.py", "test_catalog_tables.py", "test_masking*.py",
              "test_golden*.py", "test_lineage.py", "test_explain*.py", "test_hints*.py")
SQL_START = re.compile(
    r"^\s*(\(|/\*|--|SELECT|WITH|INSERT|UPDATE|DELETE|MERGE|CREATE|ALTER|DROP|TRUNCATE|GRANT|REVOKE|COPY|SET|RESET|"
    r"BEGIN|COMMIT|ROLLBACK|CALL|DO|PREPARE|EXECUTE|EXPLAIN|VACUUM|ANALY[SZ]E|LOCK|LISTEN|UNLISTEN|NOTIFY|SHOW|"
    r"COMMENT|TABLE|VALUES|DECLARE|DISCARD|START|SAVEPOINT|RELEASE|ABORT|END|FETCH|CLOSE|MOVE|DEALLOCATE|REINDEX|"
    r"CLUSTER|CHECKPOINT|LOAD|IMPORT|REFRESH|SECURITY|PRAGMA|ATTACH|DETACH|REPLACE)\b", re.IGNORECASE)

RULES: dict[str, tuple[SqlRule, ...]] = {
    "read-only": (PRESETS["read-only"],),
    "read-write": (PRESETS["read-write"],),
    "strict": (SqlRule("strict", allow=frozenset({Kind.SELECT, Kind.EXPLAIN}), deny=frozenset({Kind.DROP}),
                       read_tables=("public.*", "main.*", "!public.secrets"), deny_functions=("pg_*", "lo_*", "md5"),
                       limits=Limits(max_rows=10)),),
    "writer": (preset("read-write", id="writer", limits=Limits(max_rows_affected=10), unfiltered_writes=Verdict.DENY,
                      allow_functions=frozenset({"pg_sleep", "nextval", "set_config"}), allow_locking=True,
                      write_tables=("public.orders", "public.notes", "main.*")),
               SqlRule("reviewer", allow=frozenset({Kind.SELECT}), review=frozenset({Kind.DELETE, Kind.TRUNCATE}),
                       read_tables=("*",))),
}


def texts() -> list[str]:
    out: list[str] = []
    golden = tomllib.loads((ROOT / "tests" / "golden" / "sql_cases.toml").read_text())["case"]
    out += [c["text"] for c in golden]
    lineage = tomllib.loads((ROOT / "tests" / "golden" / "lineage_cases.toml").read_text())["case"]
    out += [c["sql"] for c in lineage]
    import bench_guard

    out += bench_guard.golden() + bench_guard.corpus() + bench_guard.point_queries()
    for name in ("sql_peer_cases.jsonl", "sql_split_peer_cases.jsonl"):
        path = PEERS / name
        if path.exists():
            out += [json.loads(line)["sql"] for line in path.read_text().splitlines() if line.strip()]
    for pattern in TEST_FILES:
        for path in sorted((ROOT / "tests").glob(pattern)):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_START.match(node.value):
                    out.append(node.value)
    return list(dict.fromkeys(out))


def plain(value: Any) -> Any:
    """A JSON-able form with every set sorted (hash order differs between runs)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if not f.name.startswith("_")}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (frozenset, set)):
        return sorted((plain(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def read_catalog(path: Path | None) -> Any:
    if path is not None and path.exists():
        return pickle.loads(path.read_bytes())
    from bench_postgres import ADMIN
    from bastion.tools.executors.postgres import PostgresExecutor

    async def read() -> Any:
        executor = PostgresExecutor("snapshot", ADMIN)
        try:
            return await executor.refresh_functions()
        finally:
            await executor.close()

    catalog = asyncio.run(read())
    if catalog is None:
        raise SystemExit("cannot read the function catalog: start PostgreSQL or set BASTION_TEST_PG_DSN")
    catalog._memo.clear()
    if path is not None:
        path.write_bytes(pickle.dumps(catalog))
    return catalog


def main() -> None:
    if os.environ.get("PYTHONHASHSEED") != "0":
        # A mask's note names one missing column out of a set, so its wording follows hash order.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--catalog", type=Path, default=None)
    args = parser.parse_args()
    catalog = read_catalog(args.catalog)
    from test_lineage import CATALOGS, RULES as MASK_RULES

    who = Identity("snapshot", groups=frozenset({"analysts"}))
    corpus = texts()
    with args.out.open("w") as out:
        for text in corpus:
            for dialect in ("postgres", "sqlite"):
                analysis = analyse(text, dialect)
                record: dict[str, Any] = {"text": text, "dialect": dialect, "analysis": plain(analysis)}
                decisions: dict[str, Any] = {}
                for name, rules in RULES.items():
                    policy = ConnectionPolicy("snapshot", dialect, rules)
                    decisions[name] = plain(decide(who, policy, analysis))
                    if dialect == "postgres":
                        decisions[name + "+catalog"] = plain(decide(who, policy, analysis, catalog))
                record["decisions"] = decisions
                if analysis.error is None and analysis.statements:
                    try:
                        found = plan(analysis.statements, CATALOGS[dialect], MASK_RULES[dialect])
                        record["masks"] = plain(found.summary())
                    except Exception as error:  # the tools deny on it; the snapshot keeps what it was
                        record["masks"] = f"error: {type(error).__name__}: {error}"
                out.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
    print(f"{len(corpus)} texts x 2 dialects written to {args.out}")


if __name__ == "__main__":
    main()
