//! Startup validation, rule by rule: a config that passes and one that fails each rule, with the
//! rule ID, the JSON path and the wording operators will see in Envoy's log.

// Test code: a panic is how a test fails.
#![allow(
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used
)]

use outgoing_auth::core::config::{self, Strategy, SubjectTokenType, TokenLayout};
use outgoing_auth::core::report::{Problem, Report, Rule};
use outgoing_auth::core::validate;
use serde_json::{json, Value};

fn env(name: &str) -> Option<String> {
    match name {
        "INTERNAL_KEY" => Some("internal-secret".to_owned()),
        "EMPTY" => Some(String::new()),
        "NEWLINE_SECRET" => Some("secret\n".to_owned()),
        "STS_SECRET" => Some("sts-secret".to_owned()),
        _ => None,
    }
}

fn load(v: &Value) -> Result<validate::Loaded, Report> {
    validate::load(v.to_string().as_bytes(), &env)
}

fn errors(v: &Value) -> Vec<Problem> {
    match load(v) {
        Ok(_) => panic!("config was accepted: {v}"),
        Err(report) => report.problems().to_vec(),
    }
}

/// The only error of a config, checked for rule and path.
fn only_error(v: &Value, rule: Rule, path: &str) -> String {
    let problems = errors(v);
    let errs: Vec<_> = problems.iter().filter(|p| !p.rule.is_warning()).collect();
    assert_eq!(errs.len(), 1, "expected one error, got {problems:#?}");
    assert_eq!(errs[0].rule, rule, "{problems:#?}");
    assert_eq!(errs[0].path, path, "{problems:#?}");
    errs[0].to_string()
}

fn with_auth_server(outgoing: Value) -> Value {
    json!({ "authServer": { "upstreams": ["github", "atlassian"] }, "outgoingAuth": outgoing })
}

fn inject(provider: &str) -> Value {
    json!({ "type": "upstream_inject", "upstreamInject": { "providerName": provider } })
}

