"""The Envoy of the security matrix (``security`` session fixture), as config builders, and its values.

Listeners:

* ``meta`` / ``meta-prefix``: set_metadata writes one entry per provider with every kind of odd
  value (control characters, over ``maxTokenBytes``, numbers, booleans, null, Structs, lists) in
  the Struct layout (``metadataKey``) and in the ``keyPrefix`` layout. Route ``/m/<provider>/``
  injects that provider's entry; ``/te/<provider>/`` exchanges it as a token_exchange subject
  (``subjectProviderName``) at the scripted STS.
* ``meta-up``: the same Struct, the filter as a cluster (upstream) filter on ``up-<provider>``.
* ``big`` / ``big-prefix``: a Struct (or namespace) of 5,000 entries besides the ones used.
* ``choice`` / ``choice-az``: three virtual hosts routing to three clusters, each with its own
  recording backend (``github-mcp``, ``internal``, ``public``), tokens from set_metadata or from
  the HTTP ext_authz service (``keyPrefix``); what the client sends must not change which
  credential a backend receives.
* ``reroute``: an operator mistake pinned on purpose: a route that matches on ``x-api-key``, the
  header the filter injects for ``internal``. A wasm filter that changes request headers makes
  Envoy pick the route again, so the request moves to that route's backend with the key.
"""

from __future__ import annotations

import struct
from pathlib import Path

import exchange_scenarios as xs
import harness as h
import scenarios as sc

MAX_TOKEN_BYTES = 64
NAMESPACE = "envoy.filters.http.ext_authz"
PREFIX = "x-upstream-token-"

# A Struct number whose 8 little-endian f64 bytes are the visible ASCII "gho_AAAA": the nested
# metadata path returns exactly those bytes, indistinguishable from an 8-byte string by content.
PRINTABLE_NUMBER = struct.unpack("<d", b"gho_AAAA")[0]

# provider -> metadata value the filter must refuse (401 as for a missing token, nothing injected)
REFUSED: dict[str, object] = {
    "crlf": "gho_crlf\r\nx-injected: 1",
    "lf": "gho_lf\nx-injected: 1",
    "cr": "gho_cr\rx-injected: 1",
    "nul": "gho_nul\u0000x",
    "ctl": "gho_ctl\u0001x",
    "esc": "gho_esc\u001b[31m",
    "del": "gho_del\u007fx",
    "tab": "gho_tab\tx",
    "space": "gho_a space",
    "lead-space": " gho_lead",
    "trail-space": "gho_trail ",
    "non-ascii": "gho_\u00fcn\u00efcode",
    "empty": "",
    "over-max": "o" * (MAX_TOKEN_BYTES + 1),
    "way-over-max": "w" * 20_000,  # over the default maxTokenBytes too
    "number": 42,
    "float": 1.5,
    "negative": -7,
    "huge-number": 1e300,
    "printable-number": PRINTABLE_NUMBER,
    "bool-true": True,
    "bool-false": False,
    "null": None,
    "struct": {"token": "gho_nested_token"},
    "empty-struct": {},
    "list": ["gho_listed_token"],
    "empty-list": [],
}

# provider -> metadata value the filter must inject as is
ACCEPTED: dict[str, str] = {
    "valid": "gho_valid_security_matrix_token",
    "at-max": "m" * MAX_TOKEN_BYTES,
    "eight": "gho_8chr",  # an 8-byte string: must not be mistaken for a number
}

ODD_VALUES = {**REFUSED, **ACCEPTED}
PROVIDERS = sorted(ODD_VALUES)
# token_exchange subjects taken from these providers (subjectProviderName)
EXCHANGED = ["valid", "eight", "printable-number", "crlf", "struct", "over-max"]
# the cluster (upstream) filter placement, on a subset
UPSTREAM_SUBSET = ["valid", "eight", "printable-number", "crlf", "number", "list"]

# Every string in the odd values, for "never reaches X" checks.
ODD_STRINGS = [v for v in ODD_VALUES.values() if isinstance(v, str) and v.strip()]

# --------------------------------------------------------------------------------------------
# big: 5,000 entries besides the ones the routes use

BIG_ENTRIES = 5000
BIG_USED = {"github": "gho_big_github_token", "p0": "tok-big-p0", "p2500": "tok-big-p2500",
            "p4999": "tok-big-p4999"}
BIG_MISSING = "slack"


def big_values() -> dict[str, str]:
    values = {f"p{i}": f"tok-big-p{i}" for i in range(BIG_ENTRIES)}
    values.update(BIG_USED)
    return values


# --------------------------------------------------------------------------------------------
# choice: which backend, which credential

CHOICE_GITHUB_TOKEN = "gho_choice_alice_github"
CHOICE_BACKENDS = ("github-mcp", "internal", "public")
CHOICE_TARGET_HEADER = "x-target-cluster"  # the /by-header/ route takes its cluster from it
VHOST_MCP = "mcp.example"
VHOST_INTERNAL = "internal.example"

# --------------------------------------------------------------------------------------------
# Filter configs


def meta_filter_config(tokens: dict) -> dict:
    backends = {f"{p}-mcp": sc.inject(p) for p in PROVIDERS}
    backends.update(
        {f"te-{p}": xs.token_exchange(subjectProviderName=p, subjectTokenType="jwt") for p in EXCHANGED}
    )
    return {
        "authServer": {"upstreams": PROVIDERS, "tokens": {**tokens, "maxTokenBytes": MAX_TOKEN_BYTES}},
        "outgoingAuth": {"source": "inline", "backends": backends},
    }


META_CONFIG = meta_filter_config(sc.STRUCT_TOKENS)
META_PREFIX_CONFIG = meta_filter_config(sc.PREFIX_TOKENS)


