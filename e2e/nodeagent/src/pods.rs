//! The pods bound to the agent's Nodes: one watch over bound pods (filtered to ours), one
//! supervisor task ([`runtime::run`]) per pod, told when the pod is being deleted or gone.

use crate::Ctx;
use crate::runtime::{self, Stop};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The running pods by uid.
#[derive(Debug, Default)]
struct Pods {
    stops: HashMap<String, watch::Sender<Stop>>,
    tasks: JoinSet<String>,
}

impl Pods {
    fn apply(&mut self, ctx: &Arc<Ctx>, pod: Pod) {
        let ours = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some_and(|n| ctx.node_names.contains(n));
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if !ours {
            return;
        }
        let deleting = pod.metadata.deletion_timestamp.is_some();
        if let Some(stop) = self.stops.get(&uid) {
            if deleting {
                let grace = runtime::grace(&pod);
                stop.send_if_modified(|s| {
                    let change = *s == Stop::Run;
                    if change {
                        *s = Stop::Graceful(grace);
                    }
                    change
                });
            }
            return;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if !deleting && matches!(phase, Some("Succeeded" | "Failed")) {
            return;
        }
        // A pod being deleted that never ran here is deleted at once (no processes).
        let initial = if deleting {
            Stop::Graceful(Duration::ZERO)
        } else {
            Stop::Run
        };
        let (tx, rx) = watch::channel(initial);
        self.stops.insert(uid.clone(), tx);
        let ctx = ctx.clone();
        self.tasks.spawn(async move {
            runtime::run(ctx, pod, rx).await;
            uid
        });
    }

    fn kill(&self, uid: &str) {
        if let Some(stop) = self.stops.get(uid) {
            stop.send_replace(Stop::Kill);
        }
    }
}

/// Runs the pods of the agent's Nodes until `stop` turns true; then kills them all.
pub(crate) async fn run(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    // Bound pods only; which node is checked here (one watch for all of the agent's nodes).
    let events =
        watcher(api, watcher::Config::default().fields("spec.nodeName!=")).default_backoff();
    let mut events = std::pin::pin!(events);
    let mut pods = Pods::default();
    let mut relisted: Option<HashSet<String>> = None;
    loop {
        tokio::select! {
            changed = stop.changed() => if changed.is_err() || *stop.borrow() { break },
            Some(done) = pods.tasks.join_next(), if !pods.tasks.is_empty() => {
                if let Ok(uid) = done {
                    pods.stops.remove(&uid);
                }
            }
            event = events.next() => match event {
                Some(Ok(watcher::Event::Apply(pod))) => pods.apply(&ctx, pod),
                Some(Ok(watcher::Event::InitApply(pod))) => {
                    if let (Some(seen), Some(uid)) = (relisted.as_mut(), pod.metadata.uid.clone()) {
                        seen.insert(uid);
                    }
                    pods.apply(&ctx, pod);
                }
                Some(Ok(watcher::Event::Delete(pod))) => {
                    if let Some(uid) = pod.metadata.uid.as_deref() {
                        pods.kill(uid);
                    }
                }
                Some(Ok(watcher::Event::Init)) => relisted = Some(HashSet::new()),
                Some(Ok(watcher::Event::InitDone)) => {
                    // Pods that went while the watch was down.
                    if let Some(seen) = relisted.take() {
                        let gone: Vec<String> =
                            pods.stops.keys().filter(|u| !seen.contains(*u)).cloned().collect();
                        for uid in gone {
                            pods.kill(&uid);
                        }
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "pod watch"),
                None => break,
            },
        }
    }
    for uid in pods.stops.keys() {
        pods.kill(uid);
    }
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_secs(10), pods.tasks.join_next()).await
    {}
    pods.tasks.shutdown().await;
}
