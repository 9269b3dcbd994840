//! The `outgoing-auth` command line: argument parsing, `--help`, and the three subcommands.
//!
//! [`run`] takes its arguments, standard streams and environment as parameters so that tests can
//! drive it without a process; `src/bin/outgoing-auth.rs` only passes the real ones in.

use std::io::{Read, Write};
use std::path::Path;

use serde_json::Value;

use super::convert::{self, ClusterNaming};
use super::crd;
use super::diag::{quote, Diagnostic};
use super::input::{self, Source};
use super::output::{self, Format, ISTIO_PHASES};
use crate::core::config;
use crate::core::report;
use crate::core::validate;

/// Exit status: success.
pub const EXIT_OK: i32 = 0;
/// Exit status: the input is invalid (a config or resource with problems, an unreadable file).
pub const EXIT_INVALID: i32 = 1;
/// Exit status: the command line is wrong.
pub const EXIT_USAGE: i32 = 2;

const VERSION: &str = env!("CARGO_PKG_VERSION");

const MAIN_HELP: &str = "\
outgoing-auth: ToolHive MCPExternalAuthConfig resources to outgoing-auth's Envoy filter config

Usage: outgoing-auth <COMMAND> [OPTIONS]

Commands:
  validate  Check a filter configuration exactly as the filter does when Envoy loads it
  convert   Turn MCPExternalAuthConfig resources into filter, Envoy, Istio or Envoy Gateway config
  crd       Print the MCPExternalAuthConfig CustomResourceDefinition
  help      Print this help, or a command's help (`outgoing-auth help convert`)

Options:
  -h, --help     Print help
  -V, --version  Print version

Exit status: 0 ok, 1 invalid input (every problem is printed), 2 wrong command line.
Run `outgoing-auth COMMAND --help` for a command's options and examples.
";

const VALIDATE_HELP: &str = "\
Check filter configurations exactly as the filter does when Envoy loads it

Usage: outgoing-auth validate [OPTIONS] <CONFIG.json>...

Runs the filter's own startup validation (outgoing_auth::core::validate::load) on each file and prints
every problem with its rule ID (V-01, S-04, ...; the README lists them). Environment variables
named by headerValueEnv / clientSecretEnv are looked up in this command's own environment, as the
filter looks them up in Envoy's; every variable the config needs is listed (values are never
printed).