fn exchange(fields: Value) -> Value {
    let mut te = json!({ "tokenUrl": "https://sts.example/oauth2/token", "cluster": "sts" });
    if let (Some(base), Some(extra)) = (te.as_object_mut(), fields.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    json!({ "type": "token_exchange", "tokenExchange": te })
}

#[test]
fn the_issue_example_is_accepted_as_written() {
    let v = json!({
      "authServer": {
        "upstreams": ["github", "atlassian"],
        "tokens": { "metadataNamespace": "envoy.filters.http.ext_authz", "metadataKey": "upstream_tokens" }
      },
      "outgoingAuth": {
        "source": "inline",
        "default": { "type": "unauthenticated" },
        "backends": {
          "github-mcp": { "type": "upstream_inject", "upstreamInject": { "providerName": "github" } },
          "internal":   { "type": "header_injection",
                          "headerInjection": { "headerName": "X-API-Key", "headerValueEnv": "INTERNAL_KEY" } }
        }
      }
    });
    let loaded = load(&v).unwrap();
    assert!(loaded.warnings.is_empty());
    let c = loaded.config;
    let auth = c.auth_server.unwrap();
    assert_eq!(auth.upstreams, ["github", "atlassian"]);
    assert_eq!(auth.tokens.namespace, "envoy.filters.http.ext_authz");
    assert_eq!(
        auth.tokens.layout,
        TokenLayout::Struct {
            key: "upstream_tokens".into()
        }
    );
    assert_eq!(auth.tokens.max_token_bytes, 16384);
    assert_eq!(c.outgoing_auth.default, Some(Strategy::Unauthenticated));
    match &c.outgoing_auth.backends["internal"] {
        Strategy::HeaderInjection(h) => {
            assert_eq!(h.header_name, "x-api-key");
            assert_eq!(h.value.env.as_deref(), Some("INTERNAL_KEY"));
            assert_eq!(h.value.value.expose(), "internal-secret");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn defaults_apply_when_tokens_is_omitted() {
    let c = load(&with_auth_server(json!({ "default": inject("github") })))
        .unwrap()
        .config;
    let tokens = c.auth_server.unwrap().tokens;
    assert_eq!(tokens.namespace, "envoy.filters.http.ext_authz");
    assert_eq!(
        tokens.layout,
        TokenLayout::Struct {
            key: "upstream_tokens".into()
        }
    );
}

#[test]
fn null_members_count_as_absent() {
    let v = json!({ "authServer": null, "outgoingAuth": { "source": null, "default": null, "backends": null } });
    let c = load(&v).unwrap().config;
    assert_eq!(c.auth_server, None);
    assert_eq!(c.outgoing_auth.default, None);
}

// ---- V-01: upstream tokens needed but no authServer

#[test]
fn v01_upstream_inject_without_auth_server() {
    let v = json!({ "outgoingAuth": { "backends": { "github-mcp": inject("github") } } });
    let text = only_error(&v, Rule::V01, "outgoingAuth.backends[\"github-mcp\"]");
    assert!(
        text.contains(
            "outgoingAuth backend \"github-mcp\" uses upstream_inject but no authServer is configured;"
        ),
        "{text}"
    );
}

#[test]
fn v01_token_exchange_with_subject_provider_without_auth_server() {
    let v = json!({ "outgoingAuth": { "default": exchange(json!({ "subjectProviderName": "github" })) } });
    let text = only_error(&v, Rule::V01, "outgoingAuth.default");
    assert!(text.contains(
        "outgoingAuth default strategy uses token_exchange but no authServer is configured"
    ));
}

#[test]
fn v01_passes_without_upstream_token_strategies() {
    let v = json!({ "outgoingAuth": { "default": exchange(json!({})), "backends": { "a": { "type": "unauthenticated" } } } });
    assert!(load(&v).is_ok());
}

// ---- V-02: provider must be an authServer upstream

#[test]
fn v02_unknown_provider_names_backend_and_provider() {
    let v = with_auth_server(json!({ "backends": { "gitlab-mcp": inject("gitlab") } }));
    let text = only_error(
        &v,
        Rule::V02,
        "outgoingAuth.backends[\"gitlab-mcp\"].upstreamInject.providerName",
    );
    assert!(text.contains("outgoingAuth backend \"gitlab-mcp\" references upstream provider \"gitlab\" which is not configured in authServer.upstreams"), "{text}");
    assert!(text.contains("github, atlassian"), "{text}");
}

#[test]
fn v02_checks_subject_provider_name_too() {
    let v = with_auth_server(
        json!({ "backends": { "corp": exchange(json!({ "subjectProviderName": "okta" })) } }),
    );
    let text = only_error(
        &v,
        Rule::V02,
        "outgoingAuth.backends[\"corp\"].tokenExchange.subjectProviderName",
    );
    assert!(text.contains("\"okta\""));
}

#[test]
fn v02_passes_for_known_providers_and_for_the_default_strategy() {
    let v = with_auth_server(json!({
        "default": inject("github"),
        "backends": { "a": inject("atlassian"), "b": exchange(json!({ "subjectProviderName": "github" })) }
    }));
    assert!(load(&v).is_ok());
}

#[test]
fn v02_default_strategy_with_unknown_provider() {
    let v = with_auth_server(json!({ "default": inject("nonexistent") }));
    only_error(
        &v,
        Rule::V02,
        "outgoingAuth.default.upstreamInject.providerName",
    );
}

// ---- V-05: authServer needs upstreams

#[test]
fn v05_auth_server_without_upstreams() {
    let v = json!({ "authServer": { "upstreams": [] }, "outgoingAuth": {} });
    only_error(&v, Rule::V05, "authServer.upstreams");
    let v = json!({ "authServer": {}, "outgoingAuth": {} });
    only_error(&v, Rule::V05, "authServer.upstreams");
}

// ---- V-06: providerName non-empty

#[test]
fn v06_empty_blank_or_missing_provider_name() {
    for upstream_inject in [
        json!({ "providerName": "" }),
        json!({ "providerName": "  " }),
    ] {
        let v = with_auth_server(json!({ "backends": {
            "github-mcp": { "type": "upstream_inject", "upstreamInject": upstream_inject } } }));
        let text = only_error(
            &v,
            Rule::V06,
            "outgoingAuth.backends[\"github-mcp\"].upstreamInject.providerName",
        );
        assert!(
            text.contains(
                "outgoingAuth backend \"github-mcp\" upstream_inject requires a non-empty providerName"
            ),
            "{text}"
        );
        // It says what to do: the configured upstreams.
        assert!(
            text.contains("set it to one of authServer.upstreams: github, atlassian"),
            "{text}"
        );
    }
    let v = with_auth_server(json!({ "backends": {
        "github-mcp": { "type": "upstream_inject", "upstreamInject": {} } } }));
    let text = only_error(
        &v,
        Rule::V06,
        "outgoingAuth.backends[\"github-mcp\"].upstreamInject.providerName",
    );
    assert!(
        text.contains("requires a providerName, and it is missing"),
        "{text}"
    );
    assert!(!text.contains("non-empty"), "missing is not empty: {text}");
}

#[test]
fn a_misspelt_provider_name_field_is_unknown_with_a_suggestion_and_missing() {
    let v = with_auth_server(json!({ "backends": {
        "github-mcp": { "type": "upstream_inject", "upstreamInject": { "providerNme": "github" } } } }));
    let problems = errors(&v);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert_eq!(problems[0].rule, Rule::S02);
    assert!(
        problems[0]
            .message
            .contains("unknown field \"providerNme\"; did you mean \"providerName\"?"),
        "{}",
        problems[0]
    );
    assert_eq!(problems[1].rule, Rule::V06);
    assert!(problems[1].message.contains("missing"), "{}", problems[1]);
    assert!(
        !problems[1].message.contains("non-empty"),
        "{}",
        problems[1]
    );
}

#[test]
fn every_unknown_field_gets_the_closest_known_name_if_one_is_close() {
    let cases = [
        (json!({ "outgoingAuht": {} }), "outgoingAuth"),
        (
            json!({ "authServer": { "upstream": ["github"] }, "outgoingAuth": {} }),
            "upstreams",
        ),
        (
            json!({ "authServer": { "upstreams": ["github"], "tokens": { "metadataKye": "x" } }, "outgoingAuth": {} }),
            "metadataKey",
        ),
        (
            json!({ "outgoingAuth": { "default": exchange(json!({ "clientID": "gw" })) } }),
            "clientId",
        ),
        (
            json!({ "outgoingAuth": { "default": exchange(json!({ "subject_provider_name": "x" })) } }),
            "subjectProviderName",
        ),
        (
            json!({ "outgoingAuth": { "backends": { "a": { "type": "header_injection",
                "headerInjection": { "headername": "X", "headerValue": "v" } } } } }),
            "headerName",
        ),
        (
            json!({ "outgoingAuth": { "defaults": { "type": "unauthenticated" } } }),
            "default",
        ),
    ];
    for (v, expected) in cases {
        let problems = errors(&v);
        let s02 = problems.iter().find(|p| p.rule == Rule::S02).unwrap();
        assert!(
            s02.message
                .contains(&format!("did you mean \"{expected}\"?")),
            "{s02}"
        );
    }
    // Nothing close: no suggestion, just the list.
    let problems = errors(&json!({ "bogus": 1, "outgoingAuth": {} }));
    assert!(
        !problems[0].message.contains("did you mean"),
        "{}",
        problems[0]
    );
    assert!(
        problems[0].message.contains("outgoingAuth"),
        "{}",
        problems[0]
    );
}

#[test]
fn the_crds_type_spellings_get_the_filters_spelling_suggested() {
    for (crd, filter) in [
        ("upstreamInject", "upstream_inject"),
        ("tokenExchange", "token_exchange"),
        ("headerInjection", "header_injection"),
        ("Unauthenticated", "unauthenticated"),
        ("upstream-inject", "upstream_inject"),
        ("token_exchnage", "token_exchange"),
    ] {
        let v = json!({ "outgoingAuth": { "default": { "type": crd } } });
        let text = only_error(&v, Rule::S05, "outgoingAuth.default.type");
        assert!(
            text.contains(&format!("did you mean \"{filter}\"?")),
            "{text}"
        );
    }
    let v = json!({ "outgoingAuth": { "default": { "type": "oauth2" } } });
    let text = only_error(&v, Rule::S05, "outgoingAuth.default.type");
    assert!(!text.contains("did you mean"), "{text}");
}

#[test]
fn v06_blank_subject_provider_name() {
    let v = with_auth_server(
        json!({ "backends": { "corp": exchange(json!({ "subjectProviderName": " " })) } }),
    );
    only_error(
        &v,
        Rule::V06,
        "outgoingAuth.backends[\"corp\"].tokenExchange.subjectProviderName",
    );
}

#[test]
fn v01_comes_before_v06_and_both_are_reported() {
    // V-06 does not depend on authServer: one run names both fixes.
    let v = json!({ "outgoingAuth": { "default": inject("") } });
    let problems = errors(&v);
    let found: Vec<_> = problems.iter().map(|p| (p.rule, p.path.as_str())).collect();
    assert_eq!(
        found,
        [
            (Rule::V01, "outgoingAuth.default"),
            (
                Rule::V06,
                "outgoingAuth.default.upstreamInject.providerName"
            ),
        ]
    );
    assert!(
        problems[1]
            .message
            .contains("listed in authServer.upstreams"),
        "{}",
        problems[1]
    );
    // A named provider without authServer is V-01 only (V-02 needs the list).
    let v = json!({ "outgoingAuth": { "default": inject("github") } });
    only_error(&v, Rule::V01, "outgoingAuth.default");
}

// ---- S-01: JSON

#[test]
fn s01_invalid_json_reports_line_and_column() {
    let problems = validate::load(b"{\n  \"outgoingAuth\": {,\n}", &env)
        .unwrap_err()
        .problems()
        .to_vec();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].rule, Rule::S01);
    assert!(
        problems[0].message.contains("line 2 column"),
        "{}",
        problems[0]
    );
}

#[test]
fn s01_empty_configuration() {
    let problems = validate::load(b"  ", &env).unwrap_err().problems().to_vec();
    assert_eq!(problems[0].rule, Rule::S01);
    assert!(problems[0].message.contains("empty"));
}

#[test]
fn s03_top_level_must_be_an_object() {
    let problems = validate::load(b"[1]", &env)
        .unwrap_err()
        .problems()
        .to_vec();
    assert_eq!(problems[0].rule, Rule::S03);
}

// ---- S-02: unknown fields, anywhere, all of them

#[test]
fn s02_reports_every_unknown_field_with_its_path() {
    let v = json!({
        "bogus": 1,
        "authServer": { "upstreams": ["github"], "tokens": { "metadataKye": "x" } },
        "outgoingAuth": {
            "backends": { "github-mcp": { "type": "upstream_inject",
                "upstreamInject": { "providerName": "github", "scope": "x" }, "extra": true } }
        }
    });
    let problems = errors(&v);
    let paths: Vec<_> = problems
        .iter()
        .filter(|p| p.rule == Rule::S02)
        .map(|p| p.path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "bogus",
            "authServer.tokens.metadataKye",
            "outgoingAuth.backends[\"github-mcp\"].extra",
            "outgoingAuth.backends[\"github-mcp\"].upstreamInject.scope",
        ]
    );
    let typo = problems
        .iter()
        .find(|p| p.path.ends_with("metadataKye"))
        .unwrap();
    assert!(typo.message.contains("metadataKey"), "lists valid fields");
}

#[test]
fn s02_a_pasted_vmcp_block_with_known_fields_only_passes() {
    let v = with_auth_server(json!({ "source": "inline", "backends": { "x": inject("github") } }));
    assert!(load(&v).is_ok());
}

// ---- S-03: wrong types

#[test]
fn s03_wrong_types_name_expected_and_found() {
    let v = json!({ "outgoingAuth": { "backends": { "a": { "type": "header_injection",
        "headerInjection": { "headerName": 5, "headerValue": "v" } } } } });
    let text = only_error(
        &v,
        Rule::S03,
        "outgoingAuth.backends[\"a\"].headerInjection.headerName",
    );
    assert!(text.contains("expected a string, found a number"));
    let v = json!({ "authServer": { "upstreams": "github" }, "outgoingAuth": {} });
    only_error(&v, Rule::S03, "authServer.upstreams");
    let v = json!({ "outgoingAuth": { "backends": [] } });
    only_error(&v, Rule::S03, "outgoingAuth.backends");
}

// ---- S-04: required fields

#[test]
fn s04_missing_outgoing_auth() {
    let text = only_error(&json!({}), Rule::S04, "outgoingAuth");
    assert!(text.contains("outgoingAuth is required"));
}

#[test]
fn s04_missing_type() {
    let v = json!({ "outgoingAuth": { "default": {} } });
    only_error(&v, Rule::S04, "outgoingAuth.default.type");
}

#[test]
fn s04_header_injection_needs_exactly_one_value_source() {
    let none = json!({ "outgoingAuth": { "default": { "type": "header_injection",
        "headerInjection": { "headerName": "X-Key" } } } });
    let text = only_error(&none, Rule::S04, "outgoingAuth.default.headerInjection");
    assert!(text.contains("either headerValue or headerValueEnv must be set"));
    let both = json!({ "outgoingAuth": { "default": { "type": "header_injection",
        "headerInjection": { "headerName": "X-Key", "headerValue": "v", "headerValueEnv": "INTERNAL_KEY" } } } });
    let text = only_error(&both, Rule::S04, "outgoingAuth.default.headerInjection");
    assert!(text.contains("only one of headerValue or headerValueEnv must be set"));
}

#[test]
fn s04_empty_backend_name() {
    let v = json!({ "outgoingAuth": { "backends": { "": { "type": "unauthenticated" } } } });
    only_error(&v, Rule::S04, "outgoingAuth.backends[\"\"]");
}

// ---- S-05: strategy types

#[test]
fn s05_unknown_type_lists_valid_types() {
    let v = json!({ "outgoingAuth": { "default": { "type": "aws_sts" } } });
    let text = only_error(&v, Rule::S05, "outgoingAuth.default.type");
    assert!(text.contains(
        "valid types are: unauthenticated, header_injection, upstream_inject, token_exchange"
    ));
}

#[test]
fn s05_every_valid_type_is_accepted() {
    let v = with_auth_server(json!({ "backends": {
        "a": { "type": "unauthenticated" },
        "b": { "type": "header_injection", "headerInjection": { "headerName": "X-K", "headerValue": "v" } },
        "c": inject("github"),
        "d": exchange(json!({}))
    } }));
    let c = load(&v).unwrap().config;
    let types: Vec<_> = c
        .outgoing_auth
        .backends
        .values()
        .map(Strategy::type_name)
        .collect();
    assert_eq!(
        types,
        [
            "unauthenticated",
            "header_injection",
            "upstream_inject",
            "token_exchange"
        ]
    );
}

// ---- S-06: sub-object iff type

#[test]
fn s06_sub_object_missing_for_its_type() {
    let v = with_auth_server(json!({ "default": { "type": "upstream_inject" } }));
    let text = only_error(&v, Rule::S06, "outgoingAuth.default.upstreamInject");
    assert!(text.contains(
        "upstreamInject configuration must be set if and only if type is 'upstream_inject'"
    ));
}

#[test]
fn s06_sub_object_of_another_type() {
    let v = with_auth_server(json!({ "default": { "type": "upstream_inject",
        "upstreamInject": { "providerName": "github" },
        "headerInjection": { "headerName": "X", "headerValue": "v" } } }));
    only_error(&v, Rule::S06, "outgoingAuth.default.headerInjection");
}

#[test]
fn s06_unauthenticated_takes_no_configuration() {
    let v = with_auth_server(
        json!({ "default": { "type": "unauthenticated", "upstreamInject": { "providerName": "github" } } }),
    );
    let text = only_error(&v, Rule::S06, "outgoingAuth.default.upstreamInject");
    assert!(text.contains("no configuration must be set when type is 'unauthenticated'"));
}

// ---- S-07: source

#[test]
fn s07_discovered_source_is_rejected_with_an_explanation() {
    let v = json!({ "outgoingAuth": { "source": "discovered" } });
    let text = only_error(&v, Rule::S07, "outgoingAuth.source");
    assert!(text.contains("vMCP mode"));
    let v = json!({ "outgoingAuth": { "source": "remote" } });
    only_error(&v, Rule::S07, "outgoingAuth.source");
    assert!(load(&json!({ "outgoingAuth": { "source": "inline" } })).is_ok());
}

// ---- S-08: upstream names

#[test]
fn s08_upstream_names_follow_the_pattern() {
    for bad in ["GitHub", "-github", "github-", "git_hub", "", "git hub"] {
        let v = json!({ "authServer": { "upstreams": [bad] }, "outgoingAuth": {} });
        only_error(&v, Rule::S08, "authServer.upstreams[0]");
    }
    for good in ["github", "a", "okta-2", "0x"] {
        let v = json!({ "authServer": { "upstreams": [good] }, "outgoingAuth": {} });
        assert!(load(&v).is_ok(), "{good}");
    }
}

#[test]
fn s08_upstream_names_are_unique() {
    let v =
        json!({ "authServer": { "upstreams": ["github", "okta", "github"] }, "outgoingAuth": {} });
    let text = only_error(&v, Rule::S08, "authServer.upstreams[2]");
    assert!(text.contains("more than once"));
}

// ---- S-09: header names

fn header(name: &str, value: Value) -> Value {
    let mut hi = json!({ "headerName": name });
    if let (Some(o), Some(extra)) = (hi.as_object_mut(), value.as_object()) {
        o.extend(extra.clone());
    }
    json!({ "outgoingAuth": { "default": { "type": "header_injection", "headerInjection": hi } } })
}

#[test]
fn s09_header_names_must_be_tokens() {
    for bad in ["X API", "X:Key", ":authority", "X-Kéy", "X-Key\r\n"] {
        let v = header(bad, json!({ "headerValue": "v" }));
        only_error(
            &v,
            Rule::S09,
            "outgoingAuth.default.headerInjection.headerName",
        );
    }
    assert!(load(&header("X-API-Key", json!({ "headerValue": "v" }))).is_ok());
}

#[test]
fn s09_framing_headers_cannot_be_injected() {
    let v = header("Content-Length", json!({ "headerValue": "5" }));
    let text = only_error(
        &v,
        Rule::S09,
        "outgoingAuth.default.headerInjection.headerName",
    );
    assert!(text.contains("managed by Envoy"));
}

// ---- S-10: header values

#[test]
fn s10_inline_values_with_cr_lf_nul_are_rejected_without_echoing_them() {
    for bad in ["a\r\nX-Evil: 1", "a\nb", "a\0b", "a\u{7}b"] {
        let v = header("X-Key", json!({ "headerValue": bad }));
        let text = only_error(
            &v,
            Rule::S10,
            "outgoingAuth.default.headerInjection.headerValue",
        );
        assert!(!text.contains(bad), "the value is echoed: {text}");
    }
}

#[test]
fn s10_env_values_are_checked_and_the_variable_named() {
    let v = header("X-Key", json!({ "headerValueEnv": "NEWLINE_SECRET" }));
    let text = only_error(
        &v,
        Rule::S10,
        "outgoingAuth.default.headerInjection.headerValueEnv",
    );
    assert!(text.contains("NEWLINE_SECRET"));
    assert!(text.contains("trailing newline"));
    assert!(!text.contains("secret\n"));
}

// ---- S-11: environment variables

#[test]
fn s11_env_var_must_be_set_and_non_empty() {
    for var in ["MISSING_VAR", "EMPTY"] {
        let v = header("X-Key", json!({ "headerValueEnv": var }));
        let text = only_error(
            &v,
            Rule::S11,
            "outgoingAuth.default.headerInjection.headerValueEnv",
        );
        assert!(text.contains(&format!("environment variable {var} not set or empty")));
        assert!(text.contains("host_env_keys"));
    }
    let v = header("X-Key", json!({ "headerValueEnv": "NOT-A-NAME" }));
    only_error(
        &v,
        Rule::S11,
        "outgoingAuth.default.headerInjection.headerValueEnv",
    );
}

// ---- S-12: token location

#[test]
fn s12_metadata_key_and_key_prefix_are_exclusive() {
    let v = json!({ "authServer": { "upstreams": ["github"],
        "tokens": { "metadataKey": "upstream_tokens", "keyPrefix": "x-upstream-token-" } }, "outgoingAuth": {} });
    only_error(&v, Rule::S12, "authServer.tokens");
}

#[test]
fn s12_key_prefix_layout() {
    let v = json!({ "authServer": { "upstreams": ["github"],
        "tokens": { "keyPrefix": "x-upstream-token-", "maxTokenBytes": 4096 } }, "outgoingAuth": {} });
    let tokens = load(&v).unwrap().config.auth_server.unwrap().tokens;
    assert_eq!(
        tokens.layout,
        TokenLayout::KeyPrefix {
            prefix: "x-upstream-token-".into()
        }
    );
    assert_eq!(tokens.max_token_bytes, 4096);
}

#[test]
fn s12_empty_names_are_rejected() {
    let v = json!({ "authServer": { "upstreams": ["github"], "tokens": { "metadataNamespace": "" } }, "outgoingAuth": {} });
    only_error(&v, Rule::S12, "authServer.tokens.metadataNamespace");
}

// ---- S-13: token exchange fields

#[test]
fn s13_token_url_must_be_absolute_http() {
    for bad in [
        "sts.example/token",
        "ftp://sts/token",
        "https://",
        "https://user@sts/token",
        "https://sts /token",
    ] {
        let v = json!({ "outgoingAuth": { "default": exchange(json!({ "tokenUrl": bad })) } });
        only_error(&v, Rule::S13, "outgoingAuth.default.tokenExchange.tokenUrl");
    }
}

#[test]
fn s13_user_information_in_the_token_url_is_refused_without_echoing_it() {
    for url in [
        "https://gw:s3cr3t@sts.example/token",
        "https://gw:s3cr3t@sts.example",
        "http://gw:s3cr3t@sts example/token",
        "gw:s3cr3t@sts.example/token",
    ] {
        let v = json!({ "outgoingAuth": { "default": exchange(json!({ "tokenUrl": url })) } });
        let text = only_error(&v, Rule::S13, "outgoingAuth.default.tokenExchange.tokenUrl");
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("must not carry user information"), "{text}");
    }
    // An '@' in the path is no user information.
    let v = json!({ "outgoingAuth": { "default": exchange(json!({ "tokenUrl": "https://sts.example/a@b" })) } });
    assert!(load(&v).is_ok());
}

