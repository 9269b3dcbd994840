//! What the filter does to a request, decided without touching the host.
//!
//! At configure time every strategy becomes a [`Plan`] with everything precomputed (lower-cased
//! header names, resolved secrets, serialized metadata paths), so the request path only reads the
//! one value it needs and sets one header.

use std::collections::HashMap;

use crate::config::{Config, Secret, Strategy, TokenSource};
use crate::error::AuthError;
use crate::metadata::{self, TokenProblem};
use crate::stats::Counter;

/// Where the backend name of a request comes from, in order; the first that exists wins.
/// Serialized property paths (NUL-joined), ready for `proxy_get_property`.
pub const BACKEND_NAME_SOURCES: [&[u8]; 3] = [
    b"xds\0route_metadata\0filter_metadata\0outgoing_auth\0backend",
    b"xds\0cluster_metadata\0filter_metadata\0outgoing_auth\0backend",
    b"xds\0cluster_name",
];

/// A strategy ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Forward with no credential.
    Unauthenticated,
    /// Set a configured header.
    SetHeader {
        /// Lower case, as Envoy stores header names.
        name: String,
        value: Secret,
    },
    /// `Authorization: Bearer <the provider's upstream token>`.
    InjectUpstream {
        provider: String,
        /// Serialized property path of the provider's token.
        token_path: Vec<u8>,
    },
    /// Configured but not executable by this build.
    NotImplemented { strategy: &'static str },
}

/// The header changes a plan makes to a request that goes on to the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit<'a> {
    /// Remove the client's `Authorization` (the gateway token) before anything is set.
    pub remove_authorization: bool,
    /// A header to set, replacing any value the client sent.
    pub set: Option<(&'a str, String)>,
    pub counter: Counter,
}

impl Plan {
    fn build(strategy: &Strategy, tokens: &TokenSource) -> Plan {
        match strategy {
            Strategy::Unauthenticated => Plan::Unauthenticated,
            Strategy::HeaderInjection(h) => Plan::SetHeader {
                name: h.header_name.to_ascii_lowercase(),
                value: h.value.value.clone(),
            },
            Strategy::UpstreamInject(u) => Plan::InjectUpstream {
                provider: u.provider_name.clone(),
                token_path: metadata::serialize_path(&metadata::token_path(
                    tokens,
                    &u.provider_name,
                )),
            },
            Strategy::TokenExchange(_) => Plan::NotImplemented {
                strategy: "token_exchange",
            },
        }
    }

    /// The metadata path this plan reads, if any.
    pub fn token_path(&self) -> Option<&[u8]> {
        match self {
            Plan::InjectUpstream { token_path, .. } => Some(token_path),
            _ => None,
        }
    }

    /// Decides the request's header edit. `token` is what the host returned for
    /// [`Plan::token_path`] (`Err` when the read itself failed).
    pub fn decide(
        &self,
        token: Result<Option<&[u8]>, ()>,
        max_token_bytes: usize,
    ) -> Result<Edit<'_>, AuthError> {
        match self {
            Plan::Unauthenticated => Ok(Edit {
                remove_authorization: true,
                set: None,
                counter: Counter::Unauthenticated,
            }),
            Plan::SetHeader { name, value } => Ok(Edit {
                // Setting Authorization itself replaces the gateway token; removing first
                // would cost a host call for nothing.
                remove_authorization: name != "authorization",
                set: Some((name, value.expose().to_owned())),
                counter: Counter::HeaderInjected,
            }),
            Plan::InjectUpstream { provider, .. } => {
                let token = token
                    .map_err(|()| TokenProblem::Unreadable)
                    .and_then(|raw| metadata::check_token(raw, max_token_bytes))
                    .map_err(|problem| AuthError::UpstreamTokenNotFound {
                        provider: provider.clone(),
                        problem,
                    })?;
                Ok(Edit {
                    remove_authorization: false,
                    set: Some(("authorization", format!("Bearer {token}"))),
                    counter: Counter::UpstreamInjected,
                })
            }
            Plan::NotImplemented { strategy } => Err(AuthError::NotImplemented { strategy }),
        }
    }
}

/// Every backend's plan plus the default, built once per configuration.
#[derive(Debug, Clone)]
pub struct Plans {
    default: Plan,
    backends: HashMap<String, Plan>,
    pub tokens: TokenSource,
}

