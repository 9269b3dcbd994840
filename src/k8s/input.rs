//! Reading Kubernetes resources: files (YAML, multi-document, or JSON; `-` is stdin), split into
//! documents and sorted into the two kinds the converter reads.

use serde_json::Value;

use super::diag::{quote, Diagnostic};
use super::resources::{EXTERNAL_AUTH_KIND, GROUP, VERSIONS, VIRTUAL_SERVER_KIND};

/// The text of one input, with the name errors use for it (`<stdin>` for `-`).
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// One document of a source.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub file: String,
    /// `document 2`, `item 3 of the List in document 1`; `None` when the file holds one document.
    pub position: Option<String>,
    pub value: Value,
}

impl Document {
    /// `FILE` or `FILE (document 2)`.
    pub fn origin(&self) -> String {
        match &self.position {
            Some(p) => format!("{} ({p})", self.file),
            None => self.file.clone(),
        }
    }
}

/// Splits a source into its documents. JSON (one value, several concatenated, or an array; any
/// input starting with `{` or `[`) and YAML (`---`-separated) are both accepted; empty documents are skipped and `kind: List` is expanded.
pub fn documents(source: &Source) -> Result<Vec<Document>, Diagnostic> {
    let text = source.text.strip_prefix('\u{feff}').unwrap_or(&source.text);
    let values = if looks_like_json(text) {
        parse_json(&source.name, text)?
    } else {
        parse_yaml(&source.name, text)?
    }
    .into_iter()
    .filter(|v| !v.is_null())
    .collect::<Vec<_>>();

    let mut out = Vec::new();
    let single = values.len() == 1;
    for (i, value) in values.into_iter().enumerate() {
        let doc_label = format!("document {}", i + 1);
        if let Some(items) = list_items(&value) {
            for (j, item) in items.iter().enumerate() {
                out.push(Document {
                    file: source.name.clone(),
                    position: Some(if single {
                        format!("List item {}", j + 1)
                    } else {
                        format!("{doc_label}, List item {}", j + 1)
                    }),
                    value: item.clone(),
                });
            }
        } else {
            out.push(Document {
                file: source.name.clone(),
                position: (!single).then_some(doc_label),
                value,
            });
        }
    }
    return Ok(out);

    fn parse_json(file: &str, text: &str) -> Result<Vec<Value>, Diagnostic> {
        let mut values = Vec::new();
        for v in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            match v {
                Ok(Value::Array(items)) => values.extend(items),
                Ok(v) => values.push(v),
                Err(e) => {
                    return Err(Diagnostic::error(
                        format!("{file}:{}:{}", e.line(), e.column()),
                        format!("invalid JSON: {}", json_error_kind(&e)),
                    ))
                }
            }
        }
        Ok(values)
    }

    fn parse_yaml(file: &str, text: &str) -> Result<Vec<Value>, Diagnostic> {
        serde_saphyr::from_multiple::<Value>(text).map_err(|e| {
            let e = e.without_snippet();
            let origin = match e.location() {
                Some(l) => format!("{file}:{}:{}", l.line(), l.column()),
                None => file.to_owned(),
            };
            Diagnostic::error(origin, format!("invalid YAML: {}", yaml_error_kind(e)))
        })
    }
}

fn looks_like_json(text: &str) -> bool {
    matches!(text.trim_start().chars().next(), Some('{' | '['))
}

/// The items of a `kind: List` (what `kubectl get -o yaml` prints for several resources).
fn list_items(v: &Value) -> Option<&Vec<Value>> {
    let kind = v.get("kind")?.as_str()?;
    if !kind.ends_with("List") {
        return None;
    }
    v.get("items")?.as_array()
}

fn json_error_kind(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text.get(..i).unwrap_or(&text).to_owned(),
        None => text,
    }
}

fn yaml_error_kind(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" at line ") {
        Some(i) => text.get(..i).unwrap_or(&text).to_owned(),
        None => text,
    };
    // The parser's advice is for programmers using it, not for someone writing a manifest.
    if text.contains("recursive references") {
        return "an alias refers to the node that defines its anchor (a recursive structure)"
            .to_owned();
    }
    text.replace(", set DuplicateKeyPolicy in Options if acceptable", "")
}

/// What a document turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    ExternalAuth(Object),
    VirtualServer(Object),
}

