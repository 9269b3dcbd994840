"""The exchanged-token cache and the coalescing of identical misses, against the scripted STS.

* The cache lives in shared data: two workers (``exchange``) see one cache.
* Coalescing is per worker: the ``exchange_single`` Envoy has one, so concurrent requests meet
  the same call in flight. The STS holds its answer until the test has seen every request reach
  the filter (the cache_miss counter), so the timing is not left to chance.
"""

from __future__ import annotations

import dataclasses

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import exchange_scenarios as xs
import harness as h
import scenarios as sc

SAFETY_MARGIN_S = xs.EXCHANGE_FILTER_CONFIG["exchangeCache"]["safetyMarginSeconds"]


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def backend_bearer(backend: h.EchoBackend, path: str, resp: h.Response) -> str:
    values = sc.only_request(backend, path, resp).values("authorization")
    assert len(values) == 1 and values[0].startswith("Bearer "), values
    return values[0].removeprefix("Bearer ")


def wait_until(what: str, predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.01)


def worker_connections(envoy: h.Envoy) -> dict[str, int]:
    """Downstream connections accepted so far, per worker (all listeners)."""
    stats = envoy.stats("listener.")
    out: dict[str, int] = {}
    for name, value in stats.items():
        parts = name.split(".")
        if name.endswith(".downstream_cx_total") and parts[-2].startswith("worker_"):
            out[parts[-2]] = out.get(parts[-2], 0) + value
    return out


# --------------------------------------------------------------------------------------------
# Cache


def test_same_subject_calls_the_sts_once_for_requests_served_by_both_workers(
    exchange, sts, backend, unique, new_subject
):
    subject = new_subject()
    before = worker_connections(exchange)
    tokens: list[str] = []
    with h.CounterDelta(exchange, xs.COUNTERS) as d:
        # each request on a new connection; go on until both workers served some (bounded)
        while len(tokens) < 5 or (
            min(worker_connections(exchange)[w] - before.get(w, 0) for w in ("worker_0", "worker_1")) == 0
            and len(tokens) < 40
        ):
            path = unique("/corp/")
            tokens.append(backend_bearer(backend, path, h.request(exchange.port("te"), path, bearer(subject))))
    spread = {w: worker_connections(exchange)[w] - before.get(w, 0) for w in ("worker_0", "worker_1")}

    assert all(spread.values()), f"connections never reached both workers: {spread}"
    assert len(sts.calls_for(subject)) == 1
    assert tokens == [sts.issued_for(subject)[0]] * len(tokens)
    assert d.delta() == xs.deltas(ok=1, cache_miss=1, cache_hit=len(tokens) - 1)


def test_different_subjects_get_separate_exchanges(exchange, sts, backend, unique, new_subject):
    alice, bob = new_subject(), new_subject()
    got: dict[str, list[str]] = {alice: [], bob: []}
    with h.CounterDelta(exchange, xs.COUNTERS) as d:
        for subject in (alice, bob, alice, bob):
            path = unique("/corp/")
            got[subject].append(backend_bearer(backend, path, h.request(exchange.port("te"), path, bearer(subject))))

    assert len(sts.calls_for(alice)) == 1 and len(sts.calls_for(bob)) == 1
    assert got[alice] == [sts.issued_for(alice)[0]] * 2
    assert got[bob] == [sts.issued_for(bob)[0]] * 2
    assert got[alice][0] != got[bob][0]
    assert d.delta() == xs.deltas(ok=2, cache_miss=2, cache_hit=2)


def test_same_subject_for_backends_with_different_audiences_gets_separate_exchanges(
    exchange, sts, backend, unique, new_subject
):
    subject = new_subject()
    for prefix in ("/corp/", "/corp-public/", "/corp/", "/corp-public/"):
        path = unique(prefix)
        backend_bearer(backend, path, h.request(exchange.port("te"), path, bearer(subject)))

    calls = sts.calls_for(subject)
    assert [c.form.get("audience") for c in calls] == [[xs.AUDIENCE], None]


