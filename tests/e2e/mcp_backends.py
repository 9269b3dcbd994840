"""Recording MCP servers and an MCP client for the mcp_router tests: the official MCP Python SDK
(streamable HTTP), in this process, each server on its own loopback port.

Every HTTP request a server receives is recorded with all its headers (``requests``), whatever
its MCP method, so a test can check that no credential but the backend's own ever arrived. Each
server has one tool, ``whoami``, answering with its name and the ``authorization`` and
``x-api-key`` headers of that call.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx2
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.shared._httpx_utils import create_mcp_http_client
from starlette.types import ASGIApp, Receive, Scope, Send

import harness as h

TIMEOUT_S = 15.0


@dataclass(frozen=True)
class McpRequest:
    method: str  # the JSON-RPC method, "" when the body is not one request
    headers: list[tuple[str, str]]

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]

    def header_blob(self) -> str:
        return "\n".join(f"{k}: {v}" for k, v in self.headers)


class _Recorder:
    """ASGI middleware: records each HTTP request's headers and JSON-RPC method."""

    def __init__(self, app: ASGIApp, owner: "RecordingMcpServer") -> None:
        self.app = app
        self.owner = owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            method = json.loads(body).get("method", "") if body else ""
        except (ValueError, AttributeError):
            method = ""
        headers = [(k.decode().lower(), v.decode()) for k, v in scope["headers"]]
        with self.owner.lock:
            self.owner.requests.append(McpRequest(str(method), headers))
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class RecordingMcpServer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.requests: list[McpRequest] = []
        server = MCPServer(f"{name}-mcp", version="1.0", instructions=f"recording test server {name}")

        @server.tool()
        def whoami(ctx: Context) -> dict[str, Any]:
            """Report this server's name and the credential headers of this call."""
            headers = {k.lower(): v for k, v in (ctx.headers or {}).items()}
            return {
                "server": name,
                "authorization": headers.get("authorization"),
                "x-api-key": headers.get("x-api-key"),
            }

        app = _Recorder(server.streamable_http_app(host=h.LOOPBACK), self)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((h.LOOPBACK, 0))
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[self._sock])), daemon=True
        )

    def start(self) -> "RecordingMcpServer":
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"MCP server {self.name} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._sock.close()

    def all_requests(self) -> list[McpRequest]:
        with self.lock:
            return list(self.requests)


@dataclass
class Session:
    """What one MCP session through Envoy saw."""

    tools: list[str]
    calls: dict[str, Any]  # tool name -> structured result, or the error text
    errors: dict[str, bool]  # tool name -> isError
    refusals: list[tuple[int, str | None, str]]  # HTTP error answers: status, WWW-Authenticate, body


async def _session(url: str, headers: dict[str, str], call: list[str]) -> Session:
    refusals: list[tuple[int, str | None, str]] = []

    async def note(response: httpx2.Response) -> None:
        if response.status_code >= 400:
            await response.aread()
            refusals.append((response.status_code, response.headers.get("www-authenticate"), response.text))

    http = create_mcp_http_client(headers=headers)
    http.event_hooks["response"].append(note)
    calls: dict[str, Any] = {}
    errors: dict[str, bool] = {}
    async with http:
        async with Client(
            streamable_http_client(url, http_client=http), mode="legacy", read_timeout_seconds=TIMEOUT_S
        ) as client:
            tools = sorted(t.name for t in (await client.list_tools()).tools)
            for name in call:
                result = await client.call_tool(name, {})
                errors[name] = bool(result.is_error)
                calls[name] = (
                    " ".join(getattr(c, "text", "") for c in result.content)
                    if result.is_error
                    else result.structured_content
                )
    return Session(tools, calls, errors, refusals)


def session(url: str, headers: dict[str, str], call: list[str]) -> Session:
    """initialize, tools/list, then tools/call of each tool in ``call``, with the official SDK
    client (the initialize handshake, as mcp_router speaks it)."""
    return asyncio.run(_session(url, headers, call))
