//! The MCPExternalAuthConfig CRD: the committed manifest is what the Rust types generate, and every
//! example in k8s/examples is accepted, every invalid one rejected with its expected message, by a
//! real JSON-Schema validator (the openAPIV3Schema) and a real CEL evaluator (the
//! x-kubernetes-validations), as the API server would.

// Test code: a panic is how a test fails.
#![allow(
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::path::{Path, PathBuf};

use outgoing_auth::k8s::cli::{run, Io};
use outgoing_auth::k8s::crd;
use outgoing_auth::k8s::resources::ExternalAuthType;
use serde_json::{json, Value};

const MANIFEST: &str = "k8s/crd/mcpexternalauthconfigs.yaml";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn committed_manifest() -> Value {
    let text = std::fs::read_to_string(repo(MANIFEST)).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

/// The openAPIV3Schema of one served version.
fn schema(version: &str) -> Value {
    let m = committed_manifest();
    let versions = m["spec"]["versions"].as_array().unwrap();
    let v = versions
        .iter()
        .find(|v| v["name"] == version)
        .unwrap_or_else(|| panic!("version {version} not served"));
    v["schema"]["openAPIV3Schema"].clone()
}

/// Everything the API server would say about `resource`: schema errors, then failed CEL rules'
/// messages.
fn admission_errors(resource: &Value) -> Vec<String> {
    let version = resource["apiVersion"]
        .as_str()
        .and_then(|a| a.rsplit('/').next())
        .unwrap();
    let schema = schema(version);
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut errors: Vec<String> = validator
        .iter_errors(resource)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    cel_errors(&schema, resource, &mut errors);
    errors
}

/// Evaluates every `x-kubernetes-validations` rule on the value it applies to, with `self` bound to
/// it (the part of Kubernetes' CEL environment these rules use).
fn cel_errors(schema: &Value, value: &Value, errors: &mut Vec<String>) {
    if let Some(rules) = schema["x-kubernetes-validations"].as_array() {
        for r in rules {
            let rule = r["rule"].as_str().unwrap();
            let program = cel::Program::compile(rule)
                .unwrap_or_else(|e| panic!("CEL rule {rule:?} does not compile: {e:?}"));
            let mut ctx = cel::Context::default();
            ctx.add_variable("self", value.clone()).unwrap();
            match program.execute(&ctx) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => {
                    errors.push(r["message"].as_str().unwrap().to_owned())
                }
                // The API server reports a rule that cannot be evaluated (e.g. `self.type` on a
                // spec without type, which the schema already rejects) as an error too.
                other => errors.push(format!(
                    "CEL rule {rule:?} could not be evaluated: {other:?}"
                )),
            }
        }
    }
    if let (Some(props), Value::Object(obj)) = (schema["properties"].as_object(), value) {
        for (k, sub) in props {
            if let Some(child) = obj.get(k) {
                cel_errors(sub, child, errors);
            }
        }
    }
    if let (Some(items), Value::Array(values)) = (schema.get("items"), value) {
        for v in values {
            cel_errors(items, v, errors);
        }
    }
}

/// The MCPExternalAuthConfig documents of a YAML file.
fn auth_configs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap()
        .into_iter()
        .filter(|d| d["kind"] == "MCPExternalAuthConfig")
        .collect()
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {dir}");
    files
}

