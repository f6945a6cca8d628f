"""The tree-sitter shell parser (issue 14 item 2): what it fails closed on, the constructs it decides,
and the arithmetic rule grounded in real bash.

Every text that should run a marker program runs only in a scratch directory (pytest's tmp_path),
with PATH=/usr/bin:/bin and the marker given by absolute path: it shows that the refused shape really
does execute code in bash, so the rule refuses something real.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bastion.policy import Identity
from bastion.policy.shell.analyze import analyse_shell
from bastion.policy.shell.decide import vet_shell_text
from bastion.policy.shell.presets import DEVELOPER, INSPECT
from bastion.policy.shell.rules import ShellPolicy, ShellRule
from tests.conftest import requirement

ME = Identity("agent")


def vet(text: str, rule: ShellRule = INSPECT, cwd: str = "/testbed") -> tuple[bool, tuple[str, ...], str, str | None]:
    analysis, decision, rebuilt = vet_shell_text(ME, ShellPolicy("t", (rule,), cwd), text)
    return decision.allowed, decision.rules, f"{decision.reason} / {decision.hint}", rebuilt


def bash(text: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "--noprofile", "--norc", "-c", text], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", **(env or {})}, timeout=20)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """A program that records that it ran (in the scratch directory only)."""
    program = tmp_path / "marker"
    program.write_text(f"#!/bin/sh\necho ran >> {tmp_path / 'ran.log'}\n")
    program.chmod(0o755)
    return program


# Shapes where bash evaluates a value as arithmetic, each with the environment and file it needs.
# {M} is the marker program; `payload` holds a[$(M)], the classic arithmetic injection.
ARITHMETIC_SHAPES = [
    ("(( )) of an assigned string", "x='a[$({M})]'; (( x )) && ls", {}),
    ("[[ -eq ]] of an assigned string", "x='a[$({M})]'; [[ $x -eq 1 ]] && ls", {}),
    ("$(( )) of an assigned string", "x='a[$({M})]'; echo $(( x ))", {}),
    ("(( )) over a loop of file contents", "for n in $(cat payload); do (( n > 1 )) && ls; done", {}),
    ("(( )) over read lines", "cat payload | while read -r n; do (( n > 1 )) && ls; done", {}),
    ("(( )) of an environment variable", "(( USER > 1 )) && ls", {"USER": "a[$({M})]"}),
    ("[[ -eq ]] of an environment variable", "[[ $USER -eq 1 ]] && ls", {"USER": "a[$({M})]"}),
    ("[[ -lt ]] of a command's output", "[[ $(cat payload) -lt 1 ]] && ls", {}),
    ("$(( )) of a command's output", "echo $(( $(cat payload) + 1 ))", {}),
    ("a bare name in [[ -gt ]]", "[[ x -gt 1 ]] && ls", {"x": "a[$({M})]"}),
    ("a loop variable set again inside the loop", "for n in 1 2; do (( n > 1 )) && ls; n=$(cat payload); (( n )); done", {}),
    ("a subshell's integer is gone after it", "(n=1); (( n > 0 )) && ls", {"n": "a[$({M})]"}),
]
GUARD_SHAPES = [
    ("let", "x='a[$({M})]'; let y=x", {}, "guard:arithmetic"),
    ("test -v with a subscript", "test -v 'a[$({M})]' && ls", {}, "guard:arithmetic"),
    ("[ -v ] with a subscript", "[ -v 'a[$({M})]' ] && ls", {}, "guard:arithmetic"),
    ("declare -i", "declare -i n; n='a[$({M})]'", {}, "guard:arithmetic"),
]


@requirement("shell:constructs")
@pytest.mark.parametrize(("title", "template", "env"), ARITHMETIC_SHAPES, ids=[s[0] for s in ARITHMETIC_SHAPES])
def test_arithmetic_over_values_the_text_did_not_give_runs_code_and_is_refused(
        tmp_path: Path, marker: Path, title: str, template: str, env: dict[str, str]) -> None:
    text = template.replace("{M}", str(marker))
    (tmp_path / "payload").write_text(f"a[$({marker})]\n")
    bash(text, tmp_path, {k: v.replace("{M}", str(marker)) for k, v in env.items()})
    assert (tmp_path / "ran.log").exists(), f"bash did not run the marker for {text!r}: the shape is not grounded"
    allowed, rules, why, _ = vet(text)
    assert not allowed and rules == ("guard:arithmetic",), why
    assert "arithmetic" in why and "integer" in why


@requirement("shell:constructs")
@pytest.mark.parametrize(("title", "template", "env", "rule"), GUARD_SHAPES, ids=[s[0] for s in GUARD_SHAPES])
def test_other_arithmetic_channels_run_code_and_are_refused(tmp_path: Path, marker: Path, title: str,
                                                            template: str, env: dict[str, str], rule: str) -> None:
    text = template.replace("{M}", str(marker))
    bash(text, tmp_path, env)
    assert (tmp_path / "ran.log").exists(), f"bash did not run the marker for {text!r}"
    allowed, rules, why, _ = vet(text, ShellRule("any", programs=frozenset({"let", "test", "[", "declare", "ls"}),
                                              allow_assignments=True))
    assert not allowed and rules == (rule,), why


# The refused texts' allowed neighbours: integers the text itself gave. Each runs rebuilt in real
# bash and prints what the agent's own text prints.
ARITHMETIC_NEIGHBOURS = [
    ("for n in 1 2 3; do (( n > 1 )) && echo big $n; done", "big 2\nbig 3\n"),
    ("for n in {1..4}; do [[ $n -eq 2 ]] && echo two $n; done", "two 2\n"),
    ("for n in 3 4; do echo $(( n * 2 )) \"$((n+1))\"; done", "6 4\n8 5\n"),
    ("(( k = 2 + 3 )); (( k > 4 )) && echo yes", "yes\n"),
    ("(( k = 1 )); (( k++ )); (( k == 2 )) && echo two", "two\n"),
    ("echo $(( 6 * 7 ))", "42\n"),
    ("[[ 10 -gt 9 ]] && echo gt", "gt\n"),
    ("for n in 1 2; do [[ $(( n % 2 )) -eq 0 ]] && echo even $n; done", "even 2\n"),
]


@requirement("shell:constructs", "shell:rebuild")
@pytest.mark.parametrize(("text", "expected"), ARITHMETIC_NEIGHBOURS)
def test_arithmetic_over_integers_the_text_gave_runs_the_same_rebuilt(tmp_path: Path, text: str,
                                                                      expected: str) -> None:
    allowed, _, why, rebuilt = vet(text)
    assert allowed and rebuilt is not None, why
    assert bash(text, tmp_path).stdout == bash(rebuilt, tmp_path).stdout == expected, rebuilt


# Fail closed: tree-sitter error and missing nodes, node kinds the walker does not handle, characters
# tree-sitter and bash read differently. Each refusal carries a hint.
FAIL_CLOSED = [
    ("echo $(ls", "guard:parse-error"),
    ("if true; then ls", "guard:parse-error"),
    ("ls |", "guard:parse-error"),
    ("ls )", "guard:parse-error"),
    ("ls\r\nrm -rf /", "guard:parse-error"),
    ("ls\fx", "guard:parse-error"),
    ("f() { ls; }; f", "guard:unsupported"),
    ("function f { ls; }", "guard:unsupported"),
    ("for ((i=0;i<3;i++)); do ls; done", "guard:unsupported"),
    ("select x in a; do ls; done", "guard:unsupported"),
    ("! ls | grep x", "guard:unsupported"),
    ("cat <<'A' | grep -c x; cat <<'B'\nx\nA\ny\nB", "guard:parse-error"),
    ("echo $[1+2]", "guard:arithmetic"),
    ("while read -r l; do echo $l; done < notes.txt", "guard:unsupported"),
    ("echo \"${x:-`ls`}\"", "guard:unsupported"),
    ("case x in (x) ls;; esac", "guard:unsupported"),
    ("[[ a =~ \"x\"$HOME ]]", "guard:unsupported"),
]


@requirement("shell:parse-error")
@pytest.mark.parametrize(("text", "rule"), FAIL_CLOSED)
def test_what_the_parser_cannot_vouch_for_is_refused_with_a_hint(text: str, rule: str) -> None:
    analysis = analyse_shell(text)
    allowed, rules, why, rebuilt = vet(text)
    assert not allowed and rebuilt is None and rules == (rule,), why
    assert analysis.error and analysis.error_hint, analysis


# The new constructs decided under inspect (verdict, rule).
DECIDED = [
    ("[[ -f setup.py ]] && cat setup.py", "inspect"),
    ("[[ -d src && ! -L src ]] || ls", "inspect"),
    ("[[ -f /etc/shadow ]] && echo yes", "inspect:path"),
    ("[[ -r ~/.ssh/id_rsa ]] && echo yes", "inspect:path"),
    ("[[ $(git rev-parse --abbrev-ref HEAD) == main ]] && git log -1", "inspect"),
    ("[[ $HOME == /home/* ]] && pwd", "inspect"),
    ("[[ $SECRET == x ]] && pwd", "inspect:expansion"),
    ("[[ main.py =~ ^ma(in|x)\\.py$ ]] && echo yes", "guard:unsupported"),
    ("[[ main.py =~ ^ma(in|x).py$ ]] && echo yes", "inspect"),
    ("case $(uname) in Linux) ls;; *) pwd;; esac", "inspect"),
    ("for f in *.py; do case $f in test_*) echo test $f;; *) wc -l $f;; esac; done", "inspect"),
    ("case x in x) rm -rf /;; esac", "inspect:program"),
    ("case x in x) ls ;& y) pwd;; esac", "guard:unsupported"),
    ("until false; do ls; done", "guard:rebuild"),
    ("while true; do ls; done", "guard:rebuild"),
    ("grep -c x <<< 'a x'", "inspect"),
    ("cat <<'EOF' | grep -n x\nx $(id) `id`\nEOF", "inspect"),
    ("cat <<EOF\n$(id)\nEOF", "guard:unsupported"),
    ("echo ${x:-$(rm -rf /)}", "inspect:program"),
    ("echo ${HOME:-$(pwd)}", "inspect:expansion"),
    ("echo $(ls\nls -la)", "inspect"),
    ("echo $(< README.md)", "inspect"),
    ("cd /testbed && grep -rn x . 2>&1 | head -5", "inspect"),
    ("ls a\\\nb", "inspect"),
    # A loop's words reach every argument through its variable: they are checked as paths too.
    ("for f in ~/.ssh/id_rsa; do cat $f; done", "inspect:path"),
    ("for f in *.py src/*.py; do wc -l $f; done", "inspect"),
]


@requirement("shell:constructs")
@pytest.mark.parametrize(("text", "rule"), DECIDED)
def test_new_constructs_are_parsed_and_decided(text: str, rule: str) -> None:
    allowed, rules, why, rebuilt = vet(text)
    assert rules == (rule,), why
    assert allowed == (rule == "inspect") and (rebuilt is not None) == allowed, why


def test_a_redirection_after_a_list_belongs_to_its_last_command() -> None:
    # tree-sitter hangs it on the whole list; bash gives it to the last command.
    analysis = analyse_shell("cd src && python -m pytest tests/ 2>&1 | tail -20")
    assert analysis.error is None
    assert [c.summary() for c in analysis.commands] == [
        {"argv": ["cd", "src"]}, {"argv": ["python", "-m", "pytest", "tests/"], "redirects": ["2>&1"]},
        {"argv": ["tail", "-20"]}]
    assert analysis.structure is not None and analysis.structure.kind == "list"
    assert [item.kind for item in analysis.structure.items] == ["command", "pipeline"]


def test_developer_writes_a_file_from_a_here_document_after_cd(tmp_path: Path) -> None:
    text = f"cd {tmp_path} && cat > notes.py << 'EOF'\nprint('$HOME')\nEOF"
    allowed, _, why, rebuilt = vet(text, DEVELOPER, str(tmp_path))
    assert allowed and rebuilt is not None, why
    bash(rebuilt, tmp_path)
    assert (tmp_path / "notes.py").read_text() == "print('$HOME')\n"
