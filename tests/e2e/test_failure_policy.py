"""Failure policy: what Envoy does when the filter's VM fails, and when a new config is bad.

VM failure. The filter never traps by design (no panics, host statuses are errors), so a module
that does, assembled by wasm_modules.py, stands in for it:

* trap on a request with ``failure_policy: FAIL_CLOSED`` (every example of this project): that
  request and every later one on that VM get Envoy's 503, the backend is never called, Envoy stays
  live and other VMs (the real filter beside it) keep working; the same in the cluster placement.
* the same with ``FAIL_OPEN``: after the trap, requests go on *without the filter*, so the
  client's gateway token reaches the backend. Pinned here because it is why FAIL_OPEN must not be
  used with this filter.
* a module that cannot load (missing file, not wasm, truncated, trapping in ``proxy_on_configure``)
  or the real filter with a refused config: Envoy refuses to start, whatever the failure policy.

Config reload. Listeners and clusters come from files (LDS/CDS ``path_config_source`` with a
``watched_directory``), replaced atomically (write, then rename). A bad update (a config the
filter refuses, invalid JSON, a missing, broken or trapping module; for the listener and for the
cluster filter) is rejected: ``lds``/``cds`` ``update_rejected`` moves, ``/config_dump`` still
shows the last good version (with the rejection in ``error_state``), requests keep being served
by it, and no wasm VM is left behind (Envoy's VM gauges). A good update afterwards takes effect, so the watch is really live.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Iterator

import pytest

import harness as h
import scenarios as sc
import wasm_modules as wm

GATEWAY_TOKEN = "gw-failure-policy-token"
GATEWAY = [("authorization", f"Bearer {GATEWAY_TOKEN}")]
RELOAD_GITHUB_TOKEN = "gho_reload_github_token"
TRAP_LOG = "Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable"


@pytest.fixture(scope="module")
def modules(workdir: Path, wasm_only_path: Path) -> dict[str, Path]:
    """The stand-in modules, and broken files, next to the real filter."""
    out = workdir / "failure-policy-modules"
    out.mkdir(exist_ok=True)
    files = {
        "continue": wm.proxy_module(),
        "trap-request": wm.proxy_module("proxy_on_request_headers"),
        "trap-configure": wm.proxy_module("proxy_on_configure"),
        "garbage": b"this is not a WebAssembly module\n",
        "truncated": wasm_only_path.read_bytes()[:4096],
    }
    paths = {name: out / f"{name}.wasm" for name in files}
    for name, data in files.items():
        paths[name].write_bytes(data)
    paths["missing"] = out / "does-not-exist.wasm"
    paths["real"] = wasm_only_path
    return paths


def module_filter(path: Path, policy: str, vm_id: str, config: dict | str = "{}") -> dict:
    """A wasm filter entry running ``path`` in its own VM with the given failure policy."""
    entry = h.auth_filter(config, path, host_env_keys=["INTERNAL_KEY"])
    cfg = entry["typed_config"]["config"]
    cfg["failure_policy"] = policy
    cfg["vm_config"]["vm_id"] = vm_id
    return entry


INJECT_CONFIG = {
    "authServer": {"upstreams": ["github"], "tokens": sc.STRUCT_TOKENS},
    "outgoingAuth": {"source": "inline", "backends": {"github-mcp": sc.inject("github")}},
}
REFUSED_CONFIG = {  # V-02: github is not in authServer.upstreams
    "authServer": {"upstreams": ["gitlab"], "tokens": sc.STRUCT_TOKENS},
    "outgoingAuth": {"source": "inline", "backends": {"github-mcp": sc.inject("github")}},
}
TOKENS = h.set_metadata_filter({"upstream_tokens": {"github": RELOAD_GITHUB_TOKEN}})


# --------------------------------------------------------------------------------------------
# The VM fails at run time


@pytest.fixture(scope="module")
def trapping(envoy_bin, workdir, backend, modules) -> Iterator[h.Envoy]:
    listeners = [
        h.http_listener("closed", [h.route("/closed/", "backend")],
                        [module_filter(modules["trap-request"], "FAIL_CLOSED", "trap_closed")]),
        h.http_listener("open", [h.route("/open/", "backend")],
                        [module_filter(modules["trap-request"], "FAIL_OPEN", "trap_open")]),
        h.http_listener("closed-up", [h.route("/closed-up/", "trap-up")], []),
        h.http_listener("real", [h.route("/real/", "backend", backend="github-mcp")],
                        [TOKENS, module_filter(modules["real"], "FAIL_CLOSED", "outgoing_auth", INJECT_CONFIG)]),
    ]
    up = [module_filter(modules["trap-request"], "FAIL_CLOSED", "trap_up")]
    clusters = [h.cluster("backend", backend.port), h.cluster("trap-up", backend.port, upstream_filters=up)]
    with h.Envoy("failure-policy-trap", h.bootstrap(listeners, clusters), workdir, envoy_bin, env=sc.ENV) as envoy:
        yield envoy


def assert_token_nowhere(backend: h.EchoBackend) -> None:
    assert not [r for r in backend.all_requests() if GATEWAY_TOKEN in r.header_blob()]


@pytest.mark.parametrize("listener", ["closed", "closed-up"], ids=["listener-filter", "cluster-filter"])
def test_vm_trap_with_fail_closed_answers_503_and_never_passes_the_request_on(
    trapping, backend, unique, listener
):
    paths = [unique(f"/{listener}/") for _ in range(6)]  # new connections: both workers' VMs
    responses = [h.request(trapping.port(listener), p, GATEWAY) for p in paths]

    assert [r.status for r in responses] == [503] * len(paths), [r.describe() for r in responses]
    for path, resp in zip(paths, responses):
        sc.assert_backend_not_called(backend, path)
        assert GATEWAY_TOKEN not in resp.body.decode(errors="replace")
    assert TRAP_LOG in trapping.log_text(), trapping.log_tail()
    # Envoy and the real filter's VM beside it are unaffected
    assert trapping.admin_get("/ready") == (200, "LIVE\n")
    path = unique("/real/")
    seen = sc.only_request(backend, path, h.request(trapping.port("real"), path, GATEWAY))
    assert seen.values("authorization") == [f"Bearer {RELOAD_GITHUB_TOKEN}"]
    assert_token_nowhere(backend)


def test_vm_trap_with_fail_open_passes_later_requests_on_unfiltered_with_the_gateway_token(
    trapping, backend, unique
):
    """Why every example sets FAIL_CLOSED: with FAIL_OPEN a failed VM is skipped, and the
    client's gateway token, which the filter would have removed, reaches the backend."""
    token = f"gw-fail-open-{os.urandom(4).hex()}"
    trapped, passed = (503, []), (200, [[f"Bearer {token}"]])
    outcomes = []
    while len(outcomes) < 30 and outcomes[-3:] != [passed] * 3:
        path = unique("/open/")
        resp = h.request(trapping.port("open"), path, [("authorization", f"Bearer {token}")])
        outcomes.append((resp.status, [r.values("authorization") for r in backend.requests_for(path)]))

    # a request that traps gets 503 (one per worker's VM at most); after it, that worker skips
    # the filter and the request reaches the backend with the client's own token
    assert outcomes[0] == trapped, outcomes
    assert set(map(repr, outcomes)) <= {repr(trapped), repr(passed)}, outcomes
    assert outcomes.count(trapped) <= 2 and outcomes[-1] == passed, outcomes


