"""What runs is rebuilt from the vetted structure: quoting round-trips, and the shape is kept."""

from __future__ import annotations

import random
import shlex
import subprocess
from pathlib import Path

import pytest

from bastion.policy.shell.analyze import analyse_shell
from bastion.policy.shell.rebuild import RebuildError, rebuild
from bastion.policy.shell.words import words
from tests.conftest import requirement

ALPHABET = "abc XYZ019-_./=:,@%+~#!?*[]{}()<>|&;$`'\"\\\t\n é→😀"


def random_argv(rng: random.Random) -> list[str]:
    return [rng.choice(["ls", "cat", "grep", "echo"])] + [
        "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12))) for _ in range(rng.randint(0, 5))]


@requirement("shell:rebuild", "shell:quoting")
def test_random_argv_lists_round_trip_through_analysis_and_rebuild() -> None:
    rng = random.Random(20261126)
    for _ in range(400):
        argv = random_argv(rng)
        analysis = analyse_shell(shlex.join(argv))
        assert analysis.error is None, (argv, analysis.error)
        (command,) = analysis.commands
        assert [w.value for w in command.argv] == argv and all(w.literal for w in command.argv)
        again = analyse_shell(rebuild(analysis))
        assert [w.value for w in again.commands[0].argv] == argv


@requirement("shell:rebuild")
def test_rebuilt_commands_print_the_same_words_under_real_bash() -> None:
    rng = random.Random(7)
    for _ in range(60):
        argv = ["printf", "%s\\0"] + (random_argv(rng)[1:] or ["x"])
        rebuilt = rebuild(analyse_shell(shlex.join(argv)))
        out = subprocess.run(["bash", "--noprofile", "--norc", "-c", rebuilt], capture_output=True, check=True).stdout
        assert out.decode().split("\0")[:-1] == argv[2:], rebuilt


@requirement("shell:ansi-c-quoting", "shell:brace-expansion", "shell:quoting")
@pytest.mark.parametrize(("word", "expected"), [
    ("r''m", ["rm"]), ('"r"m', ["rm"]), ("$'\\x72m'", ["rm"]), ("$'\\162m'", ["rm"]), ("$'\\u0072m'", ["rm"]),
    ("{rm,-rf,/}", ["rm", "-rf", "/"]), ("a{b,c}d", ["abd", "acd"]), ("x{1..3}", ["x1", "x2", "x3"]),
    ("{a,{b,c}}", ["a", "b", "c"]), ("'{a,b}'", ["{a,b}"]), ("a\\ b", ["a b"]), ("{x}", ["{x}"]),
])
def test_words_match_what_bash_makes_of_them(word: str, expected: list[str]) -> None:
    assert [w.value for w in words(word, 0, {})] == expected
    out = subprocess.run(["bash", "--noprofile", "--norc", "-c", f"printf '%s\\0' {word}"], capture_output=True, check=True)
    assert out.stdout.decode().split("\0")[:-1] == expected


def test_structure_is_rebuilt_with_its_operators() -> None:
    text = "( cd src && ls ) ; git log -3 | head\nwc -l x 2>&1"
    assert rebuild(analyse_shell(text)) == "( cd src && ls ) ; git log -3 | head\nwc -l x 2>&1"


def test_loops_other_than_for_in_are_not_rebuilt() -> None:
    for text in ("for f; do ls; done", "while true; do ls; done", "for PATH in /tmp; do ls; done",
                 "until false; do ls; done"):
        with pytest.raises(RebuildError):
            rebuild(analyse_shell(text))


@requirement("shell:heredoc")
@pytest.mark.parametrize("text", ["cat <<EOF\nx\nEOF", "cat <<'EOF'\n$(id) `id` $HOME \\n\nEOF\n",
                                  "cat <<-\"E\"\n\tq ' \"\n\tE\nwc -l <<\\X\nBASTION_EOF\nX",
                                  "cat <<'A' | grep -c x\nx\nA\ncat <<'B'\ny\nB", "grep -c b <<< 'a b'",
                                  "cat <<'A' | grep -c x && wc -l <<< y\nx\nA"])
def test_here_documents_deliver_the_same_bytes_rebuilt(tmp_path: Path, text: str) -> None:
    """The rebuilt here-document (always with a quoted delimiter of Bastion's) feeds the program the
    same bytes as the agent's text (run with bash and cat only, in a scratch directory)."""
    rebuilt = rebuild(analyse_shell(text))
    assert "<<'BASTION_EOF" in rebuilt or "<<<" in rebuilt
    runs = [subprocess.run(["bash", "--noprofile", "--norc", "-c", t], cwd=tmp_path, capture_output=True,
                           env={"PATH": "/usr/bin:/bin"}, timeout=10) for t in (text, rebuilt)]
    assert runs[0].returncode == 0 and runs[0].stdout == runs[1].stdout and runs[0].stderr == runs[1].stderr == b""


@requirement("shell:command-substitution")
def test_a_substitution_after_a_quoted_part_is_seen() -> None:
    # bashlex missed $(...) in a double-quoted part after a single-quoted one; bash would run it.
    analysis = analyse_shell("echo 'a '\"$(rm -rf /)\"' b'")
    assert analysis.error is None and [c.program.value for c in analysis.commands if c.program] == ["rm", "echo"]


@requirement("shell:heredoc")
def test_two_here_documents_on_one_line_are_refused_with_a_hint() -> None:
    # tree-sitter-bash cannot parse them: the parse fails closed and the hint says what passes.
    analysis = analyse_shell("cat <<'A' | grep -c x; cat <<'B'\nx\nA\ny\nB")
    assert analysis.error is not None and analysis.error_hint


def _random_operand(rng: random.Random) -> str:
    """A shell word for a pattern or an operand: pieces unquoted (glob characters live), single- or
    double-quoted (literal), or escaped."""
    pieces = []
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(5)
        text = "".join(rng.choice("ab.*?[]x-") for _ in range(rng.randint(1, 3)))
        if choice == 0:
            pieces.append("".join(c for c in text if c not in "[]") or "a")  # live globs, no brackets
        elif choice == 1:
            pieces.append(shlex.quote(text))
        elif choice == 2:
            pieces.append('"' + text + '"')
        elif choice == 3:
            pieces.append("\\" + text[0])
        else:
            pieces.append(rng.choice(["[ab]", "[!a]", "?", "*"]))
    return "".join(pieces)


@requirement("shell:rebuild", "shell:quoting")
def test_rebuilt_conditionals_and_cases_match_what_bash_makes_of_the_original(tmp_path: Path) -> None:
    """[[ ]] and case compare words with patterns, without globbing files or brace expansion: the
    rebuilt text (literals quoted by Bastion, globs left live) must take the same branches as the
    agent's text in real bash, for random mixes of quoted and unquoted pattern characters."""
    rng = random.Random(14)
    texts = []
    for _ in range(150):
        subject, pattern = _random_operand(rng), _random_operand(rng)
        texts.append(f"[[ {subject} == {pattern} ]] && echo y || echo n")
        texts.append(f"[[ {subject} != {pattern} && -n {subject} ]] && echo y || echo n")
        texts.append(f"case {subject} in {pattern}|{_random_operand(rng)}) echo y ;; *) echo n ;; esac")
    texts += ["[[ abc =~ ^a.c$ ]] && echo y || echo n", "[[ a.c =~ ^a(x|\\.)c$ ]] && echo y || echo n",
              "[[ b < c ]] && echo y || echo n", "[[ -f x || ! -e y ]] && echo y || echo n"]
    (tmp_path / "x").touch()
    checked = 0
    for text in texts:
        analysis = analyse_shell(text)
        if analysis.error is not None:
            continue  # refused with a reason (e.g. a regex with a backslash): nothing runs
        try:
            rebuilt = rebuild(analysis)
        except RebuildError:
            continue  # tree-sitter reads the rebuilt text otherwise: refused (guard:rebuild), nothing runs
        runs = [subprocess.run(["bash", "--noprofile", "--norc", "-c", t], cwd=tmp_path, capture_output=True,
                               env={"PATH": "/usr/bin:/bin"}, timeout=10) for t in (text, rebuilt)]
        assert runs[0].stdout == runs[1].stdout and runs[0].returncode == runs[1].returncode, (text, rebuilt)
        checked += 1
    assert checked >= 250, checked