Arguments:
  <CONFIG.json>...  Filter configuration files (the JSON of the wasm filter's `configuration`);
                    `-` reads standard input

Options:
  -q, --quiet  Print only problems, not the summary and variable list
  -h, --help   Print help

Exit status: 0 if every file is valid (warnings allowed), 1 otherwise.

Examples:
  outgoing-auth convert -f k8s/examples/ > config.json
  TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_CORP_STS=x TOOLHIVE_HEADER_INJECTION_VALUE_INTERNAL_API=y \\
    outgoing-auth validate config.json
  outgoing-auth convert -f k8s/examples/upstream-inject.yaml --default github --upstreams github \\
    | outgoing-auth validate -
";

const CONVERT_HELP: &str = "\
Turn MCPExternalAuthConfig resources into filter, Envoy, Istio or Envoy Gateway configuration

Usage: outgoing-auth convert -f <FILE>... [OPTIONS]

Reads ToolHive MCPExternalAuthConfig resources (toolhive.stacklok.dev/v1beta1 or v1alpha1; YAML,
multi-document YAML or JSON) and maps backends to them, from the flags or from a VirtualMCPServer
in the input whose spec.outgoingAuth holds externalAuthConfigRefs (the flags win). Every resource is
checked (ToolHive's converter errors, the CRD's rules), and the result must pass the filter's own
startup validation (V-01, V-02, V-06, ...) before anything is printed.

Secret references become environment variables, named as ToolHive's operator names them:
  tokenExchange.clientSecretRef  -> TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_<NAME>
  headerInjection.valueSecretRef -> TOOLHIVE_HEADER_INJECTION_VALUE_<NAME>
(NAME: metadata.name upper-cased, other characters than letters and digits as `_`). The output says
which Secret and key each one must carry (comments in YAML; notes on stderr for JSON).

Input:
  -f, --filename <FILE>        A file, a directory (its *.yaml, *.yml, *.json) or `-` for stdin;
                               repeatable
Mapping:
      --backend <NAME=RESOURCE>  Backend NAME authenticates with the MCPExternalAuthConfig named
                                 RESOURCE (its metadata.name); repeatable
      --default <RESOURCE>       The strategy for backends not listed
      --upstreams <a,b>          authServer.upstreams: the providers whose tokens the auth filter
                                 puts into dynamic metadata (needed by upstreamInject and
                                 subjectProviderName; default: the VirtualMCPServer's
                                 spec.authServerConfig.upstreamProviders)
      --metadata-namespace <NS>  authServer.tokens: where the auth filter leaves the upstream
      --metadata-key <KEY>       tokens (defaults: envoy.filters.http.ext_authz, upstream_tokens);
      --key-prefix <PREFIX>      --key-prefix instead of --metadata-key for one entry per provider,
                                 as HTTP ext_authz dynamic_metadata_from_headers writes them
                                 (e.g. x-upstream-token-)
      --sts-cluster <[RESOURCE=]NAME>
                                 The Envoy cluster a token exchange calls, for all or for one
                                 resource (default: the tokenUrl host; for istio
                                 outbound|PORT||HOST); repeatable
Output:
  -o, --output <FORMAT>        filter (default): the filter's JSON config
                               envoy: an http_filters entry for an Envoy config
                               istio: an Istio WasmPlugin (extensions.istio.io/v1alpha1)
                               envoy-gateway: an Envoy Gateway EnvoyExtensionPolicy
      --mcp-router             envoy only: the two entries behind Envoy's mcp_router, as two YAML
                               documents: the issuing instance (handoff mode issue) for the
                               listener's http_filters, before mcp and mcp_router, and the
                               accepting one (handoff mode accept, the backend named by the
                               cluster) for every backend cluster's http_filters
      --native                 envoy, envoy-gateway: load the Envoy dynamic module
                               liboutgoing_auth.so (built for Envoy 1.40) instead of the wasm
                               module, with the same filter config. envoy: a DynamicModuleFilter
                               entry (both entries with --mcp-router); Envoy finds the module in
                               the directory ENVOY_DYNAMIC_MODULES_SEARCH_PATH names.
                               envoy-gateway: an EnvoyProxy that registers it (spec.dynamicModules,
                               see --module) and an EnvoyExtensionPolicy with a dynamicModule
                               entry. Not with --wasm
      --wasm <LOCATION>        The module (envoy default: /etc/envoy/outgoing_auth.wasm); by output:
                                 envoy: a file path or file:///PATH
                                 istio: oci://, https:// or file:///PATH; required
                                 envoy-gateway: oci:// or https://; required
                                 never http://: anyone on the path could swap the module
      --module <LOCATION>      envoy-gateway --native: the liboutgoing_auth.so the EnvoyProxy
                               registers: an absolute path or file:///PATH in the proxy container,
                               or https:// with --sha256; required, never http://
      --sha256 <HEX>           The module's SHA-256 (istio: spec.sha256; envoy-gateway:
                               code.image.sha256 or code.http.sha256; envoy-gateway --native with
                               an https:// --module: remote.sha256)
      --name <NAME>            metadata.name of the WasmPlugin / EnvoyExtensionPolicy (and
                               EnvoyProxy) (default: outgoing-auth)
      --namespace <NS>         metadata.namespace of the WasmPlugin / EnvoyExtensionPolicy (and
                               EnvoyProxy)
      --selector <KEY=VALUE>   istio: selector.matchLabels; repeatable
      --phase <PHASE>          istio: STATS (default: after Istio's authentication and
                               authorization filters, CUSTOM ext_authz included; the output's
                               comments say why), AUTHN, AUTHZ or UNSPECIFIED_PHASE
      --target-ref <KIND/NAME> envoy-gateway: a Gateway or HTTPRoute to attach to; repeatable,
                               required
  -h, --help                   Print help

Exit status: 0 converted, 1 a resource or the result is invalid (nothing is printed on stdout),
2 wrong command line.

Examples:
  outgoing-auth convert -f k8s/examples/upstream-inject.yaml --backend github-mcp=github \\
    --upstreams github
  outgoing-auth convert -f k8s/examples/ -o envoy
  outgoing-auth convert -f k8s/examples/ -o envoy --mcp-router
  outgoing-auth convert -f k8s/examples/ -o envoy --native --key-prefix x-upstream-token-
  kubectl get mcpexternalauthconfigs,virtualmcpservers -o yaml | outgoing-auth convert -f - \\
    -o istio --wasm oci://registry.example.com/outgoing-auth:0.1.0 --selector app=mcp-gateway
  outgoing-auth convert -f k8s/examples/token-exchange.yaml --default corp-sts \\
    --upstreams corporate-idp -o envoy-gateway \\
    --wasm oci://registry.example.com/outgoing-auth:0.1.0 --target-ref Gateway/mcp-gateway
  outgoing-auth convert -f k8s/examples/token-exchange.yaml --default corp-sts \\
    --upstreams corporate-idp --key-prefix x-upstream-token- -o envoy-gateway --native \\
    --module /usr/lib/envoy/modules/liboutgoing_auth.so --target-ref Gateway/mcp-gateway
";

const CRD_HELP: &str = "\
Print the MCPExternalAuthConfig CustomResourceDefinition

Usage: outgoing-auth crd

Prints the CRD (apiextensions.k8s.io/v1) for toolhive.stacklok.dev MCPExternalAuthConfig: served
as v1beta1 (stored) and v1alpha1 (deprecated), spec.type upstreamInject, tokenExchange,
headerInjection or unauthenticated, with CEL rules that each sub-object is set if and only if its
type is selected. It is generated from the same Rust types `convert` reads. If ToolHive's operator
is installed, its own CRD (a superset) already defines the resource.

Options:
  -h, --help  Print help

Example:
  outgoing-auth crd | kubectl apply -f -
";

/// The standard streams and environment a run uses.
pub struct Io<'a> {
    pub stdin: &'a mut dyn Read,
    pub stdout: &'a mut dyn Write,
    pub stderr: &'a mut dyn Write,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

/// Runs the command line `args` (without the program name) and returns the exit status.
pub fn run(args: &[String], io: &mut Io<'_>) -> i32 {
    let Some((command, rest)) = args.split_first() else {
        let _ = io.stderr.write_all(MAIN_HELP.as_bytes());
        return EXIT_USAGE;
    };
    match command.as_str() {
        "-h" | "--help" => print(io.stdout, MAIN_HELP),
        "-V" | "--version" => print(io.stdout, &format!("outgoing-auth {VERSION}\n")),
        "help" => match rest.first().map(String::as_str) {
            None => print(io.stdout, MAIN_HELP),
            Some("validate") => print(io.stdout, VALIDATE_HELP),
            Some("convert") => print(io.stdout, CONVERT_HELP),
            Some("crd") => print(io.stdout, CRD_HELP),
            Some(other) => usage_error(io, &format!("unknown command {}", quote(other)), MAIN_HELP),
        },
        "validate" => validate(rest, io),
        "convert" => convert_command(rest, io),
        "crd" => crd_command(rest, io),
        other => usage_error(
            io,
            &format!(
                "unknown command {}; the commands are validate, convert and crd",
                quote(other)
            ),
            MAIN_HELP,
        ),
    }
}

fn print(out: &mut dyn Write, text: &str) -> i32 {
    match out.write_all(text.as_bytes()) {
        Ok(()) => EXIT_OK,
        Err(_) => EXIT_INVALID,
    }
}

fn usage_error(io: &mut Io<'_>, message: &str, help: &str) -> i32 {
    let usage = help
        .lines()
        .find(|l| l.starts_with("Usage: "))
        .unwrap_or("Usage: outgoing-auth <COMMAND>");
    let command = usage
        .strip_prefix("Usage: ")
        .and_then(|u| u.split(" [").next())
        .and_then(|u| u.split(" <").next())
        .and_then(|u| u.split(" -").next())
        .unwrap_or("outgoing-auth");
    let _ = writeln!(
        io.stderr,
        "error: {message}\n\n{usage}\n\nFor more information, try `{command} --help`."
    );
    EXIT_USAGE
}

fn report(out: &mut dyn Write, diags: &[Diagnostic]) {
    for d in diags {
        let _ = writeln!(out, "{d}");
    }
}

/// Command-line words: options with values (`--x v`, `--x=v`, `-x v`, `-xv`) and positionals.
struct Args<'a> {
    words: std::slice::Iter<'a, String>,
    positional_only: bool,
}

