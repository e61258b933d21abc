//! The apply step against JetStream: make streams and consumers match what the pure builders
//! ask for, report drift and what the server cannot change, delete on request.
//!
//! Requests go straight to the JetStream API (`$JS.API.*`) so that every server error arrives
//! with its code, and each maps to one [`Error`] category: an unreachable server is
//! `NatsUnavailable` (retry), a refused change is `NotSupported` (wait for a spec change),
//! overlapping subjects are `ResourceConflict`.

use crate::error::{Error, Refusal, Wait};
use crate::{consumer_config, stream_config};
use async_nats::jetstream::consumer::{self, FromConsumer, IntoConsumerConfig, pull};
use async_nats::jetstream::response::Response;
use async_nats::jetstream::{Context, stream};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

/// JetStream API error codes we act on.
mod code {
    pub const STREAM_NOT_FOUND: u64 = 10059;
    pub const CONSUMER_NOT_FOUND: u64 = 10014;
    pub const SUBJECT_OVERLAP: u64 = 10065;
    /// The stream (or the account) admits no more consumers.
    pub const MAX_CONSUMERS: u64 = 10026;
    /// Codes that say "not now" rather than "not this": cluster or JetStream unavailable,
    /// insufficient resources, stream or consumer offline.
    pub const TRANSIENT: [u64; 10] = [
        10006, 10007, 10008, 10009, 10023, 10039, 10076, 10118, 10119, 10194,
    ];
}

/// A JetStream API failure: the server's answer, or no answer.
#[derive(Debug)]
enum ApiError {
    Server(Refusal),
    Unreachable(async_nats::jetstream::context::RequestError),
}

impl ApiError {
    fn is(&self, c: u64) -> bool {
        matches!(self, ApiError::Server(r) if r.code == c)
    }

    /// The operator error for a failed change of `what`.
    fn into_error(self, what: &str) -> Error {
        let context = what.to_owned();
        match self {
            ApiError::Server(r) if r.code == code::SUBJECT_OVERLAP => Error::Conflict {
                context,
                source: Some(r),
            },
            ApiError::Server(r) if r.code == code::MAX_CONSUMERS => {
                Error::ConsumerLimit { context, source: r }
            }
            ApiError::Server(r) if code::TRANSIENT.contains(&r.code) => Error::Nats {
                context,
                source: r.into(),
            },
            ApiError::Server(r) => Error::NotSupported {
                context: format!("{what}: the server refused it"),
                source: Some(r.into()),
            },
            ApiError::Unreachable(e) => Error::Nats {
                context,
                source: e.into(),
            },
        }
    }
}

/// JetStream API requests this process sent (every one goes through [`api`]); exported as
/// `qis_operator_nats_requests_total`.
pub static REQUESTS: std::sync::LazyLock<prometheus_client::metrics::counter::Counter> =
    std::sync::LazyLock::new(Default::default);

async fn api<T: DeserializeOwned>(
    js: &Context,
    subject: String,
    payload: &serde_json::Value,
) -> Result<T, ApiError> {
    REQUESTS.inc();
    match js.request::<_, _, Response<T>>(subject, payload).await {
        Ok(Response::Ok(v)) => Ok(v),
        Ok(Response::Err { error }) => Err(ApiError::Server(Refusal {
            code: error.error_code().0,
            description: error.to_string(),
        })),
        Err(e) => Err(ApiError::Unreachable(e)),
    }
}

/// What [`ensure_stream`] found and did.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamOutcome {
    pub created: bool,
    /// Fields that differed from the spec and were put back.
    pub reverted: Vec<&'static str>,
    pub state: stream::State,
}

/// Creates the stream or puts it back to `desired`.
pub async fn ensure_stream(js: &Context, desired: &stream::Config) -> Result<StreamOutcome, Error> {
    let what = format!("stream {}", desired.name);
    match api::<stream::Info>(js, format!("STREAM.INFO.{}", desired.name), &json!({})).await {
        Ok(live) => revert_stream(js, desired, live, &what).await,
        Err(e) if e.is(code::STREAM_NOT_FOUND) => create_stream(js, desired, &what).await,
        Err(e) => Err(e.into_error(&what)),
    }
}

