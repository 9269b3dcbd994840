//! Rendering a conversion as what a deployment consumes: the filter JSON, an Envoy `http_filters`
//! entry, an Istio `WasmPlugin` or an Envoy Gateway `EnvoyExtensionPolicy`. With `--native` the
//! Envoy and Envoy Gateway outputs load the dynamic module (`liboutgoing_auth.so`) instead of the
//! proxy-wasm module, with the same filter JSON.
//!
//! The YAML formats start with comments that say which Secret key each environment variable must
//! carry and which Envoy clusters the token exchanges call; for the JSON format the CLI prints the
//! same as notes on stderr (see [`notes`]).

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use super::convert::{to_json, Conversion, FilterConfig, McpRouter};
use super::diag::{quote, Diagnostic};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Filter,
    Envoy,
    Istio,
    EnvoyGateway,
}

impl Format {
    pub const NAMES: [&'static str; 4] = ["filter", "envoy", "istio", "envoy-gateway"];

    pub fn name(self) -> &'static str {
        match self {
            Format::Filter => "filter",
            Format::Envoy => "envoy",
            Format::Istio => "istio",
            Format::EnvoyGateway => "envoy-gateway",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "filter" => Some(Format::Filter),
            "envoy" => Some(Format::Envoy),
            "istio" => Some(Format::Istio),
            "envoy-gateway" => Some(Format::EnvoyGateway),
            _ => None,
        }
    }
}

pub const DEFAULT_NAME: &str = "outgoing-auth";
pub const DEFAULT_ENVOY_WASM: &str = "/etc/envoy/outgoing_auth.wasm";
pub const ISTIO_PHASES: [&str; 4] = ["AUTHN", "AUTHZ", "STATS", "UNSPECIFIED_PHASE"];
/// The Istio phase when `--phase` is not given: Istio inserts a STATS plugin after its
/// authentication (RequestAuthentication) and authorization (AuthorizationPolicy, CUSTOM
/// ext_authz included) filters; see [`istio_phase_comment`].
pub const ISTIO_DEFAULT_PHASE: &str = "STATS";

/// The rule for `--wasm`, one line per output format and one for what is never taken. It is
/// printed as is in `outgoing-auth convert --help` and stated in the README; [`module_location`]
/// enforces it.
pub const WASM_RULE: [&str; 4] = [
    "envoy: a file path or file:///PATH",
    "istio: oci://, https:// or file:///PATH; required",
    "envoy-gateway: oci:// or https://; required",
    "never http://: anyone on the path could swap the module",
];

/// Where a module is, as `--wasm` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// A plain path (envoy only).
    Path,
    /// `file:///PATH`.
    File,
    /// `oci://REGISTRY/IMAGE[:TAG|@DIGEST]`.
    Oci,
    /// `https://HOST/PATH`.
    Https,
}

impl ModuleKind {
    /// The kinds each output format takes (the code behind [`WASM_RULE`]).
    pub fn accepted(format: Format) -> &'static [ModuleKind] {
        match format {
            Format::Filter => &[],
            Format::Envoy => &[ModuleKind::Path, ModuleKind::File],
            Format::Istio => &[ModuleKind::Oci, ModuleKind::Https, ModuleKind::File],
            Format::EnvoyGateway => &[ModuleKind::Oci, ModuleKind::Https],
        }
    }
}

/// Classifies `--wasm` and checks it against [`WASM_RULE`] for `format`; `Ok(None)` when it was
/// not given and the format has a default (envoy) or needs none (filter).
pub fn module_location(
    format: Format,
    wasm: Option<&str>,
) -> Result<Option<(ModuleKind, String)>, Diagnostic> {
    let rule = match format {
        Format::Filter => return Ok(None),
        Format::Envoy => WASM_RULE[0],
        Format::Istio => WASM_RULE[1],
        Format::EnvoyGateway => WASM_RULE[2],
    };
    let fail = |why: String| Err(usage(&format!("{why} (--wasm, {rule}; {})", WASM_RULE[3])));
    let Some(w) = wasm else {
        if format == Format::Envoy {
            return Ok(None);
        }
        return fail(format!("--output {} needs --wasm", format.name()));
    };
    let (kind, rest) = if let Some(r) = w.strip_prefix("file://") {
        if !r.starts_with('/') {
            return fail(format!(
                "--wasm {}: a file:// URL needs an absolute path (file:///PATH)",
                quote(w)
            ));
        }
        (ModuleKind::File, r)
    } else if let Some(r) = w.strip_prefix("oci://") {
        (ModuleKind::Oci, r)
    } else if let Some(r) = w.strip_prefix("https://") {
        (ModuleKind::Https, r)
    } else if w.starts_with("http://") {
        return fail(format!("--wasm {}: plain http:// is refused", quote(w)));
    } else if w.contains("://") {
        return fail(format!("--wasm {}: unknown scheme", quote(w)));
    } else {
        (ModuleKind::Path, w)
    };
    if rest.is_empty() {
        return fail(format!("--wasm {}: nothing after the scheme", quote(w)));
    }
    if !ModuleKind::accepted(format).contains(&kind) {
        return fail(format!(
            "--wasm {}: --output {} does not take {}",
            quote(w),
            format.name(),
            match kind {
                ModuleKind::Path => "a plain path",
                ModuleKind::File => "a file:// URL",
                ModuleKind::Oci => "an oci:// image",
                ModuleKind::Https => "an https:// URL",
            }
        ));
    }
    Ok(Some((kind, w.to_owned())))
}

