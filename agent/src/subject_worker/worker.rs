//! The subject worker's loop: the [`WorkerState`] machine driven by what NATS delivers. Each
//! step waits for one thing (a stop, a durable message, a follower message, a snapshot tick)
//! and turns it into the next state; every message goes through [`message::receive`].

use super::consumers::{self, BoundConsumer};
use super::message::{self, Delivery, Reply};
use super::publish::{self, count_evictions, synthesis_packet};
use super::state::{self, Event, Shown, WorkerState};
use super::{PRIORITY_GROUP, SubjectSpec, WorkerContext, now, set_view};
use crate::metrics::SubjectLabel;
use crate::outbox::Entry;
use crate::synthesis::{Evictions, Snapshot, Synthesizer};
use async_nats::jetstream::consumer::{self, pull};
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use prometheus_client::metrics::gauge::Gauge;
use qis_contract::synthesis::Resolved;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often the consensus is recomputed for the local view.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(250);
/// Snapshot ticks between two looks at the consumer (lag, who is pinned): 2 s.
const CONSUMER_INFO_TICKS: u32 = 8;
/// The header a pinned client's messages carry.
const PIN_ID_HEADER: &str = "Nats-Pin-Id";

/// A bound durable consumer and what this binding has seen and done.
pub struct Bound {
    consumer: consumer::Consumer<pull::Config>,
    messages: pull::Stream,
    /// Stream sequence of the last packet seen (a standby follower starts after it).
    last_seq: u64,
    /// The pin this replica was given (from its messages).
    my_pin: Option<String>,
    tick: tokio::time::Interval,
    last_published: Option<(Instant, Snapshot)>,
    ticks: u32,
}

type State = WorkerState<Bound, pull::Ordered>;

/// What a bound worker woke up for.
enum Wake {
    Stop,
    Durable(Option<Result<Message, String>>),
    Follower(Option<Result<Message, String>>),
    Tick,
}

/// Whether the consumer's priority group has a pinned client other than this replica.
pub fn pinned_elsewhere(pinned: Option<&str>, mine: Option<&str>) -> bool {
    pinned.is_some() && pinned != mine
}

/// One subject's worker: its synthesis state (kept across rebinds) and what it needs.
pub struct Worker {
    ctx: WorkerContext,
    spec: SubjectSpec,
    consumer_name: String,
    synth: Synthesizer,
    evictions: Evictions,
    lag: Gauge,
    max_hops: u8,
    publish_every: Duration,
    stop: watch::Receiver<bool>,
    /// What the local view shows of the state (written when it changes).
    shown: Shown,
}

impl Worker {
    pub fn new(
        ctx: WorkerContext,
        spec: SubjectSpec,
        resolved: Resolved,
        stop: watch::Receiver<bool>,
    ) -> Worker {
        let consumer_name = spec.consumer(&ctx.config.site);
        set_view(&ctx, &spec.name, |v| {
            v.address = spec.address.clone();
            v.consumer = consumer_name.clone();
            v.bound = false;
            v.invalid = None;
        });
        let subject = SubjectLabel {
            subject: spec.name.clone(),
        };
        let lag = ctx.metrics.consumer_lag.get_or_create(&subject).clone();
        Worker {
            ctx,
            spec,
            consumer_name,
            synth: Synthesizer::new(resolved.settings),
            evictions: Evictions::default(),
            lag,
            max_hops: resolved.max_hops,
            publish_every: resolved.publish_interval,
            stop,
            shown: Shown::default(),
        }
    }

    /// Runs the state machine until it stops.
    pub async fn run(mut self) {
        let mut state = State::start();
        loop {
            state = match state {
                WorkerState::Stopped => return,
                WorkerState::Binding { retry } => self.bind(retry).await,
                bound => self.serve(bound).await,
            };
        }
    }

    /// The next state after `event`, with the local view showing it.
    fn go(&mut self, state: State, event: Event<Bound, pull::Ordered>) -> State {
        let before = self.shown;
        let next = state::follow(&mut self.shown, state, event);
        if self.shown != before {
            let Shown { bound, standby } = self.shown;
            set_view(&self.ctx, &self.spec.name, |v| {
                v.bound = bound;
                v.standby = standby;
            });
        }
        next
    }

