"""The Envoy setups of the ``token_exchange`` tests (RFC 8693), as config builders, and their values.

* ``exchange`` / ``exchange-single`` (session fixtures): the filter in the listener chain, the STS
  is ``harness.ScriptedSts``. The same config runs with two workers (the cache is shared between
  them) and with one (coalescing of identical misses happens per worker). Listeners:
  - ``te``: set_metadata supplies a GitHub token; one route per exchange backend;
  - ``te-bare``: the same filter, no metadata at all (the subject provider's token is missing);
  - ``te-up``: the filter as a cluster (upstream) filter of the backend's cluster;
  - ``te-nocache`` (``maxEntries: 0``), ``te-default-ttl`` (``defaultTtlSeconds: 60``): the
    corp-api backend under other cache settings.
* ``authgent`` Envoy (module fixture of test_token_exchange_authgent): the filter against the
  real third-party STS authgent-server; built in that module from the clients it registers.
"""

from __future__ import annotations

from pathlib import Path

import harness as h
import scenarios as sc

# --------------------------------------------------------------------------------------------
# Values the tests assert on

# Client authentication to the STS: both need form-encoding before Basic (RFC 6749 §2.3.1).
CLIENT_ID = "proxy-filter@corp"
CLIENT_SECRET = "s3cr:et/+=&%$ecret value"
SECRET_ENV = "STS_CLIENT_SECRET"

# tokenUrl names a host that does not resolve: the call goes to the ``sts`` cluster, and the
# :authority and :path (query included, RFC 6749 §3.2) come from this URL.
TOKEN_URL_AUTHORITY = "sts.corp.example:8443"
TOKEN_URL_PATH = "/oauth2/token?tenant=acme"
TOKEN_URL = f"http://{TOKEN_URL_AUTHORITY}{TOKEN_URL_PATH}"

AUDIENCE = "https://corp-api.example"
SCOPES = ["read", "corp:write"]
SLOW_TIMEOUT_MS = 300

# The GitHub token set_metadata writes on the te listener (subjectProviderName mode).
TE_GITHUB_TOKEN = "gho_exchange_subject_github_token"

ENV = {SECRET_ENV: CLIENT_SECRET}

TE = "token_exchange."
OK = TE + "ok"
CACHE_HIT = TE + "cache_hit"
CACHE_MISS = TE + "cache_miss"
COALESCED = TE + "coalesced"
CACHE_EVICTED = TE + "cache_evicted"
SUBJECT_MISSING = TE + "subject_missing"
SUBJECT_MALFORMED = TE + "subject_malformed"
SUBJECT_REJECTED = TE + "subject_rejected"
FORBIDDEN = TE + "forbidden"
BAD_RESPONSE = TE + "bad_response"
UNAVAILABLE = TE + "unavailable"
TIMEOUT = TE + "timeout"
COUNTERS = (
    OK,
    CACHE_HIT,
    CACHE_MISS,
    COALESCED,
    CACHE_EVICTED,
    SUBJECT_MISSING,
    SUBJECT_MALFORMED,
    SUBJECT_REJECTED,
    FORBIDDEN,
    BAD_RESPONSE,
    UNAVAILABLE,
    TIMEOUT,
)


def deltas(**moved: int) -> dict[str, int]:
    """Every token_exchange counter, 0 unless given: ``deltas(ok=1, cache_miss=1)``."""
    unknown = set(moved) - {c.removeprefix(TE) for c in COUNTERS}
    assert not unknown, f"not token_exchange counters: {unknown}"
    return {c: moved.get(c.removeprefix(TE), 0) for c in COUNTERS}


# --------------------------------------------------------------------------------------------
# Filter configs


def token_exchange(cluster: str = "sts", **fields) -> dict:
    """A token_exchange strategy for the scripted STS: client auth, audience and scopes unless
    overridden; a field given as None is left out."""
    te = {
        "tokenUrl": TOKEN_URL,
        "cluster": cluster,
        "clientId": CLIENT_ID,
        "clientSecretEnv": SECRET_ENV,
        "audience": AUDIENCE,
        "scopes": SCOPES,
        "subjectTokenType": "access_token",
        "timeoutMs": 5000,
    }
    te.update(fields)
    return {"type": "token_exchange", "tokenExchange": {k: v for k, v in te.items() if v is not None}}


