"""The shell sandbox judged by its effect: commands the parser never vetted run straight through the
executor, with canary secrets around the workspace and marker programs that must not run.

These are the attack classes the red team used against the lexical guard (symlinks, /proc by
another path, recursive grep, the gateway's own files, repository git config, the network, host
sockets); here nothing stands between the command and the kernel but the sandbox.
"""

from __future__ import annotations

import os
import secrets
import shlex
import socket
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from bastion.policy import Identity
from bastion.policy.errors import TargetUnavailable
from bastion.tools.executors import sandbox as sandbox_module
from bastion.tools.executors.local_shell import LocalShellExecutor
from bastion.tools.executors.sandbox import SANDBOX_UID, Sandbox, SandboxLimits
from bastion.tools.executors.shell_base import ShellResult, ShellRunRequest
from tests.conftest import requirement
from tests.processes import running, unique_sleep

pytestmark = pytest.mark.anyio
CANARY = "CANARY-" + secrets.token_hex(8)


def _need_bwrap() -> None:
    if shutil.which("bwrap") is None:
        pytest.fail("the shell sandbox tests need bubblewrap: `apt-get install -y bubblewrap` (CI's .ci/run does)")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace with secrets in and around it, as a gateway host would have them."""
    _need_bwrap()
    monkeypatch.setenv("BASTION_GATEWAY_SECRET", CANARY)
    outside = tmp_path / "home" / "ops"
    (outside / ".ssh").mkdir(parents=True)
    (outside / ".ssh" / "id_rsa").write_text(f"-----BEGIN KEY----- {CANARY}\n")
    (outside / ".pgpass").write_text(f"*:*:*:*:{CANARY}\n")
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "src" / "app.py").write_text("print('hello')\n")
    (ws / "README.md").write_text("# demo\n")
    (ws / ".env").write_text(f"DB_PASSWORD={CANARY}\n")
    (ws / ".env.production").write_text(f"TOKEN={CANARY}\n")
    (ws / "certs").mkdir()
    (ws / "certs" / "server.key").write_text(f"{CANARY}\n")
    (ws / "bastion.toml").write_text(f"# the gateway's config {CANARY}\n")
    (ws / "audit.db").write_text(f"other calls' results {CANARY}\n")
    (ws / "link-to-key").symlink_to(outside / ".ssh" / "id_rsa")
    (ws / "link-to-home").symlink_to(outside)
    for path in [tmp_path, *tmp_path.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    return tmp_path


def executor(site: Path, *, writable: bool = False, limits: SandboxLimits | None = None) -> LocalShellExecutor:
    ws = site / "ws"
    sandbox = Sandbox(str(ws), writable, limits=limits or SandboxLimits(),
                      protected=(str(ws / "bastion.toml"), str(ws / "audit.db")))
    return LocalShellExecutor("box", ws, sandbox=sandbox)


def _own(ws: Path) -> None:
    """Give the workspace to the sandbox's uid, as a writable workspace must be (the suite runs as root)."""
    for path in [ws, *ws.rglob("*")]:
        if os.getuid() == 0 and not path.is_symlink():
            os.chown(path, SANDBOX_UID, SANDBOX_UID)


async def run(box: LocalShellExecutor, command: str, *, timeout: float = 20) -> ShellResult:
    try:
        return await box.run(ShellRunRequest(command, None, timeout, 1_000_000, Identity("mallory")))
    finally:
        await box.close()


ESCAPES = [
    "cat link-to-key; cat link-to-home/.pgpass",
    "cat .env .env.production certs/server.key bastion.toml audit.db",
    "cat ../home/ops/.ssh/id_rsa; cat $HOME/../../{site}/home/ops/.pgpass",
    "cat {site}/home/ops/.ssh/id_rsa",
    "grep -r CANARY- / --exclude-dir=usr --exclude-dir=proc --exclude-dir=sys 2>/dev/null",
    "grep -R -a CANARY- . 2>/dev/null; grep --dir=recurse CANARY- . 2>/dev/null",
    "for p in /proc/[0-9]*; do cat $p/environ $p/cmdline 2>/dev/null; done | tr '\\0' '\\n'",
    "cat /proc/1/root/{site}/home/ops/.pgpass /proc/self/root/{site}/home/ops/.pgpass 2>&1",
    "env; cat /proc/self/environ",
    "find / -xdev \\( -name '*.key' -o -name id_rsa -o -name .pgpass \\) -exec cat {{}} + 2>/dev/null",
    "git diff --no-index . {site}/home/ops 2>&1; tar -cf - {site}/home 2>&1 | head -c 4000",
]


