//! A stand-in kubelet for the local full loop: it runs the Deployments the operator makes as
//! real local processes (replicas, args and environment from the pod template, downward-API
//! fields filled in), records each as a Pod object, probes `/readyz` and reports the ready
//! replicas back into the Deployment's status. Deleting a Pod kills its process (a new one is
//! started, as a ReplicaSet would).
//!
//! Only what the agent pods need: loopback networking (each pod gets its own port through
//! `QIS_LISTEN`), a data directory per pod (`QIS_DATA_DIR`), and the stand-in's kubeconfig.
//! Volumes (Secrets) are not mounted.

use crate::selectors::{FieldSelector, LabelSelector};
use crate::server::Shared;
use crate::store::PatchType;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the kubelet runs and where.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// The binary that stands in for every container image.
    pub agent_binary: PathBuf,
    /// The kubeconfig pods get (`KUBECONFIG`).
    pub kubeconfig: PathBuf,
    /// Logs and data directories of the pods.
    pub work_dir: PathBuf,
}

#[derive(Debug)]
struct Pod {
    name: String,
    port: u16,
    child: tokio::process::Child,
}

async fn ready(port: u16) -> bool {
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_millis(300),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return false;
    };
    if s.write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = vec![0u8; 64];
    matches!(tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await, Ok(Ok(n)) if String::from_utf8_lossy(&buf[..n]).contains(" 200 "))
}

fn env_of(container: &Value, ns: &str, pod: &str) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .map(|env| {
            env.iter()
                .filter_map(|e| {
                    let name = e["name"].as_str()?.to_owned();
                    let value = match e
                        .pointer("/valueFrom/fieldRef/fieldPath")
                        .and_then(Value::as_str)
                    {
                        Some("metadata.namespace") => ns.to_owned(),
                        Some("metadata.name") => pod.to_owned(),
                        Some(_) => return None,
                        None => e["value"].as_str().unwrap_or_default().to_owned(),
                    };
                    Some((name, value))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the kubelet until the process ends.
pub fn start(store: Shared, config: KubeletConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pods: HashMap<String, (String, Vec<Pod>)> = HashMap::new();
        let mut serial = 0u64;
        loop {
            tick(&store, &config, &mut pods, &mut serial).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

async fn tick(
    store: &Shared,
    config: &KubeletConfig,
    pods: &mut HashMap<String, (String, Vec<Pod>)>,
    serial: &mut u64,
) {
    let (deployments, pod_kind, deploy_kind, pod_objects) = {
        let s = crate::server::lock(store);
        let (Some(dk), Some(pk)) = (s.kind("apps", "deployments"), s.kind("", "pods")) else {
            return;
        };
        let labels = LabelSelector::parse("app.kubernetes.io/name=qis-agent").unwrap_or_default();
        let ds = s.list(&dk, None, &labels, &FieldSelector::default());
        let ps: Vec<String> = s
            .list(
                &pk,
                None,
                &LabelSelector::default(),
                &FieldSelector::default(),
            )
            .iter()
            .filter_map(|p| {
                p.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect();
        (ds, pk, dk, ps)
    };
    let mut seen = Vec::new();
    for d in deployments {
        let ns = d["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = d["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let key = format!("{ns}/{name}");
        seen.push(key.clone());
        let template = d.pointer("/spec/template").cloned().unwrap_or(Value::Null);
        let hash = format!(
            "{:x}",
            crate::server::fnv(template.to_string().as_bytes()) & 0xffffff
        );
        let replicas = d
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1) as usize;
        let entry = pods
            .entry(key.clone())
            .or_insert_with(|| (hash.clone(), Vec::new()));
        if entry.0 != hash {
            kill_all(store, &pod_kind, &ns, &mut entry.1).await;
            entry.0 = hash.clone();
        }
        // Pods whose object was deleted, or whose process ended, go.
        let mut kept = Vec::new();
        for mut p in entry.1.drain(..) {
            let alive = matches!(p.child.try_wait(), Ok(None));
            if alive && pod_objects.contains(&p.name) {
                kept.push(p);
            } else {
                let _ = p.child.kill().await;
                let _ = crate::server::lock(store).delete(&pod_kind, &ns, &p.name);
            }
        }
        entry.1 = kept;
        while entry.1.len() > replicas {
            if let Some(mut p) = entry.1.pop() {
                let _ = p.child.kill().await;
                let _ = crate::server::lock(store).delete(&pod_kind, &ns, &p.name);
            }
        }
        while entry.1.len() < replicas {
            *serial += 1;
            let pod = format!("{name}-{hash}-{serial}");
            match spawn(store, config, &pod_kind, &d, &ns, &pod) {
                Ok(p) => entry.1.push(p),
                Err(e) => {
                    tracing::warn!(pod, error = %e, "cannot start pod");
                    break;
                }
            }
        }
        let mut ready_count = 0;
        for p in &entry.1 {
            if ready(p.port).await {
                ready_count += 1;
            }
        }
        let status = json!({"status": {"observedGeneration": d["metadata"]["generation"], "replicas": entry.1.len(),
            "readyReplicas": ready_count, "availableReplicas": ready_count, "updatedReplicas": entry.1.len()}});
        let _ = crate::server::lock(store).patch(
            &deploy_kind,
            &ns,
            &name,
            PatchType::Merge,
            &status,
            true,
        );
    }
    let gone: Vec<String> = pods.keys().filter(|k| !seen.contains(k)).cloned().collect();
    for key in gone {
        if let Some((_, mut ps)) = pods.remove(&key) {
            let ns = key.split('/').next().unwrap_or_default().to_owned();
            kill_all(store, &pod_kind, &ns, &mut ps).await;
        }
    }
}

async fn kill_all(store: &Shared, pod_kind: &crate::registry::Kind, ns: &str, pods: &mut Vec<Pod>) {
    for mut p in pods.drain(..) {
        let _ = p.child.kill().await;
        let _ = crate::server::lock(store).delete(pod_kind, ns, &p.name);
    }
}

fn spawn(
    store: &Shared,
    config: &KubeletConfig,
    pod_kind: &crate::registry::Kind,
    d: &Value,
    ns: &str,
    pod: &str,
) -> std::io::Result<Pod> {
    let container = d
        .pointer("/spec/template/spec/containers/0")
        .cloned()
        .unwrap_or(Value::Null);
    let port = qis_testkit::free_port();
    let data = config.work_dir.join(pod);
    std::fs::create_dir_all(&data)?;
    let log = std::fs::File::create(config.work_dir.join(format!("{pod}.log")))?;
    let mut cmd = tokio::process::Command::new(&config.agent_binary);
    cmd.args(
        container["args"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
    );
    for (k, v) in env_of(&container, ns, pod) {
        cmd.env(k, v);
    }
    cmd.env("QIS_LISTEN", format!("127.0.0.1:{port}"))
        .env("QIS_DATA_DIR", &data)
        .env("KUBECONFIG", &config.kubeconfig)
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    let child = cmd.spawn()?;
    let labels = d
        .pointer("/spec/template/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    let object = json!({"metadata": {"name": pod, "labels": labels, "annotations": {"standin.qis.dev/port": port.to_string()}},
        "spec": {"nodeName": "localhost", "containers": [container]}, "status": {"phase": "Running", "podIP": "127.0.0.1"}});
    let _ = crate::server::lock(store).create(pod_kind, ns, object);
    Ok(Pod {
        name: pod.to_owned(),
        port,
        child,
    })
}
