//! The Kubernetes permissions the operator's code uses, in one place. The chart and the
//! kustomize RBAC must grant exactly these (`operator/tests/manifests.rs` renders both and
//! compares), and these must be exactly what the operator calls plus what the agents' Role
//! needs (`operator/tests/controller/rbac.rs::rbac_is_what_the_operator_calls` runs the operator
//! under these rules on the real API server, which refuses what they lack, and reads its audit
//! log for what the operator asked), so a verb the code never uses, or one it needs and lacks,
//! fails CI.

/// One rule: API group, resources, verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

/// Always needed, cluster-wide (swarms live in any namespace).
pub const CLUSTER_RULES: &[Rule] = &[
    // Watch both kinds; patch adds and removes finalizers.
    Rule {
        group: "qis.dev",
        resources: &["qisswarms", "qissubjects"],
        verbs: &["get", "list", "watch", "patch"],
    },
    // Status writes; `get` on subjects' status only for the agents' Role (which reports
    // consensus there).
    Rule {
        group: "qis.dev",
        resources: &["qisswarms/status"],
        verbs: &["patch"],
    },
    // Children whose owner reference sets blockOwnerDeletion: where the
    // OwnerReferencesPermissionEnforcement admission plugin runs (OpenShift, hardened
    // clusters), that needs `update` on the owner's finalizers. Checked by admission, never a
    // request of its own.
    Rule {
        group: "qis.dev",
        resources: &["qisswarms/finalizers"],
        verbs: &["update"],
    },
    Rule {
        group: "qis.dev",
        resources: &["qissubjects/status"],
        verbs: &["get", "patch"],
    },
    // Agent Deployments: owned (watched), applied, pruned.
    Rule {
        group: "apps",
        resources: &["deployments"],
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
    },
    // The agents' ServiceAccount, Role, RoleBinding by server-side apply.
    Rule {
        group: "",
        resources: &["serviceaccounts"],
        verbs: &["get", "create", "patch"],
    },
    // The sites' outbox claims (`spec.agent.persistence`): applied, pruned with their site.
    Rule {
        group: "",
        resources: &["persistentvolumeclaims"],
        verbs: &["get", "list", "create", "patch", "delete"],
    },
    Rule {
        group: "rbac.authorization.k8s.io",
        resources: &["roles", "rolebindings"],
        verbs: &["get", "create", "patch"],
    },
    // Leader election, and granting the agents' reporter lease (a Role can only grant what its
    // creator holds).
    Rule {
        group: "coordination.k8s.io",
        resources: &["leases"],
        verbs: &["get", "list", "watch", "create", "update"],
    },
    // Events, created and patched when repeated.
    Rule {
        group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
    },
];

/// Reading NATS credentials named by swarms: cluster-wide, or per namespace (chart value
/// `rbac.secretNamespaces`).
pub const SECRET_RULE: Rule = Rule {
    group: "",
    resources: &["secrets"],
    verbs: &["get"],
};

/// Site discovery from node labels (`--watch-nodes`, chart value `siteDiscovery.enabled`).
pub const NODE_RULE: Rule = Rule {
    group: "",
    resources: &["nodes"],
    verbs: &["list", "watch"],
};

/// One permission: (API group, resource, verb).
pub type Grant = (String, String, String);

/// Every (group, resource, verb) the rules grant.
pub fn grants(rules: &[Rule]) -> std::collections::BTreeSet<Grant> {
    rules
        .iter()
        .flat_map(|r| {
            r.resources.iter().flat_map(move |res| {
                r.verbs
                    .iter()
                    .map(move |v| (r.group.to_owned(), (*res).to_owned(), (*v).to_owned()))
            })
        })
        .collect()
}

/// Every (group, resource, verb) Kubernetes `PolicyRule`s grant (the agents' Role).
pub fn policy_grants(
    rules: &[k8s_openapi::api::rbac::v1::PolicyRule],
) -> std::collections::BTreeSet<Grant> {
    let mut out = std::collections::BTreeSet::new();
    for rule in rules {
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    out.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    out
}
