//! The privacy firewall and the local API: local processes `POST` outcome packets (exactly the
//! seed's body, checked by every rule before anything leaves the device) and `GET` the local
//! consensus; operations get `/healthz`, `/readyz`, `/metrics`.
//!
//! Refusals answer with `{"error": …, "rule": …}` and are counted by rule: 413 for a body
//! over 512 bytes, 400 for a body that is not the seed's object, 422 for a value that breaks a
//! rule (including a synthesis packet over the hop limit and a timestamp outside the time
//! bounds of [`clock`]: `clock_unset`, `timestamp_in_future`, `timestamp_too_old`), and for
//! hostile clients the limits
//! of [`limits`] (size on every route, body deadline, batch budget) and [`server`]
//! (connection cap, header deadline), and 503 with `Retry-After` when the deposit queue has no
//! room within `queueWait`.

pub mod clock;
pub mod limits;
pub mod server;

use crate::config::IntakeLimits;
use crate::deposit::{Depositor, KeepError, SendError};
use crate::metrics::Metrics;
use crate::outbox::Entry;
use crate::packet::{OutcomePacket, PacketError, PacketKind, PacketMeta};
use crate::subject_worker::{SubjectSpec, Views};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use qis_crds::addressing::{self, HASHED_MARKER};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// The intake's shared state: what every HTTP handler reads (deposit queue, metrics, views,
/// followed subjects, limits) and the readiness flags.
#[derive(Clone, Debug)]
pub struct IntakeState {
    pub depositor: Depositor,
    pub metrics: Arc<Metrics>,
    pub views: Views,
    pub subjects: Arc<RwLock<Vec<SubjectSpec>>>,
    pub prefix: String,
    /// Hop limit of synthesis packets to an address no subject follows (each followed address
    /// takes the largest `maxHops` of the subjects that follow it).
    pub max_hops: u8,
    /// Time bounds of a packet when the agent follows no subject (its synthesis defaults).
    pub time_bounds: clock::TimeBounds,
    pub connected: Arc<AtomicBool>,
    pub accepting: Arc<AtomicBool>,
    pub limits: IntakeLimits,
    pub budget: limits::BodyBudget,
}

fn refuse(intake: &IntakeState, code: StatusCode, rule: &'static str, error: String) -> Response {
    intake.metrics.refused(rule);
    (code, axum::Json(json!({ "error": error, "rule": rule }))).into_response()
}

