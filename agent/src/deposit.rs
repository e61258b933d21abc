//! Deposit: publish packets to their addresses with their headers, pipelined (a window of
//! unacknowledged publishes, never one awaited ack per packet), falling back to the on-disk
//! outbox whenever NATS does not acknowledge, and flushing the outbox in order once it does.
//!
//! Order: while the outbox holds anything, new packets queue behind it. Duplicates from
//! re-sending are dropped by JetStream (same `Nats-Msg-Id` within the duplicate window) and by
//! synthesis after that.

use crate::metrics::Metrics;
use crate::outbox::{Entry, Outbox};
use crate::packet::PacketMeta;
use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use qis_crds::constants::{HEADER_HOPS, HEADER_KIND, HEADER_MSG_ID};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Packets sent per round (in flight at once).
pub const WINDOW: usize = 1024;
/// Pause after NATS failed to acknowledge, before trying the outbox again.
const RETRY: Duration = Duration::from_millis(500);

/// Hands packets to the pump.
#[derive(Clone, Debug)]
pub struct Depositor {
    tx: mpsc::Sender<Request>,
}

#[derive(Debug)]
enum Request {
    Packet(Entry),
    /// Answered once everything queued before it has been delivered (or `until` passed).
    Flush(oneshot::Sender<usize>),
}

impl Entry {
    /// The outbox entry of a packet.
    pub fn new(subject: String, body: &[u8], meta: &PacketMeta) -> Entry {
        Entry {
            subject,
            id: meta.id.clone(),
            kind: meta.kind.as_str().to_owned(),
            hops: meta.hops,
            body: String::from_utf8_lossy(body).into_owned(),
        }
    }
}

/// Why packets were not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No room for all of them within the wait (or more than the queue holds).
    #[error("the deposit queue is full")]
    Full,
    #[error("the deposit pump has stopped")]
    Stopped,
}

impl Depositor {
    /// Queues a packet; waits when the queue is full (back-pressure on the caller).
    pub async fn send(&self, e: Entry) -> Result<(), String> {
        self.tx
            .send(Request::Packet(e))
            .await
            .map_err(|_| SendError::Stopped.to_string())
    }

    /// Queues all of `entries` or none: waits at most `wait` for room for all of them.
    pub async fn send_within(&self, entries: Vec<Entry>, wait: Duration) -> Result<(), SendError> {
        if entries.is_empty() {
            return Ok(());
        }
        if entries.len() > self.tx.max_capacity() {
            return Err(SendError::Full);
        }
        let permits = match tokio::time::timeout(wait, self.tx.reserve_many(entries.len())).await {
            Err(_) => return Err(SendError::Full),
            Ok(Err(_)) => return Err(SendError::Stopped),
            Ok(Ok(p)) => p,
        };
        for (permit, e) in permits.zip(entries) {
            permit.send(Request::Packet(e));
        }
        Ok(())
    }

    /// Waits until every packet queued so far is delivered, or `timeout`; returns how many are
    /// still in the outbox.
    pub async fn flush(&self, timeout: Duration) -> Option<usize> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Request::Flush(tx)).await.ok()?;
        tokio::time::timeout(timeout, rx).await.ok()?.ok()
    }
}

fn headers(e: &Entry) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HEADER_MSG_ID, e.id.as_str());
    h.insert(HEADER_KIND, e.kind.as_str());
    h.insert(HEADER_HOPS, e.hops.to_string().as_str());
    h
}

/// Publishes `batch` pipelined; returns how many, from the start, were acknowledged before
/// the first failure.
async fn publish(js: &Context, batch: &[Entry]) -> usize {
    let mut acks = Vec::with_capacity(batch.len());
    for e in batch {
        match js
            .publish_with_headers(
                e.subject.clone(),
                headers(e),
                e.body.clone().into_bytes().into(),
            )
            .await
        {
            Ok(ack) => acks.push(ack),
            Err(_) => break,
        }
    }
    let sent = acks.len();
    let results = futures::future::join_all(acks.into_iter().map(|a| a.into_future())).await;
    let done = results.iter().take_while(|r| r.is_ok()).count();
    if done < batch.len() {
        let first_error = results
            .iter()
            .find_map(|r| r.as_ref().err())
            .map(ToString::to_string);
        tracing::debug!(batch = batch.len(), sent, done, error = ?first_error, "deposit round incomplete");
    }
    done
}

/// Starts the pump; it runs until `shutdown` turns true and the queue is drained.
pub fn start(
    js: Context,
    outbox: Outbox,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Depositor {
    let (tx, mut rx) = mpsc::channel::<Request>(WINDOW * 8);
    tokio::spawn(async move {
        let mut outbox = outbox;
        metrics.outbox_depth.set(outbox.len() as i64);
        let mut waiters: Vec<oneshot::Sender<usize>> = Vec::new();
        let mut stopping = false;
        loop {
            let mut fresh = Vec::new();
            tokio::select! {
                got = rx.recv() => match got {
                    Some(Request::Packet(e)) => fresh.push(e),
                    Some(Request::Flush(w)) => waiters.push(w),
                    None => break,
                },
                _ = tokio::time::sleep(RETRY), if !outbox.is_empty() => {}
                _ = shutdown.changed(), if !stopping => stopping = true,
            }
            while fresh.len() < WINDOW {
                match rx.try_recv() {
                    Ok(Request::Packet(e)) => fresh.push(e),
                    Ok(Request::Flush(w)) => waiters.push(w),
                    Err(_) => break,
                }
            }
            if outbox.is_empty() && !fresh.is_empty() {
                let done = publish(&js, &fresh).await;
                metrics.packets_out.inc_by(done as u64);
                fresh.drain(..done);
            }
            if !fresh.is_empty() {
                let dropped = outbox.push(fresh).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "cannot write the outbox");
                    0
                });
                metrics.outbox_dropped.inc_by(dropped);
            }
            // Flush the outbox, oldest first, while NATS acknowledges.
            while !outbox.is_empty() {
                let head = outbox.head(WINDOW);
                let done = publish(&js, &head).await;
                metrics.packets_out.inc_by(done as u64);
                if let Err(e) = outbox.pop(done) {
                    tracing::error!(error = %e, "cannot rewrite the outbox");
                }
                if done < head.len() {
                    break;
                }
            }
            metrics.outbox_depth.set(outbox.len() as i64);
            if rx.is_empty() {
                for w in waiters.drain(..) {
                    let _ = w.send(outbox.len());
                }
            }
            if stopping && rx.is_empty() {
                break;
            }
        }
        for w in waiters.drain(..) {
            let _ = w.send(outbox.len());
        }
    });
    Depositor { tx }
}
