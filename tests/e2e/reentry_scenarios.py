"""The Envoy of the re-entry tests (test_reentry.py): Envoy runs the filter more than once on one
client request, and every run must give its backend exactly its own credential.

* listener ``retry``: the filter as the cluster (upstream) filter of each backend's own cluster
  (``r-<backend>``); every route retries 5xx. The echo backend answers 503 to the first request
  of a path when the client asks (``x-echo-fail-first: 1``), so the router retries and the filter
  runs again on the headers its first run changed.
* listener ``redirect``: the filter in the listener chain. ``/from-<a>/`` routes to backend ``a``
  and follows its 302 (``internal_redirect_policy``) to ``/to-<b>/``, backend ``b``: Envoy runs
  the chain again on the redirected request, which still carries what the first run set.
* listener ``removal``: the same filter config in the listener chain, ``/to-<b>/`` only: the
  client credentials that no backend receives, without any re-run.

set_metadata supplies a GitHub and a corporate IdP token on every listener. The filter config lists client
credentials to remove (``removeRequestHeaders``, ``removeCookies``).
"""

from __future__ import annotations

from pathlib import Path

import exchange_scenarios as xs
import harness as h
import scenarios as sc

GITHUB_TOKEN = "gho_reentry_github_token"  # injected by upstream_inject, never an STS subject
CORP_IDP_TOKEN = "corp-idp-reentry-token"  # only ever the subject of corp-idp-exchange (300 s)
API_KEY = "reentry-internal-api-key"
REMOVED_HEADERS = ["X-Api-Key", "X-Client-Session"]
# The session cookies Envoy's oauth2 filter sets for the gateway's own login.
REMOVED_COOKIES = ["BearerToken", "IdToken", "RefreshToken", "OauthHMAC"]

BACKENDS: dict[str, dict] = {
    "github-mcp": sc.inject("github"),
    "internal": sc.header_inline("X-API-Key", API_KEY),
    "public": sc.UNAUTHENTICATED,
    "corp-api": xs.token_exchange(),  # the client's own bearer is the subject
    "corp-idp-exchange": xs.token_exchange(subjectProviderName="corp-idp"),
}

FILTER_CONFIG = {
    "authServer": {"upstreams": ["github", "corp-idp"], "tokens": sc.STRUCT_TOKENS},
    "removeRequestHeaders": REMOVED_HEADERS,
    "removeCookies": REMOVED_COOKIES,
    "outgoingAuth": {"backends": BACKENDS},
}

RETRY_POLICY = {"retry_on": "5xx", "num_retries": 2, "retry_back_off": {"base_interval": "0.01s"}}
REDIRECT_POLICY = {"max_internal_redirects": 1, "redirect_response_codes": [302]}


def config(wasm: Path, backend_port: int, sts_port: int) -> dict:
    def wasm_filter() -> dict:
        return h.auth_filter(FILTER_CONFIG, wasm, host_env_keys=[xs.SECRET_ENV])

    tokens = h.set_metadata_filter({"upstream_tokens": {"github": GITHUB_TOKEN, "corp-idp": CORP_IDP_TOKEN}})
    retry_routes = [h.route(f"/r/{name}/", f"r-{name}", retry_policy=RETRY_POLICY) for name in BACKENDS]
    redirect_routes = [
        h.route(f"/from-{name}/", "backend", backend=name, internal_redirect_policy=REDIRECT_POLICY)
        for name in BACKENDS
    ]
    to_routes = [h.route(f"/to-{name}/", "backend", backend=name) for name in BACKENDS]
    listeners = [
        h.http_listener("retry", retry_routes, [tokens]),
        h.http_listener("redirect", redirect_routes + to_routes, [tokens, wasm_filter()]),
        h.http_listener("removal", to_routes, [tokens, wasm_filter()]),
    ]
    clusters = [
        h.cluster("backend", backend_port),
        h.cluster("sts", sts_port),
        *(
            h.cluster(f"r-{name}", backend_port, backend=name, upstream_filters=[wasm_filter()])
            for name in BACKENDS
        ),
    ]
    return h.bootstrap(listeners, clusters)
