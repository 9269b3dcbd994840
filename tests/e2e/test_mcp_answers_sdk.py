"""The MCP answers of ``src/core/mcp.rs``, read by the pinned MCP Python SDK (no Envoy needed).

``cargo test`` checks that each answer builder writes exactly the golden file under
``tests/data/mcp/``; this file checks that the SDK reads each golden file as we mean it:

- with the SDK's own wire models and parsers (``mcp_types.jsonrpc_message_adapter``, the
  per-revision result parser ``mcp_types.methods.parse_server_result``, the generated 2025-11-25 and
  2026-07-28 schema models), and
- through the SDK's real client (``mcp.Client`` over its streamable HTTP transport), with an
  ``httpx2.MockTransport`` standing in for the gateway: the golden reply is what the transport
  receives, its id set to the id the client chose.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from pydantic import ValidationError

import mcp_types
import mcp_types._v2025_11_25 as v2025
import mcp_types._v2026_07_28 as v2026
from mcp import Client, UrlElicitationRequiredError
from mcp.client.auth.utils import extract_resource_metadata_from_www_auth, extract_scope_from_www_auth
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import methods

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "mcp"
URL = "https://gateway.example/connect/github?elicitation=550e8400-e29b-41d4-a716-446655440000"
ELICITATION_ID = "550e8400-e29b-41d4-a716-446655440000"
MESSAGE = "Connect your github account to use this tool."
HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")


class Golden:
    """One golden file: an HTTP response as ``cargo test`` renders a ``LocalReply``."""

    def __init__(self, name: str) -> None:
        text = (GOLDEN / name).read_text(encoding="utf-8")
        head, _, body = text.partition("\n\n")
        status_line, *header_lines = head.split("\n")
        self.status = int(status_line.split(" ")[1])
        self.headers = [tuple(line.split(": ", 1)) for line in header_lines]
        assert body.endswith("\n") and body.count("\n") == 1, "one JSON line, then a newline"
        self.body = body[:-1]

    def response(self, request_id: Any) -> httpx2.Response:
        """The reply as the gateway would send it, answering the client's ``request_id``."""
        body = re.sub(r'^\{"jsonrpc":"2\.0","id":(?:-?\d+|"(?:[^"\\]|\\.)*"),', "", self.body)
        assert body != self.body, "the golden body starts with jsonrpc and id"
        body = '{"jsonrpc":"2.0","id":' + json.dumps(request_id) + "," + body
        return httpx2.Response(self.status, headers=self.headers, content=body.encode())


def test_every_answer_is_http_200_json():
    for name in (
        "tool-error-2025-11-25.http",
        "tool-error-2026-07-28.http",
        "url-elicitation-required-2025-11-25.http",
        "input-required-2026-07-28.http",
    ):
        g = Golden(name)
        assert g.status == 200, name
        assert g.headers == [("content-type", "application/json")], name


# ---- The SDK's wire models -------------------------------------------------------------------


def test_tool_error_reads_as_an_error_tool_result_at_every_handshake_revision():
    g = Golden("tool-error-2025-11-25.http")
    message = mcp_types.jsonrpc_message_adapter.validate_json(g.body, by_name=False)
    assert isinstance(message, mcp_types.JSONRPCResponse)
    # A JSON integer beyond 64 bits stays that exact integer.
    assert message.id == 123456789012345678901234567890
    for version in HANDSHAKE_VERSIONS:
        result = methods.parse_server_result("tools/call", version, message.result)
        assert isinstance(result, mcp_types.CallToolResult), version
        assert result.is_error is True
        assert [c.type for c in result.content] == ["text"]
        assert result.content[0].text == MESSAGE
    v2025.CallToolResult.model_validate(message.result, by_name=False)


