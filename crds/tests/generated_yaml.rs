//! The CRD YAML in `crds/` is what the Rust types generate, and it is a structural schema that
//! an API server accepts.

use serde_json::Value;

/// Proves the committed YAML is current everywhere it ships (crds/, config/crd/bases/, the
/// chart): a type changed without `crdgen`, or a hand edit of any copy, fails here.
#[test]
fn crd_files_match_the_types() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in qis_crds::crdgen::OUTPUT_DIRS {
        for (file, crd) in qis_crds::crdgen::all() {
            let want = qis_crds::crdgen::render(&crd).expect("renders");
            let path = root.join(dir).join(file);
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                have == want,
                "{} is stale: run `cargo run -p qis-crds --bin crdgen` and commit the result",
                path.display()
            );
        }
    }
}

fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let version = &crd.spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    serde_json::to_value(schema).expect("json")
}

/// Proves the configuration reference in docs/ is the one the schemas generate.
#[test]
fn reference_doc_matches_the_types() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(qis_crds::crdgen::REFERENCE_FILE);
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == qis_crds::crdgen::reference(),
        "{} is stale: run `cargo run -p qis-crds --bin crdgen`",
        path.display()
    );
    assert!(
        have.contains("| `spec.stream.maxAge` |")
            && have.contains("| `spec.consumer.deliverPolicy` |")
    );
}

/// Walks a schema and lists every rule of a structural schema it breaks.
fn structural_violations(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        out.push(format!("{path}: schema is not an object"));
        return;
    };
    let free = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if !obj.contains_key("type") && !free && !int_or_string {
        out.push(format!("{path}: no type"));
    }
    for banned in [
        "$ref",
        "definitions",
        "$defs",
        "oneOf",
        "anyOf",
        "allOf",
        "not",
        "patternProperties",
        "additionalItems",
        "dependencies",
        "$schema",
        "id",
    ] {
        if obj.contains_key(banned) {
            out.push(format!("{path}: uses {banned}"));
        }
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        out.push(format!("{path}: both properties and additionalProperties"));
    }
    if obj.get("type") == Some(&Value::String("array".into())) {
        match obj.get("items") {
            Some(items) => structural_violations(items, &format!("{path}[]"), out),
            None => out.push(format!("{path}: array without items")),
        }
    }
    if obj.get("x-kubernetes-list-type") == Some(&Value::String("map".into())) {
        let keys: Vec<&str> = obj["x-kubernetes-list-map-keys"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let required: Vec<&str> = obj
            .get("items")
            .and_then(|i| i.get("required"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if keys.is_empty() || keys.iter().any(|k| !required.contains(k)) {
            out.push(format!(
                "{path}: list-map keys {keys:?} must be required in items"
            ));
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            structural_violations(sub, &format!("{path}.{name}"), out);
        }
    }
    if let Some(add) = obj.get("additionalProperties").filter(|a| a.is_object()) {
        structural_violations(add, &format!("{path}{{*}}"), out);
    }
}

/// Proves both CRDs are structural (what apiextensions/v1 requires), so an API server takes them.
#[test]
fn schemas_are_structural() {
    for (file, crd) in qis_crds::crdgen::all() {
        let mut out = Vec::new();
        structural_violations(&schema_of(&crd), "", &mut out);
        assert!(out.is_empty(), "{file}: {out:#?}");
        assert!(
            crd.spec
                .versions
                .iter()
                .all(|v| v.subresources.as_ref().is_some_and(|s| s.status.is_some()))
        );
    }
}

/// Proves the checker itself catches a non-structural schema (so the test above can fail).
#[test]
fn structural_check_catches_violations() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "a": {"description": "untyped"},
            "b": {"type": "array"},
            "c": {"anyOf": [{"type": "string"}], "type": "string"},
            "d": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"],
                  "items": {"type": "object", "properties": {"k": {"type": "string"}}}}
        }
    });
    let mut out = Vec::new();
    structural_violations(&bad, "", &mut out);
    assert_eq!(out.len(), 4, "{out:#?}");
}

/// Proves the API names (docs/crd-reference.md): group, version, kinds, short names, category, printer columns.
#[test]
fn names_and_columns_follow_the_design() {
    let crds = qis_crds::crdgen::all();
    let (_, swarm) = &crds[0];
    let (_, subject) = &crds[1];
    for (crd, kind, short) in [(swarm, "QisSwarm", "qsw"), (subject, "QisSubject", "qsub")] {
        assert_eq!(crd.spec.group, qis_crds::constants::API_GROUP);
        assert_eq!(crd.spec.versions[0].name, qis_crds::constants::API_VERSION);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, kind);
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&[short.to_owned()][..])
        );
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["qis".to_owned()][..])
        );
    }
    let columns: Vec<String> = subject.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .filter(|c| c.priority.unwrap_or(0) == 0)
        .map(|c| c.name.to_lowercase())
        .collect();
    assert_eq!(
        columns,
        ["address", "consensus", "strength", "agents", "alert", "age"]
    );
}