enum Arg<'a> {
    /// An option and its inline value (`--x=v`, `-xv`), if any.
    Flag(&'a str, Option<&'a str>),
    Positional(&'a str),
}

impl<'a> Args<'a> {
    fn new(words: &'a [String]) -> Self {
        Args {
            words: words.iter(),
            positional_only: false,
        }
    }

    fn next_arg(&mut self) -> Option<Arg<'a>> {
        let w = self.words.next()?.as_str();
        if self.positional_only || w == "-" || !w.starts_with('-') {
            return Some(Arg::Positional(w));
        }
        if w == "--" {
            self.positional_only = true;
            return self.next_arg();
        }
        if let Some(long) = w.strip_prefix("--") {
            return Some(match long.split_once('=') {
                Some((k, v)) => Arg::Flag(w.get(..k.len() + 2).unwrap_or(w), Some(v)),
                None => Arg::Flag(w, None),
            });
        }
        // `-fFILE`: a short flag with its value attached.
        match (w.get(..2), w.get(2..)) {
            (Some(flag), Some(rest)) if !rest.is_empty() => Some(Arg::Flag(flag, Some(rest))),
            _ => Some(Arg::Flag(w, None)),
        }
    }

    /// The value of `flag`: inline, or the next word.
    fn value(&mut self, flag: &str, inline: Option<&'a str>) -> Result<&'a str, String> {
        if let Some(v) = inline {
            return Ok(v);
        }
        match self.words.next() {
            Some(v) => Ok(v.as_str()),
            None => Err(format!("{flag} needs a value")),
        }
    }
}

