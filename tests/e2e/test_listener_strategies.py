"""Each strategy with the filter in the listener chain, tokens from set_metadata (metadataKey mode).

Backend names come from route metadata here; test_backend_selection covers the other sources.
"""

from __future__ import annotations

import pytest

import harness as h
import scenarios as sc

GATEWAY = [("authorization", sc.GATEWAY_TOKEN)]


# -- upstream_inject, token present ----------------------------------------------------------


def test_upstream_inject_replaces_gateway_token_with_provider_token(gateway, backend, unique):
    path = unique("/github/")
    resp = h.request(gateway.port("tokens"), path, GATEWAY)

    seen = sc.only_request(backend, path, resp)
    assert seen.values("authorization") == [f"Bearer {sc.GITHUB_TOKEN}"]
    # the echo answer (what the backend saw) says the same as the recording
    assert [v for k, v in resp.echoed_headers() if k == "authorization"] == [f"Bearer {sc.GITHUB_TOKEN}"]
    sc.assert_no_secrets(seen.header_blob(), ["gw-alice-token", sc.ATLASSIAN_TOKEN], "backend headers")


def test_upstream_inject_sends_exactly_one_authorization_when_client_sent_two(gateway, backend, unique):
    path = unique("/github/")
    resp = h.request(
        gateway.port("tokens"),
        path,
        [("authorization", sc.GATEWAY_TOKEN), ("authorization", "Bearer gw-second-token")],
    )

    seen = sc.only_request(backend, path, resp)
    assert seen.values("authorization") == [f"Bearer {sc.GITHUB_TOKEN}"]
    sc.assert_no_secrets(seen.header_blob(), ["gw-alice-token", "gw-second-token"], "backend headers")


def test_upstream_inject_adds_token_when_client_sent_no_authorization(gateway, backend, unique):
    path = unique("/github/")
    resp = h.request(gateway.port("tokens"), path)

    seen = sc.only_request(backend, path, resp)
    assert seen.values("authorization") == [f"Bearer {sc.GITHUB_TOKEN}"]


def test_upstream_inject_uses_the_backends_own_provider(gateway, backend, unique):
    path = unique("/atlassian/")
    resp = h.request(gateway.port("tokens"), path, GATEWAY)

    seen = sc.only_request(backend, path, resp)
    assert seen.values("authorization") == [f"Bearer {sc.ATLASSIAN_TOKEN}"]
    sc.assert_no_secrets(seen.header_blob(), ["gw-alice-token", sc.GITHUB_TOKEN], "backend headers")


def test_upstream_inject_keeps_method_and_body(gateway, backend, unique):
    path = unique("/github/")
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    resp = h.request(
        gateway.port("tokens"),
        path,
        [*GATEWAY, ("content-type", "application/json")],
        method="POST",
        body=body,
    )

    seen = sc.only_request(backend, path, resp)
    assert seen.method == "POST"
    assert seen.values("authorization") == [f"Bearer {sc.GITHUB_TOKEN}"]
    assert seen.values("content-length") == [str(len(body))]


# -- upstream_inject, token missing -----------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_missing_provider_token_gets_401_invalid_token_and_backend_is_not_called(
    gateway, backend, unique, method
):
    path = unique("/slack/")  # slack is a configured upstream, absent from the metadata
    resp = h.request(
        gateway.port("tokens"), path, GATEWAY, method=method, body=b"{}" if method == "POST" else None
    )

    sc.assert_missing_token_reply(resp, "slack")
    sc.assert_backend_not_called(backend, path)


def test_empty_provider_token_gets_401_invalid_token_and_backend_is_not_called(gateway, backend, unique):
    path = unique("/gitlab/")  # metadata has "gitlab": ""
    resp = h.request(gateway.port("tokens"), path, GATEWAY)

    sc.assert_missing_token_reply(resp, "gitlab")
    sc.assert_backend_not_called(backend, path)


def test_no_metadata_at_all_gets_401_invalid_token_and_backend_is_not_called(gateway, backend, unique):
    path = unique("/bare/github/")  # the bare listener has no auth step: no dynamic metadata
    resp = h.request(gateway.port("bare"), path, GATEWAY)

    sc.assert_missing_token_reply(resp, "github")
    sc.assert_backend_not_called(backend, path)


# -- header_injection ----------------------------------------------------------------------------


def test_header_injection_sends_env_value_and_strips_client_authorization(gateway, backend, unique):
    path = unique("/internal/")
    resp = h.request(gateway.port("tokens"), path, GATEWAY)

    seen = sc.only_request(backend, path, resp)
    assert seen.values("x-api-key") == [sc.INTERNAL_KEY]
    assert seen.values("authorization") == []
    sc.assert_no_secrets(seen.header_blob(), ["gw-alice-token", *sc.ALL_UPSTREAM_TOKENS], "backend headers")


def test_header_injection_replaces_a_client_supplied_header_of_the_same_name(gateway, backend, unique):
    path = unique("/internal/")
    resp = h.request(gateway.port("tokens"), path, [*GATEWAY, ("x-api-key", "client-forged-key")])

    seen = sc.only_request(backend, path, resp)
    assert seen.values("x-api-key") == [sc.INTERNAL_KEY]


def test_header_injection_into_authorization_replaces_client_token(gateway, backend, unique):
    path = unique("/basic/")
    resp = h.request(gateway.port("tokens"), path, GATEWAY)

    seen = sc.only_request(backend, path, resp)
    assert seen.values("authorization") == [sc.BASIC_AUTH]
    sc.assert_no_secrets(seen.header_blob(), ["gw-alice-token", *sc.ALL_UPSTREAM_TOKENS], "backend headers")


# -- unauthenticated -------------------------------------------------------------------------------


def test_unauthenticated_strips_client_authorization(gateway, backend, unique):
    path = unique("/public/")
    resp = h.request(gateway.port("tokens"), path, GATEWAY)

    seen = sc.only_request(backend, path, resp)
    assert seen.values("authorization") == []
    assert seen.values(sc.DEFAULT_HEADER[0]) == []
    sc.assert_no_secrets(seen.header_blob(), ["gw-alice-token", *sc.ALL_UPSTREAM_TOKENS], "backend headers")


def test_unauthenticated_strips_every_client_authorization_header(gateway, backend, unique):
    path = unique("/public/")
    resp = h.request(
        gateway.port("tokens"),
        path,
        [("authorization", sc.GATEWAY_TOKEN), ("authorization", "Bearer gw-second-token")],
    )

    seen = sc.only_request(backend, path, resp)
    assert seen.values("authorization") == []


# -- where tokens are read from --------------------------------------------------------------------


def test_token_location_defaults_to_ext_authz_namespace_and_upstream_tokens_key(gateway, backend, unique):
    path = unique("/defaults/github/")  # config has no authServer.tokens
    resp = h.request(gateway.port("defaults"), path, GATEWAY)

    seen = sc.only_request(backend, path, resp)
    assert seen.values("authorization") == [f"Bearer {sc.DEFAULTS_GITHUB_TOKEN}"]


def test_tokens_are_read_from_the_configured_namespace_and_key_only(gateway, backend, unique):
    path = unique("/custom-ns/github/")
    resp = h.request(gateway.port("custom-ns"), path, GATEWAY)

    seen = sc.only_request(backend, path, resp)
    assert seen.values("authorization") == [f"Bearer {sc.CUSTOM_NS_GITHUB_TOKEN}"]
