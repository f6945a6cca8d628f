"""A real OpenID Connect provider for tests (tests/oidc_provider.py): started once per session as a child
process on a free 127.0.0.1 port, with this interpreter; stopped at the end.

The provider is shared by the whole session: add users and clients with names of your own, and read
the current kid from ``jwks()`` or ``rotate()`` rather than assuming one (another test may have rotated).
``stats()`` counts requests since the start, so compare counts before and after, not absolute values.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from tests.processes import stop

PROVIDER = Path(__file__).resolve().parent / "oidc_provider.py"
HOW_TO = (f"The test OIDC provider ({PROVIDER}) needs starlette, uvicorn and joserfc in the interpreter "
          f"running the tests ({sys.executable}): install the project with `pip install -e '.[dev]'`. "
          "Its own log follows.")
# /admin/token options; every other keyword of OidcProvider.token() is a claim override.
TOKEN_OPTIONS = {"expires_in", "nbf_offset", "alg", "client_id", "header", "unpublished_key"}


@dataclass
class OidcProvider:
    issuer: str  # http://127.0.0.1:PORT, also the discovery base
    process: subprocess.Popen[bytes]
    log: Path  # the provider's stderr
    http: httpx.Client  # based at the issuer: http.get("/jwks")

    def add_user(self, sub: str, **claims: Any) -> dict[str, Any]:
        """Define (or replace) a user: ``add_user("alice", email="a@x", groups=["dba"])``."""
        return self._post("/admin/users", {"sub": sub, **claims})

    def token(self, sub: str | None, aud: str | list[str] | None, scope: str = "", **overrides: Any) -> str:
        """A signed access token (``typ: at+jwt``) for a user, with the claims given to add_user (none if undefined).

        Options: expires_in, nbf_offset, alg ("RS256" or "ES256"), client_id, header (header fields,
        None removes one), unpublished_key (signed by a fresh key whose kid is in no JWKS). Every other
        keyword sets a claim, and None removes it: ``token("alice", "bastion", iss="http://evil", exp=0,
        nbf=None)`` is a well-signed token from the wrong issuer, long expired, without nbf. To drop sub
        but keep the user's other claims: ``extra={"sub": None}`` (``sub`` is the first parameter).
        """
        body: dict[str, Any] = {"sub": sub, "aud": aud, "scope": scope, "extra": dict(overrides.pop("extra", {}))}
        for name, value in overrides.items():
            if name in TOKEN_OPTIONS:
                body[name] = value
            else:
                body["extra"][name] = value
        return str(self._post("/admin/token", body)["access_token"])

    def rotate(self, keep_old: bool = True) -> str:
        """A new RS256 signing key; the JWKS keeps the old RSA keys only if ``keep_old``. Returns the new kid."""
        return str(self._post("/admin/rotate", {"keep_old": keep_old})["kid"])

    def register_client(self, client_id: str, secret: str, redirect_uris: list[str], resource: str | None = None,
                        service_claims: dict[str, Any] | None = None, public: bool = False) -> None:
        """A client for /authorize and /token; ``resource`` is its access tokens' ``aud`` unless the request
        names one (RFC 8707); ``service_claims`` (with an optional ``sub``) enables client_credentials;
        ``public`` lets it use the device flow without a secret."""
        self._post("/admin/clients", {"client_id": client_id, "client_secret": secret, "redirect_uris": redirect_uris,
                                      "resource": resource, "service_claims": service_claims, "public": public})

    def jwks(self) -> dict[str, Any]:
        """The published keys, read without counting as a /jwks fetch."""
        return dict(self._get("/admin/jwks"))

    def stats(self) -> dict[str, int]:
        """Requests so far per path, relative to the issuer: ``stats().get("/jwks", 0)``."""
        return dict(self._get("/admin/stats"))

    def _get(self, path: str) -> Any:
        response = self.http.get(path)
        response.raise_for_status()
        return response.json()

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.http.post(path, json=body)
        if response.is_error:
            raise AssertionError(f"{path} answered {response.status_code}: {response.text}")
        return response.json()


def _fail(process: subprocess.Popen[bytes], log: Path, why: str) -> NoReturn:
    stop(process)
    pytest.fail(f"{why}. {HOW_TO}\n{log.read_text(errors='replace')}")


def _start(root: Path, issuer_path: str = "/") -> tuple[str, subprocess.Popen[bytes]]:
    """The provider running and answering discovery, and its issuer; else the test fails saying why."""
    log = root / "oidc.log"
    with log.open("ab") as err:
        process = subprocess.Popen([sys.executable, str(PROVIDER), "--port", "0", "--issuer-path", issuer_path],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 20)
    line = process.stdout.readline() if ready else b""
    process.stdout.close()  # the provider prints only this line
    try:
        issuer = str(json.loads(line)["issuer"])
    except (ValueError, KeyError):
        _fail(process, log, f"The test OIDC provider did not announce its issuer (exit status {process.poll()}, "
                            f"printed {line[:200]!r})")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _fail(process, log, f"The test OIDC provider exited with status {process.returncode}")
        try:
            if httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=1).status_code == 200:
                return issuer, process
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    _fail(process, log, f"The test OIDC provider did not answer discovery at {issuer} within 10 s")


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    root = tmp_path_factory.mktemp("oidc")
    issuer, process = _start(root)
    try:
        with httpx.Client(base_url=issuer, timeout=10) as http:
            yield OidcProvider(issuer, process, root / "oidc.log", http)
    finally:
        stop(process)