def big_filter_config(tokens: dict) -> dict:
    used = [*BIG_USED, BIG_MISSING]
    return {
        "authServer": {"upstreams": used, "tokens": tokens},
        "outgoingAuth": {"source": "inline", "backends": {f"{p}-mcp": sc.inject(p) for p in used}},
    }


CHOICE_CONFIG = {
    "authServer": {"upstreams": ["github"], "tokens": sc.STRUCT_TOKENS},
    "outgoingAuth": {
        "source": "inline",
        "backends": {
            "github-mcp": sc.inject("github"),
            "internal": sc.header_env("X-API-Key", "INTERNAL_KEY"),
            "public": sc.UNAUTHENTICATED,
        },
    },
}
CHOICE_AZ_CONFIG = dict(
    CHOICE_CONFIG, authServer={"upstreams": ["github", "atlassian"], "tokens": sc.PREFIX_TOKENS}
)

ENV = {**sc.ENV, **xs.ENV}
HOST_ENV_KEYS = ["INTERNAL_KEY", xs.SECRET_ENV]

# --------------------------------------------------------------------------------------------
# Envoy config


def _with_virtual_hosts(listener: dict, virtual_hosts: list[dict]) -> dict:
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["virtual_hosts"] = virtual_hosts
    return listener


def choice_virtual_hosts() -> list[dict]:
    by_header = {
        "name": "by_header",
        "match": {"prefix": "/by-header/"},
        "route": {"cluster_header": CHOICE_TARGET_HEADER, "timeout": "5s"},
    }
    return [
        {
            "name": "mcp",
            "domains": [VHOST_MCP],
            "routes": [
                h.route("/github/", "github-mcp", backend="github-mcp"),
                h.route("/internal/", "internal", backend="internal"),
                by_header,
                h.route("/", "public"),
            ],
        },
        {"name": "internal", "domains": [VHOST_INTERNAL], "routes": [h.route("/", "internal")]},
        {"name": "default", "domains": ["*"], "routes": [h.route("/", "public")]},
    ]


def security_config(
    wasm: Path,
    backend_port: int,
    sts_port: int,
    ext_authz_port: int,
    choice_ports: dict[str, int],
) -> dict:
    def wasm_filter(cfg: dict) -> dict:
        return h.auth_filter(cfg, wasm, host_env_keys=HOST_ENV_KEYS)

    struct_metadata = h.set_metadata_filter({"upstream_tokens": ODD_VALUES})
    prefix_metadata = h.set_metadata_filter({f"{PREFIX}{p}": v for p, v in ODD_VALUES.items()})
    meta_routes = [
        *[h.route(f"/m/{p}/", "backend", backend=f"{p}-mcp") for p in PROVIDERS],
        *[h.route(f"/te/{p}/", "backend", backend=f"te-{p}") for p in EXCHANGED],
    ]
    big_routes = [h.route(f"/big/{p}/", "backend", backend=f"{p}-mcp") for p in [*BIG_USED, BIG_MISSING]]
    listeners = [
        h.http_listener("meta", meta_routes, [struct_metadata, wasm_filter(META_CONFIG)]),
        h.http_listener("meta-prefix", meta_routes, [prefix_metadata, wasm_filter(META_PREFIX_CONFIG)]),
        h.http_listener("meta-up", [h.route(f"/m/{p}/", f"up-{p}") for p in UPSTREAM_SUBSET], [struct_metadata]),
        h.http_listener(
            "big",
            big_routes,
            [
                h.set_metadata_filter({"upstream_tokens": big_values()}),
                wasm_filter(big_filter_config(sc.STRUCT_TOKENS)),
            ],
        ),
        h.http_listener(
            "big-prefix",
            big_routes,
            [
                h.set_metadata_filter({f"{PREFIX}{p}": v for p, v in big_values().items()}),
                wasm_filter(big_filter_config(sc.PREFIX_TOKENS)),
            ],
        ),
        _with_virtual_hosts(
            h.http_listener(
                "choice",
                [],
                [
                    h.set_metadata_filter({"upstream_tokens": {"github": CHOICE_GITHUB_TOKEN}}),
                    wasm_filter(CHOICE_CONFIG),
                ],
            ),
            choice_virtual_hosts(),
        ),
        _with_virtual_hosts(
            h.http_listener("reroute", [], [wasm_filter(CHOICE_CONFIG)]),
            [
                {
                    "name": "reroute",
                    "domains": ["*"],
                    "routes": [
                        {
                            "name": "has_api_key",
                            "match": {"prefix": "/reroute/", "headers": [{"name": "x-api-key", "present_match": True}]},
                            "route": {"cluster": "public", "timeout": "5s"},
                        },
                        h.route("/reroute/", "internal", backend="internal"),
                    ],
                }
            ],
        ),
        _with_virtual_hosts(
            h.http_listener(
                "choice-az",
                [],
                [h.ext_authz_http_filter("ext_authz", ext_authz_port), wasm_filter(CHOICE_AZ_CONFIG)],
            ),
            choice_virtual_hosts(),
        ),
    ]
    up_filter = [wasm_filter(META_CONFIG)]
    clusters = [
        h.cluster("backend", backend_port),
        h.cluster("sts", sts_port),
        h.cluster("ext_authz", ext_authz_port),
        *[h.cluster(f"up-{p}", backend_port, backend=f"{p}-mcp", upstream_filters=up_filter) for p in UPSTREAM_SUBSET],
        *[h.cluster(name, port) for name, port in choice_ports.items()],
    ]
    return h.bootstrap(listeners, clusters)
