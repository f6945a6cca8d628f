"""Signed checkpoints (C2SP tlog-checkpoint in a C2SP signed note, Ed25519) and the witness they go to.

A checkpoint is the note text

    <origin>\\n<tree size>\\n<base64 Merkle root>\\n

followed by a blank line and one signature line, ``— <key name> <base64(key id || signature)>``,
with key id = SHA-256(key name || 0x0A || 0x01 || public key)[:4] (c2sp.org/signed-note). Keys are
kept in the note formats of golang.org/x/mod/sumdb/note, which transparency-log tools read:

    private: PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || 32-byte seed)>
    public:  <name>+<hex key id>+<base64(0x01 || 32-byte public key)>

The origin is the key's name. Verifying needs only the public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bastion.store.errors import StoreError

ED25519 = b"\x01"
DASH = "\u2014 "
_NAME = re.compile(r"^[^\s+]+$")


class KeyFileError(StoreError):
    """A key file that is not a signed-note Ed25519 key."""


def key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ED25519 + public).digest()[:4]


@dataclass(frozen=True)
class Verifier:
    name: str
    public: bytes  # 32 bytes

    @property
    def id(self) -> bytes:
        return key_id(self.name, self.public)

    def text(self) -> str:
        return f"{self.name}+{self.id.hex()}+{base64.b64encode(ED25519 + self.public).decode()}"

    @classmethod
    def parse(cls, text: str) -> Verifier:
        parts = text.strip().split("+", 2)
        if len(parts) != 3 or not _NAME.match(parts[0]):
            raise KeyFileError("not a public key in the signed-note format `<name>+<key id>+<base64 key>` "
                            "(`bastion audit keygen` writes one)")
        name, hex_id, b64 = parts
        try:
            raw = base64.b64decode(b64, validate=True)
        except binascii.Error:
            raise KeyFileError("the public key's base64 is damaged") from None
        if len(raw) != 33 or raw[:1] != ED25519:
            raise KeyFileError("not an Ed25519 public key (type byte 0x01 and 32 bytes)")
        verifier = cls(name, raw[1:])
        if verifier.id.hex() != hex_id.lower():
            raise KeyFileError("the public key's id does not match its name and key")
        return verifier

    def verify(self, note: str) -> str:
        """The note's text when one of its signatures is this key's and verifies; raises otherwise."""
        text, signatures = split_note(note)
        key = Ed25519PublicKey.from_public_bytes(self.public)
        for name, blob in signatures:
            if name == self.name and blob[:4] == self.id:
                try:
                    key.verify(blob[4:], text.encode())
                except InvalidSignature:
                    raise NoteError("the checkpoint's signature does not verify (forged or altered)") from None
                return text
        raise NoteError(f"the checkpoint is not signed by `{self.name}` with this key (another key signed it)")


@dataclass(frozen=True)
class Signer:
    name: str
    seed: bytes  # 32 bytes

    @property
    def verifier(self) -> Verifier:
        public = Ed25519PrivateKey.from_private_bytes(self.seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return Verifier(self.name, public)

    def text(self) -> str:
        return (f"PRIVATE+KEY+{self.name}+{self.verifier.id.hex()}+"
                f"{base64.b64encode(ED25519 + self.seed).decode()}")

    @classmethod
    def generate(cls, name: str) -> Signer:
        if not _NAME.match(name):
            raise KeyFileError(f"a key name has no spaces or `+`: `{name}`")
        return cls(name, Ed25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def parse(cls, text: str) -> Signer:
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"] or not _NAME.match(parts[2]):
            raise KeyFileError("not an Ed25519 signing key in the signed-note format `PRIVATE+KEY+<name>+<id>+<key>` "
                            "(write one with `bastion audit keygen DIR`)")
        try:
            raw = base64.b64decode(parts[4], validate=True)
        except binascii.Error:
            raise KeyFileError("the signing key's base64 is damaged") from None
        if len(raw) != 33 or raw[:1] != ED25519:
            raise KeyFileError("not an Ed25519 signing key (type byte 0x01 and a 32-byte seed)")
        signer = cls(parts[2], raw[1:])
        if signer.verifier.id.hex() != parts[3].lower():
            raise KeyFileError("the signing key's id does not match its name and key")
        return signer

    def sign(self, text: str) -> str:
        """The signed note: ``text`` (ending in a newline), a blank line, this key's signature line."""
        signature = Ed25519PrivateKey.from_private_bytes(self.seed).sign(text.encode())
        blob = base64.b64encode(self.verifier.id + signature).decode()
        return f"{text}\n{DASH}{self.name} {blob}\n"


class NoteError(StoreError):
    """A checkpoint note that is malformed or not signed as it should be."""


def split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    """(text, [(key name, key id || signature)]) of a signed note."""
    text, sep, sigs = note.rpartition("\n\n")
    if not sep or not sigs.endswith("\n"):
        raise NoteError("not a signed note (text, a blank line, signature lines)")
    signatures = []
    for line in sigs[:-1].split("\n"):
        if not line.startswith(DASH) or line.count(" ") != 2:
            raise NoteError(f"not a signature line: {line[:60]!r}")
        name, b64 = line[len(DASH):].split(" ")
        try:
            signatures.append((name, base64.b64decode(b64, validate=True)))
        except binascii.Error:
            raise NoteError("a signature's base64 is damaged") from None
    return text + "\n", signatures


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    note: str

    def text(self) -> str:
        return checkpoint_text(self.origin, self.size, self.root)


