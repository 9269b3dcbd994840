"""The Envoy setups the end-to-end tests run against, as config builders, and their fixed values.

Two long-lived Envoys (session fixtures in conftest.py) cover every runtime case; the
invalid-config and demo tests start their own short-lived ones.

* ``gateway``: the filter in the listener chain, five listeners:
  - ``tokens``: set_metadata supplies upstream tokens (metadataKey mode); routes and clusters
    exercise every strategy and every way a backend name is chosen;
  - ``bare``: no auth step at all (no metadata) and no ``default`` strategy;
  - ``extauthz``: a real HTTP ext_authz service supplies tokens (keyPrefix mode);
  - ``defaults``, ``custom-ns``: where the filter looks for tokens (defaults, custom namespace).
* ``upstream``: the filter as a cluster (upstream) HTTP filter on the backend clusters, tokens
  from set_metadata in the listener chain.
"""

from __future__ import annotations

from pathlib import Path

import harness as h

# --------------------------------------------------------------------------------------------
# Values the tests assert on

GATEWAY_TOKEN = "Bearer gw-alice-token"  # the client's own token: must never reach a backend
GITHUB_TOKEN = "gho_test_github_token"
ATLASSIAN_TOKEN = "atl_test_atlassian_token"
INTERNAL_KEY = "internal-secret-value"
DEFAULT_HEADER = ("x-default-key", "default-inline-value")
BASIC_AUTH = "Basic ZGVtbzpkZW1vLXBhc3N3b3Jk"  # inline header_injection into Authorization itself

# The non-empty upstream tokens of the tokens listener: none may appear where it does not belong.
ALL_UPSTREAM_TOKENS = (GITHUB_TOKEN, ATLASSIAN_TOKEN)

# ext_authz users: gateway token -> upstream tokens the authorization server hands out.
EXTAUTHZ_USERS: dict[str, dict[str, str]] = {
    "gw-alice-token": {"github": "gho_alice"},
    "gw-bob-token": {"github": "gho_bob"},
    # authenticated, but has never linked GitHub: only an Atlassian token
    "gw-carol-token": {"atlassian": "atl_carol"},
    # authenticated, but the authorization server answers an empty GitHub token
    "gw-dave-token": {"github": "", "atlassian": "atl_dave"},
}

UPSTREAM_GITHUB_TOKEN = "gho_upstream_filter_github_token"

ENV = {"INTERNAL_KEY": INTERNAL_KEY}

COUNTERS = (
    "upstream_inject.injected",
    "upstream_inject.token_missing",
    "header_injection.injected",
    "unauthenticated.passed",
)


def missing_token_body(provider: str) -> dict:
    return {
        "error": "invalid_token",
        "error_description": f"upstream token for provider {provider} not found",
    }


def missing_token_www_authenticate(provider: str) -> str:
    return (
        'Bearer error="invalid_token", '
        f'error_description="upstream token for provider {provider} not found"'
    )


# --------------------------------------------------------------------------------------------
# Filter configs


def inject(provider: str) -> dict:
    return {"type": "upstream_inject", "upstreamInject": {"providerName": provider}}


def header_env(name: str, env: str) -> dict:
    return {"type": "header_injection", "headerInjection": {"headerName": name, "headerValueEnv": env}}


def header_inline(name: str, value: str) -> dict:
    return {"type": "header_injection", "headerInjection": {"headerName": name, "headerValue": value}}


UNAUTHENTICATED = {"type": "unauthenticated"}

STRUCT_TOKENS = {"metadataNamespace": "envoy.filters.http.ext_authz", "metadataKey": "upstream_tokens"}
PREFIX_TOKENS = {"metadataNamespace": "envoy.filters.http.ext_authz", "keyPrefix": "x-upstream-token-"}

# tokens listener: every strategy, an observable default.
TOKENS_FILTER_CONFIG = {
    "authServer": {
        "upstreams": ["github", "atlassian", "slack", "gitlab"],
        "tokens": STRUCT_TOKENS,
    },
    "outgoingAuth": {
        "source": "inline",
        "default": header_inline("X-Default-Key", DEFAULT_HEADER[1]),
        "backends": {
            "github-mcp": inject("github"),
            "atlassian-mcp": inject("atlassian"),
            "slack-mcp": inject("slack"),  # slack: no token in the metadata at all
            "gitlab-mcp": inject("gitlab"),  # gitlab: present, but an empty string
            "internal": header_env("X-API-Key", "INTERNAL_KEY"),
            "basic-auth": header_inline("Authorization", BASIC_AUTH),
            "public": UNAUTHENTICATED,
        },
    },
}
TOKENS_METADATA = {
    "upstream_tokens": {"github": GITHUB_TOKEN, "atlassian": ATLASSIAN_TOKEN, "gitlab": ""}
}

