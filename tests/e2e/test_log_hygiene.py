"""No credential ever shows up in Envoy's log, even with ``wasm:debug`` logging.

Envoy itself (at ``info``, and at ``wasm:trace``) never logs header or metadata values, so any
token in the log would come from the filter's own log lines.
"""

from __future__ import annotations

import harness as h
import scenarios as sc

SECRETS = [
    "gw-alice-token",
    "gw-bob-token",
    "gw-carol-token",
    "gw-dave-token",
    "gw-mallory-token",
    sc.GITHUB_TOKEN,
    sc.ATLASSIAN_TOKEN,
    sc.INTERNAL_KEY,
    sc.BASIC_AUTH.removeprefix("Basic "),
    sc.DEFAULT_HEADER[1],
    sc.UPSTREAM_GITHUB_TOKEN,
    sc.DEFAULTS_GITHUB_TOKEN,
    sc.CUSTOM_NS_GITHUB_TOKEN,
    *[t for user in sc.EXTAUTHZ_USERS.values() for t in user.values() if t],
]


def test_no_token_or_secret_appears_in_envoy_logs(gateway, upstream, unique):
    gw = [("authorization", sc.GATEWAY_TOKEN)]
    for prefix in ("/github/", "/atlassian/", "/slack/", "/gitlab/", "/internal/", "/basic/",
                   "/public/", "/unknown-backend/", "/sel/cluster-name/"):
        h.request(gateway.port("tokens"), unique(prefix), gw)
    for prefix in ("/bare/github/", "/bare/unknown/"):
        h.request(gateway.port("bare"), unique(prefix), gw)
    for user in ("alice", "bob", "carol", "dave", "mallory"):
        h.request(gateway.port("extauthz"), unique("/az/github/"), [("authorization", f"Bearer gw-{user}-token")])
    h.request(gateway.port("defaults"), unique("/defaults/github/"), gw)
    h.request(gateway.port("custom-ns"), unique("/custom-ns/github/"), gw)
    for prefix in ("/up/github/", "/up/slack/", "/up/internal/", "/up/plain/"):
        h.request(upstream.port("up"), unique(prefix), gw)

    for envoy in (gateway, upstream):
        log = envoy.log_text()
        # the filter did log (its startup line at least): we are reading the right file
        assert envoy.filter_log_mark in log, envoy.log_tail()
        leaked = {s: [line for line in log.splitlines() if s in line][:3] for s in SECRETS if s in log}
        assert not leaked, f"secrets in the {envoy.name} Envoy log: {leaked}"