/// Puts the `live` stream back to `desired`: refused when it belongs to another swarm or
/// differs in what cannot change in place.
async fn revert_stream(
    js: &Context,
    desired: &stream::Config,
    live: stream::Info,
    what: &str,
) -> Result<StreamOutcome, Error> {
    let ours = stream_config::owner(desired);
    if let Some(owner) = stream_config::owner(&live.config)
        && Some(owner) != ours
    {
        return Err(Error::Conflict {
            context: format!("{what} exists and belongs to {owner}"),
            source: None,
        });
    }
    let immutable = stream_config::immutable_changes(&live.config, desired);
    if !immutable.is_empty() {
        return Err(Error::NotSupported {
            context: format!(
                "{what}: {} cannot change on an existing stream (delete the swarm with deletionPolicy delete to recreate it)",
                immutable.join(", ")
            ),
            source: None,
        });
    }
    let drifted = stream_config::drift(&live.config, desired);
    if drifted.is_empty() {
        return Ok(StreamOutcome {
            created: false,
            reverted: vec![],
            state: live.state,
        });
    }
    let updated: stream::Info = api(
        js,
        format!("STREAM.UPDATE.{}", desired.name),
        &json!(desired),
    )
    .await
    .map_err(|e| e.into_error(&format!("{what} update of {}", drifted.join(", "))))?;
    Ok(StreamOutcome {
        created: false,
        reverted: drifted,
        state: updated.state,
    })
}

/// Creates the stream, unless its subjects overlap another stream's.
async fn create_stream(
    js: &Context,
    desired: &stream::Config,
    what: &str,
) -> Result<StreamOutcome, Error> {
    if let Some(other) = overlapping_stream(js, desired).await? {
        return Err(Error::Conflict {
            context: format!(
                "subjects {:?} overlap stream {other} on the same NATS account",
                desired.subjects
            ),
            source: None,
        });
    }
    let created: stream::Info = api(
        js,
        format!("STREAM.CREATE.{}", desired.name),
        &json!(desired),
    )
    .await
    .map_err(|e| e.into_error(what))?;
    Ok(StreamOutcome {
        created: true,
        reverted: vec![],
        state: created.state,
    })
}

#[derive(Deserialize)]
struct StreamList {
    #[serde(default)]
    total: usize,
    #[serde(default)]
    streams: Vec<stream::Info>,
}

/// Another stream (with its owner) whose subjects overlap those of `desired`.
async fn overlapping_stream(
    js: &Context,
    desired: &stream::Config,
) -> Result<Option<String>, Error> {
    let mut offset = 0usize;
    loop {
        let page: StreamList = api(js, "STREAM.LIST".into(), &json!({ "offset": offset }))
            .await
            .map_err(|e| e.into_error("listing streams"))?;
        for info in &page.streams {
            let c = &info.config;
            if c.name == desired.name {
                continue;
            }
            let hit = c.subjects.iter().any(|s| {
                desired
                    .subjects
                    .iter()
                    .any(|d| stream_config::filters_overlap(s, d))
            });
            if hit {
                let owner = stream_config::owner(c)
                    .map(|o| format!(" (swarm {o})"))
                    .unwrap_or_default();
                return Ok(Some(format!("{}{owner}", c.name)));
            }
        }
        offset += page.streams.len();
        if page.streams.is_empty() || offset >= page.total {
            return Ok(None);
        }
    }
}

/// Live state of a stream, `None` when it does not exist.
pub async fn stream_state(js: &Context, name: &str) -> Result<Option<stream::Info>, Error> {
    match api::<stream::Info>(js, format!("STREAM.INFO.{name}"), &json!({})).await {
        Ok(info) => Ok(Some(info)),
        Err(e) if e.is(code::STREAM_NOT_FOUND) => Ok(None),
        Err(e) => Err(e.into_error(&format!("stream {name}"))),
    }
}

/// Deletes a stream; `Ok(false)` when it was already gone.
pub async fn delete_stream(js: &Context, name: &str) -> Result<bool, Error> {
    match api::<serde_json::Value>(js, format!("STREAM.DELETE.{name}"), &json!({})).await {
        Ok(_) => Ok(true),
        Err(e) if e.is(code::STREAM_NOT_FOUND) => Ok(false),
        Err(e) => Err(e.into_error(&format!("deleting stream {name}"))),
    }
}

