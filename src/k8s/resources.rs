//! The Kubernetes resources the CLI reads: ToolHive's `MCPExternalAuthConfig` (the types below are
//! the single source of truth for the CRD manifest, see [`super::crd`]) and the part of
//! `VirtualMCPServer` that maps backends to those resources.
//!
//! The doc comments on the spec types become the CRD's field descriptions, so they are written for
//! `kubectl explain` readers.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of ToolHive's resources.
pub const GROUP: &str = "toolhive.stacklok.dev";
/// The version the CRD stores and serves first.
pub const STORAGE_VERSION: &str = "v1beta1";
/// Every version accepted on input (and served by the CRD; `v1alpha1` is deprecated).
pub const VERSIONS: [&str; 2] = ["v1beta1", "v1alpha1"];

pub const EXTERNAL_AUTH_KIND: &str = "MCPExternalAuthConfig";
pub const VIRTUAL_SERVER_KIND: &str = "VirtualMCPServer";

/// MCPExternalAuthConfigSpec says how a gateway authenticates the requests it sends to a backend MCP
/// server. Exactly the sub-object of the selected type is set; unauthenticated has none.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = crate::k8s::crd::cel_rules()))]
pub struct MCPExternalAuthConfigSpec {
    /// Type is the type of external authentication to configure.
    #[serde(rename = "type")]
    pub auth_type: ExternalAuthType,

    /// UpstreamInject injects the user's access token from an upstream identity provider as
    /// `Authorization: Bearer`. Only used when type is "upstreamInject".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_inject: Option<UpstreamInjectSpec>,

    /// TokenExchange configures an RFC 8693 OAuth 2.0 token exchange. Only used when type is
    /// "tokenExchange".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exchange: Option<TokenExchangeConfig>,

    /// HeaderInjection injects a header whose value comes from a Secret. Only used when type is
    /// "headerInjection".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_injection: Option<HeaderInjectionConfig>,
}

/// The `spec.type` values this filter implements. ToolHive defines more (bearerToken,
/// embeddedAuthServer, awsSts, obo, xaa); the converter refuses those with
/// `unsupported auth type: X`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ExternalAuthType {
    UpstreamInject,
    TokenExchange,
    HeaderInjection,
    Unauthenticated,
}

impl ExternalAuthType {
    pub const ALL: [ExternalAuthType; 4] = [
        ExternalAuthType::UpstreamInject,
        ExternalAuthType::TokenExchange,
        ExternalAuthType::HeaderInjection,
        ExternalAuthType::Unauthenticated,
    ];

    /// The value as written in `spec.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExternalAuthType::UpstreamInject => "upstreamInject",
            ExternalAuthType::TokenExchange => "tokenExchange",
            ExternalAuthType::HeaderInjection => "headerInjection",
            ExternalAuthType::Unauthenticated => "unauthenticated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The spec field holding this type's configuration (`None` for unauthenticated). The CEL
    /// rules and the converter's consistency check are both generated from this.
    pub fn sub_object(self) -> Option<&'static str> {
        match self {
            ExternalAuthType::UpstreamInject => Some("upstreamInject"),
            ExternalAuthType::TokenExchange => Some("tokenExchange"),
            ExternalAuthType::HeaderInjection => Some("headerInjection"),
            ExternalAuthType::Unauthenticated => None,
        }
    }

    /// ToolHive's converter error when the sub-object is missing.
    pub fn nil_error(self) -> Option<&'static str> {
        match self {
            ExternalAuthType::UpstreamInject => Some("upstream inject config is nil"),
            ExternalAuthType::TokenExchange => Some("token exchange config is nil"),
            ExternalAuthType::HeaderInjection => Some("header injection config is nil"),
            ExternalAuthType::Unauthenticated => None,
        }
    }
}

/// UpstreamInjectSpec names the upstream identity provider whose token is injected.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamInjectSpec {
    /// ProviderName is the name of the upstream identity provider whose access token is injected
    /// as the Authorization: Bearer header. It must be one of the authorization server's upstreams.
    #[schemars(length(min = 1))]
    pub provider_name: String,
}

