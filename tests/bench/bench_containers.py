"""What a container connection costs per call, beside a bare `podman exec`, in the same run.

    .venv/bin/python tests/bench/bench_containers.py [--rounds 7] [--calls 10]

Needs podman, runc and busybox-static (as the tests do). Builds the tests' busybox image in a scratch
storage, starts one container, then times three ways to run `echo hi` in it, interleaved round by
round: a bare `podman exec` (subprocess, the floor), Bastion's container executor (an inspect to
resolve and check the container, then the exec with its wrapper), and the whole guarded call
(`Gateway.shell_run`: vet, record, exec, mask, record). Prints medians (ms per call) and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bastion.policy import Identity  # noqa: E402
from bastion.server.build import build_gateway  # noqa: E402
from bastion.server.config import load  # noqa: E402
from bastion.tools.calls import Caller  # noqa: E402
from bastion.tools.executors.shell_base import ShellRunRequest  # noqa: E402
from tests.bench.measure import ms_per_call  # noqa: E402
from tests.container_runtime import Podman, _image_tar  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bastion-bench-podman-") as scratch:
        folder = Path(scratch)
        (folder / "containers.conf").write_text('[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n')
        os.environ["CONTAINERS_CONF"] = str(folder / "containers.conf")
        podman = Podman(("--root", str(folder / "root"), "--runroot", str(folder / "run"), "--runtime", "runc"),
                        f"localhost/bastion-bench:{os.getpid()}")
        podman.run("import", str(_image_tar(folder)), podman.image)
        name = f"bastion-bench-{os.getpid()}"
        podman.run("run", "-d", "--name", name, "--network", "none", podman.image, "sleep", "1000000")
        try:
            await measure(folder, podman, name, args.rounds, args.calls)
        finally:
            podman.run("rm", "-a", "-f", "-t", "0", check=False)
            podman.run("rmi", "-a", "-f", check=False)


async def measure(folder: Path, podman: Podman, name: str, rounds: int, calls: int) -> None:
    config = folder / "bastion.toml"
    config.write_text(f"""
[identity]
subject = "bench"

[connections.box]
kind = "container"
runtime = "podman"
runtime_args = {json.dumps(list(podman.args))}
container = "{name}"
user = "app"
cwd = "/tmp"
preset = "inspect"
""")
    gateway = build_gateway(load(config))
    await gateway.start()
    executor = gateway.connections["box"].executor
    caller = Caller(Identity("bench"))
    request = ShellRunRequest("echo hi", "/tmp", 30, 100_000, caller.identity)
    bare = ["podman", *podman.args, "exec", "--user", "app", name, "echo", "hi"]

    async def raw() -> object:
        return await anyio.run_process(bare)

    async def executed() -> object:
        return await executor.run(request)

    async def guarded() -> object:
        return await gateway.shell_run(caller, "box", "echo hi", None)

    ways = {"podman exec (floor)": raw, "container executor": executed, "shell_run (guarded)": guarded}
    times: dict[str, list[float]] = {way: [] for way in ways}
    try:
        for _ in range(rounds):
            for way, call in ways.items():
                times[way].append(await ms_per_call(call, calls))
    finally:
        await gateway.shutdown()
    floor = statistics.median(times["podman exec (floor)"])
    print(f"{rounds} rounds x {calls} calls of `echo hi`; median ms per call")
    for way, values in times.items():
        median = statistics.median(values)
        print(f"  {way:22} {median:8.1f} ms  x{median / floor:.2f}  (spread {min(values):.1f}-{max(values):.1f})")


if __name__ == "__main__":
    anyio.run(main)