/// A resource of one of the two kinds the converter reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub api_version: String,
    pub kind: &'static str,
    pub name: String,
    pub namespace: Option<String>,
    pub document: Document,
    /// `spec`, or `Null` when absent.
    pub spec: Value,
}

impl Object {
    /// `FILE: MCPExternalAuthConfig "name"` (with the document number in multi-document files).
    pub fn origin(&self) -> String {
        format!(
            "{}: {} {}",
            self.document.origin(),
            self.kind,
            quote(&self.name)
        )
    }
}

/// Sorts a document: `Ok(Some)` for the two kinds the converter reads, `Ok(None)` with a note for
/// anything else, `Err` for a document that claims one of the two kinds but is not usable.
pub fn classify(doc: Document) -> Result<(Option<Resource>, Option<Diagnostic>), Diagnostic> {
    let origin = doc.origin();
    let Value::Object(map) = &doc.value else {
        return Err(Diagnostic::error(
            origin,
            format!(
                "expected a Kubernetes resource (a mapping with apiVersion, kind, metadata), found {}",
                type_name(&doc.value)
            ),
        ));
    };
    let field = |key: &str| -> Result<Option<&str>, Diagnostic> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(Diagnostic::error(
                origin.clone(),
                format!("{key} must be a string, found {}", type_name(other)),
            )),
        }
    };
    let (Some(api_version), Some(kind)) = (field("apiVersion")?, field("kind")?) else {
        return Err(Diagnostic::error(
            origin,
            "not a Kubernetes resource: apiVersion and kind are required",
        ));
    };
    let known_kind = [EXTERNAL_AUTH_KIND, VIRTUAL_SERVER_KIND]
        .into_iter()
        .find(|k| *k == kind);
    let Some(known_kind) = known_kind else {
        if [EXTERNAL_AUTH_KIND, VIRTUAL_SERVER_KIND]
            .iter()
            .any(|k| k.eq_ignore_ascii_case(kind))
        {
            return Err(Diagnostic::error(
                origin,
                format!(
                    "unknown kind {} (kinds are case-sensitive: {EXTERNAL_AUTH_KIND}, \
                     {VIRTUAL_SERVER_KIND})",
                    quote(kind)
                ),
            ));
        }
        let name = meta_name(map).map(|n| format!(" {}", quote(n)));
        return Ok((
            None,
            Some(Diagnostic::note(
                origin,
                format!(
                    "skipped {api_version} {kind}{}: only {EXTERNAL_AUTH_KIND} and \
                     {VIRTUAL_SERVER_KIND} are read",
                    name.unwrap_or_default()
                ),
            )),
        ));
    };
    let version_ok = api_version
        .strip_prefix(GROUP)
        .and_then(|v| v.strip_prefix('/'))
        .is_some_and(|v| VERSIONS.contains(&v));
    if !version_ok {
        return Err(Diagnostic::error(
            origin,
            format!(
                "unsupported apiVersion {} for {known_kind}: expected {GROUP}/{} or {GROUP}/{}",
                quote(api_version),
                VERSIONS[0],
                VERSIONS[1]
            ),
        ));
    }
    let Some(name) = meta_name(map).filter(|n| !n.is_empty()) else {
        return Err(Diagnostic::error(
            origin,
            format!("{known_kind} has no metadata.name (a non-empty string)"),
        ));
    };
    let namespace = map
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let object = Object {
        api_version: api_version.to_owned(),
        kind: known_kind,
        name: name.to_owned(),
        namespace,
        spec: map.get("spec").cloned().unwrap_or(Value::Null),
        document: doc.clone(),
    };
    let resource = if known_kind == EXTERNAL_AUTH_KIND {
        Resource::ExternalAuth(object)
    } else {
        Resource::VirtualServer(object)
    };
    Ok((Some(resource), None))
}

