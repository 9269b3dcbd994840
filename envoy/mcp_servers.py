#!/usr/bin/env python3
"""The demo's backends: real MCP servers (the official MCP Python SDK, streamable HTTP transport),
each accepting only its own credential.

    python envoy/mcp_servers.py github   --port 18001
    python envoy/mcp_servers.py corp     --port 18002 --sts-port 18090
    python envoy/mcp_servers.py internal --port 18003          # the key from $INTERNAL_API_KEY

  github    only ``Authorization: Bearer <a GitHub token of a known user>`` (identities.py);
            outgoing-auth's upstream_inject puts the user's GitHub token there.
  corp      only ``Authorization: Bearer <JWT>`` signed by the STS (ES256, checked against its
            JWKS), issued by it (``iss``), for this server (``aud`` = identities.CORP_AUDIENCE),
            not expired; outgoing-auth's token_exchange obtains one.
  internal  only ``X-API-Key: <$INTERNAL_API_KEY>``; outgoing-auth's header_injection sets it.

Anything else gets 401 from the server itself (github and corp through the SDK's bearer-token
support, ``MCPServer(token_verifier=...)``). Each serves ``/mcp`` and has one tool, ``whoami``,
which reports the identity the server saw and the credential headers that reached it, so you can
check that the gateway token never did. One line is logged per accepted or refused credential
(never the credential itself).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, TypedDict

import uvicorn
from anyio import to_thread
from cryptography.exceptions import InvalidSignature
from mcp.server import MCPServer
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context
from starlette.types import ASGIApp, Receive, Scope, Send

import identities as ids

# The STS client (authgent.py) is shared with the end-to-end tests.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
import authgent  # noqa: E402

LOOPBACK = "127.0.0.1"
log = logging.getLogger("auth")


class Identity(TypedDict):
    server: str
    identity: str  # who the server believes is calling
    details: dict[str, Any]  # how it knows
    credential_headers: dict[str, str]  # the credential headers it received, shortened


def shorten(value: str, keep: int = 8) -> str:
    """A credential for display: enough to recognise it, not the whole thing."""
    scheme, sep, secret = value.partition(" ") if value.startswith("Bearer ") else ("", "", value)
    return f"{scheme}{sep}{secret[:keep]}... ({len(secret)} chars)"


def credential_headers(ctx: Context) -> dict[str, str]:
    """The credential headers of the request, shortened."""
    headers = ctx.headers or {}
    return {k.lower(): shorten(v) for k, v in headers.items() if k.lower() in ("authorization", "x-api-key")}


# -- github: a static table of GitHub tokens ------------------------------------------------------


class GithubTokens:
    """Accepts the GitHub tokens of identities.GITHUB_TOKENS, as GitHub would its own."""

    def __init__(self) -> None:
        self.users = {token: user for user, token in ids.GITHUB_TOKENS.items()}

    async def verify_token(self, token: str) -> AccessToken | None:
        user = self.users.get(token)
        if user is None:
            log.warning("refused a bearer token that is not a GitHub token of a known user")
            return None
        log.info("accepted the GitHub token of %s", user)
        return AccessToken(token=token, client_id="github", scopes=["repo"], subject=user)


# -- corp: JWTs the STS issued for this server -----------------------------------------------------


class StsTokens:
    """Accepts ES256 JWTs from the STS (authgent-server) for ``audience``: signature (JWKS),
    ``iss``, ``aud``, ``exp``."""

    def __init__(self, sts: authgent.AuthgentApi, audience: str) -> None:
        self.sts = sts
        self.issuer = sts.url
        self.audience = audience
        self._jwks: dict | None = None

    async def _keys(self, refresh: bool = False) -> dict:
        if self._jwks is None or refresh:
            self._jwks = await to_thread.run_sync(self.sts.jwks)
        return self._jwks

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            header, _ = authgent.jwt_parts(token)
            keys = await self._keys()
            if header.get("kid") not in {k.get("kid") for k in keys.get("keys", [])}:
                keys = await self._keys(refresh=True)  # a key the STS made since we fetched its JWKS
            claims = authgent.verify_es256(token, keys)
        except (authgent.JwtError, InvalidSignature, authgent.AuthgentError, OSError) as e:
            log.warning("refused a bearer token: %s", type(e).__name__ if isinstance(e, InvalidSignature) else e)
            return None
        aud = claims.get("aud")
        problem = None
        if claims.get("iss") != self.issuer:
            problem = f"iss {claims.get('iss')!r} is not {self.issuer}"
        elif self.audience not in (aud if isinstance(aud, list) else [aud]):
            problem = f"aud {aud!r} is not {self.audience}"
        elif not isinstance(claims.get("exp"), int) or claims["exp"] <= time.time():
            problem = "expired"
        if problem:
            log.warning("refused an STS token (sub %s): %s", claims.get("sub"), problem)
            return None
        act = claims.get("act", {}).get("sub") if isinstance(claims.get("act"), dict) else None
        log.info("accepted an STS token: sub %s, act %s, aud %s", claims.get("sub"), act, aud)
        return AccessToken(
            token=token,
            client_id=str(claims.get("client_id", "")),
            scopes=str(claims.get("scope", "")).split(),
            expires_at=claims["exp"],
            resource=self.audience,
            subject=claims.get("sub"),
            claims=claims,
        )


# -- internal: a static API key ------------------------------------------------------------------


class RequireApiKey:
    """ASGI middleware: 401 unless ``X-API-Key`` is the expected key."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        got = [v for k, v in scope["headers"] if k == b"x-api-key"]
        if got == [self.key]:
            await self.app(scope, receive, send)
            return
        log.warning("refused a request %s", "with a wrong X-API-Key" if got else "without X-API-Key")
        body = b'{"error":"invalid_api_key"}'
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


