"""The gateway config the held-call tests share: developers' writes on one connection are held for
the `dba` group (rule `dev-write`, preset read-write: a write without WHERE is reviewed), and `dba`
may read there (rule `dba-read`). One writer, so a change to the rules reaches every such test."""

from __future__ import annotations

from pathlib import Path


def sqlite_target(path: Path | str) -> str:
    """The lines of an SQLite connection's table (a relative path is read from the config's folder)."""
    return f'kind = "sqlite"\ntarget = "{path}"'


def held_writes_config(folder: Path, connection: str, *, name: str = "demo", wait: str = "3s", subject: str = "dev",
                       groups: str = '["developers"]', audit: str = "", extra: str = "") -> Path:
    """``folder``/bastion.toml (``folder`` made if missing). ``connection``: the lines of the
    connection's own table (kind, target...); ``audit``: the lines of an ``[audit]`` table, if any;
    ``extra``: whole tables appended at the end (alerts, limits)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "bastion.toml"
    audit_table = f"\n[audit]\n{audit}\n" if audit else ""
    config.write_text(f"""
[identity]
subject = "{subject}"
groups = {groups}

[approvals]
wait = "{wait}"
{audit_table}
[connections.{name}]
{connection}

[[connections.{name}.rules]]
id = "dev-write"
preset = "read-write"
groups = ["developers"]
approvers = ["dba"]

[[connections.{name}.rules]]
id = "dba-read"
preset = "read-only"
groups = ["dba"]
{extra}""")
    return config
