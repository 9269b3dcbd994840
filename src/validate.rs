//! Startup validation: named rules and the problems they report.
//!
//! Every problem names its rule, the JSON path it is about and what to do, so the error line Envoy
//! logs when it refuses a config is enough to fix it. Structural rules (`S-xx`) are checked while
//! the JSON is decoded ([`crate::config`]); the cross-field rules ToolHive defines (`V-xx`) are
//! checked here, on the decoded config. All problems are reported, never just the first.

use std::fmt;

use crate::config::{Config, Strategy};

/// A named validation rule. IDs are stable: they are what operators grep for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// A strategy needs upstream tokens but no `authServer` is configured.
    V01,
    /// A provider name is not one of `authServer.upstreams`.
    V02,
    /// `authServer.upstreams` is empty.
    V05,
    /// A provider name is empty or blank.
    V06,
    /// The configuration is not valid JSON, or not a JSON object.
    S01,
    /// A field that this filter does not know.
    S02,
    /// A field has the wrong JSON type.
    S03,
    /// A required field is missing or empty.
    S04,
    /// An unknown strategy `type`.
    S05,
    /// A strategy's sub-object does not match its `type`.
    S06,
    /// An unsupported `outgoingAuth.source`.
    S07,
    /// An invalid or duplicate upstream provider name.
    S08,
    /// An invalid header name.
    S09,
    /// An invalid header value (control characters such as CR, LF or NUL).
    S10,
    /// An environment variable that must be set is missing or empty.
    S11,
    /// `authServer.tokens`: both or neither of the metadata layouts, or a bad value.
    S12,
    /// A `tokenExchange` field is invalid.
    S13,
    /// A number is out of its allowed range.
    S14,
    /// `backendNameSources`: empty, an unknown source, or one listed twice.
    S15,
    /// `removeRequestHeaders` / `removeCookies`: an invalid, reserved or repeated name, or too many.
    S16,
    /// `handoff`: an unknown mode, a bad header, a short key, or what an issuing instance
    /// would never do (apply strategies, remove credentials) or could not (hand off nothing).
    S17,
    /// Warning: a client secret is written inline in the configuration.
    W01,
}

impl Rule {
    pub const ALL: [Rule; 22] = [
        Rule::V01,
        Rule::V02,
        Rule::V05,
        Rule::V06,
        Rule::S01,
        Rule::S02,
        Rule::S03,
        Rule::S04,
        Rule::S05,
        Rule::S06,
        Rule::S07,
        Rule::S08,
        Rule::S09,
        Rule::S10,
        Rule::S11,
        Rule::S12,
        Rule::S13,
        Rule::S14,
        Rule::S15,
        Rule::S16,
        Rule::S17,
        Rule::W01,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Rule::V01 => "V-01",
            Rule::V02 => "V-02",
            Rule::V05 => "V-05",
            Rule::V06 => "V-06",
            Rule::S01 => "S-01",
            Rule::S02 => "S-02",
            Rule::S03 => "S-03",
            Rule::S04 => "S-04",
            Rule::S05 => "S-05",
            Rule::S06 => "S-06",
            Rule::S07 => "S-07",
            Rule::S08 => "S-08",
            Rule::S09 => "S-09",
            Rule::S10 => "S-10",
            Rule::S11 => "S-11",
            Rule::S12 => "S-12",
            Rule::S13 => "S-13",
            Rule::S14 => "S-14",
            Rule::S15 => "S-15",
            Rule::S16 => "S-16",
            Rule::S17 => "S-17",
            Rule::W01 => "W-01",
        }
    }

    /// Warnings are logged but do not make Envoy refuse the configuration.
    pub fn is_warning(self) -> bool {
        matches!(self, Rule::W01)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// One thing wrong with a configuration. Never carries a secret: messages name fields and
/// variables, not their values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub rule: Rule,
    /// Where in the JSON document, e.g. `outgoingAuth.backends["github-mcp"].upstreamInject`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}: {}", self.rule, self.path, self.message)
    }
}

/// Collects problems while a configuration is decoded and checked.
#[derive(Debug, Default)]
pub struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    pub fn report(&mut self, rule: Rule, path: &str, message: impl Into<String>) {
        self.list.push(Problem {
            rule,
            path: path.to_owned(),
            message: message.into(),
        });
    }

    pub fn has_errors(&self) -> bool {
        self.list.iter().any(|p| !p.rule.is_warning())
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.list
    }
}

/// JSON path of a backend's strategy, and how messages name it.
pub(crate) fn backend_path(name: &str) -> String {
    format!("outgoingAuth.backends[{}]", quote(name))
}

pub(crate) const DEFAULT_PATH: &str = "outgoingAuth.default";

/// JSON path of member `key` of the object at `path` (`$` is the root): `path.key` for a plain
/// name, else `path["key"]` with JSON escaping, so an unknown field's name cannot forge a log line.
pub(crate) fn member_path(path: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
    match (path, plain) {
        ("$", true) => key.to_owned(),
        (_, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{}]", quote(key)),
    }
}

/// `"name"` with JSON escaping, so odd characters in names cannot forge log lines.
pub(crate) fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// The cross-field rules of ToolHive's `ValidateAuthServerIntegration` (V-01, V-02, V-05, V-06),
/// applied to the default strategy and every backend.
pub fn check_auth_server_integration(config: &Config, problems: &mut Problems) {
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
        let (who, base) = match backend {
            Some(name) => (
                format!("outgoingAuth backend {}", quote(name)),
                backend_path(name),
            ),
            None => (
                "outgoingAuth default strategy".to_owned(),
                DEFAULT_PATH.to_owned(),
            ),
        };
        let kind = strategy.type_name();
        let path = format!("{base}.{field}");
        let Some(auth) = &config.auth_server else {
            problems.report(
                Rule::V01,
                &base,
                format!(
                    "{who} uses {kind} but no authServer is configured; {kind} with an upstream \
                     provider reads the user's upstream tokens from dynamic metadata, which \
                     authServer describes: add authServer with upstreams and tokens"
                ),
            );
            continue;
        };
        if provider.trim().is_empty() {
            let msg = match strategy {
                Strategy::UpstreamInject(_) => {
                    format!("{who} {kind} requires a non-empty providerName")
                }
                _ => format!(
                    "{who} {kind} has a blank subjectProviderName; name an upstream provider, or \
                     omit the field to use the client's bearer token as the subject"
                ),
            };
            problems.report(Rule::V06, &path, msg);
            continue;
        }
        if !auth.upstreams.iter().any(|u| u == provider) {
            problems.report(
                Rule::V02,
                &path,
                format!(
                    "{who} references upstream provider {} which is not configured in \
                     authServer.upstreams; add it there or use one of: {}",
                    quote(provider),
                    auth.upstreams.join(", ")
                ),
            );
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
