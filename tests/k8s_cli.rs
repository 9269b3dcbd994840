//! `outgoing-auth validate | convert | crd`: ToolHive's converter cases, every input form, the
//! backend mapping, every output format parsed back, secrets, STS clusters, errors and --help.
//! Most tests drive `k8s::cli::run` in-process; a few run the real binary.

// Test code: a panic is how a test fails.
#![allow(
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use outgoing_auth::core::{config, validate};
use outgoing_auth::k8s::cli::{run, Io};
use serde_json::{json, Value};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\n{}",
                self.stdout, self.stderr
            )
        })
    }

    fn yaml(&self) -> Value {
        serde_saphyr::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not YAML ({e}):\n{}", self.stdout))
    }

    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "stderr:\n{}", self.stderr);
        self
    }

    fn failed(self) -> Self {
        assert_eq!(
            self.code, 1,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        assert_eq!(self.stdout, "", "nothing is written on failure");
        self
    }
}

fn cli_env(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Out {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut input = stdin.as_bytes();
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let code = run(
        &args,
        &mut Io {
            stdin: &mut input,
            stdout: &mut out,
            stderr: &mut err,
            env: &lookup,
        },
    );
    Out {
        code,
        stdout: String::from_utf8(out).unwrap(),
        stderr: String::from_utf8(err).unwrap(),
    }
}

fn cli(args: &[&str], stdin: &str) -> Out {
    cli_env(args, stdin, &[])
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .to_string_lossy()
        .into_owned()
}

/// A temporary directory for files a test writes.
fn tmp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("outgoing-auth-cli-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

fn resource(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "toolhive.stacklok.dev/v1beta1",
        "kind": "MCPExternalAuthConfig",
        "metadata": {"name": name, "namespace": "mcp"},
        "spec": spec
    })
}

fn github() -> Value {
    resource(
        "github",
        json!({"type": "upstreamInject", "upstreamInject": {"providerName": "github"}}),
    )
}

