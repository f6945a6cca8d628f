"""The OS sandbox every local shell command runs in: bubblewrap over Linux namespaces.

The kernel is the boundary here, the way a READ ONLY transaction is for SQL: whatever the parser
missed, a command sees only its workspace (read-only unless the connection writes), the system's
program directories (read-only), a private /tmp and empty HOME, a minimal /dev, its own /proc (its
own PID namespace), no network (its own network namespace, loopback only), as an unprivileged user
with no capabilities and resource limits. Nothing else of the host exists inside: not the gateway's
config, audit store, keys or secrets, not other homes, not /etc's secrets, no host Unix socket.

Repository config cannot launch programs: each `.git/config` in the workspace is replaced inside the
sandbox by a copy holding only keys that name no program (remotes, branches, identity, format), the
sandbox's own system config turns off fsmonitor, hooks, pagers, signing and credential helpers, and
the same settings are given on git's command-line scope for repositories created during the call.
"""

from __future__ import annotations

import fnmatch
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bastion.policy.errors import TargetUnavailable

INSTALL_HINT = ("Install bubblewrap on the gateway's host (`apt-get install bubblewrap`, `dnf install bubblewrap`), "
                "and allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 where it exists), "
                "or opt out in the config with `isolation = \"none\"` on this connection.")
BWRAP_DIRS = "/usr/bin:/bin:/usr/local/bin"  # where the gateway looks for bwrap (never the agent's PATH)
SANDBOX_UID = 64055  # a dedicated id, used when no OS user is mapped: never root, never the gateway's own
SANDBOX_HOME = "/home/agent"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
# Files in the workspace that hold secrets by convention; hidden (empty) inside the sandbox.
DEFAULT_HIDE = (".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*",
                ".pgpass", ".netrc", ".git-credentials", ".npmrc", ".pypirc", ".vault-token")
# What of the host's /etc programs need: the loader's cache, alternatives (awk, pager), time zone, name
# service switch, MIME and magic data. Nothing with a secret in it; passwd and group are Bastion's own.
ETC_ENTRIES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "timezone", "nsswitch.conf",
               "hosts", "host.conf", "os-release", "debian_version", "mime.types", "magic", "magic.mime",
               "locale.alias", "protocols", "services", "ssl/certs", "ca-certificates.conf")
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
MAX_WALK_ENTRIES = 200_000  # a workspace bigger than this is refused: hidden files could not all be found


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 60
    memory_bytes: int = 2 << 30
    file_size_bytes: int = 1 << 30
    processes: int = 512


