"""Envoy refuses an invalid filter config at startup: the process exits non-zero by itself and its
log names the broken rule in square brackets (``[V-01]``, ``[S-02]``, ...).

All the Envoys of this module start at once and are awaited together (each bounded to 30 s), so the
module costs about one Envoy startup. A valid control config, built by the same code, must start:
that proves the refusals come from the filter config and not from a broken skeleton.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import harness as h
import scenarios as sc

AUTH = {"upstreams": ["github"], "tokens": sc.STRUCT_TOKENS}


def outgoing(backends: dict, default: dict | None = None) -> dict:
    out: dict = {"source": "inline", "backends": backends}
    if default is not None:
        out["default"] = default
    return out


# name -> (filter config (dict, or raw string), placement, Envoy env)
CASES: dict[str, tuple[dict | str, str, dict[str, str]]] = {
    "v01-backend-without-auth-server": (
        {"outgoingAuth": outgoing({"github-mcp": sc.inject("github")})},
        "listener",
        sc.ENV,
    ),
    "v01-default-without-auth-server": (
        {"outgoingAuth": outgoing({}, default=sc.inject("github"))},
        "listener",
        sc.ENV,
    ),
    "v02-unknown-provider": (
        {"authServer": AUTH, "outgoingAuth": outgoing({"gitlab-mcp": sc.inject("gitlab")})},
        "listener",
        sc.ENV,
    ),
    "v06-empty-provider": (
        {"authServer": AUTH, "outgoingAuth": outgoing({"github-mcp": sc.inject("")})},
        "listener",
        sc.ENV,
    ),
    "v06-blank-provider": (
        {"authServer": AUTH, "outgoingAuth": outgoing({"github-mcp": sc.inject("  ")})},
        "listener",
        sc.ENV,
    ),
    "unknown-field-in-strategy": (
        {
            "authServer": AUTH,
            "outgoingAuth": outgoing(
                {"github-mcp": {"type": "upstream_inject", "upstreamInject": {"providerName": "github", "bogus": 1}}}
            ),
        },
        "listener",
        sc.ENV,
    ),
    "unknown-top-level-field": (
        {"authServer": AUTH, "outgoingAuht": outgoing({})},
        "listener",
        sc.ENV,
    ),
    "misspelt-provider-name-field": (
        {
            "authServer": AUTH,
            "outgoingAuth": outgoing(
                {"github-mcp": {"type": "upstream_inject", "upstreamInject": {"providerNme": "github"}}}
            ),
        },
        "listener",
        sc.ENV,
    ),
    "crd-spelling-of-the-type": (
        {
            "authServer": AUTH,
            "outgoingAuth": outgoing(
                {"github-mcp": {"type": "upstreamInject", "upstreamInject": {"providerName": "github"}}}
            ),
        },
        "listener",
        sc.ENV,
    ),
    "invalid-json": ('{"outgoingAuth": {"backends": {', "listener", sc.ENV),
    "header-value-and-env-both-set": (
        {
            "outgoingAuth": outgoing(
                {
                    "internal": {
                        "type": "header_injection",
                        "headerInjection": {
                            "headerName": "X-API-Key",
                            "headerValue": "inline",
                            "headerValueEnv": "INTERNAL_KEY",
                        },
                    }
                }
            )
        },
        "listener",
        sc.ENV,
    ),
    "header-value-env-not-set": (
        {"outgoingAuth": outgoing({"internal": sc.header_env("X-API-Key", "INTERNAL_KEY")})},
        "listener",
        {},  # INTERNAL_KEY absent from Envoy's environment
    ),
    "metadata-key-and-key-prefix-both-set": (
        {
            "authServer": {
                "upstreams": ["github"],
                "tokens": {"metadataKey": "upstream_tokens", "keyPrefix": "x-upstream-token-"},
            },
            "outgoingAuth": outgoing({"github-mcp": sc.inject("github")}),
        },
        "listener",
        sc.ENV,
    ),
    "v01-in-cluster-upstream-filter": (
        {"outgoingAuth": outgoing({"github-mcp": sc.inject("github")})},
        "cluster",
        sc.ENV,
    ),
}

VALID = {"authServer": AUTH, "outgoingAuth": outgoing({"github-mcp": sc.inject("github")})}


def envoy_config(filter_config: dict | str, placement: str, wasm: Path) -> dict:
    wasm_filter = h.auth_filter(filter_config, wasm, host_env_keys=["INTERNAL_KEY"])
    if placement == "listener":
        listener = h.http_listener("main", [h.route("/", "backend")], [wasm_filter])
        clusters = [h.cluster("backend", 9)]
    else:
        listener = h.http_listener("main", [h.route("/", "backend")], [])
        clusters = [h.cluster("backend", 9, backend="github-mcp", upstream_filters=[wasm_filter])]
    return h.bootstrap([listener], clusters)


@pytest.fixture(scope="module")
def refused(envoy_bin, wasm_path, workdir) -> dict[str, h.Outcome]:
    """Start one Envoy per case, all at once; collect exit codes and logs."""
    envoys = {
        name: h.Envoy(f"invalid-{name}", envoy_config(cfg, placement, wasm_path), workdir, envoy_bin, env=env)
        for name, (cfg, placement, env) in CASES.items()
    }
    try:
        for envoy in envoys.values():
            envoy.launch()

        def wait(item: tuple[str, h.Envoy]) -> h.Outcome:
            name, envoy = item
            try:
                rc = envoy.wait_exit(h.EXIT_TIMEOUT_S)
                return h.Outcome(name, rc, envoy.log_text())
            except h.EnvoyError as e:
                return h.Outcome(name, None, envoy.log_text(), error=str(e))

        with ThreadPoolExecutor(max_workers=len(envoys)) as pool:
            return {o.name: o for o in pool.map(wait, envoys.items())}
    finally:
        for envoy in envoys.values():
            envoy.stop()


def check_refused(outcome: h.Outcome, *needles: str) -> None:
    tail = "\n".join(outcome.log.splitlines()[-40:])
    assert outcome.error is None, outcome.error
    assert outcome.returncode not in (None, 0), f"Envoy exited with {outcome.returncode}\n{tail}"
    for needle in needles:
        assert needle in outcome.log, f"{needle!r} not in the Envoy log of case {outcome.name}:\n{tail}"


def rule_lines(outcome: h.Outcome) -> list[str]:
    return [line for line in outcome.log.splitlines() if re.search(r"\[[SV]-\d\d\]", line)]


def test_valid_control_config_starts(envoy_bin, wasm_path, workdir):
    envoy = h.Envoy("invalid-control", envoy_config(VALID, "listener", wasm_path), workdir, envoy_bin, env=sc.ENV)
    with envoy:
        assert envoy.admin_get("/ready")[0] == 200


def test_upstream_inject_without_auth_server_is_refused_v01(refused):
    check_refused(refused["v01-backend-without-auth-server"], "[V-01]", "github-mcp")


def test_default_upstream_inject_without_auth_server_is_refused_v01(refused):
    check_refused(refused["v01-default-without-auth-server"], "[V-01]")


def test_provider_not_in_auth_server_upstreams_is_refused_v02_naming_it(refused):
    outcome = refused["v02-unknown-provider"]
    check_refused(outcome, "[V-02]", "gitlab")
    assert any("gitlab" in line for line in rule_lines(outcome)), rule_lines(outcome)


@pytest.mark.parametrize("case", ["v06-empty-provider", "v06-blank-provider"])
def test_empty_or_blank_provider_name_is_refused_v06(refused, case):
    check_refused(refused[case], "[V-06]")


def test_unknown_field_in_strategy_is_refused_naming_the_field(refused):
    outcome = refused["unknown-field-in-strategy"]
    check_refused(outcome, "[S-", "bogus")
    assert any("bogus" in line for line in rule_lines(outcome)), rule_lines(outcome)


def test_unknown_top_level_field_is_refused_naming_the_field(refused):
    outcome = refused["unknown-top-level-field"]
    check_refused(outcome, "[S-", "outgoingAuht")
    assert any("outgoingAuht" in line for line in rule_lines(outcome)), rule_lines(outcome)


def test_a_misspelt_field_gets_a_suggestion_and_the_field_is_missing_not_empty(refused):
    outcome = refused["misspelt-provider-name-field"]
    check_refused(outcome, "[S-02]", "[V-06]")
    lines = rule_lines(outcome)
    assert any('unknown field "providerNme"; did you mean "providerName"?' in line for line in lines), lines
    v06 = [line for line in lines if "[V-06]" in line]
    assert v06 and "requires a providerName, and it is missing" in v06[0], v06
    assert "non-empty" not in v06[0], v06
    assert "one of authServer.upstreams: github" in v06[0], v06


def test_the_crd_spelling_of_a_type_gets_the_filters_spelling_suggested(refused):
    outcome = refused["crd-spelling-of-the-type"]
    check_refused(outcome, "[S-05]")
    lines = rule_lines(outcome)
    assert any('unknown strategy type "upstreamInject"; did you mean "upstream_inject"?' in line for line in lines), lines


def test_invalid_json_is_refused_s01(refused):
    check_refused(refused["invalid-json"], "[S-01]")


def test_header_value_and_header_value_env_together_are_refused(refused):
    outcome = refused["header-value-and-env-both-set"]
    check_refused(outcome, "[S-")
    assert any("headerValueEnv" in line for line in rule_lines(outcome)), rule_lines(outcome)


def test_header_value_env_missing_from_environment_is_refused_naming_the_variable(refused):
    outcome = refused["header-value-env-not-set"]
    check_refused(outcome, "[S-")
    assert any("INTERNAL_KEY" in line for line in rule_lines(outcome)), rule_lines(outcome)


def test_both_metadata_key_and_key_prefix_are_refused(refused):
    outcome = refused["metadata-key-and-key-prefix-both-set"]
    check_refused(outcome, "[S-")
    assert any("keyPrefix" in line for line in rule_lines(outcome)), rule_lines(outcome)


def test_invalid_config_in_cluster_upstream_filter_is_refused_v01(refused):
    check_refused(refused["v01-in-cluster-upstream-filter"], "[V-01]")