#[test]
fn s13_token_url_is_split_for_the_http_call() {
    let v = json!({ "outgoingAuth": { "default": exchange(json!({ "tokenUrl": "http://127.0.0.1:8080/oauth2/token?x=1" })) } });
    let Some(Strategy::TokenExchange(te)) = load(&v).unwrap().config.outgoing_auth.default else {
        panic!()
    };
    assert_eq!(te.token_url.authority, "127.0.0.1:8080");
    assert_eq!(te.token_url.path, "/oauth2/token?x=1");
    let v = json!({ "outgoingAuth": { "default": exchange(json!({ "tokenUrl": "https://sts.example" })) } });
    let Some(Strategy::TokenExchange(te)) = load(&v).unwrap().config.outgoing_auth.default else {
        panic!()
    };
    assert_eq!(te.token_url.path, "/");
}

#[test]
fn s13_secret_without_client_id() {
    let v = json!({ "outgoingAuth": { "default": exchange(json!({ "clientSecretEnv": "STS_SECRET" })) } });
    let text = only_error(
        &v,
        Rule::S13,
        "outgoingAuth.default.tokenExchange.clientSecretEnv",
    );
    assert!(text.contains("clientSecretEnv cannot be provided without clientId"));
}

#[test]
fn s13_subject_token_type_forms() {
    for (given, expected) in [
        ("access_token", SubjectTokenType::AccessToken),
        ("id_token", SubjectTokenType::IdToken),
        ("jwt", SubjectTokenType::Jwt),
        (
            "urn:ietf:params:oauth:token-type:id_token",
            SubjectTokenType::IdToken,
        ),
    ] {
        let v = json!({ "outgoingAuth": { "default": exchange(json!({ "subjectTokenType": given })) } });
        let Some(Strategy::TokenExchange(te)) = load(&v).unwrap().config.outgoing_auth.default
        else {
            panic!()
        };
        assert_eq!(te.subject_token_type, expected);
    }
    let v =
        json!({ "outgoingAuth": { "default": exchange(json!({ "subjectTokenType": "saml2" })) } });
    let text = only_error(
        &v,
        Rule::S13,
        "outgoingAuth.default.tokenExchange.subjectTokenType",
    );
    assert!(text.contains("must be one of: access_token, id_token, jwt"));
}

