//! Twins: one worker per subject. It rebuilds the synthesis state from the stream (the window
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

use crate::config::Config;
use crate::deposit::Depositor;
use crate::metrics::{EvictionLabel, Metrics, SubjectLabel};
use crate::outbox::Entry;
use crate::packet::{OutcomePacket, PacketKind, PacketMeta};
use crate::synthesis::{Evictions, Ingest, Settings, Snapshot, Synthesizer};
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, PriorityPolicy, pull};
use async_nats::jetstream::{AckKind, Context, Message};
use futures::StreamExt;
use qis_crds::{SynthesisSettings, addressing};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Priority group of the site's agents (the operator configures the same).
pub const PRIORITY_GROUP: &str = "qis-agents";
/// Pull expiry: well below the pin TTL, so an active agent keeps its pin.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// How often the consensus is recomputed for the local view.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(250);
/// How long the rebuild waits for a first message of a subject with no history.
const REBUILD_IDLE: Duration = Duration::from_millis(300);
/// Snapshot ticks between two looks at the consumer (lag, who is pinned): 2 s.
const CONSUMER_INFO_TICKS: u32 = 8;
/// The header a pinned client's messages carry.
const PIN_ID_HEADER: &str = "Nats-Pin-Id";

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

/// What a worker needs.
#[derive(Clone, Debug)]
pub struct Shared {
    pub config: Arc<Config>,
    pub js: Context,
    pub depositor: Depositor,
    pub metrics: Arc<Metrics>,
    pub views: Views,
}

fn set_view(shared: &Shared, name: &str, f: impl FnOnce(&mut View)) {
    let mut views = shared
        .views
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(views.entry(name.to_owned()).or_default());
}

/// The consumer a standalone agent makes when there is no operator (same settings the
/// operator would use).
fn standalone_consumer(name: &str, address: &str) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_owned()),
        name: Some(name.to_owned()),
        filter_subject: address.to_owned(),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_deliver: 10,
        max_ack_pending: 1000,
        priority_policy: PriorityPolicy::PinnedClient,
        priority_groups: vec![PRIORITY_GROUP.to_owned()],
        priority_timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

/// Decodes a received message and takes it into `synth`; acks are the caller's.
fn take(
    synth: &mut Synthesizer,
    msg: &Message,
    max_hops: u8,
    metrics: &Metrics,
) -> Result<Ingest, &'static str> {
    let headers = msg.headers.as_ref();
    let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    let meta = PacketMeta::from_headers(get, &msg.payload).map_err(|e| e.rule())?;
    let packet = OutcomePacket::decode(&msg.payload).map_err(|e| e.rule())?;
    if meta.kind == PacketKind::Synthesis && meta.hops > max_hops {
        return Err("hop_limit");
    }
    let started = Instant::now();
    let outcome = synth.ingest(&packet, &meta, now());
    metrics
        .synthesis_latency
        .observe(started.elapsed().as_secs_f64());
    if outcome == Ingest::FromTheFuture {
        return Err("timestamp_in_future");
    }
    Ok(outcome)
}

/// Where reading a subject starts: after the last packet seen (stream sequence), else at the
/// start of the synthesis window.
fn start_after(last_seq: u64, synth: &Synthesizer) -> Result<DeliverPolicy, String> {
    if last_seq > 0 {
        return Ok(DeliverPolicy::ByStartSequence {
            start_sequence: last_seq + 1,
        });
    }
    let window = synth.settings().window;
    if !window.is_finite() {
        return Ok(DeliverPolicy::All);
    }
    let start = (now() - window).max(0.0);
    let start_time = time::OffsetDateTime::from_unix_timestamp_nanos((start * 1e9) as i128)
        .map_err(|e| e.to_string())?;
    Ok(DeliverPolicy::ByStartTime { start_time })
}

