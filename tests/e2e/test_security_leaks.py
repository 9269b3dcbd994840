"""Security matrix: no token or secret leaks into Envoy's logs, admin pages or error bodies.

Two Envoys run every listener of the gateway, upstream and exchange setups (all strategies, both
placements, the scripted STS) and the same traffic: successes, cache hits, each missing-token and
exchange failure class, a backend 401. Then the actual values are searched for: gateway tokens,
upstream tokens, the header_injection and STS client secrets (from the environment), subject and
issued tokens, the Basic credentials sent to the STS.

* ``leaks-wasm-trace`` logs ``-l info --component-log-level wasm:trace``: no value anywhere.
* ``leaks-trace`` logs ``-l trace`` (everything): Envoy's own HTTP components then print whole
  header maps, tokens included (Envoy's doing; never run production at debug). The filter's lines
  and Envoy's wasm host-call tracing still hold no value.
* ``/stats`` (text, JSON, Prometheus), ``/config_dump`` and the other admin pages: no value the
  filter handles; ``config_dump`` shows the operator's inline values (``headerValue``, the
  set_metadata tokens of these test configs) but never the ``headerValueEnv`` /
  ``clientSecretEnv`` secrets.
* Every answer that did not come from a backend (the filter's and Envoy's error replies): no value.
"""

from __future__ import annotations

import base64
import os
import re
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

import exchange_scenarios as xs
import harness as h
import scenarios as sc

E = h.StsAnswer.error
UNUSABLE = "xt-unusable-answer-token-leak-check"
ADMIN_PAGES = [
    "/stats",
    "/stats?format=json",
    "/stats/prometheus",
    "/config_dump",
    "/config_dump?include_eds",
    "/clusters",
    "/listeners",
    "/server_info",
    "/runtime",
    "/memory",
    "/certs",
]
# Values the test configs themselves carry (set_metadata stands in for the auth filter, and some
# header_injection values are inline): the operator's own config, so config_dump shows them.
IN_CONFIG = {
    sc.GITHUB_TOKEN,
    sc.ATLASSIAN_TOKEN,
    sc.UPSTREAM_GITHUB_TOKEN,
    sc.DEFAULTS_GITHUB_TOKEN,
    sc.CUSTOM_NS_GITHUB_TOKEN,
    xs.TE_GITHUB_TOKEN,
    sc.DEFAULT_HEADER[1],
    sc.BASIC_AUTH.removeprefix("Basic "),
}
LOG_LINE = re.compile(r"^\[[^\]]+\]\[\d+\]\[(\w+)\]\[([\w.-]+)\]")


def leak_config(wasm: Path, backend_port: int, ext_authz_port: int, sts_port: int, closed_port: int) -> dict:
    """Every listener of the gateway, upstream and exchange setups in one Envoy."""
    parts = [
        sc.gateway_config(wasm, backend_port, ext_authz_port),
        sc.upstream_config(wasm, backend_port),
        xs.exchange_config(wasm, backend_port, sts_port, closed_port),
    ]
    listeners = [lst for p in parts for lst in p["static_resources"]["listeners"]]
    clusters = {c["name"]: c for p in parts for c in p["static_resources"]["clusters"]}
    return h.bootstrap(listeners, list(clusters.values()))


@dataclass
class Drive:
    envoy: h.Envoy
    gateway_tokens: list[str]
    replies: list[tuple[str, h.Response]]  # answers that did not come from a backend