def test_max_entries_zero_disables_the_cache(exchange, sts, backend, unique, new_subject):
    subject = new_subject()
    with h.CounterDelta(exchange, xs.COUNTERS) as d:
        for _ in range(3):
            path = unique("/corp/")
            backend_bearer(backend, path, h.request(exchange.port("te-nocache"), path, bearer(subject)))

    assert len(sts.calls_for(subject)) == 3
    assert d.delta() == xs.deltas(ok=3, cache_miss=3)


def test_default_ttl_caches_a_token_issued_without_expires_in(exchange, sts, backend, unique, new_subject):
    subject = new_subject()
    sts.script(subject, h.StsAnswer(expires_in=None))
    seen: list[str] = []
    with h.CounterDelta(exchange, xs.COUNTERS) as d:
        for _ in range(3):
            path = unique("/corp/")
            seen.append(
                backend_bearer(backend, path, h.request(exchange.port("te-default-ttl"), path, bearer(subject)))
            )

    assert len(sts.calls_for(subject)) == 1
    assert seen == [sts.issued_for(subject)[0]] * 3
    assert d.delta() == xs.deltas(ok=1, cache_miss=1, cache_hit=2)


@pytest.mark.parametrize(
    "expires_in", [None, SAFETY_MARGIN_S], ids=["without-expires-in", "expires-within-the-margin"]
)
def test_token_that_would_not_outlive_the_margin_is_not_cached(
    exchange, sts, backend, unique, new_subject, expires_in
):
    subject = new_subject()
    sts.script(subject, h.StsAnswer(expires_in=expires_in))
    seen: list[str] = []
    with h.CounterDelta(exchange, xs.COUNTERS) as d:
        for _ in range(3):
            path = unique("/corp/")
            seen.append(backend_bearer(backend, path, h.request(exchange.port("te"), path, bearer(subject))))

    assert len(sts.calls_for(subject)) == 3
    assert seen == sts.issued_for(subject)
    assert d.delta() == xs.deltas(ok=3, cache_miss=3)


def test_cached_token_is_exchanged_again_once_expires_in_minus_margin_has_passed(
    exchange, sts, backend, unique, new_subject
):
    subject = new_subject()
    sts.script(subject, h.StsAnswer(expires_in=SAFETY_MARGIN_S + 1))  # cached for 1 s
    seen: list[str] = []

    def call() -> None:
        path = unique("/corp/")
        seen.append(backend_bearer(backend, path, h.request(exchange.port("te"), path, bearer(subject))))

    with h.CounterDelta(exchange, xs.COUNTERS) as d:
        started = time.monotonic()
        call()
        call()  # well within the second: from the cache
        assert time.monotonic() - started < 0.8, "too slow to observe the cached second"
        time.sleep(max(0.0, 1.2 - (time.monotonic() - started)))
        call()

    issued = sts.issued_for(subject)
    assert len(issued) == 2, issued
    assert seen == [issued[0], issued[0], issued[1]]
    assert d.delta() == xs.deltas(ok=2, cache_miss=2, cache_hit=1)


def test_failed_exchange_is_not_cached(exchange, sts, backend, unique, new_subject):
    subject = new_subject()
    sts.script(subject, h.StsAnswer.error(503, "temporarily_unavailable"), h.StsAnswer())
    with h.CounterDelta(exchange, xs.COUNTERS) as d:
        first = h.request(exchange.port("te"), unique("/corp/"), bearer(subject))
        path = unique("/corp/")
        second = backend_bearer(backend, path, h.request(exchange.port("te"), path, bearer(subject)))

    xs.assert_exchange_error(first, 503, "temporarily_unavailable", secrets=[subject])
    assert len(sts.calls_for(subject)) == 2
    assert second == sts.issued_for(subject)[0]
    assert d.delta() == xs.deltas(ok=1, cache_miss=2, unavailable=1)