/// An ephemeral ordered consumer on the subject from `deliver_policy`, and whether the stream
/// held anything for it when it was made.
async fn ordered(
    shared: &Shared,
    spec: &SubjectSpec,
    deliver_policy: DeliverPolicy,
) -> Result<(pull::Ordered, bool), String> {
    let stream = shared
        .js
        .get_stream(&shared.config.stream)
        .await
        .map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: spec.address.clone(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let pending = consumer.cached_info().num_pending > 0;
    let messages = consumer.messages().await.map_err(|e| e.to_string())?;
    Ok((messages, pending))
}

/// Reads the window already in the stream into `synth` (state rebuilt after a restart):
/// how many packets, and the stream sequence of the last.
async fn rebuild(
    shared: &Shared,
    spec: &SubjectSpec,
    synth: &mut Synthesizer,
    max_hops: u8,
) -> Result<(usize, u64), String> {
    let (mut messages, pending) = ordered(shared, spec, start_after(0, synth)?).await?;
    if !pending {
        // Nothing stored for this subject in the window: no need to wait for a first message.
        return Ok((0, 0));
    }
    let (mut n, mut last_seq) = (0, 0);
    loop {
        let next = match tokio::time::timeout(REBUILD_IDLE, messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) | Err(_) => break,
        };
        let _ = take(synth, &next, max_hops, &shared.metrics);
        n += 1;
        let info = next.info().ok();
        last_seq = info.as_ref().map_or(last_seq, |i| i.stream_sequence);
        if info.is_none_or(|i| i.pending == 0) {
            break;
        }
    }
    Ok((n, last_seq))
}

