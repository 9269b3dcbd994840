//! Rendering a conversion as what a deployment consumes: the filter JSON, an Envoy `http_filters`
//! entry, an Istio `WasmPlugin` or an Envoy Gateway `EnvoyExtensionPolicy`.
//!
//! The YAML formats start with comments that say which Secret key each environment variable must
//! carry and which Envoy clusters the token exchanges call; for the JSON format the CLI prints the
//! same as notes on stderr (see [`notes`]).

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use super::convert::{to_json, Conversion, FilterConfig};
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

/// The output flags.
#[derive(Debug, Clone)]
pub struct Options {
    pub format: Format,
    /// `metadata.name` of the Istio / Envoy Gateway resource.
    pub name: String,
    pub namespace: Option<String>,
    /// Where the module is: a file path (envoy), a URL (istio), an OCI image or HTTP URL
    /// (envoy-gateway).
    pub wasm: Option<String>,
    pub sha256: Option<String>,
    /// Istio `selector.matchLabels`.
    pub selector: Vec<(String, String)>,
    /// Istio `phase`.
    pub phase: String,
    /// Envoy Gateway `targetRefs` as (kind, name).
    pub target_refs: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            format: Format::Filter,
            name: DEFAULT_NAME.to_owned(),
            namespace: None,
            wasm: None,
            sha256: None,
            selector: Vec::new(),
            phase: "AUTHN".to_owned(),
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

/// Renders the conversion; an error is a usage problem of the output flags.
pub fn render(conv: &Conversion, opts: &Options) -> Result<String, Diagnostic> {
    let env_keys: Vec<Node> = conv.secrets.iter().map(|s| string(s.env.clone())).collect();
    let (doc, how_to_set_env, cluster_advice) = match opts.format {
        Format::Filter => return Ok(format!("{}\n", to_json(&conv.config))),
        Format::Envoy => {
            let filename = match opts.wasm.as_deref() {
                None => DEFAULT_ENVOY_WASM,
                Some(w) if w.contains("://") && !w.starts_with("file://") => {
                    return Err(usage(
                        "--output envoy loads the module from a local file: give --wasm a path",
                    ))
                }
                Some(w) => w.strip_prefix("file://").unwrap_or(w),
            };
            let mut vm = vec![
                ("vm_id", string("outgoing_auth")),
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
            let entry = Node::Map(vec![
                ("name", string("envoy.filters.http.wasm")),
                (
                    "typed_config",
                    Node::Map(vec![
                        (
                            "@type",
                            string(
                                "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                            ),
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
                                        (
                                            "@type",
                                            string(
                                                "type.googleapis.com/google.protobuf.StringValue",
                                            ),
                                        ),
                                        ("value", string(to_json(&conv.config))),
                                    ]),
                                ),
                                ("failure_policy", string("FAIL_CLOSED")),
                            ]),
                        ),
                    ]),
                ),
            ]);
            (
                Node::Seq(vec![entry]),
                vec![
                    "Envoy's process needs them in its environment; vm_config lists them in"
                        .to_owned(),
                    "environment_variables.host_env_keys. In a Pod, the Envoy container's env:"
                        .to_owned(),
                ],
                vec![
                    "Define each under static_resources.clusters (with TLS for https).".to_owned(),
                ],
            )
        }
        Format::Istio => {
            let Some(url) = opts.wasm.clone() else {
                return Err(usage(
                    "--output istio needs --wasm URL: where Istio fetches the module \
                     (oci://REGISTRY/IMAGE:TAG, https://HOST/outgoing_auth.wasm or file:///PATH)",
                ));
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
            spec.push(("phase", string(opts.phase.clone())));
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
            let Some(wasm) = opts.wasm.clone() else {
                return Err(usage(
                    "--output envoy-gateway needs --wasm URL: an OCI image \
                     (oci://REGISTRY/IMAGE:TAG) or an https:// URL of the module",
                ));
            };
            if opts.target_refs.is_empty() {
                return Err(usage(
                    "--output envoy-gateway needs --target-ref KIND/NAME: the Gateway or HTTPRoute \
                     the policy attaches to (e.g. --target-ref Gateway/mcp-gateway)",
                ));
            }
            let mut code = Vec::new();
            if let Some(image) = wasm.strip_prefix("oci://") {
                code.push(("type", string("Image")));
                code.push(("image", Node::Map(vec![("url", string(image))])));
            } else if wasm.starts_with("https://") || wasm.starts_with("http://") {
                code.push(("type", string("HTTP")));
                code.push(("http", Node::Map(vec![("url", string(wasm))])));
            } else {
                return Err(usage(
                    "--output envoy-gateway takes an oci:// image or an http(s):// URL for --wasm",
                ));
            }
            if let Some(sha) = &opts.sha256 {
                code.push(("sha256", string(sha.clone())));
            }
            let mut wasm_entry = vec![
                ("name", string(opts.name.clone())),
                ("code", Node::Map(code)),
                ("config", Node::Config(&conv.config)),
                ("failOpen", Node::Bool(false)),
            ];
            if !env_keys.is_empty() {
                wasm_entry.push(("env", Node::Map(vec![("hostKeys", Node::Seq(env_keys))])));
            }
            let targets = opts
                .target_refs
                .iter()
                .map(|(kind, name)| {
                    Node::Map(vec![
                        ("group", string("gateway.networking.k8s.io")),
                        ("kind", string(kind.clone())),
                        ("name", string(name.clone())),
                    ])
                })
                .collect();
            (
                Node::Map(vec![
                    ("apiVersion", string("gateway.envoyproxy.io/v1alpha1")),
                    ("kind", string("EnvoyExtensionPolicy")),
                    ("metadata", metadata(opts)),
                    (
                        "spec",
                        Node::Map(vec![
                            ("targetRefs", Node::Seq(targets)),
                            ("wasm", Node::Seq(vec![Node::Map(wasm_entry)])),
                        ]),
                    ),
                ]),
                vec![
                    "env.hostKeys passes them from the Envoy proxy's environment. Add them to the"
                        .to_owned(),
                    "EnvoyProxy's spec.provider.kubernetes.envoyDeployment.container.env:".to_owned(),
                ],
                vec![
                    "Envoy Gateway only creates clusters for routes and Backends: make sure each exists"
                        .to_owned(),
                    "in the generated xDS (e.g. with an EnvoyPatchPolicy) or pass --sts-cluster NAME."
                        .to_owned(),
                ],
            )
        }
    };
    let mut extra = Vec::new();
    if opts.format == Format::Istio && opts.phase == "AUTHN" && conv.config.auth_server.is_some() {
        extra.push(
            "Phase AUTHN runs before Istio's authentication and authorization filters: if an"
                .to_owned(),
        );
        extra.push(
            "ext_authz (CUSTOM AuthorizationPolicy) writes the upstream tokens, use --phase STATS."
                .to_owned(),
        );
    }
    let body = serde_saphyr::to_string(&doc).map_err(|e| usage(&e.to_string()))?;
    Ok(format!(
        "{}{body}",
        header(conv, &how_to_set_env, &cluster_advice, &extra)
    ))
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
    let mut out = String::new();
    for l in lines {
        if l.is_empty() {
            out.push_str("#\n");
        } else {
            out.push_str("# ");
            out.push_str(&l);
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