# -- the servers ---------------------------------------------------------------------------------


def github_server() -> MCPServer:
    server = MCPServer(
        "github-mcp",
        version="1.0",
        instructions="Demo GitHub MCP server: accepts GitHub tokens only.",
        token_verifier=GithubTokens(),
        auth=AuthSettings(issuer_url="https://github.com/login/oauth", resource_server_url=None),
    )

    @server.tool()
    def whoami(ctx: Context) -> Identity:
        """Report the GitHub user whose token reached this server."""
        token = get_access_token()
        assert token is not None  # the SDK's RequireAuthMiddleware let the request in
        return Identity(
            server="github",
            identity=f"github user {token.subject}",
            details={"login": token.subject, "scopes": token.scopes},
            credential_headers=credential_headers(ctx),
        )

    return server


def corp_server(sts_port: int, audience: str) -> MCPServer:
    sts = authgent.AuthgentApi(sts_port)
    server = MCPServer(
        "corp-mcp",
        version="1.0",
        instructions=f"Demo corporate MCP server: accepts STS-issued JWTs for {audience} only.",
        token_verifier=StsTokens(sts, audience),
        auth=AuthSettings(issuer_url=sts.url, resource_server_url=None),
    )

    @server.tool()
    def whoami(ctx: Context) -> Identity:
        """Report the subject (and the actor) of the STS token that reached this server."""
        token = get_access_token()
        assert token is not None and token.claims is not None
        claims = token.claims
        return Identity(
            server="corp",
            identity=str(claims.get("sub")),
            details={k: claims.get(k) for k in ("iss", "aud", "sub", "act", "scope", "client_id")},
            credential_headers=credential_headers(ctx),
        )

    return server


def internal_server() -> MCPServer:
    server = MCPServer("internal-mcp", version="1.0", instructions="Demo internal MCP server: X-API-Key only.")

    @server.tool()
    def whoami(ctx: Context) -> Identity:
        """Report that the caller holds the internal API key."""
        return Identity(
            server="internal",
            identity="holder of the internal API key",
            details={"header": "X-API-Key"},
            credential_headers=credential_headers(ctx),
        )

    return server


def main() -> int:
    parser = argparse.ArgumentParser(description="One of the demo's MCP servers (streamable HTTP on /mcp).")
    parser.add_argument("name", choices=ids.BACKENDS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sts-port", type=int, help="corp: the STS (authgent-server) on 127.0.0.1")
    parser.add_argument("--audience", default=ids.CORP_AUDIENCE, help="corp: the audience it accepts")
    args = parser.parse_args()

    # Plain one-line logs (the SDK would otherwise install a wrapping console handler).
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)

    if args.name == "github":
        app = github_server().streamable_http_app(host=LOOPBACK)
    elif args.name == "corp":
        if args.sts_port is None:
            parser.error("corp needs --sts-port")
        app = corp_server(args.sts_port, args.audience).streamable_http_app(host=LOOPBACK)
    else:
        key = os.environ.get(ids.INTERNAL_API_KEY_ENV, "")
        if not key:
            parser.error(f"internal needs the API key in ${ids.INTERNAL_API_KEY_ENV}")
        app = RequireApiKey(internal_server().streamable_http_app(host=LOOPBACK), key)

    # uvicorn stops cleanly on SIGINT and SIGTERM.
    uvicorn.run(app, host=LOOPBACK, port=args.port, log_level="info", timeout_graceful_shutdown=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
