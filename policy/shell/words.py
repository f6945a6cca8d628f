"""One bash word → segments, after quote removal, with every expansion marked.

tree-sitter-bash gives the structure (commands, operators, where substitutions start and end); this
lexer reads each word's own source text the way bash does (ANSI-C quoting such as $'\\x72m', globs,
braces, tildes), so the rules judge the words bash would make. Brace expansion is done here, statically, as bash does it
before anything else, so rules see the words bash would run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import product

from bastion.policy.shell.parameter import Expansion
from bastion.policy.shell.parameter import parse as parse_parameter

# Segment kinds. "lit" is literal text after quote removal; the rest are expansions bash performs.
LIT, GLOB, TILDE, PARAM, PARAM_COMPLEX, CMDSUB, PROCSUB, ARITH = (
    "lit", "glob", "tilde", "param", "param-complex", "command-substitution", "process-substitution", "arithmetic")
PARAM_OP = "param-op"  # ${x:-w}, ${f%.py}, ${#x} ...: an operator policy.shell.parameter reads
_BRACE = "brace"  # unquoted { , } : resolved by expand_braces, never left in a Word

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPECIAL_PARAMS = set("@*#?-$!0123456789")


@dataclass(frozen=True)
class Segment:
    kind: str
    text: str  # lit: the literal text; param: the name; param-op, param-complex: the raw ${...} body;
    # substitutions: the inner source
    quoted: bool = False
    start: int = -1  # absolute offset of a substitution in the whole command text (to find its parse)


@dataclass(frozen=True)
class Word:
    source: str
    segments: tuple[Segment, ...]
    ansi_c: bool = False  # written with $'...' quoting somewhere
    dot_slash: bool = False  # Bastion put ./ before its leading glob (the agent wrote `*.py`, it runs `./*.py`)

    @property
    def literal(self) -> bool:
        return all(s.kind == LIT for s in self.segments)

    @property
    def value(self) -> str:
        """The word's text with expansions shown as written (exact when ``literal``)."""
        return "".join(s.text if s.kind in (LIT, GLOB, TILDE) else f"${{{s.text}}}" if s.kind in (PARAM, PARAM_OP) else "…"
                       for s in self.segments)

    @property
    def expansions(self) -> frozenset[str]:
        return frozenset(s.kind for s in self.segments if s.kind != LIT)

    @property
    def glob_option(self) -> bool:
        """Whether pathname expansion could turn this word into a different option: it starts with `-`
        and a glob comes before any `=` (`-*`, `--out*`; not `--include=*.py`, whose matches are the
        same option with another value)."""
        head: list[str] = []
        for segment in self.segments:
            if segment.kind == GLOB:
                text = "".join(head)
                return text.startswith("-")
            if segment.kind != LIT:
                return False
            head.append(segment.text)
            if "=" in segment.text:
                return False
        return False

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(s.text for s in self.segments if s.kind in (PARAM, PARAM_OP, PARAM_COMPLEX))


class WordError(ValueError):
    pass


class BudgetError(WordError):
    """The text would make more words, bytes or work than one command may (a brace bomb)."""


class Budget:
    """What expanding one command text may cost: words made by brace expansion, their total size, and
    wall time. Exceeding any refuses the text (``BudgetError``) instead of stalling the gateway.

    >>> budget = Budget(words=3)
    >>> for _ in range(4): budget.spend(1)
    Traceback (most recent call last):
    ...
    bastion.policy.shell.words.BudgetError: brace expansion makes more than 3 words; write the words out
    """

    def __init__(self, words: int = 10_000, size: int = 1_000_000, seconds: float = 2.0) -> None:
        import time

        # CPU time of this thread, not wall time: a busy machine must not refuse an ordinary text.
        self.words, self.size, self._clock = words, size, time.thread_time
        self.deadline = self._clock() + seconds
        self.seconds = seconds
        self.made = 0
        self.bytes = 0

    def spend(self, segments: int, text: int = 0) -> None:
        self.made += 1
        self.bytes += text + segments
        if self.made > self.words:
            raise BudgetError(f"brace expansion makes more than {self.words:,} words; write the words out")
        if self.bytes > self.size:
            raise BudgetError(f"the expanded command is larger than {self.size:,} bytes; send a shorter command")
        if self._clock() > self.deadline:
            raise BudgetError(f"analysing the command took more than {self.seconds:g} s of CPU; send a simpler command")

    def tick(self) -> None:
        if self._clock() > self.deadline:
            raise BudgetError(f"analysing the command took more than {self.seconds:g} s of CPU; send a simpler command")


