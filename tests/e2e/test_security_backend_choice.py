"""Security matrix: the client cannot choose whose token, or which strategy, a backend gets.

The ``choice`` listeners route three virtual hosts to three clusters, each with its own recording
backend: ``github-mcp`` (upstream_inject), ``internal`` (header_injection of a secret from the
environment) and ``public`` (unauthenticated). Clients send path tricks (``..``, ``%2e%2e``,
encoded slashes, case, ``//``), ``Host``/``:authority`` spoofs (another virtual host, case, port,
trailing dot, an absolute request target), ``x-envoy-*`` and look-alike headers, their own
``x-upstream-token-*`` and ``x-api-key`` headers, and a route whose cluster comes from a request
header. Wherever Envoy sends each request, the invariant is the same: a backend receives exactly
its own credential and never another backend's, nor the client's gateway token. ``choice-az``
repeats this with tokens from the HTTP ext_authz service (keyPrefix mode), where a user with no
GitHub token must not get one by sending ``x-upstream-token-github``.
"""

from __future__ import annotations

import itertools
import os

import pytest

import harness as h
import scenarios as sc
import security_scenarios as ss

TRICK_HEADER = "x-trick-id"
MCP = ss.VHOST_MCP
GITHUB_TOKEN = ss.CHOICE_GITHUB_TOKEN
FORGED = "gho_forged_by_the_client"

# name -> (request target, Host, extra headers)
TRICKS: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "plain-github": ("/github/x", MCP, []),
    "plain-internal": ("/internal/x", MCP, []),
    "plain-public": ("/x", MCP, []),
    "dotdot": ("/github/../internal/x", MCP, []),
    "dotdot-reverse": ("/internal/../github/x", MCP, []),
    "pct-dotdot": ("/github/%2e%2e/internal/x", MCP, []),
    "pct-dotdot-upper": ("/github/%2E%2E/internal/x", MCP, []),
    "pct-encoded-slash": ("/github/..%2finternal/x", MCP, []),
    "pct-encoded-prefix": ("/%67ithub/x", MCP, []),
    "double-slash": ("//github/x", MCP, []),
    "dot-segment": ("/./internal/x", MCP, []),
    "semicolon": ("/github;/../internal/x", MCP, []),
    "backslash": ("/github\\..\\internal\\x", MCP, []),
    "upper-case": ("/GITHUB/x", MCP, []),
    "mixed-case": ("/Internal/x", MCP, []),
    "query": ("/github/x?backend=internal&cluster=internal", MCP, []),
    "host-other-vhost": ("/github/x", ss.VHOST_INTERNAL, []),
    "host-upper-case": ("/github/x", MCP.upper(), []),
    "host-with-port": ("/github/x", f"{MCP}:80", []),
    "host-trailing-dot": ("/github/x", f"{MCP}.", []),
    "host-unknown": ("/github/x", "evil.example", []),
    "absolute-target": (f"http://{ss.VHOST_INTERNAL}/github/x", MCP, []),
    "absolute-target-reverse": (f"http://{MCP}/internal/x", ss.VHOST_INTERNAL, []),
    "x-forwarded-host": ("/github/x", MCP, [("x-forwarded-host", ss.VHOST_INTERNAL)]),
    "x-envoy-original-path": ("/github/x", MCP, [("x-envoy-original-path", "/internal/x")]),
    "x-envoy-internal": ("/github/x", MCP, [("x-envoy-internal", "true")]),
    "x-envoy-assorted": (
        "/public/x",
        MCP,
        [
            ("x-envoy-upstream-alt-stat-name", "internal"),
            ("x-envoy-decorator-operation", "internal"),
            ("x-envoy-retry-on", "5xx"),
            ("x-envoy-max-retries", "3"),
            ("x-envoy-upstream-rq-timeout-ms", "2000"),
            ("x-envoy-original-url", f"http://{ss.VHOST_INTERNAL}/"),
        ],
    ),
    "backend-name-headers": (
        "/x",
        MCP,
        [
            ("x-outgoing-auth-backend", "internal"),
            ("outgoing-auth-backend", "github-mcp"),
            ("x-backend", "internal"),
            (ss.CHOICE_TARGET_HEADER, "internal"),  # only the /by-header/ route reads it
        ],
    ),
    "forged-upstream-token-headers": (
        "/public/x",
        MCP,
        [("x-upstream-token-github", FORGED), ("x-upstream-token-internal", FORGED)],
    ),
    "forged-api-key-to-github": ("/github/x", MCP, [("x-api-key", FORGED)]),
    "forged-api-key-to-internal": ("/internal/x", MCP, [("x-api-key", FORGED)]),
    "second-authorization": ("/github/x", MCP, [("authorization", f"Bearer {FORGED}")]),
    "cluster-header-internal": ("/by-header/x", MCP, [(ss.CHOICE_TARGET_HEADER, "internal")]),
    "cluster-header-github": ("/by-header/x", MCP, [(ss.CHOICE_TARGET_HEADER, "github-mcp")]),
    "cluster-header-unknown": ("/by-header/x", MCP, [(ss.CHOICE_TARGET_HEADER, "no-such-cluster")]),
}

