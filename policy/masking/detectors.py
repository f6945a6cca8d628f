"""Value detectors: a second net over any text (SQL cells, shell stdout and stderr) for values that
should never reach an agent, whatever column or command they came from.

    kind           what is found                                        checked by
    email          local@domain.tld                                     shape
    card           payment card numbers, 13-19 digits                   issuer prefix + length + Luhn
    ssn            US social security numbers                           area / group / serial rules
    iban           international bank account numbers                   country length + mod-97
    jwt            header.payload.signature, base64url                  header decodes to JSON with "alg"
    private_key    -----BEGIN ... PRIVATE KEY----- blocks (PEM, OpenSSH, PGP; also inside JSON)
    cloud_key      AWS access key ids (AKIA/ASIA/...), Google API keys (AIza...), GCP
                   private_key_id, Azure AccountKey= / SharedAccessKey=
    github_token   ghp_ gho_ ghu_ ghs_ ghr_ github_pat_
    slack_token    xoxa- xoxb- xoxp- xoxr- xoxs- xapp- tokens, hooks.slack.com webhooks
    password       the value in `password=...`, `"api_key": "..."`, `secret: ...`, `Authorization:
                   Bearer ...` and the password in `scheme://user:password@host`

Each detection becomes ``[redacted:<kind>]`` and is counted per kind.

Card numbers and SSNs written as bare digits are ambiguous (about 1 random 16-digit number in 40
passes an issuer prefix and Luhn; most random 9-digit numbers are valid SSNs). So bare digit runs
count only with context: a keyword shortly before them in the same text ("card", "ssn", ...) or a
column whose name says so (``card_number``, ``ssn``). Grouped forms (``4111 1111 1111 1111``,
``078-05-1120``) need no context. docs/masking.md has the measured precision, recall and false
positive rates (tests/bench/detector_quality.py).

Speed: a result is scanned as a few large strings, not cell by cell. Every scanned column is joined
into one text, and cheap substring checks on translated copies of it (digits → 0, letters → a,
...) say which detectors could match in which column; only those run their regular expressions,
and only over those columns. A result with nothing suspicious costs a join, three translations and
a dozen substring searches.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

KINDS = ("private_key", "jwt", "cloud_key", "github_token", "slack_token", "password", "iban", "card", "ssn", "email")
_PRIORITY = {kind: i for i, kind in enumerate(KINDS)}  # where two detections overlap, the earlier kind wins
_SEP = "\x00"  # between cells of a column: no detector's pattern crosses it


def marker(kind: str) -> str:
    return f"[redacted:{kind}]"


# -- what each detector looks for -----------------------------------------------------------------

_NOT_WORD_BEFORE = r"(?<![0-9A-Za-z_])"
_NOT_WORD_AFTER = r"(?![0-9A-Za-z_])"

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![A-Za-z0-9-])")
_CARD_GROUPED = re.compile(_NOT_WORD_BEFORE + r"(?:\d{4}([ -])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{1,3})?|\d{4}([ -])\d{6}\2\d{4,5})"
                           + _NOT_WORD_AFTER)
_CARD_PLAIN = re.compile(_NOT_WORD_BEFORE + r"\d{13,19}" + _NOT_WORD_AFTER)
_SSN_GROUPED = re.compile(r"(?<![0-9A-Za-z_-])(\d{3})([- ])(\d{2})\2(\d{4})(?![0-9A-Za-z_-])")
_SSN_PLAIN = re.compile(_NOT_WORD_BEFORE + r"\d{9}" + _NOT_WORD_AFTER)
_IBAN = re.compile(_NOT_WORD_BEFORE + r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,32}" + _NOT_WORD_AFTER)
_JWT = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*(?![A-Za-z0-9_-])")
_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[^\x00]*?"
    r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|(?=\x00)|\Z)")
_CLOUD = re.compile(
    r"(?<![A-Za-z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])"
    r"|(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])"
    r"|(?<=\"private_key_id\": \")[0-9a-f]{40}(?=\")|(?<=\"private_key_id\":\")[0-9a-f]{40}(?=\")"
    r"|(?<=AccountKey=)[A-Za-z0-9+/]{20,}={0,2}|(?<=SharedAccessKey=)[A-Za-z0-9+/]{20,}={0,2}")
_GITHUB = re.compile(r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,244})(?![A-Za-z0-9_])")
_SLACK = re.compile(r"(?<![A-Za-z0-9])(?:xox[abprs]-[A-Za-z0-9-]{10,250}|xapp-[A-Za-z0-9-]{10,250})"
                    r"|https://hooks\.slack\.com/services/[A-Za-z0-9_/-]{10,200}")
_SECRET_NAMES = (r"pass(?:word|wd|phrase)?|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|secret[_-]?key"
                 r"|private[_-]?key|client[_-]?secret|credentials?|auth(?:orization)?")
_PASSWORD_KV = re.compile(
    r"(?<![A-Za-z0-9])[\"']?(?P<key>(?:[A-Za-z0-9]+[_.-])*(?:" + _SECRET_NAMES + r"))[\"']?[ \t]*[:=][ \t]*"
    r"(?:(?:Bearer|Basic|Token)[ \t]+)?"
    r"(?:\"(?P<dq>[^\"\x00\n]{1,500})\"|'(?P<sq>[^'\x00\n]{1,500})'|(?P<bare>[^\s\"',;&\x00}<>]{1,500}))",
    re.IGNORECASE)
_URL_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@\x00]{1,100}:(?P<pw>[^/\s@\x00]{1,200})@")
_NOT_SECRETS = frozenset({"", "null", "none", "true", "false", "***", "****", "********", "redacted", "<redacted>",
                          "xxx", "changeme?", "required", "optional"})

_CARD_CONTEXT = re.compile(r"card|cc|pan|visa|master|amex|credit|debit|payment", re.IGNORECASE)
_SSN_CONTEXT = re.compile(r"ssn|social.?sec|ss#|ss ?no|taxpayer|\btin\b", re.IGNORECASE)
_CARD_COLUMN = frozenset({"card", "cards", "cc", "ccn", "pan", "credit", "cardnumber", "creditcard", "cc_number"})
_SSN_COLUMN = frozenset({"ssn", "ssns", "social", "socialsecurity"})


# -- validation -----------------------------------------------------------------------------------

def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_issuer(digits: str) -> str | None:
    """The network whose issuer prefix and length ``digits`` fit, or None."""
    n, p2, p4, p6 = len(digits), int(digits[:2]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4" and n in (13, 16, 19):
        return "visa"
    if (51 <= p2 <= 55 or 2221 <= p4 <= 2720) and n == 16:
        return "mastercard"
    if p2 in (34, 37) and n == 15:
        return "amex"
    if (p4 == 6011 or 644 <= p4 // 10 <= 649 or p2 == 65 or 622126 <= p6 <= 622925) and 16 <= n <= 19:
        return "discover"
    if 3528 <= p4 <= 3589 and 16 <= n <= 19:
        return "jcb"
    if (300 <= p4 // 10 <= 305 or p2 in (36, 38, 39)) and 14 <= n <= 19:
        return "diners"
    if p2 == 62 and 16 <= n <= 19:
        return "unionpay"
    if 2200 <= p4 <= 2204 and n == 16:
        return "mir"
    if p4 in (5018, 5020, 5038, 5893, 6304, 6759, 6761, 6762, 6763) and 12 <= n <= 19:
        return "maestro"
    return None


def valid_card(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and card_issuer(digits) is not None and luhn(digits)


def valid_ssn(area: str, group: str, serial: str) -> bool:
    """SSA rules: area 001-899 but not 666, group 01-99, serial 0001-9999."""
    a = int(area)
    return 0 < a < 900 and a != 666 and group != "00" and serial != "0000"


# Length of an IBAN by country (ISO 13616 registry).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20,
    "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25,
    "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "SO": 23, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}


def valid_iban(compact: str) -> bool:
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def _b64json(part: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None


# -- finding spans ----------------------------------------------------------------------------------

Span = tuple[int, int, str]  # start, end, kind


def _context(text: str, start: int, words: re.Pattern[str]) -> bool:
    """A keyword within 32 characters before ``start``, in the same cell."""
    cell_start = text.rfind(_SEP, 0, start) + 1
    return words.search(text, max(cell_start, start - 32), start) is not None


def _emails(text: str, hint: str) -> Iterable[Span]:
    for m in _EMAIL.finditer(text):
        yield m.start(), m.end(), "email"


def _cards(text: str, hint: str) -> Iterable[Span]:
    for m in _CARD_GROUPED.finditer(text):
        if valid_card(re.sub(r"[ -]", "", m.group())):
            yield m.start(), m.end(), "card"
    for m in _CARD_PLAIN.finditer(text):
        if valid_card(m.group()) and (hint == "card" or _context(text, m.start(), _CARD_CONTEXT)):
            yield m.start(), m.end(), "card"


def _ssns(text: str, hint: str) -> Iterable[Span]:
    for m in _SSN_GROUPED.finditer(text):
        if valid_ssn(m.group(1), m.group(3), m.group(4)):
            yield m.start(), m.end(), "ssn"
    for m in _SSN_PLAIN.finditer(text):
        d = m.group()
        if valid_ssn(d[:3], d[3:5], d[5:]) and (hint == "ssn" or _context(text, m.start(), _SSN_CONTEXT)):
            yield m.start(), m.end(), "ssn"


def _ibans(text: str, hint: str) -> Iterable[Span]:
    for m in _IBAN.finditer(text):
        # The pattern may run on into following words: cut it at the country's length.
        want = IBAN_LENGTHS.get(m.group()[:2])
        if want is None:
            continue
        count, end = 0, m.start()
        for i, ch in enumerate(m.group()):
            if ch != " ":
                count += 1
                if count == want:
                    end = m.start() + i + 1
                    break
        if count == want and valid_iban(text[m.start():end].replace(" ", "")):
            yield m.start(), end, "iban"


def _jwts(text: str, hint: str) -> Iterable[Span]:
    for m in _JWT.finditer(text):
        header = _b64json(m.group().split(".", 1)[0])
        if isinstance(header, dict) and "alg" in header:
            yield m.start(), m.end(), "jwt"


def _simple(pattern: re.Pattern[str], kind: str) -> Callable[[str, str], Iterable[Span]]:
    def find(text: str, hint: str) -> Iterable[Span]:
        for m in pattern.finditer(text):
            yield m.start(), m.end(), kind
    return find


def _passwords(text: str, hint: str) -> Iterable[Span]:
    for m in _URL_PASSWORD.finditer(text):
        yield m.start("pw"), m.end("pw"), "password"
    for m in _PASSWORD_KV.finditer(text):
        key = m.group("key")
        if key in ("PWD", "OLDPWD"):  # the shell's working directory, not a password
            continue
        group = "dq" if m.group("dq") is not None else "sq" if m.group("sq") is not None else "bare"
        value = m.group(group)
        if value.lower() in _NOT_SECRETS or value.startswith(("[redacted", "${", "$(", "<")):
            continue
        yield m.start(group), m.end(group), "password"


_FINDERS: dict[str, Callable[[str, str], Iterable[Span]]] = {
    "private_key": _simple(_PRIVATE_KEY, "private_key"), "jwt": _jwts, "cloud_key": _simple(_CLOUD, "cloud_key"),
    "github_token": _simple(_GITHUB, "github_token"), "slack_token": _simple(_SLACK, "slack_token"),
    "password": _passwords, "iban": _ibans, "card": _cards, "ssn": _ssns, "email": _emails,
}


def find_spans(text: str, kinds: Iterable[str], hint: str = "") -> list[Span]:
    """Every detection in ``text`` by ``kinds``, without overlaps (the earlier kind in KINDS wins),
    in text order. ``hint`` is "card" or "ssn" when the text is a column named for one."""
    found = [spans for kind in sorted(kinds, key=_PRIORITY.__getitem__) if (spans := list(_FINDERS[kind](text, hint)))]
    if len(found) == 1 and found[0][0][2] not in ("card", "ssn", "password"):
        return found[0]  # one kind whose matches come from one pattern: in order, never overlapping
    candidates = [s for spans in found for s in spans]
    taken: list[tuple[int, int]] = []  # sorted, non-overlapping
    out = []
    for start, end, kind in candidates:
        i = bisect_right(taken, (start, end))
        if (i > 0 and taken[i - 1][1] > start) or (i < len(taken) and taken[i][0] < end):
            continue
        taken.insert(i, (start, end))
        out.append((start, end, kind))
    out.sort()
    return out


def _splice(text: str, spans: Sequence[Span], offset: int = 0) -> str:
    parts, at = [], 0
    for start, end, kind in spans:
        parts.append(text[at:start - offset])
        parts.append(marker(kind))
        at = end - offset
    parts.append(text[at:])
    return "".join(parts)


# -- which detectors could match where: cheap substring checks on translated bytes ----------------

def _table(groups: dict[bytes, bytes]) -> bytes:
    table = bytearray(range(256))
    for chars, to in groups.items():
        for c in chars:
            table[c] = to[0]
    return bytes(table)


_DIGITS, _UPPER, _LOWER = b"0123456789", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz"
# Shapes: digits → 0, capitals → A, small letters → a, space and dash → -.
_SHAPE = _table({_DIGITS: b"0", _UPPER: b"A", _LOWER: b"a", b" -": b"-"})
# Token runs: letters, digits and _ → a, anything else → . (20 a's in a row: a token-like string).
_RUN = bytes(b"a"[0] if chr(c).isascii() and (chr(c).isalnum() or c == 95) else b"."[0] for c in range(256))

# (translation, substring, kinds it may indicate). "lower" checks run only where ':' or '=' occurs
# (a key-value pair needs one), which most result columns lack.
_TRIGGERS: tuple[tuple[str, bytes, frozenset[str]], ...] = (
    ("raw", b"@", frozenset({"email"})),
    ("raw", b"-----BEGIN", frozenset({"private_key"})),
    ("raw", b"xox", frozenset({"slack_token"})),
    ("shape", b"000000000", frozenset({"card", "ssn"})),
    ("shape", b"0000-0000", frozenset({"card"})),
    ("shape", b"000-00-0000", frozenset({"ssn"})),
    ("shape", b"AA00", frozenset({"iban"})),
    ("run", b"a" * 20, frozenset({"jwt", "cloud_key", "github_token", "slack_token"})),
    ("pairs", b"://", frozenset({"password", "slack_token"})),
    ("pairs", b"pass", frozenset({"password"})),
    ("pairs", b"pwd", frozenset({"password"})),
    ("pairs", b"secret", frozenset({"password"})),
    ("pairs", b"token", frozenset({"password"})),
    ("pairs", b"key", frozenset({"password", "cloud_key"})),
    ("pairs", b"auth", frozenset({"password"})),
    ("pairs", b"credential", frozenset({"password"})),
)
_ALL_BUT_PAIRS = bytes(c for c in range(256) if c not in b":=")


def _flagged(blobs: list[bytes], kinds: frozenset[str]) -> list[set[str]]:
    """Per blob, the detectors whose trigger substring occurs in it."""
    joined = b"\x00".join(blobs)
    starts = list(accumulate((len(b) + 1 for b in blobs[:-1]), initial=0))
    views: dict[str, bytes] = {"raw": joined}
    flags: list[set[str]] = [set() for _ in blobs]
    for view, needle, may in _TRIGGERS:
        may = may & kinds
        if not may:
            continue
        if view not in views:
            if view == "pairs":
                # Lower case, and only if some key-value separator occurs at all.
                views[view] = joined.lower() if joined.translate(None, _ALL_BUT_PAIRS) else b""
            else:
                views[view] = joined.translate(_SHAPE if view == "shape" else _RUN)
        text = views[view]
        pos = text.find(needle)
        while pos != -1:
            j = bisect_right(starts, pos) - 1
            flags[j] |= may
            pos = text.find(needle, starts[j + 1]) if j + 1 < len(blobs) else -1
    return flags


# -- scanning -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Detectors:
    """The detectors on for one connection.

    >>> Detectors(frozenset(KINDS)).scan_text("mail ada@example.com, card 4111 1111 1111 1111")
    ('mail [redacted:email], card [redacted:card]', Counter({'email': 1, 'card': 1}))
    """

    kinds: frozenset[str] = frozenset(KINDS)

    def __post_init__(self) -> None:
        unknown = self.kinds - set(KINDS)
        if unknown:
            raise ValueError(f"unknown detectors: {', '.join(sorted(unknown))}; expected some of {', '.join(KINDS)}")

    def scan_text(self, text: str) -> tuple[str, Counter[str]]:
        """One text (a shell's stdout): the text with detections replaced, and counts per kind."""
        if not self.kinds or not text:
            return text, Counter()
        (column,), counts = self.scan_columns([[text]], [""])
        return (column[0] if column is not None else text), counts

    def scan_columns(self, columns: Sequence[Sequence[Any]], names: Sequence[str]) -> tuple[list[list[Any] | None], Counter[str]]:
        """Columns of cells: per column, the new cells (None when nothing in it changed), and counts.
        Strings, integers of 9 digits or more, and JSON arrays and objects are scanned."""
        counts: Counter[str] = Counter()
        out: list[list[Any] | None] = [None] * len(columns)
        if not self.kinds or not columns:
            return out, counts
        texts = {j: found for j, col in enumerate(columns) if (found := _column_texts(col)) is not None}
        if not texts:
            return out, counts
        flags = _flagged([blob.encode("utf-8", "surrogatepass") for _, blob in texts.values()], self.kinds)
        for (j, (cells, blob)), kinds in zip(texts.items(), flags):
            if not kinds:
                continue
            spans = find_spans(blob, kinds, _hint(names[j]))
            if spans:
                out[j] = _apply_spans(columns[j], cells, spans, counts, self, _hint(names[j]))
        return out, counts

    def scan_value(self, value: Any, hint: str = "") -> tuple[Any, Counter[str]]:
        """One JSON value, walked: strings (keys too) are scanned, structure kept."""
        counts: Counter[str] = Counter()
        return _walk(value, self, hint, counts), counts


def _hint(name: str) -> str:
    words = set(re.split(r"[^a-z0-9]+|_", name.lower()))
    return "card" if words & _CARD_COLUMN else "ssn" if words & _SSN_COLUMN else ""


def _column_texts(column: Sequence[Any]) -> tuple[Sequence[str], str] | None:
    """The text scanned for each cell (strings as they are, long integers as digits, JSON as JSON;
    "" for what cannot hold a detection: None, floats, booleans, short integers), and them joined.
    None when no cell of the column can hold one (numbers only, all short)."""
    try:
        return column, _SEP.join(column)  # the common case: a column of strings
    except TypeError:
        pass
    try:
        if -99_999_999 <= min(column) and max(column) <= 99_999_999:
            return None
    except TypeError:
        pass
    texts = ["" if v is None else v if v.__class__ is str else _cell_text(v) for v in column]
    return texts, _SEP.join(texts)


def _cell_text(value: Any) -> str:
    if value.__class__ is str:
        return value
    if value.__class__ is int and (value > 99_999_999 or value < -99_999_999):
        return str(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return ""


def _apply_spans(column: Sequence[Any], texts: Sequence[str], spans: list[Span], counts: Counter[str],
                 detectors: Detectors, hint: str) -> list[Any]:
    starts = list(accumulate((len(t) + 1 for t in texts[:-1]), initial=0))
    new = list(column)
    by_cell: dict[int, list[Span]] = {}
    for span in spans:
        by_cell.setdefault(bisect_right(starts, span[0]) - 1, []).append(span)
    for i, cell_spans in by_cell.items():
        value = column[i]
        if isinstance(value, (list, dict)):
            new[i] = _walk(value, detectors, hint, counts)
            continue
        counts.update(kind for _, _, kind in cell_spans)
        if value.__class__ is int:
            new[i] = marker(cell_spans[0][2])
        else:
            new[i] = _splice(texts[i], cell_spans, starts[i])
    return new


def _walk(value: Any, detectors: Detectors, hint: str, counts: Counter[str]) -> Any:
    if isinstance(value, dict):
        return {_walk(k, detectors, hint, counts): _walk(v, detectors, hint, counts) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, detectors, hint, counts) for v in value]
    text = _cell_text(value) if not isinstance(value, (list, dict)) else ""
    if not text:
        return value
    spans = find_spans(text, detectors.kinds, hint)
    if not spans:
        return value
    counts.update(kind for _, _, kind in spans)
    return marker(spans[0][2]) if value.__class__ is int else _splice(text, spans)