fn meta_name(map: &serde_json::Map<String, Value>) -> Option<&str> {
    map.get("metadata")?.get("name")?.as_str()
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn src(text: &str) -> Source {
        Source {
            name: "in.yaml".into(),
            text: text.into(),
        }
    }

    #[test]
    fn yaml_multi_document_skips_empty_documents() {
        let docs = documents(&src("---\na: 1\n---\n# nothing\n---\nb: 2\n")).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].value, json!({"a": 1}));
        assert_eq!(docs[1].origin(), "in.yaml (document 2)");
    }

    #[test]
    fn single_document_has_no_position() {
        let docs = documents(&src("a: 1\n")).unwrap();
        assert_eq!(docs[0].origin(), "in.yaml");
    }

    #[test]
    fn json_object_array_and_stream() {
        assert_eq!(documents(&src("{\"a\": 1}")).unwrap().len(), 1);
        assert_eq!(
            documents(&src("[{\"a\": 1}, {\"b\": 2}]")).unwrap().len(),
            2
        );
        assert_eq!(
            documents(&src("{\"a\": 1}\n{\"b\": 2}\n")).unwrap().len(),
            2
        );
    }

    #[test]
    fn list_is_expanded() {
        let docs = documents(&src(
            "apiVersion: v1\nkind: List\nitems:\n- {a: 1}\n- {b: 2}\n",
        ))
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].origin(), "in.yaml (List item 2)");
    }

    #[test]
    fn syntax_errors_name_file_line_and_column() {
        let e = documents(&src("a: 1\nb: [1,\n")).unwrap_err();
        assert_eq!(e.origin, "in.yaml:2:4");
        assert!(e.message.starts_with("invalid YAML: "), "{}", e.message);
        let e = documents(&src("{\"a\": }")).unwrap_err();
        assert_eq!(e.origin, "in.yaml:1:7");
        assert!(e.message.starts_with("invalid JSON: "), "{}", e.message);
        let e = documents(&src("a: 1\na: 2\n")).unwrap_err();
        assert_eq!(e.message, "invalid YAML: duplicate mapping key: a");
    }

    fn classify_value(v: Value) -> Result<(Option<Resource>, Option<Diagnostic>), Diagnostic> {
        classify(Document {
            file: "f.yaml".into(),
            position: None,
            value: v,
        })
    }

    #[test]
    fn classify_accepts_both_versions() {
        for v in ["v1beta1", "v1alpha1"] {
            let (r, note) = classify_value(json!({
                "apiVersion": format!("toolhive.stacklok.dev/{v}"),
                "kind": "MCPExternalAuthConfig",
                "metadata": {"name": "x", "namespace": "ns"},
                "spec": {"type": "unauthenticated"}
            }))
            .unwrap();
            let Some(Resource::ExternalAuth(o)) = r else {
                panic!("not classified")
            };
            assert_eq!(o.name, "x");
            assert_eq!(o.namespace.as_deref(), Some("ns"));
            assert_eq!(o.origin(), "f.yaml: MCPExternalAuthConfig \"x\"");
            assert!(note.is_none());
        }
    }

    #[test]
    fn classify_rejects_wrong_api_version_and_kind_case() {
        let e = classify_value(json!({
            "apiVersion": "toolhive.stacklok.dev/v1", "kind": "MCPExternalAuthConfig",
            "metadata": {"name": "x"}
        }))
        .unwrap_err();
        assert_eq!(
            e.message,
            "unsupported apiVersion \"toolhive.stacklok.dev/v1\" for MCPExternalAuthConfig: \
             expected toolhive.stacklok.dev/v1beta1 or toolhive.stacklok.dev/v1alpha1"
        );
        let e = classify_value(json!({
            "apiVersion": "toolhive.stacklok.dev/v1beta1", "kind": "mcpexternalauthconfig",
            "metadata": {"name": "x"}
        }))
        .unwrap_err();
        assert!(e
            .message
            .starts_with("unknown kind \"mcpexternalauthconfig\""));
        let e = classify_value(json!({"apiVersion": "v1"})).unwrap_err();
        assert!(e.message.contains("apiVersion and kind are required"));
        let e = classify_value(json!(["a"])).unwrap_err();
        assert!(e.message.contains("found a list"));
    }

    #[test]
    fn classify_skips_other_kinds_with_a_note() {
        let (r, note) = classify_value(json!({
            "apiVersion": "toolhive.stacklok.dev/v1beta1", "kind": "MCPServer",
            "metadata": {"name": "github"}
        }))
        .unwrap();
        assert!(r.is_none());
        assert_eq!(
            note.unwrap().to_string(),
            "note: f.yaml: skipped toolhive.stacklok.dev/v1beta1 MCPServer \"github\": only \
             MCPExternalAuthConfig and VirtualMCPServer are read"
        );
    }

    #[test]
    fn classify_requires_a_name() {
        let e = classify_value(json!({
            "apiVersion": "toolhive.stacklok.dev/v1beta1", "kind": "VirtualMCPServer",
            "metadata": {}
        }))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "error: f.yaml: VirtualMCPServer has no metadata.name (a non-empty string)"
        );
    }
}