def checkpoint_text(origin: str, size: int, root: bytes) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def open_checkpoint(note: str, verifier: Verifier | Sequence[Verifier]) -> Checkpoint:
    """The checkpoint a note vouches for, once its signature verifies with ``verifier`` (or with one
    of several: a log whose key was rotated)."""
    keys = [verifier] if isinstance(verifier, Verifier) else list(verifier)
    if not keys:
        raise NoteError("no public key to check the checkpoint with")
    failure: NoteError | None = None
    for key in keys:
        try:
            text = key.verify(note)
        except NoteError as error:  # a known key whose signature fails says more than an unknown key
            failure = error if failure is None or "does not verify" in str(error) else failure
            continue
        verifier = key
        break
    else:
        assert failure is not None
        raise failure
    lines = text.split("\n")
    try:
        origin, size, root = lines[0], int(lines[1]), base64.b64decode(lines[2], validate=True)
    except (IndexError, ValueError, binascii.Error):
        raise NoteError("a signed note that is not a checkpoint (origin, size, root)") from None
    if origin != verifier.name:
        raise NoteError(f"the checkpoint's origin `{origin}` is not the key's log `{verifier.name}`")
    if len(root) != 32 or size < 0:
        raise NoteError("the checkpoint's root is not a SHA-256 hash")
    return Checkpoint(origin, size, root, note)


def keygen(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write DIR/audit-checkpoint.key (mode 0600) and DIR/audit-checkpoint.pub; refuse to overwrite."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / "audit-checkpoint.key", directory / "audit-checkpoint.pub"
    signer = Signer.generate(name)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(signer.text() + "\n")
    public.write_text(signer.verifier.text() + "\n")
    return private, public


# -- the witness ---------------------------------------------------------------------------------


class FileWitness:
    """An append-only file outside the store: one JSON line per checkpoint, `{"time", "note"}`.

    Opened O_APPEND and fsynced per line; the gateway never truncates or rewrites it. What protects
    it from the gateway's own user is where it lives (`chattr +a`, another volume or host): see
    docs/audit.md.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def from_url(cls, url: str, base: Path | None = None) -> FileWitness:
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise StoreError(f"a witness is a file:///absolute/path URL; found `{url}`")
        path = Path(unquote(parts.path))
        return cls(path if path.is_absolute() or base is None else base / path)

    def append(self, entries: list[tuple[str, str]]) -> None:
        """Append (time, note) entries durably."""
        data = "".join(json.dumps({"time": t, "note": n}, ensure_ascii=False) + "\n" for t, n in entries).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            raise StoreError(f"cannot append to the witness {self.path}: {error.strerror}") from error

    def notes(self) -> list[str]:
        """Every note the witness holds, oldest first (a damaged line is kept as its raw text, so
        verifying it fails and is reported)."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except OSError as error:
            raise StoreError(f"cannot read the witness {self.path}: {error.strerror}") from error
        out = []
        for line in lines:
            if not line.strip():
                continue
            try:
                out.append(json.loads(line)["note"])
            except (ValueError, KeyError, TypeError):
                out.append(line)
        return out

    def last_size(self, verifier: Verifier, *, tail: int = 64) -> int:
        """The largest size among the last ``tail`` checkpoints this key signed (appends are in order,
        but several gateways sharing a log may interleave a little): a start-up reads no more."""
        sizes = [0]
        for note in self.notes()[-tail:]:
            try:
                sizes.append(open_checkpoint(note, verifier).size)
            except NoteError:
                continue
        return max(sizes)


class HttpWitness:
    """An HTTP(S) endpoint on another host: each checkpoint is POSTed as JSON `{"time", "note"}` and
    counts as witnessed on a 2xx answer. What the endpoint keeps, and whether the gateway's operator
    can change it there, is the endpoint's business (see docs/audit.md); `verify --witness` reads a
    file exported from it."""

    path = None  # nothing on this host

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url, self.timeout_s = url, timeout_s

    def append(self, entries: list[tuple[str, str]]) -> None:
        import httpx

        try:
            with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client:
                for time, note in entries:
                    answer = client.post(self.url, json={"time": time, "note": note})
                    if not 200 <= answer.status_code < 300:
                        raise StoreError(f"the witness {self.url} answered {answer.status_code}")
        except httpx.HTTPError as error:
            raise StoreError(f"cannot reach the witness {self.url}: {type(error).__name__}") from error

    def notes(self) -> list[str]:
        raise StoreError(f"the witness is the endpoint {self.url}: export what it holds to a file "
                         "(one JSON line per checkpoint) and give that to --witness")

    def last_size(self, verifier: Verifier) -> int | None:
        return None  # unknown here: the store starts from its latest checkpoint


def open_witness(url: str, base: Path | None = None) -> FileWitness | HttpWitness:
    """The witness a config names: `file:///path` (relative paths against ``base``) or `https://...`
    (plain `http://` on loopback only)."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise StoreError(f"a witness over the network is https:// (plain http only on loopback); found `{url}`")
        return HttpWitness(url)
    return FileWitness.from_url(url, base)