_UNLIMITED = Budget(words=10**12, size=10**15, seconds=10**9)


_ANSI_SIMPLE = {"a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
                "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?"}


def _ansi_c(src: str, i: int) -> tuple[str, int]:
    """Decode $'...' starting after the opening quote at ``i``; returns (text, index after the close)."""
    out: list[str] = []
    while i < len(src):
        c = src[i]
        if c == "'":
            # bash keeps a C string: a decoded NUL ends it (the rest of $'...' is dropped).
            return "".join(out).split("\x00", 1)[0], i + 1
        if c != "\\" or i + 1 >= len(src):
            out.append(c)
            i += 1
            continue
        n = src[i + 1]
        if n in _ANSI_SIMPLE:
            out.append(_ANSI_SIMPLE[n])
            i += 2
        elif n == "x":
            m = re.match(r"[0-9A-Fa-f]{1,2}", src[i + 2 :])
            out.append(chr(int(m.group(), 16)) if m else "\\x")
            i += 2 + (len(m.group()) if m else 0)
        elif n in "uU":
            m = re.match(r"[0-9A-Fa-f]{1,%d}" % (4 if n == "u" else 8), src[i + 2 :])
            out.append(chr(int(m.group(), 16)) if m else "\\" + n)
            i += 2 + (len(m.group()) if m else 0)
        elif n in "01234567":
            digits = re.match(r"[0-7]{1,3}", src[i + 1 :])
            assert digits is not None  # n, the first character there, is an octal digit
            out.append(chr(int(digits.group(), 8) & 0xFF))
            i += 1 + len(digits.group())
        elif n == "c":
            raise WordError("control-character escapes ($'\\c...') are not accepted")
        else:
            out.append("\\" + n)
            i += 2
    raise WordError("unterminated $'...' quoting")


