//! The filter configuration: the typed model and its decoding from the plugin's JSON.
//!
//! The JSON mirrors ToolHive vMCP's `outgoingAuth` block (camelCase) so a vMCP block can be pasted
//! in as-is, plus `authServer` (where the upstream tokens are in Envoy's dynamic metadata) and the
//! Envoy-specific fields a token exchange needs. Decoding walks the JSON by hand instead of using
//! serde's derive so that it can report *every* problem with its JSON path, not just the first.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde_json::{Map, Value};

use crate::core::challenge::{resource_metadata_problem, scope_problem, ChallengeParams};
use crate::core::connect::{
    message_template_problem, url_template_problem, DEFAULT_MESSAGE_TEMPLATE,
};
use crate::core::http;
use crate::core::report::{
    backend_path, did_you_mean, member_path, quote, Problems, Rule, DEFAULT_PATH,
};

pub const DEFAULT_METADATA_NAMESPACE: &str = "envoy.filters.http.ext_authz";
pub const DEFAULT_METADATA_KEY: &str = "upstream_tokens";
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;
pub const MAX_TOKEN_BYTES_LIMIT: usize = 64 * 1024;
pub const DEFAULT_EXCHANGE_TIMEOUT_MS: u64 = 5_000;
pub const MAX_EXCHANGE_TIMEOUT_MS: u64 = 60_000;
pub const MAX_CACHE_ENTRIES: u64 = 1_000_000;
/// The hand-off header unless `handoff.header` names another.
pub const DEFAULT_HANDOFF_HEADER: &str = "x-outgoing-auth-handoff";

pub const STRATEGY_TYPES: [&str; 4] = [
    "unauthenticated",
    "header_injection",
    "upstream_inject",
    "token_exchange",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub auth_server: Option<AuthServer>,
    pub outgoing_auth: OutgoingAuth,
    /// The exchanged-token cache (Envoy addition; vMCP has none).
    pub exchange_cache: CacheSettings,
    /// Where a request's backend name is looked up, in order (Envoy addition).
    pub backend_name_sources: Vec<BackendNameSource>,
    /// Client credentials to remove before any backend (Envoy addition).
    pub removal: CredentialRemoval,
    /// The hand-off across Envoy's mcp_router (Envoy addition); `None`: this instance reads
    /// the upstream tokens from dynamic metadata itself.
    pub handoff: Option<HandoffConfig>,
    /// How a missing upstream token is answered (Envoy addition).
    pub missing_token: MissingToken,
}

/// The `missingToken` block: what a request whose upstream token is missing is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingToken {
    /// `resourceMetadata` and `scope` in the 401's `WWW-Authenticate` challenge.
    pub challenge: ChallengeParams,
    /// Provider name → the URL template where the user connects that provider.
    pub connect_urls: BTreeMap<String, String>,
    /// What the user is shown; `{provider}` is filled in.
    pub message: String,
    /// `readBody`: read an MCP request's body to answer it in MCP (needs the wasm filter's
    /// `allow_on_headers_stop_iteration: true`); otherwise the filter answers in MCP only from
    /// what `envoy.filters.http.mcp` parsed into dynamic metadata.
    pub read_body: bool,
}

impl Default for MissingToken {
    fn default() -> Self {
        MissingToken {
            challenge: ChallengeParams::default(),
            connect_urls: BTreeMap::new(),
            message: DEFAULT_MESSAGE_TEMPLATE.to_owned(),
            read_body: false,
        }
    }
}

/// The `handoff` block: this instance issues the hand-off (listener chain, before mcp_router) or
/// accepts it (a backend cluster's filters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffConfig {
    pub mode: HandoffMode,
    /// Lower case.
    pub header: String,
    /// `keyEnv`: a secret shared by the issuing and accepting instances; `None`: the instances
    /// of one `vm_id` share a random key made at startup.
    pub key: Option<SecretSource>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffMode {
    /// `clientBearer`: also hand off the client's own `Authorization` (for a token_exchange of
    /// the client's bearer behind mcp_router, which does not forward it).
    Issue {
        client_bearer: bool,
    },
    Accept,
}

/// A `handoff.keyEnv` secret shorter than this is refused (it keys the seal).
pub const MIN_HANDOFF_KEY_BYTES: usize = 32;

/// `removeRequestHeaders` and `removeCookies`: client credentials (besides `Authorization` and
/// `Proxy-Authorization`, always handled) that no backend receives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CredentialRemoval {
    /// Lower-case header names.
    pub headers: Vec<String>,
    /// Cookie names (case-sensitive, as cookies are).
    pub cookies: Vec<String>,
}

/// At most this many names in each of `removeRequestHeaders` and `removeCookies`: each costs
/// work on every request.
pub const MAX_REMOVALS: usize = 64;

/// A place the backend name of a request can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendNameSource {
    /// Route metadata `filter_metadata.outgoing_auth.backend` (listener filters only).
    RouteMetadata,
    /// Cluster metadata `filter_metadata.outgoing_auth.backend`.
    ClusterMetadata,
    /// The name of the cluster the request is routed to.
    ClusterName,
}

impl BackendNameSource {
    pub const ALL: [BackendNameSource; 3] = [
        BackendNameSource::RouteMetadata,
        BackendNameSource::ClusterMetadata,
        BackendNameSource::ClusterName,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BackendNameSource::RouteMetadata => "routeMetadata",
            BackendNameSource::ClusterMetadata => "clusterMetadata",
            BackendNameSource::ClusterName => "clusterName",
        }
    }

    /// The serialized (NUL-joined) property path, ready for `proxy_get_property`.
    pub fn property_path(self) -> &'static [u8] {
        match self {
            BackendNameSource::RouteMetadata => {
                b"xds\0route_metadata\0filter_metadata\0outgoing_auth\0backend"
            }
            BackendNameSource::ClusterMetadata => {
                b"xds\0cluster_metadata\0filter_metadata\0outgoing_auth\0backend"
            }
            BackendNameSource::ClusterName => b"xds\0cluster_name",
        }
    }
}

