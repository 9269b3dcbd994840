"""Security matrix: the client's gateway token never reaches a backend, under any strategy or failure.

Every case sends a gateway token used nowhere else, through one strategy and one outcome: each
strategy in both placements, every way a backend is named, the 401 of a missing or unusable
upstream token, every class of token exchange failure (401, 403, 502, 503, 504), the cache and
the exchange of an upstream token, a backend answering 401 (the evicting path) or 5xx, and the
odd ways a client writes ``Authorization``. For each case the client gets its defined status, the
token is in no header any recording backend ever received (all paths, all backends, not just
this request's), nor in the client's answer unless a backend echoed it (it never does). The STS
sees it only when it is the subject of the exchange, and never under ``subjectProviderName``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import pytest

import exchange_scenarios as xs
import harness as h
import scenarios as sc

E = h.StsAnswer.error


@dataclass(frozen=True)
class Case:
    envoy: str  # fixture name
    listener: str
    prefix: str
    status: int
    sts: h.StsAnswer | None = None  # scripted for this case's token as the subject
    headers: tuple[tuple[str, str], ...] = ()  # sent besides the gateway token
    # how the gateway token is written; {t} is the token
    authorization: tuple[str, ...] = ("Bearer {t}",)
    subject_to_sts: bool = False  # the token is the exchange's subject: the STS must see it
    held: bool = False  # the STS holds its answer past the strategy's timeout


ECHO_401 = ((h.ECHO_STATUS_HEADER, "401"),)
ECHO_503 = ((h.ECHO_STATUS_HEADER, "503"),)

CASES: dict[str, Case] = {
    # upstream_inject, header_injection, unauthenticated, default; listener placement
    "inject": Case("gateway", "tokens", "/github/", 200),
    "inject-other-provider": Case("gateway", "tokens", "/atlassian/", 200),
    "inject-token-missing-401": Case("gateway", "tokens", "/slack/", 401),
    "inject-token-empty-401": Case("gateway", "tokens", "/gitlab/", 401),
    "inject-no-metadata-401": Case("gateway", "bare", "/bare/github/", 401),
    "inject-backend-401": Case("gateway", "tokens", "/github/", 401, headers=ECHO_401),
    "inject-backend-503": Case("gateway", "tokens", "/github/", 503, headers=ECHO_503),
    "header-from-env": Case("gateway", "tokens", "/internal/", 200),
    "header-into-authorization": Case("gateway", "tokens", "/basic/", 200),
    "unauthenticated": Case("gateway", "tokens", "/public/", 200),
    "unauthenticated-backend-503": Case("gateway", "tokens", "/public/", 503, headers=ECHO_503),
    "default-strategy": Case("gateway", "tokens", "/unknown-backend/", 200),
    "no-default-unauthenticated": Case("gateway", "bare", "/bare/unknown/", 200),
    "named-by-cluster-metadata": Case("gateway", "tokens", "/sel/cluster-metadata/", 200),
    "named-by-cluster-name": Case("gateway", "tokens", "/sel/cluster-name/", 200),
    "named-by-nothing": Case("gateway", "tokens", "/sel/unknown-cluster/", 200),
    "sources-cluster-name-only": Case("gateway", "sources", "/sources/route-metadata/", 200),
    "default-token-location": Case("gateway", "defaults", "/defaults/github/", 200),
    "custom-token-location": Case("gateway", "custom-ns", "/custom-ns/github/", 200),
    # cluster (upstream) placement
    "cluster-filter-inject": Case("upstream", "up", "/up/github/", 200),
    "cluster-filter-token-missing-401": Case("upstream", "up", "/up/slack/", 401),
    "cluster-filter-header": Case("upstream", "up", "/up/internal/", 200),
    "cluster-filter-unauthenticated": Case("upstream", "up", "/up/plain/", 200),
    # unusable metadata values (security matrix Envoy)
    "odd-metadata-crlf-401": Case("security", "meta", "/m/crlf/", 401),
    "odd-metadata-number-401": Case("security", "meta", "/m/printable-number/", 401),
    "odd-subject-provider-401": Case("security", "meta", "/te/struct/", 401),
    # token_exchange of the client's own token: the STS gets it, the backend never
    "exchange": Case("exchange", "te", "/corp/", 200, subject_to_sts=True),
    "exchange-no-client-auth": Case("exchange", "te", "/corp-public/", 200, subject_to_sts=True),
    "exchange-cluster-filter": Case("exchange", "te-up", "/up-corp/", 200, subject_to_sts=True),
    "exchange-no-cache": Case("exchange", "te-nocache", "/corp/", 200, subject_to_sts=True),
    "exchange-default-ttl": Case("exchange", "te-default-ttl", "/corp/", 200, subject_to_sts=True),
    "exchange-backend-401-evicts": Case("exchange", "te", "/corp/", 401, headers=ECHO_401, subject_to_sts=True),
    "exchange-backend-503": Case("exchange", "te", "/corp/", 503, headers=ECHO_503, subject_to_sts=True),
    "exchange-invalid-grant-401": Case("exchange", "te", "/corp/", 401, E(400, "invalid_grant"), subject_to_sts=True),
    "exchange-invalid-target-403": Case("exchange", "te", "/corp/", 403, E(400, "invalid_target"), subject_to_sts=True),
    "exchange-invalid-client-502": Case("exchange", "te", "/corp/", 502, E(401, "invalid_client"), subject_to_sts=True),
    "exchange-garbage-502": Case(
        "exchange", "te", "/corp/", 502, h.StsAnswer(200, b'{"access_token": "{t}"'), subject_to_sts=True
    ),
    "exchange-sts-500-503": Case("exchange", "te", "/corp/", 503, E(500, "server_error"), subject_to_sts=True),
    "exchange-sts-reset-503": Case("exchange", "te", "/corp/", 503, h.StsAnswer(reset=True), subject_to_sts=True),
    "exchange-sts-504": Case("exchange", "te", "/corp/", 504, E(504, "gateway_timeout"), subject_to_sts=True),
    "exchange-sts-timeout-504": Case("exchange", "te", "/corp-slow/", 504, subject_to_sts=True, held=True),
    "exchange-unknown-cluster-503": Case("exchange", "te", "/corp-unknown-cluster/", 503),
    "exchange-refused-503": Case("exchange", "te", "/corp-refused/", 503),
    # token_exchange of an upstream token: the client's token reaches neither the STS nor the backend
    "exchange-subject-provider": Case("exchange", "te", "/corp-provider/", 200),
    "exchange-subject-provider-missing-401": Case("exchange", "te-bare", "/corp-provider/", 401),
    # odd ways to write Authorization
    "lowercase-scheme-inject": Case("gateway", "tokens", "/github/", 200, authorization=("bearer {t}",)),
    "basic-scheme-unauthenticated": Case("gateway", "tokens", "/public/", 200, authorization=("Basic {t}",)),
    "two-headers-inject": Case("gateway", "tokens", "/github/", 200, authorization=("Bearer {t}", "Bearer {t}-2")),
    "two-headers-header-injection": Case(
        "gateway", "tokens", "/internal/", 200, authorization=("Bearer {t}", "Bearer {t}-2")
    ),
    "two-headers-unauthenticated": Case(
        "gateway", "tokens", "/public/", 200, authorization=("Bearer {t}", "Bearer {t}-2")
    ),
    # Envoy hands the filter both values joined ("Bearer a,Bearer b"): not one bearer token, so
    # an exchange of the client's own token refuses it rather than pick one
    "two-headers-exchange-401": Case("exchange", "te", "/corp/", 401, authorization=("Bearer {t}", "Bearer {t}-2")),
    "two-headers-cluster-filter": Case("upstream", "up", "/up/plain/", 200, authorization=("Bearer {t}", "Bearer {t}-2")),
    "no-scheme-exchange-401": Case("exchange", "te", "/corp/", 401, authorization=("{t}",)),
}


def all_backend_headers(backends: list[h.EchoBackend]) -> str:
    return "\n".join(r.path + "\n" + r.header_blob() for b in backends for r in b.all_requests())


@pytest.mark.parametrize("name", list(CASES))
def test_gateway_token_never_reaches_a_backend(request, wasm_path, backend, choice_backends, sts, unique, name):
    # wasm_path: run once per build (the Envoy fixture is looked up by name below).
    case = CASES[name]
    envoy: h.Envoy = request.getfixturevalue(case.envoy)
    token = f"gw-matrix-{os.urandom(8).hex()}"
    release = threading.Event()
    if case.held:
        sts.script(token, h.StsAnswer(hold=release))
    elif case.sts is not None:
        answer = case.sts
        if isinstance(answer.body, bytes):
            answer = h.StsAnswer(answer.status, answer.body.replace(b"{t}", token.encode()))
        sts.script(token, answer)
    headers = [("authorization", a.format(t=token)) for a in case.authorization] + list(case.headers)
    path = unique(case.prefix)
    sts_calls_before = len(sts.calls)
    try:
        resp = h.request(envoy.port(case.listener), path, headers)
    finally:
        release.set()

    assert resp.status == case.status, resp.describe()
    # no backend ever received it, on any path
    everything = all_backend_headers([backend, *choice_backends.values()])
    assert token not in everything, f"the gateway token reached a backend ({name})"
    # the client's answer: a backend's echo (without it) or a local reply (without it)
    answer = resp.body.decode(errors="replace") + "\n".join(f"{k}: {v}" for k, v in resp.headers)
    assert token not in answer, resp.describe()
    if resp.status == 200 or case.headers:
        assert len(backend.requests_for(path)) == 1, f"the backend did not answer {name}"
    else:
        sc.assert_backend_not_called(backend, path)
    # the STS: the subject when the client's token is exchanged, otherwise never
    calls = sts.calls[sts_calls_before:]
    if case.subject_to_sts:
        assert [c.subject for c in calls if token in c.blob()] == [token], calls
    else:
        assert not [c for c in calls if token in c.blob()], calls


def test_no_sts_subject_of_the_session_ever_reached_a_backend(backend, choice_backends, sts):
    """Every subject token the STS was sent so far in the session (the cases above, and the
    modules before this one: clients' own tokens and upstream tokens) is absent from every header
    any backend received, except the security matrix's upstream tokens that its upstream_inject
    routes inject legitimately."""
    import security_scenarios as ss

    injected_elsewhere = set(ss.ACCEPTED.values())
    subjects = {c.subject for c in sts.calls if c.subject} - injected_elsewhere
    assert subjects, "no exchange ran before this test"
    everything = all_backend_headers([backend, *choice_backends.values()])
    leaked = sorted(s for s in subjects if s in everything)
    assert not leaked, f"subject tokens that reached a backend: {leaked}"
    assert xs.TE_GITHUB_TOKEN not in everything
