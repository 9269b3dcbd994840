//! What the filter does to a request, decided without touching the host.
//!
//! At configure time every strategy becomes a [`Plan`] with everything precomputed (lower-cased
//! header names, resolved secrets, serialized metadata paths), so the request path only reads the
//! one value it needs and sets one header.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::core::cache::ExchangeScope;
use crate::core::config::{
    BackendNameSource, CacheSettings, Config, Secret, Strategy, TokenExchange, TokenSource,
};
use crate::core::error::AuthError;
use crate::core::http::{self, BearerProblem};
use crate::core::metadata::{self, TokenProblem};
use crate::core::stats::Counter;

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
    InjectUpstream(UpstreamRef),
    /// RFC 8693 exchange, then `Authorization: Bearer <issued token>`.
    Exchange(Box<ExchangePlan>),
}

/// An upstream provider's token in dynamic metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRef {
    pub provider: String,
    /// Serialized property path of the provider's token.
    pub token_path: Vec<u8>,
}

impl UpstreamRef {
    fn new(provider: &str, tokens: &TokenSource) -> Self {
        UpstreamRef {
            provider: provider.to_owned(),
            token_path: metadata::serialize_path(&metadata::token_path(tokens, provider)),
        }
    }

    /// The usable token in what the host read, or ToolHive's sentinel error. A value that may be
    /// a Struct number ([`metadata::may_be_number`]) is used only if the typed metadata said it
    /// is a string.
    pub fn token<'t>(
        &self,
        view: &RequestView<'t>,
        max_token_bytes: usize,
    ) -> Result<&'t str, AuthError> {
        view.upstream_token
            .map_err(|()| TokenProblem::Unreadable)
            .and_then(|raw| metadata::check_token(raw, max_token_bytes))
            .and_then(|token| {
                if metadata::may_be_number(token.as_bytes()) && view.typed_string != Some(true) {
                    Err(TokenProblem::NotACredential)
                } else {
                    Ok(token)
                }
            })
            .map_err(|problem| AuthError::UpstreamTokenNotFound {
                provider: self.provider.clone(),
                problem,
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangePlan {
    pub exchange: TokenExchange,
    /// What, besides the subject, keys this exchange's cached tokens.
    pub scope: ExchangeScope,
    /// The subject: this provider's upstream token, or (`None`) the client's own bearer token.
    pub subject_from: Option<UpstreamRef>,
}

/// What the host read for a plan: the value at [`Plan::token_path`] (`Err` when the read
/// failed), whether the typed metadata says that value is a string (read only when
/// [`metadata::may_be_number`] says it could be a number; `None` otherwise or when unreadable)
/// and, when [`Plan::needs_client_bearer`], the client's own `Authorization` header as the
/// client sent it (on a re-run, from the [`crate::core::stream::StreamRecord`], not the headers).
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'t> {
    pub upstream_token: Result<Option<&'t [u8]>, ()>,
    pub typed_string: Option<bool>,
    pub authorization: Option<&'t [u8]>,
}

/// The header changes a plan makes to a request that goes on to the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit<'a> {
    /// Remove the client's `Authorization` (the gateway token) before anything is set.
    pub remove_authorization: bool,
    /// A header to set, replacing any value the client sent (borrowed when it is configured).
    pub set: Option<(&'a str, Cow<'a, str>)>,
    pub counter: Counter,
}

impl Edit<'static> {
    /// `Authorization: Bearer <token>`, replacing the client's.
    pub fn bearer(token: &str, counter: Counter) -> Self {
        Edit {
            remove_authorization: false,
            set: Some(("authorization", Cow::Owned(format!("Bearer {token}")))),
            counter,
        }
    }
}

