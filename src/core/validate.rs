//! Startup validation: the decoded configuration's cross-field rules, and [`load`], which decodes
//! and validates a plugin configuration. Structural rules (`S-xx`) are checked while the JSON is
//! decoded ([`crate::core::config`]); the cross-field rules ToolHive defines (`V-xx`) are checked here,
//! on the decoded config. All problems are reported ([`crate::core::report`]), never just the first.

use std::collections::HashSet;

use crate::core::config::{decode, Config, Decoded, Strategy, TokenLayout};
use crate::core::report::{
    backend_path, bounded_list, quote, Problems, Report, Rule, DEFAULT_PATH,
};

/// A decoded configuration, with the warnings it raised.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// Warnings only (bounded like every [`Report`]); log [`Report::lines`].
    pub warnings: Report,
}

/// Decodes and validates the plugin configuration. `env` looks up environment variables (the VM's
/// `vm_config.environment_variables` inside Envoy; the process environment in the CLI).
///
/// On failure returns the problems found (errors and warnings) as a bounded [`Report`]: the first
/// [`crate::core::report::MAX_REPORTED_PROBLEMS`] in full, and the true counts. Time and memory are linear in
/// the size of the configuration, whatever it holds.
pub fn load(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, Report> {
    let mut problems = Problems::default();
    let decoded = decode(json, env, &mut problems);
    if let Some(Decoded {
        config,
        auth_server_broken: false,
        missing_provider,
    }) = &decoded
    {
        let missing: HashSet<Option<&str>> =
            missing_provider.iter().map(|b| b.as_deref()).collect();
        check_auth_server_integration(config, &missing, &mut problems);
    }
    let config = decoded.map(|d| d.config);
    match config {
        Some(config) if !problems.has_errors() => Ok(Loaded {
            config,
            warnings: problems.into_report(),
        }),
        _ => Err(problems.into_report()),
    }
}

/// The cross-field rules of ToolHive's `ValidateAuthServerIntegration` (V-01, V-02, V-05, V-06),
/// applied to the default strategy and every backend. `missing_provider` names the strategies
/// whose `providerName` field is absent (`None`: the default strategy), so V-06 can say "missing"
/// rather than "empty". Linear in the number of strategies and upstreams.
pub fn check_auth_server_integration(
    config: &Config,
    missing_provider: &HashSet<Option<&str>>,
    problems: &mut Problems,
) {
    if let Some(auth) = &config.auth_server {
        if auth.upstreams.is_empty() {
            problems.report(
                Rule::V05,
                "authServer.upstreams",
                "authServer requires at least one upstream provider; list the providers whose \
                 tokens the auth filter puts into dynamic metadata",
            );
        }
    }
    let known: Option<HashSet<&str>> = config
        .auth_server
        .as_ref()
        .map(|a| a.upstreams.iter().map(String::as_str).collect());
    let upstream_list = || match &config.auth_server {
        Some(auth) if !auth.upstreams.is_empty() => format!(
            "one of authServer.upstreams: {}",
            bounded_list(auth.upstreams.iter().map(String::as_str))
        ),
        _ => "an upstream provider, listed in authServer.upstreams".to_owned(),
    };
    let strategies = config
        .outgoing_auth
        .default
        .iter()
        .map(|s| (None, s))
        .chain(
            config
                .outgoing_auth
                .backends
                .iter()
                .map(|(name, s)| (Some(name.as_str()), s)),
        );
    for (backend, strategy) in strategies {
        let Some((field, provider)) = provider_reference(strategy) else {
            continue;
        };
        let who = || match backend {
            Some(name) => format!("outgoingAuth backend {}", quote(name)),
            None => "outgoingAuth default strategy".to_owned(),
        };
        let base = || match backend {
            Some(name) => backend_path(name),
            None => DEFAULT_PATH.to_owned(),
        };
        let kind = strategy.type_name();
        let blank = provider.trim().is_empty();
        if known.is_none() {
            problems.report_with(Rule::V01, &base(), || {
                format!(
                    "{} uses {kind} but no authServer is configured; {kind} with an upstream \
                     provider reads the user's upstream tokens from dynamic metadata, which \
                     authServer describes: add authServer with upstreams and tokens",
                    who()
                )
            });
            // V-06 does not need authServer: report it too, so both fixes are known at once.
            if !blank {
                continue;
            }
        }
        if blank {
            let path = format!("{}.{field}", base());
            problems.report_with(Rule::V06, &path, || match strategy {
                Strategy::UpstreamInject(_) if missing_provider.contains(&backend) => format!(
                    "{} {kind} requires a providerName, and it is missing; set \
                     upstreamInject.providerName to {}",
                    who(),
                    upstream_list()
                ),
                Strategy::UpstreamInject(_) => format!(
                    "{} {kind} requires a non-empty providerName; set it to {}",
                    who(),
                    upstream_list()
                ),
                _ => format!(
                    "{} {kind} has a blank subjectProviderName; set it to {}, or omit the \
                     field to use the client's bearer token as the subject",
                    who(),
                    upstream_list()
                ),
            });
            continue;
        }
        if known.as_ref().is_some_and(|k| !k.contains(provider)) {
            let path = format!("{}.{field}", base());
            problems.report_with(Rule::V02, &path, || {
                format!(
                    "{} references upstream provider {} which is not configured in \
                     authServer.upstreams; add it there or use one of: {}",
                    who(),
                    quote(provider),
                    config
                        .auth_server
                        .as_ref()
                        .map_or(String::new(), |a| bounded_list(
                            a.upstreams.iter().map(String::as_str)
                        ))
                )
            });
        }
    }
}

/// The upstream provider a strategy reads from metadata, with the field that names it.
fn provider_reference(strategy: &Strategy) -> Option<(&'static str, &str)> {
    match strategy {
        Strategy::UpstreamInject(u) => Some(("upstreamInject.providerName", &u.provider_name)),
        Strategy::TokenExchange(t) => t
            .subject_provider_name
            .as_deref()
            .map(|p| ("tokenExchange.subjectProviderName", p)),
        Strategy::Unauthenticated | Strategy::HeaderInjection(_) => None,
    }
}

/// Rule S-19, for configurations the native build (the Envoy dynamic module) runs: its ABI reads
/// dynamic metadata by namespace and top-level key only, so tokens inside the `metadataKey`
/// Struct (the default layout) are out of its reach. Such a configuration is refused, never run
/// half-blind.
pub fn check_native_build(config: &Config, problems: &mut Problems) {
    let Some(auth) = &config.auth_server else {
        return;
    };
    // Behind mcp_router an accepting instance reads the tokens from the hand-off, never from
    // metadata.
    if config
        .handoff
        .as_ref()
        .is_some_and(|h| h.mode == crate::core::config::HandoffMode::Accept)
    {
        return;
    }
    if let TokenLayout::Struct { key } = &auth.tokens.layout {
        problems.report(
            Rule::S19,
            "authServer.tokens",
            format!(
                "the native build reads dynamic metadata by top-level key only (Envoy's \
                 dynamic-module ABI), so tokens inside the Struct {} are out of reach; set \
                 tokens.keyPrefix and have the auth filter write one entry per provider (HTTP \
                 ext_authz's dynamic_metadata_from_headers does), or use the wasm build",
                quote(key)
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> Config {
        super::load(json.as_bytes(), &|_| None).unwrap().config
    }

    fn s19(config: &Config) -> Option<Report> {
        let mut problems = Problems::default();
        check_native_build(config, &mut problems);
        problems.has_errors().then(|| problems.into_report())
    }

    #[test]
    fn a_struct_token_layout_is_refused_with_s19_and_key_prefix_is_not() {
        let default = load(r#"{"authServer": {"upstreams": ["github"]}, "outgoingAuth": {}}"#);
        let report = s19(&default).expect("refused");
        let lines: Vec<String> = report.lines().map(|l| l.text).collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("[S-19] authServer.tokens:"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("keyPrefix"), "{}", lines[0]);

        let prefix = load(
            r#"{"authServer": {"upstreams": ["github"], "tokens": {"keyPrefix": "t."}},
                "outgoingAuth": {}}"#,
        );
        assert!(s19(&prefix).is_none());
        let no_tokens = load(r#"{"outgoingAuth": {}}"#);
        assert!(s19(&no_tokens).is_none(), "nothing read, nothing refused");
    }

    #[test]
    fn an_accepting_hand_off_instance_reads_no_metadata_and_is_exempt_from_s19() {
        let accepting = load(
            r#"{"authServer": {"upstreams": ["github"]}, "handoff": {"mode": "accept"},
                "outgoingAuth": {"backends": {"gh": {"type": "upstream_inject",
                    "upstreamInject": {"providerName": "github"}}}}}"#,
        );
        assert!(s19(&accepting).is_none());
    }
}
