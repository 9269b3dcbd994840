"""Security matrix: what the auth filter left in dynamic metadata cannot break the request.

A provider's entry with CR/LF/NUL/control characters, spaces, non-ASCII, over ``maxTokenBytes``,
or not a string at all (number, boolean, null, Struct, list; set with set_metadata) gets exactly
the 401 of a missing token, in both metadata layouts and both filter placements, and as a
token_exchange subject it never reaches the STS. A Struct of 5,000 entries yields each provider's
own token or a clean 401, also under concurrency, and the 401's log line stays bounded.

A Struct number is the subtle case: the nested metadata path hands the module its 8 raw ``f64``
bytes, and ``PRINTABLE_NUMBER``'s bytes are the visible ASCII ``gho_AAAA``; an 8-byte *string*
token (``eight``) must still work.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

import harness as h
import scenarios as sc
import security_scenarios as ss

GATEWAY_TOKEN = "gw-security-metadata-token"
GATEWAY = [("authorization", f"Bearer {GATEWAY_TOKEN}")]
SECRETS = [*ss.ODD_STRINGS, GATEWAY_TOKEN, "gho_AAAA"]
MISSING = "upstream_inject.token_missing"
INJECTED = "upstream_inject.injected"
SUBJECT_MISSING = "token_exchange.subject_missing"


def assert_refused(resp: h.Response, backend: h.EchoBackend, path: str, provider: str) -> None:
    sc.assert_missing_token_reply(resp, provider, secrets=SECRETS)
    sc.assert_backend_not_called(backend, path)
    assert "x-injected" not in resp.body.decode(errors="replace"), resp.describe()


@pytest.mark.parametrize("provider", sorted(ss.REFUSED))
@pytest.mark.parametrize("listener", ["meta", "meta-prefix"])
def test_unusable_metadata_value_gets_the_missing_token_401_and_nothing_is_injected(
    security, backend, unique, listener, provider
):
    path = unique(f"/m/{provider}/")
    with h.CounterDelta(security, [MISSING, INJECTED]) as d:
        resp = h.request(security.port(listener), path, GATEWAY)

    assert_refused(resp, backend, path, provider)
    assert d.delta() == {MISSING: 1, INJECTED: 0}


@pytest.mark.parametrize("provider", sorted(ss.ACCEPTED))
@pytest.mark.parametrize("listener", ["meta", "meta-prefix"])
def test_usable_metadata_value_is_injected_exactly(security, backend, unique, listener, provider):
    path = unique(f"/m/{provider}/")
    resp = h.request(security.port(listener), path, GATEWAY)

    seen = sc.only_request(backend, path, resp)
    assert seen.values("authorization") == [f"Bearer {ss.ACCEPTED[provider]}"]
    sc.assert_no_secrets(seen.header_blob(), [GATEWAY_TOKEN], "backend headers")


@pytest.mark.parametrize("provider", ss.UPSTREAM_SUBSET)
def test_cluster_filter_refuses_and_accepts_the_same_values(security, backend, unique, provider):
    path = unique(f"/m/{provider}/")
    resp = h.request(security.port("meta-up"), path, GATEWAY)

    if provider in ss.ACCEPTED:
        seen = sc.only_request(backend, path, resp)
        assert seen.values("authorization") == [f"Bearer {ss.ACCEPTED[provider]}"]
    else:
        assert_refused(resp, backend, path, provider)


@pytest.mark.parametrize("provider", [p for p in ss.EXCHANGED if p in ss.REFUSED])
def test_unusable_subject_provider_token_gets_401_and_never_reaches_the_sts(
    security, sts, backend, unique, provider
):
    calls_before = len(sts.calls)
    path = unique(f"/te/{provider}/")
    with h.CounterDelta(security, [SUBJECT_MISSING]) as d:
        resp = h.request(security.port("meta"), path, GATEWAY)

    assert_refused(resp, backend, path, provider)
    assert len(sts.calls) == calls_before, sts.calls[calls_before:]
    assert d.delta() == {SUBJECT_MISSING: 1}


@pytest.mark.parametrize("provider", [p for p in ss.EXCHANGED if p in ss.ACCEPTED])
def test_usable_subject_provider_token_is_exchanged(security, sts, backend, unique, provider):
    path = unique(f"/te/{provider}/")
    resp = h.request(security.port("meta"), path, GATEWAY)

    seen = sc.only_request(backend, path, resp)
    subject = ss.ACCEPTED[provider]
    assert sts.calls_for(subject), f"the STS never saw subject {subject!r}"
    assert seen.values("authorization") == [f"Bearer {sts.issued_for(subject)[-1]}"]


# --------------------------------------------------------------------------------------------
# 5,000 entries


@pytest.mark.parametrize("listener", ["big", "big-prefix"])
def test_each_provider_gets_its_own_token_out_of_5000_entries(security, backend, unique, listener):
    for provider, token in ss.BIG_USED.items():
        path = unique(f"/big/{provider}/")
        resp = h.request(security.port(listener), path, GATEWAY)
        seen = sc.only_request(backend, path, resp)
        assert seen.values("authorization") == [f"Bearer {token}"], provider


@pytest.mark.parametrize("listener", ["big", "big-prefix"])
def test_provider_missing_from_5000_entries_gets_401_and_a_bounded_log_line(
    security, backend, unique, listener
):
    path = unique(f"/big/{ss.BIG_MISSING}/")
    resp = h.request(security.port(listener), path, GATEWAY)

    sc.assert_missing_token_reply(resp, ss.BIG_MISSING, secrets=[*ss.big_values().values(), GATEWAY_TOKEN])
    sc.assert_backend_not_called(backend, path)
    lines = [line for line in security.log_text().splitlines() if f'provider "{ss.BIG_MISSING}"' in line]
    assert lines, security.log_tail()
    # every entry is counted, 16 are named, and no token value is in the line
    assert all(len(line) < 1500 for line in lines), max(lines, key=len)[:3000]
    assert all(f"{len(ss.big_values())} providers, the first 16:" in line for line in lines), lines[-1]
    sc.assert_no_secrets("\n".join(lines), list(ss.big_values().values()), "the 401's log lines")


def test_concurrent_requests_against_5000_entries_get_the_right_token_or_a_clean_401(
    security, backend, unique
):
    providers = [*ss.BIG_USED, ss.BIG_MISSING]
    jobs = [(listener, p, unique(f"/big/{p}/")) for _ in range(6) for listener in ("big", "big-prefix") for p in providers]

    def send(job: tuple[str, str, str]) -> h.Response:
        listener, _, path = job
        return h.request(security.port(listener), path, GATEWAY)

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(send, jobs))

    for (_, provider, path), resp in zip(jobs, responses):
        if provider == ss.BIG_MISSING:
            sc.assert_missing_token_reply(resp, provider, secrets=[GATEWAY_TOKEN])
            sc.assert_backend_not_called(backend, path)
        else:
            seen = sc.only_request(backend, path, resp)
            assert seen.values("authorization") == [f"Bearer {ss.BIG_USED[provider]}"], provider
    assert security.proc is not None and security.proc.poll() is None