def test_tool_error_2026_reads_as_a_complete_error_tool_result():
    g = Golden("tool-error-2026-07-28.http")
    message = mcp_types.jsonrpc_message_adapter.validate_json(g.body, by_name=False)
    assert isinstance(message, mcp_types.JSONRPCResponse)
    # The string id with its escapes decodes to what the client sent.
    assert message.id == 'req-"7"\u00e9\\n'
    result = methods.parse_server_result("tools/call", "2026-07-28", message.result)
    assert isinstance(result, mcp_types.CallToolResult)
    assert not methods.is_input_required(message.result)
    assert result.is_error is True
    assert result.content[0].text == MESSAGE
    # resultType is required at 2026-07-28: without it the SDK refuses the result.
    wire = v2026.CallToolResultResponse.model_validate_json(g.body, by_name=False)
    assert isinstance(wire.result, v2026.CallToolResult) and wire.result.result_type == "complete"
    bare = {k: v for k, v in message.result.items() if k != "resultType"}
    with pytest.raises(ValidationError):
        methods.validate_server_result("tools/call", "2026-07-28", bare)


def test_url_elicitation_required_is_the_2025_11_25_error_and_maps_to_the_sdk_exception():
    g = Golden("url-elicitation-required-2025-11-25.http")
    message = mcp_types.jsonrpc_message_adapter.validate_json(g.body, by_name=False)
    assert isinstance(message, mcp_types.JSONRPCError)
    assert message.id == 7
    assert message.error.code == mcp_types.URL_ELICITATION_REQUIRED == -32042
    # The generated 2025-11-25 schema model: elicitations of ElicitRequestURLParams, all required.
    wire = v2025.URLElicitationRequiredError.model_validate_json(g.body, by_name=False)
    (entry,) = wire.error.data.elicitations
    assert (entry.mode, entry.elicitation_id, entry.url, entry.message) == ("url", ELICITATION_ID, URL, MESSAGE)
    # What the SDK client raises (MCPError from the JSON-RPC error), and the mapping to the
    # specialised exception.
    err = MCPError.from_jsonrpc_error(message)
    assert err.code == -32042
    typed = UrlElicitationRequiredError.from_error(err.error)
    (elicitation,) = typed.elicitations
    assert elicitation.mode == "url"
    assert elicitation.url == URL
    assert elicitation.elicitation_id == ELICITATION_ID
    assert elicitation.message == MESSAGE
    assert str(typed) == MESSAGE


def test_input_required_is_a_2026_url_elicitation_request():
    g = Golden("input-required-2026-07-28.http")
    message = mcp_types.jsonrpc_message_adapter.validate_json(g.body, by_name=False)
    assert isinstance(message, mcp_types.JSONRPCResponse)
    assert message.id == "call-1"
    assert methods.is_input_required(message.result)
    result = methods.parse_server_result("tools/call", "2026-07-28", message.result)
    assert isinstance(result, mcp_types.InputRequiredResult)
    assert result.request_state is None
    (key,) = result.input_requests
    assert key == "connect:github"
    request = result.input_requests[key]
    assert isinstance(request, mcp_types.ElicitRequest)
    assert isinstance(request.params, mcp_types.ElicitRequestURLParams)
    assert (request.params.mode, request.params.url, request.params.message) == ("url", URL, MESSAGE)
    wire = v2026.CallToolResultResponse.model_validate_json(g.body, by_name=False)
    assert isinstance(wire.result, v2026.InputRequiredResult)
    assert wire.result.result_type == "input_required"
    # Also allowed on prompts/get and resources/read at 2026-07-28, and on nothing before.
    for method in ("prompts/get", "resources/read"):
        assert isinstance(methods.parse_server_result(method, "2026-07-28", message.result), mcp_types.InputRequiredResult)
    assert methods.INPUT_REQUIRED_METHODS == {"tools/call", "prompts/get", "resources/read"}