/// What to do with a request. Borrows from the plan (`'p`) and from what the host read (`'t`).
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<'p, 't> {
    /// Edit the headers and let the request go on.
    Forward(Edit<'p>),
    /// Exchange `subject` (from the cache or the STS) before the request can go on.
    Exchange {
        plan: &'p ExchangePlan,
        subject: &'t str,
    },
}

impl Plan {
    fn build(strategy: &Strategy, tokens: &TokenSource, cache: &CacheSettings) -> Plan {
        match strategy {
            Strategy::Unauthenticated => Plan::Unauthenticated,
            Strategy::HeaderInjection(h) => Plan::SetHeader {
                name: h.header_name.to_ascii_lowercase(),
                value: h.value.value.clone(),
            },
            Strategy::UpstreamInject(u) => {
                Plan::InjectUpstream(UpstreamRef::new(&u.provider_name, tokens))
            }
            Strategy::TokenExchange(te) => Plan::Exchange(Box::new(ExchangePlan {
                exchange: te.clone(),
                scope: ExchangeScope::new(te, cache),
                subject_from: te
                    .subject_provider_name
                    .as_deref()
                    .map(|p| UpstreamRef::new(p, tokens)),
            })),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Plan::Unauthenticated => "unauthenticated",
            Plan::SetHeader { .. } => "header_injection",
            Plan::InjectUpstream(_) => "upstream_inject",
            Plan::Exchange(_) => "token_exchange",
        }
    }

    /// The upstream provider whose token this plan reads, if any.
    pub fn upstream(&self) -> Option<&UpstreamRef> {
        match self {
            Plan::InjectUpstream(u) => Some(u),
            Plan::Exchange(x) => x.subject_from.as_ref(),
            _ => None,
        }
    }

    /// The metadata path this plan reads, if any.
    pub fn token_path(&self) -> Option<&[u8]> {
        self.upstream().map(|u| u.token_path.as_slice())
    }

    /// Whether the plan reads the client's `Authorization` header (an exchange of the client's
    /// own token). Every other plan only removes or replaces it.
    pub fn needs_client_bearer(&self) -> bool {
        matches!(self, Plan::Exchange(x) if x.subject_from.is_none())
    }

    /// Decides what happens to the request, from what the host read for it.
    pub fn decide<'t>(
        &self,
        view: RequestView<'t>,
        max_token_bytes: usize,
    ) -> Result<Decision<'_, 't>, AuthError> {
        match self {
            Plan::Unauthenticated => Ok(Decision::Forward(Edit {
                remove_authorization: true,
                set: None,
                counter: Counter::Unauthenticated,
            })),
            Plan::SetHeader { name, value } => Ok(Decision::Forward(Edit {
                // Setting Authorization itself replaces the gateway token; removing first
                // would cost a host call for nothing.
                remove_authorization: name != "authorization",
                set: Some((name, Cow::Borrowed(value.expose()))),
                counter: Counter::HeaderInjected,
            })),
            Plan::InjectUpstream(upstream) => {
                let token = upstream.token(&view, max_token_bytes)?;
                Ok(Decision::Forward(Edit::bearer(
                    token,
                    Counter::UpstreamInjected,
                )))
            }
            Plan::Exchange(plan) => {
                let subject = match &plan.subject_from {
                    Some(upstream) => upstream.token(&view, max_token_bytes)?,
                    None => client_bearer(view.authorization)?,
                };
                Ok(Decision::Exchange { plan, subject })
            }
        }
    }

    /// The counter for a request this plan rejected with `err`.
    pub fn rejection_counter(&self, err: &AuthError) -> Counter {
        match err {
            AuthError::HostCall { .. } => Counter::HostError,
            AuthError::Exchange(failure) => Counter::exchange_failure(failure),
            AuthError::UpstreamTokenNotFound { .. } if matches!(self, Plan::InjectUpstream(_)) => {
                Counter::UpstreamTokenMissing
            }
            AuthError::UpstreamTokenNotFound { .. } | AuthError::MissingBearer => {
                Counter::ExchangeSubjectMissing
            }
            AuthError::MalformedBearer => Counter::ExchangeSubjectMalformed,
        }
    }

    /// The header this plan sets when it forwards, other than `authorization`.
    pub fn custom_header(&self) -> Option<&str> {
        match self {
            Plan::SetHeader { name, .. } if name != "authorization" => Some(name),
            _ => None,
        }
    }
}

/// The client's bearer token, from its own `Authorization` header.
fn client_bearer(authorization: Option<&[u8]>) -> Result<&str, AuthError> {
    match authorization.map(http::bearer_token) {
        Some(Ok(token)) => Ok(token),
        None | Some(Err(BearerProblem::NotBearer)) => Err(AuthError::MissingBearer),
        Some(Err(BearerProblem::Malformed)) => Err(AuthError::MalformedBearer),
    }
}