#[test]
fn s13_scopes_are_scope_tokens() {
    let v = json!({ "outgoingAuth": { "default": exchange(json!({ "scopes": ["read", "two words"] })) } });
    only_error(
        &v,
        Rule::S13,
        "outgoingAuth.default.tokenExchange.scopes[1]",
    );
}

#[test]
fn s04_token_exchange_requires_url() {
    let v =
        json!({ "outgoingAuth": { "default": { "type": "token_exchange", "tokenExchange": {} } } });
    let problems = errors(&v);
    let paths: Vec<_> = problems.iter().map(|p| (p.rule, p.path.as_str())).collect();
    // No cluster problem: without a tokenUrl there is nothing to say about it yet.
    assert_eq!(
        paths,
        [(Rule::S04, "outgoingAuth.default.tokenExchange.tokenUrl")]
    );
    let v = json!({ "outgoingAuth": { "default": exchange(json!({ "cluster": " " })) } });
    only_error(&v, Rule::S04, "outgoingAuth.default.tokenExchange.cluster");
}

#[test]
fn w02_cluster_defaults_to_the_token_url_host_with_a_warning() {
    let v = json!({ "outgoingAuth": { "default": { "type": "token_exchange",
        "tokenExchange": { "tokenUrl": "https://STS.corp.example:8443/oauth2/token" } } } });
    let loaded = load(&v).unwrap();
    let Some(Strategy::TokenExchange(te)) = &loaded.config.outgoing_auth.default else {
        panic!("{:?}", loaded.config)
    };
    assert_eq!(te.cluster, "sts.corp.example");
    // The same name `outgoing-auth convert` gives it.
    assert_eq!(
        outgoing_auth::k8s::convert::default_cluster(
            "https://STS.corp.example:8443/oauth2/token",
            outgoing_auth::k8s::convert::ClusterNaming::Host
        )
        .as_deref(),
        Some(te.cluster.as_str())
    );
    let warnings = loaded.warnings.problems();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert_eq!(warnings[0].rule, Rule::W02);
    assert_eq!(
        warnings[0].path,
        "outgoingAuth.default.tokenExchange.cluster"
    );
    assert!(
        warnings[0]
            .message
            .contains("calls the Envoy cluster \"sts.corp.example\""),
        "{}",
        warnings[0]
    );
    // An explicit cluster wins, without a warning.
    let v = json!({ "outgoingAuth": { "default": exchange(json!({ "cluster": "my-sts" })) } });
    let loaded = load(&v).unwrap();
    assert!(loaded.warnings.is_empty());
    let Some(Strategy::TokenExchange(te)) = &loaded.config.outgoing_auth.default else {
        panic!()
    };
    assert_eq!(te.cluster, "my-sts");
}

