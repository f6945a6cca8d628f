"""What Bastion knows about programs: which ones launch other programs, and per-program argument
checks. Each check takes the argument words and returns why it refuses them, or None.

Checks see words after quote removal and brace expansion; an argument that is not literal (a glob,
a variable) is checked by its written form, and option-like expansions are refused where options
are dangerous (see ``_no_dynamic_options``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from bastion.policy.shell.words import GLOB, TILDE, Segment, Word

# Programs that run another program (or shell code) named in their arguments or input: never
# allowed through a rule's program list, because the program they run escapes it.
LAUNCHERS: dict[str, str] = {
    name: "runs another program from its arguments"
    for name in ("xargs", "env", "nice", "timeout", "nohup", "sudo", "su", "doas", "runuser", "stdbuf", "setsid",
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
        if GLOB in kinds and arg.value.startswith("-"):
            return f"`{arg.value}` could match a file named like an option"
    return None


def _refuse_options(*refused: str) -> Check:
    """Refuse options by name, in every spelling: -x, -xVALUE, --long, --long=VALUE, abbreviated --lo."""
    shorts = {o for o in refused if len(o) == 2 and o.startswith("-")}
    longs = {o for o in refused if o.startswith("--")}

    def check(args: Sequence[Word]) -> str | None:
        dynamic = _no_dynamic_options(args)
        if dynamic:
            return dynamic
        for text in _texts(args):
            if text == "--":
                break
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


def _find(args: Sequence[Word]) -> str | None:
    """find: never -exec, -execdir, -ok, -okdir, -delete, -fprint*, -fls."""
    dynamic = _no_dynamic_options(args)
    if dynamic:
        return dynamic
    for text in _texts(args):
        if text in ("-exec", "-execdir", "-ok", "-okdir", "-delete", "-fprint", "-fprint0", "-fprintf", "-fls"):
            return f"`find {text}` runs programs or changes files"
    return None


_GIT_GLOBAL_REFUSED = ("-c", "--exec-path", "--config-env", "--git-dir", "--work-tree", "--namespace", "--super-prefix")
_GIT_REFUSED = ("--output", "--ext-diff", "--exec", "--upload-pack", "--receive-pack", "--open-files-in-pager", "-O",
                "--textconv", "--run", "--extcmd", "--tool")


def git(subcommands: frozenset[str]) -> Check:
    """git: only the named subcommands; no -c / --exec-path / --config-env, no options that run programs."""
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
        return f"git {sub}: {why}" if why else None

    return check


def _awk(args: Sequence[Word]) -> str | None:
    """awk: no system(), no pipes or redirection to commands/files, no -f program files."""
    dynamic = _no_dynamic_options(args)
    if dynamic:
        return dynamic
    for text in _texts(args):
        if text in ("-f", "--file", "-E", "--exec") or text.startswith(("-f", "--file=")):
            return "awk programs from files cannot be checked"
        if re.search(r"system\s*\(|\|\s*getline|\|&|\bprint[f]?\b[^;{}]*[>|]|close\s*\(|fflush", text):
            return "awk programs that run commands or write files are not allowed"
        if re.search(r"getline[^;{}]*<", text):
            return "awk programs that read files by name (getline < file) are not allowed"
    return None


def _sed(args: Sequence[Word]) -> str | None:
    """sed: no -i (in-place), no e/w/W commands or s///e, s///w flags."""
    dynamic = _no_dynamic_options(args)
    if dynamic:
        return dynamic
    for text in _texts(args):
        if text.startswith(("-i", "--in-place")) or (text.startswith("-") and not text.startswith("--") and "i" in text[1:]):
            return "`sed -i` edits files in place"
        if text in ("-f", "--file") or text.startswith("--file="):
            return "sed scripts from files cannot be checked"
        script = text[2:] if text.startswith("-e") else text.split("=", 1)[1] if text.startswith("--expression=") else \
            None if text.startswith("-") else text
        if script is not None and re.search(r"(^|[;\n{}]|\d|\$|/)\s*[ewWrR]\b|/[gpIiMm0-9]*[ew]", script):
            return "sed commands that run programs or read/write files (e, w, r) are not allowed"
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


def _interpreter(args: Sequence[Word]) -> str | None:
    """Interpreters run a script file only: no inline code (-c, -e ...) and no program on stdin."""
    texts = _texts(args)
    for text in texts:
        if text in _INLINE_CODE or text.startswith(("-c", "-e", "--eval")):
            return f"inline code (`{text}`) is not allowed; run a script file"
    if not any(not t.startswith("-") for t in texts):
        return "an interpreter reading its program from stdin is not allowed"
    return None


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

CHECKS: dict[str, Check] = {
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
                     "rg": ("",), "ag": ("",)}


def reads_recursively(name: str, args: Sequence[Word]) -> bool:
    flags = RECURSIVE_READERS.get(name)
    if flags is None:
        return False
    if flags == ("",):
        return True
    texts = _texts(args)
    return any(t in flags or (t.startswith("-") and not t.startswith("--") and ("r" in t[1:] or "R" in t[1:]))
               or t in ("--directories=recurse", "-drecurse") or (t == "-d" and "recurse" in texts[i + 1 : i + 2])
               for i, t in enumerate(texts))
for _name in INTERPRETERS:
    CHECKS[_name] = _interpreter