fn code_of(e: &PacketError) -> StatusCode {
    match e {
        PacketError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        PacketError::Malformed(_)
        | PacketError::UnknownField(_)
        | PacketError::DuplicateField(_)
        | PacketError::MissingField(_)
        | PacketError::WrongType { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// The NATS subject of a packet: a hashed subject's address when one is configured for its
/// domain and problem class, the readable address otherwise.
pub fn address_for(prefix: &str, subjects: &[SubjectSpec], p: &OutcomePacket) -> String {
    subjects
        .iter()
        .find(|s| {
            s.domain == p.domain
                && s.problem_class.as_deref() == Some(&p.problem_class)
                && s.address.contains(&format!(".{HASHED_MARKER}."))
        })
        .map(|s| s.address.clone())
        .unwrap_or_else(|| addressing::readable_address(prefix, &p.domain, Some(&p.problem_class)))
}

/// The largest `maxHops` of the subjects that follow `address` (their settings are already
/// over the swarm's), `None` when none does.
pub fn hop_limit(subjects: &[SubjectSpec], address: &str) -> Option<u8> {
    subjects
        .iter()
        .filter(|s| qis_contract::stream::filters_overlap(&s.address, address))
        .map(|s| {
            s.synthesis
                .max_hops
                .unwrap_or(qis_contract::synthesis::DEFAULT_MAX_HOPS)
        })
        .max()
}

/// A packet that passed every rule: where it goes and what is sent.
struct Checked {
    subject: String,
    canonical: Vec<u8>,
    meta: PacketMeta,
}

/// A refusal: status, rule, message.
type Refusal = (StatusCode, &'static str, String);

/// Every rule of the firewall on one body (with the request's headers): the seed's object,
/// the hop limit, the time bounds (as of the agent's clock), then re-encoded in the seed's form (what leaves the device is exactly the
/// checked packet).
fn check<'a>(
    intake: &IntakeState,
    body: &[u8],
    get: impl Fn(&str) -> Option<&'a str>,
) -> Result<Checked, Refusal> {
    let packet = OutcomePacket::decode(body).map_err(|e| (code_of(&e), e.rule(), e.to_string()))?;
    // The id is the hash of what is sent (below), whatever the request said.
    let (kind, hops) = PacketMeta::kind_and_hops(&get)
        .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.rule(), e.to_string()))?;
    let (subject, max_hops, (bounds, origin)) = {
        let subjects = intake
            .subjects
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let subject = address_for(&intake.prefix, &subjects, &packet);
        let max_hops = hop_limit(&subjects, &subject).unwrap_or(intake.max_hops);
        let bounds = clock::bounds_for(&subjects, &subject, intake.time_bounds);
        (subject, max_hops, bounds)
    };
    if kind == PacketKind::Synthesis && hops > max_hops {
        let msg = format!("a synthesis packet with {hops} hops is over the limit of {max_hops}");
        return Err((StatusCode::UNPROCESSABLE_ENTITY, "hop_limit", msg));
    }
    let now = crate::subject_worker::now();
    clock::check(packet.timestamp, now, bounds, origin)
        .map_err(|(rule, msg)| (StatusCode::UNPROCESSABLE_ENTITY, rule, msg))?;
    let canonical = packet
        .encode()
        .map_err(|e| (code_of(&e), e.rule(), e.to_string()))?;
    let meta = PacketMeta {
        id: crate::packet::packet_id(&canonical),
        kind,
        hops,
    };
    Ok(Checked {
        subject,
        canonical,
        meta,
    })
}

/// The answer when the deposit queue did not take the packets.
fn not_queued(intake: &IntakeState, e: SendError, n: usize) -> Response {
    match e {
        SendError::Full => {
            let msg = format!(
                "the deposit queue had no room for {n} packet(s) within {:?}; nothing was deposited",
                intake.limits.queue_wait
            );
            limits::busy(intake, "queue_full", msg)
        }
        SendError::Stopped => shutting_down(),
    }
}

/// The answer when the packets were queued but not all kept: the first `accepted` are.
fn not_kept(intake: &IntakeState, e: KeepError, n: usize) -> Response {
    match e {
        KeepError::Queue(e) => not_queued(intake, e, n),
        KeepError::Unwritable { accepted, error } => {
            intake.metrics.packets_in.inc_by(accepted as u64);
            intake
                .metrics
                .packets_refused
                .get_or_create(&crate::metrics::RuleLabel {
                    rule: KeepError::UNWRITABLE,
                })
                .inc_by((n - accepted) as u64);
            let msg = format!(
                "the outbox cannot take the packet(s) ({error}); {accepted} of {n} kept, the rest not"
            );
            let mut r = (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(
                    json!({"error": msg, "rule": KeepError::UNWRITABLE, "accepted": accepted}),
                ),
            )
                .into_response();
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(1u64),
            );
            r
        }
    }
}

fn shutting_down() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"error": "shutting down"})),
    )
        .into_response()
}

async fn post_outcome(
    State(intake): State<IntakeState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !intake.accepting.load(Ordering::Relaxed) {
        return shutting_down();
    }
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let c = match check(&intake, &body, get) {
        Ok(c) => c,
        Err((code, rule, msg)) => return refuse(&intake, code, rule, msg),
    };
    let id = c.meta.id.clone();
    let entry = Entry::new(c.subject.clone(), &c.canonical, &c.meta);
    if let Err(e) = intake
        .depositor
        .keep_within(vec![entry], intake.limits.queue_wait)
        .await
    {
        // 202 only once the packet is kept (acknowledged by JetStream or in the outbox).
        return not_kept(&intake, e, 1);
    }
    intake.metrics.packets_in.inc();
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "id": id, "subject": c.subject })),
    )
        .into_response()
}