# bare listener: no metadata is ever written, and there is no default strategy.
BARE_FILTER_CONFIG = {
    "authServer": {"upstreams": ["github"], "tokens": STRUCT_TOKENS},
    "outgoingAuth": {
        "source": "inline",
        "backends": {"github-mcp": inject("github")},
    },
}

# extauthz listener: HTTP ext_authz writes one metadata entry per provider (keyPrefix mode).
EXTAUTHZ_FILTER_CONFIG = {
    "authServer": {"upstreams": ["github", "atlassian"], "tokens": PREFIX_TOKENS},
    "outgoingAuth": {"source": "inline", "backends": {"github-mcp": inject("github")}},
}

# defaults listener: authServer.tokens omitted -> namespace envoy.filters.http.ext_authz, key
# upstream_tokens (what set_metadata writes below).
DEFAULTS_FILTER_CONFIG = {
    "authServer": {"upstreams": ["github"]},
    "outgoingAuth": {"source": "inline", "backends": {"github-mcp": inject("github")}},
}
DEFAULTS_GITHUB_TOKEN = "gho_defaults_github_token"

# custom-ns listener: tokens in a namespace and key of the operator's choosing.
CUSTOM_NS = "com.example.gateway_auth"
CUSTOM_NS_FILTER_CONFIG = {
    "authServer": {
        "upstreams": ["github"],
        "tokens": {"metadataNamespace": CUSTOM_NS, "metadataKey": "user_tokens"},
    },
    "outgoingAuth": {"source": "inline", "backends": {"github-mcp": inject("github")}},
}
CUSTOM_NS_GITHUB_TOKEN = "gho_custom_ns_github_token"

# sources listener: backendNameSources narrowed to the cluster name, so route and cluster
# metadata are never consulted.
SOURCES_FILTER_CONFIG = {
    **TOKENS_FILTER_CONFIG,
    "backendNameSources": ["clusterName"],
}

# upstream (cluster filter) placement; no default, so unknown clusters are unauthenticated.
UPSTREAM_FILTER_CONFIG = {
    "authServer": {"upstreams": ["github", "slack"], "tokens": STRUCT_TOKENS},
    "outgoingAuth": {
        "source": "inline",
        "backends": {
            "github-mcp": inject("github"),
            "slack-mcp": inject("slack"),
            "internal": header_env("X-API-Key", "INTERNAL_KEY"),
        },
    },
}
UPSTREAM_METADATA = {"upstream_tokens": {"github": UPSTREAM_GITHUB_TOKEN}}


# --------------------------------------------------------------------------------------------
# Envoy configs


