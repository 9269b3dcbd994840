//! `MCPExternalAuthConfig` resources (plus the backend → resource mapping) → the filter's
//! configuration, checked with the filter's own startup validation before anything is deployed.
//!
//! Per resource this does what ToolHive's converters do (same error texts where they have one);
//! secret references become the environment variables ToolHive's operator would use.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use super::crd;
use super::diag::{quote, Diagnostic};
use super::input::{type_name, Object, Resource};
use super::resources::{
    header_injection_value_env, token_exchange_secret_env, BackendAuthConfig, ExternalAuthType,
    MCPExternalAuthConfigSpec, SecretKeyRef, VirtualServerSpec, EXTERNAL_AUTH_KIND,
};
use crate::core::config;
use crate::core::report::{backend_path, thousands, Problem, Report, Rule, MAX_LISTED_ITEMS};
use crate::core::validate;

/// What the command line adds to the resources.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--backend NAME=RESOURCE`, in order.
    pub backends: Vec<(String, String)>,
    /// `--default RESOURCE`.
    pub default: Option<String>,
    /// `--upstreams a,b`.
    pub upstreams: Option<Vec<String>>,
    /// `--metadata-namespace`, `--metadata-key`, `--key-prefix`: `authServer.tokens`.
    pub tokens: TokensOut,
    /// `--sts-cluster NAME`: the Envoy cluster of every token exchange.
    pub sts_cluster: Option<String>,
    /// `--sts-cluster RESOURCE=NAME`.
    pub sts_cluster_for: BTreeMap<String, String>,
    /// How a token exchange's cluster is named when no `--sts-cluster` says.
    pub cluster_naming: ClusterNaming,
    /// `--mcp-router`: also make (and check) the two configs of the hand-off across Envoy's
    /// mcp_router ([`McpRouter`]).
    pub mcp_router: bool,
    /// `--native`: the Envoy dynamic module runs the config, so its rule S-19 applies too.
    pub native: bool,
}

/// The default Envoy cluster name of a token exchange's STS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClusterNaming {
    /// The `tokenUrl` host, e.g. `sts.example.com` (a static cluster you define).
    #[default]
    Host,
    /// Istio's name for a ServiceEntry host: `outbound|443||sts.example.com`.
    Istio,
}

/// The filter configuration, in the field order the README documents.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_server: Option<AuthServerOut>,
    pub outgoing_auth: OutgoingAuthOut,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuthServerOut {
    pub upstreams: Vec<String>,
    /// Where the auth filter leaves the tokens; omitted when every field keeps its default.
    #[serde(skip_serializing_if = "TokensOut::is_default")]
    pub tokens: TokensOut,
}

/// `authServer.tokens`, as given on the command line (unset fields keep the filter's defaults).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokensOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
}

impl TokensOut {
    pub fn is_default(&self) -> bool {
        *self == TokensOut::default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutgoingAuthOut {
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<StrategyOut>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub backends: BTreeMap<String, StrategyOut>,
}

/// One strategy of the filter config.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StrategyOut {
    #[serde(rename = "type")]
    pub strategy_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_inject: Option<UpstreamInjectOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_injection: Option<HeaderInjectionOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_exchange: Option<TokenExchangeOut>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamInjectOut {
    pub provider_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderInjectionOut {
    pub header_name: String,
    pub header_value_env: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenExchangeOut {
    pub token_url: String,
    pub cluster: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_token_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_provider_name: Option<String>,
}

/// `handoff` of a generated config.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HandoffOut {
    /// `issue` or `accept`.
    pub mode: &'static str,
    /// Written only when true (the filter's default is false; an accepting instance refuses it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub client_bearer: bool,
}

/// The issuing instance's config (`--mcp-router`): the listener's, before mcp_router. It applies
/// no strategy, so it has no `outgoingAuth` (S-17) and reads no environment variable.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuingConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_server: Option<AuthServerOut>,
    pub handoff: HandoffOut,
}

/// The accepting instance's config (`--mcp-router`): every backend cluster's, the backend named
/// by the cluster. The converted config plus `handoff` and `backendNameSources`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptingConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_server: Option<AuthServerOut>,
    pub handoff: HandoffOut,
    pub backend_name_sources: Vec<&'static str>,
    pub outgoing_auth: OutgoingAuthOut,
}

/// The two instances of the module behind Envoy's mcp_router, made from one conversion.
#[derive(Debug, Clone, PartialEq)]
pub struct McpRouter {
    pub issuing: IssuingConfig,
    pub accepting: AcceptingConfig,
    /// Who exchanges the client's own bearer token (no `subjectProviderName`), the reason for
    /// `clientBearer`: `backend "x"` or `the default strategy`.
    pub client_bearer_for: Vec<String>,
}

/// An environment variable the filter reads, and the Secret key that must fill it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretEnv {
    pub env: String,
    pub secret: String,
    pub key: String,
    /// `MCPExternalAuthConfig "name"`, the resource that references the Secret.
    pub resource: String,
    /// The referencing field, e.g. `spec.tokenExchange.clientSecretRef`.
    pub field: &'static str,
}