EXCHANGE_FILTER_CONFIG = {
    "authServer": {"upstreams": ["github", "slack"], "tokens": sc.STRUCT_TOKENS},
    "exchangeCache": {"maxEntries": 1000, "safetyMarginSeconds": 30, "defaultTtlSeconds": 0},
    "outgoingAuth": {
        "source": "inline",
        "backends": {
            "corp-api": token_exchange(),
            "corp-slow": token_exchange(timeoutMs=SLOW_TIMEOUT_MS),
            # subject = the GitHub token from metadata, sent as a JWT
            "corp-provider": token_exchange(subjectProviderName="github", subjectTokenType="jwt"),
            # no client authentication, no audience, no scopes, subjectTokenType defaulted
            "corp-public": token_exchange(
                clientId=None, clientSecretEnv=None, audience=None, scopes=None, subjectTokenType=None
            ),
            "corp-unknown-cluster": token_exchange(cluster="no-such-cluster"),
            "corp-refused": token_exchange(cluster="sts-closed"),
        },
    },
}

# The same backends with other cache settings (listeners te-nocache and te-default-ttl).
NO_CACHE_FILTER_CONFIG = dict(EXCHANGE_FILTER_CONFIG, exchangeCache={"maxEntries": 0})
DEFAULT_TTL_S = 60
DEFAULT_TTL_FILTER_CONFIG = dict(
    EXCHANGE_FILTER_CONFIG,
    exchangeCache={"maxEntries": 1000, "safetyMarginSeconds": 30, "defaultTtlSeconds": DEFAULT_TTL_S},
)

# route prefix -> backend name, on the te listener
TE_ROUTES = {
    "/corp/": "corp-api",
    "/corp-slow/": "corp-slow",
    "/corp-provider/": "corp-provider",
    "/corp-public/": "corp-public",
    "/corp-unknown-cluster/": "corp-unknown-cluster",
    "/corp-refused/": "corp-refused",
}


# --------------------------------------------------------------------------------------------
# Envoy configs


def exchange_config(wasm: Path, backend_port: int, sts_port: int, closed_port: int) -> dict:
    def wasm_filter(config: dict = EXCHANGE_FILTER_CONFIG) -> dict:
        return h.auth_filter(config, wasm, host_env_keys=[SECRET_ENV])

    listeners = [
        h.http_listener(
            "te",
            [h.route(prefix, "backend", backend=name) for prefix, name in TE_ROUTES.items()],
            [h.set_metadata_filter({"upstream_tokens": {"github": TE_GITHUB_TOKEN}}), wasm_filter()],
        ),
        h.http_listener(
            "te-bare",
            [h.route("/corp-provider/", "backend", backend="corp-provider")],
            [wasm_filter()],
        ),
        h.http_listener("te-up", [h.route("/up-corp/", "up-corp")], []),
        h.http_listener(
            "te-nocache",
            [h.route("/corp/", "backend", backend="corp-api")],
            [wasm_filter(NO_CACHE_FILTER_CONFIG)],
        ),
        h.http_listener(
            "te-default-ttl",
            [h.route("/corp/", "backend", backend="corp-api")],
            [wasm_filter(DEFAULT_TTL_FILTER_CONFIG)],
        ),
    ]
    clusters = [
        h.cluster("backend", backend_port),
        h.cluster("up-corp", backend_port, backend="corp-api", upstream_filters=[wasm_filter()]),
        h.cluster("sts", sts_port),
        h.cluster("sts-closed", closed_port),
    ]
    return h.bootstrap(listeners, clusters, runtime=h.RECOMMENDED_RUNTIME)


# --------------------------------------------------------------------------------------------
# Assertions shared by the token_exchange test modules