/// `dynamic_module_config.name` of the `--native` Envoy entry: Envoy loads
/// `lib<name>.so` from the directory in `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
pub const NATIVE_MODULE_NAME: &str = "outgoing_auth";
/// The file Envoy looks for, `lib` + [`NATIVE_MODULE_NAME`] + `.so`.
pub const NATIVE_MODULE_FILE: &str = "liboutgoing_auth.so";
/// `filter_name` (Envoy) / `filterName` (Envoy Gateway): the filter inside the module.
pub const NATIVE_FILTER_NAME: &str = "outgoing_auth";
/// The name under which the EnvoyProxy registers the module and the EnvoyExtensionPolicy
/// references it (Envoy Gateway's pattern `^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$` has no `_`).
pub const GATEWAY_MODULE_NAME: &str = "outgoing-auth";
/// The Envoy minor version the dynamic module is built for (its ABI is Envoy's own).
pub const NATIVE_ENVOY_VERSION: &str = "1.40";

/// `--native` with `--wasm`.
pub const NATIVE_WITH_WASM: &str = "--wasm and --native exclude each other: --wasm says where the \
     proxy-wasm module is, --native loads the dynamic module liboutgoing_auth.so instead (drop one)";
/// `--native` with `-o istio`.
pub const NATIVE_NOT_FOR_ISTIO: &str = "--native is not for --output istio: Istio's WasmPlugin \
     loads proxy-wasm modules only; use the wasm module there (-o istio --wasm LOCATION)";
/// `--native` with `-o filter` (the default).
pub const NATIVE_NOT_FOR_FILTER: &str = "--native is for --output envoy or envoy-gateway: the \
     filter's JSON config (-o filter) is the same for the wasm and the native module";
/// `--module` anywhere but `-o envoy-gateway --native`.
pub const MODULE_NEEDS_GATEWAY_NATIVE: &str = "--module is for --output envoy-gateway --native \
     (the liboutgoing_auth.so the EnvoyProxy registers); -o envoy --native names the module, and \
     Envoy finds liboutgoing_auth.so in the directory ENVOY_DYNAMIC_MODULES_SEARCH_PATH names";
/// The rule for `--module`, as `outgoing-auth convert --help` prints it; [`native_source`]
/// enforces it.
pub const MODULE_RULE: &str =
    "an absolute path or file:///PATH in the proxy container, or https:// with --sha256";

/// Checks `--native` and `--module` against the other output flags; the error is a usage
/// message. Where the module is (`--module` itself) is checked by [`native_source`].
pub fn check_native(opts: &Options) -> Result<(), &'static str> {
    if !opts.native {
        return match opts.module {
            Some(_) => Err(MODULE_NEEDS_GATEWAY_NATIVE),
            None => Ok(()),
        };
    }
    match opts.format {
        Format::Filter => Err(NATIVE_NOT_FOR_FILTER),
        Format::Istio => Err(NATIVE_NOT_FOR_ISTIO),
        _ if opts.wasm.is_some() => Err(NATIVE_WITH_WASM),
        Format::Envoy if opts.module.is_some() => Err(MODULE_NEEDS_GATEWAY_NATIVE),
        Format::Envoy | Format::EnvoyGateway => Ok(()),
    }
}

/// Where Envoy Gateway's EnvoyProxy loads the dynamic module from (`DynamicModuleSource`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NativeSource {
    /// `type: Local`, `local.path`: an absolute path in the proxy container.
    Local(String),
    /// `type: Remote`, `remote.url` and `remote.sha256` (required there).
    Remote { url: String, sha256: String },
}

/// Classifies `--module` (with `--sha256`) for `-o envoy-gateway --native` by [`MODULE_RULE`].
pub fn native_source(
    module: Option<&str>,
    sha256: Option<&str>,
) -> Result<NativeSource, Diagnostic> {
    let fail = |why: String| {
        Err(usage(&format!(
            "{why} (--module, envoy-gateway --native: {MODULE_RULE}; never http://)"
        )))
    };
    let Some(m) = module else {
        return fail("--output envoy-gateway --native needs --module".to_owned());
    };
    if let Some(rest) = m.strip_prefix("https://") {
        if rest.is_empty() {
            return fail(format!("--module {}: nothing after the scheme", quote(m)));
        }
        let Some(sha) = sha256 else {
            return fail(format!(
                "--module {}: a remote module needs --sha256 (the EnvoyProxy's remote source \
                 requires it, and Envoy checks the download against it)",
                quote(m)
            ));
        };
        return Ok(NativeSource::Remote {
            url: m.to_owned(),
            sha256: sha.to_owned(),
        });
    }
    let path = if let Some(p) = m.strip_prefix("file://") {
        p
    } else if m.starts_with("http://") {
        return fail(format!("--module {}: plain http:// is refused", quote(m)));
    } else if let Some((scheme, _)) = m.split_once("://") {
        return fail(format!(
            "--module {}: Envoy Gateway loads a dynamic module from a path or an https:// URL, \
             not {scheme}://",
            quote(m)
        ));
    } else {
        m
    };
    if !path.starts_with('/') {
        return fail(format!(
            "--module {}: the EnvoyProxy's local source needs an absolute path",
            quote(m)
        ));
    }
    if sha256.is_some() {
        return fail(format!(
            "--sha256 is for an https:// --module: the EnvoyProxy's local source ({}) has no \
             digest",
            quote(m)
        ));
    }
    Ok(NativeSource::Local(path.to_owned()))
}