/// TokenExchangeConfig configures an RFC 8693 OAuth 2.0 token exchange: the gateway trades the
/// subject token for a token the backend accepts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenExchangeConfig {
    /// TokenURL is the OAuth 2.0 token endpoint URL for the token exchange.
    pub token_url: String,

    /// ClientID is the OAuth 2.0 client identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,

    /// ClientSecretRef is a reference to a Secret containing the OAuth 2.0 client secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<SecretKeyRef>,

    /// Audience is the target audience for the exchanged token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,

    /// Scopes is a list of OAuth 2.0 scopes to request for the exchanged token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub scopes: Option<Vec<String>>,

    /// SubjectTokenType is the type of the subject token: "access_token" (default), "id_token",
    /// "jwt", or the full urn:ietf:params:oauth:token-type: URNs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SUBJECT_TOKEN_TYPE_PATTERN))]
    pub subject_token_type: Option<String>,

    /// ExternalTokenHeaderName is the name of a custom header for the exchanged token. outgoing-auth
    /// always sends the exchanged token as Authorization: Bearer (as ToolHive's vMCP does); the
    /// converter warns when this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_token_header_name: Option<String>,

    /// SubjectProviderName is the name of the upstream provider whose token is used as the RFC 8693
    /// subject token instead of the client's own bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_provider_name: Option<String>,
}

/// ToolHive's pattern for `subjectTokenType`.
pub const SUBJECT_TOKEN_TYPE_PATTERN: &str =
    "^(access_token|id_token|jwt|urn:ietf:params:oauth:token-type:(access_token|id_token|jwt))?$";

/// HeaderInjectionConfig injects a header whose value is read from a Secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderInjectionConfig {
    /// HeaderName is the name of the HTTP header to inject.
    #[schemars(length(min = 1))]
    pub header_name: String,

    /// ValueSecretRef references a Secret containing the header value.
    pub value_secret_ref: SecretKeyRef,
}

/// SecretKeyRef is a reference to a key within a Secret in the resource's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Name is the name of the Secret.
    pub name: String,
    /// Key is the key within the Secret.
    pub key: String,
}

/// The part of a `VirtualMCPServer` spec the converter reads. Everything else is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServerSpec {
    #[serde(default)]
    pub outgoing_auth: Option<OutgoingAuthConfig>,
    #[serde(default)]
    pub auth_server_config: Option<AuthServerConfig>,
}

/// `VirtualMCPServer.spec.outgoingAuth`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutgoingAuthConfig {
    /// `discovered` (ToolHive's default) or `inline`.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub default: Option<BackendAuthConfig>,
    #[serde(default)]
    pub backends: std::collections::BTreeMap<String, BackendAuthConfig>,
}

/// One entry of `spec.outgoingAuth`: `type: externalAuthConfigRef` with a reference, or
/// `type: discovered`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendAuthConfig {
    #[serde(rename = "type")]
    pub auth_type: String,
    #[serde(default)]
    pub external_auth_config_ref: Option<ExternalAuthConfigRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalAuthConfigRef {
    pub name: String,
}

/// `VirtualMCPServer.spec.authServerConfig`: only the upstream provider names are read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthServerConfig {
    #[serde(default)]
    pub upstream_providers: Vec<UpstreamProvider>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UpstreamProvider {
    pub name: String,
}

/// The environment variable ToolHive's operator uses for a token exchange client secret:
/// `TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_<NAME>`.
pub fn token_exchange_secret_env(resource: &str) -> String {
    format!(
        "TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_{}",
        env_suffix(resource)
    )
}

/// The environment variable ToolHive's operator uses for a header injection value:
/// `TOOLHIVE_HEADER_INJECTION_VALUE_<NAME>`.
pub fn header_injection_value_env(resource: &str) -> String {
    format!("TOOLHIVE_HEADER_INJECTION_VALUE_{}", env_suffix(resource))
}

/// `metadata.name` upper-cased with every character but ASCII letters and digits replaced by `_`
/// (ToolHive's `GenerateUnique...EnvVarName`).
pub fn env_suffix(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_follow_toolhive() {
        assert_eq!(
            token_exchange_secret_env("my-auth-config"),
            "TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_MY_AUTH_CONFIG"
        );
        assert_eq!(
            header_injection_value_env("header-auth"),
            "TOOLHIVE_HEADER_INJECTION_VALUE_HEADER_AUTH"
        );
        assert_eq!(env_suffix("a.b-c9"), "A_B_C9");
        assert_eq!(env_suffix("ünï"), "_N_");
    }

    #[test]
    fn every_type_round_trips_through_its_name() {
        for t in ExternalAuthType::ALL {
            assert_eq!(ExternalAuthType::parse(t.as_str()), Some(t));
            let json = serde_json::to_value(t).unwrap();
            assert_eq!(json, serde_json::json!(t.as_str()));
        }
        assert_eq!(ExternalAuthType::parse("bearerToken"), None);
    }
}
