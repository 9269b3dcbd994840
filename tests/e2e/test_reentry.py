"""Envoy runs the filter more than once on one client request: a cluster filter on every router
retry attempt, a listener filter again after an internal redirect. Every run must start from the
client's original request and give its backend exactly its own credential (reentry_scenarios).

Also here: the client credentials no backend receives (Proxy-Authorization, removeRequestHeaders,
removeCookies) under every strategy, with and without re-runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

import harness as h
import reentry_scenarios as rs
import scenarios as sc
import exchange_scenarios as xs

NAMES = list(rs.BACKENDS)

PROXY_AUTHORIZATION = "Basic cHJveHktdXNlcjpwcm94eS1zZWNyZXQ="
CLIENT_API_KEY = "client-own-api-key"
CLIENT_SESSION = "client-session-secret"
REMOVED_COOKIE_VALUES = {"BearerToken": "gw-cookie-bearer", "IdToken": "gw-cookie-id"}
KEPT_COOKIES = ["theme=dark", "lang=en"]


@pytest.fixture(scope="module")
def reentry(envoy_bin: Path, wasm_path: Path, workdir: Path, backend, sts) -> Iterator[h.Envoy]:
    config = rs.config(wasm_path, backend.port, sts.port)
    with h.Envoy("reentry", config, workdir, envoy_bin, env=xs.ENV) as envoy:
        yield envoy


def client_headers(gateway_token: str) -> list[tuple[str, str]]:
    """The client's own credentials: none of them may reach a backend (but as a strategy says)."""
    cookie = "; ".join(
        [KEPT_COOKIES[0], *(f"{k}={v}" for k, v in REMOVED_COOKIE_VALUES.items()), KEPT_COOKIES[1]]
    )
    return [
        ("authorization", f"Bearer {gateway_token}"),
        ("proxy-authorization", PROXY_AUTHORIZATION),
        ("x-api-key", CLIENT_API_KEY),
        ("x-client-session", CLIENT_SESSION),
        ("cookie", cookie),
    ]


def client_secrets(gateway_token: str) -> list[str]:
    return [gateway_token, PROXY_AUTHORIZATION, CLIENT_API_KEY, CLIENT_SESSION, *REMOVED_COOKIE_VALUES.values()]


def own_authorization(name: str, sts: h.ScriptedSts, gateway_token: str) -> list[str]:
    """The Authorization backend ``name`` must receive for this client."""
    if name == "github-mcp":
        return [f"Bearer {rs.GITHUB_TOKEN}"]
    if name == "corp-api":
        return [f"Bearer {t}" for t in sts.issued_for(gateway_token)[-1:]]
    if name == "corp-idp-exchange":
        return [f"Bearer {t}" for t in sts.issued_for(rs.CORP_IDP_TOKEN)[-1:]]
    return []


def assert_exactly_its_own_credential(
    seen: h.RecordedRequest, name: str, sts: h.ScriptedSts, gateway_token: str
) -> None:
    """``seen`` (what backend ``name`` received) carries its credential and nothing else's."""
    where = f"backend {name} at {seen.path}"
    authorization = own_authorization(name, sts, gateway_token)
    assert seen.values("authorization") == authorization, where
    if name in ("corp-api", "corp-idp-exchange"):
        assert authorization, f"{where}: no token was exchanged"
    assert seen.values("x-api-key") == ([rs.API_KEY] if name == "internal" else []), where
    assert seen.values("proxy-authorization") == [], where
    assert seen.values("x-client-session") == [], where
    cookies = [c.strip() for v in seen.values("cookie") for c in v.split(";")]
    assert cookies == KEPT_COOKIES, f"{where}: cookies {cookies}"
    others = [rs.CORP_IDP_TOKEN]
    others += [rs.GITHUB_TOKEN] if name != "github-mcp" else []
    others += [rs.API_KEY] if name != "internal" else []
    sc.assert_no_secrets(seen.header_blob(), [*client_secrets(gateway_token), *others], where)


# --------------------------------------------------------------------------------------------
# Router retries: the filter as a cluster filter runs again for every attempt


@pytest.mark.parametrize("name", NAMES)
def test_every_retry_attempt_carries_the_credential_of_the_clients_original_request(
    reentry, backend, sts, unique, new_subject, name
):
    gateway_token = new_subject()
    path = unique(f"/r/{name}/")
    headers = [*client_headers(gateway_token), (h.ECHO_FAIL_FIRST_HEADER, "1")]
    with h.CounterDelta(reentry, ["rerun", xs.CACHE_HIT, xs.CACHE_MISS, xs.OK]) as d:
        resp = h.request(reentry.port("retry"), path, headers)

    assert resp.status == 200, resp.describe()
    attempts = backend.requests_for(path)
    assert len(attempts) == 2, f"expected a failed attempt and its retry, got {len(attempts)}"
    for seen in attempts:
        assert_exactly_its_own_credential(seen, name, sts, gateway_token)
    assert attempts[0].values("authorization") == attempts[1].values("authorization")
    moved = d.delta()
    if name in ("internal", "corp-api", "corp-idp-exchange"):
        assert moved["rerun"] == 1, moved
    if name == "corp-api":
        # The retry exchanged the client's token again and found it cached: one STS call, for
        # the client's own token, never for the token issued to the first attempt.
        [call] = sts.calls_for(gateway_token)
        assert call.subject == gateway_token
        issued = sts.issued_for(gateway_token)
        assert len(issued) == 1 and sts.calls_for(issued[0]) == []
        assert (moved[xs.CACHE_MISS], moved[xs.OK], moved[xs.CACHE_HIT]) == (1, 1, 1), moved
    else:
        assert sts.calls_for(gateway_token) == [], "the gateway token went to the STS"
    assert sts.calls_for(rs.GITHUB_TOKEN) == [], "an injected upstream token went to the STS"