/// The output flags.
#[derive(Debug, Clone)]
pub struct Options {
    pub format: Format,
    /// `--native`: load the Envoy dynamic module instead of the proxy-wasm module (envoy and
    /// envoy-gateway only; see [`check_native`]).
    pub native: bool,
    /// `--module`: where the dynamic module is, for envoy-gateway `--native` (see
    /// [`native_source`]).
    pub module: Option<String>,
    /// `metadata.name` of the Istio / Envoy Gateway resource.
    pub name: String,
    pub namespace: Option<String>,
    /// Where the module is: a file path (envoy), a URL (istio), an OCI image or HTTP URL
    /// (envoy-gateway).
    pub wasm: Option<String>,
    pub sha256: Option<String>,
    /// Istio `selector.matchLabels`.
    pub selector: Vec<(String, String)>,
    /// Istio `phase`, when `--phase` gave one (else [`ISTIO_DEFAULT_PHASE`]).
    pub phase: Option<String>,
    /// Envoy Gateway `targetRefs` as (kind, name).
    pub target_refs: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            format: Format::Filter,
            native: false,
            module: None,
            name: DEFAULT_NAME.to_owned(),
            namespace: None,
            wasm: None,
            sha256: None,
            selector: Vec::new(),
            phase: None,
            target_refs: Vec::new(),
        }
    }
}

/// A YAML tree that keeps the key order it was built in (serde_json's map sorts keys).
enum Node<'a> {
    Map(Vec<(&'a str, Node<'a>)>),
    Seq(Vec<Node<'a>>),
    Str(String),
    Bool(bool),
    Config(&'a FilterConfig),
}

impl Serialize for Node<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Map(entries) => {
                let mut m = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            Node::Seq(items) => {
                let mut q = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    q.serialize_element(i)?;
                }
                q.end()
            }
            Node::Str(v) => s.serialize_str(v),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Config(c) => c.serialize(s),
        }
    }
}

/// `node` as YAML; a long one-line string stays one plain (or quoted) scalar rather than a
/// folded block (`>-`), so that type URLs and the like read as they are written.
fn yaml(node: &Node) -> Result<String, Diagnostic> {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.folded_wrap_chars = usize::MAX;
    serde_saphyr::to_string_with_options(node, options).map_err(|e| usage(&e.to_string()))
}

fn string(s: impl Into<String>) -> Node<'static> {
    Node::Str(s.into())
}

fn metadata<'a>(opts: &'a Options) -> Node<'a> {
    let mut m = vec![("name", string(opts.name.clone()))];
    if let Some(ns) = &opts.namespace {
        m.push(("namespace", string(ns.clone())));
    }
    Node::Map(m)
}

/// The usage error of `--mcp-router` with another output format than envoy.
pub const MCP_ROUTER_NEEDS_ENVOY: &str = "--mcp-router is for --output envoy: `-o envoy \
     --mcp-router` prints the two http_filters entries of an Envoy config with mcp_router (the \
     listener's issuing instance and the backend clusters' accepting one)";

const STS_CLUSTER_ADVICE: &str =
    "Define each under static_resources.clusters (with TLS for https).";

const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// How the `-o envoy` entries load the module.
#[derive(Debug, Clone, Copy)]
enum Loader<'f> {
    /// The proxy-wasm module at this path (`envoy.filters.http.wasm`).
    Wasm(&'f str),
    /// The dynamic module, found through `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` (`--native`).
    Native,
}

/// An `http_filters` entry that loads the module with `configuration` (the filter's JSON); the
/// wasm entry lists `env_keys` in `host_env_keys`, the native one has no such list (a dynamic
/// module reads Envoy's own environment).
fn filter_entry<'a>(
    loader: Loader<'_>,
    env_keys: Vec<Node<'a>>,
    configuration: String,
) -> Node<'a> {
    match loader {
        Loader::Wasm(filename) => envoy_entry(filename, env_keys, configuration),
        Loader::Native => native_entry(configuration),
    }
}

/// The dynamic module's `http_filters` entry (Envoy 1.40's
/// `envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter`): the module by name,
/// the filter JSON as a StringValue, which Envoy passes to the module as is.
fn native_entry<'a>(configuration: String) -> Node<'a> {
    Node::Map(vec![
        ("name", string(NATIVE_FILTER_NAME)),
        (
            "typed_config",
            Node::Map(vec![
                (
                    "@type",
                    string(
                        "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.\
                         DynamicModuleFilter",
                    ),
                ),
                (
                    "dynamic_module_config",
                    Node::Map(vec![("name", string(NATIVE_MODULE_NAME))]),
                ),
                ("filter_name", string(NATIVE_FILTER_NAME)),
                (
                    "filter_config",
                    Node::Map(vec![
                        ("@type", string(STRING_VALUE)),
                        ("value", string(configuration)),
                    ]),
                ),
            ]),
        ),
    ])
}

