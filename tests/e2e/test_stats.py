"""The filter's counters in admin ``/stats`` (``wasmcustom.outgoing_auth.*``) move by exactly one
per request, on the counter of what happened, and no other counter moves."""

from __future__ import annotations

import pytest

import harness as h
import scenarios as sc

GATEWAY = [("authorization", sc.GATEWAY_TOKEN)]

INJECTED = "upstream_inject.injected"
MISSING = "upstream_inject.token_missing"
HEADER = "header_injection.injected"
PASSED = "unauthenticated.passed"


def expected(*moved: str) -> dict[str, int]:
    return {name: (1 if name in moved else 0) for name in sc.COUNTERS}


def test_all_counters_are_published_in_admin_stats(gateway):
    stats = gateway.stats()
    missing = [n for n in sc.COUNTERS if gateway.stats_prefix + n not in stats]
    assert not missing, f"counters not in /stats: {missing}; have {sorted(stats)}"


@pytest.mark.parametrize(
    "listener, prefix, token, moved",
    [
        ("tokens", "/github/", sc.GATEWAY_TOKEN, [INJECTED]),
        ("tokens", "/slack/", sc.GATEWAY_TOKEN, [MISSING]),
        ("tokens", "/gitlab/", sc.GATEWAY_TOKEN, [MISSING]),
        ("bare", "/bare/github/", sc.GATEWAY_TOKEN, [MISSING]),
        ("tokens", "/internal/", sc.GATEWAY_TOKEN, [HEADER]),
        ("tokens", "/basic/", sc.GATEWAY_TOKEN, [HEADER]),
        ("tokens", "/unknown-backend/", sc.GATEWAY_TOKEN, [HEADER]),  # default = header_injection
        ("tokens", "/public/", sc.GATEWAY_TOKEN, [PASSED]),
        ("bare", "/bare/unknown/", sc.GATEWAY_TOKEN, [PASSED]),  # no default
        ("extauthz", "/az/github/", "Bearer gw-alice-token", [INJECTED]),
        ("extauthz", "/az/github/", "Bearer gw-carol-token", [MISSING]),
        ("extauthz", "/az/github/", "Bearer gw-dave-token", [MISSING]),
        ("extauthz", "/az/github/", "Bearer gw-mallory-token", []),  # ext_authz denies first
    ],
    ids=[
        "inject",
        "missing-provider",
        "empty-token",
        "no-metadata",
        "header-env",
        "header-authorization",
        "default-header",
        "unauthenticated",
        "no-default-unauthenticated",
        "extauthz-inject",
        "extauthz-missing",
        "extauthz-empty",
        "extauthz-denied",
    ],
)
def test_listener_filter_counts_each_request_once_on_the_right_counter(
    gateway, unique, listener, prefix, token, moved
):
    path = unique(prefix)
    with h.CounterDelta(gateway, sc.COUNTERS) as d:
        h.request(gateway.port(listener), path, [("authorization", token)])
    assert d.delta() == expected(*moved)


@pytest.mark.parametrize(
    "prefix, moved",
    [
        ("/up/github/", [INJECTED]),
        ("/up/slack/", [MISSING]),
        ("/up/internal/", [HEADER]),
        ("/up/plain/", [PASSED]),
    ],
    ids=["inject", "missing", "header-env", "unauthenticated"],
)
def test_cluster_filter_counts_each_request_once_on_the_right_counter(upstream, unique, prefix, moved):
    path = unique(prefix)
    with h.CounterDelta(upstream, sc.COUNTERS) as d:
        h.request(upstream.port("up"), path, GATEWAY)
    assert d.delta() == expected(*moved)


def test_counters_accumulate_over_several_requests(gateway, unique):
    with h.CounterDelta(gateway, sc.COUNTERS) as d:
        for _ in range(3):
            h.request(gateway.port("tokens"), unique("/github/"), GATEWAY)
        for _ in range(2):
            h.request(gateway.port("tokens"), unique("/slack/"), GATEWAY)
    assert d.delta() == {INJECTED: 3, MISSING: 2, HEADER: 0, PASSED: 0}