/// An Envoy cluster a token exchange calls.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StsCluster {
    pub cluster: String,
    pub token_url: String,
    pub resource: String,
}

/// A successful conversion.
#[derive(Debug, Clone)]
pub struct Conversion {
    pub config: FilterConfig,
    pub secrets: Vec<SecretEnv>,
    pub clusters: Vec<StsCluster>,
    /// The files the resources came from, in order.
    pub files: Vec<String>,
    /// The mcp_router pair, with `--mcp-router`.
    pub mcp_router: Option<McpRouter>,
    /// Warnings and notes (a successful conversion has no errors).
    pub diagnostics: Vec<Diagnostic>,
}

/// The filter config's JSON, as Envoy gets it.
pub fn to_json(config: &impl Serialize) -> String {
    serde_json::to_string_pretty(config).unwrap_or_default()
}

/// One converted `MCPExternalAuthConfig`.
#[derive(Debug, Clone)]
pub struct Converted {
    pub strategy: StrategyOut,
    /// The environment variables its Secret references became.
    pub secrets: Vec<SecretEnv>,
    /// The STS cluster of a token exchange.
    pub cluster: Option<StsCluster>,
    pub warnings: Vec<Diagnostic>,
}

/// Converts one `MCPExternalAuthConfig`: ToolHive's converter for its type, plus the checks its CRD
/// makes (unknown fields, wrong types, sub-object iff type).
pub fn convert_resource(object: &Object, opts: &Options) -> Result<Converted, Vec<Diagnostic>> {
    let origin = object.origin();
    let err = |msg: String| vec![Diagnostic::error(origin.clone(), msg)];
    let Value::Object(spec_map) = &object.spec else {
        return Err(err(match &object.spec {
            Value::Null => "spec is required (spec.type and its configuration)".to_owned(),
            other => format!("spec must be a mapping, found {}", type_name(other)),
        }));
    };
    let auth_type = match spec_map.get("type") {
        None | Some(Value::Null) => return Err(err("spec.type is required".to_owned())),
        Some(Value::String(s)) => match ExternalAuthType::parse(s) {
            Some(t) => t,
            None => {
                return Err(vec![Diagnostic::error(
                    origin.clone(),
                    format!("unsupported auth type: {s}"),
                )
                .with_hint(format!(
                    "outgoing-auth supports spec.type {}",
                    ExternalAuthType::ALL
                        .iter()
                        .map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))]);
            }
        },
        Some(other) => {
            return Err(err(format!(
                "spec.type must be a string, found {}",
                type_name(other)
            )))
        }
    };
    let spec: MCPExternalAuthConfigSpec =
        serde_path_to_error::deserialize(&object.spec).map_err(|e| {
            let field = spec_path(&e.path().to_string());
            vec![decode_diagnostic(origin.clone(), &field, &e.into_inner())]
        })?;

    let mut errors = Vec::new();
    // ToolHive's converter: the sub-object of the type must be there.
    let present = |t: ExternalAuthType| match t {
        ExternalAuthType::UpstreamInject => spec.upstream_inject.is_some(),
        ExternalAuthType::TokenExchange => spec.token_exchange.is_some(),
        ExternalAuthType::HeaderInjection => spec.header_injection.is_some(),
        ExternalAuthType::Unauthenticated => false,
    };
    if let (false, Some(nil)) = (present(auth_type), auth_type.nil_error()) {
        errors.push(Diagnostic::error(origin.clone(), nil).with_hint(format!(
            "add spec.{} (required when spec.type is {})",
            auth_type.sub_object().unwrap_or_default(),
            auth_type.as_str()
        )));
    }
    // The CRD's CEL rules: no sub-object of another type.
    for other in ExternalAuthType::ALL {
        if other != auth_type && present(other) {
            let message = if auth_type == ExternalAuthType::Unauthenticated {
                crd::UNAUTHENTICATED_MESSAGE.to_owned()
            } else {
                crd::iff_message(other).unwrap_or_default()
            };
            errors.push(
                Diagnostic::error(origin.clone(), message).with_hint(format!(
                    "remove spec.{}: spec.type is {}",
                    other.sub_object().unwrap_or_default(),
                    auth_type.as_str()
                )),
            );
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    let resource = format!("{EXTERNAL_AUTH_KIND} {}", quote(&object.name));
    let secret = |env: String, r: &SecretKeyRef, field: &'static str| SecretEnv {
        env,
        secret: r.name.clone(),
        key: r.key.clone(),
        resource: resource.clone(),
        field,
    };
    let mut secrets = Vec::new();
    let mut warnings = Vec::new();
    let mut cluster = None;
    let mut out = StrategyOut {
        strategy_type: "unauthenticated",
        upstream_inject: None,
        header_injection: None,
        token_exchange: None,
    };
    if let Some(ui) = spec.upstream_inject {
        out.strategy_type = "upstream_inject";
        out.upstream_inject = Some(UpstreamInjectOut {
            provider_name: ui.provider_name,
        });
    }
    if let Some(hi) = spec.header_injection {
        let env = header_injection_value_env(&object.name);
        secrets.push(secret(
            env.clone(),
            &hi.value_secret_ref,
            "spec.headerInjection.valueSecretRef",
        ));
        out.strategy_type = "header_injection";
        out.header_injection = Some(HeaderInjectionOut {
            header_name: hi.header_name,
            header_value_env: env,
        });
    }
    if let Some(te) = spec.token_exchange {
        if let Some(h) = te.external_token_header_name.filter(|h| !h.is_empty()) {
            warnings.push(Diagnostic::warning(
                origin.clone(),
                format!(
                    "spec.tokenExchange.externalTokenHeaderName {} has no equivalent in \
                     outgoing-auth and is ignored: the exchanged token is always sent as \
                     Authorization: Bearer (ToolHive's vMCP ignores it too)",
                    quote(&h)
                ),
            ));
        }
        let client_secret_env = te.client_secret_ref.as_ref().map(|r| {
            let env = token_exchange_secret_env(&object.name);
            secrets.push(secret(env.clone(), r, "spec.tokenExchange.clientSecretRef"));
            env
        });
        let name = opts
            .sts_cluster_for
            .get(&object.name)
            .or(opts.sts_cluster.as_ref())
            .cloned()
            .or_else(|| default_cluster(&te.token_url, opts.cluster_naming));
        let Some(name) = name else {
            return Err(vec![Diagnostic::error(
                origin,
                format!(
                    "cannot name an STS cluster after spec.tokenExchange.tokenUrl {}: it has no host",
                    quote(&te.token_url)
                ),
            )
            .with_hint(format!(
                "use an absolute https:// URL, or pass --sts-cluster {}=CLUSTER",
                object.name
            ))]);
        };
        cluster = Some(StsCluster {
            cluster: name.clone(),
            token_url: te.token_url.clone(),
            resource: resource.clone(),
        });
        out.strategy_type = "token_exchange";
        out.token_exchange = Some(TokenExchangeOut {
            token_url: te.token_url,
            cluster: name,
            client_id: te.client_id.filter(|s| !s.is_empty()),
            client_secret_env,
            audience: te.audience.filter(|s| !s.is_empty()),
            scopes: te.scopes.unwrap_or_default(),
            subject_token_type: te
                .subject_token_type
                .filter(|s| !s.is_empty())
                .map(|s| normalize_token_type(&s)),
            subject_provider_name: te.subject_provider_name.filter(|s| !s.is_empty()),
        });
    }
    Ok(Converted {
        strategy: out,
        secrets,
        cluster,
        warnings,
    })
}

/// A resource's decoding error in the words of the resource: `spec.tokenExchange.tokenUrl is
/// required` rather than serde's "missing field `tokenUrl`", a suggestion for a misspelt field.
fn decode_diagnostic(origin: String, field: &str, e: &impl std::fmt::Display) -> Diagnostic {
    let text = e.to_string();
    let backticked =
        |s: &str| -> Vec<String> { s.split('`').skip(1).step_by(2).map(str::to_owned).collect() };
    if let Some(rest) = text.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        let what = match name {
            "tokenUrl" => " (the STS token endpoint, an absolute https:// URL)",
            "providerName" => " (the upstream provider whose token is injected)",
            "headerName" => " (the header to set)",
            "valueSecretRef" => " (the Secret key holding the header value)",
            _ => "",
        };
        return Diagnostic::error(origin, format!("{field}.{name} is required{what}"))
            .with_hint(format!("add {name} to {field}"));
    }
    if let Some(rest) = text.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or_default();
        let allowed = rest
            .split_once("expected ")
            .map(|(_, list)| backticked(list))
            .unwrap_or_default();
        let candidates: Vec<&str> = allowed.iter().map(String::as_str).collect();
        let d = Diagnostic::error(
            origin,
            format!(
                "{field}: unknown field {}{}",
                quote(name),
                crate::core::report::did_you_mean(name, &candidates)
            ),
        );
        return if candidates.is_empty() {
            d
        } else {
            d.with_hint(format!(
                "the fields allowed here are: {}",
                candidates.join(", ")
            ))
        };
    }
    Diagnostic::error(origin, format!("{field}: {text}"))
}