/// An `http_filters` entry that loads the module with `configuration` (the filter's JSON).
fn envoy_entry<'a>(filename: &str, env_keys: Vec<Node<'a>>, configuration: String) -> Node<'a> {
    let mut vm = vec![
        ("vm_id", string(VM_ID)),
        ("runtime", string("envoy.wasm.runtime.v8")),
        (
            "code",
            Node::Map(vec![(
                "local",
                Node::Map(vec![("filename", string(filename))]),
            )]),
        ),
    ];
    if !env_keys.is_empty() {
        vm.push((
            "environment_variables",
            Node::Map(vec![("host_env_keys", Node::Seq(env_keys))]),
        ));
    }
    Node::Map(vec![
        ("name", string("envoy.filters.http.wasm")),
        (
            "typed_config",
            Node::Map(vec![
                (
                    "@type",
                    string("type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"),
                ),
                (
                    "config",
                    Node::Map(vec![
                        ("name", string("outgoing_auth")),
                        ("root_id", string("")),
                        ("vm_config", Node::Map(vm)),
                        (
                            "configuration",
                            Node::Map(vec![
                                ("@type", string(STRING_VALUE)),
                                ("value", string(configuration)),
                            ]),
                        ),
                        ("failure_policy", string("FAIL_CLOSED")),
                    ]),
                ),
            ]),
        ),
    ])
}

/// The `vm_config.vm_id` of every entry `-o envoy` prints: instances of one vm_id share data,
/// which is how the mcp_router pair shares its sealing key.
pub const VM_ID: &str = "outgoing_auth";

/// `-o envoy --mcp-router`: the comment header, then two YAML documents, each an `http_filters`
/// list of one entry (as `-o envoy` prints one) under a comment that says where it goes: the
/// issuing instance, then the accepting one.
fn mcp_router_yaml(
    conv: &Conversion,
    pair: &McpRouter,
    loader: Loader<'_>,
) -> Result<String, Diagnostic> {
    let env_keys = conv.secrets.iter().map(|s| string(s.env.clone())).collect();
    let issuing = Node::Seq(vec![filter_entry(
        loader,
        Vec::new(),
        to_json(&pair.issuing),
    )]);
    let accepting = Node::Seq(vec![filter_entry(
        loader,
        env_keys,
        to_json(&pair.accepting),
    )]);
    let native = matches!(loader, Loader::Native);
    let how = if native {
        [
            "Only the accepting instance reads them, from Envoy's own environment (a dynamic",
            "module has no host_env_keys list). Envoy's process needs them in its environment;",
            "in a Pod, the Envoy container's env:",
        ]
    } else {
        [
            "Only the accepting instance reads them: its vm_config lists them in",
            "environment_variables.host_env_keys. Envoy's process needs them in its environment;",
            "in a Pod, the Envoy container's env:",
        ]
    }
    .map(str::to_owned);
    let mut extra = Vec::new();
    if native {
        extra.extend(native_envoy_comment());
        extra.push(String::new());
    }
    extra.extend(mcp_router_comment(pair, native));
    let header = header(conv, &how, &[STS_CLUSTER_ADVICE.to_owned()], &extra);
    let header_value = crate::core::config::DEFAULT_HANDOFF_HEADER;
    let issuing_comment = comment_block(&[
        "1. The issuing instance: in the listener's http_filters, after the auth filter".to_owned(),
        "   (ext_authz, ...) and envoy.filters.http.mcp, before envoy.filters.http.mcp_router."
            .to_owned(),
        format!(
            "   It seals {} into the {header_value} header.",
            match (
                pair.issuing.auth_server.is_some(),
                pair.issuing.handoff.client_bearer
            ) {
                (true, true) => "the user's upstream tokens and the client's bearer token",
                (false, _) => "the client's bearer token",
                (true, false) => "the user's upstream tokens",
            }
        ),
    ]);
    let accepting_comment = comment_block(&[
        "2. The accepting instance: in every backend cluster's".to_owned(),
        "   typed_extension_protocol_options.envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
            .to_owned(),
        "   http_filters, before envoy.filters.http.upstream_codec; one config for every cluster."
            .to_owned(),
        "   It opens the hand-off and applies the strategy of the backend its cluster names."
            .to_owned(),
    ]);
    Ok(format!(
        "{header}---\n{issuing_comment}{}---\n{accepting_comment}{}",
        yaml(&issuing)?,
        yaml(&accepting)?
    ))
}

/// What the `-o envoy --native` header says about the module: how Envoy finds it, and which
/// Envoy it must be built for.
fn native_envoy_comment() -> Vec<String> {
    vec![
        format!(
            "The dynamic module: Envoy loads {NATIVE_MODULE_FILE} (dynamic_module_config.name {NATIVE_MODULE_NAME})"
        ),
        "from the directory its environment variable ENVOY_DYNAMIC_MODULES_SEARCH_PATH names (unset:"
            .to_owned(),
        "Envoy's working directory), e.g. ENVOY_DYNAMIC_MODULES_SEARCH_PATH=/etc/envoy/modules for"
            .to_owned(),
        format!("/etc/envoy/modules/{NATIVE_MODULE_FILE}. Build the module for this Envoy's minor version,"),
        format!("{NATIVE_ENVOY_VERSION}: Envoy checks the ABI version the module was built against."),
    ]
}