/// Client credentials no backend receives, whatever its strategy (besides the `Authorization`
/// header every strategy removes or replaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// Lower-case header names: `proxy-authorization`, then `removeRequestHeaders`.
    pub headers: Vec<String>,
    /// `removeCookies`: cookie names taken out of `Cookie`, the other cookies stay.
    pub cookies: Vec<String>,
}

/// Header that carries the client's credential for the proxy; removed by default.
pub const PROXY_AUTHORIZATION: &str = "proxy-authorization";

/// Every backend's plan plus the default, built once per configuration.
#[derive(Debug, Clone)]
pub struct Plans {
    default: Plan,
    backends: HashMap<String, Plan>,
    pub tokens: TokenSource,
    pub removal: Removal,
    /// Some plan exchanges the client's own bearer token: a re-run needs it from the record.
    reads_client_bearer: bool,
    /// Some plan sets a header other than `authorization`: a re-run must remove it.
    sets_custom_header: bool,
    /// Where the backend name is looked up, in order.
    backend_name_sources: Vec<BackendNameSource>,
}

impl Plans {
    /// Every configured upstream provider, for an issuing hand-off instance to read.
    pub fn upstream_refs(config: &Config) -> Vec<UpstreamRef> {
        config.auth_server.as_ref().map_or_else(Vec::new, |a| {
            a.upstreams
                .iter()
                .map(|p| UpstreamRef::new(p, &a.tokens))
                .collect()
        })
    }

    pub fn build(config: &Config) -> Plans {
        let tokens = config
            .auth_server
            .as_ref()
            .map(|a| a.tokens.clone())
            .unwrap_or_default();
        let cache = &config.exchange_cache;
        let default = config
            .outgoing_auth
            .default
            .as_ref()
            .map_or(Plan::Unauthenticated, |s| Plan::build(s, &tokens, cache));
        let backends: HashMap<String, Plan> = config
            .outgoing_auth
            .backends
            .iter()
            .map(|(name, s)| (name.clone(), Plan::build(s, &tokens, cache)))
            .collect();
        let every_plan = || std::iter::once(&default).chain(backends.values());
        let reads_client_bearer = every_plan().any(Plan::needs_client_bearer);
        let sets_custom_header = every_plan().any(|p| p.custom_header().is_some());
        let mut headers = vec![PROXY_AUTHORIZATION.to_owned()];
        let listed = config.removal.headers.iter();
        headers.extend(listed.filter(|n| *n != PROXY_AUTHORIZATION).cloned());
        Plans {
            default,
            backends,
            tokens,
            removal: Removal {
                headers,
                cookies: config.removal.cookies.clone(),
            },
            reads_client_bearer,
            sets_custom_header,
            backend_name_sources: config.backend_name_sources.clone(),
        }
    }

    /// The sources to try, in order, for a request's backend name. Empty when the name does not
    /// matter (no per-backend strategies): the request path then reads nothing.
    pub fn backend_name_sources(&self) -> &[BackendNameSource] {
        if self.backends.is_empty() {
            &[]
        } else {
            &self.backend_name_sources
        }
    }

    /// Whether a run of this configuration needs the [`crate::core::stream::StreamRecord`]: when a
    /// re-run could otherwise exchange what an earlier run set, or pass on a header an earlier
    /// run set for another backend. Without either, every re-run is already exact: each
    /// strategy replaces or removes `Authorization`, and the removals are idempotent.
    pub fn uses_stream_record(&self) -> bool {
        self.reads_client_bearer || self.sets_custom_header
    }

