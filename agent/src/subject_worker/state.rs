//! The states of a subject worker and the transitions between them, free of NATS so they can
//! be tested on their own. The worker (`subject_worker::worker`) holds the NATS handles in the
//! states' payloads (`B`: the bound durable consumer, `F`: the standby follower) and turns
//! what it sees into [`Event`]s.
//!
//! - `Binding`: rebuilding the window and binding the site's durable consumer; a failure
//!   waits `retry` and tries again with the wait doubled (50 ms up to 2 s).
//! - `Active`: bound; messages come from the durable consumer (acked), and this replica
//!   publishes synthesis packets.
//! - `Standby`: bound, but another replica of the site is pinned: the subject is followed with
//!   an ordered consumer (not acked) and nothing is published. A durable message means this
//!   replica was pinned: active again.
//! - `Stopped`: the subject changed or went, or the agent is shutting down.

use std::time::Duration;

/// The first wait after a failed bind (a standalone agent's stream appears within ms).
pub const FIRST_RETRY: Duration = Duration::from_millis(50);
/// The longest wait between two binds.
pub const MAX_RETRY: Duration = Duration::from_secs(2);

/// Where a subject worker is.
#[derive(Debug, PartialEq)]
pub enum WorkerState<B, F> {
    Binding { retry: Duration },
    Active { bound: B },
    Standby { bound: B, follower: F },
    Stopped,
}

/// What happened to a worker.
#[derive(Debug, PartialEq)]
pub enum Event<B, F> {
    /// The stop signal turned (the subject changed or went, or shutdown).
    Stop,
    /// The window is rebuilt and the durable consumer bound.
    Bound(B),
    /// Binding failed and its wait is over.
    BindFailed,
    /// A message came from the durable consumer: this replica is the site's pinned client.
    Pinned,
    /// The consumer info names another replica pinned, and a follower was made.
    PinnedElsewhere(F),
    /// The standby follower ended (it is made again at the next look at the consumer).
    FollowerEnded,
    /// The durable consumer's message stream ended (consumer deleted, connection gone).
    DurableEnded,
}

impl<B, F> WorkerState<B, F> {
    /// A worker that is starting.
    pub fn start() -> Self {
        WorkerState::Binding { retry: FIRST_RETRY }
    }

    /// The state after `event`; an event that means nothing in a state leaves it as it is.
    pub fn on(self, event: Event<B, F>) -> Self {
        use WorkerState::*;
        match (self, event) {
            (_, Event::Stop) => Stopped,
            (Stopped, _) => Stopped,
            (Binding { .. }, Event::Bound(bound)) => Active { bound },
            (Binding { retry }, Event::BindFailed) => Binding {
                retry: (retry * 2).min(MAX_RETRY),
            },
            (Active { bound }, Event::PinnedElsewhere(follower)) => Standby { bound, follower },
            (Standby { bound, .. }, Event::Pinned | Event::FollowerEnded) => Active { bound },
            (Active { .. } | Standby { .. }, Event::DurableEnded) => Binding { retry: FIRST_RETRY },
            (state, _) => state,
        }
    }

    /// The bound consumer and the follower of a bound state.
    pub fn bound_mut(&mut self) -> Option<(&mut B, Option<&mut F>)> {
        match self {
            WorkerState::Active { bound } => Some((bound, None)),
            WorkerState::Standby { bound, follower } => Some((bound, Some(follower))),
            WorkerState::Binding { .. } | WorkerState::Stopped => None,
        }
    }

    pub fn is_standby(&self) -> bool {
        matches!(self, WorkerState::Standby { .. })
    }

    /// What the local view shows of this state: one answer per state, so the view cannot
    /// say standby once the worker is active again, whatever event made it so.
    pub fn shown(&self) -> Shown {
        Shown {
            bound: matches!(
                self,
                WorkerState::Active { .. } | WorkerState::Standby { .. }
            ),
            standby: self.is_standby(),
        }
    }
}

/// The transition `state` → `state.on(event)`, with `view` made to show the state reached
/// (derived from the state, not from the event, so no transition can leave it stale).
pub fn follow<B, F>(
    view: &mut Shown,
    state: WorkerState<B, F>,
    event: Event<B, F>,
) -> WorkerState<B, F> {
    let next = state.on(event);
    *view = next.shown();
    next
}