# --------------------------------------------------------------------------------------------
# The module or its config cannot load: Envoy does not start


@pytest.fixture(scope="module")
def refusals(envoy_bin, workdir, modules) -> dict[str, h.Outcome]:
    def config(filter_entry: dict) -> dict:
        return h.bootstrap([h.http_listener("main", [h.route("/", "backend")], [filter_entry])], [h.cluster("backend", 9)])

    cases = {
        "missing-file": config(module_filter(modules["missing"], "FAIL_CLOSED", "m1")),
        "not-wasm": config(module_filter(modules["garbage"], "FAIL_CLOSED", "m2")),
        "truncated": config(module_filter(modules["truncated"], "FAIL_CLOSED", "m3")),
        "trap-in-configure": config(module_filter(modules["trap-configure"], "FAIL_CLOSED", "m4")),
        "trap-in-configure-fail-open": config(module_filter(modules["trap-configure"], "FAIL_OPEN", "m5")),
        "refused-config-fail-open": config(module_filter(modules["real"], "FAIL_OPEN", "m6", REFUSED_CONFIG)),
        "refused-config-fail-reload": config(module_filter(modules["real"], "FAIL_RELOAD", "m7", REFUSED_CONFIG)),
    }
    envoys = {name: h.Envoy(f"refuse-{name}", cfg, workdir, envoy_bin, env=sc.ENV) for name, cfg in cases.items()}
    return h.await_refusals(envoys)


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing-file", "Invalid path"),
        ("not-wasm", "Unable to create Wasm plugin"),
        ("truncated", "Unable to create Wasm plugin"),
        ("trap-in-configure", "Unable to create Wasm plugin"),
        ("trap-in-configure-fail-open", "Unable to create Wasm plugin"),
        ("refused-config-fail-open", "[V-02]"),
        ("refused-config-fail-reload", "[V-02]"),
    ],
)
def test_module_or_config_that_cannot_load_makes_envoy_refuse_to_start(refusals, case, needle):
    outcome = refusals[case]
    tail = "\n".join(outcome.log.splitlines()[-30:])
    assert outcome.error is None, outcome.error
    assert outcome.returncode not in (None, 0), f"exit code {outcome.returncode}\n{tail}"
    assert needle in outcome.log, tail