fn run_cli(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut stdin: &[u8] = b"";
    let env = |_: &str| None;
    let code = run(
        &args,
        &mut Io {
            stdin: &mut stdin,
            stdout: &mut out,
            stderr: &mut err,
            env: &env,
        },
    );
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn committed_manifest_is_what_the_types_generate() {
    let committed = std::fs::read_to_string(repo(MANIFEST)).unwrap();
    let generated = crd::manifest_yaml().unwrap();
    assert!(
        committed == generated,
        "{MANIFEST} is stale; regenerate it with\n  cargo run --bin outgoing-auth -- crd > {MANIFEST}"
    );
}

#[test]
fn crd_command_prints_the_committed_manifest() {
    let (code, out, err) = run_cli(&["crd"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, std::fs::read_to_string(repo(MANIFEST)).unwrap());
}

#[test]
fn manifest_fields_agree_with_the_types_field_by_field() {
    let spec = &schema("v1beta1")["properties"]["spec"];
    let props: Vec<&str> = spec["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec!["type"];
    expected.extend(ExternalAuthType::ALL.iter().filter_map(|t| t.sub_object()));
    expected.sort();
    assert_eq!(props, expected);
    assert_eq!(
        spec["properties"]["type"]["enum"],
        json!(ExternalAuthType::ALL.map(|t| t.as_str()))
    );
    let te = &spec["properties"]["tokenExchange"]["properties"];
    for field in [
        "tokenUrl",
        "clientId",
        "clientSecretRef",
        "audience",
        "scopes",
        "subjectTokenType",
        "externalTokenHeaderName",
        "subjectProviderName",
    ] {
        assert!(te.get(field).is_some(), "tokenExchange.{field} missing");
    }
    assert_eq!(
        spec["properties"]["headerInjection"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec!["headerName", "valueSecretRef"]
    );
    // Both served versions carry the same schema.
    assert_eq!(schema("v1beta1"), schema("v1alpha1"));
}

#[test]
fn every_example_passes_the_schema_and_the_cel_rules() {
    let mut checked = 0;
    for file in yaml_files("k8s/examples") {
        for doc in auth_configs(&file) {
            let errors = admission_errors(&doc);
            assert!(errors.is_empty(), "{}: {errors:?}", file.display());
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} examples checked");
}

/// `# expect-schema: ...` / `# expect-convert: ...` lines of an invalid example.
fn expectations(path: &Path, key: &str) -> Vec<String> {
    let prefix = format!("# {key}: ");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

#[test]
fn every_invalid_example_is_rejected_with_its_message() {
    for file in yaml_files("k8s/examples/invalid") {
        let expected = expectations(&file, "expect-schema");
        assert!(!expected.is_empty(), "{}: no expect-schema", file.display());
        let docs = auth_configs(&file);
        assert_eq!(docs.len(), 1, "{}", file.display());
        let errors = admission_errors(&docs[0]);
        for e in &expected {
            assert!(
                errors.iter().any(|got| got.contains(e.as_str())),
                "{}: expected {e:?} among {errors:?}",
                file.display()
            );
        }
    }
}

#[test]
fn every_invalid_example_fails_to_convert_with_its_message() {
    for file in yaml_files("k8s/examples/invalid") {
        let expected = expectations(&file, "expect-convert");
        assert!(
            !expected.is_empty(),
            "{}: no expect-convert",
            file.display()
        );
        let name = auth_configs(&file)[0]["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_owned();
        let path = file.to_string_lossy().into_owned();
        let (code, out, err) = run_cli(&[
            "convert",
            "-f",
            &path,
            "--default",
            &name,
            "--upstreams",
            "github",
        ]);
        assert_eq!(code, 1, "{}: {err}", file.display());
        assert_eq!(out, "", "nothing is written on failure");
        for e in &expected {
            assert!(
                err.contains(e.as_str()),
                "{}: expected {e:?} in\n{err}",
                file.display()
            );
        }
        // Every error names the file and the resource.
        for line in err
            .lines()
            .filter(|l| l.starts_with("error: ") && !l.contains("conversion failed"))
        {
            assert!(line.contains(&path), "{line}");
            assert!(
                line.contains(&format!("MCPExternalAuthConfig \"{name}\"")),
                "{line}"
            );
        }
    }
}

/// All 4 types × every combination of the 3 sub-objects: the CEL rules admit exactly the spec that
/// has its own type's sub-object and no other.
#[test]
fn cel_rules_admit_exactly_the_sub_object_of_the_type() {
    let spec_schema = schema("v1beta1")["properties"]["spec"].clone();
    let sub_objects = ["upstreamInject", "tokenExchange", "headerInjection"];
    for t in ExternalAuthType::ALL {
        for mask in 0..8u8 {
            let mut spec = json!({"type": t.as_str()});
            let mut set = Vec::new();
            for (i, field) in sub_objects.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    spec[*field] = json!({});
                    set.push(*field);
                }
            }
            let mut errors = Vec::new();
            cel_errors(&spec_schema, &spec, &mut errors);
            let expected_ok = set == t.sub_object().into_iter().collect::<Vec<_>>();
            assert_eq!(errors.is_empty(), expected_ok, "{spec}: {errors:?}");
            if t == ExternalAuthType::Unauthenticated && !set.is_empty() {
                assert!(errors.contains(&crd::UNAUTHENTICATED_MESSAGE.to_owned()));
            }
            if let (Some(field), false) =
                (t.sub_object(), set.contains(&t.sub_object().unwrap_or("")))
            {
                assert!(
                    errors.contains(&format!(
                        "{field} configuration must be set if and only if type is '{}'",
                        t.as_str()
                    )),
                    "{spec}: {errors:?}"
                );
            }
        }
    }
}

#[test]
fn schema_rejects_what_the_types_forbid() {
    let base = |spec: Value| {
        json!({
            "apiVersion": "toolhive.stacklok.dev/v1beta1",
            "kind": "MCPExternalAuthConfig",
            "metadata": {"name": "x"},
            "spec": spec
        })
    };
    let cases = [
        (json!({}), "\"type\" is a required property"),
        (
            json!({"type": "headerInjection", "headerInjection": {"headerName": "X"}}),
            "\"valueSecretRef\" is a required property",
        ),
        (
            json!({"type": "tokenExchange", "tokenExchange": {"tokenUrl": "https://x/t",
                "clientSecretRef": {"name": "s"}}}),
            "\"key\" is a required property",
        ),
        (
            json!({"type": "tokenExchange", "tokenExchange": {"tokenUrl": "https://x/t",
                "scopes": "read"}}),
            "is not of type \"array\"",
        ),
    ];
    for (spec, expected) in cases {
        let errors = admission_errors(&base(spec.clone()));
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{spec}: expected {expected:?} in {errors:?}"
        );
    }
    // A valid one for contrast, in the deprecated version.
    let mut ok =
        base(json!({"type": "upstreamInject", "upstreamInject": {"providerName": "github"}}));
    ok["apiVersion"] = json!("toolhive.stacklok.dev/v1alpha1");
    assert_eq!(admission_errors(&ok), Vec::<String>::new());
}