impl Plans {
    pub fn build(config: &Config) -> Plans {
        let tokens = config
            .auth_server
            .as_ref()
            .map(|a| a.tokens.clone())
            .unwrap_or_default();
        let default = config
            .outgoing_auth
            .default
            .as_ref()
            .map_or(Plan::Unauthenticated, |s| Plan::build(s, &tokens));
        let backends = config
            .outgoing_auth
            .backends
            .iter()
            .map(|(name, s)| (name.clone(), Plan::build(s, &tokens)))
            .collect();
        Plans {
            default,
            backends,
            tokens,
        }
    }

    /// Whether the backend name matters at all: with no per-backend strategies every request gets
    /// the default, and the request path skips the name lookups.
    pub fn selects_by_backend(&self) -> bool {
        !self.backends.is_empty()
    }

    /// The plan for a backend name (`None`: no name could be found): `backends[name]`, else
    /// `default`, else unauthenticated.
    pub fn for_backend(&self, name: Option<&[u8]>) -> &Plan {
        name.and_then(|n| std::str::from_utf8(n).ok())
            .and_then(|n| self.backends.get(n))
            .unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn plans(json: &str) -> Plans {
        let env = |name: &str| (name == "INTERNAL_KEY").then(|| "internal-secret".to_owned());
        Plans::build(&config::load(json.as_bytes(), &env).unwrap().config)
    }

    const EXAMPLE: &str = r#"{
      "authServer": { "upstreams": ["github", "atlassian"] },
      "outgoingAuth": {
        "default": { "type": "header_injection",
                     "headerInjection": { "headerName": "X-Default", "headerValue": "d" } },
        "backends": {
          "github-mcp": { "type": "upstream_inject", "upstreamInject": { "providerName": "github" } },
          "internal": { "type": "header_injection",
                        "headerInjection": { "headerName": "X-API-Key", "headerValueEnv": "INTERNAL_KEY" } },
          "public": { "type": "unauthenticated" },
          "corp": { "type": "token_exchange",
                    "tokenExchange": { "tokenUrl": "https://sts.example/token", "cluster": "sts" } }
        }
      }
    }"#;

    fn token_path(plan: &Plan) -> &[u8] {
        plan.token_path().unwrap()
    }

    #[test]
    fn backend_selection_uses_the_named_backend() {
        let p = plans(EXAMPLE);
        assert_eq!(
            p.for_backend(Some(b"github-mcp")),
            &Plan::InjectUpstream {
                provider: "github".to_owned(),
                token_path: b"metadata\0filter_metadata\0envoy.filters.http.ext_authz\0upstream_tokens\0github".to_vec(),
            }
        );
        assert!(matches!(
            p.for_backend(Some(b"public")),
            Plan::Unauthenticated
        ));
    }

    #[test]
    fn unknown_or_missing_backend_gets_the_default() {
        let p = plans(EXAMPLE);
        for name in [None, Some(&b"nope"[..]), Some(&b"\xff\xfe"[..])] {
            match p.for_backend(name) {
                Plan::SetHeader { name, .. } => assert_eq!(name, "x-default"),
                other => panic!("unexpected plan {other:?}"),
            }
        }
    }

