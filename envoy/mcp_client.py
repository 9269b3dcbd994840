#!/usr/bin/env python3
"""An MCP client (the official MCP Python SDK) that talks to the demo's backends through Envoy.

    .venv/bin/python envoy/mcp_client.py                        # as demo-alice, every backend
    .venv/bin/python envoy/mcp_client.py --token demo-bob github
    .venv/bin/python envoy/mcp_client.py --gateway http://127.0.0.1:10000 --token demo-alice corp
    .venv/bin/python envoy/mcp_client.py --aggregated --token demo-bob   # one endpoint, mcp_router

For each backend it connects to ``<gateway>/<backend>/mcp`` (streamable HTTP) with
``Authorization: Bearer <gateway token>``, does the initialize handshake, ``tools/list`` and
``tools/call whoami``, and prints what the backend reported. A refusal by the gateway or a
backend is printed with its HTTP status, ``WWW-Authenticate`` and body. Exit status: 0 when every
backend answered, 1 otherwise.

With ``--aggregated`` it opens one session at ``<gateway>/mcp``, the endpoint Envoy's mcp_router
makes of all the backends: the initialize handshake, ``tools/list`` (every backend's tools, named
``<backend>__<tool>``), then ``tools/call <backend>__whoami`` for each backend asked for, and
prints what each one reported, or the error the call came back with.

``visit()`` and ``visit_aggregated()`` are the same as functions; the end-to-end test of the
demo uses them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
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


@dataclass
class Call:
    """One ``tools/call`` in an aggregated session: what the tool reported, or its error."""

    tool: str
    identity: dict[str, Any] | None = None
    error: str | None = None  # a tool result with isError (its text), or the call's exception


@dataclass
class AggregatedVisit:
    """One session at the aggregated endpoint: the initialize answer, the tools, each call."""

    url: str
    server: str | None = None
    protocol_version: str | None = None
    tools: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    refusal: HttpRefusal | None = None
    error: str | None = None
    sdk_warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.refusal is None and all(c.identity is not None for c in self.calls)


class _Collect(logging.Handler):
    """The MCP SDK's warnings, kept for the report instead of going to stderr on their own."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _innermost(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup) and e.exceptions:  # the SDK's task groups
        e = e.exceptions[0]
    return e