fn yaml_docs(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_saphyr::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The filter's own startup validation, with the given variables set.
fn loads(filter_json: &str, env: &[&str]) -> config::Config {
    let lookup = |name: &str| env.contains(&name).then(|| "value".to_owned());
    match validate::load(filter_json.as_bytes(), &lookup) {
        Ok(l) => l.config,
        Err(problems) => panic!("validate::load refused it: {problems:?}\n{filter_json}"),
    }
}

// ---------------------------------------------------------------------------------------------
// ToolHive's converter cases

#[test]
fn upstream_inject_github_converts_to_exactly_toolhives_strategy() {
    let out = cli(
        &[
            "convert",
            "-f",
            "-",
            "--backend",
            "github-mcp=github",
            "--upstreams",
            "github",
        ],
        &yaml_docs(&[github()]),
    )
    .ok();
    let v = out.json();
    assert_eq!(
        v["outgoingAuth"]["backends"]["github-mcp"],
        json!({"type":"upstream_inject","upstreamInject":{"providerName":"github"}})
    );
    assert_eq!(v["authServer"], json!({"upstreams": ["github"]}));
    assert_eq!(v["outgoingAuth"]["source"], "inline");
    loads(&out.stdout, &[]);
}

#[test]
fn nil_upstream_inject_is_toolhives_error_naming_resource_and_file() {
    let dir = tmp_dir("nil-ui");
    let f = write(
        &dir,
        "gh.yaml",
        &yaml_docs(&[resource("gh", json!({"type": "upstreamInject"}))]),
    );
    let out = cli(&["convert", "-f", &f, "--default", "gh"], "").failed();
    assert!(
        out.stderr.contains(&format!(
            "error: {f}: MCPExternalAuthConfig \"gh\": upstream inject config is nil"
        )),
        "{}",
        out.stderr
    );
}

#[test]
fn nil_token_exchange_and_header_injection_are_toolhives_errors() {
    let input = yaml_docs(&[
        resource("te", json!({"type": "tokenExchange"})),
        resource("hi", json!({"type": "headerInjection"})),
    ]);
    let out = cli(
        &[
            "convert",
            "-f",
            "-",
            "--backend",
            "a=te",
            "--backend",
            "b=hi",
        ],
        &input,
    )
    .failed();
    assert!(out.stderr.contains(
        "error: <stdin> (document 1): MCPExternalAuthConfig \"te\": token exchange config is nil"
    ));
    assert!(out.stderr.contains(
        "error: <stdin> (document 2): MCPExternalAuthConfig \"hi\": header injection config is nil"
    ));
    assert!(out.stderr.contains("conversion failed with 2 errors"));
}

#[test]
fn unknown_auth_type_is_toolhives_unsupported_auth_type() {
    for t in [
        "bearerToken",
        "awsSts",
        "embeddedAuthServer",
        "obo",
        "xaa",
        "upstream_inject",
    ] {
        let out = cli(
            &["convert", "-f", "-", "--default", "x"],
            &yaml_docs(&[resource("x", json!({"type": t}))]),
        )
        .failed();
        assert!(
            out.stderr.contains(&format!(
                "error: <stdin>: MCPExternalAuthConfig \"x\": unsupported auth type: {t}"
            )),
            "{}",
            out.stderr
        );
    }
}

fn corp_sts(extra: Value) -> Value {
    let mut te = json!({
        "tokenUrl": "https://sts.corp.example/oauth2/token",
        "clientId": "gateway",
        "clientSecretRef": {"name": "corp-sts-client", "key": "client-secret"},
        "audience": "https://corp-api.example",
        "scopes": ["read", "write"],
        "subjectTokenType": "id_token"
    });
    for (k, v) in extra.as_object().unwrap() {
        te[k] = v.clone();
    }
    resource(
        "corp-sts",
        json!({"type": "tokenExchange", "tokenExchange": te}),
    )
}

#[test]
fn token_exchange_with_subject_provider_name() {
    let out = cli(
        &[
            "convert",
            "-f",
            "-",
            "--backend",
            "corp=corp-sts",
            "--upstreams",
            "corporate-idp",
        ],
        &yaml_docs(&[corp_sts(json!({"subjectProviderName": "corporate-idp"}))]),
    )
    .ok();
    let te = &out.json()["outgoingAuth"]["backends"]["corp"];
    assert_eq!(
        te,
        &json!({"type": "token_exchange", "tokenExchange": {
            "tokenUrl": "https://sts.corp.example/oauth2/token",
            "cluster": "sts.corp.example",
            "clientId": "gateway",
            "clientSecretEnv": "TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_CORP_STS",
            "audience": "https://corp-api.example",
            "scopes": ["read", "write"],
            "subjectTokenType": "urn:ietf:params:oauth:token-type:id_token",
            "subjectProviderName": "corporate-idp"
        }})
    );
    let c = loads(
        &out.stdout,
        &["TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_CORP_STS"],
    );
    let config::Strategy::TokenExchange(t) = &c.outgoing_auth.backends["corp"] else {
        panic!("not a token exchange")
    };
    assert_eq!(t.subject_provider_name.as_deref(), Some("corporate-idp"));
}

#[test]
fn token_exchange_without_subject_provider_name_leaves_it_absent() {
    let out = cli(
        &["convert", "-f", "-", "--backend", "corp=corp-sts"],
        &yaml_docs(&[corp_sts(json!({}))]),
    )
    .ok();
    let te = &out.json()["outgoingAuth"]["backends"]["corp"]["tokenExchange"];
    assert!(te.get("subjectProviderName").is_none(), "{te}");
    assert!(out.json().get("authServer").is_none());
    let c = loads(
        &out.stdout,
        &["TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_CORP_STS"],
    );
    let config::Strategy::TokenExchange(t) = &c.outgoing_auth.backends["corp"] else {
        panic!("not a token exchange")
    };
    assert_eq!(t.subject_provider_name, None);
}

#[test]
fn token_exchange_without_subject_provider_notes_toolhives_default_when_upstreams_exist() {
    let out = cli(
        &[
            "convert",
            "-f",
            "-",
            "--backend",
            "corp=corp-sts",
            "--upstreams",
            "okta",
        ],
        &yaml_docs(&[corp_sts(json!({}))]),
    )
    .ok();
    assert!(
        out.stderr.contains("no subjectProviderName"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("first upstream (okta)"),
        "{}",
        out.stderr
    );
}

#[test]
fn secret_refs_become_toolhive_env_names_and_the_output_says_which_secret_key() {
    let input = yaml_docs(&[
        corp_sts(json!({})),
        resource(
            "internal-api",
            json!({"type": "headerInjection", "headerInjection": {
                "headerName": "X-API-Key",
                "valueSecretRef": {"name": "internal-api-key", "key": "api-key"}}}),
        ),
    ]);
    let out = cli(
        &[
            "convert",
            "-f",
            "-",
            "--backend",
            "corp=corp-sts",
            "--backend",
            "internal=internal-api",
        ],
        &input,
    )
    .ok();
    let v = out.json();
    assert_eq!(
        v["outgoingAuth"]["backends"]["internal"],
        json!({"type": "header_injection", "headerInjection": {
            "headerName": "X-API-Key",
            "headerValueEnv": "TOOLHIVE_HEADER_INJECTION_VALUE_INTERNAL_API"}})
    );
    assert_eq!(
        v["outgoingAuth"]["backends"]["corp"]["tokenExchange"]["clientSecretEnv"],
        "TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_CORP_STS"
    );
    assert!(out.stderr.contains(
        "note: the filter reads environment variable TOOLHIVE_HEADER_INJECTION_VALUE_INTERNAL_API; \
         it must carry Secret \"internal-api-key\", key \"api-key\""
    ), "{}", out.stderr);
    assert!(out.stderr.contains(
        "note: the filter reads environment variable TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_CORP_STS; \
         it must carry Secret \"corp-sts-client\", key \"client-secret\""
    ), "{}", out.stderr);
    loads(
        &out.stdout,
        &[
            "TOOLHIVE_HEADER_INJECTION_VALUE_INTERNAL_API",
            "TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_CORP_STS",
        ],
    );
}

#[test]
fn env_names_upper_case_the_name_and_replace_other_characters() {
    let out = cli(
        &["convert", "-f", "-", "--default", "my.auth-config2"],
        &yaml_docs(&[resource(
            "my.auth-config2",
            json!({"type": "headerInjection", "headerInjection": {
                "headerName": "X-Key", "valueSecretRef": {"name": "s", "key": "k"}}}),
        )]),
    )
    .ok();
    assert_eq!(
        out.json()["outgoingAuth"]["default"]["headerInjection"]["headerValueEnv"],
        "TOOLHIVE_HEADER_INJECTION_VALUE_MY_AUTH_CONFIG2"
    );
}

#[test]
fn two_resources_mapping_to_one_env_name_is_an_error() {
    let hi = |name: &str| {
        resource(
            name,
            json!({"type": "headerInjection", "headerInjection": {
                "headerName": "X-Key", "valueSecretRef": {"name": name, "key": "k"}}}),
        )
    };
    let out = cli(
        &[
            "convert",
            "-f",
            "-",
            "--backend",
            "a=a-b",
            "--backend",
            "b=a.b",
        ],
        &yaml_docs(&[hi("a-b"), hi("a.b")]),
    )
    .failed();
    assert!(
        out.stderr
            .contains("TOOLHIVE_HEADER_INJECTION_VALUE_A_B, which MCPExternalAuthConfig"),
        "{}",
        out.stderr
    );
}

#[test]
fn external_token_header_name_is_warned_about_not_silently_dropped() {
    let out = cli(
        &["convert", "-f", "-", "--default", "corp-sts"],
        &yaml_docs(&[corp_sts(
            json!({"externalTokenHeaderName": "X-Upstream-Token"}),
        )]),
    )
    .ok();
    assert!(out.stderr.contains(
        "warning: <stdin>: MCPExternalAuthConfig \"corp-sts\": spec.tokenExchange.externalTokenHeaderName \
         \"X-Upstream-Token\" has no equivalent in outgoing-auth"
    ), "{}", out.stderr);
    let te = &out.json()["outgoingAuth"]["default"]["tokenExchange"];
    assert!(te.get("externalTokenHeaderName").is_none());
}

#[test]
fn unknown_and_mistyped_fields_are_reported_with_their_path() {
    let out = cli(
        &["convert", "-f", "-", "--default", "x"],
        &yaml_docs(&[resource(
            "x",
            json!({"type": "upstreamInject", "upstreamInject": {"providerName": "gh", "scope": "x"}}),
        )]),
    )
    .failed();
    assert!(out.stderr.contains(
        "error: <stdin>: MCPExternalAuthConfig \"x\": spec.upstreamInject.scope: unknown field \"scope\"\n  hint: the fields allowed here are: providerName"
    ), "{}", out.stderr);
    let out = cli(
        &["convert", "-f", "-", "--default", "x"],
        &yaml_docs(&[corp_sts(json!({"scopes": [1]}))]),
    )
    .failed();
    assert!(
        out.stderr
            .contains("spec.tokenExchange.scopes[0]: invalid type: integer `1`"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_missing_required_field_names_the_resource_and_the_field() {
    let out = cli(
        &["convert", "-f", "-", "--default", "corp-sts"],
        &yaml_docs(&[resource(
            "corp-sts",
            json!({"type": "tokenExchange", "tokenExchange": {"audience": "https://corp"}}),
        )]),
    )
    .failed();
    assert!(
        out.stderr.contains(
            "error: <stdin>: MCPExternalAuthConfig \"corp-sts\": spec.tokenExchange.tokenUrl is \
             required (the STS token endpoint"
        ),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("missing field"), "{}", out.stderr);
    let out = cli(
        &["convert", "-f", "-", "--default", "gh"],
        &yaml_docs(&[resource(
            "gh",
            json!({"type": "upstreamInject", "upstreamInject": {}}),
        )]),
    )
    .failed();
    assert!(
        out.stderr
            .contains("MCPExternalAuthConfig \"gh\": spec.upstreamInject.providerName is required"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_misspelt_resource_field_gets_a_suggestion() {
    let out = cli(
        &["convert", "-f", "-", "--default", "corp-sts"],
        &yaml_docs(&[corp_sts(json!({"clientID": "gw"}))]),
    )
    .failed();
    assert!(
        out.stderr.contains(
            "spec.tokenExchange.clientID: unknown field \"clientID\"; did you mean \"clientId\"?"
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn the_empty_provider_example_reports_v01_and_v06_without_upstreams() {
    let out = cli(
        &[
            "convert",
            "-f",
            &repo("k8s/examples/invalid/empty-provider-name.yaml"),
            "--default",
            "github-empty",
        ],
        "",
    )
    .failed();
    assert!(
        out.stderr.contains("[V-01] outgoingAuth.default:"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("[V-06] outgoingAuth.default.upstreamInject.providerName:"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("conversion failed with 2 errors"),
        "{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// Input forms

#[test]
fn multi_document_yaml_with_other_kinds_and_empty_documents() {
    let input = format!(
        "---\n# a comment-only document\n---\n{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm}}\n---\n{}",
        yaml_docs(&[github()]),
        yaml_docs(&[resource("public", json!({"type": "unauthenticated"}))])
    );
    let out = cli(
        &[
            "convert",
            "-f",
            "-",
            "--backend",
            "gh=github",
            "--default",
            "public",
            "--upstreams",
            "github",
        ],
        &input,
    )
    .ok();
    let v = out.json();
    assert_eq!(
        v["outgoingAuth"]["default"],
        json!({"type": "unauthenticated"})
    );
    assert_eq!(
        v["outgoingAuth"]["backends"]["gh"]["type"],
        "upstream_inject"
    );
    assert!(
        out.stderr
            .contains("note: <stdin> (document 2): skipped v1 ConfigMap \"cm\""),
        "{}",
        out.stderr
    );
}

#[test]
fn json_input_single_array_and_kubectl_list() {
    let single = github().to_string();
    let array = json!([
        github(),
        resource("public", json!({"type": "unauthenticated"}))
    ])
    .to_string();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [github()]}).to_string();
    for input in [single, array, list] {
        let out = cli(
            &[
                "convert",
                "-f",
                "-",
                "--default",
                "github",
                "--upstreams",
                "github",
            ],
            &input,
        )
        .ok();
        assert_eq!(
            out.json()["outgoingAuth"]["default"]["type"],
            "upstream_inject"
        );
    }
}

#[test]
fn files_and_directories_are_read_in_order() {
    let out = cli(
        &[
            "convert",
            "-f",
            &repo("k8s/examples/upstream-inject.yaml"),
            "-f",
            &repo("k8s/examples/token-exchange.yaml"),
            "--backend",
            "gh=github",
            "--backend",
            "corp=corp-sts",
            "--upstreams",
            "github,corporate-idp",
        ],
        "",
    )
    .ok();
    assert_eq!(
        out.json()["outgoingAuth"]["backends"]
            .as_object()
            .unwrap()
            .len(),
        2
    );
    // The examples directory: four resources and the VirtualMCPServer that maps them.
    let out = cli(&["convert", "-f", &repo("k8s/examples")], "").ok();
    let v = out.json();
    assert_eq!(
        v["authServer"]["upstreams"],
        json!(["github", "corporate-idp"])
    );
    assert_eq!(
        v["outgoingAuth"]["backends"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec!["corp-api", "github-mcp", "internal"]
    );
    assert_eq!(
        v["outgoingAuth"]["default"],
        json!({"type": "unauthenticated"})
    );
}

#[test]
fn v1alpha1_and_v1beta1_both_convert() {
    let mut old = github();
    old["apiVersion"] = json!("toolhive.stacklok.dev/v1alpha1");
    old["metadata"]["name"] = json!("github-old");
    let out = cli(
        &[
            "convert",
            "-f",
            "-",
            "--backend",
            "a=github",
            "--backend",
            "b=github-old",
            "--upstreams",
            "github",
        ],
        &yaml_docs(&[github(), old]),
    )
    .ok();
    let v = out.json();
    assert_eq!(
        v["outgoingAuth"]["backends"]["a"],
        v["outgoingAuth"]["backends"]["b"]
    );
}

#[test]
fn wrong_api_version_or_kind_is_an_error_naming_the_document() {
    let mut wrong_version = github();
    wrong_version["apiVersion"] = json!("toolhive.stacklok.dev/v1");
    let out = cli(
        &["convert", "-f", "-", "--default", "github"],
        &yaml_docs(&[wrong_version]),
    )
    .failed();
    assert!(out.stderr.contains(
        "error: <stdin>: unsupported apiVersion \"toolhive.stacklok.dev/v1\" for MCPExternalAuthConfig"
    ), "{}", out.stderr);

    let mut wrong_group = github();
    wrong_group["apiVersion"] = json!("example.com/v1beta1");
    let out = cli(
        &["convert", "-f", "-", "--default", "github"],
        &yaml_docs(&[wrong_group]),
    )
    .failed();
    assert!(
        out.stderr
            .contains("unsupported apiVersion \"example.com/v1beta1\""),
        "{}",
        out.stderr
    );

    let mut wrong_kind = github();
    wrong_kind["kind"] = json!("MCPExternalAuthConfigs");
    let out = cli(
        &["convert", "-f", "-", "--default", "github"],
        &yaml_docs(&[wrong_kind]),
    )
    .failed();
    assert!(out
        .stderr
        .contains("skipped toolhive.stacklok.dev/v1beta1 MCPExternalAuthConfigs \"github\""));
    assert!(
        out.stderr
            .contains("error: the input holds no MCPExternalAuthConfig"),
        "{}",
        out.stderr
    );

    let out = cli(
        &["convert", "-f", "-", "--default", "x"],
        "just: a mapping\n",
    )
    .failed();
    assert!(out
        .stderr
        .contains("error: <stdin>: not a Kubernetes resource: apiVersion and kind are required"));
}

#[test]
fn syntax_errors_name_file_line_and_column() {
    let dir = tmp_dir("syntax");
    let f = write(&dir, "broken.yaml", "apiVersion: v1\nkind: [oops\n");
    let out = cli(&["convert", "-f", &f, "--default", "x"], "").failed();
    assert!(
        out.stderr
            .starts_with(&format!("error: {f}:2:7: invalid YAML: ")),
        "{}",
        out.stderr
    );
    let f = write(
        &dir,
        "broken.json",
        "{\"apiVersion\": \"v1\",\n \"kind\": }",
    );
    let out = cli(&["convert", "-f", &f, "--default", "x"], "").failed();
    assert!(
        out.stderr
            .starts_with(&format!("error: {f}:2:10: invalid JSON: ")),
        "{}",
        out.stderr
    );
    let out = cli(
        &["convert", "-f", "/nonexistent/x.yaml", "--default", "x"],
        "",
    )
    .failed();
    assert!(
        out.stderr
            .starts_with("error: /nonexistent/x.yaml: cannot read: "),
        "{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// The mapping

fn vmcp(outgoing: Value) -> Value {
    json!({
        "apiVersion": "toolhive.stacklok.dev/v1beta1",
        "kind": "VirtualMCPServer",
        "metadata": {"name": "eng"},
        "spec": {"groupRef": {"name": "g"}, "outgoingAuth": outgoing}
    })
}

fn reference(name: &str) -> Value {
    json!({"type": "externalAuthConfigRef", "externalAuthConfigRef": {"name": name}})
}

#[test]
fn virtual_server_maps_backends_and_default() {
    let input = yaml_docs(&[
        github(),
        resource("public", json!({"type": "unauthenticated"})),
        vmcp(json!({"source": "inline", "default": reference("public"),
                    "backends": {"github-mcp": reference("github")}})),
    ]);
    let out = cli(&["convert", "-f", "-", "--upstreams", "github"], &input).ok();
    let v = out.json();
    assert_eq!(
        v["outgoingAuth"]["default"],
        json!({"type": "unauthenticated"})
    );
    assert_eq!(
        v["outgoingAuth"]["backends"]["github-mcp"]["upstreamInject"]["providerName"],
        "github"
    );
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
}

#[test]
fn backend_flags_override_the_virtual_server() {
    let input = yaml_docs(&[
        github(),
        resource("public", json!({"type": "unauthenticated"})),
        vmcp(json!({"source": "inline", "backends": {"github-mcp": reference("github")}})),
    ]);
    let out = cli(
        &[
            "convert",
            "-f",
            "-",
            "--backend",
            "github-mcp=public",
            "--backend",
            "extra=github",
            "--upstreams",
            "github",
        ],
        &input,
    )
    .ok();
    let v = out.json();
    assert_eq!(
        v["outgoingAuth"]["backends"]["github-mcp"],
        json!({"type": "unauthenticated"})
    );
    assert_eq!(
        v["outgoingAuth"]["backends"]["extra"]["type"],
        "upstream_inject"
    );
    assert!(out.stderr.contains("note: --backend github-mcp=public: replaces the earlier mapping of backend \"github-mcp\""), "{}", out.stderr);
}

#[test]
fn virtual_server_upstream_providers_become_auth_server_upstreams() {
    let mut v = vmcp(json!({"source": "inline", "backends": {"gh": reference("github")}}));
    v["spec"]["authServerConfig"] = json!({"issuer": "https://gw", "upstreamProviders": [
        {"name": "github", "type": "oauth2"}, {"name": "okta", "type": "oidc"}]});
    let out = cli(&["convert", "-f", "-"], &yaml_docs(&[github(), v])).ok();
    assert_eq!(
        out.json()["authServer"]["upstreams"],
        json!(["github", "okta"])
    );
    // --upstreams wins.
    let mut v2 = vmcp(json!({"source": "inline", "backends": {"gh": reference("github")}}));
    v2["spec"]["authServerConfig"] = json!({"upstreamProviders": [{"name": "okta"}]});
    let out = cli(
        &["convert", "-f", "-", "--upstreams", "github"],
        &yaml_docs(&[github(), v2]),
    )
    .ok();
    assert_eq!(out.json()["authServer"]["upstreams"], json!(["github"]));
}

#[test]
fn virtual_server_discovered_entries_are_warned_about() {
    let input = yaml_docs(&[
        github(),
        vmcp(json!({"default": {"type": "discovered"}, "backends": {"gh": reference("github")}})),
    ]);
    let out = cli(&["convert", "-f", "-", "--upstreams", "github"], &input).ok();
    assert!(
        out.stderr
            .contains("spec.outgoingAuth.source is \"discovered\" (ToolHive's default)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("spec.outgoingAuth.default has type discovered"),
        "{}",
        out.stderr
    );
    assert!(out.json()["outgoingAuth"].get("default").is_none());
}

#[test]
fn virtual_server_errors_name_the_field() {
    let input = yaml_docs(&[
        github(),
        vmcp(json!({"source": "inline", "backends": {
            "a": {"type": "externalAuthConfigRef"},
            "b": {"type": "serviceAccount"},
            "c": reference("missing")}})),
    ]);
    let out = cli(&["convert", "-f", "-", "--upstreams", "github"], &input).failed();
    let e = &out.stderr;
    assert!(e.contains("error: <stdin> (document 2): VirtualMCPServer \"eng\": spec.outgoingAuth.backends[\"a\"]: externalAuthConfigRef.name is required"), "{e}");
    assert!(e.contains("spec.outgoingAuth.backends[\"b\"]: type \"serviceAccount\" must be one of: discovered, externalAuthConfigRef"), "{e}");
    assert!(e.contains("error: <stdin> (document 2): VirtualMCPServer \"eng\": spec.outgoingAuth.backends[\"c\"].externalAuthConfigRef: no MCPExternalAuthConfig named \"missing\" in the input\n  hint: the input defines: github"), "{e}");
}

#[test]
fn virtual_server_without_spec_or_with_a_bad_one() {
    let mut bare = vmcp(json!({}));
    bare.as_object_mut().unwrap().remove("spec");
    let out = cli(
        &[
            "convert",
            "-f",
            "-",
            "--default",
            "github",
            "--upstreams",
            "github",
        ],
        &yaml_docs(&[github(), bare]),
    )
    .ok();
    assert!(
        out.stderr
            .contains("VirtualMCPServer \"eng\": has no spec.outgoingAuth"),
        "{}",
        out.stderr
    );
    let mut bad = vmcp(json!({}));
    bad["spec"] = json!(["not", "a", "mapping"]);
    let out = cli(
        &[
            "convert",
            "-f",
            "-",
            "--default",
            "github",
            "--upstreams",
            "github",
        ],
        &yaml_docs(&[github(), bad]),
    )
    .failed();
    assert!(
        out.stderr
            .contains("VirtualMCPServer \"eng\": spec must be a mapping, found a list"),
        "{}",
        out.stderr
    );
}

#[test]
fn missing_mapping_and_missing_resources_are_errors() {
    let out = cli(&["convert", "-f", "-"], &yaml_docs(&[github()])).failed();
    assert!(
        out.stderr
            .contains("error: no backend is mapped to an MCPExternalAuthConfig"),
        "{}",
        out.stderr
    );
    let out = cli(
        &["convert", "-f", "-", "--default", "gitlab"],
        &yaml_docs(&[github()]),
    )
    .failed();
    assert!(out.stderr.contains("error: --default gitlab: no MCPExternalAuthConfig named \"gitlab\" in the input\n  hint: the input defines: github"), "{}", out.stderr);
}

#[test]
fn duplicate_resource_names_and_several_virtual_servers_are_errors() {
    let out = cli(
        &["convert", "-f", "-", "--default", "github"],
        &yaml_docs(&[github(), github()]),
    )
    .failed();
    assert!(
        out.stderr.contains(
            "MCPExternalAuthConfig \"github\" is defined twice (first in <stdin> (document 1))"
        ),
        "{}",
        out.stderr
    );
    let out = cli(
        &["convert", "-f", "-", "--default", "github"],
        &yaml_docs(&[github(), vmcp(json!({})), vmcp(json!({}))]),
    )
    .failed();
    assert!(
        out.stderr.contains("the input holds 2 VirtualMCPServers"),
        "{}",
        out.stderr
    );
}

#[test]
fn unused_resources_are_warned_about() {
    let out = cli(
        &[
            "convert",
            "-f",
            "-",
            "--default",
            "github",
            "--upstreams",
            "github",
        ],
        &yaml_docs(&[
            github(),
            resource("public", json!({"type": "unauthenticated"})),
        ]),
    )
    .ok();
    assert!(out.stderr.contains("warning: <stdin> (document 2): MCPExternalAuthConfig \"public\": not used by any backend"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------------------------
// The filter's startup validation, before deployment

#[test]
fn v01_fails_in_convert_without_upstreams() {
    let out = cli(
        &["convert", "-f", "-", "--backend", "github-mcp=github"],
        &yaml_docs(&[github()]),
    )
    .failed();
    assert!(out.stderr.contains(
        "error: <stdin>: MCPExternalAuthConfig \"github\" (backend \"github-mcp\"): [V-01] outgoingAuth.backends[\"github-mcp\"]: "
    ), "{}", out.stderr);
    assert!(
        out.stderr.contains("hint: pass --upstreams"),
        "{}",
        out.stderr
    );
}

#[test]
fn v02_fails_in_convert_for_a_provider_not_in_upstreams() {
    let out = cli(
        &[
            "convert",
            "-f",
            "-",
            "--default",
            "github",
            "--upstreams",
            "gitlab,okta",
        ],
        &yaml_docs(&[github()]),
    )
    .failed();
    assert!(out.stderr.contains(
        "error: <stdin>: MCPExternalAuthConfig \"github\" (the default strategy): [V-02] outgoingAuth.default.upstreamInject.providerName: "
    ), "{}", out.stderr);
    assert!(out
        .stderr
        .contains("hint: add the provider to --upstreams (now: gitlab,okta)"));
}

#[test]
fn v06_fails_in_convert_for_an_empty_provider_name() {
    let out = cli(
        &[
            "convert",
            "-f",
            "-",
            "--default",
            "x",
            "--upstreams",
            "github",
        ],
        &yaml_docs(&[resource(
            "x",
            json!({"type": "upstreamInject", "upstreamInject": {"providerName": " "}}),
        )]),
    )
    .failed();
    assert!(out.stderr.contains("[V-06]"), "{}", out.stderr);
    // subjectProviderName goes through V-02 as well.
    let out = cli(
        &[
            "convert",
            "-f",
            "-",
            "--default",
            "corp-sts",
            "--upstreams",
            "github",
        ],
        &yaml_docs(&[corp_sts(json!({"subjectProviderName": "okta"}))]),
    )
    .failed();
    assert!(
        out.stderr
            .contains("[V-02] outgoingAuth.default.tokenExchange.subjectProviderName"),
        "{}",
        out.stderr
    );
}

#[test]
fn filter_problems_in_converted_values_fail_convert() {
    // A header name the filter refuses (S-09) and a token URL it cannot call (S-13).
    let out = cli(
        &[
            "convert",
            "-f",
            "-",
            "--backend",
            "a=h",
            "--backend",
            "b=t",
            "--sts-cluster",
            "sts",
        ],
        &yaml_docs(&[
            resource(
                "h",
                json!({"type": "headerInjection", "headerInjection": {
                "headerName": "Content-Length", "valueSecretRef": {"name": "s", "key": "k"}}}),
            ),
            resource(
                "t",
                json!({"type": "tokenExchange", "tokenExchange": {"tokenUrl": "ftp://sts/t"}}),
            ),
        ]),
    )
    .failed();
    assert!(
        out.stderr
            .contains("MCPExternalAuthConfig \"h\" (backend \"a\"): [S-09]"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("MCPExternalAuthConfig \"t\" (backend \"b\"): [S-13]"),
        "{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// STS clusters

#[test]
fn sts_cluster_defaults_to_the_token_url_host_and_flags_override() {
    let input = yaml_docs(&[
        corp_sts(json!({"tokenUrl": "https://STS.corp.example:8443/oauth2/token"})),
        resource(
            "other",
            json!({"type": "tokenExchange", "tokenExchange": {"tokenUrl": "http://sts2.local/t"}}),
        ),
    ]);
    let args = [
        "convert",
        "-f",
        "-",
        "--backend",
        "a=corp-sts",
        "--backend",
        "b=other",
    ];
    let cluster = |out: &Out, b: &str| {
        out.json()["outgoingAuth"]["backends"][b]["tokenExchange"]["cluster"].clone()
    };

    let out = cli(&args, &input).ok();
    assert_eq!(cluster(&out, "a"), "sts.corp.example");
    assert_eq!(cluster(&out, "b"), "sts2.local");
    assert!(
        out.stderr
            .contains("calls Envoy cluster \"sts.corp.example\""),
        "{}",
        out.stderr
    );

    let mut all = args.to_vec();
    all.extend(["--sts-cluster", "sts"]);
    let out = cli(&all, &input).ok();
    assert_eq!(cluster(&out, "a"), "sts");
    assert_eq!(cluster(&out, "b"), "sts");

    let mut one = args.to_vec();
    one.extend(["--sts-cluster", "sts", "--sts-cluster", "other=local_sts"]);
    let out = cli(&one, &input).ok();
    assert_eq!(cluster(&out, "a"), "sts");
    assert_eq!(cluster(&out, "b"), "local_sts");
}

#[test]
fn token_url_without_host_needs_sts_cluster() {
    let out = cli(
        &["convert", "-f", "-", "--default", "t"],
        &yaml_docs(&[resource(
            "t",
            json!({"type": "tokenExchange", "tokenExchange": {"tokenUrl": "/oauth2/token"}}),
        )]),
    )
    .failed();
    assert!(
        out.stderr.contains(
            "cannot name an STS cluster after spec.tokenExchange.tokenUrl \"/oauth2/token\""
        ),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--sts-cluster t=CLUSTER"));
}

// ---------------------------------------------------------------------------------------------
// Output formats

fn examples(format: &[&str]) -> Out {
    let mut args = vec!["convert", "-f", "k8s/examples"];
    args.extend(format);
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if *a == "k8s/examples" {
                repo(a)
            } else {
                a.to_string()
            }
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cli(&args, "").ok()
}

const SECRET_ENVS: [&str; 2] = [
    "TOOLHIVE_HEADER_INJECTION_VALUE_INTERNAL_API",
    "TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_CORP_STS",
];

#[test]
fn filter_output_is_the_filter_json() {
    let out = examples(&[]);
    assert!(out.stdout.ends_with("}\n"));
    loads(&out.stdout, &SECRET_ENVS);
    // The default format is `filter`.
    assert_eq!(examples(&["-o", "filter"]).stdout, out.stdout);
}

#[test]
fn envoy_output_is_an_http_filters_entry() {
    let filter = examples(&[]).json();
    let out = examples(&["-o", "envoy", "--wasm", "/opt/outgoing_auth.wasm"]);
    let v = out.yaml();
    let entry = &v[0];
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(entry["name"], "envoy.filters.http.wasm");
    let tc = &entry["typed_config"];
    assert_eq!(
        tc["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
    );
    let c = &tc["config"];
    assert_eq!(c["failure_policy"], "FAIL_CLOSED");
    assert_eq!(c["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
    assert_eq!(
        c["vm_config"]["code"]["local"]["filename"],
        "/opt/outgoing_auth.wasm"
    );
    assert_eq!(
        c["vm_config"]["environment_variables"]["host_env_keys"],
        json!(SECRET_ENVS)
    );
    assert_eq!(
        c["configuration"]["@type"],
        "type.googleapis.com/google.protobuf.StringValue"
    );
    let value = c["configuration"]["value"].as_str().unwrap();
    assert_eq!(serde_json::from_str::<Value>(value).unwrap(), filter);
    loads(value, &SECRET_ENVS);
    // Default module path, as in envoy/envoy.yaml.
    let v = examples(&["-o", "envoy"]).yaml();
    assert_eq!(
        v[0]["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"],
        "/etc/envoy/outgoing_auth.wasm"
    );
}

#[test]
fn istio_output_is_a_wasm_plugin() {
    let out = examples(&[
        "-o",
        "istio",
        "--wasm",
        "oci://registry.example.com/outgoing-auth:0.1.0",
        "--sha256",
        &"AB".repeat(32),
        "--selector",
        "app=mcp-gateway",
        "--name",
        "mcp-auth",
        "--namespace",
        "mcp",
    ]);
    let v = out.yaml();
    assert_eq!(v["apiVersion"], "extensions.istio.io/v1alpha1");
    assert_eq!(v["kind"], "WasmPlugin");
    assert_eq!(
        v["metadata"],
        json!({"name": "mcp-auth", "namespace": "mcp"})
    );
    let spec = &v["spec"];
    assert_eq!(spec["phase"], "STATS");
    assert_eq!(spec["failStrategy"], "FAIL_CLOSE");
    assert_eq!(
        spec["url"],
        "oci://registry.example.com/outgoing-auth:0.1.0"
    );
    assert_eq!(spec["sha256"], "ab".repeat(32));
    assert_eq!(
        spec["selector"],
        json!({"matchLabels": {"app": "mcp-gateway"}})
    );
    assert_eq!(
        spec["vmConfig"]["env"],
        json!(SECRET_ENVS.map(|e| json!({"name": e, "valueFrom": "HOST"})))
    );
    // pluginConfig is the filter config, with Istio's name for the STS cluster.
    let plugin = &spec["pluginConfig"];
    assert_eq!(
        plugin["outgoingAuth"]["backends"]["corp-api"]["tokenExchange"]["cluster"],
        "outbound|443||sts.corp.example"
    );
    loads(&plugin.to_string(), &SECRET_ENVS);
    assert!(out.stdout.contains(
        "# Phase STATS (the default; --phase overrides it): Istio inserts the filter after\n"
    ));
    let v = examples(&["-o", "istio", "--wasm", "oci://r/i:t", "--phase", "AUTHZ"]).yaml();
    assert_eq!(v["spec"]["phase"], "AUTHZ");
    assert!(v["spec"].get("selector").is_none());
    api_fields("istio", &v);
    api_fields("istio", &out.yaml());
}

/// The phase follows from what the config reads and the output says why; `--phase` overrides.
#[test]
fn istio_phase_runs_after_the_auth_step_and_says_why() {
    let istio = |file: &str, extra: &[&str]| {
        let mut args = vec![
            "convert".to_owned(),
            "-f".to_owned(),
            repo(file),
            "-o".to_owned(),
            "istio".to_owned(),
            "--wasm".to_owned(),
            "oci://r/i:t".to_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cli(&args, "").ok();
        let comments: String = out
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .collect::<Vec<_>>()
            .join(" ");
        (
            out.yaml()["spec"]["phase"].as_str().unwrap().to_owned(),
            comments,
        )
    };
    // upstream_inject reads tokens an auth step wrote: after Istio's auth filters, and it says so
    let (phase, why) = istio(
        "k8s/examples/upstream-inject.yaml",
        &["--default", "github", "--upstreams", "github"],
    );
    assert_eq!(phase, "STATS");
    assert!(why.contains("after its authentication (RequestAuthentication) and authorization (AuthorizationPolicy, CUSTOM ext_authz included) filters"), "{why}");
    assert!(
        why.contains("This config reads upstream tokens from dynamic metadata"),
        "{why}"
    );
    // a static header reads no token, but still replaces the Authorization Istio checks
    let (phase, why) = istio(
        "k8s/examples/header-injection.yaml",
        &["--default", "internal-api"],
    );
    assert_eq!(phase, "STATS");
    assert!(!why.contains("upstream tokens"), "{why}");
    assert!(
        why.contains("before the filter replaces or removes it"),
        "{why}"
    );
    // AUTHN on request: honoured, with the warning
    let (phase, why) = istio(
        "k8s/examples/upstream-inject.yaml",
        &[
            "--default",
            "github",
            "--upstreams",
            "github",
            "--phase",
            "AUTHN",
        ],
    );
    assert_eq!(phase, "AUTHN");
    assert!(
        why.contains("Phase AUTHN (--phase): Istio inserts the filter before its authentication"),
        "{why}"
    );
    assert!(why.contains("upstream_inject answers 401"), "{why}");
    // an exchange of the client's own token: RequestAuthentication must forward it
    let dir = tmp_dir("phase-client-token");
    let f = write(&dir, "x.yaml", &yaml_docs(&[corp_sts(json!({}))]));
    let args = [
        "convert",
        "-f",
        &f,
        "--default",
        "corp-sts",
        "-o",
        "istio",
        "--wasm",
        "oci://r/i:t",
    ];
    let out = cli(&args, "").ok();
    assert!(
        out.stdout.contains("forwardOriginalToken: true"),
        "{}",
        out.stdout
    );
}

#[test]
fn envoy_gateway_output_is_an_extension_policy() {
    let filter = examples(&[]).json();
    let out = examples(&[
        "-o",
        "envoy-gateway",
        "--wasm",
        "oci://registry.example.com/outgoing-auth:0.1.0",
        "--target-ref",
        "Gateway/mcp-gateway",
        "--target-ref",
        "HTTPRoute/mcp",
    ]);
    let v = out.yaml();
    assert_eq!(v["apiVersion"], "gateway.envoyproxy.io/v1alpha1");
    assert_eq!(v["kind"], "EnvoyExtensionPolicy");
    assert_eq!(
        v["spec"]["targetRefs"],
        json!([
            {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "mcp-gateway"},
            {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "mcp"}
        ])
    );
    let wasm = &v["spec"]["wasm"][0];
    assert_eq!(
        wasm["code"],
        json!({"type": "Image", "image": {"url": "registry.example.com/outgoing-auth:0.1.0"}})
    );
    assert_eq!(wasm["config"], filter);
    assert_eq!(wasm["env"]["hostKeys"], json!(SECRET_ENVS));
    assert_eq!(wasm["failOpen"], false);
    loads(&wasm["config"].to_string(), &SECRET_ENVS);
    let v = examples(&[
        "-o",
        "envoy-gateway",
        "--wasm",
        "https://x/outgoing_auth.wasm",
        "--target-ref",
        "Gateway/g",
    ])
    .yaml();
    assert_eq!(
        v["spec"]["wasm"][0]["code"],
        json!({"type": "HTTP", "http": {"url": "https://x/outgoing_auth.wasm"}})
    );
    api_fields("envoy-gateway", &v);
    api_fields("envoy-gateway", &out.yaml());
}

/// `--sha256` goes where Envoy Gateway reads it: in the code source (`code.image.sha256`,
/// `code.http.sha256`), not `code.sha256`.
#[test]
fn envoy_gateway_sha256_is_a_field_of_the_code_source() {
    let sha = "0123456789abcdef".repeat(4);
    for (wasm, code) in [
        (
            "oci://registry.example.com/outgoing-auth:0.1.0",
            json!({"type": "Image", "image": {"url": "registry.example.com/outgoing-auth:0.1.0", "sha256": sha}}),
        ),
        (
            "https://x/outgoing_auth.wasm",
            json!({"type": "HTTP", "http": {"url": "https://x/outgoing_auth.wasm", "sha256": sha}}),
        ),
    ] {
        let v = examples(&[
            "-o",
            "envoy-gateway",
            "--wasm",
            wasm,
            "--sha256",
            &sha.to_ascii_uppercase(),
            "--target-ref",
            "Gateway/g",
        ])
        .yaml();
        assert_eq!(v["spec"]["wasm"][0]["code"], code, "{wasm}");
        api_fields("envoy-gateway", &v);
    }
}

/// Every key of `doc` is a field of the API types in tests/data/k8s-api-fields.json (copied
/// from the Go structs and protos of Envoy Gateway and Istio), with a value of its type; the
/// document's `kind` picks its root type.
fn api_fields(api: &str, doc: &Value) {
    let text = std::fs::read_to_string(repo("tests/data/k8s-api-fields.json")).unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    let types = &all[api]["types"];
    let kind = doc["kind"].as_str().unwrap();
    let root = all[api]["roots"][kind]
        .as_str()
        .unwrap_or_else(|| panic!("{api} has no kind {kind} in k8s-api-fields.json"));
    check(types, root, doc, api);

    fn check(types: &Value, ty: &str, v: &Value, path: &str) {
        if ty == "JSON" {
            return;
        }
        if let Some(item) = ty.strip_prefix("[]") {
            let items = v.as_array().unwrap_or_else(|| panic!("{path}: not a list"));
            for (i, x) in items.iter().enumerate() {
                check(types, item, x, &format!("{path}[{i}]"));
            }
            return;
        }
        if let Some(values) = ty.strip_prefix("enum:") {
            let s = v.as_str().unwrap_or_else(|| panic!("{path}: not a string"));
            assert!(
                values.split('|').any(|e| e == s),
                "{path}: {s} is not one of {values}"
            );
            return;
        }
        match ty {
            "string" => assert!(v.is_string(), "{path}: not a string: {v}"),
            "bool" => assert!(v.is_boolean(), "{path}: not a bool: {v}"),
            "int" => assert!(v.is_i64() || v.is_u64(), "{path}: not an int: {v}"),
            "map[string]string" => {
                let m = v.as_object().unwrap_or_else(|| panic!("{path}: not a map"));
                assert!(m.values().all(Value::is_string), "{path}: {v}");
            }
            _ => {
                let fields = types[ty]
                    .as_object()
                    .unwrap_or_else(|| panic!("no type {ty} in k8s-api-fields.json"));
                let m = v
                    .as_object()
                    .unwrap_or_else(|| panic!("{path}: not an object: {v}"));
                for (k, x) in m {
                    let field_ty = fields.get(k).unwrap_or_else(|| {
                        panic!(
                            "{path}.{k}: {ty} has no field {k:?} (it has {:?})",
                            fields.keys().collect::<Vec<_>>()
                        )
                    });
                    check(types, field_ty.as_str().unwrap(), x, &format!("{path}.{k}"));
                }
            }
        }
    }
}

/// One rule for `--wasm`, in `convert --help` line for line, and the same in the code.
#[test]
fn wasm_locations_follow_one_rule_stated_in_the_help() {
    use outgoing_auth::k8s::output::{module_location, Format, ModuleKind, WASM_RULE};
    let help = cli(&["convert", "--help"], "").ok().stdout;
    for line in WASM_RULE {
        assert!(
            help.contains(&format!("\n                                 {line}\n")),
            "help lacks: {line}"
        );
    }
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    for line in WASM_RULE {
        assert!(readme.contains(line), "README lacks: {line}");
    }
    let samples = [
        ("/opt/outgoing_auth.wasm", Some(ModuleKind::Path)),
        ("file:///opt/outgoing_auth.wasm", Some(ModuleKind::File)),
        (
            "oci://registry.example.com/outgoing-auth:0.1.0",
            Some(ModuleKind::Oci),
        ),
        ("https://x/outgoing_auth.wasm", Some(ModuleKind::Https)),
        ("http://x/outgoing_auth.wasm", None),
        ("ftp://x/outgoing_auth.wasm", None),
        ("file://relative.wasm", None),
        ("oci://", None),
    ];
    for (format, name, rule) in [
        (Format::Envoy, "envoy", WASM_RULE[0]),
        (Format::Istio, "istio", WASM_RULE[1]),
        (Format::EnvoyGateway, "envoy-gateway", WASM_RULE[2]),
    ] {
        let accepted = ModuleKind::accepted(format);
        assert!(rule.starts_with(&format!("{name}: ")));
        // the rule's words name exactly the kinds the code takes
        assert_eq!(
            rule.contains("file path"),
            accepted.contains(&ModuleKind::Path),
            "{rule}"
        );
        assert_eq!(
            rule.contains("file:///PATH"),
            accepted.contains(&ModuleKind::File),
            "{rule}"
        );
        assert_eq!(
            rule.contains("oci://"),
            accepted.contains(&ModuleKind::Oci),
            "{rule}"
        );
        assert_eq!(
            rule.contains("https://"),
            accepted.contains(&ModuleKind::Https),
            "{rule}"
        );
        assert_eq!(rule.contains("required"), format != Format::Envoy, "{rule}");
        for (wasm, kind) in samples {
            let got = module_location(format, Some(wasm));
            let expected = kind.filter(|k| accepted.contains(k));
            match (&got, expected) {
                (Ok(Some((k, _))), Some(e)) => assert_eq!(*k, e, "{name} {wasm}"),
                (Err(d), None) => {
                    assert!(d.message.contains(rule), "{name} {wasm}: {}", d.message);
                    assert!(
                        d.message.contains(WASM_RULE[3]),
                        "{name} {wasm}: {}",
                        d.message
                    );
                }
                _ => panic!("{name} {wasm}: {got:?}, expected {expected:?}"),
            }
            // and the same through the command line
            let mut args = vec!["-o", name, "--wasm", wasm];
            if format == Format::EnvoyGateway {
                args.extend(["--target-ref", "Gateway/g"]);
            }
            let mut full = vec!["convert".to_owned(), "-f".to_owned(), repo("k8s/examples")];
            full.extend(args.iter().map(|a| a.to_string()));
            let full: Vec<&str> = full.iter().map(String::as_str).collect();
            let out = cli(&full, "");
            assert_eq!(
                out.code == 0,
                expected.is_some(),
                "{name} {wasm}: {}",
                out.stderr
            );
        }
    }
    assert!(module_location(Format::Envoy, None).unwrap().is_none());
    assert!(module_location(Format::Istio, None).is_err());
    assert!(module_location(Format::EnvoyGateway, None).is_err());
}

#[test]
fn yaml_outputs_say_which_secret_key_each_variable_carries() {
    for format in [
        vec!["-o", "envoy"],
        vec!["-o", "istio", "--wasm", "oci://r/i:t"],
        vec![
            "-o",
            "envoy-gateway",
            "--wasm",
            "oci://r/i:t",
            "--target-ref",
            "Gateway/g",
        ],
    ] {
        let out = examples(&format);
        let header: Vec<&str> = out
            .stdout
            .lines()
            .take_while(|l| l.starts_with('#'))
            .collect();
        let header = header.join("\n");
        assert!(header.contains(
            "#   TOOLHIVE_HEADER_INJECTION_VALUE_INTERNAL_API: Secret \"internal-api-key\", key \"api-key\" (MCPExternalAuthConfig \"internal-api\" spec.headerInjection.valueSecretRef)"
        ), "{format:?}:\n{header}");
        assert!(header.contains(
            "#   TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_CORP_STS: Secret \"corp-sts-client\", key \"client-secret\""
        ), "{header}");
        assert!(
            header.contains("#       secretKeyRef: {name: \"internal-api-key\", key: \"api-key\"}"),
            "{header}"
        );
        assert!(
            header.contains("Envoy clusters the token exchanges call:"),
            "{header}"
        );
        // The notes are in the output itself, not on stderr.
        assert!(!out.stderr.contains("the filter reads environment variable"));
    }
}

#[test]
fn output_flags_are_checked() {
    let f = repo("k8s/examples");
    let cases: [(&[&str], &str); 6] = [
        (&["-o", "istio"], "--output istio needs --wasm (--wasm, istio: oci://"),
        (
            &["-o", "envoy-gateway", "--wasm", "oci://r/i"],
            "--output envoy-gateway needs --target-ref KIND/NAME",
        ),
        (
            &[
                "-o",
                "envoy-gateway",
                "--wasm",
                "/local",
                "--target-ref",
                "Gateway/g",
            ],
            "--output envoy-gateway does not take a plain path (--wasm, envoy-gateway: oci:// or https://; required",
        ),
        (
            &["-o", "envoy", "--wasm", "https://x/y.wasm"],
            "--output envoy does not take an https:// URL (--wasm, envoy: a file path or file:///PATH;",
        ),
        (
            &["-o", "yaml"],
            "-o \"yaml\": the formats are filter, envoy, istio, envoy-gateway",
        ),
        (
            &["--selector", "a=b"],
            "--selector and --phase are for --output istio",
        ),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["convert", "-f", &f];
        args.extend(flags);
        let out = cli(&args, "");
        assert_eq!(out.code, 2, "{flags:?}: {}", out.stderr);
        assert!(out.stderr.contains(expected), "{flags:?}: {}", out.stderr);
        assert!(out
            .stderr
            .contains("For more information, try `outgoing-auth convert --help`."));
    }
}

// ---------------------------------------------------------------------------------------------
// validate

const VALID: &str = r#"{
  "authServer": {"upstreams": ["github"]},
  "outgoingAuth": {"default": {"type": "unauthenticated"}, "backends": {
    "github-mcp": {"type": "upstream_inject", "upstreamInject": {"providerName": "github"}},
    "internal": {"type": "header_injection", "headerInjection": {"headerName": "X-Key", "headerValueEnv": "INTERNAL_KEY"}},
    "corp": {"type": "token_exchange", "tokenExchange": {"tokenUrl": "https://sts/t", "cluster": "sts",
      "clientId": "gw", "clientSecretEnv": "STS_SECRET"}}
  }}
}"#;

#[test]
fn validate_lists_every_variable_and_checks_it_in_its_own_environment() {
    let dir = tmp_dir("validate");
    let f = write(&dir, "config.json", VALID);
    let out = cli_env(
        &["validate", &f],
        "",
        &[("INTERNAL_KEY", "k"), ("STS_SECRET", "s")],
    )
    .ok();
    assert!(
        out.stdout
            .contains(&format!("{f}: environment variables this config needs:")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("  STS_SECRET    set      outgoingAuth.backends[\"corp\"].tokenExchange.clientSecretEnv"), "{}", out.stdout);
    assert!(out.stdout.contains("  INTERNAL_KEY  set      outgoingAuth.backends[\"internal\"].headerInjection.headerValueEnv"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("{f}: valid (default unauthenticated, 3 backends: corp token_exchange, github-mcp upstream_inject, internal header_injection; 0 warnings)")), "{}", out.stdout);
    assert!(!out.stdout.contains("\"k\""), "values are never printed");

    let out = cli_env(&["validate", &f], "", &[("INTERNAL_KEY", "k")]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains(&format!("error: {f}: [S-11] outgoingAuth.backends[\"corp\"].tokenExchange.clientSecretEnv: environment variable STS_SECRET not set or empty")), "{}", out.stdout);
    assert!(
        out.stdout.contains("  STS_SECRET    NOT SET"),
        "{}",
        out.stdout
    );
    assert!(out
        .stdout
        .contains(&format!("{f}: invalid: 1 error, 0 warnings")));
}

#[test]
fn validate_prints_every_problem_with_its_rule_id() {
    let bad = r#"{"outgoingAuth": {"backends": {
        "a": {"type": "upstream_inject", "upstreamInject": {"providerName": "github"}},
        "b": {"type": "header_injection", "headerInjection": {"headerName": "bad header", "headerValue": "v"}},
        "c": {"type": "oauth"}}}, "extra": 1}"#;
    let out = cli(&["validate", "-"], bad);
    assert_eq!(out.code, 1);
    for rule in [
        "[S-02] extra",
        "[S-09]",
        "[S-05]",
        "[V-01] outgoingAuth.backends[\"a\"]",
    ] {
        assert!(
            out.stdout.contains(rule),
            "{rule} missing in\n{}",
            out.stdout
        );
    }
    assert!(
        out.stdout
            .contains("<stdin>: invalid: 4 errors, 0 warnings"),
        "{}",
        out.stdout
    );
}

#[test]
fn validate_v06_says_what_to_do() {
    let bad = r#"{"authServer": {"upstreams": ["github", "atlassian"]}, "outgoingAuth": {"backends": {
        "a": {"type": "upstream_inject", "upstreamInject": {"providerName": ""}}}}}"#;
    let out = cli(&["validate", "-"], bad);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains(
            "[V-06] outgoingAuth.backends[\"a\"].upstreamInject.providerName: outgoingAuth \
             backend \"a\" upstream_inject requires a non-empty providerName; set it to one of \
             authServer.upstreams: github, atlassian"
        ),
        "{}",
        out.stdout
    );
}

/// `validate` on something that is not the filter's JSON says what it is and what it wants.
fn validate_note(input: &str) -> String {
    let out = cli(&["validate", "-"], input);
    assert_eq!(out.code, 1, "{}", out.stdout);
    let notes: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("note: <stdin>: "))
        .collect();
    assert_eq!(notes.len(), 1, "{}", out.stdout);
    assert!(
        notes[0].contains("validate expects the filter's own configuration, JSON like"),
        "{}",
        notes[0]
    );
    notes[0].to_owned()
}

#[test]
fn validate_on_an_envoy_config_says_where_the_filter_config_is() {
    let envoy_yaml = std::fs::read_to_string(repo("envoy/envoy.yaml")).unwrap();
    let note = validate_note(&envoy_yaml);
    assert!(
        note.contains("this is an Envoy configuration (YAML)"),
        "{note}"
    );
    assert!(
        note.contains("configuration.value of the envoy.filters.http.wasm filter"),
        "{note}"
    );
    // The first three of the demo's five instances, in the order of the keys: the accepting
    // instances of the aggregated endpoint's clusters come before the listeners' ones.
    assert!(
        note.contains(
            "this file has it at static_resources.clusters[6].typed_extension_protocol_options\
             .envoy.extensions.upstreams.http.v3.HttpProtocolOptions.http_filters[0]\
             .typed_config.config.configuration.value, "
        ),
        "{note}"
    );
    // The same in JSON: the S-02 lines, and the same note.
    let v: Value = serde_saphyr::from_str(&envoy_yaml).unwrap();
    let note = validate_note(&v.to_string());
    assert!(
        note.contains("this is an Envoy configuration (JSON)"),
        "{note}"
    );
    // One http_filters entry.
    let entry = json!({"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"vm_config": {"runtime": "envoy.wasm.runtime.v8"},
                   "configuration": {"value": "{}"}}}});
    let note = validate_note(&entry.to_string());
    assert!(
        note.contains("this is an Envoy filter entry (JSON)"),
        "{note}"
    );
    assert!(
        note.contains("this file has it at typed_config.config.configuration.value"),
        "{note}"
    );
}

#[test]
fn validate_on_yaml_or_a_resource_says_what_it_expects() {
    let note = validate_note("outgoingAuth:\n  default:\n    type: unauthenticated\n");
    assert!(note.contains("this is YAML"), "{note}");
    assert!(note.contains("Write the same content as JSON"), "{note}");
    let out = cli(
        &["validate", "-"],
        "outgoingAuth:\n  default:\n    type: unauthenticated\n",
    );
    assert!(
        !out.stdout
            .contains("invalid JSON at line 1 column 1: expected value\n"),
        "the S-01 line says more than serde: {}",
        out.stdout
    );
    let resource = std::fs::read_to_string(repo("k8s/examples/upstream-inject.yaml")).unwrap();
    let note = validate_note(&resource);
    assert!(
        note.contains("this is a Kubernetes MCPExternalAuthConfig (YAML)"),
        "{note}"
    );
    assert!(note.contains("outgoing-auth convert -f FILE"), "{note}");
    // Broken JSON is just broken JSON: no note.
    let out = cli(&["validate", "-"], "{\"outgoingAuth\": {,}");
    assert!(!out.stdout.contains("note:"), "{}", out.stdout);
}

#[test]
fn validate_matches_config_load_on_many_configs() {
    // The command's verdict is validate::load's, whatever the config.
    let configs = [
        VALID.to_owned(),
        "{}".to_owned(),
        "[]".to_owned(),
        "not json".to_owned(),
        r#"{"outgoingAuth": {}}"#.to_owned(),
        r#"{"outgoingAuth": {"default": {"type": "token_exchange", "tokenExchange": {"tokenUrl": "https://s/t", "cluster": "c", "clientId": "i", "clientSecret": "inline"}}}}"#.to_owned(),
    ];
    let env = [("INTERNAL_KEY", "k"), ("STS_SECRET", "s")];
    for c in configs {
        let out = cli_env(&["validate", "-q", "-"], &c, &env);
        let lookup = |n: &str| {
            env.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        };
        let expected = validate::load(c.as_bytes(), &lookup);
        assert_eq!(out.code == 0, expected.is_ok(), "{c}: {}", out.stdout);
        let problems = match expected {
            Ok(l) => l.warnings,
            Err(p) => p,
        };
        assert_eq!(
            out.stdout
                .lines()
                .filter(|l| !l.starts_with("note: "))
                .count(),
            problems.lines().count(),
            "{c}: {}",
            out.stdout
        );
        for p in &problems {
            assert!(out.stdout.contains(&p.to_string()), "{p} missing");
        }
    }
}

#[test]
fn validate_accepts_convert_output() {
    let converted = examples(&[]).stdout;
    let env: Vec<(&str, &str)> = SECRET_ENVS.iter().map(|e| (*e, "x")).collect();
    let out = cli_env(&["validate", "-"], &converted, &env).ok();
    assert!(out.stdout.contains("<stdin>: valid"), "{}", out.stdout);
}

// ---------------------------------------------------------------------------------------------
// crd, --help, usage errors

#[test]
fn every_command_has_help_with_an_example() {
    for args in [
        vec!["--help"],
        vec!["help"],
        vec!["help", "convert"],
        vec!["validate", "--help"],
        vec!["convert", "-h"],
        vec!["crd", "--help"],
    ] {
        let out = cli(&args, "").ok();
        assert!(out.stdout.contains("Usage: outgoing-auth"), "{args:?}");
        if args.len() > 1 || args[0] != "--help" && args[0] != "help" {
            assert!(out.stdout.contains("Example"), "{args:?}: no example");
        }
    }
    assert!(cli(&["--version"], "")
        .ok()
        .stdout
        .starts_with("outgoing-auth "));
}

#[test]
fn usage_errors_exit_2_with_a_pointer_to_help() {
    for (args, expected) in [
        (vec![], "Usage: outgoing-auth <COMMAND>"),
        (vec!["frobnicate"], "error: unknown command \"frobnicate\""),
        (
            vec!["convert", "--bogus"],
            "error: unknown option --bogus for convert",
        ),
        (vec!["convert", "-f"], "error: -f needs a value"),
        (
            vec!["convert", "-f", "x", "--backend", "noequals"],
            "error: --backend \"noequals\": expected NAME=RESOURCE",
        ),
        (
            vec!["convert", "-f", "x", "--sha256", "12"],
            "--sha256 needs 64 hex digits",
        ),
        (
            vec!["convert", "-f", "x", "--phase", "LATE"],
            "the phases are AUTHN, AUTHZ, STATS, UNSPECIFIED_PHASE",
        ),
        (
            vec!["convert", "stray.yaml"],
            "unexpected argument \"stray.yaml\": input files go after -f",
        ),
        (vec!["validate"], "validate needs a CONFIG.json"),
        (vec!["crd", "extra"], "crd takes none"),
    ] {
        let out = cli(&args, "");
        assert_eq!(out.code, 2, "{args:?}");
        assert!(out.stderr.contains(expected), "{args:?}: {}", out.stderr);
    }
}

// ---------------------------------------------------------------------------------------------
// No panics, whatever the input

/// Replaces each leaf of `v`, one at a time, with values of every other JSON type.
fn mutations(v: &Value) -> Vec<Value> {
    let replacements = [
        json!(null),
        json!(1),
        json!(-1.5),
        json!(true),
        json!(""),
        json!("x\ny"),
        json!([]),
        json!({}),
        json!([1, {"a": 2}]),
    ];
    let mut out = Vec::new();
    fn paths(v: &Value, prefix: Vec<String>, acc: &mut Vec<Vec<String>>) {
        acc.push(prefix.clone());
        match v {
            Value::Object(m) => m.iter().for_each(|(k, c)| {
                let mut p = prefix.clone();
                p.push(k.clone());
                paths(c, p, acc)
            }),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, c)| {
                let mut p = prefix.clone();
                p.push(i.to_string());
                paths(c, p, acc)
            }),
            _ => {}
        }
    }
    let mut all = Vec::new();
    paths(v, Vec::new(), &mut all);
    for path in all.into_iter().filter(|p| !p.is_empty()) {
        for r in &replacements {
            let mut copy = v.clone();
            let mut node = &mut copy;
            for k in &path {
                node = match node {
                    Value::Object(m) => m.get_mut(k).unwrap(),
                    Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
                    _ => unreachable!(),
                };
            }
            *node = r.clone();
            out.push(copy);
        }
    }
    out
}

#[test]
fn no_panic_and_a_verdict_on_every_mutation_of_the_examples() {
    let docs = [
        github(),
        corp_sts(json!({"subjectProviderName": "github", "externalTokenHeaderName": "X"})),
        resource(
            "h",
            json!({"type": "headerInjection", "headerInjection": {"headerName": "X-K", "valueSecretRef": {"name": "s", "key": "k"}}}),
        ),
        vmcp(
            json!({"source": "inline", "default": reference("github"), "backends": {"b": reference("corp-sts")}}),
        ),
    ];
    let mut runs = 0;
    for (i, doc) in docs.iter().enumerate() {
        for m in mutations(doc) {
            let mut all = docs.to_vec();
            all[i] = m;
            for input in [yaml_docs(&all), Value::Array(all.clone()).to_string()] {
                let out = cli(
                    &[
                        "convert",
                        "-f",
                        "-",
                        "--upstreams",
                        "github",
                        "-o",
                        "istio",
                        "--wasm",
                        "oci://r/i:t",
                    ],
                    &input,
                );
                assert!(out.code == 0 || out.code == 1, "{input}\n{}", out.stderr);
                if out.code == 1 {
                    assert!(out.stderr.contains("error: "), "{}", out.stderr);
                }
                runs += 1;
            }
        }
    }
    assert!(runs > 500, "{runs}");
}

#[test]
fn no_panic_on_garbage() {
    let garbage: Vec<String> = vec![
        String::new(),
        "\u{feff}".into(),
        "---\n---\n".into(),
        "[".repeat(10_000),
        "{".repeat(10_000),
        "- ".repeat(5_000),
        "a: &a [*a]\n".into(),
        "a: &a\n  b: *a\n".into(),
        "? complex\n: key\n".into(),
        "apiVersion: toolhive.stacklok.dev/v1beta1\nkind: MCPExternalAuthConfig\nmetadata: 5\n"
            .into(),
        "apiVersion: 7\nkind: MCPExternalAuthConfig\n".into(),
        "\0\u{1}\u{7f}".into(),
        "%YAML 1.2\n---\na: !!binary aGVsbG8=\n".into(),
        "a: 1e999\n".into(),
        "12345678901234567890123456789: x\n".into(),
    ];
    for g in garbage {
        for cmd in [
            vec!["convert", "-f", "-", "--default", "x"],
            vec!["validate", "-"],
        ] {
            let out = cli(&cmd, &g);
            assert!(
                out.code == 1,
                "{cmd:?} {:?}: {}{}",
                g.get(..40.min(g.len())),
                out.stdout,
                out.stderr
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The real binary

fn binary(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_outgoing-auth"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn binary_converts_stdin_and_its_output_validates() {
    let out = binary(
        &[
            "convert",
            "-f",
            "-",
            "--backend",
            "github-mcp=github",
            "--upstreams",
            "github",
        ],
        &yaml_docs(&[github()]),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8(out.stdout).unwrap();
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["outgoingAuth"]["backends"]["github-mcp"],
        json!({"type":"upstream_inject","upstreamInject":{"providerName":"github"}})
    );
    let out = binary(&["validate", "-"], &json);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("<stdin>: valid"));
}

#[test]
fn binary_exit_codes() {
    assert_eq!(binary(&["crd"], "").status.code(), Some(0));
    assert_eq!(binary(&["validate", "-"], "{}").status.code(), Some(1));
    let out = binary(
        &[
            "convert",
            "-f",
            "k8s/examples/invalid/upstream-inject-without-config.yaml",
            "--default",
            "github-missing",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "error: k8s/examples/invalid/upstream-inject-without-config.yaml: MCPExternalAuthConfig \"github-missing\": upstream inject config is nil"
    ));
    assert_eq!(binary(&["--nope"], "").status.code(), Some(2));
    assert_eq!(binary(&[], "").status.code(), Some(2));
}

// ---------------------------------------------------------------------------------------------
// The README's examples are real

/// Every `$ outgoing-auth convert ...` in the README's console blocks (without pipes or
/// redirections) prints exactly what the README shows (stderr, then stdout).
#[test]
fn readme_convert_examples_are_the_real_output() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let mut checked = 0;
    for block in readme.split("```console\n").skip(1) {
        let block = block.split("\n```").next().unwrap();
        let mut lines = block.lines().peekable();
        while let Some(line) = lines.next() {
            let Some(mut command) = line.strip_prefix("$ ").map(str::to_owned) else {
                continue;
            };
            while command.ends_with('\\') {
                command.pop();
                command.push_str(lines.next().unwrap().trim_start());
            }
            let mut expected = String::new();
            while let Some(l) = lines.peek() {
                if l.starts_with("$ ") {
                    break;
                }
                expected.push_str(lines.next().unwrap());
                expected.push('\n');
            }
            if !command.starts_with("outgoing-auth convert") || command.contains(['|', '>']) {
                continue;
            }
            let args: Vec<String> = command
                .split_whitespace()
                .skip(1)
                .map(|a| {
                    if a.starts_with("k8s/") {
                        repo(a)
                    } else {
                        a.to_owned()
                    }
                })
                .collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = cli(&args, "");
            let actual = format!("{}{}", out.stderr, out.stdout)
                .replace(&format!("{}/", env!("CARGO_MANIFEST_DIR")), "");
            assert_eq!(
                actual.trim_end(),
                expected.trim_end(),
                "README: $ {command}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} README examples checked");
}

// ---------------------------------------------------------------------------------------------
// Where the auth filter leaves the tokens (authServer.tokens)

#[test]
fn token_location_flags_become_auth_server_tokens_and_validate() {
    use outgoing_auth::core::config::TokenLayout;
    let out = cli(
        &[
            "convert",
            "-f",
            "-",
            "--default",
            "github",
            "--upstreams",
            "github",
            "--metadata-namespace",
            "com.example.auth",
            "--key-prefix",
            "x-upstream-token-",
        ],
        &yaml_docs(&[github()]),
    )
    .ok();
    assert_eq!(
        out.json()["authServer"],
        json!({"upstreams": ["github"],
               "tokens": {"metadataNamespace": "com.example.auth", "keyPrefix": "x-upstream-token-"}})
    );
    let tokens = loads(&out.stdout, &[]).auth_server.unwrap().tokens;
    assert_eq!(tokens.namespace, "com.example.auth");
    assert_eq!(
        tokens.layout,
        TokenLayout::KeyPrefix {
            prefix: "x-upstream-token-".into()
        }
    );
}

#[test]
fn both_metadata_key_and_key_prefix_fail_with_the_filters_rule() {
    let out = cli(
        &[
            "convert",
            "-f",
            "-",
            "--default",
            "github",
            "--upstreams",
            "github",
            "--metadata-key",
            "upstream_tokens",
            "--key-prefix",
            "x-upstream-token-",
        ],
        &yaml_docs(&[github()]),
    )
    .failed();
    assert!(out.stderr.contains("[S-12]"), "{}", out.stderr);
    assert!(out.stderr.contains("--key-prefix"), "{}", out.stderr);
}

#[test]
fn token_location_without_upstreams_is_an_error() {
    let out = cli(
        &["convert", "-f", "-", "--key-prefix", "x-upstream-token-"],
        &yaml_docs(&[github()]),
    )
    .failed();
    assert!(out.stderr.contains("--upstreams"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------------------------
// -o envoy --mcp-router: the issuing and the accepting instance of envoy/mcp-router.yaml

/// A token exchange of the client's own bearer token: no subjectProviderName.
fn client_sts() -> Value {
    resource(
        "client-sts",
        json!({"type": "tokenExchange", "tokenExchange": {
            "tokenUrl": "https://sts.corp.example/oauth2/token",
            "clientId": "reports-gateway",
            "clientSecretRef": {"name": "client-sts", "key": "secret"},
            "audience": "https://reports.example"
        }}),
    )
}

/// The two entries of `-o envoy --mcp-router`: (issuing, accepting), each parsed from its own
/// YAML document, an `http_filters` list of one entry.
fn mcp_router_entries(stdout: &str) -> (Value, Value) {
    let docs: Vec<Value> = serde_saphyr::from_multiple(stdout)
        .unwrap_or_else(|e| panic!("not multi-document YAML ({e}):\n{stdout}"));
    assert_eq!(docs.len(), 2, "{stdout}");
    for d in &docs {
        assert_eq!(d.as_array().unwrap().len(), 1, "{stdout}");
    }
    (docs[0][0].clone(), docs[1][0].clone())
}

/// The filter config inside an `http_filters` entry.
fn entry_config(entry: &Value) -> String {
    entry["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn host_env_keys(entry: &Value) -> Value {
    entry["typed_config"]["config"]["vm_config"]["environment_variables"]["host_env_keys"].clone()
}

fn binary_ok(args: &[&str]) -> (String, String) {
    let out = binary(args, "");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

#[test]
fn mcp_router_output_is_the_issuing_and_the_accepting_instance() {
    let dir = tmp_dir("mcp-router");
    let extra = write(&dir, "client-sts.yaml", &yaml_docs(&[client_sts()]));
    let args = [
        "convert",
        "-f",
        "k8s/examples",
        "-f",
        &extra,
        "--backend",
        "reports=client-sts",
    ];
    let (filter, _) = binary_ok(&args);
    let filter: Value = serde_json::from_str(&filter).unwrap();
    let (stdout, stderr) = binary_ok(&[&args[..], &["-o", "envoy", "--mcp-router"][..]].concat());
    let (issuing, accepting) = mcp_router_entries(&stdout);
    let envs = [
        "TOOLHIVE_HEADER_INJECTION_VALUE_INTERNAL_API",
        "TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_CLIENT_STS",
        "TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_CORP_STS",
    ];

    // The issuing instance: authServer and the hand-off, the client's bearer too because
    // backend "reports" exchanges it; no strategy, no variable.
    let json = entry_config(&issuing);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v,
        json!({"authServer": filter["authServer"], "handoff": {"mode": "issue", "clientBearer": true}})
    );
    assert!(v.get("outgoingAuth").is_none());
    assert!(issuing["typed_config"]["config"]["vm_config"]
        .get("environment_variables")
        .is_none());
    let c = loads(&json, &[]);
    assert_eq!(
        c.handoff.unwrap().mode,
        config::HandoffMode::Issue {
            client_bearer: true
        }
    );
    assert!(c.outgoing_auth.backends.is_empty() && c.outgoing_auth.default.is_none());

    // The accepting instance: the whole converted config, plus accept and clusterName.
    let json = entry_config(&accepting);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["handoff"], json!({"mode": "accept"}));
    assert_eq!(v["backendNameSources"], json!(["clusterName"]));
    assert_eq!(v["authServer"], filter["authServer"]);
    assert_eq!(v["outgoingAuth"], filter["outgoingAuth"]);
    assert_eq!(v.as_object().unwrap().len(), 4, "{json}");
    assert_eq!(
        v["outgoingAuth"]["backends"]["corp-api"]["tokenExchange"]["subjectProviderName"],
        "corporate-idp"
    );
    assert!(v["outgoingAuth"]["backends"]["reports"]["tokenExchange"]
        .get("subjectProviderName")
        .is_none());
    assert_eq!(host_env_keys(&accepting), json!(envs));
    let c = loads(&json, &envs);
    assert_eq!(c.handoff.unwrap().mode, config::HandoffMode::Accept);
    assert_eq!(
        c.backend_name_sources,
        vec![config::BackendNameSource::ClusterName]
    );
    assert_eq!(c.outgoing_auth.backends.len(), 4);
    // The variables are the accepting instance's: without them it does not load.
    assert!(validate::load(json.as_bytes(), &|_: &str| None).is_err());

    // The comments say where each goes and what mcp_router needs.
    for line in [
        "# 1. The issuing instance: in the listener's http_filters, after the auth filter",
        "# 2. The accepting instance: in every backend cluster's",
        "#    http_filters, before envoy.filters.http.upstream_codec; one config for every cluster.",
        "# Both have vm_config.vm_id outgoing_auth, so they share the key that seals the hand-off",
        "# name the backend clusters corp-api, github-mcp, internal, reports (other clusters get the default strategy).",
        "# clientBearer: true: the token exchange of backend \"reports\" takes the client's own bearer token as",
        "# Every mcp_router server's header_forwarding must allow x-outgoing-auth-handoff (mcp_router",
        "#     header_forwarding: {allowed_headers: {patterns: [{exact: x-outgoing-auth-handoff}]}}",
        "# Leave mcp_router's lazy_initialization off on Envoy 1.40: with it on,",
        "#    It seals the user's upstream tokens and the client's bearer token into the x-outgoing-auth-handoff header.",
        "#   - name: TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_CLIENT_STS",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line}\n{stdout}");
    }
    // The header_forwarding snippet is YAML mcp_router takes.
    let snippet: String = stdout
        .lines()
        .skip_while(|l| *l != "#   servers:")
        .take(4)
        .map(|l| format!("{}\n", &l[4..]))
        .collect();
    let servers: Value = serde_saphyr::from_str(&snippet).unwrap();
    assert_eq!(
        servers["servers"][0]["header_forwarding"],
        json!({"allowed_headers": {"patterns": [{"exact": "x-outgoing-auth-handoff"}]}})
    );
    assert_eq!(servers["servers"][0]["mcp_cluster"]["cluster"], "corp-api");
    assert!(!stderr.contains("error"), "{stderr}");
}

#[test]
fn mcp_router_without_a_client_bearer_exchange_hands_off_only_the_upstream_tokens() {
    let (stdout, _) = binary_ok(&[
        "convert",
        "-f",
        "k8s/examples/upstream-inject.yaml",
        "-f",
        "k8s/examples/token-exchange.yaml",
        "--backend",
        "github-mcp=github",
        "--backend",
        "corp-mcp=corp-sts",
        "--upstreams",
        "github,corporate-idp",
        "--key-prefix",
        "x-upstream-token-",
        "-o",
        "envoy",
        "--mcp-router",
    ]);
    let (issuing, accepting) = mcp_router_entries(&stdout);
    let v: Value = serde_json::from_str(&entry_config(&issuing)).unwrap();
    assert_eq!(v["handoff"], json!({"mode": "issue"}));
    assert_eq!(
        v["authServer"],
        json!({"upstreams": ["github", "corporate-idp"], "tokens": {"keyPrefix": "x-upstream-token-"}})
    );
    let c = loads(&entry_config(&issuing), &[]);
    assert_eq!(
        c.handoff.unwrap().mode,
        config::HandoffMode::Issue {
            client_bearer: false
        }
    );
    assert!(!stdout.contains("clientBearer"));
    assert_eq!(
        host_env_keys(&accepting),
        json!(["TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_CORP_STS"])
    );
    loads(
        &entry_config(&accepting),
        &["TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_CORP_STS"],
    );
}

#[test]
fn mcp_router_with_only_a_client_bearer_exchange_needs_no_auth_server() {
    let out = cli(
        &[
            "convert",
            "-f",
            "-",
            "--default",
            "client-sts",
            "-o",
            "envoy",
            "--mcp-router",
        ],
        &yaml_docs(&[client_sts()]),
    )
    .ok();
    let (issuing, accepting) = mcp_router_entries(&out.stdout);
    let v: Value = serde_json::from_str(&entry_config(&issuing)).unwrap();
    assert_eq!(
        v,
        json!({"handoff": {"mode": "issue", "clientBearer": true}})
    );
    loads(&entry_config(&issuing), &[]);
    loads(
        &entry_config(&accepting),
        &["TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_CLIENT_STS"],
    );
    assert!(out.stdout.contains(
        "# clientBearer: true: the token exchange of the default strategy takes the client's own bearer token as"
    ));
    assert!(out
        .stdout
        .contains("# no backend is named: every cluster gets the default strategy."));
}

#[test]
fn mcp_router_with_nothing_to_hand_off_fails() {
    let out = cli(
        &[
            "convert",
            "-f",
            &repo("k8s/examples/header-injection.yaml"),
            "--backend",
            "internal=internal-api",
            "-o",
            "envoy",
            "--mcp-router",
        ],
        "",
    )
    .failed();
    assert!(
        out.stderr.starts_with(
            "error: --mcp-router: the issuing instance would have nothing to hand off: there is no authServer"
        ),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("hint: pass --upstreams"));
}

#[test]
fn mcp_router_is_for_the_envoy_output_only() {
    for format in [
        &[][..],
        &["-o", "filter"][..],
        &["-o", "istio", "--wasm", "oci://r.example/m:1"][..],
        &[
            "-o",
            "envoy-gateway",
            "--wasm",
            "oci://r.example/m:1",
            "--target-ref",
            "Gateway/g",
        ][..],
    ] {
        let mut args = vec!["convert", "-f", "k8s/examples", "--mcp-router"];
        args.extend(format);
        let out = cli(&args, "");
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert_eq!(out.stdout, "");
        assert!(
            out.stderr.starts_with(
                "error: --mcp-router is for --output envoy: `-o envoy --mcp-router` prints"
            ),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("`outgoing-auth convert --help`"));
    }
    let out = cli(
        &[
            "convert",
            "-f",
            "k8s/examples",
            "-o",
            "envoy",
            "--mcp-router=yes",
        ],
        "",
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.starts_with("error: --mcp-router takes no value"));
}

/// `v` with the parts that differ per deployment blanked: the filter config and its variables.
fn entry_shape(entry: &Value) -> Value {
    let mut e = entry.clone();
    let config = &mut e["typed_config"]["config"];
    config["configuration"]["value"] = json!("...");
    if let Some(env) = config["vm_config"].get_mut("environment_variables") {
        env["host_env_keys"] = json!(["..."]);
    }
    e
}

fn keys(json: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(json).unwrap();
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn mcp_router_entries_slot_into_envoy_mcp_router_yaml() {
    let file: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(repo("envoy/mcp-router.yaml")).unwrap())
            .unwrap();
    let resources = &file["static_resources"];
    let filters = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"]
        .as_array()
        .unwrap();
    let names: Vec<&str> = filters
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.ext_authz",
            "envoy.filters.http.mcp",
            "envoy.filters.http.wasm",
            "envoy.filters.http.mcp_router"
        ]
    );
    let file_issuing = &filters[2];
    let cluster = resources["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "github-mcp")
        .unwrap();
    let cluster_filters = cluster["typed_extension_protocol_options"]
        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"]
        .as_array()
        .unwrap();
    assert_eq!(
        cluster_filters[1]["name"],
        "envoy.filters.http.upstream_codec"
    );
    let file_accepting = &cluster_filters[0];

    // The same backends as the file, from resources.
    let dir = tmp_dir("mcp-router-shape");
    let internal = resource(
        "internal-api",
        json!({"type": "headerInjection", "headerInjection": {
            "headerName": "X-API-Key", "valueSecretRef": {"name": "internal-api-key", "key": "api-key"}}}),
    );
    let corp = corp_sts(json!({"subjectProviderName": "corporate-idp"}));
    let input = write(&dir, "in.yaml", &yaml_docs(&[github(), corp, internal]));
    let (stdout, _) = binary_ok(&[
        "convert",
        "-f",
        &input,
        "--backend",
        "github-mcp=github",
        "--backend",
        "corp-mcp=corp-sts",
        "--backend",
        "internal-mcp=internal-api",
        "--upstreams",
        "github,corporate-idp",
        "--metadata-namespace",
        "envoy.filters.http.ext_authz",
        "--key-prefix",
        "x-upstream-token-",
        "-o",
        "envoy",
        "--mcp-router",
    ]);
    let (issuing, accepting) = mcp_router_entries(&stdout);
    // Everything but the filter config and the variable names is the file's: the same @types,
    // module, vm_id (so the two share the sealing key), failure policy.
    assert_eq!(entry_shape(&issuing), entry_shape(file_issuing));
    assert_eq!(entry_shape(&accepting), entry_shape(file_accepting));
    for e in [&issuing, &accepting] {
        assert_eq!(
            e["typed_config"]["config"]["vm_config"]["vm_id"],
            "outgoing_auth"
        );
    }
    // And the configs have the file's fields, with the same hand-off and token location.
    let (ours, theirs) = (entry_config(&issuing), entry_config(file_issuing));
    assert_eq!(keys(&ours), keys(&theirs));
    let (o, t): (Value, Value) = (
        serde_json::from_str(&ours).unwrap(),
        serde_json::from_str(&theirs).unwrap(),
    );
    assert_eq!(o, t, "the issuing instance is the file's");
    let (ours, theirs) = (entry_config(&accepting), entry_config(file_accepting));
    // The file adds missingToken (an Envoy addition no MCPExternalAuthConfig carries).
    let mut file_keys = keys(&theirs);
    file_keys.retain(|k| k != "missingToken");
    assert_eq!(keys(&ours), file_keys);
    let (o, t): (Value, Value) = (
        serde_json::from_str(&ours).unwrap(),
        serde_json::from_str(&theirs).unwrap(),
    );
    for k in ["authServer", "handoff", "backendNameSources"] {
        assert_eq!(o[k], t[k], "{k}");
    }
    let backends = |v: &Value| -> Vec<(String, Value)> {
        v["outgoingAuth"]["backends"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, b)| (k.clone(), b["type"].clone()))
            .collect()
    };
    assert_eq!(backends(&o), backends(&t));
}

// ---------------------------------------------------------------------------------------------
// --native: the Envoy dynamic module (liboutgoing_auth.so) instead of the wasm module

/// The comment lines at the top of an output.
fn header_of(stdout: &str) -> Vec<&str> {
    stdout.lines().take_while(|l| l.starts_with('#')).collect()
}

/// The filter config inside a `--native` `http_filters` entry, after checking that the entry
/// is exactly Envoy 1.40's DynamicModuleFilter for the module `outgoing_auth`.
fn native_entry_config(entry: &Value) -> String {
    assert_eq!(entry["name"], "outgoing_auth");
    let tc = &entry["typed_config"];
    assert_eq!(
        tc["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
    );
    // (serde_json's map sorts its keys)
    let fields: Vec<&str> = tc.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        [
            "@type",
            "dynamic_module_config",
            "filter_config",
            "filter_name"
        ],
        "{entry}"
    );
    assert_eq!(
        tc["dynamic_module_config"],
        json!({"name": "outgoing_auth"})
    );
    assert_eq!(tc["filter_name"], "outgoing_auth");
    assert_eq!(
        tc["filter_config"]["@type"],
        "type.googleapis.com/google.protobuf.StringValue"
    );
    assert_eq!(tc["filter_config"].as_object().unwrap().len(), 2);
    tc["filter_config"]["value"].as_str().unwrap().to_owned()
}

#[test]
fn envoy_native_output_is_a_dynamic_module_entry() {
    const PREFIX: [&str; 2] = ["--key-prefix", "x-upstream-token-"];
    let filter = examples(&PREFIX).json();
    let out = examples(&["-o", "envoy", "--native", PREFIX[0], PREFIX[1]]);
    let v = out.yaml();
    assert_eq!(v.as_array().unwrap().len(), 1);
    let value = native_entry_config(&v[0]);
    // The same filter JSON as -o filter and the wasm entry, and the filter's own validation
    // takes it.
    assert_eq!(serde_json::from_str::<Value>(&value).unwrap(), filter);
    let wasm = examples(&["-o", "envoy", PREFIX[0], PREFIX[1]]).yaml();
    assert_eq!(value, entry_config(&wasm[0]));
    loads(&value, &SECRET_ENVS);
    // No vm_config, so no host_env_keys: a native module reads Envoy's own environment.
    assert!(!out.stdout.contains("vm_config"), "{}", out.stdout);
    assert!(!out.stdout.contains("\n  host_env_keys"), "{}", out.stdout);
    let header = header_of(&out.stdout);
    for line in [
        "# The module reads them from Envoy's own environment (a dynamic module has no",
        "# host_env_keys list, unlike the wasm entry). In a Pod, the Envoy container's env:",
        "#   - name: TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET_CORP_STS",
        "#       secretKeyRef: {name: \"corp-sts-client\", key: \"client-secret\"}",
        "# The dynamic module: Envoy loads liboutgoing_auth.so (dynamic_module_config.name outgoing_auth)",
        "# from the directory its environment variable ENVOY_DYNAMIC_MODULES_SEARCH_PATH names (unset:",
        "# /etc/envoy/modules/liboutgoing_auth.so. Build the module for this Envoy's minor version,",
        "# 1.40: Envoy checks the ABI version the module was built against.",
        "# Define each under static_resources.clusters (with TLS for https).",
    ] {
        assert!(header.contains(&line), "{line}\n{}", header.join("\n"));
    }
    assert!(!out.stdout.contains("vm_config lists them"));
    // The one-line @type is a plain scalar, not a folded block.
    assert!(out.stdout.contains(
        "\n    \"@type\": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter\n"
    ));
}

#[test]
fn envoy_native_without_secrets_still_says_where_the_module_is() {
    let out = cli(
        &[
            "convert",
            "-f",
            &repo("k8s/examples/unauthenticated.yaml"),
            "--default",
            "public",
            "-o",
            "envoy",
            "--native",
        ],
        "",
    )
    .ok();
    let v = out.yaml();
    let value = native_entry_config(&v[0]);
    let c = loads(&value, &[]);
    assert!(c.outgoing_auth.default.is_some());
    let header = header_of(&out.stdout).join("\n");
    assert!(!header.contains("Environment variables"), "{header}");
    assert!(
        header.contains("ENVOY_DYNAMIC_MODULES_SEARCH_PATH"),
        "{header}"
    );
}

#[test]
fn envoy_native_mcp_router_output_is_both_entries_in_native_form() {
    let (wasm, _) = binary_ok(&[
        "convert",
        "-f",
        "k8s/examples",
        "-o",
        "envoy",
        "--mcp-router",
        "--key-prefix",
        "x-upstream-token-",
    ]);
    let (stdout, stderr) = binary_ok(&[
        "convert",
        "-f",
        "k8s/examples",
        "-o",
        "envoy",
        "--mcp-router",
        "--native",
        "--key-prefix",
        "x-upstream-token-",
    ]);
    assert!(!stderr.contains("error"), "{stderr}");
    let (issuing, accepting) = mcp_router_entries(&stdout);
    let (wasm_issuing, wasm_accepting) = mcp_router_entries(&wasm);

    // The issuing instance: the wasm pair's config, in a native entry; it reads no variable.
    let json = native_entry_config(&issuing);
    assert_eq!(json, entry_config(&wasm_issuing));
    let c = loads(&json, &[]);
    assert_eq!(
        c.handoff.unwrap().mode,
        config::HandoffMode::Issue {
            client_bearer: false
        }
    );
    // The accepting instance: the same, with the variables it reads from Envoy's environment.
    let json = native_entry_config(&accepting);
    assert_eq!(json, entry_config(&wasm_accepting));
    let c = loads(&json, &SECRET_ENVS);
    assert_eq!(c.handoff.unwrap().mode, config::HandoffMode::Accept);
    assert_eq!(
        c.backend_name_sources,
        vec![config::BackendNameSource::ClusterName]
    );
    assert!(validate::load(json.as_bytes(), &|_: &str| None).is_err());
    assert!(!stdout.contains("vm_config"), "{stdout}");

    for line in [
        "# Only the accepting instance reads them, from Envoy's own environment (a dynamic",
        "# module has no host_env_keys list). Envoy's process needs them in its environment;",
        "# YAML documents below. Envoy loads liboutgoing_auth.so once per process, so both",
        "# handoff.keyEnv (the same secret of at least 32 bytes, in Envoy's environment).",
        "# from the directory its environment variable ENVOY_DYNAMIC_MODULES_SEARCH_PATH names (unset:",
        "# 1.40: Envoy checks the ABI version the module was built against.",
        "# 1. The issuing instance: in the listener's http_filters, after the auth filter",
        "# 2. The accepting instance: in every backend cluster's",
        "# Every mcp_router server's header_forwarding must allow x-outgoing-auth-handoff (mcp_router",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line}\n{stdout}");
    }
    assert!(!stdout.contains("vm_id"), "{stdout}");
}

/// Envoy Gateway's pattern for a dynamic module's name
/// (`^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$`, api/v1alpha1/dynamic_module_types.go).
fn gateway_module_name(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    edge(name.chars().next())
        && edge(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
}

/// The two documents of `-o envoy-gateway --native`: (EnvoyProxy, EnvoyExtensionPolicy).
fn gateway_native_docs(stdout: &str) -> (Value, Value) {
    let docs: Vec<Value> = serde_saphyr::from_multiple(stdout)
        .unwrap_or_else(|e| panic!("not multi-document YAML ({e}):\n{stdout}"));
    assert_eq!(docs.len(), 2, "{stdout}");
    for d in &docs {
        assert_eq!(d["apiVersion"], "gateway.envoyproxy.io/v1alpha1");
        api_fields("envoy-gateway", d);
    }
    assert_eq!(docs[0]["kind"], "EnvoyProxy");
    assert_eq!(docs[1]["kind"], "EnvoyExtensionPolicy");
    (docs[0].clone(), docs[1].clone())
}

#[test]
fn envoy_gateway_native_output_is_an_envoy_proxy_and_an_extension_policy() {
    let filter = examples(&["--key-prefix", "x-upstream-token-"]).json();
    let out = examples(&[
        "-o",
        "envoy-gateway",
        "--native",
        "--key-prefix",
        "x-upstream-token-",
        "--module",
        "/usr/lib/envoy/modules/liboutgoing_auth.so",
        "--target-ref",
        "Gateway/mcp-gateway",
        "--target-ref",
        "HTTPRoute/mcp",
        "--name",
        "mcp-auth",
        "--namespace",
        "mcp",
    ]);
    let (proxy, policy) = gateway_native_docs(&out.stdout);

    // The EnvoyProxy registers the module under one name, from a Local source.
    assert_eq!(
        proxy["metadata"],
        json!({"name": "mcp-auth", "namespace": "mcp"})
    );
    assert_eq!(
        proxy["spec"],
        json!({"dynamicModules": [{
            "name": "outgoing-auth",
            "source": {"type": "Local", "local": {"path": "/usr/lib/envoy/modules/liboutgoing_auth.so"}}
        }]})
    );
    // The policy attaches to the targets and loads the module by that name, with the filter's
    // config (which the filter's own validation takes).
    assert_eq!(
        policy["metadata"],
        json!({"name": "mcp-auth", "namespace": "mcp"})
    );
    assert_eq!(
        policy["spec"]["targetRefs"],
        json!([
            {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "mcp-gateway"},
            {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "mcp"}
        ])
    );
    assert!(policy["spec"].get("wasm").is_none());
    let entries = policy["spec"]["dynamicModule"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(
        entry.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["config", "filterName", "name"]
    );
    assert_eq!(entry["name"], proxy["spec"]["dynamicModules"][0]["name"]);
    assert!(gateway_module_name(entry["name"].as_str().unwrap()));
    assert_eq!(entry["filterName"], "outgoing_auth");
    assert_eq!(entry["config"], filter);
    loads(&entry["config"].to_string(), &SECRET_ENVS);

    let header = header_of(&out.stdout);
    for line in [
        "# The module reads them from the Envoy proxy's own environment (a dynamic module has no",
        "# env.hostKeys). Add them to the EnvoyProxy's spec.provider.kubernetes.envoyDeployment.container.env:",
        "#       secretKeyRef: {name: \"internal-api-key\", key: \"api-key\"}",
        "# Two resources: the EnvoyProxy registers the dynamic module liboutgoing_auth.so as outgoing-auth",
        "# (spec.dynamicModules, Envoy Gateway v1.8 and later), and the EnvoyExtensionPolicy's",
        "# The proxy container must have the module at /usr/lib/envoy/modules/liboutgoing_auth.so",
        "# Build the module for the proxy's Envoy minor version, 1.40 (Envoy checks the ABI",
        "# set the EnvoyProxy's spec.provider.kubernetes.envoyDeployment.container.image to Envoy 1.40.",
        "# in the generated xDS (e.g. with an EnvoyPatchPolicy) or pass --sts-cluster NAME.",
    ] {
        assert!(header.contains(&line), "{line}\n{}", header.join("\n"));
    }
    assert!(!out.stdout.contains("hostKeys:"), "{}", out.stdout);

    // file:///PATH is the same Local source.
    let out = examples(&[
        "-o",
        "envoy-gateway",
        "--native",
        "--key-prefix",
        "x-upstream-token-",
        "--module",
        "file:///opt/modules/liboutgoing_auth.so",
        "--target-ref",
        "Gateway/g",
    ]);
    let (proxy, _) = gateway_native_docs(&out.stdout);
    assert_eq!(
        proxy["spec"]["dynamicModules"][0]["source"],
        json!({"type": "Local", "local": {"path": "/opt/modules/liboutgoing_auth.so"}})
    );
    assert_eq!(proxy["metadata"], json!({"name": "outgoing-auth"}));
}

/// An https:// module is a Remote source, whose sha256 Envoy Gateway requires (lower-case hex,
/// `^[a-f0-9]{64}$`).
#[test]
fn envoy_gateway_native_remote_module_has_its_sha256() {
    let sha = "0123456789abcdef".repeat(4);
    let out = examples(&[
        "-o",
        "envoy-gateway",
        "--native",
        "--key-prefix",
        "x-upstream-token-",
        "--module",
        "https://modules.example.com/liboutgoing_auth.so",
        "--sha256",
        &sha.to_ascii_uppercase(),
        "--target-ref",
        "Gateway/g",
    ]);
    let (proxy, policy) = gateway_native_docs(&out.stdout);
    assert_eq!(
        proxy["spec"]["dynamicModules"][0]["source"],
        json!({"type": "Remote", "remote": {"url": "https://modules.example.com/liboutgoing_auth.so", "sha256": sha}})
    );
    loads(
        &policy["spec"]["dynamicModule"][0]["config"].to_string(),
        &SECRET_ENVS,
    );
    assert!(header_of(&out.stdout).contains(
        &"# Envoy downloads the module and checks it against remote.sha256 before loading it."
    ));
}

#[test]
fn native_combinations_are_refused() {
    let f = repo("k8s/examples");
    let sha = "ab".repeat(32);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--native", "--key-prefix", "x-upstream-token-"],
            "error: --native is for --output envoy or envoy-gateway: the filter's JSON config (-o filter) is the same for the wasm and the native module",
        ),
        (
            vec!["-o", "filter", "--native", "--key-prefix", "x-upstream-token-"],
            "error: --native is for --output envoy or envoy-gateway",
        ),
        (
            vec!["-o", "istio", "--native", "--key-prefix", "x-upstream-token-", "--wasm", "oci://r/i:t"],
            "error: --native is not for --output istio: Istio's WasmPlugin loads proxy-wasm modules only; use the wasm module there (-o istio --wasm LOCATION)",
        ),
        (
            vec!["-o", "istio", "--native", "--key-prefix", "x-upstream-token-"],
            "error: --native is not for --output istio",
        ),
        (
            vec!["-o", "envoy", "--native", "--key-prefix", "x-upstream-token-", "--wasm", "/opt/outgoing_auth.wasm"],
            "error: --wasm and --native exclude each other: --wasm says where the proxy-wasm module is, --native loads the dynamic module liboutgoing_auth.so instead (drop one)",
        ),
        (
            vec![
                "-o", "envoy-gateway", "--native", "--key-prefix", "x-upstream-token-", "--wasm", "oci://r/i:t", "--module", "/m.so",
                "--target-ref", "Gateway/g",
            ],
            "error: --wasm and --native exclude each other",
        ),
        (
            vec!["-o", "envoy", "--native", "--key-prefix", "x-upstream-token-", "--module", "/m.so"],
            "error: --module is for --output envoy-gateway --native (the liboutgoing_auth.so the EnvoyProxy registers); -o envoy --native names the module, and Envoy finds liboutgoing_auth.so in the directory ENVOY_DYNAMIC_MODULES_SEARCH_PATH names",
        ),
        (
            vec![
                "-o", "envoy-gateway", "--wasm", "oci://r/i:t", "--module", "/m.so",
                "--target-ref", "Gateway/g",
            ],
            "error: --module is for --output envoy-gateway --native",
        ),
        (
            vec!["-o", "envoy-gateway", "--native", "--key-prefix", "x-upstream-token-", "--target-ref", "Gateway/g"],
            "error: --output envoy-gateway --native needs --module (--module, envoy-gateway --native: an absolute path or file:///PATH in the proxy container, or https:// with --sha256; never http://)",
        ),
        (
            vec!["-o", "envoy-gateway", "--native", "--key-prefix", "x-upstream-token-", "--module", "/m.so"],
            "error: --output envoy-gateway needs --target-ref KIND/NAME",
        ),
        (
            vec![
                "-o", "envoy-gateway", "--native", "--key-prefix", "x-upstream-token-", "--module", "modules/m.so",
                "--target-ref", "Gateway/g",
            ],
            "error: --module \"modules/m.so\": the EnvoyProxy's local source needs an absolute path",
        ),
        (
            vec![
                "-o", "envoy-gateway", "--native", "--key-prefix", "x-upstream-token-", "--module", "file://m.so",
                "--target-ref", "Gateway/g",
            ],
            "error: --module \"file://m.so\": the EnvoyProxy's local source needs an absolute path",
        ),
        (
            vec![
                "-o", "envoy-gateway", "--native", "--key-prefix", "x-upstream-token-", "--module", "http://x/m.so",
                "--target-ref", "Gateway/g",
            ],
            "error: --module \"http://x/m.so\": plain http:// is refused",
        ),
        (
            vec![
                "-o", "envoy-gateway", "--native", "--key-prefix", "x-upstream-token-", "--module", "oci://r/m:1",
                "--target-ref", "Gateway/g",
            ],
            "error: --module \"oci://r/m:1\": Envoy Gateway loads a dynamic module from a path or an https:// URL, not oci://",
        ),
        (
            vec![
                "-o", "envoy-gateway", "--native", "--key-prefix", "x-upstream-token-", "--module", "https://x/m.so",
                "--target-ref", "Gateway/g",
            ],
            "error: --module \"https://x/m.so\": a remote module needs --sha256",
        ),
        (
            vec![
                "-o", "envoy-gateway", "--native", "--key-prefix", "x-upstream-token-", "--module", "/m.so", "--sha256", &sha,
                "--target-ref", "Gateway/g",
            ],
            "error: --sha256 is for an https:// --module: the EnvoyProxy's local source (\"/m.so\") has no digest",
        ),
        (
            vec![
                "-o", "envoy-gateway", "--native", "--key-prefix", "x-upstream-token-", "--mcp-router", "--module", "/m.so",
                "--target-ref", "Gateway/g",
            ],
            "error: --mcp-router is for --output envoy",
        ),
        (
            vec!["-o", "envoy", "--native=yes"],
            "error: --native takes no value",
        ),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["convert", "-f", &f];
        args.extend(&flags);
        let out = cli(&args, "");
        assert_eq!(out.code, 2, "{flags:?}: {}", out.stderr);
        assert_eq!(out.stdout, "", "{flags:?}");
        assert!(
            out.stderr.starts_with(expected),
            "{flags:?}: {}",
            out.stderr
        );
        assert!(out
            .stderr
            .contains("For more information, try `outgoing-auth convert --help`."));
    }
    // The help says what --native and --module do.
    let help = cli(&["convert", "--help"], "").ok().stdout;
    for text in [
        "\n      --native                 envoy, envoy-gateway: load the Envoy dynamic module\n",
        "\n      --module <LOCATION>      envoy-gateway --native: the liboutgoing_auth.so the EnvoyProxy\n",
        "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
        "  outgoing-auth convert -f k8s/examples/ -o envoy --native --key-prefix x-upstream-token-\n",
    ] {
        assert!(help.contains(text), "help lacks {text:?}");
    }
}

#[test]
fn native_output_of_a_struct_token_layout_is_refused_with_s19() {
    // The examples read upstream tokens (upstreamInject, subjectProviderName) from the default
    // Struct layout, which the dynamic module cannot read into.
    let args = [
        "convert",
        "-f",
        &repo("k8s/examples"),
        "-o",
        "envoy",
        "--native",
    ]
    .map(String::from);
    let out = cli(&args.iter().map(String::as_str).collect::<Vec<_>>(), "").failed();
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("[S-19]"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(
        lines[0].starts_with(
            "error: --metadata-namespace/--metadata-key/--key-prefix: [S-19] authServer.tokens:"
        ),
        "{}",
        lines[0]
    );
    // The wasm entry of the same resources is fine.
    examples(&["-o", "envoy"]);
}