/// Most packets in one batch.
pub const MAX_BATCH_PACKETS: usize = 1000;
/// Largest batch body.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// `POST /v1/outcomes/batch`: outcome packets as JSON lines (blank lines skipped), all or
/// nothing. Every line is checked first; if any breaks a rule, nothing is deposited and the
/// answer names the refused lines (the first's status and rule). Otherwise all are deposited
/// in order: 202 with their ids.
async fn post_batch(State(intake): State<IntakeState>, body: Bytes) -> Response {
    if !intake.accepting.load(Ordering::Relaxed) {
        return shutting_down();
    }
    let batch =
        match batch_size(&intake, &body).and_then(|count| check_batch(&intake, &body, count)) {
            Ok(batch) => batch,
            Err(refusal) => return *refusal,
        };
    // All or none: the queue takes every packet of the batch within the wait, or none.
    let n = batch.entries.len();
    if let Err(e) = intake
        .depositor
        .keep_within(batch.entries, intake.limits.queue_wait)
        .await
    {
        // 202 only once every packet is kept (acknowledged by JetStream or in the outbox).
        return not_kept(&intake, e, n);
    }
    intake.metrics.packets_in.inc_by(n as u64);
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"accepted": batch.ids.len(), "ids": batch.ids})),
    )
        .into_response()
}

/// A batch's non-empty lines, numbered from 1, trimmed. Lines are walked twice (counted, then
/// checked), never collected: what a batch holds is its body, the checked packets (at most
/// 1000, each under 1 KiB) and 10 refusals.
fn batch_lines(body: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    body.split(|b| *b == b'\n')
        .enumerate()
        .map(|(n, l)| (n + 1, l.trim_ascii()))
        .filter(|(_, l)| !l.is_empty())
}

/// The number of packets in the batch, or its refusal (too many bytes or packets).
fn batch_size(intake: &IntakeState, body: &[u8]) -> Result<usize, Box<Response>> {
    let too_large = |msg: String| {
        Box::new(refuse(
            intake,
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            msg,
        ))
    };
    if body.len() > MAX_BATCH_BYTES {
        return Err(too_large(format!(
            "a batch of {} bytes is over {MAX_BATCH_BYTES}",
            body.len()
        )));
    }
    let count = batch_lines(body).take(MAX_BATCH_PACKETS + 1).count();
    if count > MAX_BATCH_PACKETS {
        return Err(too_large(format!(
            "a batch of more than {MAX_BATCH_PACKETS} packets"
        )));
    }
    Ok(count)
}

/// A batch whose every line passed the checks, ready to deposit.
struct CheckedBatch {
    entries: Vec<Entry>,
    ids: Vec<String>,
}

