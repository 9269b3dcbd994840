"""The same module as a cluster (upstream) HTTP filter.

The listener chain has only set_metadata (github token) and the router; each backend cluster
runs the filter in ``HttpProtocolOptions.http_filters`` before ``upstream_codec``. Route metadata
is not visible there, so backends are named by cluster metadata or the cluster name.
"""

from __future__ import annotations

import harness as h
import scenarios as sc

GATEWAY = [("authorization", sc.GATEWAY_TOKEN)]


def test_cluster_filter_injects_token_for_backend_named_by_cluster_metadata(upstream, backend, unique):
    path = unique("/up/github/")
    resp = h.request(upstream.port("up"), path, GATEWAY)

    seen = sc.only_request(backend, path, resp)
    assert seen.values("authorization") == [f"Bearer {sc.UPSTREAM_GITHUB_TOKEN}"]
    sc.assert_no_secrets(seen.header_blob(), ["gw-alice-token"], "backend headers")


def test_cluster_filter_missing_token_gets_401_and_backend_is_not_called(upstream, backend, unique):
    path = unique("/up/slack/")  # cluster "slack-mcp" -> upstream_inject slack; no slack token
    resp = h.request(upstream.port("up"), path, GATEWAY)

    sc.assert_missing_token_reply(resp, "slack", secrets=[sc.UPSTREAM_GITHUB_TOKEN])
    sc.assert_backend_not_called(backend, path)


def test_cluster_filter_header_injection_for_backend_named_by_cluster_name(upstream, backend, unique):
    path = unique("/up/internal/")  # cluster "internal" -> header_injection X-API-Key
    resp = h.request(upstream.port("up"), path, GATEWAY)

    seen = sc.only_request(backend, path, resp)
    assert seen.values("x-api-key") == [sc.INTERNAL_KEY]
    assert seen.values("authorization") == []


def test_cluster_filter_unlisted_cluster_without_default_is_unauthenticated(upstream, backend, unique):
    path = unique("/up/plain/")
    resp = h.request(upstream.port("up"), path, GATEWAY)

    seen = sc.only_request(backend, path, resp)
    assert seen.values("authorization") == []
    sc.assert_no_secrets(seen.header_blob(), ["gw-alice-token", sc.UPSTREAM_GITHUB_TOKEN], "backend headers")