def test_unauthorized_challenge_gives_the_sdk_scope_and_resource_metadata():
    g = Golden("unauthorized.http")
    assert g.status == 401
    response = httpx2.Response(g.status, headers=g.headers, content=g.body.encode())
    assert extract_scope_from_www_auth(response) == "mcp:tools repo"
    assert (
        extract_resource_metadata_from_www_auth(response)
        == "https://gateway.example/.well-known/oauth-protected-resource/mcp"
    )
    assert json.loads(g.body)["error"] == "invalid_token"


# ---- The SDK's client, over its streamable HTTP transport ------------------------------------


class Gateway:
    """A stand-in MCP endpoint: answers the handshake, then each tools/call with the next reply."""

    def __init__(self, version: str, replies: list[Golden]) -> None:
        self.version = version
        self.replies = replies
        self.calls: list[tuple[dict[str, str], dict[str, Any]]] = []

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        if request.method != "POST":
            return httpx2.Response(405)
        body = json.loads(request.content)
        method = body.get("method")
        if "id" not in body:
            return httpx2.Response(202)
        if method == "initialize":
            result = {
                "protocolVersion": self.version,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "backend", "version": "1"},
            }
            return httpx2.Response(200, json={"jsonrpc": "2.0", "id": body["id"], "result": result})
        assert method == "tools/call", method
        self.calls.append((dict(request.headers), body))
        return self.replies.pop(0).response(body["id"])

    def transport(self):
        http = httpx2.AsyncClient(transport=httpx2.MockTransport(self.handle))
        return streamable_http_client("https://gateway.example/mcp", http_client=http)


def _run(fn):
    return anyio.run(fn)


def test_sdk_client_at_2025_11_25_raises_the_url_elicitation_error():
    gateway = Gateway("2025-11-25", [Golden("url-elicitation-required-2025-11-25.http")])

    async def main():
        async with Client(gateway.transport(), mode="legacy") as client:
            with pytest.raises(MCPError) as raised:
                await client.call_tool("search_repos", {"q": "x"})
            return raised.value

    err = _run(main)
    assert err.code == -32042
    (elicitation,) = UrlElicitationRequiredError.from_error(err.error).elicitations
    assert (elicitation.url, elicitation.elicitation_id) == (URL, ELICITATION_ID)
    (headers, _), = gateway.calls
    assert headers["mcp-protocol-version"] == "2025-11-25"


def test_sdk_client_at_2025_11_25_gets_the_error_tool_result():
    gateway = Gateway("2025-11-25", [Golden("tool-error-2025-11-25.http")])

    async def main():
        async with Client(gateway.transport(), mode="legacy") as client:
            return await client.call_tool("search_repos", {"q": "x"})

    result = _run(main)
    assert result.is_error is True
    assert result.content[0].text == MESSAGE


def test_sdk_client_at_2026_07_28_elicits_the_url_and_retries():
    gateway = Gateway(
        "2026-07-28",
        [Golden("input-required-2026-07-28.http"), Golden("tool-error-2026-07-28.http")],
    )
    elicited: list[Any] = []

    async def elicit(context, params):
        elicited.append(params)
        return mcp_types.ElicitResult(action="accept")

    async def main():
        async with Client(gateway.transport(), mode="2026-07-28", elicitation_callback=elicit) as client:
            return await client.call_tool("search_repos", {"q": "x"})

    result = _run(main)
    (params,) = elicited
    assert isinstance(params, mcp_types.ElicitRequestURLParams)
    assert (params.mode, params.url, params.message) == ("url", URL, MESSAGE)
    # The retry carries the client's answer under our key; the second reply ends the call.
    (first_headers, first), (_, retry) = gateway.calls
    assert first_headers["mcp-protocol-version"] == "2026-07-28"
    meta = first["params"]["_meta"]
    assert meta["io.modelcontextprotocol/protocolVersion"] == "2026-07-28"
    assert "url" in meta["io.modelcontextprotocol/clientCapabilities"]["elicitation"]
    assert retry["params"]["inputResponses"] == {"connect:github": {"action": "accept"}}
    assert retry["id"] != first["id"]
    assert result.is_error is True
    assert result.content[0].text == MESSAGE
