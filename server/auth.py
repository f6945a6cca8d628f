"""OIDC bearer tokens: verify a JWT access token against the issuer's JWKS, and map its claims to an Identity.

Bastion is an OAuth 2.1 resource server (the MCP authorization spec): it never issues tokens, it
checks them. Keys come from OIDC discovery (or a configured jwks_uri), cached for a TTL; a token
signed with a key id we do not know triggers one refetch (rate-limited, so random key ids cannot
make us hammer the issuer). Only asymmetric algorithms from an allow-list are accepted, so neither
`none` nor an HMAC "signed" with the issuer's public key can pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from joserfc import jws, jwt
from joserfc.errors import (BadSignatureError, ExpiredTokenError, InvalidClaimError, InvalidKeyIdError, JoseError,
                            MissingClaimError)
from joserfc.jwk import KeySet
from mcp.server.auth.provider import AccessToken, TokenVerifier

from bastion.policy import Identity

log = logging.getLogger(__name__)
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


class TokenRefused(Exception):
    """Why a token was refused, in words fit for the audit log (never the token itself)."""

    def __init__(self, reason: str, **details: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = {k: v for k, v in details.items() if v is not None}


@dataclass(frozen=True)
class TokenRules:
    """What a token must satisfy. ``audience`` is Bastion's own resource URL."""

    issuer: str
    audience: str
    jwks_uri: str | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway_s: float = 30.0
    jwks_ttl_s: float = 600.0
    refetch_interval_s: float = 10.0
    required_scopes: tuple[str, ...] = ()
    groups_claim: str = "groups"
    email_claim: str = "email"
    name_claim: str = "name"

    def __post_init__(self) -> None:
        unsafe = [a for a in self.algorithms if a not in ASYMMETRIC]
        if unsafe:
            raise ValueError(f"algorithms {unsafe} are not allowed; use asymmetric ones: {', '.join(ASYMMETRIC)}")


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """A claim by dotted path (`realm_access.roles`); a claim whose own name holds dots wins."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def identity_from_claims(claims: dict[str, Any], rules: TokenRules) -> Identity:
    raw = claim_at(claims, rules.groups_claim)
    if isinstance(raw, str):
        groups = frozenset(g for g in raw.replace(",", " ").split() if g)
    elif isinstance(raw, (list, tuple)):
        groups = frozenset(str(g) for g in raw if isinstance(g, (str, int)))
    else:
        groups = frozenset()
    email = claim_at(claims, rules.email_claim)
    name = claim_at(claims, rules.name_claim) or claims.get("preferred_username")
    return Identity(str(claims["sub"]), groups, email if isinstance(email, str) else None,
                    name if isinstance(name, str) else None, source="oidc",
                    claims={k: claims.get(k) for k in ("iss", "aud", "exp", "azp", "client_id", "scope") if k in claims})


RefusalHook = Callable[[TokenRefused], Awaitable[None]]


class OidcVerifier(TokenVerifier):
    """The SDK's TokenVerifier over JWKS. ``on_refused`` records each refusal (auth.refused)."""

    def __init__(self, rules: TokenRules, *, http: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.rules = rules
        self.on_refused: RefusalHook | None = None
        self._http = http
        self._clock = clock
        self._jwks_uri = rules.jwks_uri
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")
        self._lock = anyio.Lock()

    # -- the SDK's interface -----------------------------------------------------------------------

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            claims = await self.check(token)
        except TokenRefused as refused:
            log.info("token refused: %s", refused.reason)
            if self.on_refused is not None:
                try:
                    await self.on_refused(refused)
                except Exception:  # recording must not turn a 401 into a 500
                    log.exception("recording a refused token failed")
            return None
        scope = claims.get("scope") or claims.get("scp") or []
        return AccessToken(token=token, client_id=str(claims.get("client_id") or claims.get("azp") or claims["sub"]),
                           scopes=scope.split() if isinstance(scope, str) else [str(s) for s in scope],
                           expires_at=int(claims["exp"]), resource=self.rules.audience, subject=str(claims["sub"]),
                           claims=claims)

    def identity(self, access: AccessToken) -> Identity:
        return identity_from_claims(access.claims or {}, self.rules)

    # -- checks ------------------------------------------------------------------------------------

    async def check(self, token: str) -> dict[str, Any]:
        """The token's claims when it passes every check; TokenRefused naming the first that failed."""
        header = _header(token)
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.rules.algorithms:
            raise TokenRefused(f"algorithm {alg!r} is not allowed", alg=alg, kid=kid)
        keys = await self._keyset()
        if kid is not None and not _has_kid(keys, kid):
            keys = await self._keyset(refetch=True)  # the issuer may have rotated its keys
            if not _has_kid(keys, kid):
                raise TokenRefused("signed with a key the issuer does not publish", alg=alg, kid=kid)
        try:
            claims = dict(jwt.decode(token, keys, algorithms=list(self.rules.algorithms)).claims)
        except BadSignatureError:
            raise TokenRefused("bad signature", alg=alg, kid=kid) from None
        except InvalidKeyIdError:
            raise TokenRefused("signed with a key the issuer does not publish", alg=alg, kid=kid) from None
        except (JoseError, ValueError) as error:
            raise TokenRefused(f"malformed token ({_describe(error)})", alg=alg, kid=kid) from None
        self._validate(claims, alg=alg, kid=kid)
        return claims

    def _validate(self, claims: dict[str, Any], **where: Any) -> None:
        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(self._clock()), leeway=int(self.rules.leeway_s),
            iss={"essential": True, "value": self.rules.issuer},
            aud={"essential": True, "value": self.rules.audience},
            exp={"essential": True}, sub={"essential": True})
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise TokenRefused("expired", subject=claims.get("sub"), **where) from None
        except MissingClaimError as error:
            raise TokenRefused(f"missing claim {error.claim!r}", subject=claims.get("sub"), **where) from None
        except InvalidClaimError as error:
            what = {"iss": "wrong issuer", "aud": "wrong audience", "nbf": "not yet valid", "iat": "issued in the future"}
            raise TokenRefused(what.get(error.claim, f"invalid claim {error.claim!r}"),
                               subject=claims.get("sub"), **where) from None
        except (JoseError, ValueError) as error:
            raise TokenRefused(f"invalid claims ({_describe(error)})", subject=claims.get("sub"), **where) from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise TokenRefused("missing claim 'sub'", **where)

    # -- keys --------------------------------------------------------------------------------------

    async def _keyset(self, *, refetch: bool = False) -> KeySet:
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            stale = self._keys is None or age > self.rules.jwks_ttl_s
            if stale or (refetch and age >= self.rules.refetch_interval_s):
                self._keys = await self._fetch()
                self._fetched_at = time.monotonic()
            assert self._keys is not None
            return self._keys

    async def _fetch(self) -> KeySet:
        http = self._http or httpx.AsyncClient(timeout=10.0)
        try:
            if self._jwks_uri is None:
                url = self.rules.issuer.rstrip("/") + "/.well-known/openid-configuration"
                discovery = (await http.get(url)).raise_for_status().json()
                if discovery.get("issuer") != self.rules.issuer:
                    raise TokenRefused(f"the issuer's discovery document names another issuer ({discovery.get('issuer')!r})")
                self._jwks_uri = discovery["jwks_uri"]
            return KeySet.import_key_set((await http.get(self._jwks_uri)).raise_for_status().json())
        except TokenRefused:
            raise
        except (httpx.HTTPError, ValueError, KeyError, JoseError) as error:
            if self._keys is not None:  # the issuer is down: keep the keys we have
                log.warning("JWKS refetch failed (%s); keeping the cached keys", error)
                return self._keys
            raise TokenRefused(f"the issuer's keys could not be fetched ({type(error).__name__})") from None
        finally:
            if self._http is None:
                await http.aclose()


