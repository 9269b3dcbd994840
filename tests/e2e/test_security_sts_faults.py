"""Security matrix: many clients at once while the STS misbehaves in every way at once.

test_token_exchange_faults.py pins each failure class with one request. Here 60 clients hit the
two-worker ``exchange`` Envoy together, ten per fault (slow, silent, 5xx, 429, a 10 MiB body,
invalid JSON, a reset) and ten with a healthy answer; in each group half share one subject (their
misses coalesce when they meet on a worker) and half have their own. Every client must get its
class's defined answer within the strategy's timeout (plus a margin for a loaded machine), the
backend must be called for the healthy ones only, and afterwards Envoy must be live, without a
trap or a host error, and exchanging normally on both workers. The one-worker Envoy then shows a
timed-out call answering every coalesced waiter with 504. Last, an issued token that would break
or smuggle a header (CR/LF, NUL, space, non-ASCII) is refused like any unusable answer.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

import exchange_scenarios as xs
import harness as h
import scenarios as sc

E = h.StsAnswer.error
PER_GROUP = 10
MARGIN_S = 3.0  # a loaded 2-core machine: scheduling, not the filter
TRAP_SIGNS = ("panicked", "wasm trap", "Function: proxy_on_", "Wasm VM failed", "Plugin configured to fail closed")


def big_answer(size: int) -> h.StsAnswer:
    head = json.dumps({"access_token": "xt-in-a-big-answer", "token_type": "Bearer",
                       "issued_token_type": h.ACCESS_TOKEN_URN, "padding": ""})[:-2]
    return h.StsAnswer(200, (head + "a" * size + '"}').encode())


@dataclass(frozen=True)
class Group:
    prefix: str
    answer: h.StsAnswer | None  # None: the STS never answers (held until the test ends)
    status: int
    error: str | None  # the JSON error; None for the backend's 200
    timeout_s: float  # the strategy's timeoutMs

    @property
    def deadline_s(self) -> float:
        return self.timeout_s + MARGIN_S


SLOW_TIMEOUT_S = xs.SLOW_TIMEOUT_MS / 1000
GROUPS: dict[str, Group] = {
    "healthy": Group("/corp/", h.StsAnswer(), 200, None, 5.0),
    # answers after one second, past corp-slow's 300 ms (the answer arrives after the 504)
    "slow": Group("/corp-slow/", h.StsAnswer(), 504, "gateway_timeout", SLOW_TIMEOUT_S),
    "silent": Group("/corp-slow/", None, 504, "gateway_timeout", SLOW_TIMEOUT_S),
    "status-500": Group("/corp/", E(500, "server_error"), 503, "temporarily_unavailable", 5.0),
    "status-429": Group("/corp/", E(429, "slow_down"), 503, "temporarily_unavailable", 5.0),
    # over 64 KiB: refused unread; over http.async_response_buffer_limit: Envoy resets the call
    "body-512-kib": Group("/corp/", big_answer(512 * 1024), 502, "bad_gateway", 5.0),
    "body-10-mib": Group("/corp/", big_answer(10 * 1024 * 1024), 503, "temporarily_unavailable", 5.0),
    "invalid-json": Group("/corp/", h.StsAnswer(200, b'{"access_token": "xt-cut'), 502, "bad_gateway", 5.0),
    "reset": Group("/corp/", h.StsAnswer(reset=True), 503, "temporarily_unavailable", 5.0),
}


@dataclass
class Outcome:
    group: str
    subject: str
    path: str
    resp: h.Response | None
    elapsed: float
    error: str | None = None


def test_sixty_clients_during_every_sts_fault_at_once_get_their_answers_in_time(
    exchange, sts, backend, unique, new_subject
):
    release_slow = threading.Event()
    release_silent = threading.Event()
    jobs: list[tuple[str, str, str]] = []
    for name, group in GROUPS.items():
        shared = new_subject()
        subjects = [shared] * (PER_GROUP // 2) + [new_subject() for _ in range(PER_GROUP - PER_GROUP // 2)]
        for subject in set(subjects):
            if name == "slow":
                sts.script(subject, h.StsAnswer(hold=release_slow))
            elif name == "silent":
                sts.script(subject, h.StsAnswer(hold=release_silent))
            else:
                assert group.answer is not None
                sts.script(subject, group.answer)
        jobs += [(name, subject, unique(group.prefix)) for subject in subjects]
    timer = threading.Timer(1.0, release_slow.set)  # the slow STS answers after a second

    def send(job: tuple[str, str, str]) -> Outcome:
        name, subject, path = job
        started = time.monotonic()
        try:
            resp = h.request(exchange.port("te"), path, [("authorization", f"Bearer {subject}")], timeout=15)
            return Outcome(name, subject, path, resp, time.monotonic() - started)
        except OSError as e:
            return Outcome(name, subject, path, None, time.monotonic() - started, repr(e))

    host_errors = exchange.counter("host_error")
    timer.start()
    try:
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            outcomes = list(pool.map(send, jobs))
    finally:
        timer.cancel()
        release_slow.set()
        release_silent.set()

    problems = []
    for o in outcomes:
        group = GROUPS[o.group]
        if o.resp is None:
            problems.append(f"{o.group}: no answer ({o.error}) after {o.elapsed:.1f}s")
            continue
        if o.elapsed >= group.deadline_s:
            problems.append(f"{o.group}: answered after {o.elapsed:.1f}s (deadline {group.deadline_s:.1f}s)")
        try:
            if group.error is None:
                [bearer] = sc.only_request(backend, o.path, o.resp).values("authorization")
                assert bearer.removeprefix("Bearer ") in sts.issued_for(o.subject), bearer
            else:
                xs.assert_exchange_error(o.resp, group.status, group.error, secrets=[o.subject, "xt-"])
                sc.assert_backend_not_called(backend, o.path)
        except AssertionError as e:
            problems.append(f"{o.group}: {e}")
    assert not problems, "\n".join(problems[:20])
    # every subject reached the STS, at most once per client that carried it
    for subject in {o.subject for o in outcomes}:
        carried = sum(1 for o in outcomes if o.subject == subject)
        assert 1 <= len(sts.calls_for(subject)) <= carried, subject
    assert_envoy_healthy(exchange, sts, backend, unique, new_subject, host_errors)


def assert_envoy_healthy(envoy, sts, backend, unique, new_subject, host_errors_before: int) -> None:
    assert envoy.proc is not None and envoy.proc.poll() is None, envoy.log_tail()
    assert envoy.admin_get("/ready") == (200, "LIVE\n")
    assert envoy.counter("host_error") == host_errors_before
    for _ in range(4):  # new connections: both workers get some
        subject = new_subject()
        path = unique("/corp/")
        resp = h.request(envoy.port("te"), path, [("authorization", f"Bearer {subject}")])
        seen = sc.only_request(backend, path, resp)
        assert seen.values("authorization") == [f"Bearer {sts.issued_for(subject)[0]}"]
    log = envoy.log_text()
    for sign in TRAP_SIGNS:
        assert sign not in log, f"{sign!r} in the Envoy log:\n{envoy.log_tail()}"


def test_a_timed_out_call_answers_every_coalesced_waiter_with_504(
    exchange_single, sts, backend, unique, new_subject
):
    n = 12
    subject = new_subject()
    release = threading.Event()
    sts.script(subject, h.StsAnswer(hold=release))
    paths = [unique("/corp-slow/") for _ in range(n)]
    host_errors = exchange_single.counter("host_error")
    with h.CounterDelta(exchange_single, xs.COUNTERS) as d:
        started = time.monotonic()
        try:
            with ThreadPoolExecutor(max_workers=n) as pool:
                responses = list(
                    pool.map(
                        lambda p: h.request(exchange_single.port("te"), p, [("authorization", f"Bearer {subject}")]),
                        paths,
                    )
                )
        finally:
            release.set()
        elapsed = time.monotonic() - started

    for path, resp in zip(paths, responses):
        xs.assert_exchange_error(resp, 504, "gateway_timeout", secrets=[subject])
        sc.assert_backend_not_called(backend, path)
    assert elapsed < SLOW_TIMEOUT_S * 2 + MARGIN_S, f"{elapsed:.1f}s"
    calls = len(sts.calls_for(subject))
    delta = d.delta()
    # one call per wave of misses that met on the worker; each call's waiters share its 504
    assert delta[xs.TIMEOUT] == calls and delta[xs.COALESCED] == n - calls, (calls, delta)
    assert delta[xs.CACHE_MISS] == n
    assert_envoy_healthy_single(exchange_single, host_errors)


def assert_envoy_healthy_single(envoy: h.Envoy, host_errors_before: int) -> None:
    assert envoy.proc is not None and envoy.proc.poll() is None, envoy.log_tail()
    assert envoy.admin_get("/ready") == (200, "LIVE\n")
    assert envoy.counter("host_error") == host_errors_before
    log = envoy.log_text()
    for sign in TRAP_SIGNS:
        assert sign not in log, f"{sign!r} in the Envoy log:\n{envoy.log_tail()}"


BAD_ISSUED_TOKENS = {
    "crlf": "xt-issued\r\nx-injected: 1",
    "lf": "xt-issued\nx-injected: 1",
    "nul": "xt-issued\u0000x",
    "space": "xt-issued x-injected",
    "tab": "xt-issued\tx",
    "non-ascii": "xt-issu\u00e9d",
    "del": "xt-issued\u007f",
}


@pytest.mark.parametrize("case", list(BAD_ISSUED_TOKENS))
def test_issued_token_that_is_not_a_clean_bearer_token_is_a_502(
    exchange, sts, backend, unique, new_subject, case
):
    token = BAD_ISSUED_TOKENS[case]
    subject = new_subject()
    sts.script(subject, h.StsAnswer.token(access_token=token, token_type="Bearer",
                                          issued_token_type=h.ACCESS_TOKEN_URN, expires_in=300))
    path = unique("/corp/")
    with h.CounterDelta(exchange, xs.COUNTERS) as d:
        resp = h.request(exchange.port("te"), path, [("authorization", f"Bearer {subject}")])

    xs.assert_exchange_error(resp, 502, "bad_gateway", secrets=[subject, "xt-issued", "x-injected"])
    sc.assert_backend_not_called(backend, path)
    assert d.delta() == xs.deltas(cache_miss=1, bad_response=1)
