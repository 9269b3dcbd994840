"""Behind Envoy's mcp_router: one aggregated MCP endpoint in front of four real MCP servers (the
official SDK), and each backend still receives exactly its own credential, per user, through
the hand-off from the listener's issuing instance to the clusters' accepting instances
(router_scenarios, envoy/mcp-router.yaml).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest

import harness as h
import mcp_backends as mb
import router_scenarios as rs
import scenarios as sc

ALICE, BOB = "gw-router-alice", "gw-router-bob"
COUNTERS = [f"handoff.{c}" for c in ("issued", "spoofed", "accepted", "rejected", "missing")]


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, mb.RecordingMcpServer]]:
    running = {name: mb.RecordingMcpServer(name).start() for name in rs.BACKENDS}
    yield running
    for server in running.values():
        server.stop()


@pytest.fixture(scope="module")
def router(envoy_bin: Path, wasm_path: Path, workdir: Path, servers, router_authz, sts, backend) -> Iterator[h.Envoy]:
    ports = {name: s.port for name, s in servers.items()}
    ports.update(authz=router_authz.port, sts=sts.port)
    config = rs.config(wasm_path, ports, backend.port)
    with h.Envoy("mcp-router", config, workdir, envoy_bin, env=rs.ENV, component_log_level="wasm:trace,dynamic_modules:trace") as envoy:
        yield envoy


def url(envoy: h.Envoy) -> str:
    return f"http://{h.LOOPBACK}:{envoy.port('mcp_aggregate')}/mcp"


def test_each_backend_gets_exactly_its_own_credential_through_one_endpoint(router, servers, sts):
    tools = [f"{name}__whoami" for name in rs.BACKENDS]
    before = {name: len(s.all_requests()) for name, s in servers.items()}
    with h.CounterDelta(router, COUNTERS) as d:
        got = mb.session(url(router), {"Authorization": f"Bearer {ALICE}"}, tools)

    assert got.tools == sorted(tools), got
    alice = rs.USERS[ALICE]
    [corp_token] = sts.issued_for(alice["corporate-idp"])[-1:]
    [bearer_token] = sts.issued_for(ALICE)[-1:]
    expected = {
        "github": {"authorization": f"Bearer {alice['github']}", "x-api-key": None},
        "corp": {"authorization": f"Bearer {corp_token}", "x-api-key": None},
        "internal": {"authorization": None, "x-api-key": rs.INTERNAL_API_KEY},
        "bearer": {"authorization": f"Bearer {bearer_token}", "x-api-key": None},
    }
    for name in rs.BACKENDS:
        assert got.calls[f"{name}__whoami"] == {"server": name, **expected[name]}, got.calls
    assert [c.form["audience"] for c in sts.calls_for(ALICE)][-1:] == [[rs.BEARER_AUDIENCE]]
    for name, server in servers.items():
        seen = server.all_requests()[before[name] :]
        assert seen, f"{name} was never called"
        others = [t for t in (alice["github"], alice["corporate-idp"], ALICE, rs.INTERNAL_API_KEY)]
        own = expected[name]["authorization"] or expected[name]["x-api-key"]
        for request in seen:
            assert request.values(rs.HANDOFF_HEADER) == [], f"the hand-off reached {name}"
            sc.assert_no_secrets(request.header_blob(), [t for t in others if t not in own], f"{name} headers")
    moved = d.delta()
    assert moved["handoff.issued"] >= 3 and moved["handoff.rejected"] == 0, moved


def test_a_hand_off_header_the_client_sends_is_replaced_and_never_used(router, servers):
    forged = "v1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    headers = {"Authorization": f"Bearer {ALICE}", rs.HANDOFF_HEADER: forged}
    with h.CounterDelta(router, COUNTERS) as d:
        got = mb.session(url(router), headers, ["github__whoami"])

    assert got.calls["github__whoami"]["authorization"] == f"Bearer {rs.USERS[ALICE]['github']}"
    moved = d.delta()
    assert moved["handoff.spoofed"] >= 1 and moved["handoff.spoofed"] == moved["handoff.issued"], moved
    assert moved["handoff.rejected"] == 0, moved
    for server in servers.values():
        assert not any(forged in r.header_blob() for r in server.all_requests())


def mcp_post(envoy: h.Envoy, backend: str, headers: list[tuple[str, str]]) -> h.Response:
    body = b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",' \
        b'"capabilities":{},"clientInfo":{"name":"t","version":"1"}}}'
    base = [("content-type", "application/json"), ("accept", "application/json, text/event-stream")]
    return h.request(envoy.port("direct"), f"/{backend}/mcp", [*base, *headers], method="POST", body=body)


def sealed_elsewhere(router: h.Envoy, backend: h.EchoBackend, unique) -> str:
    """A genuine hand-off written by an issuing instance with another key (another Envoy)."""
    path = unique("/elsewhere/")
    resp = h.request(router.port("elsewhere"), path)
    seen = sc.only_request(backend, path, resp)
    [value] = seen.values(rs.HANDOFF_HEADER)
    return value


@pytest.mark.parametrize("case", ["none", "forged", "from-another-envoy"])
def test_an_accepting_instance_reached_without_this_envoys_issuer_uses_no_hand_off(
    router, servers, backend, unique, case
):
    headers = [("authorization", f"Bearer {ALICE}")]
    if case == "forged":
        headers.append((rs.HANDOFF_HEADER, "v1." + "A" * 120))
    elif case == "from-another-envoy":
        headers.append((rs.HANDOFF_HEADER, sealed_elsewhere(router, backend, unique)))
    before = len(servers["github"].all_requests())
    with h.CounterDelta(router, COUNTERS) as d:
        resp = mcp_post(router, "github", headers)

    assert resp.status == 401, resp.describe()
    assert resp.header("www-authenticate") == sc.missing_token_www_authenticate("github")
    assert len(servers["github"].all_requests()) == before, "the backend was called"
    assert not any(rs.ELSEWHERE_GITHUB_TOKEN in r.header_blob() for r in servers["github"].all_requests())
    moved = d.delta()
    assert moved["handoff.accepted"] == 0, moved
    assert moved["handoff.missing" if case == "none" else "handoff.rejected"] == 1, moved


def test_a_backend_that_needs_no_upstream_token_works_without_a_hand_off_and_never_sees_one(
    router, servers
):
    before = len(servers["internal"].all_requests())
    resp = mcp_post(router, "internal", [(rs.HANDOFF_HEADER, "v1.forged-by-the-client")])

    assert resp.status == 200, resp.describe()
    [seen] = servers["internal"].all_requests()[before:]
    assert seen.values("x-api-key") == [rs.INTERNAL_API_KEY]
    assert seen.values(rs.HANDOFF_HEADER) == []


def test_the_filters_log_lines_carry_no_token_and_no_hand_off(router, servers, sts, backend, unique):
    mb.session(url(router), {"Authorization": f"Bearer {ALICE}"}, ["github__whoami", "corp__whoami"])
    mcp_post(router, "github", [(rs.HANDOFF_HEADER, sealed_elsewhere(router, backend, unique))])
    secrets = [ALICE, BOB, rs.INTERNAL_API_KEY, rs.STS_CLIENT_SECRET, rs.ELSEWHERE_GITHUB_TOKEN, *sts.all_tokens()]
    secrets += [t for user in rs.USERS.values() for t in user.values()]
    wasm_lines = "\n".join(line for line in router.log_text().splitlines() if router.filter_log_mark in line)
    sc.assert_no_secrets(wasm_lines, secrets, "the filter's log lines")
    assert "v1." not in wasm_lines.replace("v1.40", ""), "a hand-off value in the log"


def test_a_user_without_a_github_token_is_told_to_connect_it_and_keeps_the_other_backends(
    router, servers, sts
):
    before = len(servers["github"].all_requests())
    tools = ["corp__whoami", "github__whoami", "internal__whoami"]
    with h.CounterDelta(router, ["mcp.tool_error", "upstream_inject.token_missing"]) as d:
        got = mb.session(url(router), {"Authorization": f"Bearer {BOB}"}, tools)

    # mcp_router drops the refusing backend from initialize and tools/list ...
    assert "github__whoami" not in got.tools and "corp__whoami" in got.tools, got.tools
    # ... and its tools/call comes back as a tool error naming what to connect, not a 500.
    assert got.errors["github__whoami"] is True
    assert got.calls["github__whoami"].startswith("Connect your github account to use this tool. https://")
    [corp_token] = sts.issued_for(rs.USERS[BOB]["corporate-idp"])[-1:]
    assert got.calls["corp__whoami"]["authorization"] == f"Bearer {corp_token}"
    assert got.calls["internal__whoami"]["x-api-key"] == rs.INTERNAL_API_KEY
    assert len(servers["github"].all_requests()) == before, "the github backend was called"
    moved = d.delta()
    assert moved["mcp.tool_error"] == 1, moved
    assert moved["upstream_inject.token_missing"] >= 2, moved  # initialize and tools/list got 401s


CONNECT_URL = r"https://gateway\.example/connect/github\?elicitation=([0-9a-f]{32})"


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25"])
def test_a_raw_tools_call_gets_its_answer_with_its_own_id(router, version):
    # mcp_router keeps the client's JSON-RPC id and relays the 200: at 2025-11-25 the URL
    # elicitation error, at a revision without URL elicitation the tool error with the link.
    call = b'{"jsonrpc":"2.0","id":"call-7","method":"tools/call",' \
        b'"params":{"name":"github__whoami","arguments":{}}}'
    headers = [
        ("authorization", f"Bearer {BOB}"),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", version),
    ]
    resp = h.request(router.port("mcp_aggregate"), "/mcp", headers, method="POST", body=call)
    assert resp.status == 200, resp.describe()
    answer = resp.json()
    assert (answer["jsonrpc"], answer["id"]) == ("2.0", "call-7")
    if version == "2025-11-25":
        assert answer["error"]["code"] == -32042
        [elicitation] = answer["error"]["data"]["elicitations"]
        assert re.fullmatch(CONNECT_URL, elicitation["url"]).group(1) == elicitation["elicitationId"]
        return
    assert answer["result"]["isError"] is True
    [content] = answer["result"]["content"]
    assert re.fullmatch(r"Connect your github account to use this tool\. " + CONNECT_URL, content["text"])


def test_without_the_issuers_summary_of_the_request_a_tools_call_gets_the_401(router):
    call = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami"}}'
    base = [("content-type", "application/json"), ("accept", "application/json, text/event-stream")]
    resp = h.request(router.port("direct"), "/github/mcp", base, method="POST", body=call)
    assert resp.status == 401, resp.describe()
