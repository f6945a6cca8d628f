"""`bastion demo`: the embedded demo runs with nothing else, writes an ordinary config every other
command takes, keeps its own files out of the shell's workspace, lets one person try an approval
end to end, and ships in the wheel. Real `bastion` processes over stdio, the SDK's own client."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from bastion.server import demo
from bastion.server.config import load
from tests.conftest import ROOT

BASTION = str(Path(sys.executable).parent / "bastion")
UPDATE = "UPDATE orders SET status = 'shipped' WHERE id = 7"


@asynccontextmanager
async def demo_server(directory: Path, *extra: str) -> AsyncIterator[Any]:
    """A `bastion demo` process on stdio; its stderr goes to a file beside the data directory."""
    params = StdioServerParameters(command=BASTION, args=["demo", "--dir", str(directory), *extra],
                                   env=dict(os.environ), cwd=str(directory.parent))
    with open(directory.parent / f"stderr{'-'.join(('',) + extra)}.txt", "a") as errlog:
        async with stdio_client(params, errlog=errlog) as streams:
            yield streams


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BASTION, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder others can read: as root, the shell's sandbox runs commands as an unprivileged user,
    who cannot reach into pytest's own (0700) temporary folders."""
    folder = Path(tempfile.mkdtemp(prefix="bastion-demo-test-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.anyio
async def test_the_demo_runs_with_nothing_else_and_every_command_takes_its_config(open_dir: Path) -> None:
    tmp_path = open_dir
    where = tmp_path / "data"
    async with Client(demo_server(where)) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        connections = await client.call_tool("list_connections", {})
        rows = await client.call_tool("sql_query", {"connection": "demo", "sql": "SELECT email FROM customers WHERE id = 1"})
        refused = await client.call_tool("sql_query", {"connection": "demo", "sql": "DROP TABLE orders"})
    assert refused.is_error
    # stderr holds Bastion's own lines: no library INFO (a line per refused tool call), no warnings.
    stderr = (tmp_path / "stderr.txt").read_text()
    assert stderr.startswith(f"bastion demo: data in {where}") and "INFO mcp" not in stderr and "Warning" not in stderr, stderr
    async with Client(demo_server(where)) as client:
        outside = await client.call_tool("shell_run", {"connection": "workspace", "command": "cat ../bastion.toml"})
        listed = await client.call_tool("shell_run", {"connection": "workspace", "command": "ls"})
    # The workspace is the shell's whole world: the demo's config, database and log are not in it.
    assert outside.is_error or outside.structured_content["exit_code"] != 0, outside.content[0].text
    assert "README.md" in listed.structured_content["stdout"] and "demo.db" not in listed.structured_content["stdout"]
    assert {"list_connections", "describe", "check", "sql_query", "shell_run"} <= tools
    assert {c["name"] for c in connections.structured_content["connections"]} == {"demo", "workspace"}
    assert rows.structured_content["rows"] == [["***@example.com"]]  # masked, as configured
    assert sorted(p.name for p in where.iterdir()) == ["bastion-audit.db", "bastion.toml", "demo.db", "workspace"]
    config = where / "bastion.toml"
    assert load(config).identity.subject == "demo-agent"
    tail = cli("audit", "tail", "--config", str(config))
    assert tail.returncode == 0 and "SELECT email FROM customers" in tail.stdout
    checked = cli("check", "--config", str(config), "--connection", "demo", "DROP TABLE orders")
    assert checked.returncode == 1 and "developers-read" in checked.stdout


def test_the_default_data_directory_is_per_user_and_printed_on_start(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)  # closed to others, as a home folder is
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg")}
    started = subprocess.run([BASTION, "demo"], input="", capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    expected = tmp_path / "xdg" / "bastion" / "demo"
    assert started.returncode == 0 and started.stdout == ""  # stdout is the MCP wire: nothing else on it
    assert f"data in {expected}" in started.stderr and f"--config {expected / 'bastion.toml'}" in started.stderr
    assert (expected / "bastion.toml").exists() and (expected / "demo.db").exists()
    if os.geteuid() == 0:  # root's own home is closed to the sandbox's user: the demo says so
        assert "cannot read" in started.stderr and "pass --dir" in started.stderr
        if "XDG_DATA_HOME" not in os.environ:
            assert demo.default_dir() == Path("/var/lib/bastion/demo")
    assert "Traceback" not in started.stderr and "Warning" not in started.stderr and "httpx" not in started.stderr


def test_the_shell_workspace_holds_none_of_the_demo_s_own_files(tmp_path: Path) -> None:
    config, written = demo.write(tmp_path)
    assert written == ["bastion.toml", "demo.db", "workspace/"]
    cwd = Path(load(config).shell_policies()["workspace"].cwd)
    assert cwd == (tmp_path / "workspace").resolve()
    inside = {p.name for p in cwd.rglob("*")}
    assert inside and not inside & {"bastion.toml", "demo.db", "bastion-audit.db"}
    assert demo.write(tmp_path)[1] == []  # a second run keeps what is there


def test_demos_started_at_once_write_each_part_once(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: demo.write(tmp_path / "data"), range(4)))
    written = [part for _, parts in results for part in parts]
    assert sorted(written) == ["bastion.toml", "demo.db", "workspace/"]  # each by exactly one of them
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["bastion.toml", "demo.db", "workspace"]
    assert load(tmp_path / "data" / "bastion.toml").connections["demo"].kind == "sqlite"


@pytest.mark.anyio
async def test_one_person_can_try_an_approval_end_to_end(tmp_path: Path) -> None:
    where = tmp_path / "data"
    demo.write(where)
    outcome: dict[str, object] = {}
    with anyio.fail_after(90):
        async with Client(demo_server(where)) as agent, Client(demo_server(where, "--as", "approver")) as approver:
            assert "approvals_list" not in {t.name for t in (await agent.list_tools()).tools}
            assert "approval_decide" in {t.name for t in (await approver.list_tools()).tools}

            async def ask() -> None:
                outcome["result"] = await agent.call_tool("sql_query", {"connection": "demo", "sql": UPDATE,
                                                                         "reason": "ship order 7"})

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(ask)
                holds: list[dict[str, object]] = []
                while not holds:
                    await anyio.sleep(0.2)
                    holds = (await approver.call_tool("approvals_list", {})).structured_content["holds"]
                assert holds[0]["text"] == UPDATE and holds[0]["rule"] == "developers-update-orders"
                decided = await approver.call_tool("approval_decide", {"hold_id": holds[0]["hold_id"], "approve": True})
                assert not decided.is_error, decided.content
    result = outcome["result"]
    assert not result.is_error and result.structured_content["row_count"] == 1  # type: ignore[attr-defined]
    shown = cli("audit", "search", "shipped", "--config", str(where / "bastion.toml"))
    assert shown.returncode == 0 and "demo-agent" in shown.stdout


def test_a_start_up_error_on_stdio_is_one_line_on_stderr(tmp_path: Path) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text('[connections.pg]\nkind = "postgres"\ntarget = "host=127.0.0.1 dbname=x user=y"\n'
                      'password_env = "BASTION_TEST_UNSET_PASSWORD"\npreset = "read-only"\n')
    env = {k: v for k, v in os.environ.items() if k != "BASTION_TEST_UNSET_PASSWORD"}
    started = subprocess.run([BASTION, "serve", "--config", str(config)], input="", capture_output=True, text=True,
                             timeout=60, env=env)
    assert started.returncode == 1 and started.stdout == ""
    first, *rest = started.stderr.strip().splitlines()
    assert first == (f"Error: {config}: connections.pg.password_env: the environment variable "
                     "`BASTION_TEST_UNSET_PASSWORD` is not set")
    assert len(rest) <= 1 and "Traceback" not in started.stderr  # the one line, and at most the fix


def test_the_demo_ships_in_the_wheel(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ and egg-info there
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                                 ".pytest_cache", "*.db"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, f"building the wheel needs setuptools in this venv (pip install setuptools): {built.stderr}"
    wheel = next(tmp_path.glob("agent_bastion-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"bastion/server/demo.py", "bastion/server/demo.toml", "bastion/server/templates/approvals/layout.html",
            "bastion/server/templates/approvals/approvals.css"} <= names
    assert {n.split("/")[0] for n in names if not n.startswith("agent_bastion-")} == {"bastion"}
