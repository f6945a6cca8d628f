"""Check a Bastion inclusion proof with nothing of Bastion's: hashlib and cryptography (Ed25519) only.

    python verify_proof.py call.proof.json audit-checkpoint.pub

`call.proof.json` is what `bastion audit prove CALL_ID` printed; `audit-checkpoint.pub` is the log's
public key, `<name>+<key id>+<base64(0x01 || key)>`, as `bastion audit keygen` wrote it. Prints the
events it proves and exits 0, or says what failed and exits 1.
"""

import base64
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def fail(why: str) -> None:
    print(f"not proved: {why}")
    sys.exit(1)


def main(proof_path: str, key_path: str) -> None:
    proof = json.load(open(proof_path, encoding="utf-8"))
    name, key_id_hex, key_b64 = open(key_path, encoding="utf-8").read().strip().split("+", 2)
    raw = base64.b64decode(key_b64)
    if raw[:1] != b"\x01" or len(raw) != 33:
        fail("not an Ed25519 key")
    key_id = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]  # c2sp.org/signed-note
    if key_id.hex() != key_id_hex:
        fail("the key's id does not match its name and key")

    # The checkpoint: a signed note, text + blank line + "— <name> <base64(key id || signature)>".
    text, _, signatures = proof["checkpoint"].rpartition("\n\n")
    text += "\n"
    for line in signatures.splitlines():
        signer, blob = line.removeprefix("\u2014 ").split(" ")
        blob = base64.b64decode(blob)
        if signer == name and blob[:4] == key_id:
            try:
                Ed25519PublicKey.from_public_bytes(raw[1:]).verify(blob[4:], text.encode())
            except InvalidSignature:
                fail("the checkpoint's signature does not verify")
            break
    else:
        fail(f"the checkpoint is not signed by {name}")
    origin, size, root = text.split("\n")[:3]  # c2sp.org/tlog-checkpoint
    size, root = int(size), base64.b64decode(root)
    if origin != name:
        fail(f"the checkpoint is of log {origin}, not {name}")

    for event in proof["events"]:
        # RFC 9162 section 2.1.3.2: climb from the leaf hash along the path to the root.
        fn, sn = event["index"], size - 1
        r = hashlib.sha256(b"\x00" + event["leaf"].encode()).digest()
        for p in map(base64.b64decode, event["path"]):
            if sn == 0:
                fail(f"event {event['seq']}: the path is too long")
            if fn % 2 == 1 or fn == sn:
                r = hashlib.sha256(b"\x01" + p + r).digest()
                while fn % 2 == 0 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
            else:
                r = hashlib.sha256(b"\x01" + r + p).digest()
            fn, sn = fn >> 1, sn >> 1
        if sn != 0 or r != root or event["index"] != event["seq"] - 1:
            fail(f"event {event['seq']} is not in the signed log")
        fields = json.loads(event["leaf"])  # event_id, type, call_id, time, identity, ...
        if fields[2] != proof["call_id"]:
            fail(f"event {event['seq']} belongs to another call")
        print(f"event {event['seq']} ({fields[1]}, {fields[3]}) of call {fields[2]}: in {origin} at size {size}")
    print("ok: proved")


if __name__ == "__main__":
    main(*sys.argv[1:3])
