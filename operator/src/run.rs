//! Wires the reconcilers into kube-runtime controllers, with the HTTP endpoints, leader
//! election and graceful shutdown.

use crate::context::{Config, Context};
use crate::http::{Probe, router};
use crate::metrics::Metrics;
use crate::reconcile::entry::{error_policy, reconcile};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher;
use kube::runtime::{Predicate, PredicateConfig, WatchStreamExt, predicates};
use kube::{Api, Client, Resource, ResourceExt};
use qis_crds::{QisSubject, QisSwarm};
use qis_lease::LeaseLock;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::task::JoinHandle;

/// A hash of what a swarm's subjects depend on: its identity, generation, prefix, sites and
/// whether its stream is ready (and whether it can be read at all).
fn what_subjects_see(guard: &DeserializeGuard<QisSwarm>) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let meta = guard.meta();
    meta.uid.hash(&mut h);
    meta.generation.hash(&mut h);
    guard.0.is_ok().hash(&mut h);
    if let Ok(swarm) = &guard.0
        && let Some(st) = &swarm.status
    {
        st.subject_prefix.hash(&mut h);
        for s in &st.sites {
            s.name.hash(&mut h);
        }
        crate::conditions::is_true(&st.conditions, qis_crds::constants::condition::STREAM_READY)
            .hash(&mut h);
    }
    Some(h.finish())
}

/// The objects of `api` whose generation (spec, deletion) or finalizers changed, kept in
/// `writer`'s store.
fn spec_changes<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    watcher::watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::finalizers),
            PredicateConfig::default(),
        )
}

/// How the process runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: Config,
    pub listen: SocketAddr,
    /// Lease to hold before acting; `None` runs without election (one replica).
    pub election: Option<LeaseLock>,
    /// Watch Nodes for site discovery (needs cluster-wide node read access).
    pub watch_nodes: bool,
    /// Reconciles running at once, per kind (at least 1).
    pub concurrency: u16,
    /// Reported as the events' `reportingInstance` (the pod name).
    pub instance: Option<String>,
    /// Only this namespace's swarms and subjects (a namespaced install); `None`: all.
    pub watch_namespace: Option<String>,
}

/// The namespaced resources of kind `K` the operator watches: one namespace's or all.
fn watched<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs until SIGTERM/SIGINT, or until the leader lease is lost (then returns an error so the
/// process exits and restarts as a candidate).
pub async fn run(client: Client, options: Options) -> Result<(), String> {
    let metrics = Arc::new(Metrics::default());
    serve_http(options.listen, metrics.clone()).await?;
    let lost_lease = lead(&client, options.election.clone()).await;
    metrics.leader.set(1);
    let (swarm_cache, swarm_cache_writer) = reflector::store::<DeserializeGuard<QisSwarm>>();
    let ctx = Arc::new(Context::new(
        client.clone(),
        options.config.clone(),
        metrics,
        options.instance.clone(),
        swarm_cache,
    ));
    let bounded = controller::Config::default().concurrency(options.concurrency.max(1));
    let swarms = swarm_controller(&client, &options, bounded.clone(), ctx.clone());
    let subjects = subject_controller(
        &client,
        options.watch_namespace.as_deref(),
        bounded,
        swarm_cache_writer,
        ctx,
    );
    tracing::info!("controllers started");
    let controllers = async {
        futures::join!(swarms, subjects);
    };
    until_stopped(controllers, lost_lease, &client, options.election.as_ref()).await
}

/// Binds the probe and metrics endpoints and serves them in the background. A standby is
/// ready too: it runs, and takes over when the leader goes. Readiness meaning "holds the
/// lease" made every standby unready, so a rolling update (or `helm install --wait`) of more
/// than one replica never completed. `qis_operator_leader` tells them apart.
async fn serve_http(listen: SocketAddr, metrics: Arc<Metrics>) -> Result<(), String> {
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listen on {listen}: {e}"))?;
    let app = router(Probe {
        metrics,
        ready: ready.clone(),
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    ready.store(true, Ordering::Relaxed);
    Ok(())
}

/// Waits for the leader lease (when there is an election) and keeps it in the background;
/// the task ends when the lease is lost.
async fn lead(client: &Client, election: Option<LeaseLock>) -> Option<JoinHandle<()>> {
    let election = election?;
    let held_since = election.acquire(client).await;
    let c = client.clone();
    Some(tokio::spawn(
        async move { election.keep(&c, held_since).await },
    ))
}

/// The swarm controller. A swarm is reconciled when its spec (generation), finalizers or
/// deletion change, on its Deployments' changes and on resync; not on its own status writes:
/// the live stream counters in the status change with every packet, and each write
/// re-triggering the reconcile made the operator write continuously under traffic.
fn swarm_controller(
    client: &Client,
    options: &Options,
    bounded: controller::Config,
    ctx: Arc<Context>,
) -> impl Future<Output = ()> {
    let scope = options.watch_namespace.as_deref();
    let (swarm_reader, swarm_writer) = reflector::store();
    let swarm_ctl = Controller::for_stream(
        spec_changes(
            watched::<DeserializeGuard<QisSwarm>>(client, scope),
            swarm_writer,
        ),
        swarm_reader,
    );
    let swarm_store = swarm_ctl.store();
    let mut swarm_ctl = swarm_ctl.owns(
        watched::<Deployment>(client, scope),
        watcher::Config::default().labels("app.kubernetes.io/managed-by=qis-operator"),
    );
    if options.watch_nodes {
        swarm_ctl = swarm_ctl.watches(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            move |node: Node| swarms_discovering(&swarm_store, &node),
        );
    }
    swarm_ctl
        .with_config(bounded)
        .shutdown_on_signal()
        .run(reconcile::<QisSwarm>, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "swarm controller");
            }
        })
}