/// Checks every line; if any breaks a rule, the refusal naming the refused lines (the first's
/// status and rule, up to 10 lines, every refusal counted by rule).
fn check_batch(
    intake: &IntakeState,
    body: &[u8],
    count: usize,
) -> Result<CheckedBatch, Box<Response>> {
    let mut batch = CheckedBatch {
        entries: Vec::with_capacity(count),
        ids: Vec::with_capacity(count),
    };
    let mut refused = Vec::new();
    let mut refused_count = 0usize;
    let mut first: Option<(StatusCode, &'static str)> = None;
    for (n, line) in batch_lines(body) {
        // Lines carry outcome packets: no per-line headers, so none from the request either.
        match check(intake, line, |_| None) {
            Ok(c) if first.is_none() => {
                batch.ids.push(c.meta.id.clone());
                batch
                    .entries
                    .push(Entry::new(c.subject, &c.canonical, &c.meta));
            }
            Ok(_) => {}
            Err((code, rule, msg)) => {
                intake.metrics.refused(rule);
                refused_count += 1;
                first.get_or_insert((code, rule));
                if refused.len() < 10 {
                    refused.push(json!({"line": n, "rule": rule, "error": msg}));
                }
                // Nothing will be deposited: what was checked is not kept.
                batch.entries = Vec::new();
                batch.ids = Vec::new();
            }
        }
    }
    match first {
        None => Ok(batch),
        Some((code, rule)) => {
            let error = format!("{refused_count} of {count} lines refused; nothing was deposited");
            Err(Box::new(
                (
                    code,
                    axum::Json(json!({"error": error, "rule": rule, "refused": refused})),
                )
                    .into_response(),
            ))
        }
    }
}

fn view_json(name: &str, v: &crate::subject_worker::View) -> serde_json::Value {
    json!({
        "subject": name,
        "address": v.address,
        "consumer": v.consumer,
        "bound": v.bound,
        "standby": v.standby,
        "refused": v.invalid,
        "consensus": v.snapshot.as_ref().map(|s| json!({
            "problem": s.problem, "strength": s.strength, "weightedConfidence": s.weighted_confidence,
            "agents": s.agents, "packets": s.packets, "synthesisPairs": s.synthesis_pairs,
            "dispersion": s.dispersion, "effectiveN": s.effective_n, "alert": s.alert,
            "recommendation": s.recommendation,
        })),
    })
}

/// The metrics text, the consensus gauges brought up to the views first.
fn render_metrics(intake: &IntakeState) -> String {
    {
        let views = intake
            .views
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        intake.metrics.consensus.sync(&views);
    }
    intake.metrics.render()
}

async fn all_consensus(State(intake): State<IntakeState>) -> Response {
    let views = intake
        .views
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    axum::Json(
        views
            .iter()
            .map(|(n, v)| view_json(n, v))
            .collect::<Vec<_>>(),
    )
    .into_response()
}

async fn one_consensus(State(intake): State<IntakeState>, Path(name): Path<String>) -> Response {
    let views = intake
        .views
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match views.get(&name) {
        Some(v) => axum::Json(view_json(&name, v)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": format!("no subject {name:?}")})),
        )
            .into_response(),
    }
}

async fn ready(State(intake): State<IntakeState>) -> Response {
    let views = intake
        .views
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // A subject the agent refused (reported in its view) does not hold the others' readiness.
    let all_bound = views
        .values()
        .filter(|v| v.invalid.is_none())
        .all(|v| v.bound);
    if intake.connected.load(Ordering::Relaxed) && all_bound {
        (StatusCode::OK, "ready").into_response()
    } else {
        let unbound: Vec<&String> = views
            .iter()
            .filter(|(_, v)| !v.bound && v.invalid.is_none())
            .map(|(n, _)| n)
            .collect();
        let connected = intake.connected.load(Ordering::Relaxed);
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("connected: {connected}; unbound subjects: {unbound:?}"),
        )
            .into_response()
    }
}

async fn no_route(State(intake): State<IntakeState>, uri: axum::http::Uri) -> Response {
    let msg = format!("no route {}", uri.path());
    refuse(&intake, StatusCode::NOT_FOUND, "no_route", msg)
}

/// Every route, each behind [`limits::guard`] (which reads the body: the extractors below
/// never see more than the route's limit).
pub fn router(intake: IntakeState) -> Router {
    Router::new()
        .route("/v1/outcomes", post(post_outcome))
        .route(limits::BATCH_ROUTE, post(post_batch))
        .route("/v1/consensus", get(all_consensus))
        .route("/v1/consensus/{name}", get(one_consensus))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route(
            "/metrics",
            get(|State(intake): State<IntakeState>| async move { render_metrics(&intake) }),
        )
        .fallback(no_route)
        .layer(axum::middleware::from_fn_with_state(
            intake.clone(),
            limits::guard,
        ))
        .with_state(intake)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qis_crds::SynthesisSettings;

    fn subject(address: &str, max_hops: Option<u8>) -> SubjectSpec {
        SubjectSpec {
            name: "s".into(),
            domain: "hvac".into(),
            problem_class: None,
            address: address.into(),
            synthesis: SynthesisSettings {
                max_hops,
                ..Default::default()
            },
        }
    }

    #[test]
    fn the_hop_limit_is_the_largest_of_the_subjects_following_the_address() {
        let subjects = [
            subject("qis.iot.hvac.>", Some(3)),
            subject("qis.iot.hvac.energy", None),
            subject("qis.iot.water.>", Some(8)),
        ];
        assert_eq!(hop_limit(&subjects, "qis.iot.hvac.energy"), Some(3));
        assert_eq!(hop_limit(&subjects[1..2], "qis.iot.hvac.energy"), Some(1));
        assert_eq!(hop_limit(&subjects, "qis.iot.power.grid"), None);
    }
}
