"""A generated, seeded corpus for the value detectors: positives of every kind in the forms the
detectors claim to find, and hard negatives that look like them. Shared by tests/test_detectors.py
and tests/bench/detector_quality.py (which writes the figures into docs/masking.md)."""

from __future__ import annotations

import base64
import json
import random
import string
from dataclasses import dataclass

from bastion.policy.masking.detectors import IBAN_LENGTHS, luhn


@dataclass(frozen=True)
class Sample:
    text: str
    kind: str | None  # the kind it holds, or None for a negative
    form: str  # how it is written, for the report


def card_number(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        if luhn(body + check):
            return body + check
    raise AssertionError("no Luhn digit")


_CARD_PREFIXES = [("4", 16), ("4", 13), ("51", 16), ("55", 16), ("2221", 16), ("2720", 16), ("34", 15), ("37", 15),
                  ("6011", 16), ("65", 16), ("3530", 16), ("36", 14), ("62", 16)]


def group(digits: str, sep: str) -> str:
    if len(digits) == 15:
        return sep.join([digits[:4], digits[4:10], digits[10:]])
    if len(digits) == 14:
        return sep.join([digits[:4], digits[4:10], digits[10:]])
    return sep.join(digits[i:i + 4] for i in range(0, len(digits), 4))


def ssn(rng: random.Random) -> tuple[str, str, str]:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}", f"{rng.randint(1, 99):02d}", f"{rng.randint(1, 9999):04d}"