@pytest.mark.parametrize("on", ["cache-hit", "fresh-token"])
def test_backend_401_evicts_the_exchanged_token_so_the_next_request_exchanges_again(
    exchange, sts, backend, unique, new_subject, on
):
    subject = new_subject()
    rejected = bearer(subject) + [(h.ECHO_STATUS_HEADER, "401")]
    with h.CounterDelta(exchange, xs.COUNTERS) as d:
        if on == "cache-hit":
            path = unique("/corp/")
            backend_bearer(backend, path, h.request(exchange.port("te"), path, bearer(subject)))
        path = unique("/corp/")
        resp = h.request(exchange.port("te"), path, rejected)
        assert resp.status == 401, resp.describe()  # the backend's own answer passes through
        assert [r.values("authorization") for r in backend.requests_for(path)] == [
            [f"Bearer {sts.issued_for(subject)[0]}"]
        ]
        path = unique("/corp/")
        after = backend_bearer(backend, path, h.request(exchange.port("te"), path, bearer(subject)))

    issued = sts.issued_for(subject)
    assert len(issued) == 2, issued
    assert after == issued[1]
    hits = 1 if on == "cache-hit" else 0
    assert d.delta() == xs.deltas(ok=2, cache_miss=2, cache_hit=hits, cache_evicted=1)


def test_backend_answers_other_than_401_keep_the_cached_token(
    exchange, sts, backend, unique, new_subject
):
    subject = new_subject()
    with h.CounterDelta(exchange, xs.COUNTERS) as d:
        for status in ("200", "403", "500", "200"):
            resp = h.request(
                exchange.port("te"), unique("/corp/"), bearer(subject) + [(h.ECHO_STATUS_HEADER, status)]
            )
            assert resp.status == int(status), resp.describe()

    assert len(sts.calls_for(subject)) == 1
    assert d.delta() == xs.deltas(ok=1, cache_miss=1, cache_hit=3)


# --------------------------------------------------------------------------------------------
# Coalescing (one worker)

# A client closed its connection while its request was still waiting (listener te).
CLIENT_GONE = "http.te.downstream_cx_destroy_remote_active_rq"


def send_without_reading(port: int, path: str, subject: str) -> socket.socket:
    """Sends one request on a raw connection and returns it unread: closing it is the client
    going away mid-request."""
    conn = socket.create_connection((h.LOOPBACK, port), timeout=5)
    conn.sendall(f"GET {path} HTTP/1.1\r\nhost: te\r\nauthorization: Bearer {subject}\r\n\r\n".encode())
    return conn


def concurrent_misses(exchange_single, sts, unique, subject, n, answer):
    """``n`` concurrent requests with the same subject while the STS holds ``answer`` back until
    all ``n`` reached the filter: returns their paths and responses."""
    release = threading.Event()
    sts.script(subject, dataclasses.replace(answer, hold=release))
    paths = [unique("/corp/") for _ in range(n)]
    misses_before = exchange_single.counter(xs.CACHE_MISS)
    with ThreadPoolExecutor(max_workers=n) as pool:
        try:
            futures = [
                pool.submit(h.request, exchange_single.port("te"), p, bearer(subject)) for p in paths
            ]
            wait_until(
                f"{n} requests to reach the filter",
                lambda: exchange_single.counter(xs.CACHE_MISS) - misses_before >= n,
            )
        finally:
            release.set()
        return paths, [f.result() for f in futures]


def test_concurrent_misses_for_one_subject_share_one_sts_call(
    exchange_single, sts, backend, unique, new_subject
):
    n = 8
    subject = new_subject()
    with h.CounterDelta(exchange_single, xs.COUNTERS) as d:
        paths, responses = concurrent_misses(exchange_single, sts, unique, subject, n, h.StsAnswer())

    issued = sts.issued_for(subject)
    assert len(sts.calls_for(subject)) == 1
    assert [backend_bearer(backend, p, r) for p, r in zip(paths, responses)] == [issued[0]] * n
    assert d.delta() == xs.deltas(ok=1, cache_miss=n, coalesced=n - 1)


