"""The shell guard checked against bash itself (issue 3, Tests).

Every golden corpus text (tests/golden/shell_cases.toml) and the extra tricky texts below run under
real `bash --noprofile --norc -c` in a throwaway sandbox where every program is a recording stand-in:
a tiny script that appends the argv it received to a log and exits 0. Then:

- for a text the guard ALLOWS, the programs and argv bash actually started must be the ones the
  guard's facts name (the analysis' commands, with allowed expansions evaluated the way bash does in
  the sandbox), and the REBUILT text, run the same way, must start exactly the same programs;
- for a text the guard DENIES, there is nothing to compare argv with, but every program bash started
  must at least appear among the facts (unless the facts name a launcher builtin such as eval or a
  program computed at run time): facts that miss a command are a guard bug even when the verdict is
  right by luck.

The sandbox:
- `bash` is the real bash; `env -i` with PATH = one directory of stand-ins (one per program name the
  facts mention, plus a fixed list), HOME/PWD/USER/LOGNAME/LANG like the local executor's scrubbed
  environment, and BASH_ENV = a file that disables the builtins that also exist as programs (echo,
  printf, test, [, pwd, kill, true, false: they then run as logged stand-ins) and defines
  `command_not_found_handle`, so that a name with no stand-in is logged too;
- preferably (`unshare` with user namespaces available) bash runs inside new user, mount, network and
  pid namespaces, chrooted into a read-only root that holds nothing but a copy of bash, its libraries
  and stand-ins, also in /bin, /usr/bin, /usr/local/bin, /sbin, /usr/sbin, /usr/local/sbin; only
  /sb (home, work, log) is writable. `/bin/rm -rf /` then reaches a stand-in, and nothing on the host
  can be read, written or executed by accident (the sandbox guards against mistakes in this corpus,
  not against a corpus written to break out of a chroot: review texts added here);
- without user namespaces, texts that could reach a real program or a path outside the sandbox (any
  `/`, `$`, backquote, `~`, or builtins such as command, cd, exec, kill ...) are skipped by design
  (see _RISKY) and the rest run directly in the sandbox directory.

The working directory holds README.md, notes.txt, a.c, b.h, main.py and a file named `-delete`, so
input redirections find their files and globs expand. The files are empty and stand-ins print
nothing, so a command substitution expands to "". Each run has a timeout; a denied loop
(`while true; do ls; done`) is simply cut off. Bastion runs a word that starts with a glob as
./pattern (docs/shell.md), so where the facts hold such a word, a leading ./ is ignored in arguments.

Known differences are marked xfail(strict=True) per case with the reason (GUARD_BUGS below); a fixed
guard makes the mark fail, and the entry must go.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bastion.policy import Identity
from bastion.policy.shell.decide import vet_shell_text
from bastion.policy.shell.facts import Command, Node, ShellAnalysis
from bastion.policy.shell.presets import INSPECT
from bastion.policy.shell.rules import ShellPolicy
from bastion.policy.shell.rebuild import _Builder
from bastion.policy.shell.words import ARITH, CMDSUB, GLOB, LIT, PARAM, PARAM_OP, TILDE, Segment, Word

HERE = Path(__file__).resolve().parent
CORPUS = tomllib.loads((HERE / "golden" / "shell_cases.toml").read_text())["case"]
POLICY = ShellPolicy("golden", (INSPECT,), "/work/project")
BASH = shutil.which("bash")

# Extra texts of our own: places where bash's word rules are subtle.
EXTRA: list[tuple[str, str]] = [
    ("tilde after = in an argument", "echo a=~"),
    ("tilde after : in an assignment-like argument", "echo PATH=x:~/bin"),
    ("tilde produced by brace expansion", "echo {~,x}"),
    ("tilde as a brace alternative before a path", "ls {~,.}/notes.txt"),
    ("glob in the middle of a word", "ls m*.py"),
    ("escaped glob", "ls \\*.py"),
    ("quoted glob character", "ls '*'.py"),
    ("glob over dotfiles", "ls .*"),
    ("globs inside braces", "ls {*.py,*.c}"),
    ("bracket glob with a range", "ls [a-b].*"),
    ("bracket glob whose first member is ]", "ls []a]*"),
    ("negated bracket glob with !", "ls [!m]*"),
    ("negated bracket glob with ^", "ls [^m]*"),
    ("POSIX character class in a bracket glob", "ls [[:alpha:]].c"),
    ("bracket closed inside quotes is literal", "ls [a\"]\"*"),
    ("lone [ in an argument", "ls [ x"),
    ("glob after a literal directory", "ls ./*.txt"),
    ("glob under $HOME", "ls $HOME/*"),
    ("nested braces", "echo {a,{b,c}}d"),
    ("brace with two empty alternatives", "echo x{,}"),
    ("braces with a quoted alternative", "echo {'a b',c}"),
    ("brace alternatives holding $HOME", "echo {$HOME,x}"),
    ("brace after ${HOME}", "echo ${HOME}{a,b}"),
    ("escaped braces", "echo \\{a,b\\}"),
    ("negative numeric sequence", "echo {-2..2}"),
    ("reversed letter sequence", "echo {e..a}"),
    ("sequence across punctuation", "echo {Z..a}"),
    ("quoted empty arguments", "echo '' \"\" x"),
    ("empty ANSI-C argument", "ls $''"),
    ("ANSI-C escape character", "echo $'\\E[0m'"),
    ("ANSI-C astral code point", "echo $'\\U0001F600'"),
    ("ANSI-C hex takes two digits", "echo $'\\x414'"),
    ("ANSI-C octal takes three digits", "echo $'\\1011'"),
    ("ANSI-C inside double quotes is literal", "echo \"$'\\x41'\""),
    ("locale string as the program", '$"ls" -la'),
    ("parameter glued to text", "echo ${HOME}x"),
    ("parameter followed by a bracket", "ls $HOME[0]"),
    ("substitution inside double quotes with text", 'echo "a $(ls) b"'),
    ("substitution glued to text", "echo x$(ls)y"),
    ("unquoted substitution drops out", "echo $(ls) end"),
    ("escaped quotes in backticks in double quotes", 'echo "`echo \\"x\\"`"'),
    ("backslash-newline between arguments", "ls \\\n-la"),
    ("comment after a pipe", "ls | # c\nwc -l"),
    ("backslash-newline inside a comment", "ls # x \\\nrm -rf /"),
    ("carriage return inside an argument", "ls a\rb"),
    ("|| skips its right side", "ls || ls -la; echo done"),
    ("subshell with || and &&", "(ls || echo no) && echo yes"),
    ("sequence then substitution", "echo {a..c} $(ls)"),
    ("three-stage pipeline with 2>&1", "ls 2>&1 | grep x | wc -l"),
    ("unquoted substitution with arguments", "echo $(ls -la)"),
    ("find with {} and a glob", "find . -name '*.c' -newer main.py"),
    ("glob that matches a file named -delete", "find *"),
    ("substitution then a newline and rm", "echo $(ls\nrm -rf /)"),
    ("comment inside a substitution", "echo $(ls # x\n)"),
    ("newline at the start of a substitution", "echo $(\nls -la\n)"),
    ("line continuation inside a substitution", "echo $(ls \\\n-la)"),
    # tree-sitter-bash constructs (issue 14): case, [[ ]], arithmetic, here-documents in pipelines.
    ("case picks the matching branch", "for f in *.py README.md; do case $f in *.py) echo py $f;; *) echo other $f;; esac; done"),
    ("case with quoted and alternative patterns", "case README.md in 'a b'|README.*) ls -la;; *) cat x;; esac"),
    ("case branch with no commands", "case x in y) ls;; x) ;; esac; echo done"),
    ("[[ ]] file test picks the branch", "[[ -f main.py && ! -d main.py ]] && echo file || echo none"),
    ("[[ ]] pattern with a leading glob", "for f in *.c; do [[ $f == *.c ]] && echo c $f; done"),
    ("[[ ]] quoted pattern matches literally", "[[ a.c == 'a'.? ]] && echo yes; [[ a.c == 'a.?' ]] || echo no"),
    ("[[ ]] regular expression", "[[ main.py =~ ^ma(in|x)\\.py$ ]] && echo match"),
    ("[[ ]] string order", "[[ a < b ]] && echo lt"),
    ("[[ -eq ]] on a loop over integers", "for n in 1 2 3; do [[ $n -eq 2 ]] && echo two $n; done"),
    ("arithmetic over a brace range", "for n in {1..4}; do (( n % 2 == 0 )) && echo even $n; done"),
    ("arithmetic expansion of a known integer", "for n in 3 4; do echo $(( n * 2 )) \"$((n+1))\"; done"),
    ("arithmetic assignment then use", "(( k = 2 + 3 )); echo $k $((k*k)); (( k > 9 )) || echo small"),
    ("arithmetic on an unknown variable", "(( USER > 1 )) && ls"),
    ("arithmetic on a loop over file contents", "for n in $(cat notes.txt); do (( n > 1 )) && ls; done"),
    ("until loop then echo", "until true; do ls; done; echo after"),
    ("here-document into a pipeline", "cat <<'EOF' | grep -c a\na\nb\nEOF"),
    ("substitution inside a ${:-} default of ls", "echo ${x:-$(ls)}"),
    ("function definition", "f() { ls; }; f"),
]

_BRACKET = ("guard bug: words.lex closes a bracket expression at the first `]`, but bash takes a `]` right after "
            "`[` (or `[!`, `[^`) as a member and `[:class:]` as one item: the facts misread the pattern and the "
            "rebuild quotes the real closing `]`, so the rebuilt text matches nothing where bash matched a.c")

# Known differences between bash and the guard (none today); a fixed one fails as XPASS.
GUARD_BUGS: dict[str, str] = {}

# Names that always get a stand-in, whatever the facts say.
COMMON = ("rm", "curl", "wget", "sh", "bash", "dash", "zsh", "cat", "ls", "git", "find", "grep", "head", "tail", "wc",
          "ps", "df", "du", "echo", "printf", "test", "[", "pwd", "kill", "true", "false", "python", "python3", "perl",
          "node", "ruby", "base64", "xargs", "env", "nice", "timeout", "nohup", "sudo", "su", "less", "more", "vim",
          "vi", "man", "ssh", "scp", "nc", "tar", "awk", "sed", "sort", "id", "whoami", "chmod", "chown", "mv", "cp",
          "dd", "tee", "touch", "mkdir", "diff", "strace", "watch", "make", "sleep", "uname", "hostname", "which")
# bash builtins that run other commands: when the facts name one, a denied text may start programs the
# facts cannot list.
_LAUNCHER_BUILTINS = frozenset({"eval", "source", ".", "exec", "command", "builtin", "trap", "fc", "time", "coproc",
                                "enable", "mapfile", "readarray", "bind", "complete", "compgen"})
_DISABLED_BUILTINS = ("echo", "printf", "test", "[", "pwd", "kill", "true", "false")
# Builtins the guard allows that stay builtins (they start no program): `cd DIR && ...`.
_KEPT_BUILTINS = frozenset({"cd", "type", "read"})
# Without namespaces: any text that could name a path, expand to one, change directory, PATH or the
# command hash, or signal processes is not run (skipped by design).
_RISKY = re.compile(r"[/$`~]|\b(command|hash|enable|PATH|CDPATH|cd|pushd|popd|kill|exec|source|builtin|trap|fc|"
                    r"ulimit|BASH_ENV|ENV|coproc)\b|(^|[\s;&|(])\.(\s|$)")
_ALLOWED_TIMEOUT, _DENIED_TIMEOUT = 5.0, 2.0

_STANDIN = """#!{bash}
printf '%s\\0' "$#" "$0" "$@" >> "{log}/$$.${{SRANDOM:-$RANDOM}}"
exit 0
"""
_NOT_FOUND = """#!{bash}
printf '%s\\0' "$(( $# - 1 ))" "notfound:$1" "${{@:2}}" >> "{log}/nf.$$.${{SRANDOM:-$RANDOM}}"
exit 127
"""
_INIT = """unset BASH_ENV
enable -n {disabled}
command_not_found_handle() {{ {not_found} "$@"; }}
"""
_WORK_FILES = ("README.md", "notes.txt", "a.c", "b.h", "main.py", "-delete")
_PROGRAM_DIRS = ("/bin", "/usr/bin", "/usr/local/bin", "/sbin", "/usr/sbin", "/usr/local/sbin")

Argv = tuple[str, ...]


@dataclass(frozen=True)
class Run:
    argvs: list[Argv]  # what bash started, sorted (pipelines run concurrently)
    stdout: bytes
    stderr: bytes
    returncode: int
    timed_out: bool


class Sandbox:
    """A directory with stand-ins, and a way to run one text under bash there (see the module doc)."""

    def __init__(self, base: Path, names: set[str], isolated: bool) -> None:
        assert BASH is not None
        self.base, self.isolated, self.sb = base, isolated, base / "sb"
        if isolated:
            self.root = base / "root"
            host_b = self.root / ".b"
            host_b.mkdir(parents=True)
            shutil.copy2(BASH, host_b / "bash")
            for lib in _libraries(BASH):
                dest = self.root / lib.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(os.path.realpath(lib), dest)
            if Path("/usr/lib/locale/C.utf8").is_dir():
                shutil.copytree("/usr/lib/locale/C.utf8", self.root / "usr/lib/locale/C.utf8")
            (self.root / "dev").mkdir()
            (self.root / "dev" / "null").touch()
            (self.root / "sb").mkdir()
            self.bash, self.standins, self.init = "/.b/bash", "/standins", "/.b/init.sh"
            self.home, self.work, log, not_found = "/sb/home", "/sb/work", "/sb/log", "/.b/notfound"
            dirs = [self.root / d.lstrip("/") for d in (self.standins, *_PROGRAM_DIRS)]
        else:
            host_b = base / ".b"
            host_b.mkdir(parents=True)
            self.bash, self.standins, self.init = BASH, str(base / "standins"), str(host_b / "init.sh")
            self.home, self.work, log = str(self.sb / "home"), str(self.sb / "work"), str(self.sb / "log")
            not_found = str(host_b / "notfound")
            dirs = [Path(self.standins)]
        standin = host_b / "standin"
        standin.write_text(_STANDIN.format(bash=self.bash, log=log))
        (host_b / "notfound").write_text(_NOT_FOUND.format(bash=self.bash, log=log))
        (host_b / "init.sh").write_text(_INIT.format(disabled=" ".join(_DISABLED_BUILTINS), not_found=not_found))
        for script in (standin, host_b / "notfound"):
            script.chmod(0o755)
        for directory in dirs:
            directory.mkdir(parents=True, exist_ok=True)
            for name in names:
                if _usable_name(name) and not (directory / name).exists():
                    os.link(standin, directory / name)

    def env(self) -> dict[str, str]:
        return {"PATH": self.standins, "HOME": self.home, "PWD": self.work, "USER": "agent", "LOGNAME": "agent",
                "LANG": "C.UTF-8", "BASH_ENV": self.init}

    def host_path(self, path: str) -> str:
        """Where a path bash sees lies on this machine (for globbing as bash will)."""
        if not self.isolated:
            return path
        if path == "/sb" or path.startswith("/sb/"):
            return str(self.sb) + path[3:]
        return str(self.root) + path

    def _reset(self) -> None:
        if self.sb.exists():
            shutil.rmtree(self.sb)
        for directory in ("home", "work", "log"):
            (self.sb / directory).mkdir(parents=True)
        for name in _WORK_FILES:
            (self.sb / "work" / name).touch()

    def run(self, text: str, timeout: float) -> Run:
        self._reset()
        if self.isolated:
            setup = ('set -e; mount --bind "$1" "$1"; mount -o remount,bind,ro "$1"; mount --bind "$2" "$1/sb"; '
                     'mount --bind /dev/null "$1/dev/null"; shift 2; exec "$@"')
            command = [_tool("unshare"), "--user", "--map-root-user", "--mount", "--net", "--pid", "--kill-child",
                       BASH, "--noprofile", "--norc", "-c", setup, "setup", str(self.root), str(self.sb),
                       _tool("env"), "-i", *(f"{k}={v}" for k, v in self.env().items()),
                       _tool("unshare"), f"--root={self.root}", "--wd=/sb/work",
                       self.bash, "--noprofile", "--norc", "-c", text]
            env, cwd = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, str(self.base)
        else:
            command, env, cwd = [self.bash, "--noprofile", "--norc", "-c", text], self.env(), self.work
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env=env, cwd=cwd, start_new_session=True)
        timed_out = False
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            timed_out = True
        try:  # background jobs (`ls &`) must not write into the next run's log
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return Run(self._records(), stdout, stderr, process.returncode, timed_out)

    def _records(self) -> list[Argv]:
        out: list[Argv] = []
        for path in (self.sb / "log").iterdir():
            fields = path.read_bytes().split(b"\0")
            i = 0
            while i + 1 < len(fields):
                count = int(fields[i])
                if len(fields) < i + 3 + count:
                    break  # a record cut short: the sandbox ended while a background child was logging
                argv = [os.fsdecode(f) for f in fields[i + 1 : i + 2 + count]]
                i += 2 + count
                program = argv[0]
                if program.startswith("notfound:"):
                    program = program[len("notfound:") :]
                elif os.path.dirname(program) == self.standins:
                    program = os.path.basename(program)
                out.append((program, *argv[1:]))
        return sorted(out)


def _tool(name: str) -> str:
    path = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    assert path, f"{name} not found"
    return path


def _libraries(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return [m.group(1) for m in re.finditer(r"(/\S+)\s+\(0x", out)]


def _usable_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\x00" not in name \
        and len(os.fsencode(name)) <= 200


def _userns_sandbox_works(base: Path, names: set[str]) -> Sandbox | None:
    if os.environ.get("BASTION_TEST_NO_USERNS") or not all(shutil.which(t) for t in ("unshare", "ldd", "mount")):
        return None
    try:
        sandbox = Sandbox(base / "isolated", names, isolated=True)
        probe = sandbox.run("/bin/ls -la", timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return sandbox if probe.argvs == [("/bin/ls", "-la")] and probe.returncode == 0 else None


ALL: list[tuple[str, str]] = [(str(c["title"]), str(c["text"])) for c in CORPUS] + EXTRA


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    if BASH is None:
        pytest.fail("bash is not on PATH: this test runs every corpus command under real bash; install bash "
                    "(e.g. `apt-get install bash`)")
    names = set(COMMON)
    for _, text in ALL:
        try:
            analysis = vet_shell_text(Identity("golden"), POLICY, text)[0]
        except Exception:  # noqa: BLE001 - a crashing case is reported by its own test
            continue
        names.update(c.program.value for c in analysis.commands if c.program is not None and c.program.literal)
    base = tmp_path_factory.mktemp("bash-sandbox")
    return _userns_sandbox_works(base, names) or Sandbox(base / "plain", names, isolated=False)


def test_bash_is_present() -> None:
    assert BASH is not None, "bash is not on PATH: install bash (e.g. `apt-get install bash`)"
    version = subprocess.run([BASH, "--version"], capture_output=True, text=True, check=True).stdout
    assert "GNU bash" in version


def test_known_differences_name_real_cases() -> None:
    assert not set(GUARD_BUGS) - {title for title, _ in ALL}
    assert len({title for title, _ in ALL}) == len(ALL), "duplicate titles"


# --- what the facts say bash will start -------------------------------------------------------------


def _started(analysis: ShellAnalysis, sandbox: Sandbox) -> list[tuple[int, dict[str, str]]]:
    """The commands bash starts when every program exits 0 (`a || b` skips b), each with the loop
    variables set when it starts (a `for` loop runs its body once per word, as bash expands them)."""
    substitutions = dict(analysis.substitutions)
    started: list[tuple[int, dict[str, str]]] = []

    def words(command: Command) -> Iterator[Word]:
        yield from command.argv
        yield from (r.target for r in command.redirects if r.target is not None)

    def substitute(word: Word, env: dict[str, str]) -> None:
        for segment in word.segments:
            if segment.kind == CMDSUB:
                run(substitutions[segment.start], env)

    def run(node: Node, env: dict[str, str]) -> bool:
        if node.kind == "command":
            command = analysis.commands[node.index]
            for word in words(command):
                substitute(word, env)
            started.append((node.index, dict(env)))
            return True
        if node.kind == "pipeline":
            for item in node.items:
                run(item, env)
            return True
        if node.kind == "list":
            ok = run(node.items[0], env)
            for op, item in zip(node.ops, node.items[1:], strict=False):
                if (op == "&&" and not ok) or (op == "||" and ok):
                    continue
                ok = run(item, env)
            return ok
        if node.kind in ("subshell", "group"):
            return run(node.items[0], dict(env) if node.kind == "subshell" else env)
        if node.kind == "while" and node.items:
            # `... | while read name`: stand-ins print nothing and files are empty, so `read` fails at
            # once and the body never runs.
            run(node.items[0], env)
            return True
        if node.kind == "if" and node.items:
            # keywords: if C then B [elif C then B]... [else B]; every stand-in exits 0
            for keyword, item in zip(node.ops, node.items, strict=True):
                if keyword in ("if", "elif"):
                    ok = run(item, env)
                elif keyword == "then" and ok:
                    return run(item, env)
                elif keyword == "else":
                    return run(item, env)
            return True
        if node.kind == "arithmetic":
            status, updates = _arithmetic(node.ops[0], env)
            env.update(updates)
            return status == 0
        if node.kind in ("test", "case"):
            command = analysis.commands[node.index]
            for word in command.argv:
                substitute(word, env)
            if node.kind == "test":
                return _bash_status(_Builder(analysis).test(node), env, sandbox) == 0
            branches = " ".join(f"{' | '.join(_Builder(analysis).word(p) for p in command.argv[k:k + int(n)])} ) exit {i} ;;"
                                for i, (k, n) in enumerate(_offsets(node.ops)))
            chosen = _bash_status(f"case {_Builder(analysis).word(command.argv[1])} in {branches} esac; exit 99",
                                  env, sandbox)
            return True if chosen == 99 else run(node.items[chosen], env) if node.items[chosen].items or \
                node.items[chosen].kind != "list" else True
        if node.kind == "for" and node.items:
            for word in node.words:
                substitute(word, env)
            values = [v for word in node.words for v in _expand(word, sandbox, env)]
            for value in values:
                env[node.name] = value
                run(node.items[0], env)
            return True
        raise AssertionError(f"an allowed text has a `{node.kind}` node")

    assert analysis.structure is not None
    run(analysis.structure, {})
    return started


def _expand(word: Word, sandbox: Sandbox, bindings: dict[str, str] | None = None) -> list[str]:
    """The arguments bash makes of one fact word in the sandbox: tilde, allowed variables, substitutions
    (stand-ins print nothing), then pathname expansion of the word as the facts segment it (glob
    characters active, everything else literal); an unquoted word that expands to nothing disappears."""
    env = sandbox.env()
    text, pattern, quoted, has_glob = [], [], False, False
    for segment in word.segments:
        quoted = quoted or segment.quoted
        if segment.kind == LIT:
            value = segment.text
        elif segment.kind == TILDE:
            value = env["HOME"] + segment.text[1:] if segment.text == "~" else segment.text
        elif segment.kind == PARAM:
            value = (bindings or {}).get(segment.text, env.get(segment.text, ""))
        elif segment.kind == PARAM_OP:  # ${x:-w}, ${f%.py}: bash computes it, with the same variables
            value = _bash_output(f'printf %s "${{{segment.text}}}"', {**env, **(bindings or {})})
        elif segment.kind == CMDSUB:
            value = ""
        elif segment.kind == ARITH:
            value = _bash_output(f"printf %s $(({segment.text}))", bindings or {})
        elif segment.kind == GLOB:
            text.append(segment.text)
            pattern.append(segment.text)
            has_glob = True
            continue
        else:
            raise AssertionError(f"an allowed text has a `{segment.kind}` expansion")
        text.append(value)
        pattern.append("".join(c if c == "/" else "\\" + c for c in value))
    joined = "".join(text)
    if has_glob:
        matches = _bash_glob("".join(pattern), sandbox)
        if matches:
            return matches
    if not joined and not quoted:
        return []
    return [joined]


_CLASSES = {"alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "lower": "a-z", "upper": "A-Z",
            "space": r" \t\n\r\f\v", "xdigit": "0-9A-Fa-f", "punct": re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")}


def _component_regex(component: str) -> tuple[re.Pattern[str] | None, bool]:
    """A bash pattern component (backslash-escaped literals) → (regex, or None when nothing in it is
    a live glob character; whether it starts with a literal dot)."""
    out, i, live, n = [], 0, False, len(component)
    while i < n:
        c = component[i]
        if c == "\\" and i + 1 < n:
            out.append(re.escape(component[i + 1]))
            i += 2
        elif c == "*":
            out.append(".*")
            live, i = True, i + 1
        elif c == "?":
            out.append(".")
            live, i = True, i + 1
        elif c == "[":
            parsed = _bracket(component, i)
            if parsed is None:
                out.append(re.escape("["))
                i += 1
            else:
                regex, i = parsed
                out.append(regex)
                live = True
        else:
            out.append(re.escape(c))
            i += 1
    dot = component.startswith(".") or component.startswith("\\.")
    return (re.compile("".join(out), re.S) if live else None), dot


def _bracket(p: str, i: int) -> tuple[str, int] | None:
    """bash's bracket expression at p[i] == '[': negation by ! or ^, a leading ] is a member,
    [:class:], ranges, backslash-escaped members; None when it never closes (then `[` is literal)."""
    j, negate, members = i + 1, False, []
    if j < len(p) and p[j] in "!^":
        negate, j = True, j + 1
    first = True
    while j < len(p):
        c = p[j]
        if c == "]" and not first:
            body = "".join(members)
            return f"[{'^' if negate else ''}{body}]", j + 1
        first = False
        if c == "[" and p.startswith("[:", j):
            close = p.find(":]", j + 2)
            if close > 0 and p[j + 2 : close] in _CLASSES:
                members.append(_CLASSES[p[j + 2 : close]])
                j = close + 2
                continue
        if c == "\\" and j + 1 < len(p):
            members.append(re.escape(p[j + 1]))
            j += 2
        elif c == "-" and members and j + 1 < len(p) and p[j + 1] != "]":
            members.append("-")
            j += 1
        else:
            members.append(re.escape(c))
            j += 1
    return None


def _bash_glob(pattern: str, sandbox: Sandbox) -> list[str]:
    """Pathname expansion as bash does it (dotglob off, globskipdots on), component by component."""
    absolute = pattern.startswith("/")
    results = ["/" if absolute else ""]
    for component in [c for c in pattern.split("/") if c != ""]:
        regex, dot = _component_regex(component)
        following = []
        for prefix in results:
            if regex is None:
                following.append(prefix + re.sub(r"\\(.)", r"\1", component))
                continue
            base = sandbox.host_path(prefix) if absolute else os.path.join(sandbox.host_path(sandbox.work), prefix)
            try:
                names = os.listdir(base or ".")
            except OSError:
                continue
            following += [prefix + name for name in sorted(names)
                          if regex.fullmatch(name) and (dot or not name.startswith("."))]
        results = [r + "/" for r in following]
    found = [r.rstrip("/") if not pattern.endswith("/") else r for r in results]
    return [f for f in found if os.path.lexists(_host(f, sandbox))]


def _host(path: str, sandbox: Sandbox) -> str:
    return sandbox.host_path(path) if path.startswith("/") else os.path.join(sandbox.host_path(sandbox.work), path)


def _offsets(counts: tuple[str, ...]) -> Iterator[tuple[int, int]]:
    """(first argv index, pattern count) of each case branch: argv is `case`, the word, the patterns."""
    at = 2
    for count in counts:
        yield at, int(count)
        at += int(count)


def _literal_only(text: str) -> None:
    # Evaluated by the host's bash: only vetted integers, variables and patterns, never a substitution.
    assert "`" not in text and "<(" not in text and not re.search(r"\$\((?!\()", text), text


def _bash_output(script: str, bindings: dict[str, str]) -> str:
    _literal_only(script)
    env = {"PATH": "/usr/bin:/bin", **bindings}
    return subprocess.run([BASH or "bash", "--noprofile", "--norc", "-c", script], capture_output=True, text=True,
                          env=env, timeout=10).stdout


def _bash_status(script: str, bindings: dict[str, str], sandbox: Sandbox) -> int:
    """The exit status of a [[ ]] or case, evaluated by bash in the sandbox's working directory
    (file tests see its files) with the loop variables bound."""
    _literal_only(script)
    env = {**sandbox.env(), "PATH": "/usr/bin:/bin", **bindings}
    return subprocess.run([BASH or "bash", "--noprofile", "--norc", "-c", script], capture_output=True, env=env,
                          cwd=sandbox.host_path(sandbox.work), timeout=10).returncode


def _arithmetic(expression: str, bindings: dict[str, str]) -> tuple[int, dict[str, str]]:
    """Status of (( expression )) and the variables it leaves (names of the expression only)."""
    names = sorted(set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expression)))
    shown = "".join(f'printf "%s=%s\\n" {n} "${{{n}}}"; ' for n in names)
    script = f"(( {expression} )); s=$?; {shown}exit $s"
    _literal_only(script)
    done = subprocess.run([BASH or "bash", "--noprofile", "--norc", "-c", script], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", **bindings}, timeout=10)
    updates = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return done.returncode, {k: v for k, v in updates.items() if v or k in bindings}


def _expected(analysis: ShellAnalysis, sandbox: Sandbox) -> list[Argv]:
    out = []
    for index, bindings in _started(analysis, sandbox):
        command = analysis.commands[index]
        if command.program is None or command.context in ("case", "conditional"):
            continue  # a redirection alone, such as $(< file), or the words of a case or [[ ]]
        if command.program.value in _KEPT_BUILTINS:
            continue  # bash runs it itself: nothing to log
        argv: list[str] = []
        for word in command.argv:
            argv.extend(_expand(word, sandbox, bindings))
        out.append(tuple(argv))
    return sorted(out)


def _globbed_as_dot_slash(analysis: ShellAnalysis) -> bool:
    """Bastion runs a word that starts with a glob as ./pattern (docs/shell.md): compare such runs with
    a leading ./ removed (a `for` loop's words reach its body through the loop variable)."""

    def loop_words(node: Node | None) -> Iterator[Word]:
        if node is not None:
            yield from node.words
            for item in node.items:
                yield from loop_words(item)

    words = [w for c in analysis.commands for w in c.argv] + list(loop_words(analysis.structure))
    return any(len(w.segments) > 1 and w.segments[0] == Segment(LIT, "./") and w.segments[1].kind == GLOB
               for w in words)


def _loose(argvs: list[Argv], dot_slash: bool) -> list[Argv]:
    if not dot_slash:
        return argvs
    return sorted((a[0], *(x[2:] if x.startswith("./") else x for x in a[1:])) for a in argvs)


def _show(argvs: list[Argv]) -> str:
    return "\n".join("    " + repr(list(a)) for a in argvs) or "    (nothing)"


def _param(title: str, text: str) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=GUARD_BUGS[title])] if title in GUARD_BUGS else []
    return pytest.param(title, text, id=title, marks=marks)