    /// Whether the client's own `Authorization` must be remembered for a later run.
    pub fn reads_client_bearer(&self) -> bool {
        self.reads_client_bearer
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
    use crate::core::exchange::ExchangeFailure;
    use crate::core::validate;

    fn plans(json: &str) -> Plans {
        let env = |name: &str| (name == "INTERNAL_KEY").then(|| "internal-secret".to_owned());
        Plans::build(&validate::load(json.as_bytes(), &env).unwrap().config)
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
                    "tokenExchange": { "tokenUrl": "https://sts.example/token", "cluster": "sts" } },
          "corp-gh": { "type": "token_exchange",
                    "tokenExchange": { "tokenUrl": "https://sts.example/token", "cluster": "sts",
                                       "subjectProviderName": "github" } }
        }
      }
    }"#;

    const GITHUB_PATH: &[u8] =
        b"metadata\0filter_metadata\0envoy.filters.http.ext_authz\0upstream_tokens\0github";

    fn view<'t>(token: Option<&'t [u8]>, authorization: Option<&'t [u8]>) -> RequestView<'t> {
        RequestView {
            upstream_token: Ok(token),
            typed_string: None,
            authorization,
        }
    }

    fn forward<'p>(decision: Decision<'p, '_>) -> Edit<'p> {
        match decision {
            Decision::Forward(edit) => edit,
            other => panic!("expected a forward, got {other:?}"),
        }
    }

    fn subject(decision: Decision<'_, '_>) -> String {
        match decision {
            Decision::Exchange { subject, .. } => subject.to_owned(),
            other => panic!("expected an exchange, got {other:?}"),
        }
    }

    #[test]
    fn backend_selection_uses_the_named_backend() {
        let p = plans(EXAMPLE);
        assert_eq!(
            p.for_backend(Some(b"github-mcp")),
            &Plan::InjectUpstream(UpstreamRef {
                provider: "github".to_owned(),
                token_path: GITHUB_PATH.to_vec(),
            })
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
        assert!(p.backend_name_sources().is_empty(), "nothing to look up");
    }

    #[test]
    fn backend_name_sources_default_to_all_three_in_order() {
        let p = plans(EXAMPLE);
        assert_eq!(p.backend_name_sources(), BackendNameSource::ALL);
    }

    #[test]
    fn backend_name_sources_can_be_narrowed() {
        let p = plans(
            r#"{"backendNameSources": ["clusterName"],
                "outgoingAuth": {"backends": {"a": {"type": "unauthenticated"}}}}"#,
        );
        assert_eq!(p.backend_name_sources(), [BackendNameSource::ClusterName]);
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
            p.for_backend(None).token_path(),
            Some(&b"metadata\0filter_metadata\0ns\0x-upstream-token-github"[..])
        );
    }

    #[test]
    fn plans_read_only_what_they_need() {
        let p = plans(EXAMPLE);
        let needs = |name: &[u8]| {
            let plan = p.for_backend(Some(name));
            (plan.token_path().is_some(), plan.needs_client_bearer())
        };
        assert_eq!(needs(b"public"), (false, false));
        assert_eq!(needs(b"internal"), (false, false));
        assert_eq!(needs(b"github-mcp"), (true, false));
        assert_eq!(needs(b"corp"), (false, true));
        assert_eq!(needs(b"corp-gh"), (true, false));
    }

    #[test]
    fn unauthenticated_strips_the_gateway_token() {
        let edit = forward(Plan::Unauthenticated.decide(view(None, None), 10).unwrap());
        assert!(edit.remove_authorization);
        assert_eq!(edit.set, None);
        assert_eq!(edit.counter, Counter::Unauthenticated);
    }

    #[test]
    fn header_injection_sets_the_resolved_env_value_and_strips_authorization() {
        let p = plans(EXAMPLE);
        let edit = forward(
            p.for_backend(Some(b"internal"))
                .decide(view(None, None), 10)
                .unwrap(),
        );
        assert!(edit.remove_authorization);
        assert_eq!(edit.set, Some(("x-api-key", "internal-secret".into())));
        assert_eq!(edit.counter, Counter::HeaderInjected);
    }

    #[test]
    fn header_injection_into_authorization_replaces_instead_of_removing() {
        let p = plans(
            r#"{"outgoingAuth": {"default": {"type": "header_injection",
                 "headerInjection": {"headerName": "Authorization", "headerValue": "Basic abc"}}}}"#,
        );
        let edit = forward(p.for_backend(None).decide(view(None, None), 10).unwrap());
        assert!(!edit.remove_authorization);
        assert_eq!(edit.set, Some(("authorization", "Basic abc".into())));
    }

    // ToolHive upstream_inject_test.go, case by case.

    fn inject(provider: &str) -> Plan {
        Plan::InjectUpstream(UpstreamRef {
            provider: provider.to_owned(),
            token_path: Vec::new(),
        })
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
        let edit = forward(
            plan.decide(view(Some(b"gh-token-123"), Some(b"Bearer gw")), 100)
                .unwrap(),
        );
        assert_eq!(
            edit.set,
            Some(("authorization", "Bearer gh-token-123".into()))
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
        let err = inject("github").decide(view(None, None), 100).unwrap_err();
        assert_eq!(err, not_found("github", TokenProblem::Absent));
        assert!(err.to_string().contains("github"));
    }

    #[test]
    fn provider_not_in_map_is_the_sentinel() {
        // The Struct holds only "other": the nested path for github does not exist.
        let err = inject("github").decide(view(None, None), 100).unwrap_err();
        assert!(
            matches!(err, AuthError::UpstreamTokenNotFound { ref provider, .. } if provider == "github")
        );
    }

    #[test]
    fn empty_token_value_is_the_sentinel() {
        let err = inject("github")
            .decide(view(Some(b""), None), 100)
            .unwrap_err();
        assert_eq!(err, not_found("github", TokenProblem::Empty));
    }

    #[test]
    fn empty_provider_name_at_runtime_is_the_sentinel() {
        // Validation (V-06) refuses this config; at runtime it still fails closed.
        let err = inject("").decide(view(None, None), 100).unwrap_err();
        assert_eq!(err.to_string(), "provider \"\": upstream token not found");
    }

    #[test]
    fn sentinel_text_and_variant() {
        let plan = inject("github");
        let err = plan.decide(view(None, None), 100).unwrap_err();
        assert_eq!(
            err.to_string(),
            "provider \"github\": upstream token not found"
        );
        assert!(matches!(err, AuthError::UpstreamTokenNotFound { .. }));
        assert_eq!(plan.rejection_counter(&err), Counter::UpstreamTokenMissing);
    }

    #[test]
    fn unreadable_metadata_and_bad_tokens_are_the_sentinel() {
        let plan = inject("github");
        let unreadable = RequestView {
            upstream_token: Err(()),
            typed_string: None,
            authorization: None,
        };
        assert_eq!(
            plan.decide(unreadable, 100).unwrap_err(),
            not_found("github", TokenProblem::Unreadable)
        );
        assert_eq!(
            plan.decide(view(Some(b"a\nb"), None), 100).unwrap_err(),
            not_found("github", TokenProblem::NotACredential)
        );
        assert_eq!(
            plan.decide(view(Some(b"toolong"), None), 3).unwrap_err(),
            not_found("github", TokenProblem::TooLong { len: 7, max: 3 })
        );
    }

    #[test]
    fn an_eight_byte_token_needs_the_typed_metadata_to_say_string() {
        // 2261634.745587397 as a Struct number reads as these 8 bytes.
        let plan = inject("github");
        let number_like = b"gho_AAAA";
        for typed_string in [None, Some(false)] {
            let view = RequestView {
                upstream_token: Ok(Some(number_like)),
                typed_string,
                authorization: None,
            };
            assert_eq!(
                plan.decide(view, 100).unwrap_err(),
                not_found("github", TokenProblem::NotACredential),
                "{typed_string:?}"
            );
        }
        let confirmed = RequestView {
            upstream_token: Ok(Some(number_like)),
            typed_string: Some(true),
            authorization: None,
        };
        let edit = forward(plan.decide(confirmed, 100).unwrap());
        assert_eq!(edit.set, Some(("authorization", "Bearer gho_AAAA".into())));
        // Any other length never needs the typed metadata.
        assert!(plan.decide(view(Some(b"gho_AAAAA"), None), 100).is_ok());
    }

    // ToolHive tokenexchange_test.go: how the subject is chosen.

    #[test]
    fn unset_subject_provider_uses_the_client_bearer() {
        let p = plans(EXAMPLE);
        let plan = p.for_backend(Some(b"corp"));
        let decision = plan
            .decide(
                view(Some(b"upstream-tok"), Some(b"Bearer original-bearer")),
                100,
            )
            .unwrap();
        assert_eq!(subject(decision), "original-bearer");
    }

    #[test]
    fn subject_provider_set_uses_the_upstream_token_not_the_client_bearer() {
        let p = plans(EXAMPLE);
        let plan = p.for_backend(Some(b"corp-gh"));
        assert_eq!(plan.token_path(), Some(GITHUB_PATH));
        let decision = plan
            .decide(
                view(
                    Some(b"github-upstream-token"),
                    Some(b"Bearer incoming-bearer-token"),
                ),
                100,
            )
            .unwrap();
        assert_eq!(subject(decision), "github-upstream-token");
    }

    #[test]
    fn missing_subject_provider_token_is_the_sentinel_and_no_exchange() {
        let p = plans(EXAMPLE);
        let plan = p.for_backend(Some(b"corp-gh"));
        let err = plan
            .decide(view(None, Some(b"Bearer incoming")), 100)
            .unwrap_err();
        assert_eq!(err, not_found("github", TokenProblem::Absent));
        assert!(err.to_string().contains("upstream token not found"));
        assert_eq!(
            plan.rejection_counter(&err),
            Counter::ExchangeSubjectMissing
        );
        assert_eq!(err.reply().status, 401);
    }

    #[test]
    fn no_client_token_is_a_401_and_no_exchange() {
        let p = plans(EXAMPLE);
        let plan = p.for_backend(Some(b"corp"));
        for authorization in [None, Some(&b""[..]), Some(b"Basic abc")] {
            let err = plan.decide(view(None, authorization), 100).unwrap_err();
            assert_eq!(err, AuthError::MissingBearer);
            assert_eq!(err.reply().status, 401);
        }
    }

    #[test]
    fn a_bearer_that_is_not_one_token_is_a_401_and_no_exchange() {
        let p = plans(EXAMPLE);
        let plan = p.for_backend(Some(b"corp"));
        let joined = b"Bearer gw-token,Bearer other";
        for authorization in [&b"Bearer "[..], b"Bearer a b", b"Bearer X,y", joined] {
            let err = plan
                .decide(view(None, Some(authorization)), 100)
                .unwrap_err();
            assert_eq!(err, AuthError::MalformedBearer);
            assert_eq!(err.reply().status, 401);
            assert_eq!(
                plan.rejection_counter(&err),
                Counter::ExchangeSubjectMalformed
            );
        }
    }

    #[test]
    fn the_stream_record_is_used_only_where_a_rerun_needs_it() {
        let p = plans(EXAMPLE);
        assert!(p.uses_stream_record() && p.reads_client_bearer());
        let inject_only = plans(
            r#"{"authServer": {"upstreams": ["github"]},
                "outgoingAuth": {"default": {"type": "upstream_inject",
                 "upstreamInject": {"providerName": "github"}}}}"#,
        );
        assert!(
            !inject_only.uses_stream_record(),
            "Authorization is replaced every run"
        );
        let header = plans(
            r#"{"outgoingAuth": {"backends": {"a": {"type": "header_injection",
                 "headerInjection": {"headerName": "X-API-Key", "headerValue": "k"}}}}}"#,
        );
        assert!(header.uses_stream_record() && !header.reads_client_bearer());
        let into_authorization = plans(
            r#"{"outgoingAuth": {"backends": {"a": {"type": "header_injection",
                 "headerInjection": {"headerName": "Authorization", "headerValue": "Basic k"}}}}}"#,
        );
        assert!(!into_authorization.uses_stream_record());
    }

    #[test]
    fn proxy_authorization_and_the_listed_credentials_are_removed() {
        let p = plans(r#"{"outgoingAuth": {}}"#);
        assert_eq!(p.removal.headers, ["proxy-authorization"]);
        assert!(p.removal.cookies.is_empty());
        let p = plans(
            r#"{"removeRequestHeaders": ["X-Api-Key", "Proxy-Authorization"],
                "removeCookies": ["BearerToken", "IdToken"], "outgoingAuth": {}}"#,
        );
        assert_eq!(p.removal.headers, ["proxy-authorization", "x-api-key"]);
        assert_eq!(p.removal.cookies, ["BearerToken", "IdToken"]);
    }

    #[test]
    fn exchange_failures_count_by_class() {
        let plan = plans(EXAMPLE);
        let plan = plan.for_backend(Some(b"corp"));
        assert_eq!(
            plan.rejection_counter(&AuthError::Exchange(ExchangeFailure::Timeout)),
            Counter::ExchangeTimeout
        );
        assert_eq!(
            plan.rejection_counter(&AuthError::MissingBearer),
            Counter::ExchangeSubjectMissing
        );
    }
}