def lex(src: str, offset: int, subs: dict[int, tuple[int, str]]) -> list[tuple[str, str, bool, int]]:
    """Raw tokens (kind, text, quoted, abs_start) of one word. ``subs`` maps the absolute start of each
    command/process substitution, arithmetic and ${...} expansion the parser found to (absolute end, kind)."""
    out: list[tuple[str, str, bool, int]] = []
    i, n = 0, len(src)
    ansi = False
    bracket = False
    # bash expands ~ after = and : in words that look like assignments (a=~/x, PATH=~/bin:~/b).
    assignment_like = re.match(r"[A-Za-z_][A-Za-z0-9_]*=", src) is not None

    def lit(text: str, quoted: bool) -> None:
        out.append((LIT, text, quoted, -1))

    def substitution(at: int, quoted: bool) -> int:
        end, kind = subs[offset + at]
        rel_end = end - offset
        if kind == ARITH:
            out.append((kind, src[at + 3 : rel_end - 2], quoted, offset + at))
            return rel_end
        opener = 1 if src[at] == "`" else 2
        out.append((kind, src[at + opener : rel_end - 1], quoted, offset + at))
        return rel_end

    def parameter(at: int, quoted: bool) -> int:
        """$name, ${name}, $1, $@ ... or a complex ${...}; returns the index after it."""
        if src.startswith("${", at):
            if offset + at in subs:  # the parser's end: a ${...} may hold quotes, braces, substitutions
                close = subs[offset + at][0] - offset - 1
            else:
                close = src.find("}", at + 2)
            if close < 0 or src[close] != "}":
                raise WordError("unterminated ${...}")
            body = src[at + 2 : close]
            if offset + at not in subs and ("$(" in body or "`" in body):
                raise WordError("a substitution inside ${...} is not accepted")
            kind = PARAM if _NAME.fullmatch(body) else \
                PARAM_OP if isinstance(parse_parameter(body, quoted), Expansion) else PARAM_COMPLEX
            out.append((kind, body, quoted, -1))
            return close + 1
        m = _NAME.match(src, at + 1)
        if m:
            out.append((PARAM, m.group(), quoted, -1))
            return m.end()
        out.append((PARAM_COMPLEX, src[at + 1], quoted, -1))
        return at + 2

    while i < n:
        c = src[i]
        if c == "\\":
            if i + 1 < n and src[i + 1] != "\n":
                lit(src[i + 1], True)
            i += 2
        elif c == "'":
            close = src.find("'", i + 1)
            if close < 0:
                raise WordError("unterminated '...' quoting")
            lit(src[i + 1 : close], True)
            i = close + 1
        elif src.startswith("$'", i):
            text, i = _ansi_c(src, i + 2)
            ansi = True
            lit(text, True)
        elif offset + i in subs and not src.startswith("${", i):
            i = substitution(i, False)
        elif src.startswith("$((", i) or src.startswith("$[", i):
            raise WordError("arithmetic expansion is not accepted")
        elif src.startswith("$(", i) or c == "`" or (c in "<>" and src.startswith("(", i + 1)):
            raise WordError("a substitution the parser did not recognise is not accepted")
        elif c == "$" and i + 1 < n and (src[i + 1] in "{_" or src[i + 1].isalnum() or src[i + 1] in _SPECIAL_PARAMS):
            i = parameter(i, False)
        elif src.startswith('$"', i) or c == '"':
            i += 2 if c == "$" else 1
            while True:
                if i >= n:
                    raise WordError('unterminated "..." quoting')
                d = src[i]
                if d == '"':
                    i += 1
                    break
                if d == "\\" and i + 1 < n and src[i + 1] in '$`"\\\n':
                    if src[i + 1] != "\n":
                        lit(src[i + 1], True)
                    i += 2
                elif offset + i in subs and not src.startswith("${", i):
                    i = substitution(i, True)
                elif src.startswith("$((", i) or src.startswith("$[", i):
                    raise WordError("arithmetic expansion is not accepted")
                elif src.startswith("$(", i) or d == "`":
                    raise WordError("a substitution the parser did not recognise is not accepted")
                elif d == "$" and i + 1 < n and (src[i + 1] in "{_" or src[i + 1].isalnum() or src[i + 1] in _SPECIAL_PARAMS):
                    i = parameter(i, True)
                else:
                    lit(d, True)
                    i += 1
        elif c in "*?":
            out.append((GLOB, c, False, -1))
            i += 1
        elif bracket and src.startswith("[:", i) and ":]" in src[i + 2 :]:
            close = src.index(":]", i + 2) + 2
            out.append((GLOB, src[i:close], False, -1))  # a POSIX class such as [:alpha:]
            i = close
        elif c == "[" and "]" in src[i + 2 :]:
            # A bracket expression: its brackets (and a leading ! or ^) stay unquoted when rebuilt.
            negate = src[i + 1] if i + 1 < n and src[i + 1] in "!^" else ""
            out.append((GLOB, c + negate, False, -1))
            bracket = True
            i += 1 + len(negate)
        elif c == "]" and bracket and not (out and out[-1][0] == GLOB and out[-1][1] in ("[", "[!", "[^")):
            out.append((GLOB, c, False, -1))
            bracket = False
            i += 1
        elif c in " \t\n|&;()<>":
            # bash would have ended the word here: the parser's word is not bash's, so refuse it.
            raise WordError("the command's structure is ambiguous (an unquoted shell metacharacter inside a word)")
        elif c in "@!+" and src.startswith("(", i + 1):
            raise WordError("extended glob patterns are not accepted")
        elif c == "~" and (i == 0 or (assignment_like and src[i - 1] in "=:")):
            tilde = re.compile(r"~[^/:]*").match(src, i)
            assert tilde is not None  # src[i] is "~"
            out.append((TILDE, tilde.group(), False, -1))
            i = tilde.end()
        elif c in "{,}":
            out.append((_BRACE, c, False, -1))
            i += 1
        else:
            lit(c, False)
            i += 1
    if ansi:
        out.append(("ansi", "", False, -1))
    return out


