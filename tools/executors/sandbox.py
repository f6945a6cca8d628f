"""The OS sandbox every local shell command runs in: bubblewrap over Linux namespaces.

The kernel is the boundary here, the way a READ ONLY transaction is for SQL: whatever the parser
missed, a command sees only its workspace (read-only unless the connection writes), the system's
program directories (read-only), a private /tmp and empty HOME, a minimal /dev, its own /proc (its
own PID namespace), no network (its own network namespace, loopback only; the endpoints a connection
names are forwarded in by network_bridge.py), as an unprivileged user
with no capabilities, resource limits and a seccomp filter (seccomp.py). Nothing else of the host
exists inside: not the gateway's config, audit store, keys or secrets, not other homes, not /etc's
secrets, no host Unix socket. The gateway becomes the sandbox's user before bubblewrap starts, so
bubblewrap builds the sandbox with that user's rights, never root's.

Repository config cannot launch programs: the config of every git dir in the workspace (found by
what it holds) is replaced inside by a copy holding only keys that name no program, the sandbox's
own system config turns off fsmonitor, hooks, pagers, signing and credential helpers, and the same
settings are given on git's command-line scope for repositories created during the call.
"""

from __future__ import annotations

import atexit
import fnmatch
import functools
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from bastion.policy.cache import ClearingCache
from bastion.policy.errors import TargetUnavailable
from bastion.tools.executors.network_bridge import (NSSWITCH, SOCKET_DIR, Endpoint, bridge_script, hosts_file,
                                                   socat_missing)
from bastion.tools.executors.seccomp import filter_program

INSTALL_HINT = ("Install bubblewrap on the gateway's host (`apt-get install bubblewrap`, `dnf install bubblewrap`), "
                "and allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 where it exists), "
                "or opt out in the config with `isolation = \"none\"` on this connection.")
BWRAP_DIRS = "/usr/bin:/bin:/usr/local/bin"  # where the gateway looks for bwrap (never the agent's PATH)
SANDBOX_UID = 64055  # a dedicated id, used when no OS user is mapped: never root, never the gateway's own
SANDBOX_HOME = "/home/agent"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
# Files in the workspace that hold secrets by convention; hidden (empty) inside the sandbox.
# Matched against each name (not a path), ignoring case.
DEFAULT_HIDE = (".env", ".env.*", "*.env", "*.pem", "*.key", "*.p12", "*.pfx", "*.kdbx", "id_rsa*", "id_dsa*",
                "id_ecdsa*", "id_ed25519*", ".pgpass", ".netrc", ".git-credentials", ".npmrc", ".pypirc",
                ".vault-token", "credentials", "credentials.json", "*.tfstate", "*.tfstate.backup", ".aws", ".ssh",
                ".gnupg", ".docker", ".kube")
# What of the host's /etc programs need: the loader's cache, alternatives (awk, pager), time zone,
# MIME and magic data. Nothing with a secret in it; passwd, group, hosts and nsswitch.conf are Bastion's
# own (names resolve from Bastion's hosts file only: network_bridge.py).
ETC_ENTRIES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "timezone", "host.conf",
               "os-release", "debian_version", "mime.types", "magic", "magic.mime", "locale.alias",
               "protocols", "services", "ssl/certs", "ca-certificates.conf")
# Repository config keys that name no program; everything else in .git/config is dropped inside.
SAFE_GIT_KEYS = re.compile(
    r"(core\.(repositoryformatversion|bare|filemode|logallrefupdates|ignorecase|precomposeunicode|symlinks"
    r"|autocrlf|eol|abbrev|quotepath|sparsecheckout|sparsecheckoutcone|safecrlf|checkstat|trustctime)"
    r"|extensions\.(objectformat|refstorage|preciousobjects|partialclone)"
    r"|remote\.[^\n]*\.(url|pushurl|fetch|tagopt|prune)|branch\.[^\n]*\.(remote|merge|rebase|pushremote)"
    r"|submodule\.[^\n]*\.(url|path|branch|active)|user\.(name|email)|init\.defaultbranch|pull\.(rebase|ff))")
# On git's command-line scope: outranks any repository config, including one made during the call.
GIT_HARDENING = (("core.fsmonitor", "false"), ("core.hooksPath", "/dev/null"), ("core.pager", "cat"),
                 ("core.editor", "false"), ("core.sshCommand", "false"), ("credential.helper", ""),
                 ("gpg.program", "false"), ("log.showSignature", "false"), ("commit.gpgSign", "false"),
                 ("tag.gpgSign", "false"), ("protocol.allow", "never"), ("help.autoCorrect", "0"),
                 ("help.format", "web"), ("web.browser", "false"))