def assert_exchange_error(
    resp: h.Response, status: int, error: str, secrets: list[str] | tuple[str, ...] = ()
) -> None:
    """The filter's JSON error answer: exact status and ``error``; a ``www-authenticate``
    challenge repeating error and description on 401 only; nothing of the STS's answer or any
    token in it."""
    assert resp.status == status, resp.describe()
    assert resp.header("content-type") == "application/json", resp.describe()
    body = resp.json()
    assert set(body) == {"error", "error_description"}, resp.describe()
    assert body["error"] == error, resp.describe()
    assert isinstance(body["error_description"], str) and body["error_description"], resp.describe()
    challenge = resp.header("www-authenticate")
    if status == 401:
        assert challenge == (
            f'Bearer error="{error}", error_description="{body["error_description"]}"'
        ), resp.describe()
    else:
        assert challenge is None, resp.describe()
    blob = resp.body.decode(errors="replace") + "\n" + "\n".join(f"{k}: {v}" for k, v in resp.headers)
    sc.assert_no_secrets(blob, [h.STS_PRIVATE_DETAIL, CLIENT_SECRET, *secrets], "the client's answer")


# --------------------------------------------------------------------------------------------
# The authgent-server setup

AG_EXCHANGE_TTL_S = 32  # authgent's expires_in for exchanged tokens
AG_SAFETY_MARGIN_S = 30  # so the filter caches them for 2 s
AG_AUDIENCE = "https://corp-api.example"
AG_PROVIDER_AUDIENCE = "https://corp-provider.example"
AG_SECRET_ENV = "AUTHGENT_PROXY_SECRET"
AG_WRONG_SECRET_ENV = "AUTHGENT_WRONG_SECRET"
AG_WRONG_SECRET = "sec_not-the-proxy-filter-secret"
AG_ROUTES = {
    "/ag/": "corp-api",
    "/ag-provider/": "corp-provider",
    "/ag-admin/": "corp-admin",
    "/ag-wrong-secret/": "corp-wrong-secret",
}


def authgent_filter_config(token_url: str, proxy_client_id: str, safety_margin_s: int = AG_SAFETY_MARGIN_S) -> dict:
    def te(**fields) -> dict:
        base = {
            "tokenUrl": token_url,
            "cluster": "authgent",
            "clientId": proxy_client_id,
            "clientSecretEnv": AG_SECRET_ENV,
            "audience": AG_AUDIENCE,
            "scopes": ["read"],
            "subjectTokenType": "access_token",
            "timeoutMs": 5000,
        }
        base.update(fields)
        return {"type": "token_exchange", "tokenExchange": base}

    return {
        "authServer": {"upstreams": ["github"], "tokens": sc.STRUCT_TOKENS},
        "exchangeCache": {"maxEntries": 100, "safetyMarginSeconds": safety_margin_s},
        "outgoingAuth": {
            "source": "inline",
            "backends": {
                "corp-api": te(),
                "corp-provider": te(subjectProviderName="github", audience=AG_PROVIDER_AUDIENCE),
                "corp-admin": te(scopes=["admin"]),  # a scope the proxy client never registered
                "corp-wrong-secret": te(clientSecretEnv=AG_WRONG_SECRET_ENV),
            },
        },
    }


def authgent_config(
    wasm: Path, backend_port: int, authgent_port: int, token_url: str, proxy_client_id: str, github_token: str
) -> dict:
    """Listener ``ag``: tokens cached for 2 s (32 s minus a 30 s margin). Listener ``ag-long``:
    the same with no margin, cached for 32 s, for counting calls without racing the expiry."""

    def listener(name: str, safety_margin_s: int) -> dict:
        wasm_filter = h.auth_filter(
            authgent_filter_config(token_url, proxy_client_id, safety_margin_s),
            wasm,
            host_env_keys=[AG_SECRET_ENV, AG_WRONG_SECRET_ENV],
        )
        return h.http_listener(
            name,
            [h.route(prefix, "backend", backend=name) for prefix, name in AG_ROUTES.items()],
            [h.set_metadata_filter({"upstream_tokens": {"github": github_token}}), wasm_filter],
        )

    return h.bootstrap(
        [listener("ag", AG_SAFETY_MARGIN_S), listener("ag-long", 0)],
        [h.cluster("backend", backend_port), h.cluster("authgent", authgent_port)],
    )