/// `spec.a.b[0]` from serde_path_to_error's `a.b[0]` (`.` is the root, `[0]` a root index).
fn spec_path(path: &str) -> String {
    match path {
        "." => "spec".to_owned(),
        p if p.starts_with('[') => format!("spec{p}"),
        p => format!("spec.{p}"),
    }
}

/// ToolHive's converter writes the full URN for the short forms.
fn normalize_token_type(s: &str) -> String {
    match s {
        "access_token" | "id_token" | "jwt" => format!("urn:ietf:params:oauth:token-type:{s}"),
        other => other.to_owned(),
    }
}

/// The STS cluster named after `tokenUrl`: its host, or Istio's `outbound|PORT||HOST`.
pub fn default_cluster(token_url: &str, naming: ClusterNaming) -> Option<String> {
    match naming {
        ClusterNaming::Host => config::default_sts_cluster(token_url),
        ClusterNaming::Istio => {
            let h = config::url_host(token_url)?;
            Some(format!(
                "outbound|{}||{}",
                h.port.filter(|p| !p.is_empty()).unwrap_or(h.default_port),
                h.host
            ))
        }
    }
}

/// One backend → resource assignment and where it was made.
#[derive(Debug, Clone)]
struct Assignment {
    /// `None` for the default strategy.
    backend: Option<String>,
    resource: String,
    origin: String,
}

