"""The Envoy of the mcp_router tests: envoy/mcp-router.yaml with its ports, the wasm path and the
STS client id moved, plus what the tests add to it:

* a fourth backend, ``bearer`` (cluster ``bearer-mcp``): token_exchange of the client's own
  bearer, which the issuing instance then hands off too (``clientBearer: true``);
* listener ``direct``: a plain router straight to the backends' clusters, no issuing instance:
  what reaches an accepting instance by another path;
* listener ``elsewhere``: an issuing instance with another ``vm_id`` (so another key) in front
  of the echo backend, which records the hand-off header it writes: a genuine hand-off of
  "another Envoy", carrying ``ELSEWHERE_GITHUB_TOKEN`` (from set_metadata), to replay.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

import harness as h

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "envoy" / "mcp-router.yaml"

# The example's fixed ports, by role.
PORTS = {"listener": 10001, "admin": 9902, "github": 18001, "corp": 18002, "internal": 18003, "authz": 18080, "sts": 18090}
HANDOFF_HEADER = "x-outgoing-auth-handoff"
STS_CLIENT_ID = "router-test-gateway"
STS_CLIENT_SECRET = "router-test-sts-secret"
INTERNAL_API_KEY = "router-test-internal-key"
# "Another Envoy"'s hand-off key: the native build keeps one random key per process, so another
# key is a keyEnv of its own (the wasm build gets another vm_id as well).
ELSEWHERE_KEY_ENV = "ELSEWHERE_HANDOFF_KEY"
ENV = {
    "INTERNAL_API_KEY": INTERNAL_API_KEY,
    "STS_CLIENT_SECRET": STS_CLIENT_SECRET,
    ELSEWHERE_KEY_ENV: "another-envoys-hand-off-key-0123456789abcdef",
}

# ext_authz users: gateway token -> upstream tokens.
USERS = {
    "gw-router-alice": {"github": "gho_router_alice", "corporate-idp": "corp-idp-router-alice"},
    "gw-router-bob": {"corporate-idp": "corp-idp-router-bob"},  # never connected GitHub
}
BACKENDS = ["github", "corp", "internal", "bearer"]
ELSEWHERE_GITHUB_TOKEN = "gho_sealed_by_another_envoy"
BEARER_AUDIENCE = "https://bearer-mcp.example"


def _filter_config(entry: dict) -> dict:
    return json.loads(entry["typed_config"]["config"]["configuration"]["value"])


def _set_filter_config(entry: dict, config: dict) -> None:
    entry["typed_config"]["config"]["configuration"]["value"] = json.dumps(config)


def _wasm_entries(node: object):
    """Every outgoing-auth filter entry in a config tree."""
    if isinstance(node, dict):
        if node.get("name") == "envoy.filters.http.wasm":
            yield node
        for value in node.values():
            yield from _wasm_entries(value)
    elif isinstance(node, list):
        for value in node:
            yield from _wasm_entries(value)


def example(wasm: Path, ports: dict[str, int]) -> dict:
    """envoy/mcp-router.yaml as it is, with the ports (``PORTS`` roles), the wasm path and the
    STS client id replaced; the listener and admin bind port 0."""
    text = EXAMPLE.read_text().replace("${STS_CLIENT_ID}", STS_CLIENT_ID)
    text = text.replace("/etc/envoy/outgoing_auth.wasm", str(wasm))
    moved = {"listener": 0, "admin": 0, **ports}
    for role, port in PORTS.items():
        text = text.replace(f"port_value: {port}", f"port_value: {moved[role]}")
        text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{moved[role]}")
    return yaml.safe_load(text)


def config(wasm: Path, ports: dict[str, int], echo_port: int, missing_token: dict | None = None) -> dict:
    """``missing_token``: a ``missingToken`` block for the accepting instances (with
    ``readBody``, they also get ``allow_on_headers_stop_iteration``)."""
    boot = example(wasm, ports)
    [listener] = boot["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    issuer, accepting = list(_wasm_entries(boot))[:2]

    # The issuing instance hands off the client's bearer too; a fourth backend exchanges it.
    issuing = _filter_config(issuer)
    issuing["handoff"]["clientBearer"] = True
    _set_filter_config(issuer, issuing)
    accept = _filter_config(accepting)
    corp = accept["outgoingAuth"]["backends"]["corp-mcp"]["tokenExchange"]
    bearer_exchange = {k: v for k, v in corp.items() if k != "subjectProviderName"}
    accept["outgoingAuth"]["backends"]["bearer-mcp"] = {
        "type": "token_exchange",
        "tokenExchange": dict(bearer_exchange, audience=BEARER_AUDIENCE),
    }
    if missing_token is not None:
        accept["missingToken"] = missing_token
    # The clusters share one accepting config (a YAML alias): set it on each copy.
    router = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.mcp_router")
    servers = router["typed_config"]["servers"]
    servers.append(dict(copy.deepcopy(servers[0]), name="bearer"))
    servers[-1]["mcp_cluster"]["cluster"] = "bearer-mcp"
    clusters = boot["static_resources"]["clusters"]
    github = next(c for c in clusters if c["name"] == "github-mcp")
    bearer = copy.deepcopy(github)
    bearer["name"] = bearer["load_assignment"]["cluster_name"] = "bearer-mcp"
    bearer["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
        "port_value"
    ] = ports["bearer"]
    clusters.append(bearer)
    for entry in list(_wasm_entries(boot))[1:]:
        _set_filter_config(entry, accept)
        if missing_token and missing_token.get("readBody"):
            entry["typed_config"]["config"]["allow_on_headers_stop_iteration"] = True

    # What reaches the accepting instances without an issuer, and another Envoy's hand-off.
    direct_routes = [h.route(f"/{name}/", f"{name}-mcp", prefix_rewrite="/", timeout="0s") for name in BACKENDS]
    elsewhere = copy.deepcopy(issuer)
    vm = elsewhere["typed_config"]["config"]["vm_config"]
    vm["vm_id"] = "another_envoy"
    vm.setdefault("environment_variables", {}).setdefault("host_env_keys", []).append(ELSEWHERE_KEY_ENV)
    other = _filter_config(elsewhere)
    other["handoff"]["keyEnv"] = ELSEWHERE_KEY_ENV
    _set_filter_config(elsewhere, other)
    boot["static_resources"]["listeners"] += [
        h.http_listener("direct", direct_routes, []),
        h.http_listener(
            "elsewhere",
            [h.route("/", "echo")],
            [h.set_metadata_filter({"x-upstream-token-github": ELSEWHERE_GITHUB_TOKEN}), elsewhere],
        ),
    ]
    clusters.append(h.cluster("echo", echo_port))
    return boot