SYSTEM_GITCONFIG = ("[safe]\n\tdirectory = *\n[core]\n\tfsmonitor = false\n\thooksPath = /dev/null\n\tpager = cat\n"
                    "[credential]\n\thelper =\n[protocol]\n\tallow = never\n[help]\n\tformat = web\n[web]\n\tbrowser = false\n")
MAX_WALK_ENTRIES = 50_000  # folders plus hidden files; a workspace with more is refused
MAX_GIT_DIRS = 500  # repositories whose config is read into a safe copy; more are emptied
MAX_GIT_CONFIG_BYTES = 256 << 10  # a bigger repository config is empty inside (real ones are a few KiB)
# In a git dir: replaced by a safe copy (config) or an empty file (the others point git elsewhere).
GIT_DIR_FILES = ("config", "config.worktree", "commondir")


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 60
    memory_bytes: int = 2 << 30
    file_size_bytes: int = 1 << 30
    processes: int = 512


class SpawnUser(TypedDict, total=False):
    """subprocess's and anyio's arguments that start a process as another user (empty: as the gateway)."""

    user: int
    group: int
    extra_groups: list[int]


@dataclass
class Launch:
    """One sandboxed command ready to start: bubblewrap reads its arguments and the seccomp filter
    from the descriptors in ``pass_fds`` (no argument-length limit); ``spawn`` drops to the sandbox's
    user first. ``close`` once the process has started."""

    argv: list[str]
    pass_fds: tuple[int, ...]
    spawn: SpawnUser

    def close(self) -> None:
        for fd in self.pass_fds:
            os.close(fd)


