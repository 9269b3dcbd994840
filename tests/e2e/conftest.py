"""Fixtures for the end-to-end tests: the real Envoy binary with the filter, loopback only.

``ENVOY_BIN`` and ``WASM_PATH`` must be set (``make test-e2e`` does it); when either is missing the
tests fail with a message saying so, they are never skipped.

When a test fails, the tail of the log of every Envoy it used is attached to the report.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator

import pytest

import harness as h
import scenarios as sc


def _required(name: str, hint: str = "") -> Path:
    try:
        return h.required_env_path(name)
    except RuntimeError as e:
        problem = f"{e}{hint}"
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def envoy_bin() -> Path:
    return _required("ENVOY_BIN")


@pytest.fixture(scope="session")
def wasm_path() -> Path:
    return _required("WASM_PATH", " (build it with `make build`)")


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


_counter = itertools.count()


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
            envoys = value if isinstance(value, (list, tuple)) else [value]
            for envoy in envoys:
                if isinstance(envoy, h.Envoy) and id(envoy) not in seen:
                    seen.add(id(envoy))
                    report.sections.append((f"Envoy {envoy.name} log", envoy.log_tail(80)))