/// What the header says about the mcp_router layout: the shared vm_id, the cluster names, why
/// `clientBearer`, `header_forwarding` (with a snippet) and `lazy_initialization`.
fn mcp_router_comment(pair: &McpRouter, native: bool) -> Vec<String> {
    let header = crate::core::config::DEFAULT_HANDOFF_HEADER;
    let mut out = vec![
        "Behind envoy.filters.http.mcp_router (README \"Behind mcp_router\"; envoy/mcp-router.yaml"
            .to_owned(),
    ];
    if native {
        out.extend(
            [
                "is a complete example, with the wasm module): two instances of the module, the two",
                "YAML documents below. Envoy loads liboutgoing_auth.so once per process, so both",
                "share the key that seals the hand-off (random, made at startup); or give both",
                "handoff.keyEnv (the same secret of at least 32 bytes, in Envoy's environment).",
            ]
            .map(str::to_owned),
        );
    } else {
        out.extend([
            "is a complete example): two instances of the module, the two YAML documents below."
                .to_owned(),
            format!(
                "Both have vm_config.vm_id {VM_ID}, so they share the key that seals the hand-off"
            ),
            "(random, made at startup): keep the vm_ids equal, or give both handoff.keyEnv (the same"
                .to_owned(),
            "secret of at least 32 bytes, listed in host_env_keys).".to_owned(),
        ]);
    }
    let backends: Vec<&str> = pair
        .accepting
        .outgoing_auth
        .backends
        .keys()
        .map(String::as_str)
        .collect();
    let others = if pair.accepting.outgoing_auth.default.is_some() {
        "other clusters get the default strategy"
    } else {
        "other clusters get no strategy"
    };
    out.push(
        "The accepting instance names the backend by its cluster (backendNameSources: clusterName):"
            .to_owned(),
    );
    if backends.is_empty() {
        out.push("no backend is named: every cluster gets the default strategy.".to_owned());
    } else {
        out.push(format!(
            "name the backend clusters {} ({others}).",
            backends.join(", ")
        ));
    }
    if !pair.client_bearer_for.is_empty() {
        out.push(format!(
            "clientBearer: true: the token exchange of {} takes the client's own bearer token as",
            pair.client_bearer_for.join(", ")
        ));
        out.push(
            "its subject, and mcp_router does not forward it: the issuing instance hands it off too."
                .to_owned(),
        );
    }
    let cluster = backends.first().copied().unwrap_or("BACKEND_CLUSTER");
    out.push(format!(
        "Every mcp_router server's header_forwarding must allow {header} (mcp_router"
    ));
    out.push("forwards no client header it does not list), e.g.:".to_owned());
    out.push("  servers:".to_owned());
    out.push(format!("  - name: {cluster}"));
    out.push(format!(
        "    mcp_cluster: {{cluster: {cluster}, path: /mcp}}"
    ));
    out.push(format!(
        "    header_forwarding: {{allowed_headers: {{patterns: [{{exact: {header}}}]}}}}"
    ));
    out.push("Leave mcp_router's lazy_initialization off on Envoy 1.40: with it on,".to_owned());
    out.push("tools/list never answers.".to_owned());
    out
}

