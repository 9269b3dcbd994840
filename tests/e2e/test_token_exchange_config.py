"""Envoy refuses token_exchange configs whose subjectProviderName cannot work, at startup: the
process exits non-zero by itself and its log names the rule (``[V-01]``, ``[V-02]``, ``[V-06]``).

All the Envoys of this module start at once; valid control configs built by the same code must
start, so the refusals come from the rule and not from a broken skeleton.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import exchange_scenarios as xs
import harness as h
import scenarios as sc

AUTH = {"upstreams": ["github"], "tokens": sc.STRUCT_TOKENS}


def config(strategy: dict, auth_server: dict | None = AUTH, as_default: bool = False) -> dict:
    outgoing: dict = {"source": "inline", "backends": {} if as_default else {"corp-api": strategy}}
    if as_default:
        outgoing["default"] = strategy
    cfg: dict = {"outgoingAuth": outgoing}
    if auth_server is not None:
        cfg["authServer"] = auth_server
    return cfg


def envoy_config(filter_config: dict, wasm: Path) -> dict:
    wasm_filter = h.auth_filter(filter_config, wasm, host_env_keys=[xs.SECRET_ENV])
    listener = h.http_listener("main", [h.route("/", "backend")], [wasm_filter])
    return h.bootstrap([listener], [h.cluster("backend", 9), h.cluster("sts", 9)])


# name -> (filter config, Envoy env)
CASES: dict[str, tuple[dict, dict[str, str]]] = {
    "v01-subject-provider-without-auth-server": (
        config(xs.token_exchange(subjectProviderName="github"), auth_server=None),
        xs.ENV,
    ),
    "v01-default-subject-provider-without-auth-server": (
        config(xs.token_exchange(subjectProviderName="github"), auth_server=None, as_default=True),
        xs.ENV,
    ),
    "v02-subject-provider-not-in-upstreams": (
        config(xs.token_exchange(subjectProviderName="gitlab")),
        xs.ENV,
    ),
    "v06-empty-subject-provider": (config(xs.token_exchange(subjectProviderName="")), xs.ENV),
    "v06-blank-subject-provider": (config(xs.token_exchange(subjectProviderName="   ")), xs.ENV),
    "client-secret-env-not-set": (config(xs.token_exchange()), {}),
}

VALID = {
    "with-subject-provider": config(xs.token_exchange(subjectProviderName="github")),
    # the client's own bearer is the subject: no authServer needed
    "client-bearer-without-auth-server": config(xs.token_exchange(), auth_server=None),
}


@pytest.fixture(scope="module")
def refused(envoy_bin, wasm_path, workdir) -> dict[str, h.Outcome]:
    return h.await_refusals(
        {
            name: h.Envoy(f"te-invalid-{name}", envoy_config(cfg, wasm_path), workdir, envoy_bin, env=env)
            for name, (cfg, env) in CASES.items()
        }
    )


def check_refused(outcome: h.Outcome, rule: str, *needles: str) -> None:
    tail = "\n".join(outcome.log.splitlines()[-40:])
    assert outcome.error is None, outcome.error
    assert outcome.returncode not in (None, 0), f"Envoy exited with {outcome.returncode}\n{tail}"
    lines = [line for line in outcome.log.splitlines() if rule in line]
    assert lines, f"{rule!r} not in the Envoy log of case {outcome.name}:\n{tail}"
    for needle in needles:
        assert any(needle in line for line in lines), f"{needle!r} not on a {rule} line: {lines}"


@pytest.mark.parametrize("case", list(VALID))
def test_valid_token_exchange_config_starts(envoy_bin, wasm_path, workdir, case):
    envoy = h.Envoy(f"te-valid-{case}", envoy_config(VALID[case], wasm_path), workdir, envoy_bin, env=xs.ENV)
    with envoy:
        assert envoy.admin_get("/ready")[0] == 200
        assert "configuration loaded" in envoy.log_text(), envoy.log_tail()


def test_subject_provider_without_auth_server_is_refused_v01_naming_the_backend(refused):
    check_refused(refused["v01-subject-provider-without-auth-server"], "[V-01]", "corp-api", "token_exchange")


def test_default_subject_provider_without_auth_server_is_refused_v01(refused):
    check_refused(refused["v01-default-subject-provider-without-auth-server"], "[V-01]", "token_exchange")


def test_subject_provider_not_in_auth_server_upstreams_is_refused_v02_naming_it(refused):
    check_refused(refused["v02-subject-provider-not-in-upstreams"], "[V-02]", "gitlab")


@pytest.mark.parametrize("case", ["v06-empty-subject-provider", "v06-blank-subject-provider"])
def test_empty_or_blank_subject_provider_is_refused_v06(refused, case):
    check_refused(refused[case], "[V-06]", "subjectProviderName")


def test_client_secret_env_missing_from_environment_is_refused_naming_the_variable(refused):
    outcome = refused["client-secret-env-not-set"]
    check_refused(outcome, "[S-", xs.SECRET_ENV)