def drive(envoy: h.Envoy, sts: h.ScriptedSts, backend: h.EchoBackend) -> Drive:
    """The same traffic for each Envoy: every strategy, outcome and failure class."""
    tag = os.urandom(6).hex()
    gw = f"gw-leak-{tag}"
    tokens = [gw]
    replies: list[tuple[str, h.Response]] = []

    def go(listener: str, path: str, token: str, extra: list[tuple[str, str]] | None = None) -> None:
        path = f"{path}leak-{tag}-{len(replies)}-{os.urandom(3).hex()}"
        resp = h.request(envoy.port(listener), path, [("authorization", f"Bearer {token}"), *(extra or [])])
        if not backend.requests_for(path):
            replies.append((f"{listener} {path}", resp))

    for prefix in ("/github/", "/atlassian/", "/slack/", "/gitlab/", "/internal/", "/basic/", "/public/",
                   "/unknown-backend/", "/sel/cluster-name/", "/sel/cluster-metadata/"):
        go("tokens", prefix, gw)
    for prefix in ("/bare/github/", "/bare/unknown/"):
        go("bare", prefix, gw)
    go("defaults", "/defaults/github/", gw)
    go("custom-ns", "/custom-ns/github/", gw)
    for user in ("alice", "carol", "dave", "mallory"):
        go("extauthz", "/az/github/", f"gw-{user}-token")
    for prefix in ("/up/github/", "/up/slack/", "/up/internal/", "/up/plain/"):
        go("up", prefix, gw)

    def subject() -> str:
        s = f"subj-leak-{tag}-{os.urandom(6).hex()}"
        tokens.append(s)
        return s

    ok = subject()
    for _ in range(2):  # a miss, then a cache hit
        go("te", "/corp/", ok)
    go("te", "/corp/", ok, [(h.ECHO_STATUS_HEADER, "401")])  # evicts
    for listener, prefix in (("te", "/corp-public/"), ("te", "/corp-provider/"), ("te-bare", "/corp-provider/"),
                             ("te-up", "/up-corp/"), ("te-nocache", "/corp/"), ("te-default-ttl", "/corp/"),
                             ("te", "/corp-unknown-cluster/"), ("te", "/corp-refused/")):
        go(listener, prefix, subject())
    for answer in (
        E(400, "invalid_grant"),
        E(400, "invalid_target"),
        E(401, "invalid_client"),
        h.StsAnswer(200, f'{{"access_token": "{UNUSABLE}"'.encode()),
        h.StsAnswer.token(access_token=UNUSABLE, token_type="N_A", issued_token_type=h.ACCESS_TOKEN_URN),
        E(503, "temporarily_unavailable"),
        E(504, "gateway_timeout"),
        h.StsAnswer(reset=True),
    ):
        s = subject()
        sts.script(s, answer)
        go("te", "/corp/", s)
    slow = subject()
    release = threading.Event()
    sts.script(slow, h.StsAnswer(hold=release))
    try:
        go("te", "/corp-slow/", slow)
    finally:
        release.set()
    return Drive(envoy, tokens, replies)


@dataclass
class Leaks:
    wasm_trace: Drive
    trace: Drive
    secrets: list[str]  # every value, config-held ones included
    never_in_config: list[str]  # the values config_dump must not show


@pytest.fixture(scope="module")
def leaks(envoy_bin, wasm_path, workdir, backend, ext_authz_service, sts) -> Iterator[Leaks]:
    closed_port = h.free_ports(1)[0]
    config = leak_config(wasm_path, backend.port, ext_authz_service.port, sts.port, closed_port)
    env = {**sc.ENV, **xs.ENV}
    envoys = [
        h.Envoy("leaks-wasm-trace", config, workdir, envoy_bin, env=env, component_log_level="wasm:trace,dynamic_modules:trace"),
        h.Envoy("leaks-trace", config, workdir, envoy_bin, env=env, log_level="trace", component_log_level="wasm:trace,dynamic_modules:trace"),
    ]
    try:
        for envoy in envoys:
            envoy.launch()
        for envoy in envoys:
            envoy._wait_ready()
            envoy._read_listener_ports()
        calls_before = len(sts.calls)
        drives = [drive(envoy, sts, backend) for envoy in envoys]
        calls = sts.calls[calls_before:]
        client_auth = [v.removeprefix("Basic ") for c in calls for v in c.values("authorization")]
        issued = [t for d in drives for s in d.gateway_tokens for t in sts.issued_for(s)]
        extauthz = [t for user in sc.EXTAUTHZ_USERS.values() for t in user.values() if t]
        never_in_config = [
            *[t for d in drives for t in d.gateway_tokens],
            *[f"gw-{u}-token" for u in ("alice", "bob", "carol", "dave", "mallory")],
            *extauthz,
            *issued,
            *client_auth,
            sc.INTERNAL_KEY,
            xs.CLIENT_SECRET,
            urllib.parse.quote_plus(xs.CLIENT_SECRET),
            UNUSABLE,
        ]
        assert client_auth and issued, "the drive exercised no authenticated exchange"
        secrets = sorted({*never_in_config, *IN_CONFIG})
        yield Leaks(drives[0], drives[1], secrets, sorted(set(never_in_config)))
    finally:
        for envoy in envoys:
            envoy.stop()


