"""What only the native build (the Envoy dynamic module ``liboutgoing_auth.so``) has to prove.

* Every ABI callback the module calls is one this Envoy exports (the bindings of
  ``src/native/abi.rs`` were written against 1.40's; a symbol Envoy lacks would make the module
  fail to load, or worse).
* A Struct token layout (``metadataKey``, the default) is refused at startup with rule S-19: the
  dynamic-module ABI reads metadata by top-level key only, so the filter would never find a token.
* The module is found through ``ENVOY_DYNAMIC_MODULES_SEARCH_PATH`` and names the ABI it was built
  for (Envoy logs the match).

Everything else the native build does is the whole suite's business: it runs against both builds.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import harness as h
import scenarios as sc


@pytest.fixture(scope="module")
def native_path() -> Path:
    return h.required_env_path("NATIVE_PATH")


def dynamic_symbols(path: Path, which: str) -> set[str]:
    out = subprocess.run(["nm", "-D", which, str(path)], check=True, capture_output=True, text=True).stdout
    return {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}


def test_every_callback_the_module_calls_is_exported_by_this_envoy(native_path, envoy_bin):
    called = {s for s in dynamic_symbols(native_path, "--undefined-only") if s.startswith("envoy_dynamic_module_callback_")}
    exported = dynamic_symbols(envoy_bin, "--defined-only")
    assert len(called) >= 20, f"the module calls only {sorted(called)}: the check would prove nothing"
    assert called <= exported, f"callbacks this Envoy does not export: {sorted(called - exported)}"


def test_the_module_exports_the_hooks_envoy_requires(native_path):
    hooks = {s for s in dynamic_symbols(native_path, "--defined-only") if s.startswith("envoy_dynamic_module_on_")}
    required = {
        "envoy_dynamic_module_on_program_init",
        "envoy_dynamic_module_on_http_filter_config_new",
        "envoy_dynamic_module_on_http_filter_config_destroy",
        "envoy_dynamic_module_on_http_filter_new",
        "envoy_dynamic_module_on_http_filter_request_headers",
        "envoy_dynamic_module_on_http_filter_request_body",
        "envoy_dynamic_module_on_http_filter_http_callout_done",
        "envoy_dynamic_module_on_http_filter_scheduled",
        "envoy_dynamic_module_on_http_filter_destroy",
    }
    assert required <= hooks, sorted(required - hooks)


def struct_layout_config() -> dict:
    return {
        "authServer": {"upstreams": ["github"]},  # the default layout: the Struct upstream_tokens
        "outgoingAuth": {
            "backends": {"github-mcp": {"type": "upstream_inject", "upstreamInject": {"providerName": "github"}}}
        },
    }


def test_a_struct_token_layout_is_refused_with_s19_naming_the_fix(envoy_bin, workdir, native_path):
    os.environ["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(native_path.parent)
    entry = h.native_filter(struct_layout_config(), keep_layout=True)
    listener = h.http_listener("main", [h.route("/", "backend")], [entry])
    boot = h.bootstrap([listener], [h.cluster("backend", 9)])
    outcome = h.await_refusals({"s19": h.Envoy("native-s19", boot, workdir, envoy_bin)})["s19"]

    assert outcome.returncode not in (None, 0), outcome.error or outcome.log
    lines = [line for line in outcome.log.splitlines() if "[S-19]" in line]
    assert len(lines) == 1, outcome.log
    assert "authServer.tokens" in lines[0] and "keyPrefix" in lines[0], lines[0]
    assert "outgoing-auth: configuration rejected: 1 problem(s)" in outcome.log, outcome.log


def test_the_same_config_with_key_prefix_loads_and_injects(envoy_bin, workdir, native_path, backend, unique):
    os.environ["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(native_path.parent)
    tokens = h.set_metadata_filter({"upstream_tokens": {"github": "gho_native_prefix"}})
    listener = h.http_listener("main", [h.route("/", "backend")], [tokens, h.native_filter(struct_layout_config())])
    boot = h.bootstrap([listener], [h.cluster("backend", backend.port, backend="github-mcp")])
    with h.Envoy("native-prefix", boot, workdir, envoy_bin) as envoy:
        path = unique("/native/")
        resp = h.request(envoy.port("main"), path, [("authorization", sc.GATEWAY_TOKEN)])
        seen = sc.only_request(backend, path, resp)
        assert seen.values("authorization") == ["Bearer gho_native_prefix"]
        log = envoy.log_text()
        assert "Dynamic module ABI version v0.2.0 matched." in log, envoy.log_tail()
        assert envoy.counter("upstream_inject.injected") == 1