// ---- S-14: ranges

#[test]
fn s14_numbers_out_of_range() {
    let v = json!({ "outgoingAuth": { "default": exchange(json!({ "timeoutMs": 0 })) } });
    only_error(
        &v,
        Rule::S14,
        "outgoingAuth.default.tokenExchange.timeoutMs",
    );
    let v = json!({ "outgoingAuth": { "default": exchange(json!({ "timeoutMs": 1.5 })) } });
    only_error(
        &v,
        Rule::S14,
        "outgoingAuth.default.tokenExchange.timeoutMs",
    );
    let v = json!({ "authServer": { "upstreams": ["github"], "tokens": { "maxTokenBytes": 100000000 } }, "outgoingAuth": {} });
    only_error(&v, Rule::S14, "authServer.tokens.maxTokenBytes");
    let v = json!({ "outgoingAuth": { "default": exchange(json!({ "timeoutMs": 60000 })) } });
    assert!(load(&v).is_ok());
}

// ---- W-01: inline secret

#[test]
fn w01_inline_client_secret_warns_but_loads() {
    let v = json!({ "outgoingAuth": { "default": exchange(json!({ "clientId": "gw", "clientSecret": "s3cr3t" })) } });
    let loaded = load(&v).unwrap();
    let warnings = loaded.warnings.problems();
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].rule, Rule::W01);
    assert!(!warnings[0].to_string().contains("s3cr3t"));
    let v = json!({ "outgoingAuth": { "default": exchange(json!({ "clientId": "gw", "clientSecretEnv": "STS_SECRET" })) } });
    assert!(load(&v).unwrap().warnings.is_empty());
}