@pytest.mark.parametrize(("title", "text"), [_param(t, x) for t, x in ALL])
def test_bash_starts_what_the_guard_saw(sandbox: Sandbox, title: str, text: str) -> None:
    analysis, decision, rebuilt = vet_shell_text(Identity("golden"), POLICY, text)
    if not sandbox.isolated and _RISKY.search(text):
        pytest.skip("skipped by design: without user namespaces this text could reach a real program or path")
    ran = sandbox.run(text, _ALLOWED_TIMEOUT if decision.allowed else _DENIED_TIMEOUT)
    context = f"text: {text!r}\nguard: {decision.verdict.value} {list(decision.rules)}"
    if not decision.allowed:
        if analysis.error is not None or any(c.program is not None and not c.program.literal
                                             for c in analysis.commands):
            return
        named = {c.program.value for c in analysis.commands if c.program is not None}
        if named & _LAUNCHER_BUILTINS:
            return
        unseen = sorted(a for a in ran.argvs if a[0] not in named)
        assert not unseen, (f"bash started programs the guard's facts do not name\n{context}\n"
                            f"bash started, unseen by the guard:\n{_show(unseen)}\nfacts: {analysis.summary()}")
        return
    assert not ran.timed_out, f"bash timed out\n{context}"
    dot_slash = _globbed_as_dot_slash(analysis)
    expected = _expected(analysis, sandbox)
    problems = []
    if _loose(ran.argvs, dot_slash) != _loose(expected, dot_slash):
        problems.append(f"bash started:\n{_show(ran.argvs)}\nthe guard's facts say:\n{_show(expected)}")
    assert rebuilt is not None
    if "\x00" in rebuilt:
        problems.append(f"the rebuilt text holds a NUL byte, which bash cannot receive: {rebuilt!r}")
    else:
        again = sandbox.run(rebuilt, _ALLOWED_TIMEOUT)
        if _loose(again.argvs, dot_slash) != _loose(ran.argvs, dot_slash):
            problems.append(f"the rebuilt text {rebuilt!r} started:\n{_show(again.argvs)}\n"
                            f"the original started:\n{_show(ran.argvs)}")
    assert not problems, f"{context}\n" + "\n".join(problems)
