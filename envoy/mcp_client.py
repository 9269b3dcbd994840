#!/usr/bin/env python3
"""An MCP client (the official MCP Python SDK) that talks to the demo's backends through Envoy.

    .venv/bin/python envoy/mcp_client.py                        # as demo-alice, every backend
    .venv/bin/python envoy/mcp_client.py --token demo-bob github
    .venv/bin/python envoy/mcp_client.py --gateway http://127.0.0.1:10000 --token demo-alice corp

For each backend it connects to ``<gateway>/<backend>/mcp`` (streamable HTTP) with
``Authorization: Bearer <gateway token>``, does the initialize handshake, ``tools/list`` and
``tools/call whoami``, and prints what the backend reported. A refusal by the gateway or a
backend is printed with its HTTP status, ``WWW-Authenticate`` and body. Exit status: 0 when every
backend answered, 1 otherwise.

``visit()`` is the same as a function; the end-to-end test of the demo uses it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass, field
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

import identities as ids

DEFAULT_GATEWAY = "http://127.0.0.1:10000"
TIMEOUT_S = 15.0


@dataclass
class HttpRefusal:
    """An HTTP error answer seen on the way (the gateway's or the backend's)."""

    status: int
    www_authenticate: str | None
    body: str


@dataclass
class Visit:
    """What one backend did: the initialize answer, its tools, what whoami reported; or a refusal."""

    backend: str
    url: str
    server: str | None = None
    protocol_version: str | None = None
    tools: list[str] = field(default_factory=list)
    identity: dict[str, Any] | None = None
    refusal: HttpRefusal | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.identity is not None


async def visit(gateway: str, backend: str, token: str | None) -> Visit:
    """initialize, tools/list and tools/call whoami on one backend through the gateway."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await visit_url(f"{gateway.rstrip('/')}/{backend}/mcp", backend, headers)


async def visit_url(url: str, backend: str, headers: dict[str, str]) -> Visit:
    """The same at any MCP endpoint, with these request headers."""
    result = Visit(backend, url)
    refusals: list[HttpRefusal] = []

    async def note_refusal(response: httpx2.Response) -> None:
        if response.status_code >= 400:
            await response.aread()
            refusals.append(
                HttpRefusal(response.status_code, response.headers.get("www-authenticate"), response.text)
            )

    http = create_mcp_http_client(headers=headers)
    http.event_hooks["response"].append(note_refusal)
    try:
        async with http:
            # mode="legacy": the initialize handshake, as MCP gateways and most servers speak it.
            async with Client(
                streamable_http_client(url, http_client=http), mode="legacy", read_timeout_seconds=TIMEOUT_S
            ) as client:
                info = client.server_info
                result.server = f"{info.name} {info.version}".strip() if info else None
                result.protocol_version = client.protocol_version
                result.tools = [t.name for t in (await client.list_tools()).tools]
                called = await client.call_tool("whoami", {})
                if called.is_error:
                    result.error = " ".join(getattr(c, "text", "") for c in called.content)
                else:
                    result.identity = called.structured_content
    except Exception as e:  # noqa: BLE001 - reported to the user, with the HTTP refusal if any
        if not refusals:
            while isinstance(e, BaseExceptionGroup) and e.exceptions:  # the SDK's task groups
                e = e.exceptions[0]
            result.error = f"{type(e).__name__}: {e}"
    if refusals and not result.ok:
        result.refusal = refusals[0]
    return result


def report(v: Visit, token: str | None) -> str:
    who = f"Bearer {token}" if token else "no Authorization header"
    lines = [f"== {v.backend}: {v.url} ({who})"]
    if v.server:
        lines.append(f"   initialize        -> {v.server}, protocol {v.protocol_version}")
        lines.append(f"   tools/list        -> {', '.join(v.tools)}")
    if v.identity is not None:
        lines.append(f"   tools/call whoami -> {v.identity.get('identity')}")
        for key, value in (v.identity.get("details") or {}).items():
            lines.append(f"      {key}: {value if isinstance(value, str) else json.dumps(value)}")
        received = v.identity.get("credential_headers") or {}
        shown = "; ".join(f"{k}: {val}" for k, val in received.items()) or "no credential header"
        lines.append(f"      received: {shown}")
    if v.refusal is not None:
        r = v.refusal
        lines.append(f"   HTTP {r.status}")
        if r.www_authenticate:
            lines.append(f"   www-authenticate: {r.www_authenticate}")
        if r.body:
            lines.append(f"   {r.body.strip()}")
    elif v.error:
        lines.append(f"   error: {v.error}")
    return "\n".join(lines)


async def run(gateway: str, token: str | None, backends: list[str]) -> int:
    visits = [await visit(gateway, b, token) for b in backends]
    print("\n".join(report(v, token) for v in visits), flush=True)
    return 0 if all(v.ok for v in visits) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backends", nargs="*", metavar="BACKEND", help=f"{', '.join(ids.BACKENDS)} (default: all)")
    parser.add_argument("--gateway", default=DEFAULT_GATEWAY, help=f"Envoy's listener (default {DEFAULT_GATEWAY})")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--token", default="demo-alice", help="the gateway token (default demo-alice)")
    who.add_argument("--no-token", action="store_true", help="send no Authorization header")
    args = parser.parse_args()
    unknown = [b for b in args.backends if b not in ids.BACKENDS]
    if unknown:
        parser.error(f"unknown backend {unknown[0]!r}; choose from {', '.join(ids.BACKENDS)}")
    token = None if args.no_token else args.token
    return asyncio.run(run(args.gateway, token, args.backends or list(ids.BACKENDS)))


if __name__ == "__main__":
    sys.exit(main())