def _header(token: str) -> dict[str, Any]:
    try:
        header = jws.extract_compact(token.encode("ascii")).protected
    except (JoseError, ValueError, UnicodeError) as error:
        raise TokenRefused(f"not a signed JWT ({_describe(error)})") from None
    return header if isinstance(header, dict) else {}


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(key.kid == kid for key in keys.keys)


def _describe(error: BaseException) -> str:
    return getattr(error, "error", None) or type(error).__name__


async def identity_for_token(rules: TokenRules, token: str) -> Identity:
    """stdio: the identity behind a token given in the environment (BASTION_TOKEN), checked like a
    bearer token; TokenRefused when it fails, or lacks a required scope."""
    verifier = OidcVerifier(rules)
    claims = await verifier.check(token)
    scope = claims.get("scope") or claims.get("scp") or []
    scopes = set(scope.split() if isinstance(scope, str) else scope)
    missing = [s for s in rules.required_scopes if s not in scopes]
    if missing:
        raise TokenRefused(f"missing required scope {missing[0]!r}", subject=claims.get("sub"))
    return identity_from_claims(claims, rules)


def expired(identity: Identity, clock: Callable[[], float] = time.time) -> bool:
    """A token identity whose token's exp has passed (stdio sessions outlive tokens)."""
    exp = identity.claims.get("exp")
    return isinstance(exp, (int, float)) and exp < clock()