fn no_value(flag: &str, inline: Option<&str>) -> Result<(), String> {
    match inline {
        Some(_) => Err(format!("{flag} takes no value")),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// validate

fn validate(args: &[String], io: &mut Io<'_>) -> i32 {
    let mut files = Vec::new();
    let mut quiet = false;
    let mut parsed = Args::new(args);
    while let Some(arg) = parsed.next_arg() {
        let result = match arg {
            Arg::Flag("-h" | "--help", _) => return print(io.stdout, VALIDATE_HELP),
            Arg::Flag(f @ ("-q" | "--quiet"), v) => no_value(f, v).map(|()| quiet = true),
            Arg::Flag(f, _) => Err(format!("unknown option {f} for validate")),
            Arg::Positional(p) => {
                files.push(p.to_owned());
                Ok(())
            }
        };
        if let Err(e) = result {
            return usage_error(io, &e, VALIDATE_HELP);
        }
    }
    if files.is_empty() {
        return usage_error(
            io,
            "validate needs a CONFIG.json (or - for stdin)",
            VALIDATE_HELP,
        );
    }
    let mut status = EXIT_OK;
    let mut stdin_used = false;
    for file in &files {
        let source = match read_one(file, io, &mut stdin_used) {
            Ok(s) => s,
            Err(d) => {
                report(io.stderr, &[d]);
                status = EXIT_INVALID;
                continue;
            }
        };
        if !validate_one(&source, quiet, io) {
            status = EXIT_INVALID;
        }
    }
    status
}

/// Validates one config and prints the result; true when it is valid.
fn validate_one(source: &Source, quiet: bool, io: &mut Io<'_>) -> bool {
    let env = io.env;
    let result = validate::load(source.text.as_bytes(), &|name| env(name));
    let (ok, report) = match &result {
        Ok(loaded) => (true, &loaded.warnings),
        Err(report) => (false, report),
    };
    let out = &mut *io.stdout;
    for line in report.lines() {
        let severity = if line.warning { "warning" } else { "error" };
        let _ = writeln!(out, "{severity}: {}: {}", source.name, line.text);
    }
    if !ok {
        if let Some(hint) = input_kind_hint(&source.text) {
            let _ = writeln!(out, "note: {}: {hint}", source.name);
        }
    }
    if quiet {
        return ok;
    }
    let vars = env_references(source.text.as_bytes());
    if !vars.is_empty() {
        let _ = writeln!(
            out,
            "{}: environment variables this config needs:",
            source.name
        );
        let width = vars
            .iter()
            .take(MAX_LISTED_VARIABLES)
            .map(|(v, _)| v.len().min(64))
            .max()
            .unwrap_or(0);
        for (var, path) in vars.iter().take(MAX_LISTED_VARIABLES) {
            let state = match env(var) {
                Some(v) if !v.is_empty() => "set",
                Some(_) => "EMPTY",
                None => "NOT SET",
            };
            let _ = writeln!(out, "  {:<width$}  {state:<7}  {}", short(var), short(path));
        }
        if vars.len() > MAX_LISTED_VARIABLES {
            let _ = writeln!(out, "  ... and {} more", vars.len() - MAX_LISTED_VARIABLES);
        }
    }
    let errors = report.errors();
    let warnings = report.warnings();
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    if ok {
        let summary = match &result {
            Ok(loaded) => describe(&loaded.config),
            Err(_) => String::new(),
        };
        let _ = writeln!(
            out,
            "{}: valid ({summary}; {})",
            source.name,
            plural(warnings, "warning")
        );
    } else {
        let _ = writeln!(
            out,
            "{}: invalid: {}, {}",
            source.name,
            plural(errors, "error"),
            plural(warnings, "warning")
        );
    }
    ok
}

/// At most this many environment variables are listed by `validate`.
const MAX_LISTED_VARIABLES: usize = 100;

/// A name or path cut for one output line.
fn short(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((end, _)) => format!("{}...", s.get(..end).unwrap_or_default()),
        None => s.to_owned(),
    }
}

/// Top-level fields of an Envoy bootstrap configuration.
const ENVOY_BOOTSTRAP_FIELDS: [&str; 8] = [
    "static_resources",
    "dynamic_resources",
    "admin",
    "node",
    "layered_runtime",
    "overload_manager",
    "cluster_manager",
    "stats_sinks",
];

/// What a refused input is, when it is plainly not a filter configuration: YAML, an Envoy
/// configuration, an http_filters entry, or a Kubernetes resource; and how to get the filter's JSON
/// from it.
fn input_kind_hint(text: &str) -> Option<String> {
    let (value, yaml) = match serde_json::from_str::<Value>(text) {
        Ok(v) => (v, false),
        Err(_) => match serde_saphyr::from_str::<Value>(text) {
            Ok(v @ (Value::Object(_) | Value::Array(_))) => (v, true),
            _ => return None,
        },
    };
    let form = if yaml { "YAML" } else { "JSON" };
    let wanted = "validate expects the filter's own configuration, JSON like {\"outgoingAuth\": \
                  ...}: the string at configuration.value of the envoy.filters.http.wasm filter \
                  (typed_config.config.configuration.value)";
    let map = value.as_object();
    let field = |k: &str| map.and_then(|m| m.get(k));
    if let Some(kind) = field("kind").and_then(Value::as_str) {
        if field("apiVersion").is_some() {
            return Some(
                if kind == "MCPExternalAuthConfig" || kind == "VirtualMCPServer" {
                    format!(
                    "this is a Kubernetes {kind} ({form}); {wanted}. `outgoing-auth convert -f \
                     FILE` turns MCPExternalAuthConfig resources into it"
                )
                } else {
                    format!("this is a Kubernetes {kind} ({form}); {wanted}")
                },
            );
        }
    }
    let envoy = map.is_some_and(|m| ENVOY_BOOTSTRAP_FIELDS.iter().any(|k| m.contains_key(*k)));
    let filter_entry = field("typed_config").is_some() || field("vm_config").is_some();
    if envoy || filter_entry {
        let mut found = Vec::new();
        find_wasm_configurations(&value, "", &mut found);
        let what = if envoy {
            "an Envoy configuration"
        } else {
            "an Envoy filter entry"
        };
        let place = match found.as_slice() {
            [] => String::new(),
            paths => format!(
                "; this file has it at {}",
                paths
                    .iter()
                    .take(3)
                    .map(|p| short(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        return Some(format!("this is {what} ({form}); {wanted}{place}"));
    }
    if yaml {
        return Some(format!(
            "this is YAML; {wanted}. Write the same content as JSON (the filter does not read \
             YAML)"
        ));
    }
    None
}

/// Paths of the `configuration.value` of every wasm filter config (an object with `vm_config`).
fn find_wasm_configurations(v: &Value, path: &str, out: &mut Vec<String>) {
    if out.len() >= 3 {
        return;
    }
    match v {
        Value::Object(map) => {
            if map.contains_key("vm_config") && map.contains_key("configuration") {
                out.push(
                    format!("{path}.configuration.value")
                        .trim_start_matches('.')
                        .to_owned(),
                );
            }
            for (k, child) in map {
                find_wasm_configurations(child, &format!("{path}.{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                find_wasm_configurations(item, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// `default unauthenticated, 2 backends: github-mcp upstream_inject, internal header_injection`.
fn describe(c: &config::Config) -> String {
    let default = c
        .outgoing_auth
        .default
        .as_ref()
        .map_or("unauthenticated (implicit)", |s| s.type_name());
    let backends: Vec<String> = c
        .outgoing_auth
        .backends
        .iter()
        .take(report::MAX_LISTED_ITEMS)
        .map(|(name, s)| format!("{} {}", short(name), s.type_name()))
        .collect();
    let n = c.outgoing_auth.backends.len();
    let more = n.saturating_sub(backends.len());
    if n == 0 {
        format!("default {default}, no backends")
    } else {
        format!(
            "default {default}, {n} backend{}: {}{}",
            if n == 1 { "" } else { "s" },
            backends.join(", "),
            if more > 0 {
                format!(", ... and {} more", report::thousands(more))
            } else {
                String::new()
            }
        )
    }
}

/// Every `headerValueEnv` / `clientSecretEnv` in a config, with its JSON path (found by walking the
/// JSON, so it also works on a config that fails to load).
pub fn env_references(json: &[u8]) -> Vec<(String, String)> {
    let Ok(root) = serde_json::from_slice::<Value>(json) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk(&root, "", false, &mut out);
    return out;

    fn walk(v: &Value, path: &str, in_backends: bool, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    let child_path = if in_backends {
                        format!("{path}[{}]", quote(k))
                    } else if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    if let ("headerValueEnv" | "clientSecretEnv", Value::String(var)) =
                        (k.as_str(), child)
                    {
                        out.push((var.clone(), child_path.clone()));
                    }
                    walk(child, &child_path, k == "backends" && !in_backends, out);
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"), false, out);
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// convert

fn convert_command(args: &[String], io: &mut Io<'_>) -> i32 {
    let mut files: Vec<String> = Vec::new();
    let mut opts = convert::Options::default();
    let mut out = output::Options::default();
    let mut parsed = Args::new(args);
    while let Some(arg) = parsed.next_arg() {
        let result: Result<(), String> = (|| {
            match arg {
                Arg::Flag("-h" | "--help", _) => return Err(String::new()),
                Arg::Flag(f @ ("-f" | "--filename"), v) => {
                    files.push(parsed.value(f, v)?.to_owned())
                }
                Arg::Flag(f @ "--backend", v) => {
                    let (name, resource) = pair(f, parsed.value(f, v)?, '=', "NAME=RESOURCE")?;
                    opts.backends.push((name, resource));
                }
                Arg::Flag(f @ "--default", v) => {
                    let r = parsed.value(f, v)?;
                    if r.is_empty() {
                        return Err(format!("{f} needs a resource name"));
                    }
                    opts.default = Some(r.to_owned());
                }
                Arg::Flag(f @ "--upstreams", v) => {
                    let list: Vec<String> = parsed
                        .value(f, v)?
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect();
                    if list.is_empty() {
                        return Err(format!("{f} needs at least one provider name (a,b)"));
                    }
                    opts.upstreams = Some(list);
                }
                Arg::Flag(f @ "--metadata-namespace", v) => {
                    opts.tokens.metadata_namespace = Some(parsed.value(f, v)?.to_owned());
                }
                Arg::Flag(f @ "--metadata-key", v) => {
                    opts.tokens.metadata_key = Some(parsed.value(f, v)?.to_owned());
                }
                Arg::Flag(f @ "--key-prefix", v) => {
                    opts.tokens.key_prefix = Some(parsed.value(f, v)?.to_owned());
                }
                Arg::Flag(f @ "--sts-cluster", v) => {
                    let value = parsed.value(f, v)?;
                    match value.split_once('=') {
                        Some(_) => {
                            let (r, c) = pair(f, value, '=', "[RESOURCE=]NAME")?;
                            opts.sts_cluster_for.insert(r, c);
                        }
                        None if value.is_empty() => {
                            return Err(format!("{f} needs a cluster name"))
                        }
                        None => opts.sts_cluster = Some(value.to_owned()),
                    }
                }
                Arg::Flag(f @ ("-o" | "--output"), v) => {
                    let value = parsed.value(f, v)?;
                    out.format = Format::parse(value).ok_or_else(|| {
                        format!(
                            "{f} {}: the formats are {}",
                            quote(value),
                            Format::NAMES.join(", ")
                        )
                    })?;
                }
                Arg::Flag(f @ "--mcp-router", v) => {
                    no_value(f, v)?;
                    opts.mcp_router = true;
                }
                Arg::Flag(f @ "--native", v) => {
                    no_value(f, v)?;
                    out.native = true;
                    opts.native = true;
                }
                Arg::Flag(f @ "--wasm", v) => out.wasm = Some(parsed.value(f, v)?.to_owned()),
                Arg::Flag(f @ "--module", v) => {
                    out.module = Some(non_empty(f, parsed.value(f, v)?)?)
                }
                Arg::Flag(f @ "--sha256", v) => {
                    let sha = parsed.value(f, v)?;
                    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(format!("{f} needs 64 hex digits"));
                    }
                    out.sha256 = Some(sha.to_ascii_lowercase());
                }
                Arg::Flag(f @ "--name", v) => out.name = non_empty(f, parsed.value(f, v)?)?,
                Arg::Flag(f @ "--namespace", v) => {
                    out.namespace = Some(non_empty(f, parsed.value(f, v)?)?)
                }
                Arg::Flag(f @ "--selector", v) => {
                    out.selector
                        .push(pair(f, parsed.value(f, v)?, '=', "KEY=VALUE")?);
                }
                Arg::Flag(f @ "--phase", v) => {
                    let phase = parsed.value(f, v)?;
                    if !ISTIO_PHASES.contains(&phase) {
                        return Err(format!(
                            "{f} {}: the phases are {}",
                            quote(phase),
                            ISTIO_PHASES.join(", ")
                        ));
                    }
                    out.phase = Some(phase.to_owned());
                }
                Arg::Flag(f @ "--target-ref", v) => {
                    out.target_refs
                        .push(pair(f, parsed.value(f, v)?, '/', "KIND/NAME")?);
                }
                Arg::Flag(f, _) => return Err(format!("unknown option {f} for convert")),
                Arg::Positional(p) => {
                    return Err(format!(
                        "unexpected argument {}: input files go after -f",
                        quote(p)
                    ))
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {}
            Err(e) if e.is_empty() => return print(io.stdout, CONVERT_HELP),
            Err(e) => return usage_error(io, &e, CONVERT_HELP),
        }
    }
    if files.is_empty() {
        return usage_error(
            io,
            "convert needs input: -f FILE (or -f - for stdin)",
            CONVERT_HELP,
        );
    }
    if out.format == Format::Istio {
        opts.cluster_naming = ClusterNaming::Istio;
    }
    if out.format != Format::Istio && (!out.selector.is_empty() || out.phase.is_some()) {
        return usage_error(
            io,
            "--selector and --phase are for --output istio",
            CONVERT_HELP,
        );
    }
    if opts.mcp_router && out.format != Format::Envoy {
        return usage_error(io, output::MCP_ROUTER_NEEDS_ENVOY, CONVERT_HELP);
    }
    if let Err(e) = output::check_native(&out) {
        return usage_error(io, e, CONVERT_HELP);
    }
    if out.format != Format::EnvoyGateway && !out.target_refs.is_empty() {
        return usage_error(
            io,
            "--target-ref is for --output envoy-gateway",
            CONVERT_HELP,
        );
    }

    // Read every input; report every unreadable file and every bad document.
    let mut diags = Vec::new();
    let mut resources = Vec::new();
    let mut stdin_used = false;
    for file in &files {
        let sources = match read_sources(file, io, &mut stdin_used) {
            Ok(s) => s,
            Err(d) => {
                diags.push(d);
                continue;
            }
        };
        for source in sources {
            let docs = match input::documents(&source) {
                Ok(d) => d,
                Err(d) => {
                    diags.push(d);
                    continue;
                }
            };
            if docs.is_empty() {
                diags.push(Diagnostic::warning(
                    source.name.clone(),
                    "holds no document",
                ));
            }
            for doc in docs {
                match input::classify(doc) {
                    Ok((resource, note)) => {
                        resources.extend(resource);
                        diags.extend(note);
                    }
                    Err(d) => diags.push(d),
                }
            }
        }
    }
    let conversion = if diags.iter().any(Diagnostic::is_error) {
        Err(Vec::new())
    } else {
        convert::convert(&resources, &opts)
    };
    let conversion = match conversion {
        Ok(c) => c,
        Err(more) => {
            diags.extend(more);
            report(io.stderr, &diags);
            let errors = diags.iter().filter(|d| d.is_error()).count();
            let _ = writeln!(
                io.stderr,
                "error: conversion failed with {errors} error{}; nothing was written",
                if errors == 1 { "" } else { "s" }
            );
            return EXIT_INVALID;
        }
    };
    diags.extend(conversion.diagnostics.iter().cloned());
    let rendered = match output::render(&conversion, &out) {
        Ok(r) => r,
        Err(d) => return usage_error(io, &d.message, CONVERT_HELP),
    };
    if out.format == Format::Filter {
        diags.extend(output::notes(&conversion));
    }
    report(io.stderr, &diags);
    print(io.stdout, &rendered)
}

fn pair(flag: &str, value: &str, sep: char, shape: &str) -> Result<(String, String), String> {
    match value.split_once(sep) {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_owned(), b.to_owned())),
        _ => Err(format!("{flag} {}: expected {shape}", quote(value))),
    }
}

fn non_empty(flag: &str, value: &str) -> Result<String, String> {
    if value.is_empty() {
        Err(format!("{flag} needs a value"))
    } else {
        Ok(value.to_owned())
    }
}

/// Reads `-` (stdin, once), a file, or a directory's `*.yaml`, `*.yml` and `*.json` (sorted).
fn read_sources(
    arg: &str,
    io: &mut Io<'_>,
    stdin_used: &mut bool,
) -> Result<Vec<Source>, Diagnostic> {
    let path = Path::new(arg);
    if arg != "-" && path.is_dir() {
        let entries = std::fs::read_dir(path)
            .map_err(|e| Diagnostic::error(arg, format!("cannot read directory: {e}")))?;
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Diagnostic::error(
                arg,
                "the directory holds no *.yaml, *.yml or *.json file",
            ));
        }
        return files
            .iter()
            .map(|p| read_one(&p.to_string_lossy(), io, stdin_used))
            .collect();
    }
    Ok(vec![read_one(arg, io, stdin_used)?])
}

fn read_one(arg: &str, io: &mut Io<'_>, stdin_used: &mut bool) -> Result<Source, Diagnostic> {
    let mut bytes = Vec::new();
    let name = if arg == "-" {
        if *stdin_used {
            return Err(Diagnostic::error(
                "-",
                "standard input can be read only once",
            ));
        }
        *stdin_used = true;
        io.stdin
            .read_to_end(&mut bytes)
            .map_err(|e| Diagnostic::error("<stdin>", format!("cannot read: {e}")))?;
        "<stdin>".to_owned()
    } else {
        bytes =
            std::fs::read(arg).map_err(|e| Diagnostic::error(arg, format!("cannot read: {e}")))?;
        arg.to_owned()
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        Diagnostic::error(
            name.clone(),
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    Ok(Source { name, text })
}

// ---------------------------------------------------------------------------------------------
// crd

fn crd_command(args: &[String], io: &mut Io<'_>) -> i32 {
    let mut parsed = Args::new(args);
    if let Some(arg) = parsed.next_arg() {
        return match arg {
            Arg::Flag("-h" | "--help", _) => print(io.stdout, CRD_HELP),
            Arg::Flag(f, _) => usage_error(io, &format!("unknown option {f} for crd"), CRD_HELP),
            Arg::Positional(p) => usage_error(
                io,
                &format!("unexpected argument {}: crd takes none", quote(p)),
                CRD_HELP,
            ),
        };
    }
    match crd::manifest_yaml() {
        Ok(yaml) => print(io.stdout, &yaml),
        Err(e) => {
            let _ = writeln!(io.stderr, "error: cannot render the CRD: {e}");
            EXIT_INVALID
        }
    }
}

/// Runs with the process's real arguments, streams and environment.
pub fn main() -> i32 {
    let mut args = Vec::new();
    for a in std::env::args_os().skip(1) {
        match a.into_string() {
            Ok(s) => args.push(s),
            Err(bad) => {
                eprintln!("error: argument {bad:?} is not valid UTF-8");
                return EXIT_USAGE;
            }
        }
    }
    let stdin = std::io::stdin();
    let mut stdin = stdin.lock();
    let stdout = std::io::stdout();
    let mut stdout = stdout.lock();
    let stderr = std::io::stderr();
    let mut stderr = stderr.lock();
    let env = |name: &str| std::env::var(name).ok();
    let mut io = Io {
        stdin: &mut stdin,
        stdout: &mut stdout,
        stderr: &mut stderr,
        env: &env,
    };
    let status = run(&args, &mut io);
    let _ = io.stdout.flush();
    status
}
