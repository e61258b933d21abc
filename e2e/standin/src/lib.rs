//! A small Kubernetes API server for tests and the local demo, where no kube-apiserver can run.
//!
//! It serves what a kube-runtime controller and `kubectl` need: discovery, CRUD, patches
//! (merge, JSON, apply), status subresources, list and watch with resourceVersion resume,
//! Tables for `kubectl get` (CRD printer columns), CRD registration, finalizers and
//! deletionTimestamp, garbage collection by owner uid, optimistic concurrency, and — essential
//! for `owns()` — no watch event for a write that changes nothing.
//!
//! It does not do: schema validation, defaulting, CEL rules, admission, RBAC, protobuf,
//! managedFields (server-side apply is a keyed deep merge), field pruning. The kind e2e covers
//! those.

pub mod kubelet;
pub mod registry;
pub mod selectors;
pub mod server;
pub mod store;
pub mod table;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A kubeconfig that points at a stand-in on `addr` (plain HTTP, a dummy token).
pub fn kubeconfig(addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n    namespace: default\ncurrent-context: standin\nusers:\n- name: standin\n  user:\n    token: standin\n"
    )
}

/// Creates the CRDs of every `*.yaml` file of `dir`.
pub fn load_crds(store: &mut store::Store, dir: &Path) -> Result<(), String> {
    let kind = store
        .kind("apiextensions.k8s.io", "customresourcedefinitions")
        .ok_or("no CRD kind")?;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let crd: serde_json::Value =
            serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        store
            .create(&kind, "", crd)
            .map_err(|e| format!("{}: {}", f.display(), e.message))?;
    }
    Ok(())
}

/// Serves a stand-in on a free loopback port from the current tokio runtime; returns its
/// address and store.
pub async fn spawn(
    crds: Option<&Path>,
    auto_ready_deployments: bool,
) -> Result<(SocketAddr, server::Shared), String> {
    let mut store = store::Store::new(auto_ready_deployments);
    if let Some(dir) = crds {
        load_crds(&mut store, dir)?;
    }
    let shared: server::Shared = Arc::new(Mutex::new(store));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let app = server::router(shared.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, shared))
}