/// The authorization server an earlier auth filter talks to, and where that filter leaves the
/// user's upstream tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthServer {
    pub upstreams: Vec<String>,
    pub tokens: TokenSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSource {
    /// `filter_metadata` namespace, e.g. `envoy.filters.http.ext_authz`.
    pub namespace: String,
    pub layout: TokenLayout,
    /// Longer values count as missing.
    pub max_token_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLayout {
    /// One Struct entry mapping provider name → token (gRPC ext_authz, `set_metadata`).
    Struct { key: String },
    /// One string entry per provider at `prefix + provider` (HTTP ext_authz
    /// `dynamic_metadata_from_headers`).
    KeyPrefix { prefix: String },
}

impl Default for TokenSource {
    fn default() -> Self {
        TokenSource {
            namespace: DEFAULT_METADATA_NAMESPACE.to_owned(),
            layout: TokenLayout::Struct {
                key: DEFAULT_METADATA_KEY.to_owned(),
            },
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutgoingAuth {
    pub default: Option<Strategy>,
    pub backends: BTreeMap<String, Strategy>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    Unauthenticated,
    HeaderInjection(HeaderInjection),
    UpstreamInject(UpstreamInject),
    TokenExchange(TokenExchange),
}

impl Strategy {
    pub fn type_name(&self) -> &'static str {
        match self {
            Strategy::Unauthenticated => "unauthenticated",
            Strategy::HeaderInjection(_) => "header_injection",
            Strategy::UpstreamInject(_) => "upstream_inject",
            Strategy::TokenExchange(_) => "token_exchange",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderInjection {
    pub header_name: String,
    pub value: SecretSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamInject {
    pub provider_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenExchange {
    pub token_url: TokenUrl,
    pub cluster: String,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretSource>,
    pub audience: Option<String>,
    pub scopes: Vec<String>,
    pub subject_token_type: SubjectTokenType,
    pub subject_provider_name: Option<String>,
    pub timeout_ms: u64,
}

#[cfg(test)]
impl TokenExchange {
    /// A minimal valid exchange for tests: `https://sts.example/token` via cluster `sts`.
    pub(crate) fn example() -> Self {
        TokenExchange {
            token_url: TokenUrl {
                url: "https://sts.example/token".into(),
                authority: "sts.example".into(),
                path: "/token".into(),
            },
            cluster: "sts".into(),
            client_id: None,
            client_secret: None,
            audience: None,
            scopes: vec![],
            subject_token_type: SubjectTokenType::AccessToken,
            subject_provider_name: None,
            timeout_ms: DEFAULT_EXCHANGE_TIMEOUT_MS,
        }
    }
}

/// A `tokenUrl` split into what an Envoy HTTP call needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUrl {
    pub url: String,
    pub authority: String,
    /// Path and query, at least `/`.
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectTokenType {
    AccessToken,
    IdToken,
    Jwt,
}

impl SubjectTokenType {
    pub fn urn(self) -> &'static str {
        match self {
            SubjectTokenType::AccessToken => "urn:ietf:params:oauth:token-type:access_token",
            SubjectTokenType::IdToken => "urn:ietf:params:oauth:token-type:id_token",
            SubjectTokenType::Jwt => "urn:ietf:params:oauth:token-type:jwt",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        let short = s
            .strip_prefix("urn:ietf:params:oauth:token-type:")
            .unwrap_or(s);
        match short {
            "access_token" => Some(SubjectTokenType::AccessToken),
            "id_token" => Some(SubjectTokenType::IdToken),
            "jwt" => Some(SubjectTokenType::Jwt),
            _ => None,
        }
    }
}

/// A secret as configured (inline or by environment variable) and its value resolved at load time.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretSource {
    /// The environment variable it came from; `None` when written inline.
    pub env: Option<String>,
    pub value: Secret,
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSource")
            .field("env", &self.env)
            .field("value", &self.value)
            .finish()
    }
}

/// A secret value. Its `Debug` is redacted and it has no `Display`, so it cannot reach a log line
/// by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Cache settings (the top-level `exchangeCache` block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Slots in the table; 0 disables caching.
    pub max_entries: u32,
    /// A token is dropped this long before the STS says it expires.
    pub safety_margin_secs: u64,
    /// Lifetime of a token issued without `expires_in`; 0 means such tokens are not cached.
    pub default_ttl_secs: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_entries: 10_000,
            safety_margin_secs: 30,
            default_ttl_secs: 0,
        }
    }
}

/// No exchanged token is served from the cache for longer than this, whatever `expires_in` says:
/// a token that claims to live for years is still exchanged anew every day.
pub const MAX_TTL_SECS: u64 = 24 * 60 * 60;

impl CacheSettings {
    /// How long an issued token may be served from the cache; `None`: do not cache it.
    pub fn ttl_secs(&self, expires_in: Option<u64>) -> Option<u64> {
        if self.max_entries == 0 {
            return None;
        }
        let ttl = match expires_in {
            Some(secs) => secs.saturating_sub(self.safety_margin_secs),
            None => self.default_ttl_secs,
        };
        (ttl > 0).then_some(ttl.min(MAX_TTL_SECS))
    }
}

/// A decoded config; after structural errors it holds what could be decoded, so the cross-field
/// rules still run on it (the errors already make the config fail).
pub(crate) struct Decoded {
    pub(crate) config: Config,
    /// `authServer` is present but unusable: the cross-field rules would only add noise.
    pub(crate) auth_server_broken: bool,
    /// The upstream_inject strategies without a `providerName` field (`None`: the default).
    pub(crate) missing_provider: Vec<Option<String>>,
}

/// Decodes the JSON, reporting the structural (`S-xx`) problems; [`crate::core::validate::load`] then
/// applies the cross-field rules.
pub(crate) fn decode(
    json: &[u8],
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> Option<Decoded> {
    if json.iter().all(u8::is_ascii_whitespace) {
        problems.report(
            Rule::S01,
            "$",
            "the plugin configuration is empty; set the wasm filter's `configuration` to this \
             filter's JSON (a google.protobuf.StringValue)",
        );
        return None;
    }
    let root: Value = match serde_json::from_slice(json) {
        Ok(v) => v,
        Err(e) => {
            let not_json = json
                .iter()
                .find(|c| !c.is_ascii_whitespace())
                .is_some_and(|c| !matches!(c, b'{' | b'[' | b'"'));
            problems.report(
                Rule::S01,
                "$",
                format!(
                    "invalid JSON at line {} column {}: {}{}",
                    e.line(),
                    e.column(),
                    json_error_kind(&e),
                    if not_json {
                        "; the configuration must be this filter's JSON object ({\"outgoingAuth\": \
                         ...}), not YAML or an Envoy configuration"
                    } else {
                        ""
                    }
                ),
            );
            return None;
        }
    };
    let mut d = Decoder {
        problems,
        env,
        missing_provider: Vec::new(),
    };
    let top = d.object(
        &root,
        "$",
        &[
            "authServer",
            "outgoingAuth",
            "exchangeCache",
            "backendNameSources",
            "removeRequestHeaders",
            "removeCookies",
            "handoff",
            "missingToken",
        ],
    )?;
    let auth_server_value = top.get("authServer");
    let auth_server = auth_server_value.and_then(|v| d.auth_server(v, "authServer"));
    let auth_server_broken = auth_server_value.is_some() && auth_server.is_none();
    let handoff = top.get("handoff").and_then(|v| d.handoff(v, "handoff"));
    let issuing = matches!(
        handoff,
        Some(HandoffConfig {
            mode: HandoffMode::Issue { .. },
            ..
        })
    );
    let outgoing_auth = match top.get("outgoingAuth") {
        Some(v) => d.outgoing_auth(v, "outgoingAuth"),
        None if issuing => Some(OutgoingAuth::default()),
        None => {
            d.problems.report(
                Rule::S04,
                "outgoingAuth",
                "outgoingAuth is required: it says how requests to each backend authenticate",
            );
            None
        }
    };
    let exchange_cache = match top.get("exchangeCache") {
        // A bad value is already reported; the defaults let the other rules still run.
        Some(v) => d.exchange_cache(v, "exchangeCache").unwrap_or_default(),
        None => CacheSettings::default(),
    };
    let backend_name_sources = d.backend_name_sources(&top);
    let removal = CredentialRemoval {
        headers: d.removal_list(&top, "removeRequestHeaders", RemovalKind::Header),
        cookies: d.removal_list(&top, "removeCookies", RemovalKind::Cookie),
    };
    let missing_token = top
        .get("missingToken")
        .and_then(|v| d.missing_token(v, "missingToken", auth_server.as_ref()))
        .unwrap_or_default();
    let accepting = matches!(
        handoff,
        Some(HandoffConfig {
            mode: HandoffMode::Accept,
            ..
        })
    );
    if accepting && missing_token.read_body {
        d.problems.report(
            Rule::S18,
            "missingToken.readBody",
            "readBody does not work behind mcp_router (Envoy 1.40 hands the local reply of a \
             paused mcp_router backend call to a filter context proxy-wasm has already dropped); \
             an accepting instance answers from the request the hand-off carries, as \
             envoy.filters.http.mcp parsed it: remove readBody here",
        );
    }
    if let (true, Some(handoff)) = (issuing, &handoff) {
        d.check_issuer(
            &top,
            handoff,
            auth_server.as_ref(),
            outgoing_auth.as_ref(),
            &removal,
        );
    }
    Some(Decoded {
        config: Config {
            auth_server,
            outgoing_auth: outgoing_auth?,
            exchange_cache,
            backend_name_sources,
            removal,
            handoff,
            missing_token,
        },
        auth_server_broken,
        missing_provider: d.missing_provider,
    })
}

/// serde_json's message without its own " at line X column Y" suffix (we print those ourselves).
fn json_error_kind(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text.get(..i).unwrap_or(&text).to_owned(),
        None => text,
    }
}

/// Walks the JSON value, reporting problems as it goes. Each method returns `None` when the value
/// it decodes is unusable (the problem has been reported).
struct Decoder<'p, 'e> {
    problems: &'p mut Problems,
    env: &'e dyn Fn(&str) -> Option<String>,
    /// The upstream_inject strategies decoded without a `providerName` field.
    missing_provider: Vec<Option<String>>,
}

/// A JSON object whose unknown fields have been reported; `null` members count as absent.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Obj<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn field(&self, key: &str) -> String {
        member_path(&self.path, key)
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Decoder<'_, '_> {
    fn object<'a>(&mut self, v: &'a Value, path: &str, known: &[&str]) -> Option<Obj<'a>> {
        let Value::Object(map) = v else {
            self.wrong_type(path, "an object", v);
            return None;
        };
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                self.problems
                    .report_with(Rule::S02, &member_path(path, key), || {
                        format!(
                            "unknown field {}{}; the fields allowed here are: {}",
                            quote(key),
                            did_you_mean(key, known),
                            known.join(", ")
                        )
                    });
            }
        }
        Some(Obj {
            map,
            path: path.to_owned(),
        })
    }

    fn wrong_type(&mut self, path: &str, expected: &str, v: &Value) {
        self.problems.report(
            Rule::S03,
            path,
            format!("expected {expected}, found {}", type_name(v)),
        );
    }

    fn string<'a>(&mut self, obj: &Obj<'a>, key: &str) -> Option<&'a str> {
        match obj.get(key)? {
            Value::String(s) => Some(s),
            other => {
                self.wrong_type(&obj.field(key), "a string", other);
                None
            }
        }
    }

    /// A string that must be present and not blank.
    fn required_string<'a>(&mut self, obj: &Obj<'a>, key: &str, why: &str) -> Option<&'a str> {
        if obj.get(key).is_none() {
            self.problems.report(
                Rule::S04,
                &obj.field(key),
                format!("{key} is required: {why}"),
            );
            return None;
        }
        let s = self.string(obj, key)?;
        if s.trim().is_empty() {
            self.problems.report(
                Rule::S04,
                &obj.field(key),
                format!("{key} must not be empty: {why}"),
            );
            return None;
        }
        Some(s)
    }

    fn string_array(&mut self, obj: &Obj<'_>, key: &str) -> Option<Vec<String>> {
        let v = obj.get(key)?;
        let Value::Array(items) = v else {
            self.wrong_type(&obj.field(key), "an array of strings", v);
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(s) => out.push(s.clone()),
                other => self.wrong_type(&format!("{}[{i}]", obj.field(key)), "a string", other),
            }
        }
        Some(out)
    }

    fn integer(&mut self, obj: &Obj<'_>, key: &str, min: u64, max: u64) -> Option<u64> {
        let v = obj.get(key)?;
        let Some(n) = v.as_u64() else {
            if v.is_number() {
                self.problems.report(
                    Rule::S14,
                    &obj.field(key),
                    format!("{key} must be a whole number from {min} to {max}"),
                );
            } else {
                self.wrong_type(&obj.field(key), "a whole number", v);
            }
            return None;
        };
        if !(min..=max).contains(&n) {
            self.problems.report(
                Rule::S14,
                &obj.field(key),
                format!("{key} is {n}; it must be from {min} to {max}"),
            );
            return None;
        }
        Some(n)
    }

    fn auth_server(&mut self, v: &Value, path: &str) -> Option<AuthServer> {
        let obj = self.object(v, path, &["upstreams", "tokens"])?;
        let upstreams = self.upstreams(&obj);
        let tokens = match obj.get("tokens") {
            Some(v) => self.tokens(v, &obj.field("tokens")),
            None => Some(TokenSource::default()),
        };
        Some(AuthServer {
            upstreams: upstreams?,
            tokens: tokens?,
        })
    }

    fn upstreams(&mut self, obj: &Obj<'_>) -> Option<Vec<String>> {
        let path = obj.field("upstreams");
        let Some(names) = self.string_array(obj, "upstreams") else {
            if obj.get("upstreams").is_none() {
                // V-05 reports the empty list with advice; nothing structural to add.
                return Some(Vec::new());
            }
            return None;
        };
        let mut ok = true;
        let mut seen: HashSet<&str> = HashSet::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            if !is_upstream_name(name) {
                ok = false;
                self.problems.report(
                    Rule::S08,
                    &format!("{path}[{i}]"),
                    format!(
                        "upstream name {} is invalid: use lowercase letters, digits and '-', \
                         starting and ending with a letter or digit (^[a-z0-9]([a-z0-9-]*[a-z0-9])?$)",
                        quote(name)
                    ),
                );
            } else if !seen.insert(name) {
                ok = false;
                self.problems.report(
                    Rule::S08,
                    &format!("{path}[{i}]"),
                    format!("upstream name {} is listed more than once", quote(name)),
                );
            }
        }
        ok.then_some(names)
    }

    fn tokens(&mut self, v: &Value, path: &str) -> Option<TokenSource> {
        let obj = self.object(
            v,
            path,
            &[
                "metadataNamespace",
                "metadataKey",
                "keyPrefix",
                "maxTokenBytes",
            ],
        )?;
        let mut ok = true;
        let mut non_empty = |d: &mut Self, key: &str| -> Option<String> {
            let s = d.string(&obj, key)?;
            if s.is_empty() {
                d.problems.report(
                    Rule::S12,
                    &obj.field(key),
                    format!("{key} must not be empty"),
                );
                ok = false;
                return None;
            }
            Some(s.to_owned())
        };
        let namespace = non_empty(self, "metadataNamespace");
        let key = non_empty(self, "metadataKey");
        let prefix = non_empty(self, "keyPrefix");
        let layout = match (key, prefix) {
            (Some(_), Some(_)) => {
                self.problems.report(
                    Rule::S12,
                    path,
                    "set only one of metadataKey (a Struct of provider → token, as gRPC ext_authz \
                     or set_metadata writes it) and keyPrefix (one entry per provider, as HTTP \
                     ext_authz dynamic_metadata_from_headers writes it)",
                );
                None
            }
            (None, Some(prefix)) => Some(TokenLayout::KeyPrefix { prefix }),
            (key, None) => Some(TokenLayout::Struct {
                key: key.unwrap_or_else(|| DEFAULT_METADATA_KEY.to_owned()),
            }),
        };
        let max = match obj.get("maxTokenBytes") {
            Some(_) => self
                .integer(&obj, "maxTokenBytes", 1, MAX_TOKEN_BYTES_LIMIT as u64)
                .map(|n| n as usize),
            None => Some(DEFAULT_MAX_TOKEN_BYTES),
        };
        if !ok {
            return None;
        }
        Some(TokenSource {
            namespace: namespace.unwrap_or_else(|| DEFAULT_METADATA_NAMESPACE.to_owned()),
            layout: layout?,
            max_token_bytes: max?,
        })
    }

    /// `backendNameSources`: a non-empty list of distinct sources; all three, in the documented
    /// order, when absent. A problem falls back to the default (the error fails the config).
    fn backend_name_sources(&mut self, top: &Obj<'_>) -> Vec<BackendNameSource> {
        let default = BackendNameSource::ALL.to_vec();
        let Some(names) = self.string_array(top, "backendNameSources") else {
            return default;
        };
        let path = top.field("backendNameSources");
        let valid: Vec<&str> = BackendNameSource::ALL.iter().map(|s| s.name()).collect();
        let mut sources = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            match BackendNameSource::ALL.iter().find(|s| s.name() == name) {
                Some(source) if !sources.contains(source) => sources.push(*source),
                Some(_) => self.problems.report(
                    Rule::S15,
                    &format!("{path}[{i}]"),
                    format!("{} is listed more than once", quote(name)),
                ),
                None => self.problems.report(
                    Rule::S15,
                    &format!("{path}[{i}]"),
                    format!(
                        "unknown backend name source {}; valid sources are: {}",
                        quote(name),
                        valid.join(", ")
                    ),
                ),
            }
        }
        if names.is_empty() {
            self.problems.report(
                Rule::S15,
                &path,
                format!(
                    "backendNameSources must name at least one of: {}",
                    valid.join(", ")
                ),
            );
        }
        if sources.is_empty() {
            default
        } else {
            sources
        }
    }

    /// `removeRequestHeaders` / `removeCookies`: distinct valid names, at most [`MAX_REMOVALS`].
    fn removal_list(&mut self, top: &Obj<'_>, key: &str, kind: RemovalKind) -> Vec<String> {
        let Some(names) = self.string_array(top, key) else {
            return Vec::new();
        };
        let path = top.field(key);
        if names.len() > MAX_REMOVALS {
            self.problems.report(
                Rule::S16,
                &path,
                format!(
                    "{key} lists {} names; at most {MAX_REMOVALS} are allowed (each costs work on \
                     every request)",
                    names.len()
                ),
            );
            return Vec::new();
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let item = format!("{path}[{i}]");
            let normalized = match kind {
                RemovalKind::Header => name.to_ascii_lowercase(),
                RemovalKind::Cookie => name.clone(),
            };
            let problem = if !http::is_token(name) {
                Some(format!(
                    "{} is not a valid {} name (letters, digits and !#$%&'*+-.^_`|~ only)",
                    quote(name),
                    kind.what()
                ))
            } else if kind == RemovalKind::Header && http::is_reserved_header(name) {
                Some(format!(
                    "header {} is managed by Envoy (connection or framing) and cannot be removed",
                    quote(name)
                ))
            } else if !seen.insert(normalized.clone()) {
                Some(format!("{} is listed more than once", quote(name)))
            } else {
                None
            };
            match problem {
                Some(message) => self.problems.report(Rule::S16, &item, message),
                None => out.push(normalized),
            }
        }
        out
    }

    fn missing_token(
        &mut self,
        v: &Value,
        path: &str,
        auth_server: Option<&AuthServer>,
    ) -> Option<MissingToken> {
        let obj = self.object(
            v,
            path,
            &[
                "resourceMetadata",
                "scope",
                "connectUrls",
                "message",
                "readBody",
            ],
        )?;
        let mut out = MissingToken::default();
        let checked = |d: &mut Self, key: &str, problem: fn(&str) -> Option<&'static str>| {
            let value = d.string(&obj, key)?;
            match problem(value) {
                Some(why) => {
                    d.problems.report(
                        Rule::S18,
                        &obj.field(key),
                        format!("{key} {why}; it goes into the 401's WWW-Authenticate challenge"),
                    );
                    None
                }
                None => Some(value.to_owned()),
            }
        };
        out.challenge.resource_metadata =
            checked(self, "resourceMetadata", resource_metadata_problem);
        out.challenge.scope = checked(self, "scope", scope_problem);
        if let Some(message) = self.string(&obj, "message") {
            match message_template_problem(message) {
                Some(why) => {
                    self.problems
                        .report(Rule::S18, &obj.field("message"), format!("message {why}"))
                }
                None => out.message = message.to_owned(),
            }
        }
        match obj.get("readBody") {
            None => {}
            Some(Value::Bool(b)) => out.read_body = *b,
            Some(other) => self.wrong_type(&obj.field("readBody"), "a boolean", other),
        }
        match obj.get("connectUrls") {
            None => {}
            Some(Value::Object(urls)) => {
                let upstreams: std::collections::HashSet<&str> = auth_server
                    .map(|a| a.upstreams.iter().map(String::as_str).collect())
                    .unwrap_or_default();
                for (provider, template) in urls {
                    let field = member_path(&obj.field("connectUrls"), provider);
                    let Value::String(template) = template else {
                        self.wrong_type(&field, "a URL template (a string)", template);
                        continue;
                    };
                    if !upstreams.contains(provider.as_str()) {
                        self.problems.report(
                            Rule::S18,
                            &field,
                            format!(
                                "connectUrls names provider {} which is not in authServer.upstreams",
                                quote(provider)
                            ),
                        );
                    } else if let Some(why) = url_template_problem(template) {
                        self.problems
                            .report(Rule::S18, &field, format!("the connect URL {why}"));
                    } else {
                        out.connect_urls.insert(provider.clone(), template.clone());
                    }
                }
            }
            Some(other) => self.wrong_type(&obj.field("connectUrls"), "an object", other),
        }
        Some(out)
    }

    fn handoff(&mut self, v: &Value, path: &str) -> Option<HandoffConfig> {
        let obj = self.object(v, path, &["mode", "header", "keyEnv", "clientBearer"])?;
        let mode = self.required_string(
            &obj,
            "mode",
            "issue (listener chain, before mcp_router) or accept (a backend cluster's filters)",
        )?;
        let client_bearer = match obj.get("clientBearer") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                self.wrong_type(&obj.field("clientBearer"), "a boolean", other);
                None
            }
        };
        let mode = match mode {
            "issue" => HandoffMode::Issue {
                client_bearer: client_bearer.unwrap_or(false),
            },
            "accept" => {
                if client_bearer.is_some() {
                    self.problems.report(
                        Rule::S17,
                        &obj.field("clientBearer"),
                        "clientBearer belongs to the issuing instance (mode issue): it decides what \
                         the hand-off carries; remove it here",
                    );
                }
                HandoffMode::Accept
            }
            other => {
                self.problems.report(
                    Rule::S17,
                    &obj.field("mode"),
                    format!(
                        "unknown handoff mode {}; use \"issue\" in the listener's http_filters \
                         before mcp_router, \"accept\" in each backend cluster's filters",
                        quote(other)
                    ),
                );
                return None;
            }
        };
        let header = match self.string(&obj, "header") {
            None => DEFAULT_HANDOFF_HEADER.to_owned(),
            Some(name) => {
                let lower = name.to_ascii_lowercase();
                if !self.header_name(name, &obj.field("header")) {
                    return None;
                }
                if ["authorization", "proxy-authorization", "cookie"].contains(&lower.as_str()) {
                    self.problems.report(
                        Rule::S17,
                        &obj.field("header"),
                        format!(
                            "header {} carries client credentials; name a header of its own for \
                             the hand-off (default {})",
                            quote(name),
                            DEFAULT_HANDOFF_HEADER
                        ),
                    );
                    return None;
                }
                lower
            }
        };
        let key = if obj.get("keyEnv").is_some() {
            let key = self.secret(&obj, "", "keyEnv", false)?;
            if key.value.expose().len() < MIN_HANDOFF_KEY_BYTES {
                self.problems.report(
                    Rule::S17,
                    &obj.field("keyEnv"),
                    format!(
                        "the value of environment variable {} is shorter than \
                         {MIN_HANDOFF_KEY_BYTES} bytes; give both instances a long random secret \
                         (e.g. `openssl rand -base64 48`)",
                        key.env.as_deref().unwrap_or("keyEnv")
                    ),
                );
                return None;
            }
            Some(key)
        } else {
            None
        };
        Some(HandoffConfig { mode, header, key })
    }

    /// An issuing instance applies no backend strategy and removes nothing: say so if the
    /// configuration asks it to, and that it must hand off something.
    fn check_issuer(
        &mut self,
        top: &Obj<'_>,
        handoff: &HandoffConfig,
        auth_server: Option<&AuthServer>,
        outgoing_auth: Option<&OutgoingAuth>,
        removal: &CredentialRemoval,
    ) {
        let applies_strategies =
            outgoing_auth.is_some_and(|o| o.default.is_some() || !o.backends.is_empty());
        if applies_strategies {
            self.problems.report(
                Rule::S17,
                &top.field("outgoingAuth"),
                "an issuing instance (handoff mode issue) never applies a backend strategy: it \
                 runs before mcp_router picks the backend. Put outgoingAuth in the accepting \
                 instances on the backends' clusters, and remove it here",
            );
        }
        if !removal.headers.is_empty() || !removal.cookies.is_empty() {
            self.problems.report(
                Rule::S17,
                &top.field("removeRequestHeaders"),
                "removeRequestHeaders and removeCookies apply where the backend's credential is \
                 set: put them in the accepting instances (handoff mode accept)",
            );
        }
        let client_bearer = matches!(
            handoff.mode,
            HandoffMode::Issue {
                client_bearer: true
            }
        );
        if auth_server.is_none() && !client_bearer {
            self.problems.report(
                Rule::S17,
                &top.field("handoff"),
                "an issuing instance with neither authServer (the upstream tokens to hand off) \
                 nor clientBearer: true has nothing to hand off",
            );
        }
    }

    fn exchange_cache(&mut self, v: &Value, path: &str) -> Option<CacheSettings> {
        let obj = self.object(
            v,
            path,
            &["maxEntries", "safetyMarginSeconds", "defaultTtlSeconds"],
        )?;
        let defaults = CacheSettings::default();
        let max_entries = self
            .integer(&obj, "maxEntries", 0, MAX_CACHE_ENTRIES)
            .map_or(defaults.max_entries, |n| n as u32);
        let safety_margin_secs = self
            .integer(&obj, "safetyMarginSeconds", 0, 3_600)
            .unwrap_or(defaults.safety_margin_secs);
        let default_ttl_secs = self
            .integer(&obj, "defaultTtlSeconds", 0, 86_400)
            .unwrap_or(defaults.default_ttl_secs);
        Some(CacheSettings {
            max_entries,
            safety_margin_secs,
            default_ttl_secs,
        })
    }

    fn outgoing_auth(&mut self, v: &Value, path: &str) -> Option<OutgoingAuth> {
        let obj = self.object(v, path, &["source", "default", "backends"])?;
        if let Some(source) = self.string(&obj, "source") {
            match source {
                "inline" => {}
                "discovered" => self.problems.report(
                    Rule::S07,
                    &obj.field("source"),
                    "source \"discovered\" is a vMCP mode that reads auth from backend workloads; \
                     it has no meaning in Envoy: use \"inline\" (or omit source) and list the \
                     backends here",
                ),
                other => self.problems.report(
                    Rule::S07,
                    &obj.field("source"),
                    format!("source {} is not supported; use \"inline\"", quote(other)),
                ),
            }
        }
        let default = obj.get("default").map(|v| {
            let s = self.strategy(v, DEFAULT_PATH);
            if s.as_ref().is_some_and(|s| provider_name_missing(s, v)) {
                self.missing_provider.push(None);
            }
            s
        });
        let mut backends = BTreeMap::new();
        if let Some(v) = obj.get("backends") {
            match v {
                Value::Object(map) => {
                    for (name, v) in map {
                        let path = backend_path(name);
                        if name.trim().is_empty() {
                            self.problems.report(
                                Rule::S04,
                                &path,
                                "a backend name must not be empty: it is matched against route \
                                 metadata, cluster metadata or the cluster name",
                            );
                        }
                        if let Some(s) = self.strategy(v, &path) {
                            if provider_name_missing(&s, v) {
                                self.missing_provider.push(Some(name.clone()));
                            }
                            backends.insert(name.clone(), s);
                        }
                    }
                }
                other => self.wrong_type(&obj.field("backends"), "an object", other),
            }
        }
        Some(OutgoingAuth {
            default: default.flatten(),
            backends,
        })
    }

    fn strategy(&mut self, v: &Value, path: &str) -> Option<Strategy> {
        const SUB_OBJECTS: [(&str, &str); 3] = [
            ("header_injection", "headerInjection"),
            ("upstream_inject", "upstreamInject"),
            ("token_exchange", "tokenExchange"),
        ];
        let obj = self.object(
            v,
            path,
            &["type", "headerInjection", "upstreamInject", "tokenExchange"],
        )?;
        let kind = self.required_string(&obj, "type", "the strategy type")?;
        if !STRATEGY_TYPES.contains(&kind) {
            self.problems
                .report_with(Rule::S05, &obj.field("type"), || {
                    format!(
                        "unknown strategy type {}{}; valid types are: {}",
                        quote(kind),
                        did_you_mean(kind, &STRATEGY_TYPES),
                        STRATEGY_TYPES.join(", ")
                    )
                });
            return None;
        }
        // Each sub-object is set if and only if its type is selected (as the CRD's CEL rules say).
        let mut ok = true;
        for (ty, field) in SUB_OBJECTS {
            let present = obj.get(field).is_some();
            if present != (kind == ty) {
                ok = false;
                let msg = if kind == "unauthenticated" {
                    format!("no configuration must be set when type is 'unauthenticated'; remove {field}")
                } else {
                    format!("{field} configuration must be set if and only if type is '{ty}'")
                };
                self.problems.report(Rule::S06, &obj.field(field), msg);
            }
        }
        if !ok {
            return None;
        }
        let sub = |field: &str| obj.get(field).unwrap_or(&Value::Null);
        match kind {
            "header_injection" => self
                .header_injection(sub("headerInjection"), &obj.field("headerInjection"))
                .map(Strategy::HeaderInjection),
            "upstream_inject" => self
                .upstream_inject(sub("upstreamInject"), &obj.field("upstreamInject"))
                .map(Strategy::UpstreamInject),
            "token_exchange" => self
                .token_exchange(sub("tokenExchange"), &obj.field("tokenExchange"))
                .map(Strategy::TokenExchange),
            _ => Some(Strategy::Unauthenticated),
        }
    }

    fn header_injection(&mut self, v: &Value, path: &str) -> Option<HeaderInjection> {
        let obj = self.object(v, path, &["headerName", "headerValue", "headerValueEnv"])?;
        let name = self.required_string(&obj, "headerName", "the header to set")?;
        let name_ok = self.header_name(name, &obj.field("headerName"));
        let value = self.secret(&obj, "headerValue", "headerValueEnv", true);
        let value = value?;
        if let Some(reason) = http::header_value_problem(value.value.expose()) {
            let what = match &value.env {
                Some(var) => format!("the value of environment variable {var}"),
                None => "headerValue".to_owned(),
            };
            let field = if value.env.is_some() {
                "headerValueEnv"
            } else {
                "headerValue"
            };
            self.problems.report(
                Rule::S10,
                &obj.field(field),
                format!("{what} {reason}; a header value cannot carry it"),
            );
            return None;
        }
        name_ok.then(|| HeaderInjection {
            header_name: name.to_ascii_lowercase(),
            value,
        })
    }

    fn header_name(&mut self, name: &str, path: &str) -> bool {
        if !http::is_token(name) {
            self.problems.report(
                Rule::S09,
                path,
                format!(
                    "header name {} is not a valid HTTP field name (letters, digits and \
                     !#$%&'*+-.^_`|~ only)",
                    quote(name)
                ),
            );
            return false;
        }
        if http::is_reserved_header(name) {
            self.problems.report(
                Rule::S09,
                path,
                format!(
                    "header {} is managed by Envoy (connection or framing) and cannot be injected",
                    quote(name)
                ),
            );
            return false;
        }
        true
    }

    /// Exactly one of an inline field and an `...Env` field; the value is resolved now.
    fn secret(
        &mut self,
        obj: &Obj<'_>,
        inline_key: &str,
        env_key: &str,
        required: bool,
    ) -> Option<SecretSource> {
        let inline = self.string(obj, inline_key);
        let env_name = self.string(obj, env_key);
        match (inline, env_name) {
            (Some(_), Some(_)) => {
                self.problems.report(
                    Rule::S04,
                    &obj.path,
                    format!("only one of {inline_key} or {env_key} must be set"),
                );
                None
            }
            (Some(value), None) => {
                if value.is_empty() {
                    self.problems.report(
                        Rule::S04,
                        &obj.field(inline_key),
                        format!("{inline_key} must not be empty"),
                    );
                    return None;
                }
                Some(SecretSource {
                    env: None,
                    value: Secret::new(value.to_owned()),
                })
            }
            (None, Some(var)) => {
                let path = obj.field(env_key);
                if !is_env_name(var) {
                    self.problems.report(
                        Rule::S11,
                        &path,
                        format!("{} is not a valid environment variable name", quote(var)),
                    );
                    return None;
                }
                match (self.env)(var) {
                    Some(value) if !value.is_empty() => Some(SecretSource {
                        env: Some(var.to_owned()),
                        value: Secret::new(value),
                    }),
                    _ => {
                        self.problems.report(
                            Rule::S11,
                            &path,
                            format!(
                                "environment variable {var} not set or empty in the VM; set it \
                                 in Envoy's environment and list it in \
                                 vm_config.environment_variables.host_env_keys"
                            ),
                        );
                        None
                    }
                }
            }
            (None, None) => {
                if required && obj.get(inline_key).is_none() && obj.get(env_key).is_none() {
                    self.problems.report(
                        Rule::S04,
                        &obj.path,
                        format!("either {inline_key} or {env_key} must be set"),
                    );
                }
                None
            }
        }
    }

    fn upstream_inject(&mut self, v: &Value, path: &str) -> Option<UpstreamInject> {
        let obj = self.object(v, path, &["providerName"])?;
        // Missing and blank are the same mistake; V-06 reports both with ToolHive's wording.
        let provider_name = match obj.get("providerName") {
            Some(_) => self.string(&obj, "providerName")?.to_owned(),
            None => String::new(),
        };
        Some(UpstreamInject { provider_name })
    }

    fn token_exchange(&mut self, v: &Value, path: &str) -> Option<TokenExchange> {
        let obj = self.object(
            v,
            path,
            &[
                "tokenUrl",
                "cluster",
                "clientId",
                "clientSecret",
                "clientSecretEnv",
                "audience",
                "scopes",
                "subjectTokenType",
                "subjectProviderName",
                "timeoutMs",
            ],
        )?;
        let mut ok = true;
        let token_url = self
            .required_string(&obj, "tokenUrl", "the STS token endpoint")
            .and_then(|url| match parse_token_url(url) {
                Ok(u) => Some(u),
                Err(why) => {
                    self.problems.report(Rule::S13, &obj.field("tokenUrl"), why);
                    None
                }
            });
        // vMCP has no `cluster`: a pasted block names none, and the tokenUrl's host is the name
        // (as `outgoing-auth convert` names it); a warning says which cluster Envoy must define.
        let cluster = match (obj.get("cluster"), &token_url) {
            (None, Some(url)) => match default_sts_cluster(&url.url) {
                Some(name) => {
                    self.problems
                        .report_with(Rule::W02, &obj.field("cluster"), || {
                            format!(
                            "cluster is not set, so the token exchange calls the Envoy cluster {} \
                             (the tokenUrl's host): define a cluster of that name that reaches \
                             the STS, or set cluster",
                            quote(&name)
                        )
                        });
                    Some(name)
                }
                None => {
                    self.problems.report(
                        Rule::S04,
                        &obj.field("cluster"),
                        "cluster is required: the Envoy cluster that reaches the STS (the \
                         tokenUrl has no host to name it after)",
                    );
                    None
                }
            },
            (None, None) => None,
            (Some(_), _) => self
                .required_string(
                    &obj,
                    "cluster",
                    "the Envoy cluster that reaches the STS (tokenUrl's host)",
                )
                .map(str::to_owned),
        };
        let client_id = self.string(&obj, "clientId").filter(|s| !s.is_empty());
        let has_secret_field =
            obj.get("clientSecret").is_some() || obj.get("clientSecretEnv").is_some();
        let client_secret = if has_secret_field {
            let secret = self.secret(&obj, "clientSecret", "clientSecretEnv", false);
            if secret.is_none() {
                ok = false;
            }
            if client_id.is_none() {
                ok = false;
                let field = if obj.get("clientSecret").is_some() {
                    "clientSecret"
                } else {
                    "clientSecretEnv"
                };
                self.problems.report(
                    Rule::S13,
                    &obj.field(field),
                    format!("{field} cannot be provided without clientId"),
                );
            }
            if secret.as_ref().is_some_and(|s| s.env.is_none()) {
                self.problems.report(
                    Rule::W01,
                    &obj.field("clientSecret"),
                    "the client secret is written inline in the configuration; prefer \
                     clientSecretEnv so the secret stays out of Envoy's config and config_dump",
                );
            }
            secret
        } else {
            None
        };
        let audience = self.string(&obj, "audience").map(str::to_owned);
        let scopes = self.string_array(&obj, "scopes").unwrap_or_default();
        for (i, scope) in scopes.iter().enumerate() {
            if !http::is_scope_token(scope) {
                ok = false;
                self.problems.report(
                    Rule::S13,
                    &format!("{}[{i}]", obj.field("scopes")),
                    format!(
                        "scope {} is not a valid OAuth scope token (no spaces, quotes or \
                         backslashes; not empty)",
                        quote(scope)
                    ),
                );
            }
        }
        let subject_token_type = match self.string(&obj, "subjectTokenType") {
            None | Some("") => Some(SubjectTokenType::AccessToken),
            Some(s) => {
                let parsed = SubjectTokenType::parse(s);
                if parsed.is_none() {
                    self.problems.report(
                        Rule::S13,
                        &obj.field("subjectTokenType"),
                        format!(
                            "invalid subjectTokenType {}: must be one of: access_token, \
                             id_token, jwt (or their urn:ietf:params:oauth:token-type: forms)",
                            quote(s)
                        ),
                    );
                }
                parsed
            }
        };
        let subject_provider_name = self.string(&obj, "subjectProviderName").map(str::to_owned);
        let timeout_ms = match obj.get("timeoutMs") {
            Some(_) => self.integer(&obj, "timeoutMs", 1, MAX_EXCHANGE_TIMEOUT_MS),
            None => Some(DEFAULT_EXCHANGE_TIMEOUT_MS),
        };
        if !ok {
            return None;
        }
        Some(TokenExchange {
            token_url: token_url?,
            cluster: cluster?,
            client_id: client_id.map(str::to_owned),
            client_secret,
            audience,
            scopes,
            subject_token_type: subject_token_type?,
            subject_provider_name,
            timeout_ms: timeout_ms?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RemovalKind {
    Header,
    Cookie,
}

impl RemovalKind {
    fn what(self) -> &'static str {
        match self {
            RemovalKind::Header => "header",
            RemovalKind::Cookie => "cookie",
        }
    }
}

/// An upstream_inject strategy decoded from JSON that has no `providerName` field.
fn provider_name_missing(strategy: &Strategy, json: &Value) -> bool {
    matches!(strategy, Strategy::UpstreamInject(_))
        && json
            .get("upstreamInject")
            .and_then(|u| u.get("providerName"))
            .is_none_or(Value::is_null)
}

/// The host and port of an absolute `http`/`https` URL: the host lower-cased, without user
/// information or IPv6 brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlHost<'a> {
    pub host: String,
    /// The port written in the URL, if any.
    pub port: Option<&'a str>,
    /// The scheme's port: `443` or `80`.
    pub default_port: &'static str,
}

/// Splits an absolute `http`/`https` URL's authority; `None` for another scheme or no host.
pub fn url_host(url: &str) -> Option<UrlHost<'_>> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => "443",
        "http" => "80",
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some(UrlHost {
        host: host.to_ascii_lowercase(),
        port,
        default_port,
    })
}

