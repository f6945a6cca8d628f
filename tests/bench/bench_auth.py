"""Benchmark: what checking an OIDC bearer token costs per request, against a bare joserfc decode
of the same token measured in the same run.

    .venv/bin/python tests/bench/bench_auth.py [--rounds 7]

The JWKS is in the verifier's cache (as it is between refetches), so this is Bastion's own work:
header and kid checks, RS256 signature, claims, the AccessToken. Not part of the tests.
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from bastion.server.auth import OidcVerifier, TokenRules

ISSUER, RESOURCE = "https://idp.example.com", "https://bastion.example.com/mcp"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    now = int(time.time())
    token = jwt.encode({"alg": "RS256", "kid": "k1", "typ": "at+jwt"},
                       {"iss": ISSUER, "aud": RESOURCE, "sub": "alice", "exp": now + 3600, "iat": now,
                        "groups": ["analysts"], "scope": "openid bastion"}, key)
    keys = KeySet([key])
    verifier = OidcVerifier(TokenRules(ISSUER, RESOURCE))
    verifier._keys, verifier._fetched_at = keys, time.monotonic()  # a warm cache, as between refetches

    async def ours() -> float:
        started = time.perf_counter()
        for _ in range(args.calls):
            assert await verifier.verify_token(token) is not None
        return (time.perf_counter() - started) / args.calls * 1e6

    def bare() -> float:
        started = time.perf_counter()
        for _ in range(args.calls):
            jwt.decode(token, keys, algorithms=["RS256"])
        return (time.perf_counter() - started) / args.calls * 1e6

    ours_us = statistics.median(anyio.run(ours) for _ in range(args.rounds))
    bare_us = statistics.median(bare() for _ in range(args.rounds))
    print(f"bearer token check (cached JWKS, RS256): median {ours_us:.0f} µs per request; "
          f"bare joserfc decode {bare_us:.0f} µs ({ours_us / bare_us:.2f}×); {args.rounds} rounds of {args.calls}")


if __name__ == "__main__":
    main()