    /// Binding: rebuild the window and bind the durable consumer; on failure wait `retry`.
    async fn bind(&mut self, retry: Duration) -> State {
        let binding = State::Binding { retry };
        if *self.stop.borrow() {
            return self.go(binding, Event::Stop);
        }
        let (ctx, spec) = (&self.ctx, &self.spec);
        let bound = consumers::bind(
            ctx,
            spec,
            &self.consumer_name,
            &mut self.synth,
            self.max_hops,
        );
        match bound.await {
            Ok(b) => {
                tracing::info!(subject = %spec.name, consumer = %self.consumer_name, rebuilt = b.rebuilt, "bound");
                self.go(binding, Event::Bound(Bound::new(b)))
            }
            Err(e) => {
                tracing::warn!(subject = %spec.name, error = %e, ?retry, "cannot bind the consumer yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => self.go(binding, Event::BindFailed),
                    _ = self.stop.changed() => self.go(binding, Event::Stop),
                }
            }
        }
    }

    /// Active or standby: one thing delivered, handled.
    async fn serve(&mut self, mut state: State) -> State {
        let Some((bound, follower)) = state.bound_mut() else {
            return state;
        };
        let wake = tokio::select! {
            _ = self.stop.changed() => Wake::Stop,
            next = next_of(follower) => Wake::Follower(next.map(|r| r.map_err(|e| e.to_string()))),
            next = bound.messages.next() => Wake::Durable(next.map(|r| r.map_err(|e| e.to_string()))),
            _ = bound.tick.tick() => Wake::Tick,
        };
        let name = &self.spec.name;
        match wake {
            Wake::Stop => self.go(state, Event::Stop),
            Wake::Durable(Some(Ok(msg))) => self.durable_message(state, msg).await,
            Wake::Durable(Some(Err(e))) => {
                tracing::debug!(subject = %name, error = %e, "pull");
                state
            }
            Wake::Durable(None) => self.go(state, Event::DurableEnded),
            Wake::Follower(Some(Ok(msg))) => {
                if let Some((bound, _)) = state.bound_mut() {
                    self.receive(bound, &msg, Delivery::Follower).await;
                }
                state
            }
            Wake::Follower(Some(Err(e))) => {
                tracing::debug!(subject = %name, error = %e, "standby follower");
                state
            }
            // Made again at the next look at the consumer, if still on standby.
            Wake::Follower(None) => self.go(state, Event::FollowerEnded),
            Wake::Tick => self.tick(state).await,
        }
    }

    /// A durable message: this replica is pinned (active, if it was on standby), then the
    /// message's one path.
    async fn durable_message(&mut self, state: State, msg: Message) -> State {
        let pin = msg.headers.as_ref().and_then(|h| h.get(PIN_ID_HEADER));
        let pin = pin.map(|p| p.as_str().to_owned());
        let mut state = if state.is_standby() {
            tracing::info!(subject = %self.spec.name, "pinned: active for the site");
            self.go(state, Event::Pinned)
        } else {
            state
        };
        if let Some((bound, _)) = state.bound_mut() {
            bound.my_pin = pin.or(bound.my_pin.take());
            self.receive(bound, &msg, Delivery::Durable).await;
        }
        state
    }

    /// The one message path: ingested and counted, then acked as its delivery wants.
    async fn receive(&mut self, bound: &mut Bound, msg: &Message, delivery: Delivery) {
        let seen = bound.last_seq;
        bound.last_seq = msg.info().map_or(seen, |i| i.stream_sequence.max(seen));
        let (headers, payload) = (msg.headers.as_ref(), &msg.payload);
        let metrics = &self.ctx.metrics;
        let outcome = message::receive(&mut self.synth, headers, payload, self.max_hops, metrics);
        match message::reply(delivery, outcome) {
            // Acked only once the packet is in the synthesis state.
            Reply::Ack => {
                let _ = msg.ack().await;
            }
            Reply::Terminate => {
                let _ = msg.ack_with(AckKind::Term).await;
            }
            Reply::Nothing => {}
        }
    }

