"""token_exchange against the scripted STS: the RFC 8693 request the filter sends, what the
backend receives, and which token is the subject.

The STS records every call (headers and decoded form); every subject is unique to its test, so
no test meets another's cached exchange.
"""

from __future__ import annotations

import base64
import urllib.parse

import pytest

import exchange_scenarios as xs
import harness as h
import scenarios as sc

SUBJECT_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def expected_basic(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: each part form-encoded, then HTTP Basic."""
    pair = f"{urllib.parse.quote_plus(client_id, safe='')}:{urllib.parse.quote_plus(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def test_all_token_exchange_counters_are_published_in_admin_stats(exchange):
    stats = exchange.stats()
    missing = [n for n in xs.COUNTERS if exchange.stats_prefix + n not in stats]
    assert not missing, f"counters not in /stats: {missing}; have {sorted(stats)}"


def test_sts_receives_an_rfc8693_form_post_authenticated_with_form_encoded_basic(
    exchange, sts, backend, unique, new_subject
):
    subject = new_subject()
    resp = h.request(exchange.port("te"), unique("/corp/"), bearer(subject))
    assert resp.status == 200, resp.describe()

    calls = sts.calls_for(subject)
    assert len(calls) == 1, calls
    call = calls[0]
    assert call.method == "POST"
    assert call.path == xs.TOKEN_URL_PATH  # the tokenUrl's path and query
    assert call.values("host") == [xs.TOKEN_URL_AUTHORITY]  # from tokenUrl, not the cluster
    assert call.values("content-type") == ["application/x-www-form-urlencoded"]
    assert call.values("accept") == ["application/json"]
    assert call.values("authorization") == [expected_basic(xs.CLIENT_ID, xs.CLIENT_SECRET)]
    assert call.form == {
        "grant_type": ["urn:ietf:params:oauth:grant-type:token-exchange"],
        "subject_token": [subject],
        "subject_token_type": ["urn:ietf:params:oauth:token-type:access_token"],
        "requested_token_type": ["urn:ietf:params:oauth:token-type:access_token"],
        "audience": [xs.AUDIENCE],
        "scope": ["read corp:write"],  # space-joined
    }
    # the body is a plain form: only the fields above, each once
    raw_keys = [kv.split("=", 1)[0] for kv in call.body.decode().split("&")]
    assert sorted(raw_keys) == sorted(call.form), call.body


def test_backend_receives_the_issued_token_in_place_of_the_clients_bearer(
    exchange, sts, backend, unique, new_subject
):
    subject = new_subject()
    path = unique("/corp/")
    resp = h.request(exchange.port("te"), path, bearer(subject))

    seen = sc.only_request(backend, path, resp)
    issued = sts.issued_for(subject)
    assert len(issued) == 1, issued
    assert seen.values("authorization") == [f"Bearer {issued[0]}"]
    sc.assert_no_secrets(seen.header_blob(), [subject, xs.CLIENT_SECRET], "backend headers")


def test_strategy_without_client_credentials_audience_or_scopes_sends_none_of_them(
    exchange, sts, backend, unique, new_subject
):
    subject = new_subject()
    path = unique("/corp-public/")
    resp = h.request(exchange.port("te"), path, bearer(subject))

    seen = sc.only_request(backend, path, resp)
    [call] = sts.calls_for(subject)
    assert call.values("authorization") == []
    assert call.form == {
        "grant_type": ["urn:ietf:params:oauth:grant-type:token-exchange"],
        "subject_token": [subject],
        "subject_token_type": ["urn:ietf:params:oauth:token-type:access_token"],  # the default
        "requested_token_type": ["urn:ietf:params:oauth:token-type:access_token"],
    }
    assert seen.values("authorization") == [f"Bearer {sts.issued_for(subject)[0]}"]


# --------------------------------------------------------------------------------------------
# Which token is the subject


def test_subject_is_the_clients_bearer_when_no_subject_provider_is_configured(
    exchange, sts, unique, new_subject
):
    subject = new_subject()
    resp = h.request(exchange.port("te"), unique("/corp/"), [("authorization", f"bearer   {subject} ")])
    assert resp.status == 200, resp.describe()
    [call] = sts.calls_for(subject)
    assert call.form["subject_token"] == [subject]


def test_subject_provider_sends_the_upstream_token_from_metadata_and_never_the_clients(
    exchange, sts, backend, unique, new_subject
):
    client_token = new_subject()
    path = unique("/corp-provider/")
    before = len(sts.calls_for(xs.TE_GITHUB_TOKEN))
    with h.CounterDelta(exchange, xs.COUNTERS) as d:
        resp = h.request(exchange.port("te"), path, bearer(client_token))

    seen = sc.only_request(backend, path, resp)
    calls = sts.calls_for(xs.TE_GITHUB_TOKEN)[before:]
    assert len(calls) == 1, calls
    assert calls[0].form["subject_token"] == [xs.TE_GITHUB_TOKEN]
    assert calls[0].form["subject_token_type"] == [SUBJECT_TYPE_JWT]
    sc.assert_no_secrets(calls[0].blob(), [client_token], "the STS request")
    assert seen.values("authorization") == [f"Bearer {sts.issued_for(xs.TE_GITHUB_TOKEN)[-1]}"]
    sc.assert_no_secrets(seen.header_blob(), [client_token, xs.TE_GITHUB_TOKEN], "backend headers")
    assert d.delta() == xs.deltas(ok=1, cache_miss=1)


def test_subject_provider_token_missing_gets_401_without_calling_the_sts(
    exchange, sts, backend, unique, new_subject
):
    client_token = new_subject()
    path = unique("/corp-provider/")
    calls_before = len(sts.calls)
    with h.CounterDelta(exchange, xs.COUNTERS) as d:
        resp = h.request(exchange.port("te-bare"), path, bearer(client_token))

    sc.assert_missing_token_reply(resp, "github", secrets=[client_token])
    assert len(sts.calls) == calls_before, "the STS must not be called without a subject"
    sc.assert_backend_not_called(backend, path)
    assert d.delta() == xs.deltas(subject_missing=1)


@pytest.mark.parametrize(
    "authorization",
    [None, "Basic dXNlcjpwYXNz", "Token abc"],
    ids=["absent", "basic", "other-scheme"],
)
def test_client_without_a_bearer_token_gets_401_without_calling_the_sts(
    exchange, sts, backend, unique, authorization
):
    path = unique("/corp/")
    headers = [] if authorization is None else [("authorization", authorization)]
    calls_before = len(sts.calls)
    with h.CounterDelta(exchange, xs.COUNTERS) as d:
        resp = h.request(exchange.port("te"), path, headers)

    xs.assert_exchange_error(resp, 401, "invalid_token")
    assert len(sts.calls) == calls_before, "the STS must not be called without a subject"
    sc.assert_backend_not_called(backend, path)
    assert d.delta() == xs.deltas(subject_missing=1)


@pytest.mark.parametrize(
    "authorization",
    ["Bearer", "Bearer    ", "Bearer two words", "Bearer a,b", "Bearer tok;en"],
    ids=["bearer-without-token", "bearer-blank", "two-words", "comma", "semicolon"],
)
def test_a_bearer_that_is_not_one_rfc6750_token_gets_401_without_calling_the_sts(
    exchange, sts, backend, unique, authorization
):
    path = unique("/corp/")
    calls_before = len(sts.calls)
    with h.CounterDelta(exchange, xs.COUNTERS) as d:
        resp = h.request(exchange.port("te"), path, [("authorization", authorization)])

    xs.assert_exchange_error(resp, 401, "invalid_token")
    assert len(sts.calls) == calls_before, "the STS must not be called with a malformed subject"
    sc.assert_backend_not_called(backend, path)
    assert d.delta() == xs.deltas(subject_malformed=1)


@pytest.mark.parametrize("protocol", ["http1", "h2c"])
def test_two_authorization_headers_are_refused_and_neither_token_is_exchanged(
    exchange, sts, backend, unique, new_subject, protocol
):
    # Envoy joins repeated Authorization headers with a comma: "Bearer X,Bearer Y" is not one
    # RFC 6750 token, so nothing is exchanged and the backend is never called.
    first, second = new_subject(), new_subject()
    path = unique("/corp/")
    headers = [("authorization", f"Bearer {first}"), ("authorization", f"Bearer {second}")]
    send = h.request if protocol == "http1" else h.request_h2c
    with h.CounterDelta(exchange, xs.COUNTERS) as d:
        resp = send(exchange.port("te"), path, headers)

    xs.assert_exchange_error(resp, 401, "invalid_token", secrets=[first, second])
    assert sts.calls_for(first) == [] and sts.calls_for(second) == []
    assert not any(first in c.blob() or second in c.blob() for c in sts.calls)
    sc.assert_backend_not_called(backend, path)
    assert d.delta() == xs.deltas(subject_malformed=1)


def test_one_authorization_header_over_h2c_is_exchanged(exchange, sts, backend, unique, new_subject):
    subject = new_subject()
    path = unique("/corp/")
    resp = h.request_h2c(exchange.port("te"), path, [("authorization", f"Bearer {subject}")])

    seen = sc.only_request(backend, path, resp)
    assert seen.values("authorization") == [f"Bearer {sts.issued_for(subject)[0]}"]


# --------------------------------------------------------------------------------------------
# Cluster (upstream) filter placement


def test_cluster_filter_exchanges_the_clients_bearer_for_the_backend_named_by_cluster_metadata(
    exchange, sts, backend, unique, new_subject
):
    subject = new_subject()
    path = unique("/up-corp/")
    resp = h.request(exchange.port("te-up"), path, bearer(subject))

    seen = sc.only_request(backend, path, resp)
    [call] = sts.calls_for(subject)
    assert call.form["audience"] == [xs.AUDIENCE]
    assert seen.values("authorization") == [f"Bearer {sts.issued_for(subject)[0]}"]
    sc.assert_no_secrets(seen.header_blob(), [subject], "backend headers")
