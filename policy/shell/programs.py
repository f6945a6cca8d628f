"""What Bastion knows about programs: which ones launch other programs, and per-program argument
checks. Each check takes the argument words and returns why it refuses them, or None.

Checks see words after quote removal and brace expansion; an argument that is not literal (a glob,
a variable) is checked by its written form, and option-like expansions are refused where options
are dangerous (see ``_no_dynamic_options``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

from bastion.policy.shell.words import GLOB, TILDE, Segment, Word

# Programs that run another program (or shell code) named in their arguments or input: never
# allowed through a rule's program list, because the program they run escapes it.
LAUNCHERS: dict[str, str] = {
    name: "runs another program from its arguments"
    for name in ("env", "nice", "timeout", "nohup", "sudo", "su", "doas", "runuser", "stdbuf", "setsid",
                 "watch", "time", "command", "builtin", "exec", "eval", "source", ".", "strace", "ltrace", "chroot",
                 "flock", "unshare", "nsenter", "ionice", "chrt", "taskset", "parallel", "script", "expect", "busybox",
                 "fakeroot", "systemd-run", "at", "batch", "crontab", "trap", "coproc")
}
# Pagers and editors: interactive shell escapes (!cmd, :!cmd).
LAUNCHERS.update({name: "is an interactive pager or editor with shell escapes"
                  for name in ("less", "more", "most", "pg", "vi", "vim", "nvim", "view", "ex", "ed", "nano", "emacs",
                               "pico", "joe", "mc", "man", "info", "lynx", "w3m")})

INTERPRETERS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "fish", "python", "python2", "python3",
                          "perl", "ruby", "node", "nodejs", "deno", "bun", "php", "lua", "luajit", "tclsh", "wish",
                          "Rscript", "R", "julia", "osascript", "pwsh", "powershell", "groovy", "scala", "jshell"})
_INLINE_CODE = frozenset({"-c", "-e", "-E", "--eval", "-r", "--command", "-x", "-p", "--print", "-i", "-s", "-", "-m"})

Check = Callable[[Sequence[Word]], "str | None"]


def _texts(args: Sequence[Word]) -> list[str]:
    return [a.value for a in args]


def _no_dynamic_options(args: Sequence[Word]) -> str | None:
    """A variable or substitution could expand to an option, and so could a glob written after a
    dash: refuse both where options are dangerous. (Globs starting with a pattern character are
    run as ./pattern, so they never expand to an option.)"""
    for arg in args:
        kinds = arg.expansions
        if kinds - {GLOB, TILDE}:
            return f"`{arg.value}` is expanded at run time and could become an option"
        if GLOB in kinds and arg.glob_option:
            return f"`{arg.value}` could match a file named like an option"
    return None


def _fixed_options(check: Check) -> Check:
    """``check``, after refusing any word that could become an option at run time (_no_dynamic_options)."""
    @functools.wraps(check)
    def checked(args: Sequence[Word]) -> str | None:
        return _no_dynamic_options(args) or check(args)

    return checked


def _before_end_of_options(args: Sequence[Word]) -> list[str]:
    """The words before `--`; after it every word is an operand."""
    texts = _texts(args)
    return texts[:texts.index("--")] if "--" in texts else texts


def _refuse_options(*refused: str) -> Check:
    """Refuse options by name, in every spelling: -x, -xVALUE, --long, --long=VALUE, abbreviated --lo."""
    shorts = {o for o in refused if len(o) == 2 and o.startswith("-")}
    longs = {o for o in refused if o.startswith("--")}

    @_fixed_options
    def check(args: Sequence[Word]) -> str | None:
        for text in _before_end_of_options(args):
            if text.startswith("--"):
                name = text.split("=", 1)[0]
                for long in longs:
                    if long == name or (len(name) > 3 and long.startswith(name)):
                        return f"option `{long}` is not allowed"
            elif text.startswith("-") and len(text) > 1:
                for short in shorts:
                    if short[1] in text[1:] and not text[1:].isdigit():
                        return f"option `{short}` is not allowed"
        return None

    return check


@_fixed_options
def _find(args: Sequence[Word]) -> str | None:
    """find: -exec/-execdir with a command (checked on its own, see ``embedded``); never -ok, -okdir,
    -delete, -fprint*, -fls."""
    for text in _texts(args):
        if text in ("-ok", "-okdir", "-delete", "-fprint", "-fprint0", "-fprintf", "-fls"):
            return f"`find {text}` asks interactively or changes files"
    return embedded("find", args)[1]


def embedded(name: str, args: Sequence[Word]) -> tuple[list[tuple[Word, ...]], str | None]:
    """The commands ``find -exec``/``-execdir`` and ``xargs`` run, as argv word lists, or why they
    cannot be read. The rule then checks each as if it were written on its own.

    >>> from bastion.policy.shell.words import words
    >>> argv = [w for part in "-name *.py -exec grep -l x {} +".split() for w in words(part, 0, {})]
    >>> [[w.value for w in c] for c in embedded("find", argv)[0]]
    [['grep', '-l', 'x', '{}']]
    """
    if name in ("find", "gfind"):
        out, i = [], 0
        while i < len(args):
            if args[i].value in ("-exec", "-execdir"):
                j = i + 1
                while j < len(args) and not (args[j].value == ";" or (args[j].value == "+" and args[j - 1].value == "{}")):
                    j += 1
                if j >= len(args) or j == i + 1:
                    return [], f"`find {args[i].value}` needs a command ended by `;` or `{{}} +`"
                out.append(tuple(args[i + 1 : j]))
                i = j
            i += 1
        return out, None
    if name == "xargs":
        return _xargs(args)
    return [], None


# xargs options (GNU findutils): which take a value, attached or as the next word.
_XARGS_VALUE = {"-a", "-d", "-E", "-I", "-L", "-n", "-P", "-s"}
_XARGS_OPTIONAL = {"-e", "-i", "-l"}  # a value only when attached
_XARGS_FLAGS = {"-0", "-r", "-t", "-x"}
_XARGS_LONG = {"--null": False, "--arg-file": True, "--delimiter": True, "--eof": False, "--replace": False,
               "--max-lines": False, "--max-args": True, "--max-procs": True, "--no-run-if-empty": False,
               "--max-chars": True, "--verbose": False, "--exit": False, "--show-limits": False}


def _xargs(args: Sequence[Word]) -> tuple[list[tuple[Word, ...]], str | None]:
    i = 0
    while i < len(args):
        arg = args[i]
        text = arg.value
        if not arg.literal:
            return [], f"`xargs {text}` is expanded at run time"
        if text == "--":
            i += 1
            break
        if not text.startswith("-") or text == "-":
            break
        if text.startswith("--"):
            name, eq, _ = text.partition("=")
            known = [o for o in _XARGS_LONG if o == name] or [o for o in _XARGS_LONG if o.startswith(name)]
            if len(known) != 1:
                return [], f"`xargs {name}` is not an option Bastion knows" + (" (it is interactive)" if "interactive" in name or "open-tty" in name else "")
            if _XARGS_LONG[known[0]] and not eq:
                i += 1
            i += 1
            continue
        j = 1
        while j < len(text):
            option = "-" + text[j]
            if option in _XARGS_VALUE:
                if j + 1 == len(text):
                    i += 1
                break
            if option in _XARGS_OPTIONAL:
                break
            if option not in _XARGS_FLAGS:
                return [], f"`xargs {option}` is not allowed" + (" (it is interactive)" if option in ("-p", "-o") else "")
            j += 1
        i += 1
    command = tuple(args[i:])
    return [command or (Word("echo", (Segment("lit", "echo"),)),)], None


_GIT_GLOBAL_REFUSED = ("-c", "--exec-path", "--config-env", "--git-dir", "--work-tree", "--namespace", "--super-prefix",
                      "--list-cmds")
_GIT_REFUSED = ("--output", "--ext-diff", "--exec", "--upload-pack", "--receive-pack", "--open-files-in-pager", "-O",
                "--textconv", "--run", "--extcmd", "--tool", "--no-index", "--output-directory")
# Read-only subcommands whose plain form lists, but which create, move or delete with other
# arguments: only these options pass, and names only where they are patterns.
_GIT_LISTING = {
    "branch": ({"-a", "--all", "-r", "--remotes", "-v", "-vv", "--verbose", "-l", "--list", "--show-current",
                "--merged", "--no-merged", "--contains", "--no-contains", "--points-at", "--sort", "--format",
                "--color", "--no-color", "--column", "--no-column", "--abbrev", "--no-abbrev", "-i", "--ignore-case",
                "--omit-empty"}, ("-l", "--list")),
    "tag": ({"-l", "--list", "-n", "--sort", "--format", "--contains", "--no-contains", "--merged", "--no-merged",
             "--points-at", "--color", "--column", "--no-column", "-i", "--ignore-case", "--omit-empty"},
            ("-l", "--list")),
    "remote": ({"-v", "--verbose"}, ()),
}
_GIT_VALUE_OPTIONS = {"--contains", "--no-contains", "--merged", "--no-merged", "--points-at", "--sort", "--format"}


def _git_listing(sub: str, args: Sequence[Word]) -> str | None:
    """`git branch`/`tag`/`remote` as listings only: `git branch -a`, `git tag -l 'v1*'`, `git remote -v`."""
    allowed, pattern_flags = _GIT_LISTING[sub]
    texts = _texts(args)
    listing = any(t in pattern_flags for t in texts)
    i = 0
    while i < len(texts):
        text = texts[i]
        name = text.split("=", 1)[0]
        if text.startswith("-"):
            if name not in allowed and not (sub == "tag" and re.fullmatch(r"-n\d*", text)):
                return (f"`git {sub} {text}` changes the repository; `git {sub}` passes only as a listing "
                        f"(`git {' '.join([sub, *pattern_flags[:1], '-v' if sub == 'remote' else ''])}`)".replace("  ", " ").replace(" `)", "`)"))
            if name in _GIT_VALUE_OPTIONS and "=" not in text and i + 1 < len(texts) and not texts[i + 1].startswith("-"):
                i += 1
        elif sub == "remote" and i == 0 and text in ("get-url", "show"):
            pass
        elif not listing and not (sub == "remote" and i > 0 and texts[0] in ("get-url", "show")):
            return (f"`git {sub} {text}` would create or change a {sub}; list with "
                    f"`git {sub} {'--list ' if pattern_flags else ''}{text if pattern_flags else '-v'}`")
        i += 1
    return None


def git(subcommands: frozenset[str]) -> Check:
    """git: only the named subcommands; no -c / --exec-path / --config-env, no options that run programs
    or write files (--output, --ext-diff, --textconv, --no-index, ...); branch, tag and remote as listings."""
    refused_global = _refuse_options(*_GIT_GLOBAL_REFUSED)
    refused_sub = _refuse_options(*_GIT_REFUSED)

    def check(args: Sequence[Word]) -> str | None:
        texts = _texts(args)
        i = 0
        while i < len(texts) and texts[i].startswith("-"):
            if texts[i] in ("-C",):
                i += 1  # its value
            i += 1
        why = refused_global(args[:i])
        if why:
            return f"git {why}"
        if i >= len(texts):
            return "git without a subcommand"
        if not args[i].literal:
            return "the git subcommand must be written literally"
        sub = texts[i]
        if sub not in subcommands:
            allowed = ", ".join(sorted(subcommands)) or "none"
            return f"`git {sub}` is not allowed (allowed: {allowed})"
        why = refused_sub(args[i + 1 :])
        if why:
            return f"git {sub}: {why}"
        if sub in _GIT_LISTING:
            return _git_listing(sub, args[i + 1 :])
        return None

    return check


def _long(name: str, options: dict[str, bool]) -> str | None:
    """A long option as getopt_long reads it: exact, or an unambiguous abbreviation."""
    if name in options:
        return name
    found = [o for o in options if o.startswith(name)]
    return found[0] if len(found) == 1 else None


def _programs_and_files(args: Sequence[Word], shorts_value: str, shorts_flag: str, longs: dict[str, bool],
                        program_options: tuple[str, ...], what: str,
                        file_options: tuple[str, ...]) -> tuple[list[str], str | None]:
    """Read sed- or awk-style options (getopt: clusters, attached values, long abbreviations, options
    after operands): the program texts given with ``program_options``, or the first operand."""
    programs: list[str] = []
    operands: list[str] = []
    texts = _texts(args)
    i = 0
    while i < len(texts):
        text = texts[i]
        if text == "--":
            operands += texts[i + 1 :]
            break
        if text.startswith("--"):
            name, eq, value = text.partition("=")
            option = _long(name, longs)
            if option is None:
                return [], f"`{what} {name}` is not an option Bastion accepts"
            if longs[option] and not eq:
                i += 1
                value = texts[i] if i < len(texts) else ""
            if option in program_options:
                programs.append(value)
            elif option in file_options:
                return [], f"{what} programs from files cannot be checked"
        elif text.startswith("-") and len(text) > 1:
            for j, letter in enumerate(text[1:], 1):
                option = "-" + letter
                if letter in shorts_value:
                    value = text[j + 1 :]
                    if not value:
                        i += 1
                        value = texts[i] if i < len(texts) else ""
                    if option in program_options:
                        programs.append(value)
                    elif option in file_options:
                        return [], f"{what} programs from files cannot be checked"
                    break
                if letter not in shorts_flag:
                    return [], f"`{what} {option}` is not an option Bastion accepts"
        else:
            operands.append(text)
        i += 1
    if not programs:
        if not operands:
            return [], f"{what} without a program"
        programs.append(operands[0])
    return programs, None


_SED_LONG = {"--expression": True, "--file": True, "--quiet": False, "--silent": False, "--regexp-extended": False,
             "--separate": False, "--unbuffered": False, "--null-data": False, "--zero-terminated": False,
             "--line-length": True, "--posix": False, "--debug": False, "--sandbox": False,
             "--follow-symlinks": False, "--in-place": False, "--binary": False, "--help": False, "--version": False}


def sed(write: bool = False) -> Check:
    """sed: print-only scripts (policy.shell.sed): never e, w, W, r, R or s///e, s///w however spelled;
    no -i (in place) unless ``write``; no scripts from files."""

    @_fixed_options
    def check(args: Sequence[Word]) -> str | None:
        for text in _before_end_of_options(args):
            in_place = (text.startswith("--") and _long(text.split("=", 1)[0], _SED_LONG) == "--in-place") or \
                (text.startswith("-") and not text.startswith("--") and "i" in text[1:].split("e", 1)[0].split("l", 1)[0])
            if in_place and not write:
                return "`sed -i` edits files in place"
        programs, why = _programs_and_files(args, "efl", "nrEsuzi", _SED_LONG, ("-e", "--expression"), "sed",
                                             ("-f", "--file"))
        if why:
            return why
        from bastion.policy.shell.sed import refusal

        return refusal("\n".join(programs), write=write)

    return check


_sed = sed()

_AWK_LONG = {"--assign": True, "--field-separator": True, "--file": True, "--source": True, "--include": True,
             "--load": True, "--exec": True, "--characters-as-bytes": False, "--posix": False,
             "--traditional": False, "--re-interval": False, "--sandbox": False, "--lint": False, "--bignum": False,
             "--use-lc-numeric": False, "--non-decimal-data": False, "--optimize": False, "--no-optimize": False,
             "--csv": False, "--version": False, "--help": False}


@_fixed_options
def _awk(args: Sequence[Word]) -> str | None:
    """awk: programs without system(), pipes, output redirection, command getline or indirect calls
    (policy.shell.awk); no program files (-f, --include, --load, --exec)."""
    programs, why = _programs_and_files(args, "vFfeilE", "bcCOPrsStMN", _AWK_LONG, ("-e", "--source"), "awk",
                                        ("-f", "-i", "-l", "-E", "--file", "--include", "--load", "--exec"))
    if why:
        return why
    from bastion.policy.shell.awk import refusal

    for program in programs:
        why = refusal(program)
        if why:
            return why
    return None


def _ssh(args: Sequence[Word]) -> str | None:
    """ssh: no -o ProxyCommand/LocalCommand/PermitLocalCommand, no -F config files."""
    for i, text in enumerate(_texts(args)):
        option = text[2:] if text.startswith("-o") and len(text) > 2 else (args[i + 1].value if text == "-o" and i + 1 < len(args) else "")
        if re.match(r"\s*(ProxyCommand|LocalCommand|PermitLocalCommand|ProxyJump|KnownHostsCommand)", option, re.I):
            return "ssh options that run local commands are not allowed"
        if text.startswith("-F"):
            return "ssh config files cannot be checked"
    return None


# Options that give an interpreter its program inline, from stdin, or as a module to run.
_INLINE_LETTERS = frozenset("cepmrsM")
_INLINE_LONG = ("--eval", "--print", "--command", "--exec", "--require", "--import", "--loader", "--input-type",
                "--module", "--interactive", "--expression", "--code")


def _interpreter(args: Sequence[Word]) -> str | None:
    """Interpreters run a script file only: no inline code in any spelling (-c, -Ic, -xc, -ne, -pe,
    --eval ...), no program from stdin (`-`, /dev/stdin, /dev/fd/0, /proc/self/fd/0) and no -m module.
    A connection that wants more names the exact command (`python -m pytest`, see ShellRule.programs)."""
    texts = _texts(args)
    if texts in (["--version"], ["-V"], ["--help"], ["-h"]):
        return None
    for text in texts:
        if text == "--":
            break
        if text.startswith("--"):
            if text.split("=", 1)[0].startswith(_INLINE_LONG):
                return f"inline code (`{text}`) is not allowed; run a script file"
            continue
        if text == "-":
            return "an interpreter reading its program from stdin is not allowed"
        if text.startswith("-") and set(text[1:]) & _INLINE_LETTERS:
            return f"inline code or a module (`{text}`) is not allowed; run a script file"
        if not text.startswith("-"):
            if re.match(r"/dev/|/proc/", text):
                return f"an interpreter reading its program from `{text}` is not allowed"
            return None
    return "an interpreter reading its program from stdin is not allowed"


def _ps(args: Sequence[Word]) -> str | None:
    """ps: no BSD-style `e` (it prints other processes' environments, which hold secrets)."""
    for text in _texts(args):
        if text.startswith("--"):
            continue
        # procps reads `-aux`, `-auxe` BSD-style: an `e` anywhere but first after the dash (UNIX -e,
        # every process) may print environments.
        if "e" in text and not (text.startswith("-e") and "e" not in text[2:]):
            return "`ps e` prints process environments, which hold secrets"
    return None



_TAR_OPTIONS = _refuse_options("--checkpoint-action", "--to-command", "--use-compress-program", "-I", "--rsh-command",
                               "--info-script", "-F", "--new-volume-script", "--index-file", "-C", "--directory",
                               "-P", "--absolute-names")


def _tar(args: Sequence[Word]) -> str | None:
    """tar: nothing that runs programs, and no extracting outside the working directory (-C, -P).
    Old-style bundles (`tar xfC a.tar dir`) are read as the options they are."""
    if args and args[0].literal and not args[0].value.startswith("-"):
        first = args[0]
        args = [Word(first.source, tuple(Segment(s.kind, "-" + s.text if i == 0 else s.text, s.quoted)
                                          for i, s in enumerate(first.segments))), *args[1:]]
    return _TAR_OPTIONS(args)


def _rm(args: Sequence[Word]) -> str | None:
    """rm: never the root, the home directory, `.` or `..`, and never --no-preserve-root."""
    for arg in args:
        text = arg.value.rstrip("/") or "/"
        if text in ("/", "/*", "~", ".", "..", "*") or arg.value == "--no-preserve-root" or \
                (arg.expansions and text.startswith("/") and text.count("/") == 1):
            return f"`rm {arg.value}` would remove far more than a file"
    return None
_RG = _refuse_options("--pre", "--pre-glob", "--search-zip", "-z")
_SORT = _refuse_options("--compress-program", "-o", "--output", "-T", "--temporary-directory")

def _operands(args: Sequence[Word]) -> list[str]:
    texts, out, dash = _texts(args), [], False
    for text in texts:
        if dash or not text.startswith("-") or text == "-":
            out.append(text)
        elif text == "--":
            dash = True
    return out


@_fixed_options
def _uniq(args: Sequence[Word]) -> str | None:
    """uniq INPUT OUTPUT writes OUTPUT: one operand at most."""
    if len(_operands(args)) > 1:
        return "`uniq INPUT OUTPUT` writes OUTPUT; pipe instead: `uniq INPUT > /dev/null` is not needed, `uniq INPUT` prints"
    return None


def _printf(args: Sequence[Word]) -> str | None:
    """printf: no -v (it assigns a shell variable, PATH included)."""
    texts = _texts(args)
    if args and not args[0].literal:
        return f"`printf {texts[0]}` is expanded at run time and could become `-v` (which assigns a shell variable)"
    if texts and texts[0].startswith("-v"):
        return "`printf -v` assigns a shell variable"
    return None


@_fixed_options
def _xargs_check(args: Sequence[Word]) -> str | None:
    return _xargs(args)[1]


CHECKS: dict[str, Check] = {
    "xargs": _xargs_check,
    "uniq": _uniq,
    "printf": _printf,
    "tree": _refuse_options("-o", "--fromfile"),
    "file": _refuse_options("-C", "--compile"),
    "date": _refuse_options("-s", "--set"),
    "find": _find,
    "awk": _awk, "gawk": _awk, "mawk": _awk, "nawk": _awk,
    "sed": _sed, "gsed": _sed,
    "ssh": _ssh,
    "tar": _tar, "gtar": _tar, "bsdtar": _tar,
    "gfind": _find,
    "rm": _rm,
    "rg": _RG,
    "sort": _SORT,
    "ps": _ps,
}

RECURSIVE_READERS = {"grep": ("-r", "-R", "--recursive", "--dereference-recursive"),
                     "egrep": ("-r", "-R", "--recursive"), "fgrep": ("-r", "-R", "--recursive"),
                     "rg": ("",), "ag": ("",), "diff": ("-r", "--recursive")}
# Programs that walk the trees they are given and may run a command on every file in them (find
# -exec): the trees are judged like a recursive search's. (Their listing piped on is judged where it
# is read: policy.shell.lines.)
TREE_WALKERS = frozenset({"find", "gfind"})


def reads_recursively(name: str, args: Sequence[Word]) -> bool:
    """Whether grep (or rg, ag, diff) searches directories, in every spelling getopt accepts: -r, -R,
    -rn, --rec, --dereference-r, -d recurse, -drec, --dir=rec, --directories recurse."""
    return recursive_texts(name, _texts(args))


def recursive_texts(name: str, texts: Sequence[str]) -> bool:
    """reads_recursively for argument texts (one possible value of each word)."""
    flags = RECURSIVE_READERS.get(name)
    if flags is None:
        return False
    if flags == ("",):
        return True
    for i, text in enumerate(texts):
        name_, eq, value = text.partition("=")
        if len(name_) > 3 and ("--recursive".startswith(name_) or "--dereference-recursive".startswith(name_)):
            return True
        if len(name_) > 3 and "--directories".startswith(name_):
            value = value if eq else (texts[i + 1] if i + 1 < len(texts) else "")
            if value and "recurse".startswith(value):
                return True
        if text.startswith("-d") and not text.startswith("--"):
            value = text[2:] or (texts[i + 1] if i + 1 < len(texts) else "")
            if value and "recurse".startswith(value):
                return True
    return any(t in flags or (t.startswith("-") and not t.startswith("--") and ("r" in t[1:] or "R" in t[1:]))
               or t in ("--directories=recurse", "-drecurse") or (t == "-d" and "recurse" in texts[i + 1 : i + 2])
               for i, t in enumerate(texts))
for _name in INTERPRETERS:
    CHECKS[_name] = _interpreter


def start_points(args: Sequence[Word]) -> list[Word]:
    """The trees find walks: the words before its expression (after -H, -L, -P, -D X, -OLEVEL)."""
    i = 0
    while i < len(args) and (args[i].value in ("-H", "-L", "-P", "-D") or re.fullmatch(r"-O[0-9]*", args[i].value)):
        i += 2 if args[i].value == "-D" else 1
    out = []
    for word in args[i:]:
        if word.value.startswith(("-", "(", "!", ")")) or word.value == ",":
            break
        out.append(word)
    return out