/// Every swarm that discovers sites by a label `node` carries.
fn swarms_discovering(
    store: &reflector::Store<DeserializeGuard<QisSwarm>>,
    node: &Node,
) -> Vec<ObjectRef<DeserializeGuard<QisSwarm>>> {
    let labels = node.labels();
    store
        .state()
        .into_iter()
        .filter_map(|g| {
            let s = g.0.as_ref().ok()?;
            let d = s.spec.site_discovery.as_ref()?;
            labels
                .contains_key(&d.node_label)
                .then(|| ObjectRef::from(g.as_ref()))
        })
        .collect()
}

/// The subject controller: like a swarm, a subject is not reconciled on its own status
/// writes (agents write its consensus into the status with traffic). It is on changes of
/// what it sees of its swarm (`swarm_cache` is filled on the way).
fn subject_controller(
    client: &Client,
    scope: Option<&str>,
    bounded: controller::Config,
    swarm_cache: reflector::store::Writer<DeserializeGuard<QisSwarm>>,
    ctx: Arc<Context>,
) -> impl Future<Output = ()> {
    let (subject_reader, subject_writer) = reflector::store();
    let subject_ctl = Controller::for_stream(
        spec_changes(
            watched::<DeserializeGuard<QisSubject>>(client, scope),
            subject_writer,
        ),
        subject_reader,
    );
    let subject_store = subject_ctl.store();
    subject_ctl
        .watches_stream(
            swarm_changes(client, scope, swarm_cache),
            move |swarm: DeserializeGuard<QisSwarm>| subjects_of(&subject_store, &swarm),
        )
        .with_config(bounded)
        .shutdown_on_signal()
        .run(reconcile::<QisSubject>, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "subject controller");
            }
        })
}

/// The swarms as subjects see them, kept in `cache`. Subjects care about a swarm's prefix,
/// sites and stream readiness, not its live stream counters: without this filter every
/// resync of a busy swarm would wake all its subjects. Read through `DeserializeGuard`: one
/// swarm that does not deserialize (stored under another CRD schema) failed the whole list,
/// the cache never became ready, and every subject reconcile waited for it.
fn swarm_changes(
    client: &Client,
    scope: Option<&str>,
    cache: reflector::store::Writer<DeserializeGuard<QisSwarm>>,
) -> impl futures::Stream<Item = Result<DeserializeGuard<QisSwarm>, watcher::Error>> + Send + 'static
{
    watcher::watcher(
        watched::<DeserializeGuard<QisSwarm>>(client, scope),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(cache)
    .touched_objects()
    .predicate_filter(what_subjects_see, PredicateConfig::default())
}

/// Every subject of `swarm` (it appeared, its sites or stream changed).
fn subjects_of(
    store: &reflector::Store<DeserializeGuard<QisSubject>>,
    swarm: &DeserializeGuard<QisSwarm>,
) -> Vec<ObjectRef<DeserializeGuard<QisSubject>>> {
    let (ns, name) = (swarm.meta().namespace.clone(), swarm.name_any());
    store
        .state()
        .into_iter()
        .filter_map(|g| {
            let s = g.0.as_ref().ok()?;
            (s.namespace() == ns && s.spec.swarm_ref.name == name)
                .then(|| ObjectRef::from(g.as_ref()))
        })
        .collect()
}

/// Runs the controllers until they stop (a signal) or the lease is lost. A clean stop
/// releases the lease, handing over at once rather than a lease duration later.
async fn until_stopped(
    controllers: impl Future<Output = ()>,
    lost_lease: Option<JoinHandle<()>>,
    client: &Client,
    election: Option<&LeaseLock>,
) -> Result<(), String> {
    let Some(lease) = lost_lease else {
        controllers.await;
        return Ok(());
    };
    tokio::select! {
        _ = controllers => {
            if let Some(election) = election
                && let Err(e) = election.release(client).await
            {
                tracing::warn!(error = %e, "cannot release the leader lease");
            }
            Ok(())
        }
        _ = lease => Err("lost the leader lease".to_owned()),
    }
}
