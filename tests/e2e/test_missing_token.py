"""What a request whose upstream token is missing is told (``missingToken``): a 401 challenge an
MCP client acts on (RFC 9728 ``resource_metadata``, ``scope``), and for an MCP request to a
provider with a connect URL an answer in MCP carrying that URL, in the protocol revision the
request declares. The backend is never called.

Listeners of the ``missing`` Envoy (the filter in the listener chain, no GitHub token in the
metadata, the echo backend behind it):

* ``read-body``: ``missingToken.readBody`` with ``allow_on_headers_stop_iteration``: the filter
  reads the body of a request whose token is missing, and only of those;
* ``mcp-filter``: no body reading; ``envoy.filters.http.mcp`` before the filter parses the
  request, and the filter answers from what it parsed (no 2026-07-28 capabilities there);
* ``plain``: no connect URL: the 401 with the challenge only.

Behind mcp_router (the ``router`` Envoy of router_scenarios with ``missingToken`` on the accepting
instances), the SDK client at both protocol revisions surfaces the connect URL.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any, Iterator

import httpx2
import pytest

import harness as h
import mcp_backends as mb
import router_scenarios as rs
import scenarios as sc

import mcp_types
from mcp import Client, UrlElicitationRequiredError
from mcp.client.auth.utils import extract_resource_metadata_from_www_auth, extract_scope_from_www_auth
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

RESOURCE_METADATA = "https://gateway.example/.well-known/oauth-protected-resource/mcp"
SCOPE = "mcp:tools"
CONNECT = "https://gateway.example/connect/{provider}?elicitation={elicitationId}"
CONNECT_RE = re.compile(r"^https://gateway\.example/connect/github\?elicitation=([0-9a-f]{32})$")
MESSAGE = "Connect your {provider} account to use this tool."
SHOWN = "Connect your github account to use this tool."
COUNTERS = ["mcp.url_elicitation", "mcp.input_required", "mcp.tool_error", "upstream_inject.token_missing"]


def missing_token(read_body: bool, connect: bool = True) -> dict:
    block: dict[str, Any] = {"resourceMetadata": RESOURCE_METADATA, "scope": SCOPE, "message": MESSAGE}
    if connect:
        block["connectUrls"] = {"github": CONNECT}
    if read_body:
        block["readBody"] = True
    return block


def filter_config(block: dict) -> dict:
    return {
        "authServer": {"upstreams": ["github"], "tokens": sc.STRUCT_TOKENS},
        "missingToken": block,
        "outgoingAuth": {"default": sc.inject("github"), "backends": {"public": sc.UNAUTHENTICATED}},
    }


@pytest.fixture(scope="module")
def missing(envoy_bin: Path, wasm_path: Path, workdir: Path, backend) -> Iterator[h.Envoy]:
    no_github = h.set_metadata_filter({"upstream_tokens": {"slack": "xoxb-not-github"}})

    def listener(name: str, block: dict, read_body: bool, mcp_filter: bool) -> dict:
        chain = [no_github, *([h.MCP_FILTER] if mcp_filter else []), h.auth_filter(filter_config(block), wasm_path, read_body=read_body)]
        routes = [h.route("/public/", "backend", backend="public"), h.route("/", "backend")]
        return h.http_listener(name, routes, chain)

    boot = h.bootstrap(
        [
            listener("read-body", missing_token(read_body=True), read_body=True, mcp_filter=False),
            listener("mcp-filter", missing_token(read_body=False), read_body=False, mcp_filter=True),
            listener("plain", missing_token(read_body=False, connect=False), read_body=False, mcp_filter=False),
        ],
        [h.cluster("backend", backend.port)],
    )
    with h.Envoy("missing-token", boot, workdir, envoy_bin) as envoy:
        yield envoy


def post(envoy: h.Envoy, listener: str, path: str, message: dict | list | bytes, version: str | None) -> h.Response:
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    headers = [("content-type", "application/json"), ("accept", "application/json, text/event-stream")]
    if version:
        headers.append(("mcp-protocol-version", version))
    return h.request(envoy.port(listener), path, headers, method="POST", body=body)


def tools_call(request_id: Any = 7, capabilities: bool = False, version: str = "2026-07-28") -> dict:
    params: dict[str, Any] = {"name": "search_repos", "arguments": {"q": "x"}}
    if capabilities:
        params["_meta"] = {
            "io.modelcontextprotocol/protocolVersion": version,
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"url": {}}},
        }
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def assert_challenge(resp: h.Response) -> None:
    assert resp.status == 401, resp.describe()
    challenge = resp.header("www-authenticate")
    assert challenge == (
        'Bearer error="invalid_token", error_description="upstream token for provider github not found", '
        f'scope="{SCOPE}", resource_metadata="{RESOURCE_METADATA}"'
    ), challenge


@pytest.mark.parametrize("listener", ["read-body", "mcp-filter", "plain"])
def test_a_plain_http_client_gets_the_401_with_resource_metadata_and_scope(missing, backend, unique, listener):
    path = unique("/plain/")
    resp = h.request(missing.port(listener), path)

    assert_challenge(resp)
    challenge = resp.header("www-authenticate")

    class Headers:  # what the SDK's helpers read of a response
        status_code = 401
        headers = {"WWW-Authenticate": challenge}

    assert extract_resource_metadata_from_www_auth(Headers) == RESOURCE_METADATA
    assert extract_scope_from_www_auth(Headers) == SCOPE
    sc.assert_backend_not_called(backend, path)


@pytest.mark.parametrize(
    "request_id", [7, "call-7", 'id "with" \\escapes', 9007199254740991], ids=["int", "str", "escapes", "big"]
)
def test_2025_11_25_a_tools_call_gets_the_url_elicitation_error_with_the_connect_url(missing, backend, unique, request_id):
    path = unique("/mcp-")
    with h.CounterDelta(missing, COUNTERS) as d:
        resp = post(missing, "read-body", path, tools_call(request_id), "2025-11-25")

    assert resp.status == 200, resp.describe()
    answer = resp.json()
    assert (answer["jsonrpc"], answer["id"]) == ("2.0", request_id)
    assert answer["error"]["code"] == -32042
    [elicitation] = answer["error"]["data"]["elicitations"]
    assert elicitation["mode"] == "url" and elicitation["message"] == SHOWN
    match = CONNECT_RE.match(elicitation["url"])
    assert match and match.group(1) == elicitation["elicitationId"], elicitation
    sc.assert_backend_not_called(backend, path)
    assert d.delta() == {COUNTERS[0]: 1, COUNTERS[1]: 0, COUNTERS[2]: 0, COUNTERS[3]: 1}


def test_2026_07_28_a_tools_call_that_declares_url_elicitation_gets_input_required(missing, backend, unique):
    path = unique("/mcp-")
    with h.CounterDelta(missing, COUNTERS) as d:
        resp = post(missing, "read-body", path, tools_call(capabilities=True), "2026-07-28")

    assert resp.status == 200, resp.describe()
    answer = resp.json()
    result = answer["result"]
    assert result["resultType"] == "input_required"
    request = result["inputRequests"]["connect:github"]
    assert request["method"] == "elicitation/create"
    assert request["params"]["mode"] == "url" and request["params"]["message"] == SHOWN
    assert CONNECT_RE.match(request["params"]["url"])
    sc.assert_backend_not_called(backend, path)
    assert d.delta()[COUNTERS[1]] == 1


OTHER_REQUESTS = {
    "2026-without-url-capability": (tools_call(capabilities=False), "2026-07-28"),
    "older-revision": (tools_call(), "2025-06-18"),
    "unknown-revision": (tools_call(), "2099-01-01"),
    "notification": ({"jsonrpc": "2.0", "method": "notifications/initialized"}, "2025-11-25"),
    "batch": ([tools_call(1), tools_call(2)], "2025-11-25"),
    "initialize": ({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}, "2025-11-25"),
    "not-json-rpc": ({"hello": "world"}, "2025-11-25"),
    "garbage": (b"\xff\x00not json", "2025-11-25"),
    "over-the-bound": (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"x":"' + b"a" * 70000 + b'"}}',
        "2025-11-25",
    ),
}


@pytest.mark.parametrize("case", list(OTHER_REQUESTS))
def test_every_other_request_gets_the_401(missing, backend, unique, case):
    message, version = OTHER_REQUESTS[case]
    path = unique("/mcp-")
    with h.CounterDelta(missing, COUNTERS) as d:
        resp = post(missing, "read-body", path, message, version)

    assert_challenge(resp)
    sc.assert_backend_not_called(backend, path)
    moved = d.delta()
    assert (moved[COUNTERS[0]], moved[COUNTERS[1]], moved[COUNTERS[3]]) == (0, 0, 1), moved


def test_from_what_the_mcp_filter_parsed_without_reading_the_body(missing, backend, unique):
    path = unique("/mcp-")
    resp = post(missing, "mcp-filter", path, tools_call("from-metadata"), "2025-11-25")

    assert resp.status == 200, resp.describe()
    answer = resp.json()
    assert answer["id"] == "from-metadata" and answer["error"]["code"] == -32042
    sc.assert_backend_not_called(backend, path)


def test_a_request_that_needs_no_such_answer_goes_on_at_once_body_and_all(missing, backend, unique):
    path = unique("/public/")
    body = json.dumps(tools_call("public")).encode() + b" " * 100_000
    resp = h.request(missing.port("read-body"), path, [("content-type", "application/json")], method="POST", body=body)

    seen = sc.only_request(backend, path, resp)
    assert seen.method == "POST"
    assert [v for k, v in seen.headers if k == "content-length"] == [str(len(body))]


# --------------------------------------------------------------------------------------------
# Behind mcp_router, with the SDK client


@pytest.fixture(scope="module")
def connect_router(envoy_bin, wasm_path, workdir, router_authz, sts, backend) -> Iterator[tuple[h.Envoy, dict]]:
    servers = {name: mb.RecordingMcpServer(name).start() for name in rs.BACKENDS}
    ports = {name: s.port for name, s in servers.items()}
    ports.update(authz=router_authz.port, sts=sts.port)
    config = rs.config(wasm_path, ports, backend.port, missing_token=missing_token(read_body=False))
    try:
        with h.Envoy("mcp-router-connect", config, workdir, envoy_bin, env=rs.ENV) as envoy:
            yield envoy, servers
    finally:
        for server in servers.values():
            server.stop()


def aggregate(envoy: h.Envoy) -> str:
    return f"http://{h.LOOPBACK}:{envoy.port('mcp_aggregate')}/mcp"


def test_behind_mcp_router_the_tool_error_carries_the_connect_url(connect_router):
    # mcp_router 1.40 negotiates 2025-06-18 with the client, a revision without URL elicitation
    # (and answers a 2026-07-28 client with an error of its own): the answer is the tool error,
    # whose text carries the connect URL.
    envoy, servers = connect_router
    before = len(servers["github"].all_requests())

    async def main():
        http = create_mcp_http_client(headers={"Authorization": "Bearer gw-router-bob"})
        async with http, Client(streamable_http_client(aggregate(envoy), http_client=http), mode="legacy") as client:
            assert client.protocol_version == "2025-06-18"
            github = await client.call_tool("github__whoami", {})
            corp = await client.call_tool("corp__whoami", {})
            return github, corp

    github, corp = asyncio.run(main())
    assert github.is_error is True
    text = github.content[0].text
    assert text.startswith(SHOWN + " ") and CONNECT_RE.match(text.removeprefix(SHOWN + " ")), text
    assert not corp.is_error, "the other backends keep working"
    assert len(servers["github"].all_requests()) == before, "the github backend was called"


# --------------------------------------------------------------------------------------------
# The SDK client at both revisions against the listener placement. Every request to a backend
# whose token is missing gets an answer from the filter, initialize included (the 401), so a
# stand-in answers the handshake and passes every other request to the real Envoy.


class Handshake:
    def __init__(self, envoy: h.Envoy, version: str) -> None:
        self.url = f"http://{h.LOOPBACK}:{envoy.port('read-body')}/mcp"
        self.version = version
        self.forwarded: list[int] = []

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content) if request.content else {}
        if request.method != "POST" or "id" not in body:
            return httpx2.Response(202)
        if body.get("method") == "initialize":
            result = {"protocolVersion": self.version, "capabilities": {"tools": {}}, "serverInfo": {"name": "gw", "version": "1"}}
            return httpx2.Response(200, json={"jsonrpc": "2.0", "id": body["id"], "result": result})
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept", "mcp-protocol-version")}
        with httpx2.Client() as real:
            answer = real.post(self.url, content=request.content, headers=headers)
        self.forwarded.append(answer.status_code)
        return httpx2.Response(answer.status_code, headers=dict(answer.headers), content=answer.content)

    def transport(self):
        http = httpx2.AsyncClient(transport=httpx2.MockTransport(self.handle))
        return streamable_http_client("https://gateway.example/mcp", http_client=http)


def test_the_sdk_client_at_2025_11_25_raises_url_elicitation_required_with_the_connect_url(missing, backend):
    gateway = Handshake(missing, "2025-11-25")

    async def main():
        async with Client(gateway.transport(), mode="legacy") as client:
            with pytest.raises(MCPError) as raised:
                await client.call_tool("search_repos", {"q": "x"})
            return raised.value

    err = asyncio.run(main())
    assert err.code == -32042 and gateway.forwarded == [200]
    [elicitation] = UrlElicitationRequiredError.from_error(err.error).elicitations
    assert CONNECT_RE.match(elicitation.url) and elicitation.message == SHOWN
    assert CONNECT_RE.match(elicitation.url).group(1) == elicitation.elicitation_id


def test_the_sdk_client_at_2026_07_28_is_asked_to_open_the_connect_url(missing, backend):
    gateway = Handshake(missing, "2026-07-28")
    elicited: list[Any] = []

    async def elicit(context, params):
        elicited.append(params)
        return mcp_types.ElicitResult(action="accept")

    async def main():
        async with Client(gateway.transport(), mode="2026-07-28", elicitation_callback=elicit) as client:
            return await client.call_tool("search_repos", {"q": "x"})

    result = asyncio.run(main())
    [params] = elicited
    assert isinstance(params, mcp_types.ElicitRequestURLParams)
    assert CONNECT_RE.match(params.url) and params.message == SHOWN
    # The retry carries the user's answer; the token is still missing: the tool error ends it.
    assert gateway.forwarded == [200, 200]
    assert result.is_error is True and result.content[0].text.startswith(SHOWN)


def test_no_answer_trapped_the_vm(missing, connect_router):
    for envoy in (missing, connect_router[0]):
        log = envoy.log_text()
        for sign in ("panicked", "wasm trap", "Function: proxy_on_"):
            assert sign not in log, f"{sign!r} in {envoy.name}'s log:\n{envoy.log_tail()}"