/// Renders the conversion; an error is a usage problem of the output flags.
pub fn render(conv: &Conversion, opts: &Options) -> Result<String, Diagnostic> {
    if conv.mcp_router.is_some() && opts.format != Format::Envoy {
        return Err(usage(MCP_ROUTER_NEEDS_ENVOY));
    }
    check_native(opts).map_err(usage)?;
    let env_keys: Vec<Node> = conv.secrets.iter().map(|s| string(s.env.clone())).collect();
    let (doc, how_to_set_env, cluster_advice) = match opts.format {
        Format::Filter => return Ok(format!("{}\n", to_json(&conv.config))),
        Format::Envoy if opts.native => {
            if let Some(pair) = &conv.mcp_router {
                return mcp_router_yaml(conv, pair, Loader::Native);
            }
            (
                Node::Seq(vec![native_entry(to_json(&conv.config))]),
                vec![
                    "The module reads them from Envoy's own environment (a dynamic module has no"
                        .to_owned(),
                    "host_env_keys list, unlike the wasm entry). In a Pod, the Envoy container's env:"
                        .to_owned(),
                ],
                vec![STS_CLUSTER_ADVICE.to_owned()],
            )
        }
        Format::EnvoyGateway if opts.native => return gateway_native_yaml(conv, opts),
        Format::Envoy => {
            let location = module_location(Format::Envoy, opts.wasm.as_deref())?;
            let filename = match &location {
                None => DEFAULT_ENVOY_WASM,
                Some((_, w)) => w.strip_prefix("file://").unwrap_or(w),
            };
            if let Some(pair) = &conv.mcp_router {
                return mcp_router_yaml(conv, pair, Loader::Wasm(filename));
            }
            (
                Node::Seq(vec![envoy_entry(filename, env_keys, to_json(&conv.config))]),
                vec![
                    "Envoy's process needs them in its environment; vm_config lists them in"
                        .to_owned(),
                    "environment_variables.host_env_keys. In a Pod, the Envoy container's env:"
                        .to_owned(),
                ],
                vec![STS_CLUSTER_ADVICE.to_owned()],
            )
        }
        Format::Istio => {
            let Some((_, url)) = module_location(Format::Istio, opts.wasm.as_deref())? else {
                return Err(usage("--output istio needs --wasm"));
            };
            let mut spec = Vec::new();
            if !opts.selector.is_empty() {
                spec.push((
                    "selector",
                    Node::Map(vec![(
                        "matchLabels",
                        Node::Map(
                            opts.selector
                                .iter()
                                .map(|(k, v)| (k.as_str(), string(v.clone())))
                                .collect(),
                        ),
                    )]),
                ));
            }
            spec.push(("url", string(url)));
            if let Some(sha) = &opts.sha256 {
                spec.push(("sha256", string(sha.clone())));
            }
            let phase = opts.phase.as_deref().unwrap_or(ISTIO_DEFAULT_PHASE);
            spec.push(("phase", string(phase)));
            spec.push(("failStrategy", string("FAIL_CLOSE")));
            spec.push(("pluginConfig", Node::Config(&conv.config)));
            if !conv.secrets.is_empty() {
                let env = conv
                    .secrets
                    .iter()
                    .map(|s| {
                        Node::Map(vec![
                            ("name", string(s.env.clone())),
                            ("valueFrom", string("HOST")),
                        ])
                    })
                    .collect();
                spec.push(("vmConfig", Node::Map(vec![("env", Node::Seq(env))])));
            }
            let mut how = vec![
                "vmConfig.env passes them from the proxy's environment (valueFrom: HOST). Give the"
                    .to_owned(),
                "proxy container (the gateway's, or istio-proxy in the workload's pod spec) this env:"
                    .to_owned(),
            ];
            if opts.selector.is_empty() {
                how.insert(
                    0,
                    "No --selector: the plugin applies to every workload in its namespace."
                        .to_owned(),
                );
            }
            let advice = vec![
                "Istio names a ServiceEntry host's cluster outbound|PORT||HOST: give the STS a"
                    .to_owned(),
                "ServiceEntry (and a DestinationRule with tls mode SIMPLE for https).".to_owned(),
            ];
            (
                Node::Map(vec![
                    ("apiVersion", string("extensions.istio.io/v1alpha1")),
                    ("kind", string("WasmPlugin")),
                    ("metadata", metadata(opts)),
                    ("spec", Node::Map(spec)),
                ]),
                how,
                advice,
            )
        }
        Format::EnvoyGateway => {
            let Some((kind, wasm)) = module_location(Format::EnvoyGateway, opts.wasm.as_deref())?
            else {
                return Err(usage("--output envoy-gateway needs --wasm"));
            };
            let targets = gateway_targets(opts)?;
            // Envoy Gateway reads the digest from the code source it belongs to:
            // code.image.sha256 or code.http.sha256 (api/v1alpha1/wasm_types.go).
            let (source_type, source_key, url) = match kind {
                ModuleKind::Oci => (
                    "Image",
                    "image",
                    wasm.strip_prefix("oci://").unwrap_or(&wasm).to_owned(),
                ),
                _ => ("HTTP", "http", wasm),
            };
            let mut source = vec![("url", string(url))];
            if let Some(sha) = &opts.sha256 {
                source.push(("sha256", string(sha.clone())));
            }
            let code = vec![
                ("type", string(source_type)),
                (source_key, Node::Map(source)),
            ];
            let mut wasm_entry = vec![
                ("name", string(opts.name.clone())),
                ("code", Node::Map(code)),
                ("config", Node::Config(&conv.config)),
                ("failOpen", Node::Bool(false)),
            ];
            if !env_keys.is_empty() {
                wasm_entry.push(("env", Node::Map(vec![("hostKeys", Node::Seq(env_keys))])));
            }
            (
                extension_policy(opts, targets, ("wasm", Node::Map(wasm_entry))),
                vec![
                    "env.hostKeys passes them from the Envoy proxy's environment. Add them to the"
                        .to_owned(),
                    "EnvoyProxy's spec.provider.kubernetes.envoyDeployment.container.env:"
                        .to_owned(),
                ],
                gateway_cluster_advice(),
            )
        }
    };
    let extra = match opts.format {
        Format::Istio => istio_phase_comment(&conv.config, opts.phase.as_deref()),
        Format::Envoy if opts.native => native_envoy_comment(),
        _ => Vec::new(),
    };
    let body = yaml(&doc)?;
    Ok(format!(
        "{}{body}",
        header(conv, &how_to_set_env, &cluster_advice, &extra)
    ))
}

/// `spec.targetRefs` of the EnvoyExtensionPolicy, from `--target-ref` (required).
fn gateway_targets<'a>(opts: &'a Options) -> Result<Node<'a>, Diagnostic> {
    if opts.target_refs.is_empty() {
        return Err(usage(
            "--output envoy-gateway needs --target-ref KIND/NAME: the Gateway or HTTPRoute \
             the policy attaches to (e.g. --target-ref Gateway/mcp-gateway)",
        ));
    }
    Ok(Node::Seq(
        opts.target_refs
            .iter()
            .map(|(kind, name)| {
                Node::Map(vec![
                    ("group", string("gateway.networking.k8s.io")),
                    ("kind", string(kind.clone())),
                    ("name", string(name.clone())),
                ])
            })
            .collect(),
    ))
}

/// An EnvoyExtensionPolicy with `targets` and one filter list (`wasm` or `dynamicModule`).
fn extension_policy<'a>(
    opts: &'a Options,
    targets: Node<'a>,
    (list, entry): (&'a str, Node<'a>),
) -> Node<'a> {
    Node::Map(vec![
        ("apiVersion", string("gateway.envoyproxy.io/v1alpha1")),
        ("kind", string("EnvoyExtensionPolicy")),
        ("metadata", metadata(opts)),
        (
            "spec",
            Node::Map(vec![
                ("targetRefs", targets),
                (list, Node::Seq(vec![entry])),
            ]),
        ),
    ])
}

