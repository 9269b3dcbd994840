"""Every way a token exchange can fail, against the scripted STS and broken clusters.

For each: the client's exact status and JSON ``error`` (a ``www-authenticate`` challenge on 401
only), the backend never called, nothing of the STS's answer (its error_description, any token
in a malformed answer) in the client's response, and exactly one failure counter moved. Envoy
keeps serving exchanges afterwards.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

import exchange_scenarios as xs
import harness as h
import scenarios as sc

# A token inside answers the filter must refuse: it must reach neither the backend nor the client.
LEAKED = "xt-from-an-unusable-answer"
URN = h.ACCESS_TOKEN_URN


def token_body(**overrides) -> dict:
    body = {"access_token": LEAKED, "token_type": "Bearer", "issued_token_type": URN, "expires_in": 300}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


def oversized_token_answer(size: int) -> h.StsAnswer:
    """A well-formed token response padded to ``size`` bytes: refused for its size alone."""
    head = json.dumps(token_body())[:-1] + ', "padding": "'
    pad = size - len(head) - 2
    return h.StsAnswer(200, (head + "a" * pad + '"}').encode())


E = h.StsAnswer.error
# name -> (STS answer, client status, client error, failure counter)
FAULTS: dict[str, tuple[h.StsAnswer, int, str, str]] = {
    # the subject was refused: 401 with a challenge
    "invalid-grant": (E(400, "invalid_grant"), 401, "invalid_token", "subject_rejected"),
    # this client / audience / scope is refused: 403
    "invalid-target": (E(400, "invalid_target"), 403, "access_denied", "forbidden"),
    "invalid-scope": (E(400, "invalid_scope"), 403, "access_denied", "forbidden"),
    "unauthorized-client": (E(400, "unauthorized_client"), 403, "access_denied", "forbidden"),
    "insufficient-scope-403": (E(403, "insufficient_scope"), 403, "access_denied", "forbidden"),
    # the STS cannot be used as configured, or answered garbage: 502
    "invalid-client": (E(401, "invalid_client"), 502, "bad_gateway", "bad_response"),
    "invalid-request": (E(400, "invalid_request"), 502, "bad_gateway", "bad_response"),
    "unsupported-grant-type": (E(400, "unsupported_grant_type"), 502, "bad_gateway", "bad_response"),
    "unsupported-token-type": (E(400, "unsupported_token_type"), 502, "bad_gateway", "bad_response"),
    "404-html": (
        h.StsAnswer(404, f"<html>{h.STS_PRIVATE_DETAIL}</html>".encode(), content_type="text/html"),
        502, "bad_gateway", "bad_response",
    ),
    "malformed-json": (
        h.StsAnswer(200, f'{{"access_token": "{LEAKED}", "token_type": "Bearer"'.encode()),
        502, "bad_gateway", "bad_response",
    ),
    "json-not-an-object": (h.StsAnswer(200, json.dumps([LEAKED]).encode()), 502, "bad_gateway", "bad_response"),
    "access-token-missing": (h.StsAnswer.token(**token_body(access_token=...)), 502, "bad_gateway", "bad_response"),
    "access-token-empty": (h.StsAnswer.token(**token_body(access_token="")), 502, "bad_gateway", "bad_response"),
    "access-token-null": (h.StsAnswer.token(**token_body(access_token=None)), 502, "bad_gateway", "bad_response"),
    "access-token-a-number": (h.StsAnswer.token(**token_body(access_token=12345)), 502, "bad_gateway", "bad_response"),
    "token-type-missing": (h.StsAnswer.token(**token_body(token_type=...)), 502, "bad_gateway", "bad_response"),
    "token-type-n-a": (h.StsAnswer.token(**token_body(token_type="N_A")), 502, "bad_gateway", "bad_response"),
    "token-type-a-number": (h.StsAnswer.token(**token_body(token_type=1)), 502, "bad_gateway", "bad_response"),
    "token-type-empty": (h.StsAnswer.token(**token_body(token_type="")), 502, "bad_gateway", "bad_response"),
    "issued-token-type-missing": (
        h.StsAnswer.token(**token_body(issued_token_type=...)), 502, "bad_gateway", "bad_response",
    ),
    "issued-token-type-empty": (
        h.StsAnswer.token(**token_body(issued_token_type="")), 502, "bad_gateway", "bad_response",
    ),
    "issued-token-type-a-list": (
        h.StsAnswer.token(**token_body(issued_token_type=[URN])), 502, "bad_gateway", "bad_response",
    ),
    # over 64 KiB: Envoy buffered it, the filter refuses it unread
    "body-just-over-64-kib": (oversized_token_answer(64 * 1024 + 1), 502, "bad_gateway", "bad_response"),
    "body-at-envoys-buffer-limit": (
        oversized_token_answer(h.ASYNC_RESPONSE_LIMIT_BYTES), 502, "bad_gateway", "bad_response",
    ),
    # the STS is down or overloaded: 503
    "status-500": (E(500, "server_error"), 503, "temporarily_unavailable", "unavailable"),
    "status-503-text": (
        h.StsAnswer(503, h.STS_PRIVATE_DETAIL.encode(), content_type="text/plain"),
        503, "temporarily_unavailable", "unavailable",
    ),
    "status-429": (E(429, "slow_down"), 503, "temporarily_unavailable", "unavailable"),
    "reset": (h.StsAnswer(reset=True), 503, "temporarily_unavailable", "unavailable"),
    # over http.async_response_buffer_limit Envoy stops buffering and resets the call
    "body-over-envoys-buffer-limit": (
        oversized_token_answer(h.ASYNC_RESPONSE_LIMIT_BYTES + 1), 503, "temporarily_unavailable", "unavailable",
    ),
    "body-10-mib": (oversized_token_answer(10 * 1024 * 1024), 503, "temporarily_unavailable", "unavailable"),
    # the STS's gateway timed out: 504
    "status-504": (E(504, "gateway_timeout"), 504, "gateway_timeout", "timeout"),
}


@pytest.mark.parametrize("case", list(FAULTS))
def test_sts_failure_gets_its_status_and_oauth_error_and_the_backend_is_not_called(
    exchange, sts, backend, unique, new_subject, case
):
    answer, status, error, counter = FAULTS[case]
    subject = new_subject()
    sts.script(subject, answer)
    path = unique("/corp/")
    with h.CounterDelta(exchange, xs.COUNTERS) as d:
        resp = h.request(exchange.port("te"), path, [("authorization", f"Bearer {subject}")])

    xs.assert_exchange_error(resp, status, error, secrets=[subject, LEAKED])
    assert len(sts.calls_for(subject)) == 1, sts.calls_for(subject)
    sc.assert_backend_not_called(backend, path)
    assert d.delta() == xs.deltas(cache_miss=1, **{counter: 1})


def test_sts_slower_than_timeout_ms_gets_504_after_the_timeout(
    exchange, sts, backend, unique, new_subject
):
    subject = new_subject()
    release = threading.Event()
    sts.script(subject, h.StsAnswer(hold=release))  # answers only once the test is over
    path = unique("/corp-slow/")
    try:
        with h.CounterDelta(exchange, xs.COUNTERS) as d:
            started = time.monotonic()
            resp = h.request(exchange.port("te"), path, [("authorization", f"Bearer {subject}")])
            elapsed = time.monotonic() - started
    finally:
        release.set()

    xs.assert_exchange_error(resp, 504, "gateway_timeout", secrets=[subject])
    timeout_s = xs.SLOW_TIMEOUT_MS / 1000
    assert timeout_s * 0.9 <= elapsed < timeout_s + 2.0, f"answered after {elapsed:.2f}s"
    assert len(sts.calls_for(subject)) == 1
    sc.assert_backend_not_called(backend, path)
    assert d.delta() == xs.deltas(cache_miss=1, timeout=1)


def test_a_200_whose_body_trickles_past_timeout_ms_gets_504(
    exchange, sts, backend, unique, new_subject
):
    # Envoy resets a call whose body is still arriving at its deadline (no 504 of its own): the
    # filter knows its deadline and counts a timeout, not an unavailable STS.
    subject = new_subject()
    trickle_s = 4 * xs.SLOW_TIMEOUT_MS / 1000
    sts.script(subject, h.StsAnswer(trickle_s=trickle_s))
    path = unique("/corp-slow/")
    with h.CounterDelta(exchange, xs.COUNTERS) as d:
        started = time.monotonic()
        resp = h.request(exchange.port("te"), path, [("authorization", f"Bearer {subject}")])
        elapsed = time.monotonic() - started

    xs.assert_exchange_error(resp, 504, "gateway_timeout", secrets=[subject])
    timeout_s = xs.SLOW_TIMEOUT_MS / 1000
    assert timeout_s * 0.9 <= elapsed < trickle_s, f"answered after {elapsed:.2f}s"
    assert len(sts.calls_for(subject)) == 1
    sc.assert_backend_not_called(backend, path)
    assert d.delta() == xs.deltas(cache_miss=1, timeout=1)


def test_a_reset_before_the_deadline_is_still_an_unavailable_sts(
    exchange, sts, backend, unique, new_subject
):
    subject = new_subject()
    sts.script(subject, h.StsAnswer(reset=True))
    path = unique("/corp-slow/")
    with h.CounterDelta(exchange, xs.COUNTERS) as d:
        resp = h.request(exchange.port("te"), path, [("authorization", f"Bearer {subject}")])

    xs.assert_exchange_error(resp, 503, "temporarily_unavailable", secrets=[subject])
    assert d.delta() == xs.deltas(cache_miss=1, unavailable=1)


@pytest.mark.parametrize(
    "prefix",
    ["/corp-unknown-cluster/", "/corp-refused/"],
    ids=["cluster-does-not-exist", "connection-refused"],
)
def test_unreachable_sts_gets_503(exchange, sts, backend, unique, new_subject, prefix):
    subject = new_subject()
    path = unique(prefix)
    with h.CounterDelta(exchange, xs.COUNTERS) as d:
        resp = h.request(exchange.port("te"), path, [("authorization", f"Bearer {subject}")])

    xs.assert_exchange_error(resp, 503, "temporarily_unavailable", secrets=[subject])
    assert sts.calls_for(subject) == []
    sc.assert_backend_not_called(backend, path)
    assert d.delta() == xs.deltas(cache_miss=1, unavailable=1)


@pytest.mark.parametrize(
    "answer",
    [
        h.StsAnswer.token(access_token="xt-lowercase-type", token_type="bearer", issued_token_type=URN),
        h.StsAnswer.token(
            access_token="xt-authgent-shape",
            token_type="Bearer",
            issued_token_type=URN,
            expires_in=300,
            scope="read",
            refresh_token=None,  # authgent sends null for optional members
        ),
    ],
    ids=["token-type-any-case", "optional-members-null"],
)
def test_usable_answers_that_are_not_the_canonical_shape_are_accepted(
    exchange, sts, backend, unique, new_subject, answer
):
    subject = new_subject()
    sts.script(subject, answer)
    path = unique("/corp/")
    resp = h.request(exchange.port("te"), path, [("authorization", f"Bearer {subject}")])

    seen = sc.only_request(backend, path, resp)
    assert seen.values("authorization") == [f"Bearer {answer.body['access_token']}"]


def test_envoy_still_exchanges_after_every_failure(exchange, sts, backend, unique, new_subject):
    """Runs last in this module: no failure above trapped the VM (FAIL_CLOSED would answer 503)."""
    assert exchange.proc is not None and exchange.proc.poll() is None, exchange.log_tail()
    for _ in range(4):  # new connections: both workers get a chance to serve one
        subject = new_subject()
        path = unique("/corp/")
        resp = h.request(exchange.port("te"), path, [("authorization", f"Bearer {subject}")])
        seen = sc.only_request(backend, path, resp)
        assert seen.values("authorization") == [f"Bearer {sts.issued_for(subject)[0]}"]
    log = exchange.log_text()
    for sign in ("panicked", "wasm trap", "Function: proxy_on_"):
        assert sign not in log, f"{sign!r} in the Envoy log:\n{exchange.log_tail()}"
