//! The `MCPExternalAuthConfig` CustomResourceDefinition, generated from the Rust types in
//! [`super::resources`]: their fields, required fields, patterns and doc comments give the
//! openAPIV3Schema, and [`cel_rules`] gives the `x-kubernetes-validations`.
//!
//! `k8s/crd/mcpexternalauthconfigs.yaml` is this output, committed; a test keeps them identical.

use serde_json::{json, Map, Value};

use super::resources::{
    ExternalAuthType, MCPExternalAuthConfigSpec, EXTERNAL_AUTH_KIND, GROUP, STORAGE_VERSION,
    VERSIONS,
};

pub const PLURAL: &str = "mcpexternalauthconfigs";

/// The CEL rules on `spec`, as ToolHive words them: each sub-object is set if and only if its type
/// is selected, and none is set for `unauthenticated`.
pub fn cel_rules() -> Vec<Value> {
    let mut rules = Vec::new();
    let mut none_set = Vec::new();
    for t in ExternalAuthType::ALL {
        let Some(field) = t.sub_object() else {
            continue;
        };
        let ty = t.as_str();
        rules.push(json!({
            "rule": format!("self.type == '{ty}' ? has(self.{field}) : !has(self.{field})"),
            "message": iff_message(t).unwrap_or_default(),
        }));
        none_set.push(format!("!has(self.{field})"));
    }
    rules.push(json!({
        "rule": format!("self.type == 'unauthenticated' ? ({}) : true", none_set.join(" && ")),
        "message": UNAUTHENTICATED_MESSAGE,
    }));
    rules
}

/// The message of a type's iff-rule, e.g. `upstreamInject configuration must be set if and only if
/// type is 'upstreamInject'`.
pub fn iff_message(t: ExternalAuthType) -> Option<String> {
    let field = t.sub_object()?;
    Some(format!(
        "{field} configuration must be set if and only if type is '{}'",
        t.as_str()
    ))
}

pub const UNAUTHENTICATED_MESSAGE: &str =
    "no configuration must be set when type is 'unauthenticated'";

/// The openAPIV3Schema of `spec`, derived from [`MCPExternalAuthConfigSpec`] and made structural
/// (no `title`, no `additionalProperties: false` next to `properties`, optional fields not
/// nullable).
pub fn spec_schema() -> Value {
    let settings = schemars::generate::SchemaSettings::draft07().with(|s| {
        s.inline_subschemas = true;
        s.meta_schema = None;
    });
    let schema = settings
        .into_generator()
        .into_root_schema_for::<MCPExternalAuthConfigSpec>();
    let mut value = schema.to_value();
    make_structural(&mut value);
    value
}

/// Removes what JSON Schema allows but a Kubernetes structural schema does not.
fn make_structural(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("title");
            map.remove("$schema");
            if map.contains_key("properties") {
                map.remove("additionalProperties");
            }
            // `Option<T>` comes out as `type: [T, "null"]`; absent is how Kubernetes says "unset".
            if let Some(Value::Array(types)) = map.get("type") {
                let non_null: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                if let [only] = non_null.as_slice() {
                    let only = (*only).clone();
                    map.insert("type".to_owned(), only);
                }
            }
            for (_, child) in map.iter_mut() {
                make_structural(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(make_structural),
        _ => {}
    }
}

/// The whole CustomResourceDefinition.
pub fn manifest() -> Value {
    let schema = json!({
        "description": "MCPExternalAuthConfig configures how an MCP gateway authenticates the \
            requests it sends to a backend MCP server (ToolHive's resource; outgoing-auth converts \
            it into its Envoy filter configuration).",
        "type": "object",
        "properties": {
            "apiVersion": {
                "description": "APIVersion defines the versioned schema of this representation of an object.",
                "type": "string"
            },
            "kind": {
                "description": "Kind is a string value representing the REST resource this object represents.",
                "type": "string"
            },
            "metadata": {"type": "object"},
            "spec": spec_schema(),
        },
        "required": ["spec"],
    });
    let versions: Vec<Value> = VERSIONS
        .iter()
        .map(|v| {
            let mut version = Map::new();
            version.insert("name".into(), json!(v));
            version.insert("served".into(), json!(true));
            version.insert("storage".into(), json!(*v == STORAGE_VERSION));
            if *v != STORAGE_VERSION {
                version.insert("deprecated".into(), json!(true));
                version.insert(
                    "deprecationWarning".into(),
                    json!(format!("{GROUP}/{v} is deprecated; use {STORAGE_VERSION}")),
                );
            }
            version.insert("schema".into(), json!({"openAPIV3Schema": schema}));
            version.insert(
                "additionalPrinterColumns".into(),
                json!([
                    {"name": "Type", "type": "string", "jsonPath": ".spec.type"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
                ]),
            );
            Value::Object(version)
        })
        .collect();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{PLURAL}.{GROUP}")},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": EXTERNAL_AUTH_KIND,
                "listKind": format!("{EXTERNAL_AUTH_KIND}List"),
                "plural": PLURAL,
                "singular": EXTERNAL_AUTH_KIND.to_ascii_lowercase(),
                "shortNames": ["extauth", "mcpextauth"],
                "categories": ["toolhive"],
            },
            "scope": "Namespaced",
            "versions": versions,
        }
    })
}

