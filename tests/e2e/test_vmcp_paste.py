"""A vMCP ``outgoingAuth`` block pastes in as-is, token_exchange included.

ToolHive's own example (RFC-0054's Mode B config, research notes toolhive-vmcp-spec.md §2.1):
``github-tools`` and ``atlassian-tools`` inject their upstream tokens, ``corporate-api`` exchanges
the ``corporate-idp`` token at an STS (``tokenUrl``, ``audience``, ``subjectProviderName``), and
``internal-api`` gets a header. vMCP has no ``cluster`` field, so none is written: the filter calls
the cluster named after the tokenUrl's host, and says so with a W-02 warning at startup. The Envoy
config defines that cluster (pointing at the scripted STS); the exchange then works end to end.
"""

from __future__ import annotations

import os

import pytest

import exchange_scenarios as xs
import harness as h
import scenarios as sc

STS_HOST = "sts.corp.example"  # the tokenUrl's host, and so the cluster's name
TOKEN_URL = f"http://{STS_HOST}:8443/oauth2/token"
CORPORATE_IDP_TOKEN = f"corp-idp-vmcp-paste-{os.urandom(6).hex()}"

# Pasted from vMCP: no Envoy field anywhere.
VMCP_OUTGOING_AUTH = {
    "source": "inline",
    "backends": {
        "github-tools": {"type": "upstream_inject", "upstreamInject": {"providerName": "github"}},
        "atlassian-tools": {"type": "upstream_inject", "upstreamInject": {"providerName": "atlassian"}},
        "corporate-api": {
            "type": "token_exchange",
            "tokenExchange": {
                "tokenUrl": TOKEN_URL,
                "audience": "https://corporate-api.example.com",
                "subjectProviderName": "corporate-idp",
            },
        },
        "internal-api": {
            "type": "header_injection",
            "headerInjection": {"headerName": "X-API-Key", "headerValueEnv": "INTERNAL_KEY"},
        },
    },
}

FILTER_CONFIG = {
    "authServer": {"upstreams": ["github", "atlassian", "corporate-idp"], "tokens": sc.STRUCT_TOKENS},
    "outgoingAuth": VMCP_OUTGOING_AUTH,
}

ROUTES = {
    "/github/": "github-tools",
    "/atlassian/": "atlassian-tools",
    "/corp/": "corporate-api",
    "/internal/": "internal-api",
}

METADATA = {
    "upstream_tokens": {
        "github": sc.GITHUB_TOKEN,
        "atlassian": sc.ATLASSIAN_TOKEN,
        "corporate-idp": CORPORATE_IDP_TOKEN,
    }
}


@pytest.fixture(scope="module")
def pasted(envoy_bin, wasm_path, workdir, backend, sts):
    wasm_filter = h.auth_filter(FILTER_CONFIG, wasm_path, host_env_keys=["INTERNAL_KEY"])
    listener = h.http_listener(
        "main",
        [h.route(prefix, "backend", backend=name) for prefix, name in ROUTES.items()],
        [h.set_metadata_filter(METADATA), wasm_filter],
    )
    config = h.bootstrap([listener], [h.cluster("backend", backend.port), h.cluster(STS_HOST, sts.port)])
    with h.Envoy("vmcp-paste", config, workdir, envoy_bin, env=sc.ENV) as envoy:
        yield envoy


def test_the_pasted_block_loads_and_names_the_cluster_envoy_must_define(pasted):
    log = pasted.log_text()
    assert "configuration loaded: 4 backend(s)" in log, pasted.log_tail()
    w02 = [line for line in log.splitlines() if "[W-02]" in line]
    assert len(w02) >= 1, pasted.log_tail()
    assert all("[warning]" in line for line in w02), w02
    assert 'outgoingAuth.backends["corporate-api"].tokenExchange.cluster' in w02[0], w02[0]
    assert f'calls the Envoy cluster "{STS_HOST}"' in w02[0], w02[0]


def test_the_exchange_calls_the_cluster_named_after_the_token_url_host(pasted, sts, backend, unique):
    path = unique("/corp/")
    earlier = len(sts.calls_for(CORPORATE_IDP_TOKEN))  # the other build's run of this test
    resp = h.request(pasted.port("main"), path, [("authorization", sc.GATEWAY_TOKEN)])
    seen = sc.only_request(backend, path, resp)
    calls = sts.calls_for(CORPORATE_IDP_TOKEN)[earlier:]
    assert len(calls) == 1, calls
    assert calls[0].path == "/oauth2/token"
    assert calls[0].values("host") == [f"{STS_HOST}:8443"]
    assert calls[0].form["audience"] == ["https://corporate-api.example.com"]
    issued = sts.issued_for(CORPORATE_IDP_TOKEN)[earlier:]
    assert seen.values("authorization") == [f"Bearer {issued[0]}"]


@pytest.mark.parametrize(
    "prefix, header, value",
    [
        ("/github/", "authorization", f"Bearer {sc.GITHUB_TOKEN}"),
        ("/atlassian/", "authorization", f"Bearer {sc.ATLASSIAN_TOKEN}"),
        ("/internal/", "x-api-key", sc.INTERNAL_KEY),
    ],
    ids=["github", "atlassian", "internal"],
)
def test_the_other_pasted_strategies_apply(pasted, backend, unique, prefix, header, value):
    path = unique(prefix)
    resp = h.request(pasted.port("main"), path, [("authorization", sc.GATEWAY_TOKEN)])
    seen = sc.only_request(backend, path, resp)
    assert seen.values(header) == [value]
    assert sc.GATEWAY_TOKEN not in seen.header_blob()
