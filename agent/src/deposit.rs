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
    /// Packets the intake acknowledges only once each is acknowledged by JetStream or written
    /// to the outbox (the answer).
    Keep(Entry, oneshot::Sender<Result<(), Refused>>),
    /// Answered once everything queued before it has been delivered (or `until` passed).
    Flush(oneshot::Sender<usize>),
}

/// A packet the pump could not keep (the outbox refused it).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}")]
pub struct Refused {
    pub error: String,
}

/// Why [`Depositor::keep_within`] did not keep all packets.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeepError {
    /// Not queued (nothing was taken).
    #[error(transparent)]
    Queue(SendError),
    /// Queued, but the outbox refused them from packet `accepted` on (disk full, I/O error);
    /// the first `accepted` are kept.
    #[error("{error}")]
    Unwritable { accepted: usize, error: String },
}

impl KeepError {
    /// The rule an outbox refusal is counted under.
    pub const UNWRITABLE: &'static str = "outbox_unwritable";
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

    /// Queues all of `entries` or none, waiting at most `wait` for room (one queue slot per
    /// packet, as [`Depositor::send_within`]), then waits until each is kept: acknowledged by
    /// JetStream or written to the outbox (synced, with `fsync: always`). Only then may the
    /// intake answer 202. The pump answers within one round (a publish round is bounded by the
    /// NATS request timeout, an outbox write is local).
    pub async fn keep_within(&self, entries: Vec<Entry>, wait: Duration) -> Result<(), KeepError> {
        if entries.is_empty() {
            return Ok(());
        }
        if entries.len() > self.tx.max_capacity() {
            return Err(KeepError::Queue(SendError::Full));
        }
        let permits = match tokio::time::timeout(wait, self.tx.reserve_many(entries.len())).await {
            Err(_) => return Err(KeepError::Queue(SendError::Full)),
            Ok(Err(_)) => return Err(KeepError::Queue(SendError::Stopped)),
            Ok(Ok(p)) => p,
        };
        let mut answers = Vec::with_capacity(entries.len());
        for (permit, e) in permits.zip(entries) {
            let (tx, rx) = oneshot::channel();
            permit.send(Request::Keep(e, tx));
            answers.push(rx);
        }
        let mut accepted = 0;
        for rx in answers {
            match rx.await {
                Ok(Ok(())) => accepted += 1,
                Ok(Err(r)) => {
                    return Err(KeepError::Unwritable {
                        accepted,
                        error: r.error,
                    });
                }
                Err(_) => return Err(KeepError::Queue(SendError::Stopped)),
            }
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

/// Who waits for a packet of the round: `fresh[end - 1]`.
struct Waiter {
    end: usize,
    tx: oneshot::Sender<Result<(), Refused>>,
}

/// Takes one request into the round.
fn add_to_round(
    r: Request,
    fresh: &mut Vec<Entry>,
    keepers: &mut Vec<Waiter>,
    flushers: &mut Vec<oneshot::Sender<usize>>,
) {
    match r {
        Request::Packet(e) => fresh.push(e),
        Request::Keep(e, tx) => {
            fresh.push(e);
            keepers.push(Waiter {
                end: fresh.len(),
                tx,
            });
        }
        Request::Flush(w) => flushers.push(w),
    }
}

/// Answers the round's keepers: the first `kept` packets of the round were kept.
fn answer(keepers: &mut Vec<Waiter>, kept: usize, error: Option<&crate::outbox::OutboxError>) {
    for w in keepers.drain(..) {
        let result = if kept >= w.end {
            Ok(())
        } else {
            Err(Refused {
                error: error
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "the outbox did not take the packet".to_owned()),
            })
        };
        let _ = w.tx.send(result);
    }
}

/// Deposits one round's fresh packets: published when the outbox is empty and NATS is up,
/// the rest appended to the outbox. Returns how many, from the start, were published or kept,
/// and the outbox's error if it could not take them.
async fn deposit_round(
    js: &Context,
    outbox: &mut Outbox,
    mut fresh: Vec<Entry>,
    up: bool,
    metrics: &Metrics,
) -> (usize, Option<crate::outbox::OutboxError>) {
    let mut done = 0;
    if outbox.is_empty() && !fresh.is_empty() && up {
        done = publish(js, &fresh).await;
        metrics.packets_out.inc_by(done as u64);
    }
    let total = fresh.len();
    if done == total {
        return (done, None);
    }
    match outbox.push(fresh.drain(done..)) {
        Ok(dropped) => {
            metrics.outbox_dropped.inc_by(dropped);
            (total, None)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot write the outbox: refusing the packets");
            metrics.outbox_write_failures.inc();
            (done, Some(e))
        }
    }
}

/// Flushes the outbox, oldest first, while NATS acknowledges.
async fn drain_outbox(js: &Context, outbox: &mut Outbox, metrics: &Metrics) {
    while !outbox.is_empty() {
        let head = outbox.head(WINDOW);
        let done = publish(js, &head).await;
        metrics.packets_out.inc_by(done as u64);
        if let Err(e) = outbox.pop(done) {
            metrics.outbox_write_failures.inc();
            tracing::error!(error = %e, "cannot record delivered packets in the outbox");
        }
        if done < head.len() {
            break;
        }
    }
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
        let mut keepers: Vec<Waiter> = Vec::new();
        let mut stopping = false;
        let connected = |js: &Context| {
            js.client().connection_state() == async_nats::connection::State::Connected
        };
        loop {
            let mut fresh = Vec::new();
            let sync_at = outbox.sync_due();
            tokio::select! {
                got = rx.recv() => match got {
                    Some(r) => add_to_round(r, &mut fresh, &mut keepers, &mut waiters),
                    None => break,
                },
                _ = tokio::time::sleep(RETRY), if !outbox.is_empty() => {}
                _ = async { if let Some(t) = sync_at { tokio::time::sleep_until(t.into()).await } }, if sync_at.is_some() => {}
                _ = shutdown.changed(), if !stopping => stopping = true,
            }
            while fresh.len() < WINDOW {
                match rx.try_recv() {
                    Ok(r) => add_to_round(r, &mut fresh, &mut keepers, &mut waiters),
                    Err(_) => break,
                }
            }
            let up = connected(&js);
            let (kept, failure) = deposit_round(&js, &mut outbox, fresh, up, &metrics).await;
            answer(&mut keepers, kept, failure.as_ref());
            if up {
                drain_outbox(&js, &mut outbox, &metrics).await;
            }
            outbox.sync_if_due();
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
        outbox.sync_now();
        for w in waiters.drain(..) {
            let _ = w.send(outbox.len());
        }
    });
    Depositor { tx }
}