@requirement("shell:sandbox-filesystem", "inv:no-credential-leak")
@pytest.mark.parametrize("attack", ESCAPES)
async def test_no_canary_leaves_the_host_whatever_the_command(site: Path, attack: str) -> None:
    result = await run(executor(site), attack.format(site=site))
    assert CANARY not in result.stdout + result.stderr


@requirement("shell:sandbox-filesystem")
async def test_the_workspace_reads_and_the_hidden_files_read_empty(site: Path) -> None:
    result = await run(executor(site), "cat src/app.py README.md; wc -c .env certs/server.key bastion.toml; ls -a")
    assert "print('hello')" in result.stdout and "# demo" in result.stdout
    assert "0 .env" in result.stdout and "0 certs/server.key" in result.stdout and "0 bastion.toml" in result.stdout


@requirement("shell:sandbox-filesystem")
async def test_nothing_of_the_host_is_visible_but_system_folders(site: Path) -> None:
    top = (await run(executor(site), "ls /")).stdout.split()
    assert set(top) <= {"bin", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr",
                        str(site).split("/")[1]}
    result = await run(executor(site), "ls -A /home /tmp; ls /root /var /run /srv /opt /etc/ssh 2>&1; "
                                       "cat /etc/shadow /etc/shadow- /etc/ssl/private/* 2>&1; ls /proc | head -50")
    assert result.stdout.startswith("/home:\nagent\n\n/tmp:\n"), "an empty HOME and a private /tmp"
    assert result.stdout.count("No such file or directory") == 9
    pids = [line for line in result.stdout.splitlines() if line.isdigit()]
    assert pids and all(int(pid) < 50 for pid in pids), "the sandbox sees only its own processes"


@requirement("shell:sandbox-user")
async def test_commands_run_unprivileged_with_no_capabilities(site: Path) -> None:
    result = await run(executor(site), "id -u; grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status; grep NoNewPrivs /proc/self/status")
    lines = result.stdout.split()
    assert int(lines[0]) not in (0, os.getuid()) if os.getuid() == 0 else int(lines[0]) != 0
    assert result.stdout.count("0000000000000000") == 3 and "NoNewPrivs:\t1" in result.stdout


@requirement("shell:sandbox-network")
async def test_no_network_and_no_host_socket(site: Path) -> None:
    # The machine's PostgreSQL trusts local connections: neither its TCP port nor its socket is reachable.
    result = await run(executor(site), "echo > /dev/tcp/127.0.0.1/5432 && echo TCP-OPEN; "
                                       "ls /var/run/postgresql /run/postgresql /tmp/.s.PGSQL.5432 2>&1; "
                                       "cat /proc/net/tcp | wc -l")
    assert "TCP-OPEN" not in result.stdout
    assert result.stdout.count("No such file or directory") == 3
    assert result.stdout.split()[-1] == "1", "only the header: no sockets of the host in this namespace"


@requirement("shell:sandbox-filesystem")
async def test_read_only_workspace_and_system_folders_cannot_change(site: Path) -> None:
    before = (site / "ws" / "README.md").read_text()
    result = await run(executor(site), "echo x > README.md; echo x > new; touch /usr/x /etc/x /x; rm -f src/app.py; echo done")
    assert "done" in result.stdout and result.stderr.count("Read-only file system") >= 4
    assert (site / "ws" / "README.md").read_text() == before and (site / "ws" / "src" / "app.py").exists()
    assert not (site / "ws" / "new").exists()