@dataclass
class Sandbox:
    """bubblewrap for one local connection: the command line, and the files it binds (/etc, git configs)."""

    workspace: str
    writable: bool = False
    hide: tuple[str, ...] = DEFAULT_HIDE
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    run_as: str | None = None  # the mapped OS user; else SANDBOX_UID
    # The gateway's own files in a read-only workspace (config, keys): empty inside. build refuses a
    # workspace holding a database of the gateway's, or any of its files if the workspace is writable.
    protected: tuple[str, ...] = ()
    network: tuple[Endpoint, ...] = ()  # TCP endpoints forwarded in (network_bridge.py); none by default
    _runtime: Path | None = None
    _git_cache: ClearingCache[tuple[int, ...], Path] = field(default_factory=lambda: ClearingCache(4 * MAX_GIT_DIRS))
    _walked: tuple[Walk, dict[str, tuple[int, int]]] | None = None

    def user(self) -> tuple[int, int]:
        """The uid and gid the sandbox runs as: never root's, in either."""
        if self.run_as is None:
            return SANDBOX_UID, SANDBOX_UID
        try:
            entry = pwd.getpwnam(self.run_as)
        except KeyError:
            raise TargetUnavailable(f"the mapped OS user `{self.run_as}` does not exist",
                                    hint="Ask the gateway's operator to create the user or fix the mapping.") from None
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise TargetUnavailable(f"the mapped OS user `{self.run_as}` is root or in root's group; the sandbox "
                                    "never runs as either", hint="Map the connection's users to an unprivileged account.")
        return entry.pw_uid, entry.pw_gid

    def spawn_user(self) -> SpawnUser:
        """How the gateway becomes the sandbox's user before bubblewrap starts. bubblewrap itself then
        runs unprivileged in a user namespace: every path it follows, it follows with that user's rights."""
        uid, gid = self.user()
        if os.geteuid() == 0:
            return {"user": uid, "group": gid, "extra_groups": []}
        if self.run_as is not None and os.geteuid() != uid:
            raise TargetUnavailable(f"the gateway runs unprivileged and cannot switch to `{self.run_as}`",
                                    hint="Run the gateway as root (it drops to the mapped user for each command).")
        return {}  # an unprivileged gateway: its own uid, with nothing of the gateway inside

    def launch(self, command: str, cwd: str, net_dir: Path | None = None) -> Launch:
        """``net_dir``: the call's folder of forwarding sockets (network_bridge.open_bridge), if any."""
        bwrap = shutil.which("bwrap", path=BWRAP_DIRS)
        if bwrap is None:
            raise TargetUnavailable("the shell sandbox (bubblewrap) is not installed on the gateway's host",
                                    hint=INSTALL_HINT)
        if net_dir is not None and socat_missing():
            raise TargetUnavailable("this connection names network endpoints, and socat, which forwards them into "
                                    "the sandbox, is not installed on the gateway's host",
                                    hint="Install socat (`apt-get install socat`, `dnf install socat`), or remove the "
                                         "connection's `network` list.")
        spawn = self.spawn_user()
        args, program_argv = self.arguments(command, cwd, net_dir)
        fds: list[int] = []
        try:
            program = filter_program()
            if program is not None:
                fds.append(_memfd("bastion-seccomp", program))
                args = ["--seccomp", str(fds[-1]), *args]
            fds.append(_memfd("bastion-bwrap-args", b"".join(os.fsencode(arg) + b"\0" for arg in args)))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return Launch([bwrap, "--args", str(fds[-1]), "--", *program_argv], tuple(fds), spawn)

    def arguments(self, command: str, cwd: str, net_dir: Path | None = None) -> tuple[list[str], list[str]]:
        """bubblewrap's options (walking the workspace for what to hide), and the program it runs."""
        runtime = self._runtime_dir()
        walk = self._hidden()
        args = ["--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
                "--hostname", "sandbox", "--clearenv"]
        args += [*_system_folders(), "--ro-bind", str(runtime / "etc"), "/etc",
                 "--proc", "/proc", "--dev", "/dev"]
        # Memory-backed folders are sized: without a size, files in /tmp would be memory beyond any limit.
        size = str(self.limits.memory_bytes)
        for folder in ("/tmp", "/home", "/dev/shm"):
            args += ["--size", size, "--tmpfs", folder]
        args += ["--dir", SANDBOX_HOME]
        # Folders bubblewrap makes on the way to a bind copy the host's modes; inside they are plain
        # 0755 folders holding nothing else.
        for parent in reversed(Path(self.workspace).parents):
            if str(parent) != "/":
                args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--bind" if self.writable else "--ro-bind", self.workspace, self.workspace]
        if self.writable:  # hooks, config, commondir: a repository's own git dir cannot be changed from inside
            for git_dir in walk.git_dirs:
                args += ["--ro-bind", git_dir, git_dir]
        for path in self.protected:
            if path.startswith(self.workspace.rstrip("/") + "/") and os.path.isfile(path):
                args += ["--ro-bind", str(runtime / "empty-file"), path]
        for path, kind in walk.masks:
            source = {"dir": runtime / "empty", "file": runtime / "empty-file"}.get(kind)
            args += ["--ro-bind", str(source or self._safe_git_config(path, runtime)), path]
        if net_dir is not None:
            args += ["--ro-bind", str(net_dir), SOCKET_DIR]
        args += ["--remount-ro", "/", "--chdir", cwd]
        env = {"PATH": SANDBOX_PATH, "LANG": "C.UTF-8", "HOME": SANDBOX_HOME, "TERM": "dumb",
               "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_PAGER": "cat", "GIT_TERMINAL_PROMPT": "0",
               "GIT_CONFIG_COUNT": str(len(GIT_HARDENING))}
        for i, (key, value) in enumerate(GIT_HARDENING):
            env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
        for name, value in env.items():
            args += ["--setenv", name, value]
        limits = self.limits
        # bash sets the limits (soft and hard; -d and -f in KiB) before the command: one program start fewer than
        # prlimit. Memory is the data limit (private writable memory), not the address space: Java and V8
        # reserve gigabytes of address space they never use.
        ulimit = (f"ulimit -t {limits.cpu_seconds} -d {limits.memory_bytes >> 10} -f {limits.file_size_bytes >> 10} "
                  f"-u {limits.processes} -c 0 || exit 125\n")
        bridge = bridge_script(self.network) if net_dir is not None and self.network else ""
        return args, ["/bin/bash", "--noprofile", "--norc", "-c", ulimit + bridge + command]

    def probe(self) -> None:
        """Start the sandbox once; a host that cannot run it, or a workspace its user cannot read, is
        refused with the fix."""
        launch = self.launch("test -r . -a -x . || exit 99", self.workspace)
        try:
            result = subprocess.run(launch.argv, capture_output=True, timeout=20, env={"PATH": SANDBOX_PATH},
                                    pass_fds=launch.pass_fds, **launch.spawn)
        except (OSError, subprocess.SubprocessError) as exc:
            raise TargetUnavailable(f"the shell sandbox cannot start: {exc}", hint=INSTALL_HINT) from None
        finally:
            launch.close()
        why = (result.stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"])[-1]
        if result.returncode == 99 or "Permission denied" in why:
            uid = self.user()[0]
            raise TargetUnavailable(f"the sandbox's user (uid {uid}) cannot read the workspace {self.workspace} ({why})",
                                    hint=f"Make it and the folders above it readable (chmod o+rX), give it to uid "
                                         f"{uid}, or map the connection's `users` to an account that can read it.")
        if result.returncode != 0:
            raise TargetUnavailable(f"the shell sandbox cannot start: {why}", hint=INSTALL_HINT)

    def close(self) -> None:
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None

    # -- what is bound over the workspace ------------------------------------------------------------

    def _hidden(self) -> Walk:
        """The last walk's answer while no folder of the workspace changed (a name added, removed or
        renamed changes its folder's ctime, which no user can set back); else a new walk."""
        if self._walked is not None:
            walk, folders = self._walked
            try:
                if all(_identity(os.stat(folder)) == seen for folder, seen in folders.items()):
                    return walk
            except OSError:
                pass
        self._walked = _walk(self.workspace, self.hide)
        return self._walked[0]

    def _safe_git_config(self, path: str, runtime: Path) -> Path:
        """The safe copy of one repository config: made once per file version, stored once per content."""
        info = os.stat(path)
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        cached = self._git_cache.get(key)
        if cached is not None:
            return cached
        text = safe_git_config(path) if info.st_size <= MAX_GIT_CONFIG_BYTES else "\n"
        out = runtime / f"gitconfig-{hashlib.sha256(text.encode()).hexdigest()[:32]}"
        if not out.exists():
            out.write_text(text)
            self._share(out)
        self._git_cache.put(key, out)  # many versions seen: it starts again (the copies stay, named by content)
        return out

    def runtime_dir(self) -> Path:
        return self._runtime_dir()

    def _runtime_dir(self) -> Path:
        """Files bubblewrap binds in: readable by the sandbox's group only (a remote URL may carry a name)."""
        if self._runtime is None:
            runtime = Path(tempfile.mkdtemp(prefix="bastion-sandbox-"))
            atexit.register(shutil.rmtree, runtime, True)  # also when nobody called close()
            uid, gid = self.user()
            name = self.run_as or "agent"
            etc = runtime / "etc"
            (etc / "ssl").mkdir(parents=True)
            for entry in ETC_ENTRIES:  # a copy made at start: one bind instead of one per entry
                source = Path("/etc") / entry
                if source.is_symlink():
                    (etc / entry).symlink_to(os.readlink(source))
                elif source.is_dir():
                    shutil.copytree(source, etc / entry, symlinks=True)
                elif source.is_file():
                    shutil.copyfile(source, etc / entry)
            (etc / "passwd").write_text(f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                                        f"{name}:x:{uid}:{gid}:{name}:{SANDBOX_HOME}:/bin/bash\n")
            (etc / "group").write_text(f"root:x:0:\n{name}:x:{gid}:\n")
            (etc / "gitconfig").write_text(SYSTEM_GITCONFIG)
            (etc / "hosts").write_text(hosts_file(self.network))
            (etc / "nsswitch.conf").write_text(NSSWITCH)
            (runtime / "empty").mkdir()
            (runtime / "empty-file").touch()
            self._runtime = runtime
            for child in [runtime, *runtime.rglob("*")]:
                self._share(child)
        return self._runtime

    def _share(self, path: Path) -> None:
        if path.is_symlink():
            return
        path.chmod(0o750 if path.is_dir() else 0o640)
        if os.geteuid() == 0:
            os.chown(path, 0, self.user()[1])


@dataclass(frozen=True)
class Walk:
    masks: tuple[tuple[str, str], ...]  # (path, "file" | "dir" | "git-config"): what is bound over it
    git_dirs: tuple[str, ...]


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_ino, stat.st_ctime_ns


def _walk(workspace: str, hide: tuple[str, ...]) -> tuple[Walk, dict[str, tuple[int, int]]]:
    """Every name under the workspace to bind over, the repositories' git dirs (found by what they
    hold, whatever they are called or however they are pointed at), and each folder's identity.
    Anything the walk cannot look into fails closed."""
    hidden = re.compile("|".join(fnmatch.translate(pattern) for pattern in hide) or "(?!)", re.IGNORECASE)
    masks: list[tuple[str, str]] = []
    git_dirs: list[str] = []
    folders: dict[str, tuple[int, int]] = {}
    stack = [workspace]
    while stack:
        folder = stack.pop()
        try:
            folders[folder] = _identity(os.stat(folder))
            entries = list(os.scandir(folder))
            names = {entry.name for entry in entries}
            git_dir = "HEAD" in names and ("objects" in names or "commondir" in names)
            if git_dir:
                git_dirs.append(folder)
            # Past MAX_GIT_DIRS a repository's config is not read, only emptied: making many is cheap,
            # and reading each is not.
            emptied = len(git_dirs) > MAX_GIT_DIRS
            for entry in entries:
                # d_type from the folder listing: no system call per name
                link = entry.is_symlink()
                is_dir = not link and entry.is_dir(follow_symlinks=False)
                plain = not link and not is_dir and entry.is_file(follow_symlinks=False)
                if git_dir and entry.name in GIT_DIR_FILES:
                    # A plain config becomes its safe copy; a linked or special one, a worktree config or a
                    # pointer to another common dir becomes empty.
                    masks.append((entry.path, "git-config" if entry.name == "config" and plain and not emptied else "file"))
                elif link:
                    continue  # a link's target is outside (invisible) or inside (judged where it is)
                elif hidden.match(entry.name):
                    masks.append((entry.path, "dir" if is_dir else "file"))
                elif is_dir:
                    stack.append(entry.path)  # git's objects too: a folder moved in there is still looked at
                elif not plain:
                    masks.append((entry.path, "file"))  # sockets, FIFOs, devices: a socket answers a read-only bind
        except (OSError, UnicodeError) as error:
            raise TargetUnavailable(f"the sandbox cannot look into {folder!r} ({getattr(error, 'strerror', error)}), "
                                    "so it cannot hide what must be hidden there",
                                    hint="Ask the gateway's operator to remove or fix that folder.") from None
        if len(folders) + len(masks) > MAX_WALK_ENTRIES:
            raise TargetUnavailable("the workspace has too many folders or hidden files for the sandbox to check",
                                    hint="Point the connection's `cwd` at a smaller folder.")
    return Walk(tuple(masks), tuple(git_dirs)), folders


@functools.cache
def _system_folders() -> tuple[str, ...]:
    """bubblewrap's arguments for /usr and the /bin, /lib... links or folders, as this host lays them
    out (read once: about 65 µs of stat calls a command otherwise)."""
    args: list[str] = []
    for top in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/") / top
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), f"/{top}"]
        elif host.is_dir():
            args += ["--ro-bind", str(host), f"/{top}"]
    return tuple(args)


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)  # inheritable: bubblewrap reads it
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def safe_git_config(path: str) -> str:
    """The keys of a repository's config that name no program, as a config file, without credentials
    in remote URLs. `git config --list` only parses (it runs nothing), and follows no include."""
    try:
        listed = subprocess.run(["git", "config", "--file", path, "--list", "-z", "--no-includes"], capture_output=True,
                                timeout=10, env={"PATH": SANDBOX_PATH, "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"})
    except (OSError, subprocess.SubprocessError):
        return "\n"  # unreadable: git inside sees an empty config
    sections: dict[tuple[str, str | None], list[tuple[str, str]]] = {}
    for item in listed.stdout.decode("utf-8", "replace").split("\0"):
        key, _, value = item.partition("\n")
        if not key or not SAFE_GIT_KEYS.fullmatch(key.lower()):
            continue
        if key.lower().endswith("url"):  # https://user:token@host/...: the credential stays outside
            value = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", value)
        section, _, rest = key.partition(".")
        subsection, _, name = rest.rpartition(".")
        sections.setdefault((section, subsection or None), []).append((name, value))
    lines: list[str] = []
    for (section, sub), items in sections.items():
        lines.append(f"[{section}]" if sub is None else f'[{section} "{_quote(sub)}"]')
        lines += [f'\t{name} = "{_quote(value)}"' for name, value in items]
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")


def remote_bwrap(workspace: str, writable: bool) -> list[str]:
    """bubblewrap's command line on an SSH host that has it (`remote_isolation = "bubblewrap"`): the
    remote account stays the boundary, and each command also sees only the workspace, the system
    folders and /etc, a private /tmp, no /home or /root, its own /proc, and no network. The host's
    own layout is not known here, so every folder is bound if it exists."""
    args = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session"]
    for top in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc"):
        args += ["--ro-bind-try", f"/{top}", f"/{top}"]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/home", "--tmpfs", "/root",
             "--bind" if writable else "--ro-bind", workspace, workspace, "--chdir", workspace, "--setenv", "HOME", "/tmp"]
    return [*args, "--"]
