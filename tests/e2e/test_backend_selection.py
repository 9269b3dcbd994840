"""Which strategy a request gets: route metadata, then cluster metadata, then the cluster name;
``backends[name]``, else ``default``, else unauthenticated.

Every source maps to a different strategy, so each assertion tells them apart:

=========================  ==============  ==========================  =========================
path                       cluster         backend name (source)       strategy
=========================  ==============  ==========================  =========================
/sel/route-metadata/       meta-internal   github-mcp (route)          upstream_inject github
/sel/cluster-metadata/     meta-internal   internal (cluster)          header_injection X-API-Key
/sel/cluster-name/         atlassian-mcp   atlassian-mcp (name)        upstream_inject atlassian
/sel/unknown-cluster/      backend         backend (name, not listed)  default: X-Default-Key
/unknown-backend/          backend         no-such-backend (route)     default: X-Default-Key
/bare/unknown/ (bare)      backend         no-such-backend (route)     no default: unauthenticated
=========================  ==============  ==========================  =========================

The ``sources`` listener narrows ``backendNameSources`` to ``["clusterName"]``: route and cluster
metadata are then never consulted.
"""

from __future__ import annotations

import harness as h
import scenarios as sc

GATEWAY = [("authorization", sc.GATEWAY_TOKEN)]
CREDENTIAL_HEADERS = ("authorization", "x-api-key", sc.DEFAULT_HEADER[0])


def credentials(seen: h.RecordedRequest) -> dict[str, list[str]]:
    """The credential-bearing headers the backend received (absent ones omitted)."""
    return {name: seen.values(name) for name in CREDENTIAL_HEADERS if seen.values(name)}


def test_route_metadata_wins_over_cluster_metadata(gateway, backend, unique):
    path = unique("/sel/route-metadata/")
    resp = h.request(gateway.port("tokens"), path, GATEWAY)

    seen = sc.only_request(backend, path, resp)
    assert credentials(seen) == {"authorization": [f"Bearer {sc.GITHUB_TOKEN}"]}


def test_cluster_metadata_names_the_backend_when_the_route_has_none(gateway, backend, unique):
    path = unique("/sel/cluster-metadata/")
    resp = h.request(gateway.port("tokens"), path, GATEWAY)

    seen = sc.only_request(backend, path, resp)
    assert credentials(seen) == {"x-api-key": [sc.INTERNAL_KEY]}


def test_cluster_name_names_the_backend_when_there_is_no_metadata(gateway, backend, unique):
    path = unique("/sel/cluster-name/")
    resp = h.request(gateway.port("tokens"), path, GATEWAY)

    seen = sc.only_request(backend, path, resp)
    assert credentials(seen) == {"authorization": [f"Bearer {sc.ATLASSIAN_TOKEN}"]}


def test_unlisted_cluster_name_gets_the_default_strategy(gateway, backend, unique):
    path = unique("/sel/unknown-cluster/")
    resp = h.request(gateway.port("tokens"), path, GATEWAY)

    seen = sc.only_request(backend, path, resp)
    assert credentials(seen) == {sc.DEFAULT_HEADER[0]: [sc.DEFAULT_HEADER[1]]}


def test_unlisted_backend_in_route_metadata_gets_the_default_strategy(gateway, backend, unique):
    path = unique("/unknown-backend/")
    resp = h.request(gateway.port("tokens"), path, GATEWAY)

    seen = sc.only_request(backend, path, resp)
    assert credentials(seen) == {sc.DEFAULT_HEADER[0]: [sc.DEFAULT_HEADER[1]]}
    sc.assert_no_secrets(seen.header_blob(), ["gw-alice-token", *sc.ALL_UPSTREAM_TOKENS], "backend headers")


def test_unlisted_backend_without_default_is_unauthenticated(gateway, backend, unique):
    path = unique("/bare/unknown/")
    resp = h.request(gateway.port("bare"), path, GATEWAY)

    seen = sc.only_request(backend, path, resp)
    assert credentials(seen) == {}
    sc.assert_no_secrets(seen.header_blob(), ["gw-alice-token"], "backend headers")


def test_backend_name_sources_narrowed_to_the_cluster_name_ignore_route_metadata(
    gateway, backend, unique
):
    # Route metadata names github-mcp, but only the cluster name (atlassian-mcp) is consulted.
    path = unique("/sources/route-metadata/")
    resp = h.request(gateway.port("sources"), path, GATEWAY)

    seen = sc.only_request(backend, path, resp)
    assert credentials(seen) == {"authorization": [f"Bearer {sc.ATLASSIAN_TOKEN}"]}


def test_backend_name_sources_narrowed_to_the_cluster_name_ignore_cluster_metadata(
    gateway, backend, unique
):
    # Cluster metadata names internal; the cluster name meta-internal is not a backend: default.
    path = unique("/sources/cluster-metadata/")
    resp = h.request(gateway.port("sources"), path, GATEWAY)

    seen = sc.only_request(backend, path, resp)
    assert credentials(seen) == {sc.DEFAULT_HEADER[0]: [sc.DEFAULT_HEADER[1]]}