@requirement("shell:sandbox-filesystem")
async def test_a_writable_workspace_is_the_only_place_a_command_can_write(site: Path) -> None:
    ws = site / "ws"
    _own(ws)
    snapshot = sorted(str(p) for p in site.rglob("*"))
    result = await run(executor(site, writable=True),
                       "echo built > out.txt; echo x > /tmp/t && cat /tmp/t; echo x > ../escape; echo x > .env; "
                       "ln -s ../home/ops/.pgpass pg; cat pg; echo end")
    assert (ws / "out.txt").read_text() == "built\n"
    assert not (site / "escape").exists() and CANARY not in result.stdout
    assert (ws / ".env").read_text() == f"DB_PASSWORD={CANARY}\n", "a hidden file cannot be overwritten either"
    created = sorted(set(str(p) for p in site.rglob("*")) - set(snapshot))
    assert created == [str(ws / "out.txt"), str(ws / "pg")]


@requirement("shell:sandbox-git")
async def test_repository_config_cannot_launch_programs(site: Path) -> None:
    ws = site / "ws"
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    subprocess.run(["git", "-C", str(ws), "-c", "user.email=a@b", "-c", "user.name=a", "add", "src"], check=True)
    subprocess.run(["git", "-C", str(ws), "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "one"], check=True)
    (ws / "src" / "app.py").write_text("print('changed')\n")
    marker = "touch {ws}/RAN-{name}"
    hostile = {"core.fsmonitor": "fsmonitor", "diff.external": "external", "core.pager": "pager",
               "diff.py.textconv": "textconv", "filter.x.clean": "clean", "filter.x.smudge": "smudge",
               "gpg.program": "gpg", "core.hooksPath": None, "remote.origin.url": None, "alias.st": "alias"}
    for key, name in hostile.items():
        value = marker.format(ws=ws, name=name) if name else ("hooks" if key == "core.hooksPath" else "https://example.org/x")
        subprocess.run(["git", "-C", str(ws), "config", key, value], check=True)
    (ws / ".gitattributes").write_text("*.py diff=py filter=x\n")
    (ws / "hooks").mkdir()
    (ws / "hooks" / "post-checkout").write_text(f"#!/bin/sh\ntouch {ws}/RAN-hook\n")
    _own(ws)
    result = await run(executor(site, writable=True),
                       "git status; git diff; git log -p --show-signature | cat; git show HEAD; git -p log -1; "
                       "git remote -v; git checkout -q -b other; git add -A; git diff --cached --stat; echo end")
    assert "end" in result.stdout and "https://example.org/x" in result.stdout, result.stderr
    assert "changed" in result.stdout, "git diff works, with Bastion's settings instead of the repository's"
    ran = sorted(p.name for p in ws.glob("RAN-*"))
    assert ran == [], f"repository config ran programs: {ran}"


@requirement("shell:sandbox-limits")
async def test_the_timeout_kills_the_whole_sandbox(site: Path) -> None:
    detached, backgrounded = unique_sleep(3), unique_sleep(4)
    result = await run(executor(site), f"(setsid {detached} &); nohup {backgrounded} & sleep 60", timeout=1)
    assert result.timed_out
    assert not running(detached) and not running(backgrounded), "a process of the sandbox outlived the call"


@requirement("shell:sandbox-limits")
async def test_resource_limits_hold(site: Path) -> None:
    limits = SandboxLimits(cpu_seconds=2, memory_bytes=256 << 20, file_size_bytes=1 << 20, processes=64)
    _own(site / "ws")
    result = await run(executor(site, writable=True, limits=limits),
                       "head -c 3000000 /dev/zero > big; echo size=$(stat -c %s big); "
                       "python3 -c 'x = bytearray(1 << 30)' 2>&1 | tail -1; ulimit -t; ulimit -u")
    lines = result.stdout.splitlines()
    assert "size=1048576" in lines
    assert "MemoryError" in result.stdout
    assert lines[-2:] == ["2", "64"]


@requirement("shell:sandbox-missing")
async def test_a_host_without_bubblewrap_refuses_saying_how_to_install_it(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_module, "BWRAP_DIRS", str(site / "nowhere"))
    with pytest.raises(TargetUnavailable) as raised:
        await run(executor(site), "ls")
    assert "bubblewrap" in str(raised.value) and "apt-get install bubblewrap" in (raised.value.hint or "")


@requirement("shell:sandbox-missing")
async def test_a_workspace_the_sandbox_user_cannot_read_is_refused_clearly(site: Path) -> None:
    if os.getuid() != 0:
        pytest.fail("this test needs the suite to run as root (CI does): the gateway drops to the sandbox's uid")
    (site / "ws").chmod(0o700)
    with pytest.raises(TargetUnavailable, match="cannot read the workspace"):
        await run(executor(site), "ls")


def test_a_repository_config_keeps_only_keys_that_run_nothing(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text('[core]\n\tbare = false\n\tfsmonitor = "touch x"\n[remote "o\\"rigin"]\n\turl = https://e/x\n'
                      '[include]\n\tpath = /etc/other\n[diff]\n\texternal = evil\n[user]\n\tname = A \\"B\\"\n')
    safe = sandbox_module.safe_git_config(str(config))
    assert "fsmonitor" not in safe and "external" not in safe and "include" not in safe
    listed = subprocess.run(["git", "config", "--file", "-", "--list"], input=safe, capture_output=True, text=True).stdout
    assert listed.splitlines() == ["core.bare=false", 'remote.o"rigin.url=https://e/x', 'user.name=A "B"']


def test_limits_are_given_to_the_sandbox(tmp_path: Path) -> None:
    sandbox = replace(Sandbox(str(tmp_path)), limits=SandboxLimits(7, 1 << 20, 2 << 20, 9))
    _, argv = sandbox.arguments("true", str(tmp_path))
    sandbox.close()
    assert argv[-1].startswith("ulimit -t 7 -d 1024 -f 2048 -u 9 -c 0 || exit 125\ntrue")


CONFIG = """
[identity]
subject = "dev"
groups = ["developers"]

[audit]
path = "audit.db"

[connections.box]
kind = "local"
cwd = "ws"
preset = "inspect"
{extra}
"""


@requirement("shell:sandbox-filesystem", "shell:sandbox-missing")
async def test_the_gateway_sandboxes_by_default_and_says_so_when_a_config_opts_out(
        site: Path, caplog: pytest.LogCaptureFixture) -> None:
    from bastion.server.build import build_gateway
    from bastion.server.config import load
    from bastion.tools.gateway import Caller

    for extra, sandboxed in (("", True), ('isolation = "none"', False)):
        (site / "bastion.toml").write_text(CONFIG.format(extra=extra))
        gateway = build_gateway(load(site / "bastion.toml"))
        try:
            caller = Caller(Identity("dev", frozenset({"developers"})))
            done = await gateway.shell_run(caller, "box", "cat .env", None)
            assert (CANARY in done.result.stdout) is not sandboxed
            listed = await gateway.list_connections(caller)
            assert ("UNSANDBOXED" in listed[0]["description"]) is not sandboxed
            assert ("UNSANDBOXED" in caplog.text) is not sandboxed
        finally:
            await gateway.close()


# -- what a red team found against the first version, kept as tests -------------------------------

HOSTILE_FILTER = '[filter "f"]\n\tclean = "sh -c \'echo RAN-FILTER >&2; cat\'"\n\tsmudge = cat\n'


def _repo(ws: Path) -> None:
    git = ["git", "-C", str(ws), "-c", "user.email=a@b", "-c", "user.name=a"]
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    (ws / "notes.md").write_text("one\n")
    subprocess.run([*git, "add", "notes.md"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    (ws / "notes.md").write_text("two\n")
    (ws / ".gitattributes").write_text("*.md filter=f\n")


@requirement("shell:sandbox-git")
@pytest.mark.parametrize("layout", ["git-symlink", "config-symlink", "gitdir-file", "commondir"])
async def test_git_config_reached_another_way_runs_nothing(site: Path, layout: str) -> None:
    ws = site / "ws"
    _repo(ws)
    if layout == "git-symlink":  # .git is a link to the real git dir
        (ws / ".git").rename(ws / "store")
        (ws / ".git").symlink_to("store")
        store = ws / "store"
    elif layout == "gitdir-file":  # .git is a file naming the git dir
        (ws / ".git").rename(ws / "store")
        (ws / ".git").write_text("gitdir: store\n")
        store = ws / "store"
    else:
        store = ws / ".git"
    if layout == "config-symlink":
        (ws / "evil.cfg").write_text((store / "config").read_text() + HOSTILE_FILTER)
        (store / "config").unlink()
        (store / "config").symlink_to("../evil.cfg")
    elif layout == "commondir":  # the config comes from another "common" git dir
        (ws / "common").mkdir()
        (ws / "common" / "config").write_text((store / "config").read_text() + HOSTILE_FILTER)
        for part in ("objects", "refs"):
            (store / part).rename(ws / "common" / part)
        (store / "commondir").write_text("../common\n")
    else:
        (store / "config").write_text((store / "config").read_text() + HOSTILE_FILTER)
    for path in [ws, *ws.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    result = await run(executor(site), "git diff; git status; echo end")
    assert "end" in result.stdout
    assert "RAN-FILTER" not in result.stdout + result.stderr


@requirement("shell:sandbox-git")
async def test_a_writable_workspace_cannot_plant_git_hooks_or_config(site: Path) -> None:
    ws = site / "ws"
    _repo(ws)
    _own(ws)
    before = (ws / ".git" / "config").read_text()
    await run(executor(site, writable=True), "echo 'touch RAN' > .git/hooks/post-checkout; echo ../x > .git/commondir; "
                                             "printf '[core]\\n\\tfsmonitor = x\\n' >> .git/config; echo built > out")
    assert (ws / "out").read_text() == "built\n", "the workspace itself is writable"
    assert not (ws / ".git" / "hooks" / "post-checkout").exists() and not (ws / ".git" / "commondir").exists()
    assert (ws / ".git" / "config").read_text() == before


@requirement("shell:sandbox-filesystem")
async def test_a_hidden_file_moved_away_is_still_hidden_even_with_its_folders_times_put_back(site: Path) -> None:
    ws = site / "ws"
    (ws / "sub").mkdir()
    (ws / "sub" / ".env").write_text(f"{CANARY}\n")
    _own(ws)
    box = executor(site, writable=True)
    try:
        for command in ("cat sub/.env",
                        'a=$(stat -c %y .); b=$(stat -c %y sub); mv sub sub2 && mkdir sub && touch -d "$b" sub && touch -d "$a" .',
                        "cat sub2/.env"):
            result = await box.run(ShellRunRequest(command, None, 20, 100_000, Identity("mallory")))
            assert CANARY not in result.stdout + result.stderr, command
    finally:
        await box.close()


@requirement("shell:sandbox-network")
async def test_no_vsock_no_keyring_no_nested_user_namespace(site: Path) -> None:
    probe = ("import ctypes, errno, socket\n"
             "try:\n    socket.socket(40, socket.SOCK_STREAM); print('vsock open')\n"
             "except OSError as e:\n    print('vsock', errno.errorcode[e.errno])\n"
             "libc = ctypes.CDLL(None, use_errno=True)\n"
             "print('add_key', libc.syscall(248, b'user', b'k', b'v', 1, -4), errno.errorcode[ctypes.get_errno()])\n")
    result = await run(executor(site), f"python3 -c {shlex.quote(probe)}; unshare -Ur true 2>/dev/null || echo no-userns")
    assert "vsock EAFNOSUPPORT" in result.stdout
    assert "add_key -1 EPERM" in result.stdout
    assert "no-userns" in result.stdout


@requirement("shell:sandbox-network")
async def test_a_host_socket_inside_the_workspace_does_not_answer(site: Path) -> None:
    ws = site / "ws"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(ws / ".s.PGSQL.5432"))
    server.listen(1)
    server.settimeout(5)
    try:
        client = ("import socket; s = socket.socket(socket.AF_UNIX); s.connect('.s.PGSQL.5432'); "
                  "print('connected', s.recv(64))")
        result = await run(executor(site), f"python3 -c {shlex.quote(client)} 2>&1 | tail -1")
    finally:
        server.close()
    assert "connected" not in result.stdout


@requirement("shell:sandbox-filesystem")
def test_a_workspace_holding_the_gateways_database_is_refused(site: Path) -> None:
    from bastion.policy.errors import ConfigError
    from bastion.server.build import build_gateway
    from bastion.server.config import load

    (site / "ws" / "bastion.toml").write_text(CONFIG.replace('cwd = "ws"', 'cwd = "."').format(extra=""))
    with pytest.raises(ConfigError, match="holds the gateway's own database"):
        build_gateway(load(site / "ws" / "bastion.toml"))


def test_remote_urls_lose_their_credentials(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text('[remote "origin"]\n\turl = https://deploy:ghp_SECRET@github.example/x.git\n')
    assert "ghp_SECRET" not in sandbox_module.safe_git_config(str(config))
    assert "https://github.example/x.git" in sandbox_module.safe_git_config(str(config))


@requirement("shell:sandbox-limits")
async def test_runtimes_that_reserve_much_address_space_still_start(site: Path) -> None:
    missing = [tool for tool in ("java", "node") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"this test needs {', '.join(missing)} on the machine (CI's machine has both): "
                    "`apt-get install -y default-jre-headless nodejs`")
    result = await run(executor(site), "java -version 2>&1 | head -1; node -e 'console.log(6 * 7)'")
    assert "version" in result.stdout and "42" in result.stdout, result


# -- a second red-team round ------------------------------------------------------------------------

async def _calls(box: LocalShellExecutor, *commands: str) -> list[ShellResult]:
    try:
        return [await box.run(ShellRunRequest(c, None, 20, 100_000, Identity("mallory"))) for c in commands]
    finally:
        await box.close()


@requirement("shell:sandbox-filesystem")
async def test_a_folder_moved_into_something_that_looks_like_a_git_dir_is_still_walked(site: Path) -> None:
    ws = site / "ws"
    (ws / "data").mkdir()
    (ws / "data" / ".env").write_text(f"{CANARY}\n")
    _own(ws)
    results = await _calls(executor(site, writable=True), "mkdir x && touch x/HEAD && mv data x/objects",
                           "cat x/objects/.env; mkdir g && mv x/objects g/lfs && touch g/HEAD && mkdir g/objects",
                           "cat g/lfs/.env")
    assert all(CANARY not in r.stdout + r.stderr for r in results)


async def _swap_while_reading(site: Path, writer: LocalShellExecutor, reader: LocalShellExecutor) -> list[str]:
    """One call swaps a folder holding a hidden file in and out of sight 200 times; another reads at
    both names five times meanwhile. What the reads printed."""
    import anyio

    ws = site / "ws"
    (ws / "data").mkdir()
    (ws / "data" / ".env").write_text(f"{CANARY}\n")
    _own(ws)
    seen: list[str] = []
    swap = ("for i in $(seq 200); do mv data data2 && mkdir data && : > data/.env && rm -rf data && mv data2 data; "
            "done 2>/dev/null")

    async def read() -> None:
        for _ in range(5):
            result = await reader.run(ShellRunRequest("cat data/.env data2/.env 2>/dev/null", None, 20, 10_000, Identity("r")))
            seen.append(result.stdout)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run, ShellRunRequest(swap, None, 20, 10_000, Identity("w")))
            await anyio.sleep(0.05)
            tg.start_soon(read)
    finally:
        await writer.close()
        await reader.close()
    return seen


@requirement("shell:sandbox-filesystem")
async def test_commands_in_a_writable_workspace_take_turns_so_a_swap_cannot_race_the_masks(site: Path) -> None:
    box = executor(site, writable=True)
    seen = await _swap_while_reading(site, box, box)
    assert len(seen) == 5 and not any(CANARY in s for s in seen)


@requirement("shell:sandbox-missing")
async def test_odd_names_and_deep_folders_do_not_break_later_calls_silently(site: Path) -> None:
    ws = site / "ws"
    _own(ws)
    box = executor(site, writable=True)
    try:
        first = await box.run(ShellRunRequest("mkfifo $'\\xff\\xfe'; touch $'\\xff'.pem; echo made", None, 20, 10_000,
                                              Identity("m")))
        assert "made" in first.stdout
        after = await box.run(ShellRunRequest("ls | wc -l", None, 20, 10_000, Identity("m")))
        assert after.exit_code == 0, "a name that is not UTF-8 is masked like any other"
        deep = "n=$(printf %0200d 0); for i in $(seq 25); do mkdir $n; cd $n; done"
        await box.run(ShellRunRequest(deep, None, 20, 10_000, Identity("m")))
        with pytest.raises(TargetUnavailable, match="cannot look into"):
            await box.run(ShellRunRequest("true", None, 20, 10_000, Identity("m")))
    finally:
        await box.close()


@requirement("shell:sandbox-git")
async def test_repository_configs_are_copied_once_per_content_and_a_huge_one_is_empty(site: Path) -> None:
    ws = site / "ws"
    big = ws / "big-config"
    big.write_text("[remote \"o\"]\n" + "\tfetch = +refs/heads/*:refs/remotes/o/*\n" * 9000)
    for i in range(10):
        git_dir = ws / f"g{i}"
        (git_dir / "objects").mkdir(parents=True)
        (git_dir / "HEAD").write_text("ref: refs/heads/main\n")
        os.link(big, git_dir / "config")
    sandbox = Sandbox(str(ws))
    box = LocalShellExecutor("box", ws, sandbox=sandbox)
    try:
        result = await box.run(ShellRunRequest("wc -c < g3/config", None, 20, 10_000, Identity("m")))
        copies = sorted(p.name for p in sandbox._runtime_dir().glob("gitconfig-*"))  # noqa: SLF001
    finally:
        await box.close()
    assert result.stdout.strip() == "1" and len(copies) == 1


@requirement("shell:sandbox-limits")
async def test_memory_backed_folders_are_sized(site: Path) -> None:
    limits = SandboxLimits(memory_bytes=64 << 20)
    result = await run(executor(site, limits=limits),
                       "head -c 100M /dev/zero > /tmp/f; echo tmp=$?; head -c 100M /dev/zero > /dev/shm/f; echo shm=$?; "
                       "head -c 100M /dev/zero > ~/f; echo home=$?")
    assert "tmp=1" in result.stdout and "shm=1" in result.stdout and "home=1" in result.stdout, result
    assert "No space left on device" in result.stderr


# -- a third red-team round -------------------------------------------------------------------------

@requirement("shell:sandbox-filesystem")
async def test_a_read_only_sandbox_over_a_writable_workspace_takes_turns_with_it(site: Path) -> None:
    seen = await _swap_while_reading(site, executor(site, writable=True), executor(site))
    assert len(seen) == 5 and not any(CANARY in s for s in seen)


@requirement("shell:sandbox-missing")
async def test_many_repositories_made_in_one_call_do_not_lock_the_workspace_out(site: Path) -> None:
    _own(site / "ws")
    results = await _calls(executor(site, writable=True),
                           "mkdir d && cd d && for i in $(seq 520); do mkdir -p g$i/objects && : > g$i/HEAD; done",
                           "ls d | wc -l")
    assert results[1].exit_code == 0 and results[1].stdout.strip() == "520"


@requirement("shell:sandbox-filesystem")
async def test_hide_patterns_ignore_case_and_cover_common_secret_files(site: Path) -> None:
    ws = site / "ws"
    for name in ("Server.PEM", "prod.env", "terraform.tfstate", "credentials"):
        (ws / name).write_text(f"{CANARY}\n")
    (ws / ".aws").mkdir()
    (ws / ".aws" / "config").write_text(f"{CANARY}\n")
    for path in [ws, *ws.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    result = await run(executor(site), "cat Server.PEM prod.env terraform.tfstate credentials .aws/config 2>&1")
    assert CANARY not in result.stdout


def test_a_hide_pattern_with_a_path_is_refused() -> None:
    from bastion.server.config import parse

    with pytest.raises(Exception, match="match names, not paths"):
        parse({"connections": {"box": {"kind": "local", "preset": "inspect", "hide": ["secrets/db.txt"]}}},
              source="bastion.toml", base_dir=Path("."))
