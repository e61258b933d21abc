//! What a request's body may be, on every route: at most a packet's size (a batch's on the
//! batch route), refused on its declared length before a byte of it is read; sent within the
//! body timeout; and, for batches, held only within a budget of bytes that all requests share
//! (so 100 concurrent 1 MiB batches cost the budget, not 100 MiB).

use super::{IntakeState, MAX_BATCH_BYTES, refuse};
use crate::config::IntakeLimits;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use bytes::BytesMut;
use futures::StreamExt;
use qis_crds::constants::MAX_BODY_BYTES;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The route of the batch intake (the only one whose bodies are over a packet).
pub const BATCH_ROUTE: &str = "/v1/outcomes/batch";
/// What is reserved at first for a body that does not declare its length.
const CHUNKED_START: usize = 16 * 1024;

/// Bytes of batch bodies held at once, shared by every request.
#[derive(Debug, Clone)]
pub struct BodyBudget(Arc<Semaphore>);

impl BodyBudget {
    pub fn new(bytes: usize) -> BodyBudget {
        BodyBudget(Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))))
    }

    /// Bytes of the budget not held now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// The largest body of a route and the rule that refuses a larger one.
fn limit_of(path: &str) -> (usize, &'static str) {
    match path {
        BATCH_ROUTE => (MAX_BATCH_BYTES, "batch_too_large"),
        // The packet's own rule: the same refusal whether its size was declared or not.
        "/v1/outcomes" => (MAX_BODY_BYTES, "too_large"),
        _ => (MAX_BODY_BYTES, "body_too_large"),
    }
}

/// A 503 that tells the client when to try again.
pub fn busy(intake: &IntakeState, rule: &'static str, error: String) -> Response {
    let mut r = refuse(intake, StatusCode::SERVICE_UNAVAILABLE, rule, error);
    r.headers_mut()
        .insert(header::RETRY_AFTER, retry_after(&intake.limits));
    r
}

/// Whole seconds, at least 1: the wait a request was given, again.
fn retry_after(limits: &IntakeLimits) -> HeaderValue {
    let secs = limits.queue_wait.as_secs_f64().ceil().max(1.0) as u64;
    HeaderValue::from(secs)
}

enum BodyError {
    TooLarge(usize),
    Broken(String),
}

async fn read(body: Body, limit: usize, reserve: usize) -> Result<Bytes, BodyError> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::with_capacity(reserve);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
        let size = buf.len() + chunk.len();
        if size > limit {
            return Err(BodyError::TooLarge(size));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The middleware on every route (the fallback included): size, budget, deadline; the
/// handler gets the whole body, already read.
pub async fn guard(State(intake): State<IntakeState>, req: Request, next: Next) -> Response {
    let (limit, rule) = limit_of(req.uri().path());
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > limit as u64) {
        let msg = format!("body is {n} bytes, the limit is {limit}");
        return refuse(&intake, StatusCode::PAYLOAD_TOO_LARGE, rule, msg);
    }
    // Hyper refuses a malformed length itself; what is left is a length within the limit or
    // a chunked body (read up to the limit).
    let expect = declared.map_or(limit, |n| n as usize);
    let empty = declared == Some(0) || axum::body::HttpBody::is_end_stream(req.body());
    let _held: Option<OwnedSemaphorePermit> = if limit > MAX_BODY_BYTES && !empty {
        let want = u32::try_from(expect).unwrap_or(u32::MAX);
        let wait = intake.limits.queue_wait;
        match tokio::time::timeout(wait, intake.budget.0.clone().acquire_many_owned(want)).await {
            Ok(Ok(p)) => Some(p),
            _ => {
                let msg = format!(
                    "no room for a body of {expect} bytes within {wait:?}: the agent is busy with other batches"
                );
                return busy(&intake, "busy", msg);
            }
        }
    } else {
        None
    };
    let (parts, body) = req.into_parts();
    let reserve = if empty {
        0
    } else {
        declared.map_or(CHUNKED_START.min(limit), |n| n as usize)
    };
    let timeout = intake.limits.body_timeout;
    let bytes = match tokio::time::timeout(timeout, read(body, limit, reserve)).await {
        Ok(Ok(b)) => b,
        Ok(Err(BodyError::TooLarge(n))) => {
            let msg = format!("body is over {limit} bytes ({n} so far)");
            return refuse(&intake, StatusCode::PAYLOAD_TOO_LARGE, rule, msg);
        }
        Ok(Err(BodyError::Broken(e))) => {
            let msg = format!("the body could not be read: {e}");
            return refuse(&intake, StatusCode::BAD_REQUEST, "body_unreadable", msg);
        }
        Err(_) => {
            let msg = format!("the body was not sent within {timeout:?}");
            return refuse(&intake, StatusCode::REQUEST_TIMEOUT, "body_timeout", msg);
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}
