#!/usr/bin/env python3
"""The demo's authorization service: Envoy's HTTP ext_authz filter asks it about every request.

    python envoy/ext_authz.py --port 18080 --sts-port 18090

It plays the MCP gateway's authorization server. It checks the client's gateway token
(``Authorization: Bearer demo-alice``, identities.GATEWAY_TOKENS) and answers

  200 with one ``x-upstream-token-<provider>`` header per upstream token the user has, which
      Envoy's ext_authz turns into dynamic metadata (``dynamic_metadata_from_headers``) where
      outgoing-auth reads them (``authServer.tokens.keyPrefix: x-upstream-token-``);
  401 for a missing or unknown gateway token (the request ends there).

The users' upstream tokens:

  github         a static demo GitHub token (alice only; identities.GITHUB_TOKENS);
  corporate-idp  an access token the STS issued for the user's corporate identity: at startup
                 the service registers one STS client per user (``corp-alice``, ``corp-bob``)
                 and mints a token with client_credentials, and mints a new one before it
                 expires. outgoing-auth exchanges it (token_exchange with
                 ``subjectProviderName: corporate-idp``) for a token for the corp backend.

One line is logged per check (the user and which providers were returned, never a token).
Standard library, plus the STS client shared with the end-to-end tests (tests/e2e/authgent.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import identities as ids

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
import authgent  # noqa: E402

LOOPBACK = "127.0.0.1"
HEADER_PREFIX = "x-upstream-token-"
RENEW_BEFORE_S = 60  # mint a new corporate token this long before the current one expires


def say(msg: str) -> None:
    print(msg, flush=True)


class CorporateTokens:
    """Each corporate user's STS access token, minted when missing or about to expire."""

    def __init__(self, sts: authgent.AuthgentApi, users: tuple[str, ...]) -> None:
        self.sts = sts
        self.lock = threading.Lock()
        self.clients = {user: sts.register(f"corp-{user}", [authgent.CLIENT_CREDENTIALS]) for user in users}
        self.tokens: dict[str, tuple[str, int]] = {}  # user -> (token, exp)
        for user, client in self.clients.items():
            say(f"registered STS client corp-{user}: client_id {client.id} (the subject of {user}'s tokens)")

    def get(self, user: str) -> str | None:
        client = self.clients.get(user)
        if client is None:
            return None
        with self.lock:
            token, exp = self.tokens.get(user, ("", 0))
            if exp - RENEW_BEFORE_S <= time.time():
                token = self.sts.client_credentials(client, scope="read")
                exp = int(authgent.jwt_parts(token)[1]["exp"])
                self.tokens[user] = (token, exp)
                lifetime = exp - int(time.time())
                say(f"minted {user}'s corporate-idp token at the STS (sub client:{client.id}, expires in {lifetime}s)")
            return token


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "AuthzServer"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # one line per check is printed by _check instead

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _check(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        where = f"{self.command} {self.path}"
        auth = self.headers.get_all("authorization") or []
        token = auth[0][len("Bearer "):] if len(auth) == 1 and auth[0].startswith("Bearer ") else None
        user = ids.GATEWAY_TOKENS.get(token or "")
        if user is None:
            say(f"deny  {where}: {'unknown gateway token' if token else 'no gateway token'} -> 401")
            body = b'{"error":"invalid_token","error_description":"gateway token missing or unknown"}'
            self._reply(401, [("content-type", "application/json"), ("www-authenticate", "Bearer")], body)
            return
        tokens: dict[str, str] = {}
        if user in ids.GITHUB_TOKENS:
            tokens[ids.GITHUB] = ids.GITHUB_TOKENS[user]
        try:
            corp = self.server.corporate.get(user)
        except (authgent.AuthgentError, OSError) as e:
            say(f"cannot mint {user}'s corporate-idp token: {e}")
            corp = None
        if corp:
            tokens[ids.CORPORATE_IDP] = corp
        say(f"allow {where}: user {user}, upstream tokens: {', '.join(tokens) or 'none'}")
        self._reply(200, [(HEADER_PREFIX + provider, t) for provider, t in tokens.items()])

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _check


class AuthzServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, corporate: CorporateTokens) -> None:
        super().__init__((LOOPBACK, port), Handler)
        self.corporate = corporate


def main() -> int:
    parser = argparse.ArgumentParser(description="The demo's HTTP ext_authz service.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sts-port", type=int, required=True, help="the STS (authgent-server) on 127.0.0.1")
    args = parser.parse_args()

    corporate = CorporateTokens(authgent.AuthgentApi(args.sts_port), ids.CORP_USERS)
    for user in ids.CORP_USERS:
        corporate.get(user)
    server = AuthzServer(args.port, corporate)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    say(f"listening on http://{LOOPBACK}:{args.port}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