    #[test]
    fn no_default_means_unauthenticated() {
        let p = plans(r#"{"outgoingAuth": {}}"#);
        assert_eq!(p.for_backend(Some(b"anything")), &Plan::Unauthenticated);
        assert!(!p.selects_by_backend());
    }

    #[test]
    fn key_prefix_layout_reads_one_entry_per_provider() {
        let p = plans(
            r#"{"authServer": {"upstreams": ["github"],
                 "tokens": {"metadataNamespace": "ns", "keyPrefix": "x-upstream-token-"}},
                "outgoingAuth": {"default": {"type": "upstream_inject",
                 "upstreamInject": {"providerName": "github"}}}}"#,
        );
        assert_eq!(
            token_path(p.for_backend(None)),
            b"metadata\0filter_metadata\0ns\0x-upstream-token-github"
        );
    }

    #[test]
    fn unauthenticated_strips_the_gateway_token() {
        let edit = Plan::Unauthenticated.decide(Ok(None), 10).unwrap();
        assert!(edit.remove_authorization);
        assert_eq!(edit.set, None);
        assert_eq!(edit.counter, Counter::Unauthenticated);
    }

    #[test]
    fn header_injection_sets_the_resolved_env_value_and_strips_authorization() {
        let p = plans(EXAMPLE);
        let edit = p
            .for_backend(Some(b"internal"))
            .decide(Ok(None), 10)
            .unwrap();
        assert!(edit.remove_authorization);
        assert_eq!(edit.set, Some(("x-api-key", "internal-secret".to_owned())));
        assert_eq!(edit.counter, Counter::HeaderInjected);
    }

    #[test]
    fn header_injection_into_authorization_replaces_instead_of_removing() {
        let p = plans(
            r#"{"outgoingAuth": {"default": {"type": "header_injection",
                 "headerInjection": {"headerName": "Authorization", "headerValue": "Basic abc"}}}}"#,
        );
        let edit = p.for_backend(None).decide(Ok(None), 10).unwrap();
        assert!(!edit.remove_authorization);
        assert_eq!(edit.set, Some(("authorization", "Basic abc".to_owned())));
    }

    // ToolHive upstream_inject_test.go, case by case.

    fn inject(provider: &str) -> Plan {
        Plan::InjectUpstream {
            provider: provider.to_owned(),
            token_path: Vec::new(),
        }
    }

    fn not_found(provider: &str, problem: TokenProblem) -> AuthError {
        AuthError::UpstreamTokenNotFound {
            provider: provider.to_owned(),
            problem,
        }
    }

    #[test]
    fn valid_token_injection() {
        let plan = inject("github");
        let edit = plan.decide(Ok(Some(b"gh-token-123")), 100).unwrap();
        assert_eq!(
            edit.set,
            Some(("authorization", "Bearer gh-token-123".to_owned()))
        );
        assert!(
            !edit.remove_authorization,
            "set replaces the client's header"
        );
        assert_eq!(edit.counter, Counter::UpstreamInjected);
    }

    #[test]
    fn nil_upstream_tokens_map_is_the_sentinel() {
        // No metadata at all: the host finds nothing at the path.
        let err = inject("github").decide(Ok(None), 100).unwrap_err();
        assert_eq!(err, not_found("github", TokenProblem::Absent));
        assert!(err.to_string().contains("github"));
    }

    #[test]
    fn provider_not_in_map_is_the_sentinel() {
        // The Struct holds only "other": the nested path for github does not exist.
        let err = inject("github").decide(Ok(None), 100).unwrap_err();
        assert!(
            matches!(err, AuthError::UpstreamTokenNotFound { ref provider, .. } if provider == "github")
        );
    }

    #[test]
    fn empty_token_value_is_the_sentinel() {
        let err = inject("github").decide(Ok(Some(b"")), 100).unwrap_err();
        assert_eq!(err, not_found("github", TokenProblem::Empty));
    }

    #[test]
    fn empty_provider_name_at_runtime_is_the_sentinel() {
        // Validation (V-06) refuses this config; at runtime it still fails closed.
        let err = inject("").decide(Ok(None), 100).unwrap_err();
        assert_eq!(err.to_string(), "provider \"\": upstream token not found");
    }

    #[test]
    fn sentinel_text_and_variant() {
        let err = inject("github").decide(Ok(None), 100).unwrap_err();
        assert_eq!(
            err.to_string(),
            "provider \"github\": upstream token not found"
        );
        assert!(matches!(err, AuthError::UpstreamTokenNotFound { .. }));
    }

    #[test]
    fn unreadable_metadata_and_bad_tokens_are_the_sentinel() {
        let plan = inject("github");
        assert_eq!(
            plan.decide(Err(()), 100).unwrap_err(),
            not_found("github", TokenProblem::Unreadable)
        );
        assert_eq!(
            plan.decide(Ok(Some(b"a\nb")), 100).unwrap_err(),
            not_found("github", TokenProblem::NotACredential)
        );
        assert_eq!(
            plan.decide(Ok(Some(b"toolong")), 3).unwrap_err(),
            not_found("github", TokenProblem::TooLong { len: 7, max: 3 })
        );
    }

    #[test]
    fn token_exchange_is_not_implemented_never_passed_through() {
        let p = plans(EXAMPLE);
        let err = p
            .for_backend(Some(b"corp"))
            .decide(Ok(None), 10)
            .unwrap_err();
        assert_eq!(
            err,
            AuthError::NotImplemented {
                strategy: "token_exchange"
            }
        );
        assert_eq!(err.reply().status, 501);
    }
}
