#!/usr/bin/env python3
"""A call with a DPoP-bound token, where the application never holds the key.

The halflife agent holds the DPoP key in its memory. For each request the
application asks the agent for the current token and for a fresh proof
naming that request (`POST /v1/credentials/{name}/proof` with its method and
URL); it sends both, and the resource server checks that the proof's key is
the one the token is bound to (`cnf.jkt`). A copied token is useless without
the agent.

The resource server here is examples/dpop_resource_server.py (PyJWT), run as
a subprocess with the headers the request carries; this script itself uses
the standard library only.

Usage:
  agent_dpop_call.py [--socket PATH] [--credential NAME] BROKER_URL AUDIENCE METHOD URL

BROKER_URL is halflife's public URL (the token's issuer; its JWKS is fetched
from there). Prints the claims the resource server verified; exits with the
resource server's status (0 accepted, 1 refused), or 1 when the agent holds
no credential.
"""

import argparse
import os
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from agent_tool_call import NoCredential, ask_agent, current_credential  # noqa: E402

RESOURCE_SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dpop_resource_server.py")


def proof_for(socket_path, name, method, url):
    status, body = ask_agent(socket_path, "POST", f"/v1/credentials/{name}/proof", {"htm": method, "htu": url})
    if status != 200:
        raise NoCredential(f"{status} {body.get('error')}: {body.get('error_description')}")
    return body["proof"]


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default=os.environ.get("HALFLIFE_AGENT_SOCKET", "/run/halflife/agent.sock"))
    parser.add_argument("--credential", default="reports")
    parser.add_argument("broker_url")
    parser.add_argument("audience")
    parser.add_argument("method")
    parser.add_argument("url")
    args = parser.parse_args(argv[1:])
    try:
        credential = current_credential(args.socket, args.credential)
        proof = proof_for(args.socket, args.credential, args.method, args.url)
    except NoCredential as e:
        print(f"not calling: the agent holds no credential {args.credential!r}: {e}", file=sys.stderr)
        return 1
    if credential["token_type"] != "DPoP":
        print(f"credential {args.credential!r} is not DPoP-bound", file=sys.stderr)
        return 1
    # The request as it goes out: `Authorization: DPoP <token>` and `DPoP: <proof>`.
    authorization = f"DPoP {credential['access_token']}"
    with urllib.request.urlopen(f"{args.broker_url}/.well-known/jwks.json", timeout=10) as response:
        jwks = response.read().decode()
    issuer = args.broker_url.rstrip("/")
    result = subprocess.run(
        [sys.executable, RESOURCE_SERVER, jwks, issuer, args.audience, args.method, args.url, authorization, proof],
        capture_output=True, text=True)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