/// What [`ensure_consumer`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerOutcome {
    pub name: String,
    pub created: bool,
    pub reverted: Vec<&'static str>,
}

fn consumer_payload(stream: &str, config: &pull::Config, action: &str) -> serde_json::Value {
    json!({ "stream_name": stream, "config": config.clone().into_consumer_config(), "action": action })
}

/// Creates the durable consumer or puts it back to `desired`.
pub async fn ensure_consumer(
    js: &Context,
    stream: &str,
    desired: &pull::Config,
) -> Result<ConsumerOutcome, Error> {
    let name = desired.durable_name.clone().unwrap_or_default();
    let what = format!("consumer {name} on stream {stream}");
    match api::<consumer::Info>(js, format!("CONSUMER.INFO.{stream}.{name}"), &json!({})).await {
        Ok(live) => {
            let live_config = pull::Config::try_from_consumer_config(live.config).map_err(|e| {
                Error::NotSupported {
                    context: format!("{what} is not a pull consumer"),
                    source: Some(e),
                }
            })?;
            let immutable = consumer_config::immutable_changes(&live_config, desired);
            if !immutable.is_empty() {
                return Err(Error::NotSupported {
                    context: format!(
                        "{what}: {} cannot change on an existing consumer (recreate the subject)",
                        immutable.join(", ")
                    ),
                    source: None,
                });
            }
            let drifted = consumer_config::drift(&live_config, desired);
            if !drifted.is_empty() {
                let _: consumer::Info = api(
                    js,
                    format!("CONSUMER.CREATE.{stream}.{name}"),
                    &consumer_payload(stream, desired, "update"),
                )
                .await
                .map_err(|e| e.into_error(&format!("{what} update of {}", drifted.join(", "))))?;
            }
            Ok(ConsumerOutcome {
                name,
                created: false,
                reverted: drifted,
            })
        }
        Err(e) if e.is(code::CONSUMER_NOT_FOUND) => {
            let _: consumer::Info = api(
                js,
                format!("CONSUMER.CREATE.{stream}.{name}"),
                &consumer_payload(stream, desired, "create"),
            )
            .await
            .map_err(|e| e.into_error(&what))?;
            Ok(ConsumerOutcome {
                name,
                created: true,
                reverted: vec![],
            })
        }
        Err(e) if e.is(code::STREAM_NOT_FOUND) => Err(Wait::NoStream { what }.into()),
        Err(e) => Err(e.into_error(&what)),
    }
}

#[derive(Deserialize)]
struct ConsumerList {
    #[serde(default)]
    total: usize,
    #[serde(default)]
    consumers: Vec<consumer::Info>,
}

/// Every consumer of a stream (empty when the stream is gone).
pub async fn list_consumers(js: &Context, stream: &str) -> Result<Vec<consumer::Info>, Error> {
    let mut out = Vec::new();
    loop {
        let page: ConsumerList = match api(
            js,
            format!("CONSUMER.LIST.{stream}"),
            &json!({ "offset": out.len() }),
        )
        .await
        {
            Ok(p) => p,
            Err(e) if e.is(code::STREAM_NOT_FOUND) => return Ok(vec![]),
            Err(e) => return Err(e.into_error(&format!("listing consumers of {stream}"))),
        };
        let got = page.consumers.len();
        out.extend(page.consumers);
        if got == 0 || out.len() >= page.total {
            return Ok(out);
        }
    }
}

/// Deletes a consumer; `Ok(false)` when it (or its stream) was already gone.
pub async fn delete_consumer(js: &Context, stream: &str, name: &str) -> Result<bool, Error> {
    match api::<serde_json::Value>(js, format!("CONSUMER.DELETE.{stream}.{name}"), &json!({})).await
    {
        Ok(_) => Ok(true),
        Err(e) if e.is(code::CONSUMER_NOT_FOUND) || e.is(code::STREAM_NOT_FOUND) => Ok(false),
        Err(e) => Err(e.into_error(&format!("deleting consumer {name} of {stream}"))),
    }
}