def iban(rng: random.Random, country: str) -> str:
    length = IBAN_LENGTHS[country]
    bban = "".join(rng.choice(string.digits + string.ascii_uppercase[:6]) for _ in range(length - 4))
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(ch, 36)) for ch in moved)) % 97
    return f"{country}{check:02d}{bban}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(rng: random.Random, header: dict[str, str] | None = None) -> str:
    head = header or {"alg": rng.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"}
    payload = {"sub": str(rng.randint(1, 10**9)), "iat": rng.randint(1_600_000_000, 1_800_000_000)}
    sig = bytes(rng.getrandbits(8) for _ in range(32))
    return f"{_b64(json.dumps(head).encode())}.{_b64(json.dumps(payload).encode())}.{_b64(sig)}"


def _alnum(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _pem(rng: random.Random, label: str) -> str:
    body = "\n".join(_alnum(rng, 64, string.ascii_letters + string.digits + "+/") for _ in range(4))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----"


def positives(rng: random.Random, n: int) -> list[Sample]:
    out: list[Sample] = []
    users = ["ada", "grace.hopper", "alan_t", "e.dijkstra+test", "b-liskov", "dk99"]
    domains = ["example.com", "mail.example.org", "corp.co.uk", "uni.edu", "startup.io"]
    for _ in range(n):
        email = f"{rng.choice(users)}{rng.randint(1, 999)}@{rng.choice(domains)}"
        out.append(Sample(rng.choice([f"contact: {email}", email, f"<{email}>", f"sent to {email}, cc boss"]), "email", "email"))

        prefix, length = rng.choice(_CARD_PREFIXES)
        number = card_number(rng, prefix, length)
        form = rng.choice(["spaces", "dashes", "context"])
        text = {"spaces": f"paid {group(number, ' ')} today", "dashes": group(number, "-"),
                "context": f"card: {number}"}[form]
        out.append(Sample(text, "card", f"card-{form}"))

        a, g, s = ssn(rng)
        form = rng.choice(["dashes", "spaces", "context"])
        text = {"dashes": f"{a}-{g}-{s}", "spaces": f"SSN {a} {g} {s}", "context": f"ssn={a}{g}{s}"}[form]
        out.append(Sample(text, "ssn", f"ssn-{form}"))

        code = iban(rng, rng.choice(["DE", "GB", "FR", "NL", "ES", "IT", "CH", "BE"]))
        grouped = " ".join(code[i:i + 4] for i in range(0, len(code), 4))
        out.append(Sample(rng.choice([f"IBAN {code}", f"pay to {grouped} please"]), "iban", "iban"))

        out.append(Sample(rng.choice([f"Authorization token {jwt(rng)}", jwt(rng)]), "jwt", "jwt"))

        label = rng.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY", "ENCRYPTED PRIVATE KEY"])
        pem = _pem(rng, label)
        if rng.random() < 0.3:  # a GCP service-account file: the key inside JSON, newlines escaped
            pem = json.dumps({"type": "service_account", "private_key": pem + "\n"})
        out.append(Sample(pem, "private_key", "private_key"))

        key = rng.choice([rng.choice(["AKIA", "ASIA"]) + _alnum(rng, 16, string.ascii_uppercase + "234567"),
                          "AIza" + _alnum(rng, 35, string.ascii_letters + string.digits + "_-")])
        out.append(Sample(rng.choice([f"aws key {key}", key, f"export KEY_ID='{key}'"]), "cloud_key", "cloud_key"))

        token = rng.choice([rng.choice(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]) + _alnum(rng, 36),
                            "github_pat_" + _alnum(rng, 22) + "_" + _alnum(rng, 59)])
        out.append(Sample(rng.choice([f"token {token}", token]), "github_token", "github_token"))

        slack = f"xox{rng.choice('abprs')}-{rng.randint(10**10, 10**12)}-{rng.randint(10**10, 10**12)}-{_alnum(rng, 24)}"
        out.append(Sample(rng.choice([f"slack: {slack}", slack]), "slack_token", "slack_token"))

        secret = _alnum(rng, rng.randint(8, 24), string.ascii_letters + string.digits + "!#%^*")
        text = rng.choice([f"password={secret}", f"DB_PASSWORD: {secret}", f'{{"api_key": "{secret}"}}',
                           f"client_secret = '{secret}'", f"Authorization: Bearer {secret}{_alnum(rng, 12)}",
                           f"postgres://app:{secret}@db.internal:5432/shop", f"export GITHUB_TOKEN={secret}"])
        out.append(Sample(text, "password", "password"))
    return out


def negatives(rng: random.Random, n: int) -> list[Sample]:
    """Hard negatives: text shaped like the kinds above that holds none of them."""
    out: list[Sample] = []
    for _ in range(n):
        picks = [
            ("version", f"pkg@{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}"),
            ("mention", f"ping @{rng.choice(['ada', 'team'])} about it"),
            ("no-tld", f"user{rng.randint(1, 99)}@localhost"),
            ("card-bad-luhn", _bad_luhn(rng)),
            ("phone", f"+1-555-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"),
            ("date", f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} 12:{rng.randint(10, 59)}:00"),
            ("ssn-invalid", f"{rng.choice(['000', '666', str(rng.randint(900, 999))])}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"),
            ("zip+4", f"{rng.randint(10000, 99999)}-{rng.randint(1000, 9999)}"),
            ("iban-bad-check", _bad_iban(rng)),
            ("dotted", f"v{rng.randint(1, 9)}.{rng.randint(0, 99)}.{rng.randint(0, 99)}"),
            ("jwt-no-alg", f"{_b64(json.dumps({'typ': 'JWT'}).encode())}.{_b64(b'{}')}.{_alnum(rng, 20)}"),
            ("certificate", _pem(rng, "CERTIFICATE")),
            ("public-key", _pem(rng, "PUBLIC KEY")),
            ("akia-short", "AKIA" + _alnum(rng, 12, string.ascii_uppercase)),
            ("gh-short", "ghp_" + _alnum(rng, 10)),
            ("slack-word", "xoxo-hugs and kisses"),
            ("password-prose", rng.choice(["password reset requested", "the secret santa list", "token_count=5",
                                           "PWD=/home/ada/src", "password: ", "passwords expire in 90 days"])),
            ("uuid", _uuid(rng)),
            ("hex", _alnum(rng, 40, "0123456789abcdef")),
            ("sentence", rng.choice(["Order shipped to Lisbon", "Refund issued", "Ada Lovelace, Oslo"])),
        ]
        form, text = rng.choice(picks)
        out.append(Sample(text, None, form))
    return out


def _bad_luhn(rng: random.Random) -> str:
    prefix, length = rng.choice(_CARD_PREFIXES)
    number = card_number(rng, prefix, length)
    wrong = number[:-1] + str((int(number[-1]) + rng.randint(1, 9)) % 10)
    return group(wrong, " ")


def _bad_iban(rng: random.Random) -> str:
    code = iban(rng, rng.choice(["DE", "GB", "FR"]))
    return code[:2] + f"{(int(code[2:4]) + rng.randint(1, 90)) % 97 + 2:02d}"[-2:] + code[4:] if code[2:4] != "00" else code


def _uuid(rng: random.Random) -> str:
    h = _alnum(rng, 32, "0123456789abcdef")
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def random_numbers(rng: random.Random, n: int, digits: int) -> list[str]:
    return [str(rng.randint(10 ** (digits - 1), 10**digits - 1)) for _ in range(n)]


def unclaimed(rng: random.Random, n: int) -> list[Sample]:
    """Sensitive values written in forms the detectors do not claim to find: reported, not asserted."""
    out: list[Sample] = []
    for _ in range(n):
        prefix, length = rng.choice(_CARD_PREFIXES)
        out.append(Sample(f"ref {card_number(rng, prefix, length)}", "card", "card-bare-no-context"))
        a, g, s = ssn(rng)
        out.append(Sample(f"id {a}{g}{s}", "ssn", "ssn-bare-no-context"))
        out.append(Sample(f"{rng.choice(['ada', 'bob'])} at example dot com", "email", "email-obfuscated"))
        out.append(Sample(f"my password is {_alnum(rng, 10)}", "password", "password-in-prose"))
        out.append(Sample(f"ünïcode{rng.randint(1, 99)}@exämple.com", "email", "email-unicode"))
    return out