# --------------------------------------------------------------------------------------------
# Config reload from files (LDS and CDS)

HEADER_CONFIG = {  # the good update: github-mcp switches to header_injection
    "outgoingAuth": {"source": "inline", "backends": {"github-mcp": sc.header_env("X-API-Key", "INTERNAL_KEY")}},
}


class Reloader:
    """An Envoy whose listener ``dyn`` comes from ``lds/lds.json`` and whose cluster ``dyn-up``
    (the filter as its cluster filter) from ``cds/cds.json``, each in its own watched directory."""

    def __init__(self, envoy_bin: Path, workdir: Path, backend: h.EchoBackend, wasm: Path) -> None:
        self.backend = backend
        self.wasm = wasm
        self.xds = h.XdsFiles(workdir / "reload-xds", ["lds", "cds"])
        # what the last accepted listener and cluster do to /github/ and /up/ requests
        self.serving = {"lds": "inject", "cds": "inject"}
        self.accepted_version = {"lds": "", "cds": ""}
        self.accepted_config = {"lds": json.dumps(INJECT_CONFIG), "cds": json.dumps(INJECT_CONFIG)}
        boot = self.xds.dynamic(h.bootstrap([], [h.cluster("backend", backend.port)]))
        boot["node"] = {"id": "outgoing-auth-reload", "cluster": "outgoing-auth-reload"}
        self.xds.write("lds", self.listener(INJECT_CONFIG))
        self.xds.write("cds", self.cluster(INJECT_CONFIG))
        self.accepted_version = {"lds": "lds-1", "cds": "cds-1"}
        self.envoy = h.Envoy("reload", boot, workdir, envoy_bin, env=sc.ENV)

    def listener(self, config: dict | str, module: Path | None = None) -> dict:
        return h.http_listener(
            "dyn",
            [h.route("/github/", "backend", backend="github-mcp"), h.route("/up/", "dyn-up")],
            [TOKENS, module_filter(module or self.wasm, "FAIL_CLOSED", "outgoing_auth", config)],
        )

    def cluster(self, config: dict | str, module: Path | None = None) -> dict:
        up = [module_filter(module or self.wasm, "FAIL_CLOSED", "outgoing_auth", config)]
        return h.cluster("dyn-up", self.backend.port, backend="github-mcp", upstream_filters=up)

    def push(self, kind: str, resource: dict, outcome: str) -> str:
        """Writes an update and waits (bounded) until Envoy counted it as ``outcome``
        (``success`` or ``rejected``); returns its version."""
        version = self.xds.push(self.envoy, kind, resource, outcome)
        if outcome == "success":
            self.accepted_version[kind] = version
            self.accepted_config[kind] = self.filter_config(resource)
        return version

    def dump(self) -> dict:
        status, body = self.envoy.admin_get("/config_dump")
        assert status == 200, body[:500]
        return json.loads(body)

    def listeners_dump(self) -> dict:
        [listeners] = [c for c in self.dump()["configs"] if c["@type"].endswith("ListenersConfigDump")]
        return listeners

    def clusters_dump(self) -> dict:
        [clusters] = [c for c in self.dump()["configs"] if c["@type"].endswith("ClustersConfigDump")]
        return clusters

    @staticmethod
    def filter_config(resource: dict) -> str:
        """The outgoing_auth configuration string inside a listener or cluster resource."""
        text = json.dumps(resource)
        found = re.findall(r'"configuration": \{"@type": "[^"]+", "value": ("(?:[^"\\]|\\.)*")\}', text)
        assert len(found) == 1, found
        return json.loads(found[0])

    def assert_dump_shows_accepted(self) -> dict:
        """/config_dump: the active listener and cluster hold the last accepted filter configs,
        and LDS's version_info is the last accepted one. Returns the listener's entry."""
        listeners = self.listeners_dump()
        assert listeners["version_info"] == self.accepted_version["lds"], listeners["version_info"]
        [dyn] = [d for d in listeners["dynamic_listeners"] if d.get("name") == "dyn"]
        assert self.filter_config(dyn["active_state"]["listener"]) == self.accepted_config["lds"]
        clusters = self.clusters_dump()
        [up] = [c for c in clusters["dynamic_active_clusters"] if c["cluster"]["name"] == "dyn-up"]
        assert up["version_info"] == self.accepted_version["cds"], up["version_info"]
        assert self.filter_config(up["cluster"]) == self.accepted_config["cds"]
        assert clusters.get("dynamic_warming_clusters", []) == []
        return dyn

    def assert_serving(self, unique) -> None:
        """Requests through the listener filter and through the cluster filter get what the last
        accepted listener and cluster say."""
        self.envoy._read_listener_ports()
        for kind, prefix in (("lds", "/github/"), ("cds", "/up/")):
            path = unique(prefix)
            resp = h.request(self.envoy.port("dyn"), path, GATEWAY)
            seen = sc.only_request(self.backend, path, resp)
            if self.serving[kind] == "inject":
                assert seen.values("authorization") == [f"Bearer {RELOAD_GITHUB_TOKEN}"], (kind, seen.headers)
                assert seen.values("x-api-key") == []
            else:
                assert seen.values("authorization") == [] and seen.values("x-api-key") == [sc.INTERNAL_KEY]
            assert GATEWAY_TOKEN not in seen.header_blob()


