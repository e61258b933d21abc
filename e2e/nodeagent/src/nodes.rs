//! Node registration and heartbeat: what a kubelet posts about its node, and what the node
//! lifecycle controller (not running on the test control plane) would do for a Ready node.

use crate::{Ctx, Error, FIELD_MANAGER, NodeSpec};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The taints `TaintNodesByCondition` admission puts on every new Node until the node
/// lifecycle controller sees it Ready.
const CONDITION_TAINTS: [&str; 2] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];

/// Now, to the second, as the API writes times.
pub(crate) fn now() -> String {
    let ts = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(ts.as_second())
        .unwrap_or(ts)
        .to_string()
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Creates or updates the Node (labels, taints) and posts a Ready status.
pub(crate) async fn register(client: &Client, spec: &NodeSpec) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    let mut labels = spec.labels.clone();
    labels.insert("kubernetes.io/hostname".to_owned(), spec.name.clone());
    labels.insert("kubernetes.io/os".to_owned(), "linux".to_owned());
    labels.insert("kubernetes.io/arch".to_owned(), arch().to_owned());
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": spec.name, "labels": labels},
        "spec": {"taints": spec.taints},
    });
    api.patch(
        &spec.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(node),
    )
    .await?;
    post_status(&api, &spec.name, &now()).await?;
    clear_condition_taints(&api, spec).await
}

/// The status a Ready node posts; `since` is the Ready condition's transition time.
async fn post_status(api: &Api<Node>, name: &str, since: &str) -> Result<(), Error> {
    let resources =
        json!({"cpu": "8", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    let now = now();
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": since})
    };
    let status = json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure"),
            condition("Ready", "True", "KubeletReady", "qis-nodeagent is posting ready status"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": name},
        ],
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
            "osImage": "qis-nodeagent", "containerRuntimeVersion": "qis-nodeagent://local-processes",
            "kubeletVersion": "v1.33.0-qis-nodeagent", "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": arch(),
        },
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(())
}

/// Removes the not-ready/unreachable taints admission added (the node is Ready), keeping the
/// configured ones.
async fn clear_condition_taints(api: &Api<Node>, spec: &NodeSpec) -> Result<(), Error> {
    let node = api.get(&spec.name).await?;
    let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
    if taints
        .iter()
        .any(|t| CONDITION_TAINTS.contains(&t.key.as_str()))
    {
        let kept: Vec<_> = taints
            .into_iter()
            .filter(|t| !CONDITION_TAINTS.contains(&t.key.as_str()))
            .collect();
        let patch: Value = json!({"spec": {"taints": kept}});
        api.patch(&spec.name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    Ok(())
}

/// Refreshes the Ready condition every `period`; re-registers a Node someone deleted.
pub(crate) async fn heartbeat(ctx: Arc<Ctx>, period: Duration) {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let since = now();
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tick.tick().await;
        for node in &ctx.config.nodes {
            let result = match post_status(&api, &node.name, &since).await {
                Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 => {
                    register(&ctx.client, node).await
                }
                other => other,
            };
            let result = match result {
                Ok(()) => clear_condition_taints(&api, node).await,
                e => e,
            };
            if let Err(e) = result {
                tracing::warn!(node = node.name, error = %e, "node heartbeat failed");
            }
        }
    }
}

/// Deletes the Node (absent is fine).
pub(crate) async fn remove(client: &Client, name: &str) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