/// The mapping a `VirtualMCPServer` gives, and the upstream providers of its embedded auth server.
fn read_virtual_server(
    object: &Object,
    assignments: &mut Vec<Assignment>,
    upstreams: &mut Option<(Vec<String>, String)>,
    diags: &mut Vec<Diagnostic>,
) {
    let origin = object.origin();
    let decoded = match &object.spec {
        Value::Null => Ok(VirtualServerSpec::default()),
        spec @ Value::Object(_) => serde_path_to_error::deserialize(spec),
        other => {
            diags.push(Diagnostic::error(
                origin,
                format!("spec must be a mapping, found {}", type_name(other)),
            ));
            return;
        }
    };
    let spec: VirtualServerSpec = match decoded {
        Ok(s) => s,
        Err(e) => {
            let field = spec_path(&e.path().to_string());
            diags.push(decode_diagnostic(origin, &field, &e.into_inner()));
            return;
        }
    };
    if let Some(auth) = &spec.auth_server_config {
        let names: Vec<String> = auth
            .upstream_providers
            .iter()
            .map(|p| p.name.clone())
            .collect();
        if !names.is_empty() {
            *upstreams = Some((
                names,
                format!("{origin}: spec.authServerConfig.upstreamProviders"),
            ));
        }
    }
    let Some(outgoing) = spec.outgoing_auth else {
        diags.push(Diagnostic::warning(
            origin,
            "has no spec.outgoingAuth: it maps no backend to an MCPExternalAuthConfig",
        ));
        return;
    };
    let source = outgoing.source.as_deref().unwrap_or("discovered");
    match source {
        "inline" => {}
        "discovered" => diags.push(
            Diagnostic::warning(
                origin.clone(),
                format!(
                    "spec.outgoingAuth.source is \"discovered\"{}: the auth ToolHive would \
                     discover from each backend MCPServer's externalAuthConfigRef is not visible \
                     here; only spec.outgoingAuth.default and .backends are converted",
                    if outgoing.source.is_none() {
                        " (ToolHive's default)"
                    } else {
                        ""
                    }
                ),
            )
            .with_hint("map those backends with --backend NAME=RESOURCE, or set source: inline"),
        ),
        other => diags.push(Diagnostic::error(
            origin.clone(),
            format!(
                "spec.outgoingAuth.source {} must be one of: discovered, inline",
                quote(other)
            ),
        )),
    }
    let entries = outgoing
        .default
        .as_ref()
        .map(|d| (None, d))
        .into_iter()
        .chain(
            outgoing
                .backends
                .iter()
                .map(|(name, b)| (Some(name.clone()), b)),
        );
    for (backend, entry) in entries {
        let field = match &backend {
            Some(name) => format!("spec.outgoingAuth.backends[{}]", quote(name)),
            None => "spec.outgoingAuth.default".to_owned(),
        };
        match resolve_entry(entry) {
            Ok(Some(resource)) => assignments.push(Assignment {
                backend,
                resource,
                origin: format!("{origin}: {field}.externalAuthConfigRef"),
            }),
            Ok(None) => diags.push(Diagnostic::warning(
                origin.clone(),
                format!(
                    "{field} has type discovered, which only ToolHive's operator can resolve; \
                     skipped"
                ),
            )),
            Err(msg) => diags.push(Diagnostic::error(origin.clone(), format!("{field}: {msg}"))),
        }
    }
}

