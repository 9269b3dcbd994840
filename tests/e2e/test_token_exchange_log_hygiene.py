"""No subject token, issued token or client secret of a token exchange shows up in Envoy's log,
with ``wasm:debug`` logging, after successes, cache hits, every class of failure and the
authgent-server exchanges. It drives that traffic itself, then reads the logs of every Envoy that
exchanged tokens in this session (what earlier tests did is checked too)."""

from __future__ import annotations

import threading

import exchange_scenarios as xs
import harness as h
import scenarios as sc

UNUSABLE = "xt-unusable-answer-token-for-log-check"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def secret_fragments(secrets: list[str]) -> list[str]:
    """Each secret, plus each long segment of a dotted one (a JWT's payload and signature): a
    log line holding part of a token is a leak too."""
    out: set[str] = set()
    for s in secrets:
        if not s:
            continue
        out.add(s)
        out.update(part for part in s.split(".") if len(part) >= 16 and not part.startswith("eyJhbGci"))
    return sorted(out)


def test_no_subject_issued_token_or_client_secret_appears_in_envoy_logs(
    exchange, exchange_single, authgent, sts, backend, unique, new_subject
):
    te = exchange.port("te")
    # successes, a cache hit, the cluster-filter placement, the subject provider
    ok = new_subject()
    for _ in range(2):
        h.request(te, unique("/corp/"), bearer(ok))
    h.request(te, unique("/corp-public/"), bearer(new_subject()))
    h.request(exchange.port("te-up"), unique("/up-corp/"), bearer(new_subject()))
    h.request(te, unique("/corp-provider/"), bearer(new_subject()))
    h.request(exchange.port("te-bare"), unique("/corp-provider/"), bearer(new_subject()))
    h.request(te, unique("/corp/"), [("authorization", "Basic dXNlcjpwYXNz")])
    for answer in (h.StsAnswer(), h.StsAnswer.error(400, "invalid_grant")):
        subject = new_subject()
        sts.script(subject, answer)
        h.request(exchange_single.port("te"), unique("/corp/"), bearer(subject))
    # each failure class, some answers carrying a token the filter refuses
    for answer in (
        h.StsAnswer.error(400, "invalid_grant"),
        h.StsAnswer.error(400, "invalid_target"),
        h.StsAnswer.error(401, "invalid_client"),
        h.StsAnswer(200, f'{{"access_token": "{UNUSABLE}"'.encode()),
        h.StsAnswer.token(access_token=UNUSABLE, token_type="N_A", issued_token_type=h.ACCESS_TOKEN_URN),
        h.StsAnswer.error(503, "temporarily_unavailable"),
        h.StsAnswer(reset=True),
    ):
        subject = new_subject()
        sts.script(subject, answer)
        h.request(te, unique("/corp/"), bearer(subject))
    slow = new_subject()
    release = threading.Event()
    sts.script(slow, h.StsAnswer(hold=release))
    try:
        h.request(te, unique("/corp-slow/"), bearer(slow))
    finally:
        release.set()
    for prefix in ("/corp-unknown-cluster/", "/corp-refused/"):
        h.request(te, unique(prefix), bearer(new_subject()))
    # authgent: a success, a refused subject, a wrong client secret
    ag_port = authgent.envoy.port("ag")
    h.request(ag_port, unique("/ag/"), bearer(authgent.server.client_credentials(authgent.app)))
    h.request(ag_port, unique("/ag/"), bearer("forged.not-a.jwt"))
    h.request(ag_port, unique("/ag-wrong-secret/"), bearer(authgent.server.client_credentials(authgent.app)))

    backend_bearers = [
        v.removeprefix("Bearer ")
        for r in backend.all_requests()
        for v in r.values("authorization")
        if v.startswith("Bearer ")
    ]
    secrets = secret_fragments(
        [
            *sts.all_tokens(),
            UNUSABLE,
            xs.CLIENT_SECRET,
            xs.TE_GITHUB_TOKEN,
            *[v.removeprefix("Basic ") for c in sts.calls for v in c.values("authorization")],
            *authgent.server.minted,
            authgent.github_token,
            authgent.proxy.secret,
            authgent.app.secret,
            xs.AG_WRONG_SECRET,
            *backend_bearers,
        ]
    )
    assert len(secrets) > 20, "the check would be vacuous"
    for envoy in (exchange, exchange_single, authgent.envoy):
        log = envoy.log_text()
        # the filter logged its exchanges' failures: this is the right file, at the right level
        assert envoy.filter_log_mark in log and "token exchange" in log, envoy.log_tail()
        leaked = {s: [line for line in log.splitlines() if s in line][:3] for s in secrets if s in log}
        assert not leaked, f"secrets in the {envoy.name} Envoy log: {leaked}"
    sc.assert_no_secrets(
        "\n".join(line for line in exchange.log_text().splitlines() if "wasm" in line),
        [h.STS_PRIVATE_DETAIL],
        "the exchange Envoy's wasm log lines",
    )