def lines_with(log: str, secrets: list[str]) -> list[tuple[str, str, str]]:
    """(component, secret, line) for each log line holding a secret; a continuation line (a header
    map Envoy prints over several lines) belongs to the last line that had a prefix."""
    found = []
    component = "?"
    for line in log.splitlines():
        m = LOG_LINE.match(line)
        if m:
            component = m.group(2)
        for s in secrets:
            if s in line:
                found.append((component, s, line[:300]))
    return found


def test_with_wasm_trace_logging_no_value_appears_in_the_log(leaks):
    envoy = leaks.wasm_trace.envoy
    log = envoy.log_text()
    assert f"][{envoy.filter_logger}]" in log and envoy.filter_log_mark in log, envoy.log_tail()
    found = lines_with(log, leaks.secrets)
    assert not found, f"values in the {envoy.name} log: {found[:10]}"


def test_with_trace_logging_only_envoys_own_header_dumps_show_values(leaks):
    envoy = leaks.trace.envoy
    log = envoy.log_text()
    assert f"][{envoy.filter_logger}]" in log and "[trace][http]" in log, envoy.log_tail()
    found = lines_with(log, leaks.secrets)
    assert found, "Envoy at trace level prints header maps; finding none means the check is broken"
    in_filter = [f for f in found if f[0] == envoy.filter_logger or envoy.filter_log_mark in f[2]]
    assert not in_filter, f"values in the filter's lines: {in_filter[:10]}"
    # the components that do print them: Envoy's HTTP machinery dumping header maps (the
    # client's, and the upstream request's with the injected credential), and the config loader
    # dumping the config, which holds the operator's inline values only
    components = {f[0] for f in found}
    assert components <= {"http", "router", "client", "pool", "config"}, components
    in_config_lines = {s for c, s, _ in found if c == "config"}
    assert in_config_lines <= IN_CONFIG, in_config_lines - IN_CONFIG


@pytest.mark.parametrize("which", ["wasm_trace", "trace"])
def test_stats_hold_no_value(leaks, which):
    envoy = getattr(leaks, which).envoy
    for page in ("/stats", "/stats?format=json", "/stats/prometheus"):
        status, body = envoy.admin_get(page)
        assert status == 200, body[:500]
        assert "outgoing_auth" in body
        sc.assert_no_secrets(body, leaks.secrets, f"admin {page}")


def test_config_dump_shows_inline_values_but_no_environment_secret_nor_token(leaks):
    envoy = leaks.wasm_trace.envoy
    status, dump = envoy.admin_get("/config_dump?include_eds")
    assert status == 200, dump[:500]
    # the operator's own inline values are there (what the *Env forms avoid), with the names of
    # the environment variables, never their values
    assert sc.DEFAULT_HEADER[1] in dump and "INTERNAL_KEY" in dump and xs.SECRET_ENV in dump
    sc.assert_no_secrets(dump, leaks.never_in_config, "/config_dump")


@pytest.mark.parametrize("page", [p for p in ADMIN_PAGES if not p.startswith("/config_dump")])
def test_other_admin_pages_hold_no_value(leaks, page):
    status, body = leaks.wasm_trace.envoy.admin_get(page)
    assert status == 200, body[:500]
    sc.assert_no_secrets(body, leaks.secrets, f"admin {page}")


def test_no_reply_that_did_not_come_from_a_backend_holds_a_value(leaks):
    replies = leaks.wasm_trace.replies + leaks.trace.replies
    statuses = sorted({r.status for _, r in replies})
    assert {401, 403, 502, 503, 504} <= set(statuses), statuses
    for where, resp in replies:
        blob = resp.body.decode(errors="replace") + "\n" + "\n".join(f"{k}: {v}" for k, v in resp.headers)
        sc.assert_no_secrets(blob, [*leaks.secrets, h.STS_PRIVATE_DETAIL], f"the reply to {where}")


def test_basic_client_credentials_are_form_encoded_then_base64(leaks):
    """Guards the secret list above: the STS Basic header is searched for in its exact form."""
    form = urllib.parse.quote_plus
    expected = base64.b64encode(f"{form(xs.CLIENT_ID)}:{form(xs.CLIENT_SECRET)}".encode()).decode()
    assert expected in leaks.secrets