def test_a_retry_of_an_exchange_of_an_upstream_token_reuses_the_cached_exchange(
    reentry, backend, sts, unique, new_subject
):
    # Warm the cache for the IdP token, then retry: no second STS call.
    h.request(reentry.port("retry"), unique("/r/corp-idp-exchange/"), client_headers(new_subject()))
    calls = len(sts.calls_for(rs.CORP_IDP_TOKEN))
    gateway_token = new_subject()
    path = unique("/r/corp-idp-exchange/")
    resp = h.request(reentry.port("retry"), path, [*client_headers(gateway_token), (h.ECHO_FAIL_FIRST_HEADER, "1")])

    assert resp.status == 200, resp.describe()
    attempts = backend.requests_for(path)
    assert len(attempts) == 2
    for seen in attempts:
        assert_exactly_its_own_credential(seen, "corp-idp-exchange", sts, gateway_token)
    assert len(sts.calls_for(rs.CORP_IDP_TOKEN)) == calls, "a retry called the STS again"


# --------------------------------------------------------------------------------------------
# Internal redirects: the listener chain runs again on the redirected request


@pytest.mark.parametrize("target", NAMES)
@pytest.mark.parametrize("origin", NAMES)
def test_a_redirected_request_carries_only_its_new_backends_credential(
    reentry, backend, sts, unique, new_subject, origin, target
):
    gateway_token = new_subject()
    to_path = unique(f"/to-{target}/")
    from_path = unique(f"/from-{origin}/") + f"?{h.ECHO_REDIRECT_PARAM}={to_path}"
    calls_before = len(sts.calls)
    with h.CounterDelta(reentry, ["rerun"]) as d:
        resp = h.request(reentry.port("redirect"), from_path, client_headers(gateway_token))

    assert resp.status == 200, resp.describe()
    [first] = backend.requests_for(from_path)
    [redirected] = backend.requests_for(to_path)
    assert_exactly_its_own_credential(first, origin, sts, gateway_token)
    assert_exactly_its_own_credential(redirected, target, sts, gateway_token)
    # The STS only ever sees the subject a strategy names: the client's token for corp-api, the
    # IdP token for corp-idp-exchange (subjectProviderName); never a token another run set (the
    # GitHub token injected for github-mcp, a token issued for the first backend).
    allowed = {gateway_token} if "corp-api" in (origin, target) else set()
    allowed |= {rs.CORP_IDP_TOKEN} if "corp-idp-exchange" in (origin, target) else set()
    subjects = {c.subject for c in sts.calls[calls_before:]}
    assert subjects <= allowed, f"STS subjects {subjects}, allowed {allowed}"
    assert len(sts.calls_for(gateway_token)) <= 1, "the second exchange comes from the cache"
    assert d.delta()["rerun"] == 1


# --------------------------------------------------------------------------------------------
# Client credentials no backend receives, on a single run


@pytest.mark.parametrize("name", NAMES)
def test_proxy_authorization_and_listed_credentials_never_reach_a_backend(
    reentry, backend, sts, unique, new_subject, name
):
    gateway_token = new_subject()
    path = unique(f"/to-{name}/")
    resp = h.request(reentry.port("removal"), path, client_headers(gateway_token))

    seen = sc.only_request(backend, path, resp)
    assert_exactly_its_own_credential(seen, name, sts, gateway_token)


def test_a_cookie_header_of_listed_cookies_only_is_removed(reentry, backend, unique, new_subject):
    path = unique("/to-public/")
    cookie = "; ".join(f"{k}={v}" for k, v in REMOVED_COOKIE_VALUES.items())
    resp = h.request(reentry.port("removal"), path, [("cookie", cookie)])

    seen = sc.only_request(backend, path, resp)
    assert seen.values("cookie") == []


def test_repeated_cookie_headers_keep_their_unlisted_cookies(reentry, backend, unique):
    path = unique("/to-public/")
    headers = [("cookie", "theme=dark"), ("cookie", "BearerToken=gw-cookie-bearer; lang=en")]
    resp = h.request(reentry.port("removal"), path, headers)

    seen = sc.only_request(backend, path, resp)
    cookies = [c.strip() for v in seen.values("cookie") for c in v.replace(",", ";").split(";")]
    assert cookies == KEPT_COOKIES
    sc.assert_no_secrets(seen.header_blob(), ["gw-cookie-bearer"], "backend headers")


def test_cookies_without_a_listed_name_pass_untouched(reentry, backend, unique):
    path = unique("/to-public/")
    cookie = "theme=dark;  lang=en; bearertoken=not-listed-case"
    resp = h.request(reentry.port("removal"), path, [("cookie", cookie)])

    seen = sc.only_request(backend, path, resp)
    assert seen.values("cookie") == [cookie]
