//! One holder at a time, on a `coordination.k8s.io/v1` Lease: the operator's leader election
//! (two replicas never both act) and the agents' single reporter per swarm (one status writer
//! however many sites run). Optimistic concurrency (`resourceVersion`) decides races.
//!
//! Expiry is judged by this process's monotonic clock, never by comparing another host's
//! `renewTime` with ours: a lease held by another has expired when the record we observe (holder,
//! renew time, transitions) has not changed for its `leaseDurationSeconds` since we first saw it
//! so. A holder whose clock is an hour ahead or behind neither keeps a lease it stopped renewing
//! nor loses one it renews. Every call carries a deadline shorter than the lease
//! ([`LeaseLock::deadline`]): an API server that hangs fails the attempt in time, it does not
//! stall the holder past its lease.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Who competes for which lease.
#[derive(Debug, Clone)]
pub struct LeaseLock {
    pub namespace: String,
    pub lease: String,
    pub identity: String,
    /// A holder that has not renewed for this long has lost the lease.
    pub lease_duration: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// The other holder's record as last observed, and when (our clock) it last changed.
    observed: Arc<Mutex<Option<Observed>>>,
}

#[derive(Debug, Clone, PartialEq)]
struct Record {
    holder: String,
    renew_time: Option<Timestamp>,
    transitions: Option<i32>,
    duration: Duration,
}

#[derive(Debug)]
struct Observed {
    record: Record,
    since: Instant,
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the lease (acquired or renewed).
    Held,
    /// Another identity holds it and has renewed in time.
    HeldByOther(String),
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("the API server did not answer within {0:?}")]
    Deadline(Duration),
}

impl LeaseLock {
    pub fn new(
        namespace: impl Into<String>,
        lease: impl Into<String>,
        identity: impl Into<String>,
        lease_duration: Duration,
        renew_every: Duration,
    ) -> LeaseLock {
        LeaseLock {
            namespace: namespace.into(),
            lease: lease.into(),
            identity: identity.into(),
            lease_duration,
            renew_every,
            observed: Arc::default(),
        }
    }

    /// The deadline of one attempt: a third of the lease (and no longer than the renewal
    /// period), so a holder whose calls hang learns it well before others may take over.
    pub fn deadline(&self) -> Duration {
        (self.lease_duration / 3).min(self.renew_every)
    }

    fn api(&self, client: &Client) -> Api<Lease> {
        Api::namespaced(client.clone(), &self.namespace)
    }

    fn spec(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let ours =
            previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.identity.as_str());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            // Rounded up: others must never wait less than this holder counts on.
            lease_duration_seconds: Some(
                i32::try_from(self.lease_duration.as_secs_f64().ceil().max(1.0) as u64)
                    .unwrap_or(i32::MAX),
            ),
            acquire_time: if ours {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(
                previous.and_then(|p| p.lease_transitions).unwrap_or(0) + i32::from(!ours),
            ),
            ..Default::default()
        }
    }

    /// Whether another holder's `record` has gone unrenewed for its duration, by our clock.
    fn expired(&self, record: Record) -> bool {
        let mut observed = self.observed.lock().unwrap_or_else(PoisonError::into_inner);
        match observed.as_ref() {
            Some(o) if o.record == record => o.since.elapsed() > record.duration,
            _ => {
                *observed = Some(Observed {
                    record,
                    since: Instant::now(),
                });
                false
            }
        }
    }

    /// Acquires the lease if it is free or expired, renews it if it is ours; fails after
    /// [`LeaseLock::deadline`] if the API server does not answer.
    pub async fn try_once(&self, client: &Client) -> Result<Attempt, LeaseError> {
        let deadline = self.deadline();
        tokio::time::timeout(deadline, self.attempt(client))
            .await
            .map_err(|_| LeaseError::Deadline(deadline))?
    }

    async fn attempt(&self, client: &Client) -> Result<Attempt, LeaseError> {
        let api = self.api(client);
        let Some(mut lease) = api.get_opt(&self.lease).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.lease.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None)),
            };
            api.create(&PostParams::default(), &lease).await?;
            return Ok(Attempt::Held);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let free = holder.is_empty() || spec.renew_time.is_none();
        let record = Record {
            holder: holder.clone(),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions,
            duration: Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(0),
            ),
        };
        if holder != self.identity && !free && !self.expired(record) {
            return Ok(Attempt::HeldByOther(holder));
        }
        lease.spec = Some(self.spec(Some(&spec)));
        // Carries metadata.resourceVersion: a concurrent writer makes this fail.
        api.replace(&self.lease, &PostParams::default(), &lease)
            .await?;
        Ok(Attempt::Held)
    }

    /// Gives the lease up if we hold it (others may take it at once), within the deadline.
    pub async fn release(&self, client: &Client) -> Result<(), LeaseError> {
        let deadline = self.deadline();
        let release = async {
            let api = self.api(client);
            let Some(mut lease) = api.get_opt(&self.lease).await? else {
                return Ok(());
            };
            let mut spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.renew_time = None;
            spec.acquire_time = None;
            lease.spec = Some(spec);
            api.replace(&self.lease, &PostParams::default(), &lease)
                .await?;
            tracing::info!(lease = %self.lease, identity = %self.identity, "released the lease");
            Ok(())
        };
        tokio::time::timeout(deadline, release)
            .await
            .map_err(|_| LeaseError::Deadline(deadline))?
    }

    /// Waits until this process holds the lease; returns when the winning attempt was sent
    /// (what [`LeaseLock::keep`] counts the lease from).
    pub async fn acquire(&self, client: &Client) -> Instant {
        loop {
            let sent = Instant::now();
            match self.try_once(client).await {
                Ok(Attempt::Held) => {
                    tracing::info!(lease = %self.lease, identity = %self.identity, "holding the lease");
                    return sent;
                }
                Ok(Attempt::HeldByOther(holder)) => {
                    tracing::debug!(%holder, "lease held by another replica")
                }
                Err(e) => tracing::debug!(error = %e, "lease attempt failed"),
            }
            tokio::time::sleep(self.renew_every).await;
        }
    }

    /// Renews forever, from a hold won by an attempt sent at `held_since`; returns when the
    /// lease is lost (another holder), or as soon as the next renewal could complete only after
    /// others may take over (the lease counted from the send time of the last successful
    /// renewal). The caller must stop acting.
    pub async fn keep(&self, client: &Client, held_since: Instant) {
        let mut last_renewed = held_since;
        loop {
            tokio::time::sleep(self.renew_every).await;
            let sent = Instant::now();
            match self.try_once(client).await {
                Ok(Attempt::Held) => last_renewed = sent,
                Ok(Attempt::HeldByOther(holder)) => {
                    tracing::error!(%holder, lease = %self.lease, "lost the lease");
                    return;
                }
                Err(e)
                    if last_renewed.elapsed() + self.renew_every + self.deadline()
                        >= self.lease_duration =>
                {
                    tracing::error!(error = %e, lease = %self.lease, "could not renew the lease in time");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "lease renewal failed; retrying"),
            }
        }
    }
}
