"""token_exchange against a real third-party STS: authgent-server 0.3.4 (PyPI), RFC 8693.

authgent runs on a loopback port (session fixture ``authgent`` in conftest.py) with three clients:
``upstream-app`` and ``github-app`` (client_credentials: they mint subject tokens) and
``proxy-filter`` (the token-exchange grant: the filter authenticates as it, its secret from an
env var of the VM). authgent issues exchanged tokens for 32 s and the filter keeps a 30 s
safety margin, so they stay cached for 2 s (listener ``ag``).

What the backend receives is checked as authgent's own JWT: ES256 signature against its JWKS,
``iss``, ``aud``, ``sub`` and ``act.sub``. Client authentication costs authgent one bcrypt
(about 0.2 s) per call: request counts stay small, and the cache tests count its /token calls
with Envoy's ``cluster.authgent.upstream_rq_total``. Listener ``ag-long`` runs the same filter
config with no safety margin (tokens cached for 32 s) for the call-counting test.
"""

from __future__ import annotations

import base64
import json
import time

import pytest

import authgent as ag
import exchange_scenarios as xs
import harness as h
import scenarios as sc

STS_REQUESTS = "cluster.authgent.upstream_rq_total"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def backend_bearer(backend: h.EchoBackend, path: str, resp: h.Response) -> str:
    values = sc.only_request(backend, path, resp).values("authorization")
    assert len(values) == 1 and values[0].startswith("Bearer "), values
    return values[0].removeprefix("Bearer ")


def test_backend_receives_an_authgent_jwt_for_the_audience_with_the_filter_as_actor(
    authgent, backend, unique
):
    subject = authgent.server.client_credentials(authgent.app)
    path = unique("/ag/")
    resp = h.request(authgent.envoy.port("ag"), path, bearer(subject))

    token = backend_bearer(backend, path, resp)
    assert token != subject
    claims = ag.verify_es256(token, authgent.jwks)
    assert claims["iss"] == authgent.server.url
    assert claims["aud"] == xs.AG_AUDIENCE
    assert claims["sub"] == f"client:{authgent.app.id}"  # the subject's identity
    assert claims["act"] == {"sub": f"client:{authgent.proxy.id}"}  # acting: the filter
    assert claims["scope"] == "read"
    assert claims["exp"] - claims["iat"] == xs.AG_EXCHANGE_TTL_S
    seen = backend.requests_for(path)[0]
    sc.assert_no_secrets(seen.header_blob(), [subject, authgent.proxy.secret], "backend headers")


def test_signature_check_refuses_a_tampered_authgent_jwt(authgent):
    """The JWKS check of the test above is not vacuous: one altered claim breaks it."""
    from cryptography.exceptions import InvalidSignature

    token = authgent.server.client_credentials(authgent.app)
    claims = ag.verify_es256(token, authgent.jwks)
    head, _, sig = token.split(".")
    forged = dict(claims, sub=f"client:{authgent.proxy.id}")
    payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
    with pytest.raises(InvalidSignature):
        ag.verify_es256(f"{head}.{payload}.{sig}", authgent.jwks)


def test_repeated_requests_with_one_subject_cost_one_authgent_call_on_either_worker(
    authgent, backend, unique
):
    envoy = authgent.envoy
    subject = authgent.server.client_credentials(authgent.app)
    sts_before = envoy.stat(STS_REQUESTS)
    with h.CounterDelta(envoy, xs.COUNTERS) as d:
        tokens = []
        for _ in range(5):  # each on a new connection; either worker may serve it
            path = unique("/ag/")
            # ag-long caches for 32 s: a slow machine cannot turn this into an expiry test
            tokens.append(backend_bearer(backend, path, h.request(envoy.port("ag-long"), path, bearer(subject))))

    assert envoy.stat(STS_REQUESTS) - sts_before == 1
    assert len(set(tokens)) == 1, tokens
    assert d.delta() == xs.deltas(ok=1, cache_miss=1, cache_hit=4)