@pytest.fixture(scope="module")
def reloader(envoy_bin, workdir, backend, wasm_only_path) -> Iterator[Reloader]:
    r = Reloader(envoy_bin, workdir, backend, wasm_only_path)
    with r.envoy:
        yield r


def bad_updates(modules: dict[str, Path]) -> dict[str, tuple[dict | str, Path]]:
    return {
        "refused-by-validation": (REFUSED_CONFIG, modules["real"]),
        "invalid-json": ('{"outgoingAuth": {', modules["real"]),
        "missing-module": (INJECT_CONFIG, modules["missing"]),
        "truncated-module": (INJECT_CONFIG, modules["truncated"]),
        "module-trapping-in-configure": ("{}", modules["trap-configure"]),
    }


BAD = ["refused-by-validation", "invalid-json", "missing-module", "truncated-module", "module-trapping-in-configure"]


@pytest.mark.parametrize("bad", BAD)
def test_listener_update_with_a_bad_filter_is_rejected_and_the_old_one_keeps_serving(
    reloader, modules, unique, bad
):
    reloader.assert_serving(unique)
    rejected_counter = reloader.envoy.counter("config.rejected")
    vms = live_vms(reloader.envoy)
    config, module = bad_updates(modules)[bad]

    reloader.push("lds", reloader.listener(config, module), "rejected")

    dyn = reloader.assert_dump_shows_accepted()
    assert dyn["error_state"]["failed_configuration"]["name"] == "dyn", dyn["error_state"]
    assert "Wasm" in dyn["error_state"]["details"] or "path" in dyn["error_state"]["details"], dyn["error_state"]
    reloader.assert_serving(unique)
    if bad in ("refused-by-validation", "invalid-json"):
        # the filter's own counter of refused configurations moved too
        assert reloader.envoy.counter("config.rejected") > rejected_counter
    # a VM a rejected update created (to run the filter's validation) is not left behind
    assert live_vms(reloader.envoy) == vms
    assert reloader.envoy.admin_get("/ready") == (200, "LIVE\n")


def live_vms(envoy: h.Envoy) -> dict[str, int]:
    """Envoy's gauges of wasm VMs alive (``created`` is a counter and may grow)."""
    stats = envoy.stats("wasm.")
    return {k: stats.get(k, -1) for k in ("wasm.envoy.wasm.runtime.v8.active", "wasm.wasm_vm_count")}


@pytest.mark.parametrize("bad", ["refused-by-validation", "invalid-json", "missing-module"])
def test_cluster_update_with_a_bad_cluster_filter_is_rejected_and_the_old_one_keeps_serving(
    reloader, modules, unique, bad
):
    config, module = bad_updates(modules)[bad]

    reloader.push("cds", reloader.cluster(config, module), "rejected")

    reloader.assert_dump_shows_accepted()
    reloader.assert_serving(unique)


def test_good_updates_after_rejections_take_effect_and_a_bad_one_then_keeps_them(reloader, unique):
    """The watch is live: the filter's new config replaces the old on the listener and on the
    cluster, and the next bad update keeps the new one, not the first."""
    reloader.push("lds", reloader.listener(HEADER_CONFIG), "success")
    reloader.push("cds", reloader.cluster(HEADER_CONFIG), "success")
    reloader.serving = {"lds": "header", "cds": "header"}
    wait_for(reloader.assert_dump_shows_accepted)
    reloader.assert_serving(unique)

    reloader.push("lds", reloader.listener(REFUSED_CONFIG), "rejected")
    reloader.push("cds", reloader.cluster(REFUSED_CONFIG), "rejected")
    reloader.assert_dump_shows_accepted()
    reloader.assert_serving(unique)


def wait_for(check, timeout: float = 10.0) -> None:
    """Retries ``check`` until it stops raising AssertionError (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
