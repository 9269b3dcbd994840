"""Behind Envoy's mcp_router: one aggregated MCP endpoint in front of four real MCP servers (the
official SDK), and each backend still receives exactly its own credential, per user, through
the hand-off from the listener's issuing instance to the clusters' accepting instances
(router_scenarios, envoy/mcp-router.yaml).
"""

from __future__ import annotations

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
def router_authz() -> Iterator[h.ExtAuthzService]:
    service = h.ExtAuthzService(rs.USERS).start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def router(envoy_bin: Path, wasm_path: Path, workdir: Path, servers, router_authz, sts, backend) -> Iterator[h.Envoy]:
    ports = {name: s.port for name, s in servers.items()}
    ports.update(authz=router_authz.port, sts=sts.port)
    config = rs.config(wasm_path, ports, backend.port)
    with h.Envoy("mcp-router", config, workdir, envoy_bin, env=rs.ENV) as envoy:
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