def test_waiting_requests_still_complete_when_the_calling_client_goes_away(
    exchange_single, sts, backend, unique, new_subject
):
    subject = new_subject()
    release = threading.Event()
    sts.script(subject, h.StsAnswer(hold=release))
    port = exchange_single.port("te")
    paths = [unique("/corp/"), unique("/corp/")]
    gone_before = exchange_single.stat(CLIENT_GONE)
    with h.CounterDelta(exchange_single, xs.COUNTERS) as d:
        # A: its request makes the STS call
        caller = send_without_reading(port, unique("/corp/"), subject)
        try:
            assert len(sts.wait_calls(subject, 1)) == 1, "the caller's STS call never arrived"
            with ThreadPoolExecutor(max_workers=2) as pool:
                try:
                    # B and C join the call in flight
                    futures = [pool.submit(h.request, port, p, bearer(subject)) for p in paths]
                    wait_until(
                        "B and C to reach the filter",
                        lambda: exchange_single.counter(xs.CACHE_MISS) - d.before[xs.CACHE_MISS] >= 3,
                    )
                    # A goes away before the STS answers
                    caller.close()
                    wait_until(
                        "Envoy to see the caller go away",
                        lambda: exchange_single.stat(CLIENT_GONE) > gone_before,
                    )
                finally:
                    release.set()
                responses = [f.result() for f in futures]
        finally:
            caller.close()
            release.set()
        issued = sts.issued_for(subject)
        assert 1 <= len(sts.calls_for(subject)) <= 2, sts.calls_for(subject)
        tokens = [backend_bearer(backend, p, r) for p, r in zip(paths, responses)]
        assert tokens[0] == tokens[1] and tokens[0] in issued, (tokens, issued)
        # and the worker goes on serving exchanges, from the cache the completed call filled
        path = unique("/corp/")
        assert backend_bearer(backend, path, h.request(port, path, bearer(subject))) == tokens[0]

    assert d.delta() == xs.deltas(ok=1, cache_miss=3, coalesced=2, cache_hit=1)


def test_concurrent_misses_share_one_failed_call_and_all_get_its_error(
    exchange_single, sts, backend, unique, new_subject
):
    n = 4
    subject = new_subject()
    rejected = h.StsAnswer.error(400, "invalid_grant")
    with h.CounterDelta(exchange_single, xs.COUNTERS) as d:
        paths, responses = concurrent_misses(exchange_single, sts, unique, subject, n, rejected)

    for resp in responses:
        xs.assert_exchange_error(resp, 401, "invalid_token", secrets=[subject])
    for path in paths:
        sc.assert_backend_not_called(backend, path)
    assert len(sts.calls_for(subject)) == 1
    # failure counters count STS calls, not the requests that waited for one
    assert d.delta() == xs.deltas(cache_miss=n, coalesced=n - 1, subject_rejected=1)


def test_call_whose_only_requester_went_away_does_not_hold_up_the_next_request(
    exchange_single, sts, backend, unique, new_subject
):
    subject = new_subject()
    release = threading.Event()
    sts.script(subject, h.StsAnswer(hold=release), h.StsAnswer())
    port = exchange_single.port("te")
    gone_before = exchange_single.stat(CLIENT_GONE)
    caller = send_without_reading(port, unique("/corp/"), subject)
    try:
        assert len(sts.wait_calls(subject, 1)) == 1, "the caller's STS call never arrived"
        caller.close()
        wait_until("Envoy to see the caller go away", lambda: exchange_single.stat(CLIENT_GONE) > gone_before)
        path = unique("/corp/")
        # nobody waits for the first call any more: this request must not join it
        resp = h.request(port, path, bearer(subject), timeout=5)
    finally:
        caller.close()
        release.set()

    assert backend_bearer(backend, path, resp) in sts.issued_for(subject)
    assert 2 <= len(sts.calls_for(subject)) <= 3, sts.calls_for(subject)
