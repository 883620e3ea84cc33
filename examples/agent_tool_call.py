#!/usr/bin/env python3
"""An AI tool call that holds no credential of its own.

At the moment the tool runs, it asks the halflife agent beside it for the
current credential over the agent's Unix socket, uses it for this one call,
and forgets it. Nothing is cached, so a credential the agent renewed is
picked up at once, and one the agent removed (its system suspended, its
pilot ended, its owner gone, revoked) is never used: the agent answers 410
with the broker's reason and the tool refuses to run.

Standard library only.

Usage:
  agent_tool_call.py [--socket PATH] [--credential NAME] URL

--socket defaults to $HALFLIFE_AGENT_SOCKET (set by `halflife agent exec`),
else /run/halflife/agent.sock; --credential defaults to "reports". Performs
GET URL with `Authorization: <token_type> <token>`, prints the status and
body, and exits 0 on a 2xx answer. Exits 1 with the agent's reason when it
holds no credential, 2 on a usage error.
"""

import argparse
import http.client
import json
import os
import socket
import sys
import urllib.error
import urllib.request


class AgentConnection(http.client.HTTPConnection):
    """HTTP over the agent's Unix socket."""

    def __init__(self, path, timeout=5.0):
        super().__init__("agent", timeout=timeout)
        self.socket_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def ask_agent(socket_path, method, path, body=None):
    """One request to the agent's local API: (status, JSON body)."""
    connection = AgentConnection(socket_path)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


class NoCredential(Exception):
    """The agent holds no credential now; the message says why."""


def current_credential(socket_path, name):
    status, body = ask_agent(socket_path, "GET", f"/v1/credentials/{name}")
    if status != 200:
        # 410: removed, with the broker's reason; 503: not yet, or waiting
        # for a person's approval; 404: no such credential.
        raise NoCredential(f"{status} {body.get('error')}: {body.get('error_description')}")
    return body


def call_tool(socket_path, name, url):
    """The tool call: the credential is fetched now, used once, dropped."""
    credential = current_credential(socket_path, name)
    request = urllib.request.Request(
        url, headers={"Authorization": f"{credential['token_type']} {credential['access_token']}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default=os.environ.get("HALFLIFE_AGENT_SOCKET", "/run/halflife/agent.sock"))
    parser.add_argument("--credential", default="reports")
    parser.add_argument("url")
    args = parser.parse_args(argv[1:])
    try:
        status, body = call_tool(args.socket, args.credential, args.url)
    except NoCredential as e:
        print(f"not calling the tool: the agent holds no credential {args.credential!r}: {e}", file=sys.stderr)
        return 1
    print(status)
    print(body.decode(errors="replace"))
    return 0 if 200 <= status < 300 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