def words(src: str, offset: int, subs: dict[int, tuple[int, str]], budget: Budget = _UNLIMITED,
          pattern: bool = False) -> list[Word]:
    """The words bash makes of one source word: lexed, then brace-expanded (within ``budget``).
    A ``pattern`` (a case pattern, an operand of [[ ]]) is neither brace-expanded nor globbed
    against files, so it keeps its braces and its leading glob."""
    tokens = lex(src, offset, subs)
    ansi = any(t[0] == "ansi" for t in tokens)
    tokens = [t for t in tokens if t[0] != "ansi"]
    out = []
    expansions = [tokens] if pattern else expand_braces(tokens, budget)
    for expanded in expansions:
        if len(expansions) > 1 and not any(text or quoted for _, text, quoted, _ in expanded):
            continue  # a{,b}'s empty alternative: bash drops an empty unquoted word
        segments: list[Segment] = []
        run: list[str] = []  # adjacent literal text, joined once (a long word is not quadratic)
        run_quoted = False
        for kind, text, quoted, start in expanded:
            kind = LIT if kind == _BRACE else kind  # braces that do not form an expansion are literal
            if kind == LIT:
                run.append(text)
                run_quoted = run_quoted or quoted
                continue
            if run:
                segments.append(Segment(LIT, "".join(run), run_quoted))
                run, run_quoted = [], False
            segments.append(Segment(kind, text, quoted, start))
        if run:
            segments.append(Segment(LIT, "".join(run), run_quoted))
        # Tilde expansion comes after brace expansion: {~,x} starts a word with ~.
        if segments and segments[0].kind == LIT and not segments[0].quoted and segments[0].text.startswith("~"):
            head, sep, rest = segments[0].text.partition("/")
            segments[0:1] = [Segment(TILDE, head)] + ([Segment(LIT, sep + rest)] if sep else [])
        # A glob at the start of a word could match a file named like an option (-delete, --output=x):
        # Bastion runs it as ./pattern, and the facts say so. Empty quotes before it (''[-]*) change
        # nothing in what bash matches, so they go.
        lead = 0
        while lead < len(segments) and segments[lead].kind == LIT and not segments[lead].text:
            lead += 1
        dot_slash = lead < len(segments) and segments[lead].kind == GLOB and not pattern
        if dot_slash:
            segments[:lead] = [Segment(LIT, "./")]
        budget.spend(len(segments))
        out.append(Word(src, tuple(segments), ansi, dot_slash))
    return out


Token = tuple[str, str, bool, int]
_SEQUENCE = re.compile(r"(-?\d+|[A-Za-z])\.\.(-?\d+|[A-Za-z])(?:\.\.(-?\d+))?")


def expand_braces(tokens: list[Token], budget: Budget = _UNLIMITED) -> list[list[Token]]:
    """Bash brace expansion over lexed tokens: a{b,c}d → abd acd; {1..3}; nested; left to right.
    Each word made is charged to ``budget`` as it is made, so a bomb stops early."""
    budget.tick()
    for open_at, token in enumerate(tokens):
        if token[0] != _BRACE or token[1] != "{":
            continue
        depth = 0
        commas: list[int] = []
        for j in range(open_at, len(tokens)):
            kind, text = tokens[j][0], tokens[j][1]
            if kind != _BRACE:
                continue
            if text == "{":
                depth += 1
            elif text == "}":
                depth -= 1
                if depth == 0:
                    inner = tokens[open_at + 1 : j]
                    head, tail = tokens[:open_at], tokens[j + 1 :]
                    if commas:
                        parts, last = [], open_at + 1
                        for k in commas + [j]:
                            parts.append(tokens[last:k])
                            last = k + 1
                        out = []
                        for part in parts:
                            for e in expand_braces(part + tail, budget):
                                budget.spend(len(head) + len(e), sum(len(t[1]) for t in e))
                                out.append(head + e)
                        return out
                    sequence = _sequence(inner)
                    if sequence is not None:
                        out = []
                        for item in sequence:
                            for e in expand_braces([(LIT, item, False, -1)] + tail, budget):
                                budget.spend(len(head) + len(e), sum(len(t[1]) for t in e))
                                out.append(head + e)
                        return out
                    break  # {x} with no comma or sequence is literal; look for a later brace
            elif text == "," and depth == 1:
                commas.append(j)
    return [tokens]


def _sequence(inner: list[Token]) -> list[str] | None:
    if not inner or any(t[0] != LIT or t[2] for t in inner):
        return None
    m = _SEQUENCE.fullmatch("".join(t[1] for t in inner))
    if not m:
        return None
    a, b, step = m.group(1), m.group(2), abs(int(m.group(3) or 1)) or 1
    if a.lstrip("-").isdigit() and b.lstrip("-").isdigit():
        lo, hi = int(a), int(b)
        values = range(lo, hi + 1, step) if lo <= hi else range(lo, hi - 1, -step)
        if len(values) > 10_000:
            raise WordError("brace sequence too long")
        width = max(len(a), len(b)) if (a.lstrip("-").startswith("0") or b.lstrip("-").startswith("0")) else 0
        return [str(v).zfill(width) if width else str(v) for v in values]
    if a.isalpha() and b.isalpha():
        if a.isupper() != b.isupper():
            raise WordError("a brace sequence from upper to lower case letters is not accepted")
        lo, hi = ord(a), ord(b)
        return [chr(v) for v in (range(lo, hi + 1, step) if lo <= hi else range(lo, hi - 1, -step))]
    return None


__all__ = ["Budget", "BudgetError", "Segment", "Word", "WordError", "words", "expand_braces", "product"]