/// The next item of an optional stream; never, when there is none.
async fn next_of<S: futures::Stream + Unpin>(s: &mut Option<S>) -> Option<S::Item> {
    match s {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// A material change of the consensus: another problem, an alert flip, or strength or
/// confidence moved by 0.1 or more.
pub fn material_change(old: Option<&Snapshot>, new: &Snapshot) -> bool {
    match old {
        None => true,
        Some(o) => {
            o.problem != new.problem
                || o.alert != new.alert
                || (o.strength - new.strength).abs() >= 0.1
                || (o.weighted_confidence - new.weighted_confidence).abs() >= 0.1
        }
    }
}

/// The synthesis packet of a snapshot: what this agent concluded from its twins.
pub fn synthesis_packet(
    config: &Config,
    address: &str,
    snap: &Snapshot,
) -> Option<(String, Vec<u8>, PacketMeta)> {
    let (domain, problem_class) = snap.problem.split_once('.')?;
    let mut conclusion = snap.recommendation.clone();
    loop {
        let p = OutcomePacket {
            agent_id: config.agent_id.clone(),
            domain: domain.to_owned(),
            problem_class: problem_class.to_owned(),
            conclusion: conclusion.clone(),
            confidence: snap.weighted_confidence.clamp(0.0, 1.0),
            context_vector: vec![
                (snap.strength * 1000.0).round() / 1000.0,
                f64::from(snap.agents),
            ],
            timestamp: now(),
            source_node: config.site.clone(),
        };
        match p.encode() {
            Ok(body) => {
                let subject = if address.ends_with(".>") {
                    addressing::readable_address(&config.prefix, domain, Some(problem_class))
                } else {
                    address.to_owned()
                };
                let meta = PacketMeta::synthesis(&body, 0);
                return Some((subject, body, meta));
            }
            Err(crate::packet::PacketError::TooLarge { .. }) if conclusion.len() > 16 => {
                let keep = conclusion
                    .char_indices()
                    .map(|(i, _)| i)
                    .take_while(|i| *i < conclusion.len() / 2)
                    .last()
                    .unwrap_or(0);
                conclusion.truncate(keep);
            }
            Err(_) => return None,
        }
    }
}

fn invalid_setting(field: &'static str, reason: &str) -> crate::synthesis::InvalidSetting {
    crate::synthesis::InvalidSetting {
        field,
        reason: reason.to_owned(),
    }
}

/// Runs one subject until `stop` turns true, as [`run`] does; a panic in its worker (a bug,
/// whatever set it off) is caught: the subject is reported refused in its view and counted in
/// `qis_agent_subjects_refused_total` until it changes or goes, and the other subjects go on.
pub async fn run_contained(
    shared: Shared,
    spec: SubjectSpec,
    defaults: SynthesisSettings,
    stop: watch::Receiver<bool>,
) {
    let name = spec.name.clone();
    let mut after = stop.clone();
    // Unwind safety: the worker shares views and metrics (locks that recover from poisoning)
    // and the deposit queue; its own state is dropped with it.
    let Err(message) = crate::contain::caught(run(shared.clone(), spec, defaults, stop)).await
    else {
        return;
    };
    tracing::error!(subject = %name, panic = %message, "subject worker panicked; serving the others");
    shared.metrics.subjects_refused.inc();
    set_view(&shared, &name, |v| {
        v.bound = false;
        v.standby = false;
        v.invalid = Some(format!("the subject's worker panicked: {message}"));
    });
    while !*after.borrow() {
        if after.changed().await.is_err() {
            break;
        }
    }
    remove_view(&shared, &name);
}

/// Runs one subject until `stop` turns true.
pub async fn run(
    shared: Shared,
    spec: SubjectSpec,
    defaults: SynthesisSettings,
    mut stop: watch::Receiver<bool>,
) {
    let resolved = spec.synthesis.or(&defaults);
    // A subject this agent cannot use is reported and left alone; the others go on.
    let checked = Settings::from_crd(&resolved).and_then(|settings| {
        let publish_every = match resolved.publish_interval.map(|d| d.get()) {
            None => Duration::from_secs(30),
            Some(Ok(d)) if !d.is_zero() => d,
            Some(Ok(_)) => return Err(invalid_setting("publishInterval", "must be positive")),
            Some(Err(e)) => return Err(invalid_setting("publishInterval", &e.to_string())),
        };
        Ok((settings, publish_every))
    });
    let (settings, publish_every) = match checked {
        Ok(ok) => ok,
        Err(e) => {
            tracing::error!(subject = %spec.name, error = %e, "subject refused: its settings are invalid");
            shared.metrics.subjects_refused.inc();
            set_view(&shared, &spec.name, |v| {
                v.address = spec.address.clone();
                v.invalid = Some(e.to_string());
            });
            // Reported until the subject changes or goes (then this worker is stopped).
            while !*stop.borrow() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
            remove_view(&shared, &spec.name);
            return;
        }
    };
    let max_hops = resolved.max_hops.unwrap_or(1);
    let consumer_name = spec.consumer(&shared.config.site);
    set_view(&shared, &spec.name, |v| {
        v.address = spec.address.clone();
        v.consumer = consumer_name.clone();
        v.bound = false;
        v.invalid = None;
    });
    let mut synth = Synthesizer::new(settings);
    let mut evictions = Evictions::default();
    let lag = shared
        .metrics
        .consumer_lag
        .get_or_create(&SubjectLabel {
            subject: spec.name.clone(),
        })
        .clone();
    // Bind retries back off from 50 ms to 2 s (a standalone agent's stream appears within ms).
    let mut retry = Duration::from_millis(50);
    'outer: loop {
        if *stop.borrow() {
            break;
        }
        // Bind: rebuild the window, then the durable consumer as the site's pinned client.
        let bound = async {
            let (rebuilt, last_seq) = rebuild(&shared, &spec, &mut synth, max_hops).await?;
            let stream = shared
                .js
                .get_stream(&shared.config.stream)
                .await
                .map_err(|e| e.to_string())?;
            let consumer: consumer::Consumer<pull::Config> = if shared.config.manage_jetstream {
                stream
                    .get_or_create_consumer(
                        &consumer_name,
                        standalone_consumer(&consumer_name, &spec.address),
                    )
                    .await
                    .map_err(|e| e.to_string())?
            } else {
                stream
                    .get_consumer(&consumer_name)
                    .await
                    .map_err(|e| e.to_string())?
            };
            let messages = consumer
                .stream()
                .group(PRIORITY_GROUP)
                .max_messages_per_batch(256)
                .expires(PULL_EXPIRES)
                .messages()
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(subject = %spec.name, consumer = %consumer_name, rebuilt, "bound");
            Ok::<_, String>((consumer, messages, last_seq))
        }
        .await;
        let (mut consumer, mut messages, mut last_seq) = match bound {
            Ok(b) => {
                retry = Duration::from_millis(50);
                b
            }
            Err(e) => {
                tracing::warn!(subject = %spec.name, error = %e, ?retry, "cannot bind the consumer yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {
                        retry = (retry * 2).min(Duration::from_secs(2));
                        continue;
                    }
                    _ = stop.changed() => break,
                }
            }
        };
        set_view(&shared, &spec.name, |v| {
            v.bound = true;
            v.standby = false;
        });
        let mut tick = tokio::time::interval(SNAPSHOT_EVERY);
        let mut last_published: Option<(Instant, Snapshot)> = None;
        let mut info_every = 0u32;
        // The pin this replica was given (from its messages), and the standby follower.
        let mut my_pin: Option<String> = None;
        let mut follower: Option<pull::Ordered> = None;
        loop {
            tokio::select! {
                _ = stop.changed() => break 'outer,
                next = next_of(&mut follower) => {
                    match next {
                        Some(Ok(m)) => {
                            shared.metrics.twins_in.inc();
                            last_seq = m.info().map_or(last_seq, |i| i.stream_sequence.max(last_seq));
                            match take(&mut synth, &m, max_hops, &shared.metrics) {
                                Ok(Ingest::Duplicate) => {
                                    shared.metrics.twins_duplicate.inc();
                                }
                                Ok(_) => {}
                                Err(rule) => shared.metrics.refused(rule),
                            }
                        }
                        Some(Err(e)) => tracing::debug!(subject = %spec.name, error = %e, "standby follower"),
                        // Made again at the next look at the consumer, if still on standby.
                        None => follower = None,
                    }
                }
                next = messages.next() => {
                    let msg = match next {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            tracing::debug!(subject = %spec.name, error = %e, "pull");
                            continue;
                        }
                        None => break,
                    };
                    shared.metrics.twins_in.inc();
                    if let Some(pin) = msg.headers.as_ref().and_then(|h| h.get(PIN_ID_HEADER)) {
                        my_pin = Some(pin.as_str().to_owned());
                    }
                    if follower.take().is_some() {
                        tracing::info!(subject = %spec.name, "pinned: active for the site");
                        set_view(&shared, &spec.name, |v| v.standby = false);
                    }
                    last_seq = msg.info().map_or(last_seq, |i| i.stream_sequence.max(last_seq));
                    match take(&mut synth, &msg, max_hops, &shared.metrics) {
                        Ok(Ingest::Duplicate) => {
                            shared.metrics.twins_duplicate.inc();
                        }
                        Ok(_) => {}
                        Err(rule) => {
                            shared.metrics.refused(rule);
                            // A packet that breaks the rules never will not: do not redeliver it.
                            let _ = msg.ack_with(AckKind::Term).await;
                            continue;
                        }
                    }
                    // Acked only once the packet is in the synthesis state.
                    let _ = msg.ack().await;
                }
                _ = tick.tick() => {
                    let at = now();
                    let snap = synth.snapshot(at);
                    evictions = count_evictions(&shared, &spec.name, evictions, synth.evictions());
                    set_view(&shared, &spec.name, |v| { v.snapshot = snap.clone(); v.at = at; });
                    let standby = follower.is_some();
                    if let Some(s) = snap.filter(|_| !standby) {
                        let due = last_published.as_ref().is_none_or(|(t, _)| t.elapsed() >= publish_every);
                        if due && material_change(last_published.as_ref().map(|(_, s)| s), &s)
                            && let Some((subject, body, meta)) = synthesis_packet(&shared.config, &spec.address, &s)
                        {
                            if shared.depositor.send(Entry::new(subject, &body, &meta)).await.is_ok() {
                                shared.metrics.synthesis_out.inc();
                            }
                            last_published = Some((Instant::now(), s));
                        }
                    }
                    info_every += 1;
                    if info_every.is_multiple_of(CONSUMER_INFO_TICKS) && let Ok(info) = consumer.info().await {
                        lag.set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
                        let pinned = info
                            .priority_groups
                            .iter()
                            .find(|g| g.group == PRIORITY_GROUP)
                            .and_then(|g| g.pinned_client_id.clone());
                        let other_pinned = pinned.is_some() && pinned != my_pin;
                        if other_pinned && follower.is_none() {
                            match start_after(last_seq, &synth) {
                                Ok(from) => match ordered(&shared, &spec, from).await {
                                    Ok((f, _)) => {
                                        tracing::info!(subject = %spec.name, after = last_seq, "another replica is pinned: standby, following the stream");
                                        follower = Some(f);
                                        set_view(&shared, &spec.name, |v| v.standby = true);
                                    }
                                    Err(e) => tracing::debug!(subject = %spec.name, error = %e, "standby follower"),
                                },
                                Err(e) => tracing::debug!(subject = %spec.name, error = %e, "standby follower"),
                            }
                        }
                    }
                }
            }
        }
        set_view(&shared, &spec.name, |v| v.bound = false);
    }
    remove_view(&shared, &spec.name);
}

/// Adds what the window limits turned away since `before` to the metrics (warning once per
/// tick that turned any away); returns `now` as the next `before`.
fn count_evictions(shared: &Shared, subject: &str, before: Evictions, now: Evictions) -> Evictions {
    let mut any = false;
    for (reason, was, is) in [
        ("voters", before.voters, now.voters),
        ("packets", before.packets, now.packets),
        ("problems", before.problems, now.problems),
    ] {
        if is > was {
            any = true;
            shared
                .metrics
                .synthesis_evictions
                .get_or_create(&EvictionLabel {
                    subject: subject.to_owned(),
                    reason,
                })
                .inc_by(is - was);
        }
    }
    if any {
        tracing::warn!(
            subject,
            voters = now.voters - before.voters,
            packets = now.packets - before.packets,
            problems = now.problems - before.problems,
            "window limits reached: packets not counted or forgotten (maxVoters, maxPackets, maxProblems)"
        );
    }
    now
}

fn remove_view(shared: &Shared, name: &str) {
    shared
        .views
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(name);
}