/// The part of a subject's local view that follows from the worker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shown {
    /// The durable consumer is bound (active or standby).
    pub bound: bool,
    /// Another replica is pinned: this one follows the stream.
    pub standby: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    type State = WorkerState<&'static str, &'static str>;

    fn bound(s: &'static str) -> State {
        State::start().on(Event::Bound(s))
    }

    #[test]
    fn a_worker_starts_binding_and_a_bound_consumer_makes_it_active() {
        assert_eq!(State::start(), WorkerState::Binding { retry: FIRST_RETRY });
        assert_eq!(bound("c1"), WorkerState::Active { bound: "c1" });
    }

    #[test]
    fn failed_binds_back_off_doubling_up_to_two_seconds() {
        let mut state = State::start();
        let mut waits = Vec::new();
        for _ in 0..8 {
            state = state.on(Event::BindFailed);
            let WorkerState::Binding { retry } = state else {
                panic!("still binding: {state:?}");
            };
            waits.push(retry.as_millis());
        }
        assert_eq!(waits, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        // A bind after failures starts the next backoff from the beginning.
        let again = state
            .on(Event::Bound("c"))
            .on(Event::DurableEnded)
            .on(Event::BindFailed);
        assert_eq!(
            again,
            WorkerState::Binding {
                retry: Duration::from_millis(100)
            }
        );
    }

    #[test]
    fn another_replica_pinned_puts_an_active_worker_on_standby() {
        let state = bound("c").on(Event::PinnedElsewhere("f"));
        assert_eq!(
            state,
            WorkerState::Standby {
                bound: "c",
                follower: "f"
            }
        );
        assert!(state.is_standby());
        // A second follower is not made while on standby.
        let state = state.on(Event::PinnedElsewhere("g"));
        assert_eq!(
            state,
            WorkerState::Standby {
                bound: "c",
                follower: "f"
            }
        );
    }

    #[test]
    fn a_durable_message_or_an_ended_follower_makes_a_standby_worker_active() {
        let standby = || bound("c").on(Event::PinnedElsewhere("f"));
        assert_eq!(
            standby().on(Event::Pinned),
            WorkerState::Active { bound: "c" }
        );
        assert_eq!(
            standby().on(Event::FollowerEnded),
            WorkerState::Active { bound: "c" }
        );
        assert_eq!(
            bound("c").on(Event::Pinned),
            WorkerState::Active { bound: "c" }
        );
    }

    #[test]
    fn a_standby_worker_whose_follower_ends_is_shown_active() {
        let standby = bound("c").on(Event::PinnedElsewhere("f"));
        let shown_standby = Shown {
            bound: true,
            standby: true,
        };
        assert_eq!(standby.shown(), shown_standby);
        let mut view = shown_standby;
        let active = follow(&mut view, standby, Event::FollowerEnded);
        assert_eq!(active, WorkerState::Active { bound: "c" });
        assert_eq!(view, active.shown());
        assert!(!view.standby, "an active worker is not shown on standby");
    }

    #[test]
    fn every_transition_leaves_the_view_showing_the_new_state() {
        let standby = || bound("c").on(Event::PinnedElsewhere("f"));
        let cases: Vec<(State, Event<&'static str, &'static str>)> = vec![
            (State::start(), Event::Bound("c")),
            (State::start(), Event::BindFailed),
            (bound("c"), Event::PinnedElsewhere("f")),
            (bound("c"), Event::DurableEnded),
            (standby(), Event::Pinned),
            (standby(), Event::FollowerEnded),
            (standby(), Event::DurableEnded),
            (standby(), Event::Stop),
        ];
        for (state, event) in cases {
            let mut view = state.shown();
            let next = follow(&mut view, state, event);
            assert_eq!(view, next.shown(), "after reaching {next:?}");
        }
    }

    #[test]
    fn an_ended_durable_stream_sends_a_bound_worker_back_to_binding() {
        let first = WorkerState::Binding { retry: FIRST_RETRY };
        assert_eq!(bound("c").on(Event::DurableEnded), first);
        assert_eq!(
            bound("c")
                .on(Event::PinnedElsewhere("f"))
                .on(Event::DurableEnded),
            first
        );
    }

    #[test]
    fn stop_ends_every_state_for_good() {
        let states = [
            State::start(),
            bound("c"),
            bound("c").on(Event::PinnedElsewhere("f")),
        ];
        for state in states {
            let stopped = state.on(Event::Stop);
            assert_eq!(stopped, WorkerState::Stopped);
            assert_eq!(stopped.on(Event::Bound("c")), WorkerState::Stopped);
        }
    }

    #[test]
    fn events_that_mean_nothing_in_a_state_leave_it() {
        let binding = State::start();
        assert_eq!(binding.on(Event::Pinned), State::start());
        assert_eq!(State::start().on(Event::DurableEnded), State::start());
        assert_eq!(
            bound("c").on(Event::Bound("d")),
            WorkerState::Active { bound: "c" }
        );
        assert_eq!(
            bound("c").on(Event::FollowerEnded),
            WorkerState::Active { bound: "c" }
        );
        assert_eq!(
            bound("c").on(Event::BindFailed),
            WorkerState::Active { bound: "c" }
        );
    }
}
