"""A real container runtime for tests: Podman (daemonless), with its own storage under this run's
temporary folder, and a test image made without a registry: `podman import` of a root holding only
a static busybox (from the busybox-static package), built once per run.

This machine's limits need `--runtime runc` and a containers.conf with `default_ulimits = []`
(CONTAINERS_CONF, which the gateway's runtime CLI inherits: tools/executors/container.py).
Without podman, runc or a static busybox, the tests that need them fail saying how to install them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HOW_TO = ("The container tests need Podman, runc and a static busybox: "
          "`apt-get install -y podman runc uidmap busybox-static` (CI does).")
BUSYBOX = ("/bin/busybox", "/usr/bin/busybox")
# The image's users: `app` is the one commands run as; `toor` is a second name for uid 0, which the
# gateway must refuse inside the container even though the config cannot tell it is root.
PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\ntoor:x:0:0:toor:/root:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\n"


@dataclass(frozen=True)
class Podman:
    args: tuple[str, ...]  # global options: this run's storage, runc
    image: str

    def run(self, *words: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", *self.args, *words], capture_output=True, text=True, timeout=120, check=check)

    def toml_args(self) -> str:
        return json.dumps(list(self.args))


@dataclass(frozen=True)
class Container:
    podman: Podman
    name: str
    label: str  # `key=value`, carried by this container only

    def exec(self, *argv: str) -> str:
        """Run argv in the container directly (as root, the test's own view, never the gateway's)."""
        return self.podman.run("exec", self.name, *argv).stdout

    def processes(self) -> str:
        return self.exec("ps", "-o", "pid,user,args")

    def exists(self, path: str) -> bool:
        return self.podman.run("exec", self.name, "test", "-e", path, check=False).returncode == 0

    def inspect(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.podman.run("inspect", "--type", "container", self.name).stdout)[0]


def _busybox() -> str:
    """The busybox-static package's binary (a dynamically linked busybox would not run in an image
    that holds no libc: the container would not start, and the fixture says so)."""
    for path in BUSYBOX:
        if Path(path).exists():
            return path
    pytest.fail(HOW_TO)


def _image_tar(folder: Path) -> Path:
    """A root with busybox and its applets as symlinks, /etc/passwd and writable /tmp, as a tarball."""
    busybox = _busybox()
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    tar_path = folder / "image.tar"
    with tarfile.open(tar_path, "w") as tar:
        def add(name: str, *, data: bytes | None = None, mode: int = 0o755, kind: bytes = tarfile.DIRTYPE,
                link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname = kind, mode, link
            if data is not None:
                info.type, info.size = tarfile.REGTYPE, len(data)
            tar.addfile(info, None if data is None else io.BytesIO(data))

        for name in ("bin", "etc", "proc", "sys", "dev", "root", "home"):
            add(name)
        add("tmp", mode=0o1777)
        add("home/app", mode=0o755)
        add("bin/busybox", data=Path(busybox).read_bytes())
        for applet in applets:
            if applet != "busybox":
                add(f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox", mode=0o777)
        add("etc/passwd", data=PASSWD.encode(), mode=0o644)
        add("etc/group", data=GROUP.encode(), mode=0o644)
    return tar_path


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.fail(HOW_TO)
    folder = tmp_path_factory.mktemp("podman")
    conf = folder / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n')
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CONTAINERS_CONF", str(conf))
        # Storage of this run only (no clash with any other podman user on the machine), runc.
        args = ("--root", str(folder / "root"), "--runroot", str(folder / "run"), "--runtime", "runc")
        runtime = Podman(args, f"localhost/bastion-test:{os.getpid()}")
        imported = runtime.run("import", str(_image_tar(folder)), runtime.image, check=False)
        if imported.returncode != 0:
            pytest.fail(f"podman could not import the test image: {imported.stderr.strip()}\n{HOW_TO}")
        try:
            yield runtime
        finally:
            runtime.run("rm", "-a", "-f", "-t", "0", check=False)
            runtime.run("rmi", "-a", "-f", check=False)
            # The overlay driver mounts its folder on itself: unmounted, or rmtree leaves it (and the mount).
            subprocess.run(["umount", str(folder / "root" / "overlay")], capture_output=True, check=False)
            shutil.rmtree(folder / "root", ignore_errors=True)


@pytest.fixture(scope="module")
def container(podman: Podman, request: pytest.FixtureRequest) -> Iterator[Container]:
    """One container per test module (starting one takes about a second): an init that logs three
    lines, sleeps and stops at once on TERM (a restart takes no ten-second grace), with an
    environment variable whose value must never reach an agent."""
    suffix = f"{os.getpid()}-{request.module.__name__.rsplit('.', 1)[-1].replace('_', '-')}"
    name, label = f"bastion-test-{suffix}", f"bastion.test={suffix}"
    started = podman.run("run", "-d", "--name", name, "--label", label, "--network", "none",
                         "--env", "SECRET_TOKEN=canary-6f1d2e", podman.image, "sh", "-c",
                         "trap 'exit 0' TERM; echo boot ok; echo ERROR disk almost full; "
                         "echo contact ops@example.com; sleep 1000000 & wait", check=False)
    if started.returncode != 0:
        pytest.fail(f"podman could not start a test container: {started.stderr.strip()}\n{HOW_TO}")
    try:
        yield Container(podman, name, label)
    finally:
        podman.run("rm", "-f", "-t", "0", name, check=False)
