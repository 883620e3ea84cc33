#!/usr/bin/env python3
"""Verify a DPoP-bound halflife access token the way a resource server does.

The pattern to copy into a resource server (RFC 9449 §7, RFC 9068):

  1. Verify the access token offline against halflife's JWKS: signature,
     `typ: at+jwt`, `iss`, `aud`, `exp`.
  2. Verify the DPoP proof sent with the request: `typ: dpop+jwt`, an
     asymmetric `alg`, a public `jwk` in the header that verifies the
     signature, `htm`/`htu` naming this request, a fresh `iat`, and `ath`
     (the SHA-256 of the access token).
  3. Check that the proof key's RFC 7638 thumbprint equals the token's
     `cnf.jkt`. A thief holding only the token cannot produce the proof.

A real server also remembers each proof's `jti` for the `iat` window and
refuses a repeat.

Usage:
  dpop_resource_server.py JWKS_JSON ISSUER AUDIENCE METHOD URL AUTHORIZATION DPOP

JWKS_JSON is the text of halflife's /.well-known/jwks.json; AUTHORIZATION is
the request's Authorization header value ("DPoP <token>"); DPOP is its DPoP
header value. Prints the verified claims as JSON; exits 1 with the reason on
stderr when anything fails. Needs PyJWT with cryptography
(pip install 'pyjwt[crypto]').
"""

import base64
import hashlib
import json
import sys
import time
from urllib.parse import urlsplit

import jwt

PROOF_WINDOW_SECONDS = 60
PROOF_ALGORITHMS = ("ES256", "EdDSA")
THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(jwk: dict) -> str:
    """RFC 7638: SHA-256 of the required members, sorted, no whitespace."""
    members = THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def strip_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path}"


def verify(jwks_json, issuer, audience, method, url, authorization, proof):
    scheme, _, token = authorization.partition(" ")
    if scheme != "DPoP" or not token:
        raise ValueError("Authorization must use the DPoP scheme")

    # 1. The access token, against the broker's published keys.
    header = jwt.get_unverified_header(token)
    if header.get("typ") != "at+jwt":
        raise ValueError("not an access token (typ)")
    key = jwt.PyJWKSet.from_json(jwks_json)[header["kid"]]
    claims = jwt.decode(token, key.key, algorithms=[header["alg"]], audience=audience, issuer=issuer,
                        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]})
    jkt = claims.get("cnf", {}).get("jkt")
    if not jkt:
        raise ValueError("token is not DPoP-bound (no cnf.jkt)")

    # 2. The proof, against the key it carries.
    proof_header = jwt.get_unverified_header(proof)
    if proof_header.get("typ") != "dpop+jwt" or proof_header.get("alg") not in PROOF_ALGORITHMS:
        raise ValueError("proof typ or alg not accepted")
    jwk = proof_header.get("jwk") or {}
    if "d" in jwk:
        raise ValueError("proof jwk holds a private key")
    proof_key = jwt.PyJWK(jwk, algorithm=proof_header["alg"])
    proof_claims = jwt.decode(proof, proof_key.key, algorithms=[proof_header["alg"]],
                              options={"require": ["jti", "htm", "htu", "iat", "ath"], "verify_aud": False})
    if proof_claims["htm"] != method or strip_query(proof_claims["htu"]) != strip_query(url):
        raise ValueError("proof names another request (htm/htu)")
    if abs(time.time() - proof_claims["iat"]) > PROOF_WINDOW_SECONDS:
        raise ValueError("proof is stale (iat)")
    if proof_claims["ath"] != b64url(hashlib.sha256(token.encode()).digest()):
        raise ValueError("proof is for another access token (ath)")

    # 3. The binding.
    if thumbprint(jwk) != jkt:
        raise ValueError("proof key is not the key the token is bound to (cnf.jkt)")
    return claims


def main(argv):
    if len(argv) != 8:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        claims = verify(*argv[1:])
    except Exception as e:  # every failure is a refusal
        print(f"refused: {e}", file=sys.stderr)
        return 1
    print(json.dumps(claims))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