/// The manifest as `outgoing-auth crd` prints it.
pub fn manifest_yaml() -> Result<String, String> {
    let body = serde_saphyr::to_string(&manifest()).map_err(|e| e.to_string())?;
    Ok(format!(
        "# The MCPExternalAuthConfig CRD (ToolHive's resource, the spec types outgoing-auth \
         converts).\n\
         # Generated by `outgoing-auth crd` from src/k8s/resources.rs; do not edit. Regenerate with\n\
         #   cargo run --bin outgoing-auth -- crd > k8s/crd/mcpexternalauthconfigs.yaml\n\
         # If ToolHive's operator is installed, its own CRD (a superset) already defines this \
         resource.\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
        path.iter().fold(v, |v, k| &v[*k])
    }

    #[test]
    fn schema_follows_the_types() {
        let s = spec_schema();
        assert_eq!(s["required"], json!(["type"]));
        assert_eq!(
            s["properties"]["type"]["enum"],
            json!([
                "upstreamInject",
                "tokenExchange",
                "headerInjection",
                "unauthenticated"
            ])
        );
        let ui = find(&s, &["properties", "upstreamInject"]);
        assert_eq!(ui["required"], json!(["providerName"]));
        assert_eq!(ui["properties"]["providerName"]["minLength"], json!(1));
        let te = find(&s, &["properties", "tokenExchange"]);
        assert_eq!(te["required"], json!(["tokenUrl"]));
        assert_eq!(
            te["properties"]["subjectTokenType"]["pattern"],
            json!(super::super::resources::SUBJECT_TOKEN_TYPE_PATTERN)
        );
        assert_eq!(
            te["properties"]["clientSecretRef"]["required"],
            json!(["name", "key"])
        );
        let hi = find(&s, &["properties", "headerInjection"]);
        assert_eq!(hi["required"], json!(["headerName", "valueSecretRef"]));
    }

    #[test]
    fn schema_is_structural() {
        fn walk(v: &Value, path: &str) {
            let Value::Object(map) = v else { return };
            for banned in ["title", "$ref", "$schema", "nullable", "oneOf", "anyOf"] {
                assert!(!map.contains_key(banned), "{path} has {banned}");
            }
            if map.contains_key("properties") {
                assert!(!map.contains_key("additionalProperties"), "{path}");
            }
            if let Some(t) = map.get("type") {
                assert!(t.is_string(), "{path}: type must be one string, got {t}");
            } else {
                panic!("{path} has no type");
            }
            if let Some(Value::Object(props)) = map.get("properties") {
                for (k, child) in props {
                    walk(child, &format!("{path}.{k}"));
                }
            }
            if let Some(items) = map.get("items") {
                walk(items, &format!("{path}[]"));
            }
        }
        walk(&spec_schema(), "spec");
    }

    #[test]
    fn cel_rules_cover_every_type() {
        let rules = cel_rules();
        assert_eq!(rules.len(), 4);
        assert_eq!(
            rules[0]["rule"],
            "self.type == 'upstreamInject' ? has(self.upstreamInject) : !has(self.upstreamInject)"
        );
        assert_eq!(
            rules[0]["message"],
            "upstreamInject configuration must be set if and only if type is 'upstreamInject'"
        );
        assert_eq!(
            rules[3]["rule"],
            "self.type == 'unauthenticated' ? (!has(self.upstreamInject) && \
             !has(self.tokenExchange) && !has(self.headerInjection)) : true"
        );
        assert_eq!(spec_schema()["x-kubernetes-validations"], json!(rules));
    }

    #[test]
    fn manifest_serves_both_versions_and_stores_v1beta1() {
        let m = manifest();
        let versions = m["spec"]["versions"].as_array().unwrap();
        let names: Vec<_> = versions.iter().map(|v| v["name"].clone()).collect();
        assert_eq!(names, vec![json!("v1beta1"), json!("v1alpha1")]);
        assert_eq!(versions[0]["storage"], json!(true));
        assert_eq!(versions[1]["storage"], json!(false));
        assert_eq!(versions[1]["deprecated"], json!(true));
        assert_eq!(
            m["metadata"]["name"],
            "mcpexternalauthconfigs.toolhive.stacklok.dev"
        );
        let yaml = manifest_yaml().unwrap();
        let back: Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, m);
    }
}
