//! The Kubernetes permissions the operator's code uses, in one place. The chart and the
//! kustomize RBAC must grant exactly these (`operator/tests/manifests.rs` renders both and
//! compares), and these must be exactly what the operator calls plus what the agents' Role
//! needs (`operator/tests/controller.rs::rbac_is_what_the_operator_calls` records every
//! request against the API stand-in), so a verb the code never uses, or one it needs and
//! lacks, fails CI.

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
