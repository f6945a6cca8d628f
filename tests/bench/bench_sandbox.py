"""What the shell sandbox costs per call, beside the same commands unsandboxed, in the same run.

    .venv/bin/python tests/bench/bench_sandbox.py [--rounds 7] [--calls 20] [--files 2000]

Four ways to run each command, interleaved round by round: a raw `bash -c` (subprocess, the floor),
Bastion's local executor unsandboxed (`isolation = "none"`), the executor in its bubblewrap
sandbox, and the same sandbox with one named network endpoint (`network = ["127.0.0.1:PORT"]`: the
gateway's forwarder and the bridge inside start and stop with every call, used or not). The workspace is a scratch git repository with ``--files`` files, since the sandbox walks
it for hidden files on every call. Prints medians (ms per call) and the added cost; the aim is at
most 10 ms added (median).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bastion.policy import Identity  # noqa: E402
from bastion.tools.executors.local_shell import LocalShellExecutor  # noqa: E402
from bastion.tools.executors.sandbox import Sandbox  # noqa: E402
from bastion.tools.executors.shell_base import ShellRunRequest  # noqa: E402
from bastion.tools.executors.network_bridge import plan  # noqa: E402
from tests.bench.measure import ms_per_call  # noqa: E402

COMMANDS = ["true", "ls -la src", "cat README.md | wc -l", "grep -rn needle src | head -5", "git status --short",
            "git log --oneline -5", "find . -name '*.py' | wc -l"]


def workspace(root: Path, files: int) -> Path:
    ws = root / "ws"
    for i in range(files):
        folder = ws / "src" / f"pkg{i % 40}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"mod{i}.py").write_text(f"# module {i}\nneedle = {i}\n" if i % 97 == 0 else f"# module {i}\n")
    (ws / "README.md").write_text("# bench\n" * 50)
    (ws / ".env").write_text("SECRET=1\n")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    git = ["git", "-C", str(ws), "-c", "user.email=b@b", "-c", "user.name=b"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "bench"], check=True)  # after chmod: the index is fresh
    (ws / ".git").chmod(0o755)
    return ws


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        ws = workspace(Path(scratch), args.files)
        plain = LocalShellExecutor("bench", ws)
        boxed = LocalShellExecutor("bench", ws, sandbox=Sandbox(str(ws)))
        endpoint = socket.create_server(("127.0.0.1", 0))  # named, not used: the cost of the bridge alone
        netted = LocalShellExecutor("bench", ws, sandbox=Sandbox(str(ws), network=plan([f"127.0.0.1:{endpoint.getsockname()[1]}"])))
        executors = {"executor": plain, "sandboxed": boxed, "+network": netted}
        identity = Identity("bench")
        figures: dict[str, list[float]] = {"bash -c": [], "executor": [], "sandboxed": [], "+network": []}
        for _ in range(args.rounds):
            for name in figures:
                calls = iter(COMMANDS * args.calls)

                async def raw() -> object:
                    return await anyio.run_process(["bash", "--noprofile", "--norc", "-c", next(calls)], cwd=ws,
                                                   check=False)

                async def guarded(executor: LocalShellExecutor = executors.get(name, plain)) -> object:
                    return await executor.run(ShellRunRequest(next(calls), None, 30, 1_000_000, identity))

                figures[name].append(await ms_per_call(raw if name == "bash -c" else guarded, args.calls))
        await boxed.close()
        await netted.close()
        endpoint.close()
    medians = {name: statistics.median(values) for name, values in figures.items()}
    print(f"shell sandbox, {args.files} files in the workspace, {args.rounds} rounds x {args.calls} varied calls "
          f"({len(COMMANDS)} commands), {os.cpu_count()} CPUs, uid {os.getuid()}")
    for name, value in medians.items():
        print(f"  {name:<10} {value:7.2f} ms per call (median of rounds)")
    print(f"  added by the sandbox over the unsandboxed executor: {medians['sandboxed'] - medians['executor']:.2f} ms "
          f"({medians['sandboxed'] / medians['executor']:.2f}x); over bash -c: {medians['sandboxed'] - medians['bash -c']:.2f} ms")
    print(f"  added by one named network endpoint over the sandbox: {medians['+network'] - medians['sandboxed']:.2f} ms "
          f"({medians['+network'] / medians['sandboxed']:.2f}x)")


if __name__ == "__main__":
    anyio.run(main)
