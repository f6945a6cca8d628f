"""Built-in shell presets, documented exactly in docs/policy.md (tests/test_docs.py keeps them in step).

Measured on real agent traffic by tests/bench/bench_shell_presets.py. The kernel sandbox
(tools/executors/sandbox.py) is the boundary; these say what agents may intend.
"""

from __future__ import annotations

from dataclasses import replace

from bastion.policy.shell.rules import ShellRule

# Read-only inspection: reading, searching and summarising files and the repository's history.
INSPECT_PROGRAMS = frozenset({
    "cd", "pwd", "ls", "cat", "head", "tail", "grep", "egrep", "fgrep", "rg", "find", "xargs", "sed", "awk", "sort",
    "uniq", "cut", "tr", "nl", "wc", "diff", "cmp", "comm", "stat", "file", "tree", "du", "df", "ps", "uname", "date",
    "which", "id", "whoami", "git", "echo", "printf", "true", "false", "test", "basename", "dirname", "realpath",
    "readlink", "tac", "column", "paste", "seq", "md5sum", "sha1sum", "sha256sum", "[", "type", "jq",
})
INSPECT_GIT = frozenset({"status", "log", "diff", "show", "blame", "branch", "tag", "rev-parse", "ls-files", "grep",
                         "remote", "describe", "shortlog"})

INSPECT = ShellRule(
    id="inspect",
    preset="inspect",
    programs=INSPECT_PROGRAMS,
    git_subcommands=INSPECT_GIT,
    # Here-documents and here-strings as input: rebuilt with a quoted delimiter, nothing in them expands;
    # `for name in WORDS; do ...; done` and `... | while read name; do ...; done` with lower-case names
    # (other while and until loops are parsed and checked, then refused at the rebuild with the reason),
    # `if`, `case` (each branch checked), `[[ ]]` and arithmetic (only integers the text itself gave:
    # policy.shell.arithmetic). policy.shell.analyze: for_loop, while_loop, if_clause, case, test.
    constructs=frozenset({"subshell", "group", "command-substitution", "heredoc", "herestring", "for", "if",
                          "while", "until", "case", "conditional", "arithmetic"}),
    redirects="read",
    write_paths=("/dev/null",),
)

# inspect plus writing inside the workspace (relative write paths are relative to it). Not /tmp: on an
# SSH host it is the host's own, shared /tmp (the local sandbox's is private; write there with a path
# inside the workspace instead).
DEVELOPER_PROGRAMS = INSPECT_PROGRAMS | frozenset({"mkdir", "touch", "cp", "mv", "rm", "rmdir", "tee", "patch"})
# No git writes (add, commit, checkout, ...): in the local sandbox a repository's git dir is read-only, so
# hooks and config cannot be planted there for the host's own git later. `git apply` writes the work tree.
# A rule may name more subcommands for an SSH host or an unsandboxed connection.
DEVELOPER_GIT = INSPECT_GIT | frozenset({"apply"})

DEVELOPER = replace(INSPECT, id="developer", preset="developer", programs=DEVELOPER_PROGRAMS,
                    git_subcommands=DEVELOPER_GIT, redirects="write", write_paths=("/dev/null", "*"))

SHELL_PRESETS: dict[str, ShellRule] = {"inspect": INSPECT, "developer": DEVELOPER}


def developer(programs: frozenset[str]) -> ShellRule:
    """``developer`` plus the build and test commands the config names: a bare program name
    (`make`) or an exact command prefix (`python -m pytest`, `npm test`). Interpreters run only as
    named: naming `python3` allows `python3 script.py`, never `python3 -c`."""
    return replace(DEVELOPER, programs=DEVELOPER.programs | programs)