def test_authgent_is_called_again_once_the_cached_token_expired(authgent, backend, unique):
    envoy = authgent.envoy
    subject = authgent.server.client_credentials(authgent.app)
    cache_ttl = xs.AG_EXCHANGE_TTL_S - xs.AG_SAFETY_MARGIN_S
    sts_before = envoy.stat(STS_REQUESTS)
    with h.CounterDelta(envoy, xs.COUNTERS) as d:
        path = unique("/ag/")
        first = backend_bearer(backend, path, h.request(envoy.port("ag"), path, bearer(subject)))
        cached_at = time.monotonic()
        path = unique("/ag/")
        assert backend_bearer(backend, path, h.request(envoy.port("ag"), path, bearer(subject))) == first
        time.sleep(max(0.0, cache_ttl + 0.3 - (time.monotonic() - cached_at)))
        path = unique("/ag/")
        renewed = backend_bearer(backend, path, h.request(envoy.port("ag"), path, bearer(subject)))

    assert envoy.stat(STS_REQUESTS) - sts_before == 2
    assert renewed != first
    assert ag.verify_es256(renewed, authgent.jwks)["sub"] == f"client:{authgent.app.id}"
    assert d.delta() == xs.deltas(ok=2, cache_miss=2, cache_hit=1)


def test_subject_provider_exchanges_the_upstream_token_from_metadata_not_the_clients(
    authgent, backend, unique
):
    client_token = "gw-alice-gateway-token"  # not an authgent token: authgent would refuse it
    path = unique("/ag-provider/")
    resp = h.request(authgent.envoy.port("ag"), path, bearer(client_token))

    token = backend_bearer(backend, path, resp)
    claims = ag.verify_es256(token, authgent.jwks)
    assert claims["sub"] == f"client:{authgent.github_app.id}"  # the metadata token's identity
    assert claims["aud"] == xs.AG_PROVIDER_AUDIENCE
    assert claims["act"] == {"sub": f"client:{authgent.proxy.id}"}
    seen = backend.requests_for(path)[0]
    sc.assert_no_secrets(seen.header_blob(), [client_token, authgent.github_token], "backend headers")


def test_subject_authgent_did_not_issue_gets_401_invalid_token(authgent, backend, unique):
    path = unique("/ag/")
    with h.CounterDelta(authgent.envoy, xs.COUNTERS) as d:
        resp = h.request(authgent.envoy.port("ag"), path, bearer("forged.not-a.jwt"))

    xs.assert_exchange_error(resp, 401, "invalid_token", secrets=["Malformed JWT", "forged.not-a.jwt"])
    sc.assert_backend_not_called(backend, path)
    assert d.delta() == xs.deltas(cache_miss=1, subject_rejected=1)


def test_scope_the_filter_client_may_not_request_gets_403(authgent, backend, unique):
    # authgent answers 403 insufficient_scope here (the RFC would say 400 invalid_scope)
    subject = authgent.server.client_credentials(authgent.app)
    path = unique("/ag-admin/")
    with h.CounterDelta(authgent.envoy, xs.COUNTERS) as d:
        resp = h.request(authgent.envoy.port("ag"), path, bearer(subject))

    xs.assert_exchange_error(resp, 403, "access_denied", secrets=[subject])
    sc.assert_backend_not_called(backend, path)
    assert d.delta() == xs.deltas(cache_miss=1, forbidden=1)


def test_wrong_client_secret_gets_502(authgent, backend, unique):
    subject = authgent.server.client_credentials(authgent.app)
    path = unique("/ag-wrong-secret/")
    with h.CounterDelta(authgent.envoy, xs.COUNTERS) as d:
        resp = h.request(authgent.envoy.port("ag"), path, bearer(subject))

    xs.assert_exchange_error(
        resp, 502, "bad_gateway", secrets=[subject, xs.AG_WRONG_SECRET, "Invalid client credentials"]
    )
    sc.assert_backend_not_called(backend, path)
    assert d.delta() == xs.deltas(cache_miss=1, bad_response=1)
