"""Tokens from a real HTTP ext_authz service (keyPrefix mode).

Envoy's ext_authz filter sends the client's Authorization to the Python service; on 200 it turns
each ``x-upstream-token-<provider>`` answer header into dynamic metadata (namespace
``envoy.filters.http.ext_authz``, key = header name), which the filter reads with
``tokens.keyPrefix = "x-upstream-token-"``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

import harness as h
import scenarios as sc

ALL_EXTAUTHZ_TOKENS = [t for user in sc.EXTAUTHZ_USERS.values() for t in user.values() if t]


@pytest.mark.parametrize(
    "gateway_token, upstream_token",
    [("gw-alice-token", "gho_alice"), ("gw-bob-token", "gho_bob")],
    ids=["alice", "bob"],
)
def test_each_user_reaches_the_backend_with_their_own_upstream_token(
    gateway, backend, ext_authz_service, unique, gateway_token, upstream_token
):
    path = unique("/az/github/")
    resp = h.request(gateway.port("extauthz"), path, [("authorization", f"Bearer {gateway_token}")])

    # the authorization server saw the gateway token
    checks = ext_authz_service.requests_for(path)
    assert [c.values("authorization") for c in checks] == [[f"Bearer {gateway_token}"]]
    # the backend saw only this user's upstream token
    seen = sc.only_request(backend, path, resp)
    assert seen.values("authorization") == [f"Bearer {upstream_token}"]
    others = [t for t in ALL_EXTAUTHZ_TOKENS if t != upstream_token]
    sc.assert_no_secrets(seen.header_blob(), [gateway_token, *others], "backend headers")


def test_ext_authz_answer_headers_never_reach_the_backend(gateway, backend, unique):
    path = unique("/az/github/")
    resp = h.request(gateway.port("extauthz"), path, [("authorization", "Bearer gw-alice-token")])

    seen = sc.only_request(backend, path, resp)
    assert [k for k, _ in seen.headers if k.startswith("x-upstream-token-")] == []


def test_rejected_gateway_token_gets_ext_authz_401_and_backend_is_not_called(
    gateway, backend, ext_authz_service, unique
):
    path = unique("/az/github/")
    resp = h.request(gateway.port("extauthz"), path, [("authorization", "Bearer gw-mallory-token")])

    assert resp.status == 401, resp.describe()
    # the authorization server's own denial, not the filter's invalid_token reply
    assert resp.json() == {"error": "gateway token rejected"}, resp.describe()
    assert len(ext_authz_service.requests_for(path)) == 1
    sc.assert_backend_not_called(backend, path)


def test_request_without_gateway_token_gets_ext_authz_401_and_backend_is_not_called(
    gateway, backend, unique
):
    path = unique("/az/github/")
    resp = h.request(gateway.port("extauthz"), path)

    assert resp.status == 401, resp.describe()
    assert resp.json() == {"error": "gateway token rejected"}, resp.describe()
    sc.assert_backend_not_called(backend, path)


@pytest.mark.parametrize(
    "user",
    [
        "carol",  # passes ext_authz, has only an Atlassian token; the route needs GitHub
        "dave",  # passes ext_authz, whose x-upstream-token-github answer is empty
    ],
)
def test_authenticated_user_without_provider_token_gets_invalid_token_401(
    gateway, backend, ext_authz_service, unique, user
):
    path = unique("/az/github/")
    resp = h.request(gateway.port("extauthz"), path, [("authorization", f"Bearer gw-{user}-token")])

    assert len(ext_authz_service.requests_for(path)) == 1
    sc.assert_missing_token_reply(resp, "github", secrets=[*ALL_EXTAUTHZ_TOKENS, f"gw-{user}-token"])
    sc.assert_backend_not_called(backend, path)


def test_concurrent_requests_of_different_users_never_get_each_others_tokens(gateway, backend, unique):
    users = {"gw-alice-token": "gho_alice", "gw-bob-token": "gho_bob"}
    jobs = [(unique("/az/github/"), gw) for _ in range(20) for gw in users]

    def send(job: tuple[str, str]) -> h.Response:
        path, gw = job
        return h.request(gateway.port("extauthz"), path, [("authorization", f"Bearer {gw}")])

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(send, jobs))

    got = {
        path: sc.only_request(backend, path, resp).values("authorization")
        for (path, _), resp in zip(jobs, responses)
    }
    want = {path: [f"Bearer {users[gw]}"] for path, gw in jobs}
    assert got == want