/// The Envoy cluster a token exchange calls when the config names none: the `tokenUrl`'s host
/// (`https://sts.example.com/token` → `sts.example.com`). `outgoing-auth convert` names it the same.
pub fn default_sts_cluster(token_url: &str) -> Option<String> {
    url_host(token_url).map(|h| h.host)
}

/// ToolHive's upstream name rule: `^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`.
pub fn is_upstream_name(name: &str) -> bool {
    let b = name.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            alnum(first) && alnum(last) && b.iter().all(|c| alnum(c) || *c == b'-')
        }
        _ => false,
    }
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Accepts an absolute `http`/`https` URL and splits it for an Envoy HTTP call.
fn parse_token_url(url: &str) -> Result<TokenUrl, String> {
    // User information may hold a password: say so without echoing the URL.
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "tokenUrl must not carry user information (user:password@host); the URL is not \
             shown, as it may hold a password: authenticate with clientId and clientSecretEnv"
                .to_owned(),
        );
    }
    let bad = |why: &str| format!("tokenUrl {} {why}", quote(url));
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| bad("must be an absolute http:// or https:// URL"))?;
    if url.bytes().any(|c| c <= b' ' || c == 0x7f) {
        return Err(bad("must not contain spaces or control characters"));
    }
    let rest = rest.split('#').next().unwrap_or_default();
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (
            rest.get(..i).unwrap_or_default(),
            rest.get(i..).unwrap_or_default(),
        ),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("must name a host (and no user information)"));
    }
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    Ok(TokenUrl {
        url: url.to_owned(),
        authority: authority.to_owned(),
        path,
    })
}