# Where Envoy 1.40 (default HCM: no path normalization, exact-case prefixes) sends some of them:
# pinned so that the invariant below is not met by every request failing.
EXPECTED_BACKEND = {
    "plain-github": "github-mcp",
    "plain-internal": "internal",
    "plain-public": "public",
    "dotdot": "github-mcp",
    "dotdot-reverse": "internal",
    "pct-dotdot": "github-mcp",
    "upper-case": "public",
    "host-other-vhost": "internal",
    "host-upper-case": "github-mcp",
    "host-unknown": "public",
    "x-envoy-original-path": "github-mcp",
    "backend-name-headers": "public",
    "cluster-header-internal": "internal",
    "cluster-header-github": "github-mcp",
    "cluster-header-unknown": None,
}

_ids = itertools.count()


def send(port: int, trick: str, authorization: str) -> tuple[str, h.Response]:
    target, host, extra = TRICKS[trick]
    trick_id = f"{trick}-{next(_ids)}-{os.urandom(4).hex()}"
    headers = [("authorization", authorization), (TRICK_HEADER, trick_id), *extra]
    return trick_id, h.request(port, target, headers, host=host)


def receivers(backends: dict[str, h.EchoBackend], trick_id: str) -> dict[str, list[h.RecordedRequest]]:
    got = {
        name: [r for r in server.all_requests() if r.values(TRICK_HEADER) == [trick_id]]
        for name, server in backends.items()
    }
    return {name: reqs for name, reqs in got.items() if reqs}


def assert_own_credential_only(
    name: str, seen: h.RecordedRequest, github_token: str, secrets: list[str]
) -> None:
    """What ``name``'s backend may receive: its own credential, nothing of another's."""
    blob = seen.header_blob()
    if name == "github-mcp":
        assert seen.values("authorization") == [f"Bearer {github_token}"], blob
        assert sc.INTERNAL_KEY not in blob, blob
    elif name == "internal":
        assert seen.values("x-api-key") == [sc.INTERNAL_KEY], blob
        assert seen.values("authorization") == [], blob
        assert github_token not in blob, blob
    else:
        assert seen.values("authorization") == [], blob
        assert sc.INTERNAL_KEY not in blob and github_token not in blob, blob
    sc.assert_no_secrets(blob, secrets, f"the {name} backend's headers")


@pytest.mark.parametrize("trick", list(TRICKS))
def test_backend_gets_its_own_credential_whatever_the_client_sends(
    security, choice_backends, trick
):
    gateway_token = f"gw-choice-{os.urandom(6).hex()}"
    trick_id, resp = send(security.port("choice"), trick, f"Bearer {gateway_token}")

    got = receivers(choice_backends, trick_id)
    assert sum(len(reqs) for reqs in got.values()) <= 1, got
    if resp.status == 200:
        assert len(got) == 1, f"200 but no backend recorded {trick_id}: {resp.describe()}"
    for name, [seen] in got.items():
        assert_own_credential_only(name, seen, GITHUB_TOKEN, [gateway_token])
        assert resp.status == 200, resp.describe()
    if trick in EXPECTED_BACKEND:
        assert list(got) == ([EXPECTED_BACKEND[trick]] if EXPECTED_BACKEND[trick] else []), (
            f"{trick}: reached {list(got)}, {resp.describe()}"
        )
    sc.assert_no_secrets(
        resp.body.decode(errors="replace") if not got else "",
        [gateway_token, GITHUB_TOKEN, sc.INTERNAL_KEY],
        "a reply that did not come from a backend",
    )