// ---- Reporting

#[test]
fn all_problems_are_reported_not_just_the_first() {
    let v = json!({
        "authServer": { "upstreams": ["github"] },
        "outgoingAuth": { "backends": {
            "a": inject("gitlab"),
            "b": inject(""),
            "c": { "type": "nope" },
            "d": { "type": "header_injection", "headerInjection": { "headerName": "X", "headerValueEnv": "UNSET" } }
        } }
    });
    let rules: Vec<_> = errors(&v).iter().map(|p| p.rule).collect();
    assert_eq!(rules, [Rule::S05, Rule::S11, Rule::V02, Rule::V06]);
}

#[test]
fn problem_lines_start_with_the_rule_id_and_path() {
    let v = with_auth_server(json!({ "backends": { "x": inject("gitlab") } }));
    let line = errors(&v)[0].to_string();
    assert!(
        line.starts_with("[V-02] outgoingAuth.backends[\"x\"].upstreamInject.providerName: "),
        "{line}"
    );
}

#[test]
fn odd_names_are_quoted_so_they_cannot_forge_log_lines() {
    let v = with_auth_server(json!({ "backends": { "evil\n[V-00] ok": inject("gitlab") } }));
    let line = errors(&v)[0].to_string();
    assert!(!line.contains('\n'), "{line}");
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let v = header("X-Key", json!({ "headerValueEnv": "INTERNAL_KEY" }));
    let c = load(&v).unwrap().config;
    let debug = format!("{c:?}");
    assert!(!debug.contains("internal-secret"), "{debug}");
    assert!(debug.contains("<redacted>"));
}

#[test]
fn rule_ids_are_unique_and_well_formed() {
    let mut ids: Vec<_> = Rule::ALL.iter().map(|r| r.id()).collect();
    for id in &ids {
        assert!(id.len() == 4 && id.as_bytes()[1] == b'-', "{id}");
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), Rule::ALL.len());
}

// ---- S-15: backend name sources

#[test]
fn s15_backend_name_sources_default_to_all_three() {
    use outgoing_auth::core::config::BackendNameSource;
    let c = load(&json!({ "outgoingAuth": {} })).unwrap().config;
    assert_eq!(c.backend_name_sources, BackendNameSource::ALL);
    let c = load(
        &json!({ "backendNameSources": ["clusterName", "routeMetadata"], "outgoingAuth": {} }),
    )
    .unwrap()
    .config;
    assert_eq!(
        c.backend_name_sources,
        [
            BackendNameSource::ClusterName,
            BackendNameSource::RouteMetadata
        ]
    );
}

#[test]
fn s15_unknown_duplicate_or_no_sources_are_rejected() {
    let v = json!({ "backendNameSources": ["clusterName", "header"], "outgoingAuth": {} });
    let text = only_error(&v, Rule::S15, "backendNameSources[1]");
    assert!(
        text.contains("routeMetadata, clusterMetadata, clusterName"),
        "{text}"
    );
    let v = json!({ "backendNameSources": ["clusterName", "clusterName"], "outgoingAuth": {} });
    only_error(&v, Rule::S15, "backendNameSources[1]");
    let v = json!({ "backendNameSources": [], "outgoingAuth": {} });
    only_error(&v, Rule::S15, "backendNameSources");
}

// Envoy additions: credential removal (S-16) and the mcp_router hand-off (S-17).

