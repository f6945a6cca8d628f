"""`bastion login`: a person's access token from the OIDC device flow (RFC 8628), kept for the CLI.

The approvals CLI votes only as a verified person. `BASTION_TOKEN` works anywhere (CI, scripts); on
a terminal, `bastion login` asks the issuer for a device code, the person signs in with a browser
(any device), and the token is kept in the user's state folder, one file per issuer and resource,
readable by that user only. The token is checked like any bearer token each time it is used; it is
never written to the audit log.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from authlib.integrations.httpx_client import OAuth2Client, OAuthError

from bastion.policy.errors import ConfigError
from bastion.server.config import AuthConfig

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class LoginFailed(Exception):
    """The device flow ended without a token: denied, expired, or the issuer cannot do it."""


@dataclass(frozen=True)
class DeviceCode:
    device_code: str
    user_code: str
    token_endpoint: str  # from the discovery document start() read, so wait() need not read it again
    verification_uri: str
    verification_uri_complete: str | None
    interval: float
    expires_at: float


def client_id(auth: AuthConfig, source: str) -> str:
    if not auth.cli_client_id:
        raise ConfigError(f"{source}: auth.cli_client_id: not set; `bastion login` needs the OIDC client the CLI signs in as",
                          hint="Register a public client with the device grant at your issuer and name it in "
                               "[auth] cli_client_id, or set BASTION_TOKEN instead.")
    return auth.cli_client_id


def start(auth: AuthConfig, cli_client: str, http: httpx.Client) -> DeviceCode:
    """Ask the issuer for a device code, for Bastion's resource (RFC 8707), so the token's `aud` holds it."""
    try:
        metadata = http.get(auth.issuer.rstrip("/") + "/.well-known/openid-configuration").raise_for_status().json()
    except (httpx.HTTPError, ValueError) as error:
        raise LoginFailed(f"cannot read the issuer's discovery document at {auth.issuer}: {error}") from None
    endpoint = metadata.get("device_authorization_endpoint")
    if not endpoint or not metadata.get("token_endpoint"):
        raise LoginFailed(f"the issuer {auth.issuer} offers no device authorization endpoint; set BASTION_TOKEN instead")
    scope = " ".join(["openid", *auth.required_scopes])
    answer = http.post(endpoint, data={"client_id": cli_client, "scope": scope, "resource": auth.resource})
    body: dict[str, Any] = answer.json() if answer.headers.get("content-type", "").startswith("application/json") else {}
    if answer.status_code != 200 or "device_code" not in body:
        raise LoginFailed(f"the issuer refused the device code request: {body.get('error_description') or body.get('error') or answer.status_code}")
    return DeviceCode(body["device_code"], body["user_code"], metadata["token_endpoint"], body["verification_uri"],
                      body.get("verification_uri_complete"),
                      float(body.get("interval", 5)), time.time() + float(body.get("expires_in", 600)))


def wait(cli_client: str, code: DeviceCode, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll the token endpoint until the person has signed in (RFC 8628 §3.4–3.5): the token response."""
    oauth = OAuth2Client(client_id=cli_client, token_endpoint_auth_method="none", timeout=10.0)
    interval = code.interval
    with oauth:
        while time.time() < code.expires_at:
            sleep(interval)
            try:
                return dict(oauth.fetch_token(code.token_endpoint, grant_type=DEVICE_GRANT, device_code=code.device_code,
                                              client_id=cli_client))
            except OAuthError as error:
                if error.error == "authorization_pending":
                    continue
                if error.error == "slow_down":
                    interval += 5  # as §3.5 asks
                    continue
                raise LoginFailed({"access_denied": "the sign-in was denied",
                                   "expired_token": "the code expired before anyone signed in"}.get(
                                       error.error, f"the issuer answered {error.error}: {error.description}")) from None
    raise LoginFailed("the code expired before anyone signed in; run `bastion login` again")


# -- where the token is kept ---------------------------------------------------------------------


def token_path(auth: AuthConfig) -> Path:
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    key = hashlib.sha256(f"{auth.issuer}\n{auth.resource}".encode()).hexdigest()[:24]
    return state / "bastion" / "tokens" / f"{key}.json"


def save(auth: AuthConfig, token: dict[str, Any]) -> Path:
    path = token_path(auth)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    kept = {"issuer": auth.issuer, "resource": auth.resource, "access_token": token["access_token"],
            "expires_at": time.time() + float(token.get("expires_in", 300))}
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        json.dump(kept, out)
    return path


def stored(auth: AuthConfig) -> str | None:
    """The kept access token, or None when there is none or it has expired."""
    try:
        kept = json.loads(token_path(auth).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if kept.get("expires_at", 0) <= time.time():
        return None
    return str(kept["access_token"])


def forget(auth: AuthConfig) -> bool:
    try:
        token_path(auth).unlink()
        return True
    except FileNotFoundError:
        return False
