//! The subject worker: one per subject (a packet it receives is a "twin" of one deposited by
//! an agent of the swarm). It rebuilds the synthesis state from the stream (the window
//! of packets already stored, so a restarted or newly joined agent covers the same window as
//! before), then consumes the site's durable consumer in batches as the pinned client of its
//! site, takes each packet into the synthesis state before acking it, keeps the local view
//! current, and publishes a synthesis packet when the consensus changes materially
//! (rate-limited, never a vote).
//!
//! Replicas of one site share the site's consumer: one is pinned (active), the others wait on
//! it to take over. A replica that sees another pinned (consumer info) is on standby: it follows
//! the subject with an ephemeral ordered consumer from the last packet it saw, so its local
//! view stays current, and publishes no synthesis packets (the active replica does). When it
//! is pinned (a durable message arrives) it drops the follower; packets seen by both are one
//! packet to the synthesis state.
//!
//! - [`state`]: the worker's states (binding, active, standby) and transitions, without NATS.
//! - [`message`]: the one path of a received packet (decode, limits, ingest, count, ack).
//! - `consumers`: rebuild, the durable consumer, the standby follower.
//! - `publish`: synthesis packets and eviction counts.
//! - `worker`: the loop that drives the states from what NATS delivers.

mod consumers;
pub mod message;
mod publish;
pub mod state;
mod worker;

pub use publish::{material_change, synthesis_packet};

use crate::config::Config;
use crate::deposit::Depositor;
use crate::metrics::Metrics;
use crate::synthesis::{InvalidSetting, Snapshot};
use async_nats::jetstream::Context;
use qis_crds::{SynthesisSettings, addressing};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

pub use qis_contract::consumer::PRIORITY_GROUP;

/// What the agent knows about one subject, for the HTTP view and the reporter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    pub address: String,
    pub consumer: String,
    pub bound: bool,
    /// Another replica of the site is pinned: this one follows the stream for its view.
    pub standby: bool,
    pub snapshot: Option<Snapshot>,
    /// Seconds since the epoch of the snapshot.
    pub at: f64,
    /// Why this agent refused the subject (a setting it cannot use), if it did.
    pub invalid: Option<String>,
}

pub type Views = Arc<RwLock<BTreeMap<String, View>>>;

/// One subject, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectSpec {
    pub name: String,
    pub domain: String,
    pub problem_class: Option<String>,
    pub address: String,
    pub synthesis: SynthesisSettings,
}

impl SubjectSpec {
    pub fn consumer(&self, site: &str) -> String {
        addressing::consumer_name(&self.name, site)
    }
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What every subject worker shares with the rest of the agent: its settings, the JetStream
/// context, the deposit queue, the metrics and the local views.
#[derive(Clone, Debug)]
pub struct WorkerContext {
    pub config: Arc<Config>,
    pub js: Context,
    pub depositor: Depositor,
    pub metrics: Arc<Metrics>,
    pub views: Views,
}

fn set_view(ctx: &WorkerContext, name: &str, f: impl FnOnce(&mut View)) {
    let mut views = ctx
        .views
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(views.entry(name.to_owned()).or_default());
}

/// Runs one subject until `stop` turns true, as [`run`] does; a panic in its worker (a bug,
/// whatever set it off) is caught: the subject is reported refused in its view and counted in
/// `qis_agent_subjects_refused_total` until it changes or goes, and the other subjects go on.
pub async fn run_contained(
    ctx: WorkerContext,
    spec: SubjectSpec,
    defaults: SynthesisSettings,
    stop: watch::Receiver<bool>,
) {
    let name = spec.name.clone();
    let mut after = stop.clone();
    // Unwind safety: the worker shares views and metrics (locks that recover from poisoning)
    // and the deposit queue; its own state is dropped with it.
    let Err(message) = crate::contain::caught(run(ctx.clone(), spec, defaults, stop)).await else {
        return;
    };
    tracing::error!(subject = %name, panic = %message, "subject worker panicked; serving the others");
    ctx.metrics.subjects_refused.inc();
    set_view(&ctx, &name, |v| {
        v.bound = false;
        v.standby = false;
        v.invalid = Some(format!("the subject's worker panicked: {message}"));
    });
    while !*after.borrow() {
        if after.changed().await.is_err() {
            break;
        }
    }
    remove_view(&ctx, &name);
}

/// Runs one subject until `stop` turns true.
pub async fn run(
    ctx: WorkerContext,
    spec: SubjectSpec,
    defaults: SynthesisSettings,
    stop: watch::Receiver<bool>,
) {
    match qis_contract::synthesis::resolve(&spec.synthesis, &defaults) {
        Ok(resolved) => {
            worker::Worker::new(ctx.clone(), spec.clone(), resolved, stop)
                .run()
                .await
        }
        Err(e) => refuse_until_stopped(&ctx, &spec, &e, stop).await,
    }
    remove_view(&ctx, &spec.name);
}

/// A subject this agent cannot use is reported and left alone (the others go on), until it
/// changes or goes (then this worker is stopped).
async fn refuse_until_stopped(
    ctx: &WorkerContext,
    spec: &SubjectSpec,
    e: &InvalidSetting,
    mut stop: watch::Receiver<bool>,
) {
    tracing::error!(subject = %spec.name, error = %e, "subject refused: its settings are invalid");
    ctx.metrics.subjects_refused.inc();
    set_view(ctx, &spec.name, |v| {
        v.address = spec.address.clone();
        v.invalid = Some(e.to_string());
    });
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            break;
        }
    }
}

fn remove_view(ctx: &WorkerContext, name: &str) {
    ctx.views
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(name);
}