fn with(top: Value) -> Value {
    let mut v = json!({ "outgoingAuth": {} });
    if let (Some(base), Some(extra)) = (v.as_object_mut(), top.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    v
}

#[test]
fn s16_removal_lists_take_header_and_cookie_names() {
    let loaded = load(&with(json!({
        "removeRequestHeaders": ["X-Api-Key", "x-client-session"],
        "removeCookies": ["BearerToken", "OauthHMAC"]
    })))
    .unwrap();
    assert_eq!(
        loaded.config.removal.headers,
        ["x-api-key", "x-client-session"]
    );
    assert_eq!(loaded.config.removal.cookies, ["BearerToken", "OauthHMAC"]);
}

#[test]
fn s16_refuses_bad_reserved_repeated_and_too_many_names() {
    for (list, value, why) in [
        (
            "removeRequestHeaders",
            json!(["x api"]),
            "not a valid header name",
        ),
        (
            "removeRequestHeaders",
            json!([":path"]),
            "not a valid header name",
        ),
        ("removeRequestHeaders", json!(["Host"]), "managed by Envoy"),
        (
            "removeRequestHeaders",
            json!(["X-A", "x-a"]),
            "listed more than once",
        ),
        ("removeCookies", json!(["a;b"]), "not a valid cookie name"),
        (
            "removeCookies",
            json!(["Id", "Id"]),
            "listed more than once",
        ),
    ] {
        let msg = only_error(
            &with(json!({ list: value })),
            Rule::S16,
            &format!("{list}[{}]", value.as_array().unwrap().len() - 1),
        );
        assert!(msg.contains(why), "{msg}");
    }
    let many: Vec<String> = (0..65).map(|i| format!("x-h{i}")).collect();
    let msg = only_error(
        &with(json!({ "removeRequestHeaders": many })),
        Rule::S16,
        "removeRequestHeaders",
    );
    assert!(msg.contains("at most 64"), "{msg}");
}

fn handoff_env(name: &str) -> Option<String> {
    match name {
        "HANDOFF_KEY" => Some("k".repeat(48)),
        "SHORT_KEY" => Some("too-short".to_owned()),
        other => env(other),
    }
}

fn load_handoff(v: &Value) -> Result<validate::Loaded, Vec<Problem>> {
    validate::load(v.to_string().as_bytes(), &handoff_env).map_err(|r| r.problems().to_vec())
}

fn handoff_error(v: &Value, path: &str) -> String {
    let Err(problems) = load_handoff(v) else {
        panic!("config was accepted: {v}");
    };
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(
        (problems[0].rule, problems[0].path.as_str()),
        (Rule::S17, path),
        "{problems:#?}"
    );
    problems[0].to_string()
}

#[test]
fn s17_an_issuing_instance_needs_no_outgoing_auth_and_an_accepting_one_keeps_its_strategies() {
    let issue =
        json!({ "authServer": { "upstreams": ["github"] }, "handoff": { "mode": "issue" } });
    let loaded = load_handoff(&issue).unwrap();
    let handoff = loaded.config.handoff.unwrap();
    assert_eq!(
        handoff.mode,
        config::HandoffMode::Issue {
            client_bearer: false
        }
    );
    assert_eq!(handoff.header, "x-outgoing-auth-handoff");
    assert!(handoff.key.is_none());
    let accept = json!({
        "authServer": { "upstreams": ["github"] },
        "handoff": { "mode": "accept", "header": "X-My-Handoff", "keyEnv": "HANDOFF_KEY" },
        "outgoingAuth": { "backends": { "github-mcp": inject("github") } }
    });
    let handoff = load_handoff(&accept).unwrap().config.handoff.unwrap();
    assert_eq!(handoff.mode, config::HandoffMode::Accept);
    assert_eq!(handoff.header, "x-my-handoff");
    assert_eq!(handoff.key.unwrap().env.as_deref(), Some("HANDOFF_KEY"));
    let bearer_only = json!({ "handoff": { "mode": "issue", "clientBearer": true } });
    assert!(load_handoff(&bearer_only).is_ok());
}

#[test]
fn s17_refuses_what_a_hand_off_cannot_be() {
    let msg = handoff_error(
        &json!({ "handoff": { "mode": "relay" }, "outgoingAuth": {} }),
        "handoff.mode",
    );
    assert!(msg.contains("unknown handoff mode \"relay\""), "{msg}");
    let msg = handoff_error(
        &json!({ "handoff": { "mode": "issue", "clientBearer": true },
                 "outgoingAuth": { "default": { "type": "unauthenticated" } } }),
        "outgoingAuth",
    );
    assert!(msg.contains("never applies a backend strategy"), "{msg}");
    let msg = handoff_error(
        &json!({ "handoff": { "mode": "issue", "clientBearer": true }, "removeCookies": ["Id"] }),
        "removeRequestHeaders",
    );
    assert!(msg.contains("accepting instances"), "{msg}");
    let msg = handoff_error(&json!({ "handoff": { "mode": "issue" } }), "handoff");
    assert!(msg.contains("nothing to hand off"), "{msg}");
    let msg = handoff_error(
        &json!({ "handoff": { "mode": "accept", "clientBearer": true }, "outgoingAuth": {} }),
        "handoff.clientBearer",
    );
    assert!(msg.contains("belongs to the issuing instance"), "{msg}");
    let msg = handoff_error(
        &json!({ "handoff": { "mode": "accept", "header": "Authorization" }, "outgoingAuth": {} }),
        "handoff.header",
    );
    assert!(msg.contains("carries client credentials"), "{msg}");
    let msg = handoff_error(
        &json!({ "handoff": { "mode": "accept", "keyEnv": "SHORT_KEY" }, "outgoingAuth": {} }),
        "handoff.keyEnv",
    );
    assert!(
        msg.contains("shorter than 32 bytes") && !msg.contains("too-short"),
        "{msg}"
    );
}

#[test]
fn s17_a_bad_header_name_or_a_missing_key_variable_names_its_own_rule() {
    let problems = load_handoff(
        &json!({ "handoff": { "mode": "accept", "header": "x y" }, "outgoingAuth": {} }),
    )
    .unwrap_err();
    assert_eq!(problems[0].rule, Rule::S09, "{problems:#?}");
    let problems = load_handoff(
        &json!({ "handoff": { "mode": "accept", "keyEnv": "UNSET_KEY" }, "outgoingAuth": {} }),
    )
    .unwrap_err();
    assert_eq!(problems[0].rule, Rule::S11, "{problems:#?}");
}

// ---- A vMCP outgoingAuth block pastes in as-is

/// ToolHive's own examples (research notes, toolhive-vmcp-spec.md): RFC-0054's Mode B
/// `outgoingAuth` (two upstream_inject backends, a token_exchange with subjectProviderName, a
/// header_injection), and the token_exchange shapes `TestTokenExchangeStrategy_Validate` accepts
/// (only tokenUrl; every field; id_token; clientId only). vMCP has no `cluster`: none is written.
fn toolhive_outgoing_auth() -> Value {
    json!({
        "source": "inline",
        "backends": {
            "github-tools": { "type": "upstream_inject", "upstreamInject": { "providerName": "github" } },
            "atlassian-tools": { "type": "upstream_inject", "upstreamInject": { "providerName": "atlassian" } },
            "corporate-api": { "type": "token_exchange", "tokenExchange": {
                "tokenUrl": "https://sts.corp.example.com/oauth2/token",
                "audience": "https://corporate-api.example.com",
                "subjectProviderName": "corporate-idp" } },
            "internal-api": { "type": "header_injection", "headerInjection": {
                "headerName": "X-API-Key", "headerValueEnv": "INTERNAL_KEY" } },
            "only-token-url": { "type": "token_exchange", "tokenExchange": {
                "tokenUrl": "https://auth.example.com/token" } },
            "all-fields": { "type": "token_exchange", "tokenExchange": {
                "tokenUrl": "https://auth.example.com/token", "clientId": "client-id",
                "clientSecretEnv": "STS_SECRET", "audience": "https://backend.example.com",
                "scopes": ["read", "write"], "subjectTokenType": "access_token" } },
            "id-token": { "type": "token_exchange", "tokenExchange": {
                "tokenUrl": "https://auth.example.com:8443/token", "subjectTokenType": "id_token" } },
            "client-id-only": { "type": "token_exchange", "tokenExchange": {
                "tokenUrl": "http://127.0.0.1:9000/token", "clientId": "client-id" } }
        }
    })
}

#[test]
fn toolhives_outgoing_auth_examples_paste_in_as_is() {
    let v = json!({
        "authServer": { "upstreams": ["github", "atlassian", "corporate-idp"] },
        "outgoingAuth": toolhive_outgoing_auth(),
    });
    let loaded = load(&v).unwrap();
    let clusters: Vec<(&str, &str)> = loaded
        .config
        .outgoing_auth
        .backends
        .iter()
        .filter_map(|(name, s)| match s {
            Strategy::TokenExchange(t) => Some((name.as_str(), t.cluster.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        clusters,
        [
            ("all-fields", "auth.example.com"),
            ("client-id-only", "127.0.0.1"),
            ("corporate-api", "sts.corp.example.com"),
            ("id-token", "auth.example.com"),
            ("only-token-url", "auth.example.com"),
        ]
    );
    // One W-02 per defaulted cluster, naming the cluster Envoy must define; nothing else.
    let warnings = loaded.warnings.problems();
    assert_eq!(warnings.len(), 5, "{warnings:#?}");
    assert!(warnings.iter().all(|w| w.rule == Rule::W02));
    assert!(warnings.iter().any(|w| w.path
        == "outgoingAuth.backends[\"corporate-api\"].tokenExchange.cluster"
        && w.message.contains("\"sts.corp.example.com\"")));
}

// ---- missingToken (S-18)

fn with_missing_token(block: Value) -> Value {
    json!({ "authServer": { "upstreams": ["github"] }, "missingToken": block,
            "outgoingAuth": { "default": inject("github") } })
}

#[test]
fn s18_a_missing_token_block_is_loaded_as_written() {
    let loaded = load(&with_missing_token(json!({
        "resourceMetadata": "https://gw.example/.well-known/oauth-protected-resource",
        "scope": "mcp:tools read",
        "connectUrls": { "github": "https://gw.example/connect/{provider}?e={elicitationId}" },
        "message": "Please connect {provider}.",
        "readBody": true
    })))
    .unwrap();
    let m = loaded.config.missing_token;
    assert_eq!(
        m.challenge.resource_metadata.as_deref(),
        Some("https://gw.example/.well-known/oauth-protected-resource")
    );
    assert_eq!(m.challenge.scope.as_deref(), Some("mcp:tools read"));
    assert_eq!(m.connect_urls.len(), 1);
    assert_eq!(m.message, "Please connect {provider}.");
    assert!(m.read_body);
    let default = load(&with_missing_token(json!({})))
        .unwrap()
        .config
        .missing_token;
    assert_eq!(
        default.message,
        "Connect your {provider} account to use this tool."
    );
    assert!(!default.read_body && default.connect_urls.is_empty());
}

#[test]
fn s18_refuses_what_cannot_be_sent() {
    for (block, path, why) in [
        (
            json!({ "resourceMetadata": "https://gw.example/\"x" }),
            "missingToken.resourceMetadata",
            "resourceMetadata",
        ),
        (
            json!({ "scope": "two  spaces" }),
            "missingToken.scope",
            "scope",
        ),
        (
            json!({ "message": "no placeholder" }),
            "missingToken.message",
            "message",
        ),
        (
            json!({ "connectUrls": { "slack": "https://gw.example/{provider}" } }),
            "missingToken.connectUrls.slack",
            "not in authServer.upstreams",
        ),
        (
            json!({ "connectUrls": { "github": "ftp://gw.example/{provider}" } }),
            "missingToken.connectUrls.github",
            "connect URL",
        ),
    ] {
        let msg = only_error(&with_missing_token(block), Rule::S18, path);
        assert!(msg.contains(why), "{msg}");
    }
}

#[test]
fn s18_read_body_is_refused_behind_mcp_router() {
    let v = json!({ "authServer": { "upstreams": ["github"] }, "handoff": { "mode": "accept" },
                    "missingToken": { "readBody": true }, "outgoingAuth": { "default": inject("github") } });
    let msg = only_error(&v, Rule::S18, "missingToken.readBody");
    assert!(msg.contains("mcp_router"), "{msg}");
}
