//! The resource kinds the stand-in serves: a fixed set of built-in ones, and every
//! CustomResourceDefinition created through it.

use serde_json::{Value, json};

/// One served resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Kind {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    /// Writes to the main resource keep the status; `/status` writes change only the status.
    pub status_subresource: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// CRD `additionalPrinterColumns` (for `kubectl get`).
    pub printer_columns: Vec<Value>,
}

impl Kind {
    fn builtin(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        status: bool,
        short: &[&str],
    ) -> Kind {
        Kind {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            namespaced,
            status_subresource: status,
            short_names: short.iter().map(|s| (*s).to_owned()).collect(),
            categories: vec![],
            printer_columns: vec![],
        }
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The APIResource entries of discovery (the resource and its status subresource).
    pub fn discovery(&self) -> Vec<Value> {
        let verbs = [
            "create", "delete", "get", "list", "patch", "update", "watch",
        ];
        let mut out = vec![json!({
            "name": self.plural, "singularName": self.singular, "namespaced": self.namespaced,
            "kind": self.kind, "verbs": verbs, "shortNames": self.short_names, "categories": self.categories,
        })];
        if self.status_subresource {
            out.push(json!({ "name": format!("{}/status", self.plural), "singularName": "", "namespaced": self.namespaced,
                "kind": self.kind, "verbs": ["get", "patch", "update"] }));
        }
        out
    }

    /// The kind a CRD object declares (its storage version), if it is well formed.
    pub fn from_crd(crd: &Value) -> Option<Kind> {
        let spec = crd.get("spec")?;
        let names = spec.get("names")?;
        let versions = spec.get("versions")?.as_array()?;
        let version = versions
            .iter()
            .find(|v| v.get("storage") == Some(&Value::Bool(true)))
            .or(versions.first())?;
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let kind = names.get("kind")?.as_str()?.to_owned();
        Some(Kind {
            group: spec.get("group")?.as_str()?.to_owned(),
            version: version.get("name")?.as_str()?.to_owned(),
            plural: names.get("plural")?.as_str()?.to_owned(),
            singular: names
                .get("singular")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| kind.to_lowercase()),
            kind,
            namespaced: spec.get("scope").and_then(Value::as_str) != Some("Cluster"),
            status_subresource: version.pointer("/subresources/status").is_some(),
            short_names: strings(names.get("shortNames")),
            categories: strings(names.get("categories")),
            printer_columns: version
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        })
    }
}

/// The built-in kinds an operator and kubectl need here.
pub fn builtins() -> Vec<Kind> {
    vec![
        Kind::builtin("", "v1", "namespaces", "Namespace", false, true, &["ns"]),
        Kind::builtin("", "v1", "nodes", "Node", false, true, &["no"]),
        Kind::builtin("", "v1", "secrets", "Secret", true, false, &[]),
        Kind::builtin("", "v1", "configmaps", "ConfigMap", true, false, &["cm"]),
        Kind::builtin(
            "",
            "v1",
            "serviceaccounts",
            "ServiceAccount",
            true,
            false,
            &["sa"],
        ),
        Kind::builtin("", "v1", "services", "Service", true, true, &["svc"]),
        Kind::builtin("", "v1", "pods", "Pod", true, true, &["po"]),
        Kind::builtin("", "v1", "events", "Event", true, false, &["ev"]),
        Kind::builtin(
            "apps",
            "v1",
            "deployments",
            "Deployment",
            true,
            true,
            &["deploy"],
        ),
        Kind::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "roles",
            "Role",
            true,
            false,
            &[],
        ),
        Kind::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            true,
            false,
            &[],
        ),
        Kind::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            false,
            false,
            &[],
        ),
        Kind::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            false,
            &[],
        ),
        Kind::builtin(
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            true,
            false,
            &[],
        ),
        Kind::builtin(
            "events.k8s.io",
            "v1",
            "events",
            "Event",
            true,
            false,
            &["ev"],
        ),
        Kind::builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            true,
            &["crd", "crds"],
        ),
    ]
}
