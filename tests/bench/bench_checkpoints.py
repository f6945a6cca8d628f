"""What signed checkpoints and the Merkle tree cost an append, and what proofs cost.

    .venv/bin/python tests/bench/bench_checkpoints.py [--events 20000] [--rounds 5]
    .venv/bin/python tests/bench/bench_checkpoints.py --proofs-only --events 1000000 --rounds 3

Appends go through the store's group commit (`append_many`), as the recorder sends them. Measured:
one event per transaction (the durable single call: an fsync each), batches of 64 (a busy gateway),
and the same batches with `synchronous=OFF`, which leaves only Bastion's own CPU work (hashing,
the Merkle frontier, signing every `checkpoint_every` events). Each without a checkpoint key and with
one, interleaved round by round. Prints medians per event.

To compare with the code before the tree (HMAC checkpoints), run the same script with the old
`store/` first on PYTHONPATH (see docs/audit.md, "Cost"); it detects which API it has.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import tempfile
import time
from pathlib import Path

from bastion.store import SqliteAuditStore

NEW_API = "signer" in inspect.signature(SqliteAuditStore).parameters


def make_store(path: Path, every: int, signed: bool = True) -> SqliteAuditStore:
    if not signed:
        return SqliteAuditStore(path)
    if NEW_API:
        from bastion.store.checkpoints import FileWitness, Signer

        return SqliteAuditStore(path, signer=Signer.generate("bench.example/audit"), checkpoint_every=every,
                                witness=FileWitness(path.with_suffix(".witness")))
    return SqliteAuditStore(path, checkpoint_key=b"bench-key", checkpoint_every=every)  # type: ignore[call-arg]


def event(i: int) -> dict[str, object]:
    return {"type": "call.requested", "call_id": f"c{i}", "tool": "sql_query", "connection": "shop",
            "identity": {"subject": "alice", "groups": ["analysts"]}, "decision": {"verdict": "allow"},
            "text": f"SELECT id, name FROM products WHERE id = {i}"}


def per_event_us(store: SqliteAuditStore, n: int, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, n, batch):
        store.append_many([event(i + j) for j in range(batch)])
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--proofs-only", action="store_true", help="Only proving and verifying (e.g. at --events 1000000).")
    args = parser.parse_args()
    if args.proofs_only:
        with tempfile.TemporaryDirectory() as tmp:
            proofs(Path(tmp), args)
        return
    print(f"store API: {'Ed25519 + Merkle tree + witness' if NEW_API else 'HMAC checkpoints (before)'}; "
          f"checkpoint every {args.every} events")
    modes = {"1 per transaction (durable)": (1, True), "1 per transaction (synchronous=OFF: CPU only)": (1, False),
             "64 per transaction (durable)": (64, True), "64 per transaction (synchronous=OFF: CPU only)": (64, False)}
    results: dict[tuple[str, bool], list[float]] = {(m, k): [] for m in modes for k in (False, True)}
    with tempfile.TemporaryDirectory() as tmp:
        # Rounds interleave every mode, with and without a key, so load from elsewhere hits all alike.
        for r in range(args.rounds):
            for label, (batch, durable) in modes.items():
                for signed in (False, True):
                    store = make_store(Path(tmp) / f"{r}-{batch}-{durable}-{signed}.db", args.every, signed)
                    if not durable:
                        store.db.execute("PRAGMA synchronous=OFF")
                    n = args.events if batch > 1 else min(args.events, 400 if durable else 2000)
                    results[(label, signed)].append(per_event_us(store, n, batch))
                    store.close()
        for label in modes:
            plain, keyed = (statistics.median(results[(label, k)]) for k in (False, True))
            print(f"  append, {label:<48} no key {plain:8.1f} µs/event   with key {keyed:8.1f} µs/event   "
                  f"(+{keyed - plain:.1f} µs, medians of {args.rounds})")
        if NEW_API:
            frontier_cost()
            proofs(Path(tmp), args)


def frontier_cost() -> None:
    from bastion.store.merkle import Frontier, leaf_hash

    data = [f'["{i:032x}","call.requested","c{i}"]'.encode() for i in range(100_000)]
    runs = []
    for _ in range(5):
        tree = Frontier()
        start = time.perf_counter()
        for d in data:
            tree.append(leaf_hash(d))
        runs.append((time.perf_counter() - start) / len(data) * 1e6)
    print(f"  Merkle frontier alone: leaf hash + append, median {statistics.median(runs):.2f} µs/event "
          f"(state after 100000: {len(tree.nodes)} hashes)")


def proofs(tmp: Path, args: argparse.Namespace) -> None:
    from bastion.store.checkpoints import FileWitness, Signer
    from bastion.store.proofs import prove, verify_proof
    from bastion.store.verify import verify

    signer = Signer.generate("bench.example/audit")
    store = SqliteAuditStore(tmp / "proofs.db", signer=signer, checkpoint_every=args.every,
                             witness=FileWitness(tmp / "proofs.witness"))
    store.db.execute("PRAGMA synchronous=OFF")
    for i in range(0, args.events, 256):
        store.append_many([event(i + j) for j in range(256)])
    start = time.perf_counter()
    store.checkpoint()
    signing = time.perf_counter() - start
    times, checks = [], []
    for r in range(args.rounds):
        start = time.perf_counter()
        proof = prove(store, f"c{(r * 7919) % args.events}")
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        verify_proof(proof, signer.verifier)
        checks.append(time.perf_counter() - start)
    size = len(proof["events"][0]["path"])
    print(f"  a checkpoint at {args.events} events (root, Ed25519 signature, commit, witness line): {signing * 1e3:.1f} ms; "
          f"proof of one call: {len(json.dumps(proof))} bytes")
    print(f"  prove one call at {args.events} events: median {statistics.median(times) * 1e3:.1f} ms; "
          f"verify the proof: median {statistics.median(checks) * 1e3:.2f} ms; path {size} hashes")
    start = time.perf_counter()
    verify(store.db.conn)
    plain = time.perf_counter() - start
    start = time.perf_counter()
    report = verify(store.db.conn, verifier=signer.verifier, witness=FileWitness(tmp / "proofs.witness"),
                    every=args.every)
    full = time.perf_counter() - start
    assert report.ok, report.problems
    print(f"  verify {args.events} events: chain only {plain:.2f} s; chain + tree + checkpoints + witness {full:.2f} s")


if __name__ == "__main__":
    main()