@dataclass
class Sandbox:
    """The bubblewrap command line for one local connection, and the files it binds (passwd, git configs)."""

    workspace: str
    writable: bool = False
    hide: tuple[str, ...] = DEFAULT_HIDE
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    run_as: str | None = None  # the mapped OS user; else SANDBOX_UID
    # The gateway's own files (config, audit store, SQLite targets, keys): empty inside if they lie in the workspace.
    protected: tuple[str, ...] = ()
    _runtime: Path | None = None
    _git_cache: dict[tuple[str, float, int], Path] = field(default_factory=dict)
    _walked: tuple[list[tuple[str, bool]], dict[str, int]] | None = None

    def user(self) -> tuple[int, int]:
        """The uid and gid the sandbox runs as."""
        if self.run_as is None:
            return SANDBOX_UID, SANDBOX_UID
        try:
            entry = pwd.getpwnam(self.run_as)
        except KeyError:
            raise TargetUnavailable(f"the mapped OS user `{self.run_as}` does not exist",
                                    hint="Ask the gateway's operator to create the user or fix the mapping.") from None
        if entry.pw_uid == 0:
            raise TargetUnavailable(f"the mapped OS user `{self.run_as}` is root; the sandbox never runs as root",
                                    hint="Map the connection's users to an unprivileged account.")
        return entry.pw_uid, entry.pw_gid

    def argv(self, command: str, cwd: str) -> list[str]:
        """bubblewrap's command line.

        A gateway running as root starts bubblewrap privileged (it can bind a workspace below folders
        only root may enter) without a user namespace, and the command drops to the sandbox's uid with
        setpriv before anything of the agent's runs: on the host it is that unprivileged uid. An
        unprivileged gateway uses a user namespace and stays its own uid (nothing of it is inside)."""
        bwrap = shutil.which("bwrap", path=BWRAP_DIRS)
        if bwrap is None:
            raise TargetUnavailable("the shell sandbox (bubblewrap) is not installed on the gateway's host",
                                    hint=INSTALL_HINT)
        runtime = self._runtime_dir()
        uid, gid = self.user()
        root = os.geteuid() == 0
        namespaces = (["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
                       "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"] if root else ["--unshare-all"])
        args = [bwrap, *namespaces, "--die-with-parent", "--new-session", "--hostname", "sandbox", "--clearenv"]
        for top in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            host = Path("/") / top
            if host.is_symlink():
                args += ["--symlink", os.readlink(host), f"/{top}"]
            elif host.is_dir():
                args += ["--ro-bind", str(host), f"/{top}"]
        args += ["--ro-bind", str(runtime / "etc"), "/etc",
                 "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/home", "--dir", SANDBOX_HOME]
        # Folders bubblewrap makes on the way to a bind copy the host's modes (a 0700 parent of the
        # workspace); inside they are plain 0755 folders holding nothing else.
        for folder in reversed(Path(self.workspace).parents):
            if str(folder) != "/":
                args += ["--perms", "0755", "--dir", str(folder)]
        args += ["--bind" if self.writable else "--ro-bind", self.workspace, self.workspace]
        args += self._masks(runtime)
        args += ["--remount-ro", "/", "--chdir", cwd]
        env = {"PATH": SANDBOX_PATH, "LANG": "C.UTF-8", "HOME": SANDBOX_HOME, "TERM": "dumb",
               "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_PAGER": "cat", "GIT_TERMINAL_PROMPT": "0",
               "GIT_CONFIG_COUNT": str(len(GIT_HARDENING))}
        for i, (key, value) in enumerate(GIT_HARDENING):
            env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
        for name, value in env.items():
            args += ["--setenv", name, value]
        limits = self.limits
        drop = (["/usr/bin/setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
                 "--bounding-set=-all", "--no-new-privs"] if root else [])
        # bash sets the limits (soft and hard; -v and -f in KiB) before the command: one program start fewer than prlimit.
        ulimit = (f"ulimit -t {limits.cpu_seconds} -v {limits.memory_bytes >> 10} -f {limits.file_size_bytes >> 10} "
                  f"-u {limits.processes} -c 0 || exit 125\n")
        args += ["--", *drop, "/bin/bash", "--noprofile", "--norc", "-c", ulimit + command]
        return args

    def probe(self) -> None:
        """Start the sandbox once with `true`; a host that cannot run it is told how to fix that."""
        try:
            result = subprocess.run(self.argv("test -r . -a -x . || exit 99", self.workspace), capture_output=True,
                                    timeout=20, env={"PATH": SANDBOX_PATH})
        except (OSError, subprocess.SubprocessError) as exc:
            raise TargetUnavailable(f"the shell sandbox cannot start: {exc}", hint=INSTALL_HINT) from None
        if result.returncode == 99:
            uid = self.user()[0]
            raise TargetUnavailable(f"the sandbox's user (uid {uid}) cannot read the workspace {self.workspace}",
                                    hint=f"Make it readable (chmod o+rX), give it to uid {uid}, or map the "
                                         "connection's `users` to an account that can read it.")
        if result.returncode != 0:
            why = result.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
            raise TargetUnavailable(f"the shell sandbox cannot start: {why[0]}", hint=INSTALL_HINT)

    def close(self) -> None:
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None

    # -- what is bound over the workspace ------------------------------------------------------------

    def _masks(self, runtime: Path) -> list[str]:
        """Hidden files become empty, hidden folders empty; each .git/config becomes its safe copy."""
        args: list[str] = []
        inside = self.workspace.rstrip("/") + "/"
        for path in self.protected:
            for variant in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
                if variant.startswith(inside) and os.path.isfile(variant):
                    args += ["--ro-bind", str(runtime / "empty-file"), variant]
        for path, is_dir in self._hidden():
            if path.endswith("/.git/config") or re.search(r"/\.git/modules/.+/config$", path):
                args += ["--ro-bind", str(self._safe_git_config(path, runtime)), path]
            elif path.endswith("/config.worktree"):
                args += ["--ro-bind", str(runtime / "empty-file"), path]
            else:
                args += ["--ro-bind", str(runtime / ("empty" if is_dir else "empty-file")), path]
        return args

    def _hidden(self) -> list[tuple[str, bool]]:
        """The last walk's answer while no folder of the workspace changed (a name added, removed or
        renamed changes its folder's mtime); else a new walk."""
        if self._walked is not None:
            found, folders = self._walked
            try:
                if all(os.stat(folder).st_mtime_ns == mtime for folder, mtime in folders.items()):
                    return found
            except OSError:
                pass
        self._walked = self._walk()
        return self._walked[0]

    def _walk(self) -> tuple[list[tuple[str, bool]], dict[str, int]]:
        """Paths under the workspace to bind over (matches of the hide patterns, git configs), and the
        mtime of every folder looked in."""
        found: list[tuple[str, bool]] = []
        folders: dict[str, int] = {}
        hidden = re.compile("|".join(fnmatch.translate(pattern) for pattern in self.hide) or "(?!)")
        seen = 0
        stack = [self.workspace]
        while stack:
            folder = stack.pop()
            try:
                folders[folder] = os.stat(folder).st_mtime_ns
                entries = list(os.scandir(folder))
            except OSError:
                continue
            seen += len(entries)
            if seen > MAX_WALK_ENTRIES:
                raise TargetUnavailable(f"the workspace has more than {MAX_WALK_ENTRIES} entries; the sandbox cannot "
                                        "check it for hidden files", hint="Point the connection's `cwd` at a smaller folder.")
            in_git = folder.endswith("/.git") or "/.git/modules/" in folder + "/"
            for entry in entries:
                if entry.is_symlink():
                    continue  # a link's target is either outside (invisible) or inside (judged there)
                is_dir = entry.is_dir()
                if hidden.match(entry.name):
                    found.append((entry.path, is_dir))
                elif in_git and not is_dir and entry.name in ("config", "config.worktree"):
                    found.append((entry.path, False))
                elif is_dir and not (in_git and entry.name in ("objects", "refs", "logs", "hooks", "lfs")):
                    stack.append(entry.path)
        return found, folders

    def _safe_git_config(self, path: str, runtime: Path) -> Path:
        stat = os.stat(path)
        key = (path, stat.st_mtime, stat.st_size)
        if key not in self._git_cache:
            out = runtime / f"gitconfig-{len(self._git_cache)}"
            out.write_text(safe_git_config(path))
            out.chmod(0o644)
            self._git_cache[key] = out
        return self._git_cache[key]

    def _runtime_dir(self) -> Path:
        """Files bubblewrap binds in; readable by the sandbox's user, holding nothing secret."""
        if self._runtime is None:
            runtime = Path(tempfile.mkdtemp(prefix="bastion-sandbox-"))
            runtime.chmod(0o755)
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
            (runtime / "empty").mkdir()
            (runtime / "empty-file").touch()
            for child in [runtime, *runtime.rglob("*")]:
                if not child.is_symlink():
                    child.chmod(0o755 if child.is_dir() else 0o644)
            self._runtime = runtime
        return self._runtime


def safe_git_config(path: str) -> str:
    """The keys of a repository's config that name no program, as a config file. `git config --list`
    only parses (it runs nothing), and it does not follow includes unless asked."""
    listed = subprocess.run(["git", "config", "--file", path, "--list", "-z", "--no-includes"], capture_output=True,
                            timeout=10, env={"PATH": SANDBOX_PATH, "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"})
    sections: dict[tuple[str, str | None], list[tuple[str, str]]] = {}
    for item in listed.stdout.decode("utf-8", "replace").split("\0"):
        key, _, value = item.partition("\n")
        if not key or not SAFE_GIT_KEYS.fullmatch(key.lower()):
            continue
        section, _, rest = key.partition(".")
        subsection, _, name = rest.rpartition(".")
        sections.setdefault((section, subsection or None), []).append((name, value))
    lines: list[str] = []
    for (section, subsection), items in sections.items():
        lines.append(f"[{section}]" if subsection is None else f'[{section} "{_quote(subsection)}"]')
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
