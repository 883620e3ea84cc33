"""Standard Python clients against a running halflife, used unmodified:
Authlib introspects and revokes with client_secret_basic, PyJWT verifies
an issued token against the JWKS. Prints one JSON object; exits non-zero
on any failure. Driven by tests/api/clients.rs."""

import json
import sys

import jwt
from authlib.integrations.requests_client import OAuth2Session


def session(client_id, secret):
    return OAuth2Session(client_id, secret, token_endpoint_auth_method="client_secret_basic")


def main():
    command, issuer, *args = sys.argv[1:]
    if command == "introspect":
        client_id, secret, token = args
        response = session(client_id, secret).introspect_token(f"{issuer}/oauth2/introspect", token=token)
        response.raise_for_status()
        print(json.dumps(response.json()))
    elif command == "revoke":
        client_id, secret, token = args
        response = session(client_id, secret).revoke_token(f"{issuer}/oauth2/revoke", token=token)
        response.raise_for_status()
        print(json.dumps({"revoked": True}))
    elif command == "verify":
        token, audience = args
        jwks = jwt.PyJWKClient(f"{issuer}/.well-known/jwks.json")
        key = jwks.get_signing_key_from_jwt(token)
        claims = jwt.decode(token, key.key, algorithms=[key.algorithm_name], audience=audience, issuer=issuer)
        print(json.dumps(claims))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