# --------------------------------------------------------------------------------------------
# Tokens from HTTP ext_authz (keyPrefix mode)

AZ_TRICKS = [
    "plain-github",
    "dotdot-reverse",
    "pct-dotdot",
    "host-other-vhost",
    "absolute-target",
    "cluster-header-github",
    "forged-upstream-token-headers",
    "second-authorization",
]


@pytest.mark.parametrize("trick", AZ_TRICKS)
@pytest.mark.parametrize("user", ["alice", "bob"])
def test_ext_authz_users_get_only_their_own_token_whatever_they_send(
    security, choice_backends, user, trick
):
    own = sc.EXTAUTHZ_USERS[f"gw-{user}-token"]["github"]
    others = [t for u in sc.EXTAUTHZ_USERS.values() for t in u.values() if t and t != own]
    # forge the other user's token in every place a client could put it
    forged = [(f"x-upstream-token-{p}", t) for p in ("github", "atlassian") for t in others[:1]]
    trick_id, resp = send_az(security, trick, user, forged)

    got = receivers(choice_backends, trick_id)
    assert sum(len(reqs) for reqs in got.values()) <= 1, got
    for name, [seen] in got.items():
        assert_own_credential_only(name, seen, own, [f"gw-{user}-token"])
        # the forged headers pass through as the client's own headers, never as a credential
        assert [v for v in seen.values("authorization") if v != f"Bearer {own}"] == []


def send_az(security, trick: str, user: str, extra: list[tuple[str, str]]) -> tuple[str, h.Response]:
    target, host, trick_extra = TRICKS[trick]
    trick_id = f"az-{trick}-{next(_ids)}-{os.urandom(4).hex()}"
    headers = [("authorization", f"Bearer gw-{user}-token"), (TRICK_HEADER, trick_id), *trick_extra, *extra]
    return trick_id, h.request(security.port("choice-az"), target, headers, host=host)


@pytest.mark.parametrize("user", ["carol", "dave"])
def test_user_without_a_github_token_cannot_supply_one_in_x_upstream_token_headers(
    security, choice_backends, user
):
    """carol has no GitHub token, dave an empty one: a forged header must not fill the gap."""
    extra = [("x-upstream-token-github", FORGED), ("x-upstream-token-github", "gho_alice")]
    trick_id, resp = send_az(security, "plain-github", user, extra)

    sc.assert_missing_token_reply(resp, "github", secrets=[FORGED, "gho_alice", f"gw-{user}-token"])
    assert receivers(choice_backends, trick_id) == {}


def test_rejected_gateway_token_with_forged_upstream_tokens_is_denied_by_ext_authz(
    security, choice_backends
):
    extra = [("x-upstream-token-github", "gho_alice")]
    trick_id, resp = send_az(security, "plain-github", "mallory", extra)

    assert resp.status == 401, resp.describe()
    assert resp.json() == {"error": "gateway token rejected"}, resp.describe()
    assert receivers(choice_backends, trick_id) == {}


def test_route_matching_on_a_header_the_filter_sets_moves_the_request_after_injection(
    security, choice_backends
):
    """Pins Envoy's behaviour behind SECURITY.md's operator checklist: when a filter changes
    request headers, Envoy selects the route again. A route matching on ``x-api-key`` (the header
    header_injection sets for ``internal``) then takes the request, with the internal key, to the
    ``public`` backend. The filter cannot prevent this; the routes must not match on headers it
    sets. (A cluster filter runs after routing and is not affected.)

    The native build's header changes do not clear Envoy's route cache (the dynamic-module ABI
    leaves that to the module, and this one never asks): the request keeps the route chosen
    before the filter, and its key goes to ``internal`` only."""
    trick_id = f"reroute-{next(_ids)}-{os.urandom(4).hex()}"
    resp = h.request(security.port("reroute"), "/reroute/x", [(TRICK_HEADER, trick_id)])

    assert resp.status == 200, resp.describe()
    got = receivers(choice_backends, trick_id)
    backend = "internal" if security.build == "native" else "public"
    assert list(got) == [backend], got
    assert got[backend][0].values("x-api-key") == [sc.INTERNAL_KEY]
