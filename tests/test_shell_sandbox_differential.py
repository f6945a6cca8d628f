"""Differential check: every golden command the `inspect` preset allows gives the same output in the
sandbox as unsandboxed, in a scratch workspace (the sandbox takes nothing ordinary work needs).

Commands whose output depends on the host rather than the workspace (processes, disks, clock, user,
home, paths outside the workspace) are compared for running cleanly only; `ls -a`'s line for the
workspace's parent is left out (inside, that parent is a folder the sandbox made), and `ls -l`'s owner
columns (inside its user namespace, files of other users show as nobody).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from bastion.policy import Identity
from bastion.policy.shell.decide import vet_shell_text
from bastion.policy.shell.presets import INSPECT
from bastion.policy.shell.rules import ShellPolicy
from bastion.tools.executors.local_shell import LocalShellExecutor
from bastion.tools.executors.sandbox import Sandbox
from bastion.tools.executors.shell_base import ShellRunRequest
from tests.conftest import requirement

pytestmark = pytest.mark.anyio
CASES = tomllib.loads((Path(__file__).parent / "golden" / "shell_cases.toml").read_text())["case"]
HOST_DEPENDENT = re.compile(r"\b(ps|df|du|date|uname|id|whoami|hostname|uptime|free|env|printenv|which)\b|~|\$\{?#?(HOME|USER|LOGNAME)"
                            r"|(^|\s)/(?!work/project)")
# `ls -a` shows the workspace's parent, which inside is a plain folder Bastion made; the block total follows it.
PARENT = re.compile(r"^(total \d+|.* \.\.)$\n", re.M)
# In its user namespace the sandbox sees files of other users (root here) as nobody/nogroup.
OWNER = re.compile(r"^([-dlcbps][-rwxsStT.]{9}\S*\s+\d+\s+)\S+\s+\S+", re.M)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("bwrap") is None:
        pytest.fail("the differential sandbox test needs bubblewrap: `apt-get install -y bubblewrap`")
    root = tmp_path_factory.mktemp("differential")
    ws = root / "project"
    (ws / "src").mkdir(parents=True)
    (ws / "tests").mkdir()
    (ws / "README.md").write_text("# Project\nTODO: write docs\nsee src/main.py\n")
    (ws / "notes.txt").write_text("alpha\nbeta\nTODO gamma\n")
    (ws / "main.py").write_text("def main():\n    return 1  # TODO\n")
    (ws / "src" / "main.py").write_text("import os\n\ndef run():\n    print('TODO')\n")
    (ws / "tests" / "test_main.py").write_text("def test_run():\n    assert True\n")
    git = ["git", "-C", str(ws), "-c", "user.email=a@b", "-c", "user.name=a", "-c", "init.defaultBranch=main"]
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], env={"GIT_COMMITTER_DATE": "2026-01-01T00:00:00",
                                                         "GIT_AUTHOR_DATE": "2026-01-01T00:00:00", "PATH": "/usr/bin:/bin"},
                   check=True)
    (ws / "notes.txt").write_text("alpha\nbeta\nTODO gamma\ndelta\n")
    for path in [ws, *ws.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return ws


def allowed(project: Path) -> list[tuple[str, str]]:
    policy = ShellPolicy("golden", (INSPECT,), str(project))
    out = []
    for case in CASES:
        text = str(case["text"]).replace("/work/project", str(project))
        _, decision, rebuilt = vet_shell_text(Identity("golden"), policy, text)
        if decision.allowed and rebuilt is not None:
            out.append((str(case["title"]), rebuilt))
    return out


@requirement("shell:sandbox-differential")
async def test_allowed_golden_commands_give_the_same_output_sandboxed(project: Path) -> None:
    plain = LocalShellExecutor("plain", project)
    boxed = LocalShellExecutor("boxed", project, sandbox=Sandbox(str(project)))
    cases = allowed(project)
    assert len(cases) >= 60, "the golden corpus should hold many allowed commands"
    differences = []
    try:
        for title, command in cases:
            results = [await ex.run(ShellRunRequest(command, None, 20, 200_000, Identity("t"))) for ex in (plain, boxed)]
            if HOST_DEPENDENT.search(command):
                same = results[1].exit_code == 0 or results[0].exit_code == results[1].exit_code
            else:
                outputs = [(r.exit_code, OWNER.sub(r"\1owner group", PARENT.sub("", r.stdout))) for r in results]
                same = outputs[0] == outputs[1]
            if not same:
                differences.append(f"{title}: {command!r}\n  plain: {results[0]}\n  boxed: {results[1]}")
    finally:
        await boxed.close()
    assert not differences, "\n".join(differences)
