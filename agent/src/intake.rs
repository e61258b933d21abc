//! The privacy firewall and the local API: local processes `POST` outcome packets (exactly the
//! seed's body, checked by every rule before anything leaves the device) and `GET` the local
//! consensus; operations get `/healthz`, `/readyz`, `/metrics`.
//!
//! Refusals answer 4xx with `{"error": …, "rule": …}` and are counted by rule: 413 for a body
//! over 512 bytes, 400 for a body that is not the seed's object, 422 for a value that breaks a
//! rule (including a synthesis packet over the hop limit).

use crate::deposit::Depositor;
use crate::metrics::Metrics;
use crate::outbox::Entry;
use crate::packet::{OutcomePacket, PacketError, PacketKind, PacketMeta};
use crate::twins::{SubjectSpec, Views};
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

/// What the HTTP handlers share.
#[derive(Clone, Debug)]
pub struct Api {
    pub depositor: Depositor,
    pub metrics: Arc<Metrics>,
    pub views: Views,
    pub subjects: Arc<RwLock<Vec<SubjectSpec>>>,
    pub prefix: String,
    pub max_hops: u8,
    pub connected: Arc<AtomicBool>,
    pub accepting: Arc<AtomicBool>,
}

fn refuse(api: &Api, code: StatusCode, rule: &'static str, error: String) -> Response {
    api.metrics.refused(rule);
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

async fn post_outcome(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    if !api.accepting.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": "shutting down"})),
        )
            .into_response();
    }
    let packet = match OutcomePacket::decode(&body) {
        Ok(p) => p,
        Err(e) => return refuse(&api, code_of(&e), e.rule(), e.to_string()),
    };
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let given = match PacketMeta::from_headers(get, &body) {
        Ok(m) => m,
        Err(e) => {
            return refuse(
                &api,
                StatusCode::UNPROCESSABLE_ENTITY,
                e.rule(),
                e.to_string(),
            );
        }
    };
    if given.kind == PacketKind::Synthesis && given.hops > api.max_hops {
        let msg = format!(
            "a synthesis packet with {} hops is over the limit of {}",
            given.hops, api.max_hops
        );
        return refuse(&api, StatusCode::UNPROCESSABLE_ENTITY, "hop_limit", msg);
    }
    // Re-encode: what leaves the device is exactly the checked packet in the seed's form.
    let canonical = match packet.encode() {
        Ok(b) => b,
        Err(e) => return refuse(&api, code_of(&e), e.rule(), e.to_string()),
    };
    let meta = PacketMeta {
        id: crate::packet::packet_id(&canonical),
        ..given
    };
    let subject = {
        let subjects = api
            .subjects
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        address_for(&api.prefix, &subjects, &packet)
    };
    let id = meta.id.clone();
    if let Err(e) = api
        .depositor
        .send(Entry::new(subject.clone(), &canonical, &meta))
        .await
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": e})),
        )
            .into_response();
    }
    api.metrics.packets_in.inc();
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "id": id, "subject": subject })),
    )
        .into_response()
}

fn view_json(name: &str, v: &crate::twins::View) -> serde_json::Value {
    json!({
        "subject": name,
        "address": v.address,
        "consumer": v.consumer,
        "bound": v.bound,
        "standby": v.standby,
        "consensus": v.snapshot.as_ref().map(|s| json!({
            "problem": s.problem, "strength": s.strength, "weightedConfidence": s.weighted_confidence,
            "agents": s.agents, "packets": s.packets, "synthesisPairs": s.synthesis_pairs,
            "dispersion": s.dispersion, "effectiveN": s.effective_n, "alert": s.alert,
            "recommendation": s.recommendation,
        })),
    })
}

async fn all_consensus(State(api): State<Api>) -> Response {
    let views = api
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

async fn one_consensus(State(api): State<Api>, Path(name): Path<String>) -> Response {
    let views = api
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

async fn ready(State(api): State<Api>) -> Response {
    let views = api
        .views
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let all_bound = views.values().all(|v| v.bound);
    if api.connected.load(Ordering::Relaxed) && all_bound {
        (StatusCode::OK, "ready").into_response()
    } else {
        let unbound: Vec<&String> = views
            .iter()
            .filter(|(_, v)| !v.bound)
            .map(|(n, _)| n)
            .collect();
        let connected = api.connected.load(Ordering::Relaxed);
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("connected: {connected}; unbound subjects: {unbound:?}"),
        )
            .into_response()
    }
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/outcomes", post(post_outcome))
        .route("/v1/consensus", get(all_consensus))
        .route("/v1/consensus/{name}", get(one_consensus))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route(
            "/metrics",
            get(|State(api): State<Api>| async move { api.metrics.render() }),
        )
        .with_state(api)
}
