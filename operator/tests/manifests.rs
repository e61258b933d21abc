//! The shipped manifests: the Helm chart lints and renders valid Kubernetes objects (default
//! and K3s edge values), `config/default` renders valid objects, and the operator's RBAC is
//! the same in the chart, in kustomize and in the code (`operator/src/rbac.rs`): a verb the
//! code never uses, or one it needs and lacks, fails here. Uses helm 4 and kubectl 1.35 from
//! the project's tools and kubernetes-validate.

use qis_operator::rbac::{CLUSTER_RULES, NODE_RULE, SECRET_RULE, grants, policy_grants};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn tool(path: &str, name: &str) -> PathBuf {
    let local = qis_testkit::workspace_root().join(path);
    if local.exists() {
        local
    } else {
        PathBuf::from(name)
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run scripts/install-tools.sh)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn helm(args: &[&str]) -> String {
    run(Command::new(tool(".tools/bin/helm", "helm"))
        .args(args)
        .current_dir(qis_testkit::workspace_root()))
}

fn kustomize(dir: &str) -> String {
    run(Command::new(tool(".tools/bin/kubectl", "kubectl"))
        .args(["kustomize", dir])
        .current_dir(qis_testkit::workspace_root()))
}

fn validate(yaml: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("objects.yaml");
    std::fs::write(&file, yaml).expect("write");
    run(Command::new(tool(
        ".tools/venv/bin/kubernetes-validate",
        "kubernetes-validate",
    ))
    .args(["--strict", "--quiet"])
    .arg(&file));
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| Value::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .collect()
}

type Grants = BTreeSet<(String, String, String)>;

fn cluster_role_grants(yaml: &str) -> Grants {
    let role = docs(yaml)
        .into_iter()
        .find(|d| d["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    let mut out = Grants::new();
    for rule in role["rules"].as_array().expect("rules") {
        for g in rule["apiGroups"].as_array().expect("groups") {
            for r in rule["resources"].as_array().expect("resources") {
                for v in rule["verbs"].as_array().expect("verbs") {
                    out.insert((
                        g.as_str().unwrap_or_default().into(),
                        r.as_str().unwrap_or_default().into(),
                        v.as_str().unwrap_or_default().into(),
                    ));
                }
            }
        }
    }
    out
}

/// Proves `helm lint` passes with the default and the K3s edge values.
#[test]
fn chart_lints() {
    helm(&["lint", "charts/qis-operator"]);
    helm(&[
        "lint",
        "charts/qis-operator",
        "-f",
        "charts/qis-operator/values-k3s-edge.yaml",
    ]);
}

/// Proves the chart renders objects that validate against the Kubernetes schemas: default
/// values, the edge profile with leader election and per-namespace Secret access.
#[test]
fn chart_renders_valid_objects() {
    validate(&helm(&[
        "template",
        "qis",
        "charts/qis-operator",
        "-n",
        "qis-system",
    ]));
    let edge = helm(&[
        "template",
        "qis",
        "charts/qis-operator",
        "-n",
        "qis-system",
        "-f",
        "charts/qis-operator/values-k3s-edge.yaml",
        "--set",
        "replicaCount=2",
        "--set",
        "rbac.secretNamespaces={factory}",
        "--set",
        "nats.bundled.leafnode.enabled=true",
        "--set",
        "nats.bundled.leafnode.remoteUrl=nats-leaf://hub:7422",
        "--set",
        "watchNamespace=factory",
    ]);
    validate(&edge);
    assert!(
        edge.contains("--watch-namespace=factory"),
        "watchNamespace scopes the operator"
    );
    assert!(
        !helm(&["template", "qis", "charts/qis-operator"]).contains("--watch-namespace"),
        "every namespace by default"
    );
    assert!(
        edge.contains("nats://qis-qis-operator-nats.qis-system.svc:4222"),
        "the bundled NATS URL names its namespace: agents resolve it from the swarms' namespaces"
    );
    assert!(
        edge.contains("--leader-elect"),
        "two replicas elect a leader"
    );
    assert!(
        edge.contains("kind: StatefulSet") && edge.contains("leafnodes"),
        "bundled NATS as a leaf node"
    );
    assert!(
        !cluster_role_grants(&edge).contains(&("".into(), "secrets".into(), "get".into())),
        "Secrets only per namespace"
    );
}

/// Proves `kubectl kustomize config/default` renders valid objects, with the CRDs.
#[test]
fn kustomize_default_renders_valid_objects() {
    let rendered = kustomize("config/default");
    validate(&rendered);
    let kinds: Vec<String> = docs(&rendered)
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    for k in [
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "ServiceAccount",
        "Deployment",
        "Namespace",
    ] {
        assert!(
            kinds.iter().any(|x| x == k),
            "{k} missing from config/default"
        );
    }
}

/// Proves the operator's RBAC is one thing: what the code declares it uses, what the chart
/// grants and what kustomize grants are equal; without site discovery the chart drops nodes.
#[test]
fn rbac_matches_the_code_everywhere() {
    let mut code = grants(CLUSTER_RULES);
    code.extend(grants(&[SECRET_RULE, NODE_RULE]));
    let chart = cluster_role_grants(&helm(&[
        "template",
        "qis",
        "charts/qis-operator",
        "-n",
        "qis-system",
    ]));
    let kust = cluster_role_grants(&kustomize("config/default"));
    assert_eq!(
        chart, code,
        "chart ClusterRole differs from operator/src/rbac.rs"
    );
    assert_eq!(
        kust, code,
        "config/rbac/role.yaml differs from operator/src/rbac.rs"
    );
    let no_nodes = cluster_role_grants(&helm(&[
        "template",
        "qis",
        "charts/qis-operator",
        "--set",
        "siteDiscovery.enabled=false",
    ]));
    assert!(no_nodes.iter().all(|(_, r, _)| r != "nodes"));
}

/// Proves the operator can create the agents' Role: Kubernetes only lets it grant what it
/// holds itself, so every agent permission must be in the operator's.
#[test]
fn operator_holds_every_permission_it_grants_agents() {
    let operator = grants(CLUSTER_RULES);
    for (g, r, v) in policy_grants(&qis_operator::workload::agent_rules()) {
        assert!(
            operator.contains(&(g.clone(), r.clone(), v.clone())),
            "agents get {g}/{r} {v} but the operator lacks it"
        );
    }
}