async def visit(gateway: str, backend: str, token: str | None) -> Visit:
    """initialize, tools/list and tools/call whoami on one backend through the gateway."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await visit_url(f"{gateway.rstrip('/')}/{backend}/mcp", backend, headers)


def refusal_recorder(refusals: list[HttpRefusal], only_post: bool = False):
    """An HTTP client response hook that keeps each HTTP error answer on the way (the gateway's or
    the backend's); ``only_post``: of the JSON-RPC POSTs only."""

    async def note_refusal(response: httpx2.Response) -> None:
        if response.status_code >= 400 and (not only_post or response.request.method == "POST"):
            await response.aread()
            refusals.append(
                HttpRefusal(response.status_code, response.headers.get("www-authenticate"), response.text)
            )

    return note_refusal


async def visit_url(url: str, backend: str, headers: dict[str, str]) -> Visit:
    """The same at any MCP endpoint, with these request headers."""
    result = Visit(backend, url)
    refusals: list[HttpRefusal] = []
    http = create_mcp_http_client(headers=headers)
    http.event_hooks["response"].append(refusal_recorder(refusals))
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
            e = _innermost(e)
            result.error = f"{type(e).__name__}: {e}"
    if refusals and not result.ok:
        result.refusal = refusals[0]
    return result


async def visit_aggregated(gateway: str, token: str | None, backends: list[str]) -> AggregatedVisit:
    """initialize and tools/list at the aggregated endpoint ``<gateway>/mcp``, then tools/call
    ``<backend>__whoami`` for each backend, all in one session."""
    url = f"{gateway.rstrip('/')}/mcp"
    result = AggregatedVisit(url)
    refusals: list[HttpRefusal] = []
    sdk_log = logging.getLogger("mcp")
    collect = _Collect()
    sdk_log.addHandler(collect)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = create_mcp_http_client(headers=headers)
    # mcp_router answers the SDK's GET stream with 405 (the SDK then goes without it) and its
    # closing DELETE with 400: neither is a refusal of the session.
    http.event_hooks["response"].append(refusal_recorder(refusals, only_post=True))
    try:
        async with http:
            async with Client(
                streamable_http_client(url, http_client=http), mode="legacy", read_timeout_seconds=TIMEOUT_S
            ) as client:
                info = client.server_info
                result.server = f"{info.name} {info.version}".strip() if info else None
                result.protocol_version = client.protocol_version
                result.tools = sorted(t.name for t in (await client.list_tools()).tools)
                for backend in backends:
                    call = Call(f"{backend}__whoami")
                    result.calls.append(call)
                    try:
                        called = await client.call_tool(call.tool, {})
                    except Exception as e:  # noqa: BLE001 - the session goes on with the next one
                        e = _innermost(e)
                        call.error = f"{type(e).__name__}: {e}"
                        continue
                    if called.is_error:
                        call.error = "isError: " + " ".join(getattr(c, "text", "") for c in called.content)
                    else:
                        call.identity = called.structured_content
    except Exception as e:  # noqa: BLE001 - reported to the user, with the HTTP refusal if any
        e = _innermost(e)
        result.error = f"{type(e).__name__}: {e}"
        if refusals:
            result.refusal = refusals[0]
    finally:
        sdk_log.removeHandler(collect)
    result.sdk_warnings = collect.messages
    return result


def identity_lines(call: str, identity: dict[str, Any]) -> list[str]:
    lines = [f"   tools/call {call} -> {identity.get('identity')}"]
    for key, value in (identity.get("details") or {}).items():
        lines.append(f"      {key}: {value if isinstance(value, str) else json.dumps(value)}")
    received = identity.get("credential_headers") or {}
    shown = "; ".join(f"{k}: {val}" for k, val in received.items()) or "no credential header"
    lines.append(f"      received: {shown}")
    return lines


def refusal_lines(r: HttpRefusal) -> list[str]:
    lines = [f"   HTTP {r.status}"]
    if r.www_authenticate:
        lines.append(f"   www-authenticate: {r.www_authenticate}")
    if r.body:
        lines.append(f"   {r.body.strip()}")
    return lines


def who(token: str | None) -> str:
    return f"Bearer {token}" if token else "no Authorization header"


def report(v: Visit, token: str | None) -> str:
    lines = [f"== {v.backend}: {v.url} ({who(token)})"]
    if v.server:
        lines.append(f"   initialize        -> {v.server}, protocol {v.protocol_version}")
        lines.append(f"   tools/list        -> {', '.join(v.tools)}")
    if v.identity is not None:
        lines += identity_lines("whoami", v.identity)
    if v.refusal is not None:
        lines += refusal_lines(v.refusal)
    elif v.error:
        lines.append(f"   error: {v.error}")
    return "\n".join(lines)


def report_aggregated(v: AggregatedVisit, token: str | None) -> str:
    lines = [f"== aggregated: {v.url} ({who(token)})"]
    if v.server:
        lines.append(f"   initialize -> {v.server}, protocol {v.protocol_version}")
        lines.append(f"   tools/list -> {', '.join(v.tools) or 'no tools'}")
    for call in v.calls:
        if call.identity is not None:
            lines += identity_lines(call.tool, call.identity)
        else:
            lines.append(f"   tools/call {call.tool} -> {call.error}")
    if v.refusal is not None:
        lines += refusal_lines(v.refusal)
    elif v.error:
        lines.append(f"   error: {v.error}")
    lines += [f"   (MCP SDK: {message})" for message in v.sdk_warnings]
    return "\n".join(lines)


async def run(gateway: str, token: str | None, backends: list[str]) -> int:
    visits = [await visit(gateway, b, token) for b in backends]
    print("\n".join(report(v, token) for v in visits), flush=True)
    return 0 if all(v.ok for v in visits) else 1


async def run_aggregated(gateway: str, token: str | None, backends: list[str]) -> int:
    v = await visit_aggregated(gateway, token, backends)
    print(report_aggregated(v, token), flush=True)
    return 0 if v.ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backends", nargs="*", metavar="BACKEND", help=f"{', '.join(ids.BACKENDS)} (default: all)")
    parser.add_argument("--gateway", default=DEFAULT_GATEWAY, help=f"Envoy's listener (default {DEFAULT_GATEWAY})")
    parser.add_argument(
        "--aggregated", action="store_true",
        help="one session at <gateway>/mcp (mcp_router), calling each backend's <backend>__whoami",
    )
    whose = parser.add_mutually_exclusive_group()
    whose.add_argument("--token", default="demo-alice", help="the gateway token (default demo-alice)")
    whose.add_argument("--no-token", action="store_true", help="send no Authorization header")
    args = parser.parse_args()
    unknown = [b for b in args.backends if b not in ids.BACKENDS]
    if unknown:
        parser.error(f"unknown backend {unknown[0]!r}; choose from {', '.join(ids.BACKENDS)}")
    token = None if args.no_token else args.token
    backends = args.backends or list(ids.BACKENDS)
    if args.aggregated:
        return asyncio.run(run_aggregated(args.gateway, token, backends))
    return asyncio.run(run(args.gateway, token, backends))


if __name__ == "__main__":
    sys.exit(main())
