"""The test OIDC provider itself: discovery, JWKS, minted tokens, rotation, the code flow with PKCE."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact

from tests.oidc_server import OidcProvider, _start
from tests.processes import stop

REDIRECT = "http://127.0.0.1:9/callback"


def _verify(provider: OidcProvider, token: str) -> jwt.Token:
    """Check a token the way a resource server would: against the published /jwks."""
    keys = KeySet.import_key_set(provider.http.get("/jwks").json())
    return jwt.decode(token, keys, algorithms=["RS256", "ES256"])


def _name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _login(provider: OidcProvider, client_id: str, sub: str, challenge: str, **extra: str) -> dict[str, list[str]]:
    """GET the login form, pick ``sub`` and sign in; the query of the redirect back to the client."""
    params = {"client_id": client_id, "redirect_uri": REDIRECT, "response_type": "code", "scope": "openid email",
              "state": "st-1", "nonce": "n-1", "code_challenge": challenge, "code_challenge_method": "S256"} | extra
    form = provider.http.get("/authorize", params=params)
    assert form.status_code == 200 and 'id="sub"' in form.text and f'value="{sub}"' in form.text
    assert 'id="sign-in"' in form.text
    answer = provider.http.post("/authorize", data=params | {"sub": sub})
    assert answer.status_code == 303
    location = urlsplit(answer.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    return parse_qs(location.query)


@pytest.fixture
def client(oidc_provider: OidcProvider) -> tuple[str, str]:
    client_id, secret = _name("web"), secrets.token_urlsafe(16)
    oidc_provider.register_client(client_id, secret, [REDIRECT], resource="https://bastion.test/mcp")
    return client_id, secret


def test_discovery_names_the_issuer_and_its_endpoints(oidc_provider: OidcProvider) -> None:
    meta = oidc_provider.http.get("/.well-known/openid-configuration").json()
    assert meta["issuer"] == oidc_provider.issuer
    assert meta["jwks_uri"] == f"{oidc_provider.issuer}/jwks"
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["response_types_supported"] == ["code"]
    assert {"RS256", "ES256"} <= set(meta["id_token_signing_alg_values_supported"])


def test_a_minted_token_verifies_against_the_jwks_and_carries_the_users_claims(oidc_provider: OidcProvider) -> None:
    sub = _name("alice")
    oidc_provider.add_user(sub, email="alice@example.test", groups=["dba"], realm_access={"roles": ["admin"]})
    token = _verify(oidc_provider, oidc_provider.token(sub, "bastion", "db:read", extra_claim="x"))
    assert token.header["typ"] == "at+jwt"
    assert token.header["kid"] in {k["kid"] for k in oidc_provider.jwks()["keys"]}
    claims = token.claims
    assert (claims["iss"], claims["sub"], claims["aud"]) == (oidc_provider.issuer, sub, "bastion")
    assert claims["scope"] == "db:read"
    assert claims["email"] == "alice@example.test" and claims["groups"] == ["dba"]
    assert claims["realm_access"] == {"roles": ["admin"]} and claims["extra_claim"] == "x"
    assert claims["nbf"] <= time.time() < claims["exp"] and claims["jti"] and claims["client_id"]


def test_overrides_forge_well_signed_but_wrong_tokens(oidc_provider: OidcProvider) -> None:
    oidc_provider.add_user("bob", email="bob@example.test")
    forged = oidc_provider.token("bob", "bastion", iss="http://evil.test", expires_in=-60, extra={"sub": None})
    claims = _verify(oidc_provider, forged).claims
    assert claims["iss"] == "http://evil.test" and claims["exp"] < time.time()
    assert "sub" not in claims and claims["email"] == "bob@example.test"
    assert "nbf" not in _verify(oidc_provider, oidc_provider.token("bob", "bastion", nbf=None)).claims
    assert _verify(oidc_provider, oidc_provider.token("bob", "bastion", nbf_offset=600)).claims["nbf"] > time.time()
    es = _verify(oidc_provider, oidc_provider.token("bob", "bastion", alg="ES256"))
    assert es.header["alg"] == "ES256"


def test_an_unpublished_key_signs_with_a_kid_no_jwks_has(oidc_provider: OidcProvider) -> None:
    token = oidc_provider.token("bob", "bastion", unpublished_key=True)
    kid = extract_compact(token.encode()).headers()["kid"]
    assert kid not in {k["kid"] for k in oidc_provider.jwks()["keys"]}
    with pytest.raises(InvalidKeyIdError):
        _verify(oidc_provider, token)
    published_kid = oidc_provider.jwks()["keys"][0]["kid"]
    forged = oidc_provider.token("bob", "bastion", unpublished_key=True, header={"kid": published_kid})
    with pytest.raises(BadSignatureError):  # a published kid, but not that key's signature
        _verify(oidc_provider, forged)


def test_rotation_publishes_the_new_kid_and_keeps_the_old_on_request(oidc_provider: OidcProvider) -> None:
    before = oidc_provider.token("bob", "bastion")
    old_kids = {k["kid"] for k in oidc_provider.jwks()["keys"]}
    kid = oidc_provider.rotate(keep_old=True)
    kids = {k["kid"] for k in oidc_provider.jwks()["keys"]}
    assert kid not in old_kids and kids == old_kids | {kid}
    assert _verify(oidc_provider, oidc_provider.token("bob", "bastion")).header["kid"] == kid
    _verify(oidc_provider, before)  # the old key is still published


def test_rotation_without_keep_old_drops_the_old_signing_key(oidc_provider: OidcProvider) -> None:
    before = oidc_provider.token("bob", "bastion")
    old_kid = extract_compact(before.encode()).headers()["kid"]
    kid = oidc_provider.rotate(keep_old=False)
    keys = oidc_provider.jwks()["keys"]
    assert old_kid not in {k["kid"] for k in keys}
    assert [k["kid"] for k in keys if k["kty"] == "RSA"] == [kid]  # the ES256 key stays
    with pytest.raises(InvalidKeyIdError):
        _verify(oidc_provider, before)


def test_the_authorization_code_flow_with_pkce(oidc_provider: OidcProvider, client: tuple[str, str]) -> None:
    client_id, secret = client
    sub = _name("carol")
    oidc_provider.add_user(sub, email="carol@example.test", name="Carol")
    verifier, challenge = _pkce()
    query = _login(oidc_provider, client_id, sub, challenge)
    assert query["state"] == ["st-1"] and query["iss"] == [oidc_provider.issuer]
    exchange = {"grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": REDIRECT,
                "code_verifier": verifier}
    answer = oidc_provider.http.post("/token", data=exchange, auth=(client_id, secret))
    assert answer.status_code == 200, answer.text
    tokens = answer.json()
    assert tokens["token_type"] == "Bearer" and tokens["scope"] == "openid email"
    id_token = _verify(oidc_provider, tokens["id_token"]).claims
    assert (id_token["aud"], id_token["nonce"], id_token["sub"]) == (client_id, "n-1", sub)
    assert id_token["email"] == "carol@example.test"
    access = _verify(oidc_provider, tokens["access_token"]).claims
    assert (access["aud"], access["client_id"], access["sub"]) == ("https://bastion.test/mcp", client_id, sub)
    info = oidc_provider.http.get("/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert info.json()["email"] == "carol@example.test"
    again = oidc_provider.http.post("/token", data=exchange, auth=(client_id, secret))
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_a_wrong_verifier_is_refused_and_spends_the_code(oidc_provider: OidcProvider, client: tuple[str, str]) -> None:
    client_id, secret = client
    oidc_provider.add_user("dave")
    verifier, challenge = _pkce()
    code = _login(oidc_provider, client_id, "dave", challenge)["code"][0]
    exchange = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "client_id": client_id,
                "client_secret": secret}  # client_secret_post
    wrong = oidc_provider.http.post("/token", data=exchange | {"code_verifier": _pkce()[0]})
    assert wrong.status_code == 400 and "PKCE" in wrong.json()["error_description"]
    right = oidc_provider.http.post("/token", data=exchange | {"code_verifier": verifier})
    assert right.status_code == 400


def test_a_resource_parameter_sets_the_audience(oidc_provider: OidcProvider, client: tuple[str, str]) -> None:
    client_id, secret = client
    oidc_provider.add_user("erin")
    verifier, challenge = _pkce()
    code = _login(oidc_provider, client_id, "erin", challenge, resource="https://other.test")["code"][0]
    tokens = oidc_provider.http.post("/token", auth=(client_id, secret), data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier}).json()
    assert _verify(oidc_provider, tokens["access_token"]).claims["aud"] == "https://other.test"


def test_bad_clients_and_redirects_are_refused(oidc_provider: OidcProvider, client: tuple[str, str]) -> None:
    client_id, _ = client
    params = {"client_id": client_id, "redirect_uri": "http://evil.test/cb", "response_type": "code",
              "code_challenge": _pkce()[1], "code_challenge_method": "S256"}
    assert oidc_provider.http.get("/authorize", params=params).status_code == 400  # no redirect to it
    no_pkce = params | {"redirect_uri": REDIRECT, "code_challenge_method": "plain"}
    assert oidc_provider.http.get("/authorize", params=no_pkce).status_code == 400
    denied = oidc_provider.http.post("/authorize", data=params | {"redirect_uri": REDIRECT, "deny": "1"})
    assert parse_qs(urlsplit(denied.headers["location"]).query)["error"] == ["access_denied"]
    bad_secret = oidc_provider.http.post("/token", data={"grant_type": "authorization_code"}, auth=(client_id, "no"))
    assert bad_secret.status_code == 401 and bad_secret.json()["error"] == "invalid_client"


def test_client_credentials_for_a_service_account(oidc_provider: OidcProvider) -> None:
    client_id = _name("svc")
    oidc_provider.register_client(client_id, "s3cret", [], resource="bastion",
                                  service_claims={"sub": "svc-ci", "groups": ["ci"]})
    answer = oidc_provider.http.post("/token", data={"grant_type": "client_credentials", "scope": "db:read"},
                                     auth=(client_id, "s3cret"))
    claims = _verify(oidc_provider, answer.json()["access_token"]).claims
    assert (claims["sub"], claims["aud"], claims["groups"], claims["scope"]) == ("svc-ci", "bastion", ["ci"], "db:read")


def test_stats_count_jwks_fetches(oidc_provider: OidcProvider) -> None:
    before = oidc_provider.stats().get("/jwks", 0)
    oidc_provider.jwks()  # the admin view does not count
    httpx.get(f"{oidc_provider.issuer}/jwks")
    httpx.get(f"{oidc_provider.issuer}/jwks")
    assert oidc_provider.stats()["/jwks"] == before + 2


def test_an_issuer_with_a_path_serves_under_it(tmp_path: Path) -> None:
    issuer, process = _start(tmp_path, "/realms/test")
    try:
        assert issuer.endswith("/realms/test")
        meta = httpx.get(f"{issuer}/.well-known/openid-configuration").json()
        assert meta["issuer"] == issuer and meta["jwks_uri"] == f"{issuer}/jwks"
        assert httpx.get(f"{issuer}/jwks").json()["keys"]
    finally:
        stop(process)