fn resolve_entry(entry: &BackendAuthConfig) -> Result<Option<String>, String> {
    match entry.auth_type.as_str() {
        "externalAuthConfigRef" => match &entry.external_auth_config_ref {
            Some(r) if !r.name.is_empty() => Ok(Some(r.name.clone())),
            _ => Err(
                "externalAuthConfigRef.name is required when type is externalAuthConfigRef"
                    .to_owned(),
            ),
        },
        "discovered" => Ok(None),
        other => Err(format!(
            "type {} must be one of: discovered, externalAuthConfigRef",
            quote(other)
        )),
    }
}

/// Converts every `MCPExternalAuthConfig` given and assembles the filter config for the backends
/// the mapping names; then runs the filter's startup validation on it. On failure returns every
/// diagnostic (errors, and the warnings met on the way).
pub fn convert(resources: &[Resource], opts: &Options) -> Result<Conversion, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut files: Vec<String> = Vec::new();
    let mut by_name: BTreeMap<&str, &Object> = BTreeMap::new();
    let mut virtual_servers = Vec::new();
    for r in resources {
        let o = match r {
            Resource::ExternalAuth(o) => {
                if let Some(first) = by_name.insert(&o.name, o) {
                    diags.push(
                        Diagnostic::error(
                            o.origin(),
                            format!(
                                "MCPExternalAuthConfig {} is defined twice (first in {})",
                                quote(&o.name),
                                first.document.origin()
                            ),
                        )
                        .with_hint(
                            "backends name resources by metadata.name, which must be unique",
                        ),
                    );
                }
                o
            }
            Resource::VirtualServer(o) => {
                virtual_servers.push(o);
                o
            }
        };
        if !files.contains(&o.document.file) {
            files.push(o.document.file.clone());
        }
    }
    if by_name.is_empty() {
        diags.push(
            Diagnostic::error("", "the input holds no MCPExternalAuthConfig")
                .with_hint("pass the files that define them with -f FILE (or -f - for stdin)"),
        );
        return Err(diags);
    }

    // Every resource is converted (and checked), used or not, in input order.
    let mut converted = BTreeMap::new();
    for object in resources.iter().filter_map(|r| match r {
        Resource::ExternalAuth(o) => Some(o),
        Resource::VirtualServer(_) => None,
    }) {
        if converted.contains_key(object.name.as_str()) {
            continue;
        }
        match convert_resource(object, opts) {
            Ok(mut c) => {
                diags.append(&mut c.warnings);
                converted.insert(object.name.as_str(), c);
            }
            Err(errors) => diags.extend(errors),
        }
    }

    // The mapping: the VirtualMCPServer's, then the flags (which win).
    let mut assignments = Vec::new();
    let mut vmcp_upstreams = None;
    match virtual_servers.as_slice() {
        [] => {}
        [one] => read_virtual_server(one, &mut assignments, &mut vmcp_upstreams, &mut diags),
        several => diags.push(Diagnostic::error(
            "",
            format!(
                "the input holds {} VirtualMCPServers ({}); convert one at a time",
                several.len(),
                several
                    .iter()
                    .map(|o| o.origin())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
    for (backend, resource) in &opts.backends {
        assignments.push(Assignment {
            backend: Some(backend.clone()),
            resource: resource.clone(),
            origin: format!("--backend {backend}={resource}"),
        });
    }
    if let Some(resource) = &opts.default {
        assignments.push(Assignment {
            backend: None,
            resource: resource.clone(),
            origin: format!("--default {resource}"),
        });
    }
    if assignments.is_empty() && !diags.iter().any(Diagnostic::is_error) {
        diags.push(
            Diagnostic::error("", "no backend is mapped to an MCPExternalAuthConfig").with_hint(
                "pass --backend NAME=RESOURCE (and/or --default RESOURCE), or a VirtualMCPServer \
                 whose spec.outgoingAuth holds externalAuthConfigRefs",
            ),
        );
    }

    // Resolve: later assignments of the same backend replace earlier ones.
    let mut default: Option<(StrategyOut, String)> = None;
    let mut backends: BTreeMap<String, (StrategyOut, String)> = BTreeMap::new();
    let mut assigned_by: BTreeMap<Option<String>, String> = BTreeMap::new();
    let mut used = BTreeSet::new();
    let mut secrets: BTreeMap<String, SecretEnv> = BTreeMap::new();
    let mut clusters = BTreeSet::new();
    let known: Vec<&str> = by_name.keys().copied().collect();
    for a in &assignments {
        let Some(object) = by_name.get(a.resource.as_str()) else {
            diags.push(
                Diagnostic::error(
                    a.origin.clone(),
                    format!(
                        "no MCPExternalAuthConfig named {} in the input",
                        quote(&a.resource)
                    ),
                )
                .with_hint(format!("the input defines: {}", known.join(", "))),
            );
            continue;
        };
        used.insert(a.resource.as_str());
        let Some(Converted {
            strategy,
            secrets: secret_envs,
            cluster,
            ..
        }) = converted.get(a.resource.as_str())
        else {
            continue; // its errors are reported
        };
        for s in secret_envs {
            if let Some(prev) = secrets.get(&s.env) {
                if prev.resource != s.resource {
                    diags.push(
                        Diagnostic::error(
                            object.origin(),
                            format!(
                            "its secret would use environment variable {}, which {} already uses \
                             (names differing only in characters other than letters and digits \
                             map to the same variable)",
                            s.env, prev.resource
                        ),
                        )
                        .with_hint("rename one of the two resources"),
                    );
                }
            }
            secrets.insert(s.env.clone(), s.clone());
        }
        if let Some(c) = cluster {
            clusters.insert(c.clone());
        }
        let origin = object.origin();
        match &a.backend {
            Some(b) => backends.insert(b.clone(), (strategy.clone(), origin)),
            None => default.replace((strategy.clone(), origin)),
        };
        if let Some(previous) = assigned_by.insert(a.backend.clone(), a.origin.clone()) {
            diags.push(Diagnostic::note(
                a.origin.clone(),
                format!(
                    "replaces the earlier mapping of {} ({previous})",
                    a.backend
                        .as_deref()
                        .map_or("the default".to_owned(), |b| format!(
                            "backend {}",
                            quote(b)
                        ))
                ),
            ));
        }
    }
    for (name, object) in &by_name {
        if !used.contains(name) && converted.contains_key(name) {
            diags.push(Diagnostic::warning(
                object.origin(),
                "not used by any backend (map it with --backend NAME=RESOURCE or --default \
                 RESOURCE)",
            ));
        }
    }

    let upstreams = match (&opts.upstreams, vmcp_upstreams) {
        (Some(u), _) => Some(u.clone()),
        (None, Some((u, origin))) => {
            diags.push(Diagnostic::note(
                origin,
                format!("authServer.upstreams are taken from here: {}", u.join(", ")),
            ));
            Some(u)
        }
        (None, None) => None,
    };
    if upstreams.is_none() && !opts.tokens.is_default() {
        diags.push(
            Diagnostic::error(
                "--metadata-namespace/--metadata-key/--key-prefix".to_owned(),
                "the token location is part of authServer, which only exists with upstream \
                 providers",
            )
            .with_hint("pass --upstreams too (or a VirtualMCPServer with upstreamProviders)"),
        );
    }
    if diags.iter().any(Diagnostic::is_error) {
        return Err(diags);
    }

    let config = FilterConfig {
        auth_server: upstreams.clone().map(|upstreams| AuthServerOut {
            upstreams,
            tokens: opts.tokens.clone(),
        }),
        outgoing_auth: OutgoingAuthOut {
            source: "inline",
            default: default.as_ref().map(|(s, _)| s.clone()),
            backends: backends
                .iter()
                .map(|(k, (s, _))| (k.clone(), s.clone()))
                .collect(),
        },
    };

    // The filter's own startup validation, on exactly what Envoy will get. The secrets come from
    // Kubernetes Secrets at deploy time, so the variables this conversion introduced count as set.
    let json = to_json(&config);
    let env_names: BTreeSet<String> = secrets.keys().cloned().collect();
    let env = |name: &str| {
        env_names
            .contains(name)
            .then(|| "set-at-deploy-time".to_owned())
    };
    let owner = |path: &str| -> String {
        if path.starts_with("outgoingAuth.default") {
            if let Some((_, origin)) = &default {
                return format!("{origin} (the default strategy)");
            }
        }
        for (name, (_, origin)) in &backends {
            if path.starts_with(&backend_path(name)) {
                return format!("{origin} (backend {})", quote(name));
            }
        }
        if path.starts_with("authServer.tokens") {
            return "--metadata-namespace/--metadata-key/--key-prefix".to_owned();
        }
        if path.starts_with("authServer") {
            return "--upstreams".to_owned();
        }
        String::new()
    };
    let report_diags = |report: &Report, diags: &mut Vec<Diagnostic>| {
        diags.extend(
            report
                .iter()
                .map(|p| problem_diagnostic(p, owner(&p.path), upstreams.as_deref())),
        );
        if let Some(line) = report.omitted_line() {
            // A note: the count of errors printed stays the count of error lines.
            diags.push(Diagnostic::note("", line.text));
        }
    };
    let warnings = match validate::load(json.as_bytes(), &env) {
        Ok(loaded) if opts.native => {
            let mut problems = crate::core::report::Problems::default();
            validate::check_native_build(&loaded.config, &mut problems);
            if problems.has_errors() {
                report_diags(&problems.into_report(), &mut diags);
                return Err(diags);
            }
            report_diags(&loaded.warnings, &mut diags);
            loaded.warnings
        }
        Ok(loaded) => {
            report_diags(&loaded.warnings, &mut diags);
            loaded.warnings
        }
        Err(report) => {
            report_diags(&report, &mut diags);
            return Err(diags);
        }
    };
    let mcp_router = if opts.mcp_router {
        let seen: BTreeSet<String> = warnings.iter().map(|p| p.to_string()).collect();
        match mcp_router(&config, &env, &seen, &mut diags) {
            Some(pair) => Some(pair),
            None => return Err(diags),
        }
    } else {
        None
    };

    if let Some(u) = &upstreams {
        for (backend, (s, origin)) in &backends {
            if let Some(te) = &s.token_exchange {
                if te.subject_provider_name.is_none() {
                    diags.push(Diagnostic::note(
                        format!("{origin} (backend {})", quote(backend)),
                        format!(
                            "no subjectProviderName: the STS gets the client's own bearer token \
                             as the subject. ToolHive's operator would default it to the first \
                             upstream ({}) when an embedded auth server is configured; set \
                             spec.tokenExchange.subjectProviderName to do the same",
                            u.first().map(String::as_str).unwrap_or_default()
                        ),
                    ));
                }
            }
        }
    }

    Ok(Conversion {
        config,
        secrets: secrets.into_values().collect(),
        clusters: clusters.into_iter().collect(),
        files,
        mcp_router,
        diagnostics: diags,
    })
}

/// The mcp_router pair made from a checked `config`: the issuing instance hands off the upstream
/// tokens (and the client's bearer when a token exchange uses it as its subject: mcp_router does
/// not forward it), the accepting one applies the strategies. Both go through the filter's
/// startup validation; `None` when one fails (its problems are in `diags`). Warnings already
/// reported for the converted config (`seen`) are not repeated.
fn mcp_router(
    config: &FilterConfig,
    env: &dyn Fn(&str) -> Option<String>,
    seen: &BTreeSet<String>,
    diags: &mut Vec<Diagnostic>,
) -> Option<McpRouter> {
    let strategies = config
        .outgoing_auth
        .default
        .iter()
        .map(|s| ("the default strategy".to_owned(), s))
        .chain(
            config
                .outgoing_auth
                .backends
                .iter()
                .map(|(name, s)| (format!("backend {}", quote(name)), s)),
        );
    let client_bearer_for: Vec<String> = strategies
        .filter(|(_, s)| {
            s.token_exchange
                .as_ref()
                .is_some_and(|x| x.subject_provider_name.is_none())
        })
        .map(|(who, _)| who)
        .collect();
    let pair = McpRouter {
        issuing: IssuingConfig {
            auth_server: config.auth_server.clone(),
            handoff: HandoffOut {
                mode: "issue",
                client_bearer: !client_bearer_for.is_empty(),
            },
        },
        accepting: AcceptingConfig {
            auth_server: config.auth_server.clone(),
            handoff: HandoffOut {
                mode: "accept",
                client_bearer: false,
            },
            backend_name_sources: vec![config::BackendNameSource::ClusterName.name()],
            outgoing_auth: config.outgoing_auth.clone(),
        },
        client_bearer_for,
    };
    if pair.issuing.auth_server.is_none() && !pair.issuing.handoff.client_bearer {
        diags.push(
            Diagnostic::error(
                "--mcp-router",
                "the issuing instance would have nothing to hand off: there is no authServer \
                 (the user's upstream tokens) and no token exchange of the client's own bearer \
                 token",
            )
            .with_hint(
                "pass --upstreams if the auth filter writes upstream tokens; backends that only \
                 use headerInjection or unauthenticated need no hand-off: without --mcp-router, \
                 -o envoy prints an entry that also works in each backend cluster's http_filters",
            ),
        );
        return None;
    }
    let mut failed = false;
    for (which, json) in [
        ("the issuing instance", to_json(&pair.issuing)),
        ("the accepting instance", to_json(&pair.accepting)),
    ] {
        let (report, ok) = match validate::load(json.as_bytes(), env) {
            Ok(loaded) => (loaded.warnings, true),
            Err(report) => (report, false),
        };
        failed |= !ok;
        let origin = format!("--mcp-router ({which})");
        diags.extend(
            report
                .iter()
                .filter(|p| !p.rule.is_warning() || !seen.contains(&p.to_string()))
                .map(|p| problem_diagnostic(p, origin.clone(), None)),
        );
        if let Some(line) = report.omitted_line() {
            diags.push(Diagnostic::note("", line.text));
        }
    }
    (!failed).then_some(pair)
}

/// `a,b,c` as `--upstreams` takes it, the first few only when there are many.
fn upstreams_flag(upstreams: &[String]) -> String {
    let shown: Vec<&str> = upstreams
        .iter()
        .take(MAX_LISTED_ITEMS)
        .map(String::as_str)
        .collect();
    match upstreams.len() - shown.len() {
        0 => shown.join(","),
        more => format!("{},... and {} more", shown.join(","), thousands(more)),
    }
}

/// A startup-validation problem, told as coming from the resource that caused it.
fn problem_diagnostic(p: &Problem, owner: String, upstreams: Option<&[String]>) -> Diagnostic {
    let d = if p.rule.is_warning() {
        Diagnostic::warning(owner, p.to_string())
    } else {
        Diagnostic::error(owner, p.to_string())
    };
    match p.rule {
        Rule::V01 => d.with_hint(
            "pass --upstreams with the upstream providers of your authorization server (e.g. \
             --upstreams github,atlassian), or give the VirtualMCPServer a \
             spec.authServerConfig.upstreamProviders",
        ),
        Rule::V02 => d.with_hint(format!(
            "add the provider to --upstreams (now: {})",
            upstreams.map(upstreams_flag).unwrap_or_default()
        )),
        Rule::V06 => d.with_hint("set providerName to one of the upstream providers"),
        _ => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_defaults_to_the_token_url_host() {
        let host = |u| default_cluster(u, ClusterNaming::Host);
        assert_eq!(
            host("https://sts.example.com/oauth2/token").as_deref(),
            Some("sts.example.com")
        );
        assert_eq!(
            host("https://STS.example.com:8443?x").as_deref(),
            Some("sts.example.com")
        );
        assert_eq!(
            host("http://user@10.0.0.1:80/t").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(host("https://[::1]:9000/t").as_deref(), Some("::1"));
        assert_eq!(host("sts.example.com/token"), None);
        assert_eq!(host("ftp://sts/"), None);
        assert_eq!(host("https:///token"), None);
    }

    #[test]
    fn istio_clusters_carry_the_port() {
        let istio = |u| default_cluster(u, ClusterNaming::Istio);
        assert_eq!(
            istio("https://sts.example.com/t").as_deref(),
            Some("outbound|443||sts.example.com")
        );
        assert_eq!(
            istio("http://sts.example.com:8080/t").as_deref(),
            Some("outbound|8080||sts.example.com")
        );
    }

    #[test]
    fn short_token_types_become_urns() {
        assert_eq!(
            normalize_token_type("id_token"),
            "urn:ietf:params:oauth:token-type:id_token"
        );
        assert_eq!(
            normalize_token_type("urn:ietf:params:oauth:token-type:jwt"),
            "urn:ietf:params:oauth:token-type:jwt"
        );
    }
}