def gateway_config(wasm: Path, backend_port: int, ext_authz_port: int) -> dict:
    def wasm_filter(cfg: dict) -> dict:
        return h.auth_filter(cfg, wasm, host_env_keys=["INTERNAL_KEY"])

    tokens_routes = [
        # backend named by route metadata, one route per strategy / token situation
        h.route("/github/", "backend", backend="github-mcp"),
        h.route("/atlassian/", "backend", backend="atlassian-mcp"),
        h.route("/slack/", "backend", backend="slack-mcp"),
        h.route("/gitlab/", "backend", backend="gitlab-mcp"),
        h.route("/internal/", "backend", backend="internal"),
        h.route("/basic/", "backend", backend="basic-auth"),
        h.route("/public/", "backend", backend="public"),
        h.route("/unknown-backend/", "backend", backend="no-such-backend"),
        # selection order: route metadata > cluster metadata > cluster name
        h.route("/sel/route-metadata/", "meta-internal", backend="github-mcp"),
        h.route("/sel/cluster-metadata/", "meta-internal"),
        h.route("/sel/cluster-name/", "atlassian-mcp"),
        h.route("/sel/unknown-cluster/", "backend"),
    ]
    listeners = [
        h.http_listener(
            "tokens",
            tokens_routes,
            [h.set_metadata_filter(TOKENS_METADATA), wasm_filter(TOKENS_FILTER_CONFIG)],
        ),
        h.http_listener(
            "bare",
            [
                h.route("/bare/github/", "backend", backend="github-mcp"),
                h.route("/bare/unknown/", "backend", backend="no-such-backend"),
            ],
            [wasm_filter(BARE_FILTER_CONFIG)],
        ),
        h.http_listener(
            "extauthz",
            [h.route("/az/github/", "backend", backend="github-mcp")],
            # Verified with Envoy 1.40: with allowed_upstream_headers unset, the HTTP ext_authz
            # filter does not copy the x-upstream-token-* answer headers onto the upstream
            # request; test_ext_authz pins that they never reach the backend.
            [h.ext_authz_http_filter("ext_authz", ext_authz_port), wasm_filter(EXTAUTHZ_FILTER_CONFIG)],
        ),
        h.http_listener(
            "defaults",
            [h.route("/defaults/github/", "backend", backend="github-mcp")],
            [
                h.set_metadata_filter({"upstream_tokens": {"github": DEFAULTS_GITHUB_TOKEN}}),
                wasm_filter(DEFAULTS_FILTER_CONFIG),
            ],
        ),
        h.http_listener(
            "sources",
            [
                h.route("/sources/route-metadata/", "atlassian-mcp", backend="github-mcp"),
                h.route("/sources/cluster-metadata/", "meta-internal"),
            ],
            [h.set_metadata_filter(TOKENS_METADATA), wasm_filter(SOURCES_FILTER_CONFIG)],
        ),
        h.http_listener(
            "custom-ns",
            [h.route("/custom-ns/github/", "backend", backend="github-mcp")],
            [
                # the default namespace holds a decoy token the filter must not pick up
                h.set_metadata_filter({"upstream_tokens": {"github": DEFAULTS_GITHUB_TOKEN}}),
                h.set_metadata_filter({"user_tokens": {"github": CUSTOM_NS_GITHUB_TOKEN}}, CUSTOM_NS),
                wasm_filter(CUSTOM_NS_FILTER_CONFIG),
            ],
        ),
    ]
    clusters = [
        h.cluster("backend", backend_port),
        h.cluster("meta-internal", backend_port, backend="internal"),
        h.cluster("atlassian-mcp", backend_port),
        h.cluster("ext_authz", ext_authz_port),
    ]
    return h.bootstrap(listeners, clusters)


def upstream_config(wasm: Path, backend_port: int) -> dict:
    up = [h.auth_filter(UPSTREAM_FILTER_CONFIG, wasm, host_env_keys=["INTERNAL_KEY"])]
    listener = h.http_listener(
        "up",
        [
            h.route("/up/github/", "up-github"),
            h.route("/up/slack/", "slack-mcp"),
            h.route("/up/internal/", "internal"),
            h.route("/up/plain/", "up-plain"),
        ],
        [h.set_metadata_filter(UPSTREAM_METADATA)],
    )
    clusters = [
        h.cluster("up-github", backend_port, backend="github-mcp", upstream_filters=up),  # metadata
        h.cluster("slack-mcp", backend_port, upstream_filters=up),  # by cluster name
        h.cluster("internal", backend_port, upstream_filters=up),  # by cluster name
        h.cluster("up-plain", backend_port, upstream_filters=up),  # unknown: unauthenticated
    ]
    return h.bootstrap([listener], clusters)


# --------------------------------------------------------------------------------------------
# Assertions shared by the test modules


def only_request(backend: h.EchoBackend, path: str, resp: h.Response) -> h.RecordedRequest:
    """The single request the backend received for ``path`` (the client got ``resp``)."""
    got = backend.requests_for(path)
    assert resp.status == 200, f"expected the backend's 200, got {resp.describe()}"
    assert len(got) == 1, f"expected exactly one backend request for {path}, got {got}"
    return got[0]


def assert_backend_not_called(backend: h.EchoBackend, path: str) -> None:
    got = backend.requests_for(path)
    assert got == [], f"the backend must never be called for {path}, but it received {got}"


def assert_no_secrets(text: str, secrets: tuple[str, ...] | list[str], where: str) -> None:
    leaked = [s for s in secrets if s and s in text]
    assert not leaked, f"{where} contains secret value(s) {leaked}:\n{text}"


def assert_missing_token_reply(resp: h.Response, provider: str, secrets=ALL_UPSTREAM_TOKENS) -> None:
    """The filter's 401 for a missing upstream token, exactly as the contract states it."""
    assert resp.status == 401, resp.describe()
    assert resp.header("www-authenticate") == missing_token_www_authenticate(provider), resp.describe()
    assert resp.header("content-type") == "application/json", resp.describe()
    assert resp.json() == missing_token_body(provider), resp.describe()
    blob = resp.body.decode(errors="replace") + "\n" + "\n".join(f"{k}: {v}" for k, v in resp.headers)
    assert_no_secrets(blob, [*secrets, GATEWAY_TOKEN.removeprefix("Bearer ")], "the 401 reply")