    /// A snapshot tick: the local view, a synthesis packet if active and due, and every
    /// [`CONSUMER_INFO_TICKS`] a look at the consumer (standby when another replica is pinned).
    async fn tick(&mut self, mut state: State) -> State {
        let standby = state.is_standby();
        let Some((bound, _)) = state.bound_mut() else {
            return state;
        };
        let at = now();
        let snap = self.synth.snapshot(at);
        let evicted = self.synth.evictions();
        self.evictions = count_evictions(&self.ctx, &self.spec.name, self.evictions, evicted);
        set_view(&self.ctx, &self.spec.name, |v| {
            v.snapshot = snap.clone();
            v.at = at;
        });
        if let Some(s) = snap.filter(|_| !standby) {
            self.publish_if_due(&mut bound.last_published, s).await;
        }
        bound.ticks += 1;
        if !bound.ticks.is_multiple_of(CONSUMER_INFO_TICKS) || !self.look_at_consumer(bound).await {
            return state;
        }
        if standby {
            return state;
        }
        match self.follower(bound.last_seq).await {
            Some(follower) => self.go(state, Event::PinnedElsewhere(follower)),
            None => state,
        }
    }

    /// Publishes the snapshot's synthesis packet if it is due.
    async fn publish_if_due(&self, last: &mut Option<(Instant, Snapshot)>, s: Snapshot) {
        if !publish::due(last.as_ref(), self.publish_every, &s) {
            return;
        }
        let Some((subject, body, meta)) =
            synthesis_packet(&self.ctx.config, &self.spec.address, &s)
        else {
            return;
        };
        let entry = Entry::new(subject, &body, &meta);
        if self.ctx.depositor.send(entry).await.is_ok() {
            self.ctx.metrics.synthesis_out.inc();
        }
        *last = Some((Instant::now(), s));
    }

    /// Reads the consumer info: sets the lag; whether another replica is pinned.
    async fn look_at_consumer(&self, bound: &mut Bound) -> bool {
        let Ok(info) = bound.consumer.info().await else {
            return false;
        };
        self.lag
            .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
        let group = info
            .priority_groups
            .iter()
            .find(|g| g.group == PRIORITY_GROUP);
        let pinned = group.and_then(|g| g.pinned_client_id.as_deref());
        pinned_elsewhere(pinned, bound.my_pin.as_deref())
    }

    /// The standby follower: an ordered consumer from after the last packet seen.
    async fn follower(&self, last_seq: u64) -> Option<pull::Ordered> {
        let name = &self.spec.name;
        let made = match consumers::start_after(last_seq, &self.synth) {
            Ok(from) => consumers::ordered(&self.ctx, &self.spec, from).await,
            Err(e) => Err(e),
        };
        match made {
            Ok((follower, _)) => {
                tracing::info!(subject = %name, after = last_seq, "another replica is pinned: standby, following the stream");
                Some(follower)
            }
            Err(e) => {
                tracing::debug!(subject = %name, error = %e, "standby follower");
                None
            }
        }
    }
}

impl Bound {
    fn new(b: BoundConsumer) -> Bound {
        Bound {
            consumer: b.consumer,
            messages: b.messages,
            last_seq: b.last_seq,
            my_pin: None,
            tick: tokio::time::interval(SNAPSHOT_EVERY),
            last_published: None,
            ticks: 0,
        }
    }
}

/// The next item of an optional stream; never, when there is none.
async fn next_of<S: futures::Stream + Unpin>(s: Option<&mut S>) -> Option<S::Item> {
    match s {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::pinned_elsewhere;

    #[test]
    fn only_a_pin_that_is_not_this_replicas_means_another_is_pinned() {
        assert!(!pinned_elsewhere(None, None));
        assert!(!pinned_elsewhere(None, Some("mine")));
        assert!(!pinned_elsewhere(Some("mine"), Some("mine")));
        assert!(pinned_elsewhere(Some("theirs"), Some("mine")));
        // Never pinned yet (no durable message seen): any pin is another's.
        assert!(pinned_elsewhere(Some("theirs"), None));
    }
}