fn gateway_cluster_advice() -> Vec<String> {
    vec![
        "Envoy Gateway only creates clusters for routes and Backends: make sure each exists"
            .to_owned(),
        "in the generated xDS (e.g. with an EnvoyPatchPolicy) or pass --sts-cluster NAME."
            .to_owned(),
    ]
}

/// `-o envoy-gateway --native`: the header, then two YAML documents: the EnvoyProxy that
/// registers the dynamic module (`spec.dynamicModules`, an allowlist Envoy Gateway checks every
/// policy against), and the EnvoyExtensionPolicy whose `dynamicModule` entry loads it by name
/// with the filter config. Field names: Envoy Gateway's api/v1alpha1 (dynamic_module_types.go,
/// envoyproxy_types.go, envoyextensionypolicy_types.go), v1.8 and later.
fn gateway_native_yaml(conv: &Conversion, opts: &Options) -> Result<String, Diagnostic> {
    let source = native_source(opts.module.as_deref(), opts.sha256.as_deref())?;
    let targets = gateway_targets(opts)?;
    let source_node = match &source {
        NativeSource::Local(path) => Node::Map(vec![
            ("type", string("Local")),
            ("local", Node::Map(vec![("path", string(path.clone()))])),
        ]),
        NativeSource::Remote { url, sha256 } => Node::Map(vec![
            ("type", string("Remote")),
            (
                "remote",
                Node::Map(vec![
                    ("url", string(url.clone())),
                    ("sha256", string(sha256.clone())),
                ]),
            ),
        ]),
    };
    let proxy = Node::Map(vec![
        ("apiVersion", string("gateway.envoyproxy.io/v1alpha1")),
        ("kind", string("EnvoyProxy")),
        ("metadata", metadata(opts)),
        (
            "spec",
            Node::Map(vec![(
                "dynamicModules",
                Node::Seq(vec![Node::Map(vec![
                    ("name", string(GATEWAY_MODULE_NAME)),
                    ("source", source_node),
                ])]),
            )]),
        ),
    ]);
    let entry = Node::Map(vec![
        ("name", string(GATEWAY_MODULE_NAME)),
        ("filterName", string(NATIVE_FILTER_NAME)),
        ("config", Node::Config(&conv.config)),
    ]);
    let policy = extension_policy(opts, targets, ("dynamicModule", entry));
    let how = [
        "The module reads them from the Envoy proxy's own environment (a dynamic module has no",
        "env.hostKeys). Add them to the EnvoyProxy's spec.provider.kubernetes.envoyDeployment.container.env:",
    ]
    .map(str::to_owned);
    let mut about = vec![
        format!(
            "Two resources: the EnvoyProxy registers the dynamic module {NATIVE_MODULE_FILE} as {GATEWAY_MODULE_NAME}"
        ),
        "(spec.dynamicModules, Envoy Gateway v1.8 and later), and the EnvoyExtensionPolicy's"
            .to_owned(),
        "dynamicModule entry loads it by that name. The EnvoyProxy applies to a Gateway whose"
            .to_owned(),
        "spec.infrastructure.parametersRef (or whose GatewayClass's parametersRef) names it; a"
            .to_owned(),
        "Gateway's EnvoyProxy replaces its GatewayClass's unless it sets mergeType. To keep the"
            .to_owned(),
        "EnvoyProxy you have, add the spec.dynamicModules entry to it instead.".to_owned(),
    ];
    match &source {
        NativeSource::Local(path) => {
            about.push(format!(
                "The proxy container must have the module at {path}"
            ));
            about.push("(an init container, a volume or a custom image).".to_owned());
        }
        NativeSource::Remote { .. } => about.push(
            "Envoy downloads the module and checks it against remote.sha256 before loading it."
                .to_owned(),
        ),
    }
    about.extend([
        format!(
            "Build the module for the proxy's Envoy minor version, {NATIVE_ENVOY_VERSION} (Envoy checks the ABI"
        ),
        "version the module was built against); Envoy Gateway v1.9.0 runs Envoy 1.39 by default:"
            .to_owned(),
        format!(
            "set the EnvoyProxy's spec.provider.kubernetes.envoyDeployment.container.image to Envoy {NATIVE_ENVOY_VERSION}."
        ),
    ]);
    Ok(format!(
        "{}{}---\n{}",
        header(conv, &how, &gateway_cluster_advice(), &about),
        yaml(&proxy)?,
        yaml(&policy)?
    ))
}

/// What the config reads that decides where in Istio's chain it must run.
fn reads(config: &FilterConfig) -> (bool, bool) {
    let strategies = config
        .outgoing_auth
        .default
        .iter()
        .chain(config.outgoing_auth.backends.values());
    let mut upstream_tokens = false;
    let mut client_token = false;
    for s in strategies {
        if s.upstream_inject.is_some() {
            upstream_tokens = true;
        }
        if let Some(x) = &s.token_exchange {
            if x.subject_provider_name.is_some() {
                upstream_tokens = true;
            } else {
                client_token = true;
            }
        }
    }
    (upstream_tokens, client_token)
}

