//! The JetStream side of a subject worker: reading the stored window back (rebuild), binding
//! the site's durable consumer as a client of its priority group, and the ordered consumer a
//! standby replica follows the subject with.

use super::message;
use super::{PRIORITY_GROUP, SubjectSpec, WorkerContext, now};
use crate::synthesis::Synthesizer;
use async_nats::jetstream::consumer::{self, DeliverPolicy, pull};
use futures::StreamExt;
use std::time::Duration;

/// Pull expiry: well below the pin TTL, so an active agent keeps its pin.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// How long the rebuild waits for a first message of a subject with no history.
const REBUILD_IDLE: Duration = Duration::from_millis(300);

/// Where reading a subject starts: after the last packet seen (stream sequence), else at the
/// start of the synthesis window.
pub fn start_after(last_seq: u64, synth: &Synthesizer) -> Result<DeliverPolicy, String> {
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
pub async fn ordered(
    ctx: &WorkerContext,
    spec: &SubjectSpec,
    deliver_policy: DeliverPolicy,
) -> Result<(pull::Ordered, bool), String> {
    let stream = ctx
        .js
        .get_stream(&ctx.config.stream)
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
pub async fn rebuild(
    ctx: &WorkerContext,
    spec: &SubjectSpec,
    synth: &mut Synthesizer,
    max_hops: u8,
) -> Result<(usize, u64), String> {
    let (mut messages, pending) = ordered(ctx, spec, start_after(0, synth)?).await?;
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
        let _ = message::decode_and_ingest(
            synth,
            next.headers.as_ref(),
            &next.payload,
            max_hops,
            &ctx.metrics,
        );
        n += 1;
        let info = next.info().ok();
        last_seq = info.as_ref().map_or(last_seq, |i| i.stream_sequence);
        if info.is_none_or(|i| i.pending == 0) {
            break;
        }
    }
    Ok((n, last_seq))
}

/// The site's durable consumer, bound: its handle, its message stream (as a client of the
/// site's priority group), and how far the rebuild before it read.
pub struct BoundConsumer {
    pub consumer: consumer::Consumer<pull::Config>,
    pub messages: pull::Stream,
    /// How many packets the rebuild read, and the stream sequence of the last.
    pub rebuilt: usize,
    pub last_seq: u64,
}

/// Rebuilds the window, then binds the durable consumer as the site's pinned client (made
/// first when the agent manages JetStream itself).
pub async fn bind(
    ctx: &WorkerContext,
    spec: &SubjectSpec,
    consumer_name: &str,
    synth: &mut Synthesizer,
    max_hops: u8,
) -> Result<BoundConsumer, String> {
    let (rebuilt, last_seq) = rebuild(ctx, spec, synth, max_hops).await?;
    let stream = ctx
        .js
        .get_stream(&ctx.config.stream)
        .await
        .map_err(|e| e.to_string())?;
    let consumer: consumer::Consumer<pull::Config> = if ctx.config.manage_jetstream {
        stream
            .get_or_create_consumer(
                consumer_name,
                qis_contract::consumer::standalone(&spec.name, &ctx.config.site, &spec.address),
            )
            .await
            .map_err(|e| e.to_string())?
    } else {
        stream
            .get_consumer(consumer_name)
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
    Ok(BoundConsumer {
        consumer,
        messages,
        rebuilt,
        last_seq,
    })
}
