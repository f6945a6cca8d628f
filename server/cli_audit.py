"""`bastion audit keygen | checkpoint | verify | prove | verify-proof`: signed checkpoints, the
witness and inclusion proofs (docs/audit.md). Registered on the `audit` group by server/cli.py."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click

from bastion.server.cli import _load, _store, audit, click_errors, config_option
from bastion.server.config import Config
from bastion.store.checkpoints import FileWitness, HttpWitness, Verifier, keygen
from bastion.store.errors import StoreError

if TYPE_CHECKING:
    from bastion.tools.connections import Connection


def _public_keys(paths: tuple[str, ...], config_path: str | None, *, required: bool) -> list[Verifier]:
    """The checkpoints' public keys: the files given (several: a log whose key was rotated), else the
    config's signing key's public half."""
    keys = []
    for path in paths:
        try:
            keys.append(Verifier.parse(Path(path).read_text(encoding="utf-8")))
        except OSError as error:
            raise click.ClickException(f"cannot read the public key `{path}` ({error.strerror})") from None
        except StoreError as error:
            raise click.ClickException(f"`{path}`: {error}") from None
    if keys:
        return keys
    with click_errors():
        signer = _load(config_path).checkpoint_signer() if config_path is not None or not required else None
    if signer is None and required:
        raise click.ClickException("no public key: give --public-key FILE (the .pub `bastion audit keygen` wrote)")
    return [signer.verifier] if signer is not None else []


@audit.command(name="keygen")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--name", help="The key's name and the log's origin line (default: bastion.audit/<host>).")
def keygen_command(directory: str, name: str | None) -> None:
    """Write an Ed25519 key pair for signed checkpoints: DIR/audit-checkpoint.key (the gateway's,
    mode 0600; name it with `[audit] checkpoint_key_file`) and DIR/audit-checkpoint.pub (for anyone
    who verifies). Refuses to overwrite a key.

    Example: bastion audit keygen /etc/bastion/keys --name audit.example.com/prod
    """
    name = name or f"bastion.audit/{socket.gethostname().split('.')[0] or 'gateway'}"
    try:
        private, public = keygen(directory, name)
    except FileExistsError:
        raise click.ClickException(f"{directory}/audit-checkpoint.key exists: a new key would orphan the old "
                                   "checkpoints (move it aside first)") from None
    except StoreError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"signing key: {private}  (keep it from the agents: [audit] checkpoint_key_file)")
    click.echo(f"public key:  {public}  {public.read_text().strip()}")


@audit.command(name="checkpoint")
@config_option
def checkpoint_command(config_path: str | None) -> None:
    """Sign a checkpoint at the end of the log now (a gateway also does at shutdown), and witness it.

    Example: bastion audit checkpoint --config bastion.toml
    """
    config = _load(config_path)
    with click_errors():
        signer, witness = config.checkpoint_signer(), config.checkpoint_witness()
    if signer is None:
        raise click.ClickException("no signing key configured ([audit] checkpoint_key_file or checkpoint_key_env)")
    from bastion.server.build import open_audit_store

    path = config.path(config.audit.path)
    if not config.audit.url and not path.exists():
        raise click.ClickException(f"no audit log at {path}")
    with click_errors():
        size = open_audit_store(config).checkpoint()
    click.echo(f"signed a checkpoint at {size or 0} events"
               + (f", witnessed in {witness.url if isinstance(witness, HttpWitness) else witness.path}" if witness else ""))


@audit.command(name="verify")
@config_option
@click.option("--public-key", "public_key", type=click.Path(dir_okay=False), multiple=True,
              help="The checkpoints' public key (default: from the config's signing key); repeat it for a rotated key.")
@click.option("--witness", "witness_file", type=click.Path(dir_okay=False),
              help="The witness file to check the log against (default: the config's [audit] witness).")
@click.option("--every", type=int, help="The checkpoint cadence to require (default: [audit] checkpoint_every).")
@click.option("--key-env", help="Legacy: environment variable holding the HMAC key of checkpoints before 0006.")
@click.option("--key-file", type=click.Path(dir_okay=False), help="Legacy: file holding that HMAC key.")
@click.option("--consistency", nargs=2, type=int, metavar="OLD NEW",
              help="Only prove that the log signed at OLD events is a prefix of the one signed at NEW.")
def verify_command(config_path: str | None, public_key: tuple[str, ...], witness_file: str | None, every: int | None,
                   key_env: str | None, key_file: str | None, consistency: tuple[int, int] | None) -> None:
    """Check the hash chain; with the public key, every signed checkpoint, the Merkle tree they sign
    and their cadence; with the witness, that the log is still what the witness saw. With
    --consistency OLD NEW, prove and check that one checkpoint's log is a prefix of another's (the
    proof to hand a third party: `bastion audit prove-consistency`). Exit status 1 on any problem.

    Example: bastion audit verify --public-key audit-checkpoint.pub --witness /mnt/witness/audit.log
    """
    from bastion.store.verify import verify

    config = _load(config_path)
    verifier = _public_keys(public_key, config_path, required=False)
    if consistency:
        from bastion.store.proofs import ProofError, prove_consistency, verify_consistency_proof

        if not verifier:
            raise click.ClickException("proving consistency needs the public key: add --public-key FILE")
        try:
            old, new = verify_consistency_proof(prove_consistency(_store(config_path), *consistency), verifier)
        except (StoreError, ProofError) as error:
            click.echo(f"not proved: {error}")
            sys.exit(1)
        click.echo(f"ok: the log of {old} events is a prefix of the log of {new} events, both signed")
        return
    with click_errors():
        witness = FileWitness(witness_file) if witness_file else config.checkpoint_witness()
    hmac_key: bytes | None = None
    if key_env:
        hmac_key = os.environ.get(key_env, "").encode() or None
        if hmac_key is None:
            raise click.ClickException(f"the environment variable `{key_env}` is not set")
    elif key_file:
        hmac_key = Path(key_file).read_bytes().strip()
    if witness is not None and not verifier:
        raise click.ClickException("checking a witness needs the public key: add --public-key FILE")
    if isinstance(witness, HttpWitness):
        raise click.ClickException(f"the witness is the endpoint {witness.url}: export what it holds to a file "
                                   "and give it with --witness FILE")
    if witness is not None and not witness.path.is_file():
        raise click.ClickException(f"no witness file at {witness.path}")
    report = verify(_store(config_path).conn, hmac_key, verifier=verifier or None, witness=witness,
                    every=every or config.audit.checkpoint_every)
    click.echo(f"{report.events} events, {report.checkpoints} signed checkpoints checked"
               + (f", {report.witnessed} witnessed checkpoints" if witness is not None else "")
               + ("" if verifier else " (no public key: a cut tail or a rewritten chain cannot be detected)"))
    for seq, problem in report.problems:
        click.echo(f"event {seq}: {problem}" if seq else problem)
    if report.ok:
        if verifier and report.covered < report.events:
            after = (f"event {report.events} is" if report.covered + 1 == report.events else
                     f"events {report.covered + 1}..{report.events} are")
            click.echo(f"{after} after the last checkpoint: only the chain vouches for them")
        click.echo("ok: the chain is intact" + (" and every checkpoint holds" if verifier else ""))
    sys.exit(0 if report.ok else 1)


@audit.command(name="prove")
@click.argument("call_id")
@config_option
@click.option("--size", type=int, help="Prove against the checkpoint at this tree size (default: the latest).")
@click.option("-o", "--output", type=click.File("w", encoding="utf-8"), default="-", help="Write the proof to FILE.")
def prove_command(call_id: str, config_path: str | None, size: int | None, output: TextIO) -> None:
    """Print an inclusion proof of a call's events against a signed checkpoint, as JSON, for anyone to
    check offline with the public key (`bastion audit verify-proof`, or docs/verify_proof.py).

    Example: bastion audit prove 3f2a9c1e0b7d4e5f6a7b -o call.proof.json
    """
    from bastion.store.proofs import prove

    try:
        proof = prove(_store(config_path), call_id, size)
    except StoreError as error:
        raise click.ClickException(f"{error} (sign one now: bastion audit checkpoint)"
                                   if "covers" in str(error) else str(error)) from None
    output.write(json.dumps(proof, ensure_ascii=False, indent=1) + "\n")


@audit.command(name="prove-consistency")
@click.argument("old", type=int)
@click.argument("new", type=int, required=False)
@config_option
@click.option("-o", "--output", type=click.File("w", encoding="utf-8"), default="-", help="Write the proof to FILE.")
def prove_consistency_command(old: int, new: int | None, config_path: str | None, output: TextIO) -> None:
    """Print a proof (RFC 9162 consistency) that the log the signed checkpoint at OLD events vouches for
    is a prefix of the one at NEW (default: the latest), for anyone to check with the public key.

    Example: bastion audit prove-consistency 24000 -o since-24000.proof.json
    """
    from bastion.store.proofs import prove_consistency

    with click_errors():
        proof = prove_consistency(_store(config_path), old, new)
    output.write(json.dumps(proof, ensure_ascii=False, indent=1) + "\n")


@audit.command(name="verify-proof")
@click.argument("proof_file", type=click.File("r", encoding="utf-8"))
@click.option("--public-key", "public_key", type=click.Path(dir_okay=False), required=True, multiple=True,
              help="The log's public key (the .pub `bastion audit keygen` wrote); repeat it for a rotated key.")
def verify_proof_command(proof_file: TextIO, public_key: tuple[str, ...]) -> None:
    """Check a proof offline: an inclusion proof (the checkpoint's signature, each event's path to its
    root) or a consistency proof (both checkpoints' signatures, the older log a prefix of the newer).
    Needs no config and no log. Exit status 1 when it does not hold.

    Example: bastion audit verify-proof call.proof.json --public-key audit-checkpoint.pub
    """
    from bastion.store.checkpoints import open_checkpoint
    from bastion.store.proofs import CONSISTENCY, ProofError, verify_consistency_proof, verify_proof

    verifier = _public_keys(public_key, None, required=True)
    try:
        proof = json.load(proof_file)
        if isinstance(proof, dict) and proof.get("schema") == CONSISTENCY:
            old, new = verify_consistency_proof(proof, verifier)
            click.echo(f"the log of {old} events signed by {verifier[0].name} is a prefix of its log of {new} events")
            click.echo("ok: proved")
            return
        shown = verify_proof(proof, verifier)
    except (ValueError, ProofError) as error:
        click.echo(f"not proved: {error}")
        sys.exit(1)
    checkpoint = open_checkpoint(proof["checkpoint"], verifier)
    click.echo(f"checkpoint: {checkpoint.origin}, {checkpoint.size} events, signed by {checkpoint.origin}")
    for seq, type_ in shown:
        click.echo(f"  event {seq} ({type_}) of call {proof['call_id']} is in it")
    click.echo("ok: proved")


def draft_connections(draft: Config) -> dict[str, Connection] | None:
    """The draft's database connections that mask, their catalogs read, for `bastion policy backtest`
    to re-check masking verdicts; None (and a note) when they cannot be built or read."""
    import anyio

    from bastion.policy.errors import BastionError
    from bastion.server.build import build_executor
    from bastion.server.config import ConnectionConfig
    from bastion.tools.backtest import refresh_catalogs
    from bastion.tools.connections import Connection

    async def build() -> dict[str, Connection]:
        policies, connections = draft.policies(), {}
        for name, conn in draft.connections.items():
            if isinstance(conn, ConnectionConfig) and (found := draft.masking(name)) is not None:
                connections[name] = Connection(name, conn.kind, policies[name], build_executor(draft, name, conn),
                                               masking=found)
        try:
            await refresh_catalogs(connections)
        finally:
            for connection in connections.values():
                await connection.close()
        return connections

    try:
        return anyio.run(build)
    except (BastionError, OSError) as error:
        click.echo(f"note: masking verdicts are not re-checked ({getattr(error, 'message', error)})", err=True)
        return None