/// The comment lines that say why the WasmPlugin has its phase. Istio builds the chain as:
/// CUSTOM ext_authz, AUTHN plugins, RequestAuthentication (jwt_authn), AUTHZ plugins,
/// AuthorizationPolicy (RBAC), STATS plugins, UNSPECIFIED_PHASE plugins, router.
pub fn istio_phase_comment(config: &FilterConfig, phase: Option<&str>) -> Vec<String> {
    let (upstream_tokens, client_token) = reads(config);
    let mut out = Vec::new();
    match phase {
        None => {
            out.push(format!(
                "Phase {ISTIO_DEFAULT_PHASE} (the default; --phase overrides it): Istio inserts the filter after"
            ));
            out.push(
                "its authentication (RequestAuthentication) and authorization (AuthorizationPolicy,"
                    .to_owned(),
            );
            out.push(
                "CUSTOM ext_authz included) filters, so they check the client's Authorization header"
                    .to_owned(),
            );
            out.push("before the filter replaces or removes it.".to_owned());
            if upstream_tokens {
                out.push(
                    "This config reads upstream tokens from dynamic metadata: the auth step that writes"
                        .to_owned(),
                );
                out.push(
                    "them (ext_authz, or a WasmPlugin in phase AUTHN or AUTHZ) has run by then."
                        .to_owned(),
                );
            }
        }
        Some(p @ ("AUTHN" | "AUTHZ")) => {
            let (filters, which) = if p == "AUTHN" {
                (
                    "authentication",
                    "(RequestAuthentication) and authorization filters, which then see the",
                )
            } else {
                (
                    "authorization",
                    "(AuthorizationPolicy) filters, which then see the",
                )
            };
            out.push(format!(
                "Phase {p} (--phase): Istio inserts the filter before its {filters}"
            ));
            out.push(which.to_owned());
            out.push("credential the filter set, not the client's.".to_owned());
            if upstream_tokens {
                out.push(
                    "This config reads upstream tokens from dynamic metadata: an auth step that runs"
                        .to_owned(),
                );
                out.push(format!(
                    "later than {p} has not written them yet, and upstream_inject answers 401. The"
                ));
                out.push(format!(
                    "default, {ISTIO_DEFAULT_PHASE}, runs after all of Istio's auth filters."
                ));
            }
        }
        Some(p) => out.push(format!("Phase {p} (--phase).")),
    }
    if client_token && phase != Some("AUTHN") {
        out.push(
            "A token exchange here uses the client's own bearer token as its subject: a".to_owned(),
        );
        out.push(
            "RequestAuthentication removes that token after checking it unless its jwtRules set"
                .to_owned(),
        );
        out.push("forwardOriginalToken: true.".to_owned());
    }
    out
}

fn usage(message: &str) -> Diagnostic {
    Diagnostic::error("", message)
}

/// The comment block at the top of the YAML formats.
fn header(
    conv: &Conversion,
    how_to_set_env: &[String],
    cluster_advice: &[String],
    extra: &[String],
) -> String {
    let mut lines = vec![
        "outgoing-auth filter configuration, generated by `outgoing-auth convert` from:".to_owned(),
    ];
    lines.extend(conv.files.iter().map(|f| format!("  {f}")));
    if !conv.secrets.is_empty() {
        lines.push(String::new());
        lines.push("Environment variables the filter reads, each from a Kubernetes Secret:".into());
        for s in &conv.secrets {
            lines.push(format!("  {}", secret_line(s)));
        }
        lines.extend(how_to_set_env.iter().cloned());
        lines.push("  env:".into());
        for s in &conv.secrets {
            lines.push(format!("  - name: {}", s.env));
            lines.push("    valueFrom:".into());
            lines.push(format!(
                "      secretKeyRef: {{name: {}, key: {}}}",
                quote(&s.secret),
                quote(&s.key)
            ));
        }
    }
    if !conv.clusters.is_empty() {
        lines.push(String::new());
        lines.push("Envoy clusters the token exchanges call:".into());
        for c in &conv.clusters {
            lines.push(format!("  {}", cluster_line(c)));
        }
        lines.extend(cluster_advice.iter().cloned());
    }
    if !extra.is_empty() {
        lines.push(String::new());
        lines.extend(extra.iter().cloned());
    }
    comment_block(&lines)
}

/// `lines` as YAML comment lines (an empty line as a bare `#`).
fn comment_block(lines: &[String]) -> String {
    let mut out = String::new();
    for l in lines {
        if l.is_empty() {
            out.push_str("#\n");
        } else {
            out.push_str("# ");
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

fn secret_line(s: &super::convert::SecretEnv) -> String {
    format!(
        "{}: Secret {}, key {} ({} {})",
        s.env,
        quote(&s.secret),
        quote(&s.key),
        s.resource,
        s.field
    )
}

fn cluster_line(c: &super::convert::StsCluster) -> String {
    format!("{}: {} ({})", c.cluster, c.token_url, c.resource)
}

/// What the YAML header says, as notes (for the JSON format, whose output cannot carry comments).
pub fn notes(conv: &Conversion) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for s in &conv.secrets {
        out.push(Diagnostic::note(
            "",
            format!(
                "the filter reads environment variable {}; it must carry Secret {}, key {} \
                 ({} {})",
                s.env,
                quote(&s.secret),
                quote(&s.key),
                s.resource,
                s.field
            ),
        ));
    }
    for c in &conv.clusters {
        out.push(Diagnostic::note(
            "",
            format!(
                "the token exchange of {} calls Envoy cluster {} ({}); it must exist",
                c.resource,
                quote(&c.cluster),
                c.token_url
            ),
        ));
    }
    out
}
