"""Fixtures for the end-to-end tests: the real Envoy binary with the filter, loopback only.

``ENVOY_BIN`` and ``WASM_PATH`` must be set (``make test-e2e`` does it); when either is missing the
tests fail with a message saying so, they are never skipped.

The token_exchange tests add the scripted STS (``sts``), two Envoys exchanging through it
(``exchange``: two workers, ``exchange_single``: one) and ``authgent``: authgent-server, a real
third-party STS, with its clients and the Envoy that exchanges through it.

When a test fails, the tail of the log of every Envoy it used is attached to the report (and of
authgent-server, when the test used it).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

import authgent as ag
import exchange_scenarios as xs
import harness as h
import scenarios as sc
import security_scenarios as ss


def _required(name: str, hint: str = "") -> Path:
    try:
        return h.required_env_path(name)
    except RuntimeError as e:
        problem = f"{e}{hint}"
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def envoy_bin() -> Path:
    return _required("ENVOY_BIN")


BUILDS = ("wasm", "native")


@pytest.fixture(scope="session")
def wasm_only_path() -> h.Module:
    """The proxy-wasm module, for what only the wasm build has (VM failure policies, the demo and
    its docker-compose, which run the wasm)."""
    return h.Module.of("wasm", _required("WASM_PATH", " (build it with `make build`)"))


@pytest.fixture(scope="session", params=BUILDS)
def wasm_path(request: pytest.FixtureRequest) -> h.Module:
    """The filter under test: every test that runs it runs once per build, the proxy-wasm module
    (WASM_PATH) and the Envoy dynamic module (NATIVE_PATH, found by Envoy through
    ENVOY_DYNAMIC_MODULES_SEARCH_PATH)."""
    if request.param == "wasm":
        return h.Module.of("wasm", _required("WASM_PATH", " (build it with `make build`)"))
    native = _required("NATIVE_PATH", " (build it with `make build`)")
    os.environ["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(native.parent)
    return h.Module.of("native", native)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("envoy")


@pytest.fixture(scope="session")
def backend() -> Iterator[h.EchoBackend]:
    server = h.EchoBackend().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ext_authz_service() -> Iterator[h.ExtAuthzService]:
    server = h.ExtAuthzService(sc.EXTAUTHZ_USERS).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def router_authz() -> Iterator[h.ExtAuthzService]:
    """The ext_authz service of the mcp_router Envoys (router_scenarios.USERS)."""
    import router_scenarios as rs

    server = h.ExtAuthzService(rs.USERS).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gateway(
    envoy_bin: Path,
    wasm_path: Path,
    workdir: Path,
    backend: h.EchoBackend,
    ext_authz_service: h.ExtAuthzService,
) -> Iterator[h.Envoy]:
    """The filter in the listener chain (listeners ``tokens``, ``bare``, ``extauthz``)."""
    config = sc.gateway_config(wasm_path, backend.port, ext_authz_service.port)
    envoy = h.Envoy("gateway", config, workdir, envoy_bin, env=sc.ENV)
    with envoy:
        yield envoy


@pytest.fixture(scope="session")
def upstream(
    envoy_bin: Path, wasm_path: Path, workdir: Path, backend: h.EchoBackend
) -> Iterator[h.Envoy]:
    """The filter as a cluster (upstream) HTTP filter (listener ``up``)."""
    config = sc.upstream_config(wasm_path, backend.port)
    envoy = h.Envoy("upstream", config, workdir, envoy_bin, env=sc.ENV)
    with envoy:
        yield envoy


@pytest.fixture(scope="session")
def sts() -> Iterator[h.ScriptedSts]:
    """The scripted RFC 8693 STS of the token_exchange tests."""
    server = h.ScriptedSts().start()
    # The one subject shared by tests (set_metadata's GitHub token): its tokens are never
    # cached, so every request through corp-provider calls the STS whichever test ran before.
    server.script(xs.TE_GITHUB_TOKEN, h.StsAnswer(expires_in=None))
    yield server
    server.stop()


def _exchange_envoy(name: str, concurrency: int, envoy_bin, wasm_path, workdir, backend, sts):
    closed_port = h.free_ports(1)[0]  # nothing listens there: the STS cluster that refuses
    config = xs.exchange_config(wasm_path, backend.port, sts.port, closed_port)
    return h.Envoy(name, config, workdir, envoy_bin, env=xs.ENV, concurrency=concurrency)


@pytest.fixture(scope="session")
def exchange(envoy_bin, wasm_path, workdir, backend, sts) -> Iterator[h.Envoy]:
    """token_exchange against the scripted STS, two workers (listeners: exchange_scenarios)."""
    with _exchange_envoy("exchange", 2, envoy_bin, wasm_path, workdir, backend, sts) as envoy:
        yield envoy


@pytest.fixture(scope="session")
def exchange_single(envoy_bin, wasm_path, workdir, backend, sts) -> Iterator[h.Envoy]:
    """The same as ``exchange`` with one worker: every request meets the same in-flight calls."""
    with _exchange_envoy("exchange-single", 1, envoy_bin, wasm_path, workdir, backend, sts) as envoy:
        yield envoy


@pytest.fixture(scope="session")
def choice_backends() -> Iterator[dict[str, h.EchoBackend]]:
    """One recording backend per cluster of the ``choice`` listeners (security_scenarios)."""
    servers = {name: h.EchoBackend().start() for name in ss.CHOICE_BACKENDS}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="session")
def security(
    envoy_bin, wasm_path, workdir, backend, sts, ext_authz_service, choice_backends
) -> Iterator[h.Envoy]:
    """The security matrix's Envoy: odd metadata values, 5,000-entry Structs, and the
    ``choice`` listeners whose clusters each have their own backend (security_scenarios)."""
    config = ss.security_config(
        wasm_path,
        backend.port,
        sts.port,
        ext_authz_service.port,
        {name: server.port for name, server in choice_backends.items()},
    )
    with h.Envoy("security", config, workdir, envoy_bin, env=ss.ENV) as envoy:
        yield envoy


@dataclass(frozen=True)
class AuthgentPeers:
    """authgent-server with its registered clients, and the Envoy that exchanges through it."""

    server: ag.Authgent
    app: ag.Client  # upstream-app (client_credentials): mints the client's subject tokens
    github_app: ag.Client  # mints the GitHub token set_metadata supplies (subjectProviderName)
    proxy: ag.Client  # proxy-filter (token-exchange grant): the filter's identity
    github_token: str
    jwks: dict
    envoy: h.Envoy


@pytest.fixture(scope="session")
def authgent(envoy_bin, wasm_path, workdir, backend) -> Iterator[AuthgentPeers]:
    with ag.Authgent(workdir / f"authgent-server-{h.build_of(wasm_path)}", exchange_ttl_s=xs.AG_EXCHANGE_TTL_S) as server:
        app = server.register("upstream-app", [ag.CLIENT_CREDENTIALS])
        github_app = server.register("github-app", [ag.CLIENT_CREDENTIALS])
        proxy = server.register("proxy-filter", [h.TOKEN_EXCHANGE_GRANT])
        github_token = server.client_credentials(github_app)
        config = xs.authgent_config(
            wasm_path, backend.port, server.port, f"{server.url}/token", proxy.id, github_token
        )
        env = {xs.AG_SECRET_ENV: proxy.secret, xs.AG_WRONG_SECRET_ENV: xs.AG_WRONG_SECRET}
        with h.Envoy("authgent-envoy", config, workdir, envoy_bin, env=env) as envoy:
            yield AuthgentPeers(server, app, github_app, proxy, github_token, server.jwks(), envoy)


_counter = itertools.count()


@pytest.fixture
def new_subject():
    """``new_subject()`` -> a bearer token no other request uses (so no cached exchange)."""

    def make() -> str:
        return f"subj-{next(_counter)}-{os.urandom(8).hex()}"

    return make


@pytest.fixture
def unique(request: pytest.FixtureRequest):
    """``unique("/github/")`` -> a path under that prefix no other request uses."""

    def make(prefix: str) -> str:
        return f"{prefix}{request.node.name.replace('[', '-').replace(']', '')}-{next(_counter)}"

    return make


# --------------------------------------------------------------------------------------------
# Diagnostics: attach Envoy log tails to failing tests.


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        seen: set[int] = set()
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, AuthgentPeers):
                report.sections.append(("authgent-server log", value.server.log_tail(40)))
                value = value.envoy
            envoys = value if isinstance(value, (list, tuple)) else [value]
            for envoy in envoys:
                if isinstance(envoy, h.Envoy) and id(envoy) not in seen:
                    seen.add(id(envoy))
                    report.sections.append((f"Envoy {envoy.name} log", envoy.log_tail(80)))
