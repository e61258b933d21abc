//! One holder at a time, on a `coordination.k8s.io/v1` Lease: the operator's leader election
//! (two replicas never both act) and the agents' single reporter per subject (one status
//! writer however many sites run). A holder that has not renewed within the lease duration
//! has lost it; optimistic concurrency (`resourceVersion`) decides races.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use std::time::Duration;

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
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the lease (acquired or renewed).
    Held,
    /// Another identity holds it and has renewed in time.
    HeldByOther(String),
}

impl LeaseLock {
    fn api(&self, client: &Client) -> Api<Lease> {
        Api::namespaced(client.clone(), &self.namespace)
    }

    fn spec(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let ours =
            previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.identity.as_str());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX),
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

    /// Acquires the lease if it is free or expired, renews it if it is ours.
    pub async fn try_once(&self, client: &Client) -> Result<Attempt, kube::Error> {
        let api = self.api(client);
        match api.get_opt(&self.lease).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.lease.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.spec(None)),
                };
                api.create(&PostParams::default(), &lease).await?;
                Ok(Attempt::Held)
            }
            Some(mut lease) => {
                let spec = lease.spec.clone().unwrap_or_default();
                let holder = spec.holder_identity.clone().unwrap_or_default();
                let expired = spec.renew_time.as_ref().is_none_or(|t| {
                    let age = Timestamp::now().duration_since(t.0);
                    let limit = SignedDuration::from_secs(i64::from(
                        spec.lease_duration_seconds.unwrap_or(15),
                    ));
                    age > limit
                });
                if holder.is_empty() || holder == self.identity || expired {
                    lease.spec = Some(self.spec(Some(&spec)));
                    // Carries metadata.resourceVersion: a concurrent writer makes this fail.
                    api.replace(&self.lease, &PostParams::default(), &lease)
                        .await?;
                    Ok(Attempt::Held)
                } else {
                    Ok(Attempt::HeldByOther(holder))
                }
            }
        }
    }

    /// Waits until this process holds the lease.
    pub async fn acquire(&self, client: &Client) {
        loop {
            match self.try_once(client).await {
                Ok(Attempt::Held) => {
                    tracing::info!(lease = %self.lease, identity = %self.identity, "holding the lease");
                    return;
                }
                Ok(Attempt::HeldByOther(holder)) => {
                    tracing::debug!(%holder, "lease held by another replica")
                }
                Err(e) => tracing::debug!(error = %e, "lease attempt failed"),
            }
            tokio::time::sleep(self.renew_every).await;
        }
    }

    /// Renews forever; returns when the lease is lost (another holder, or no renewal within
    /// the lease duration). The caller must stop acting.
    pub async fn keep(&self, client: &Client) {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.renew_every).await;
            match self.try_once(client).await {
                Ok(Attempt::Held) => last_renewed = tokio::time::Instant::now(),
                Ok(Attempt::HeldByOther(holder)) => {
                    tracing::error!(%holder, lease = %self.lease, "lost the lease");
                    return;
                }
                Err(e) if last_renewed.elapsed() > self.lease_duration => {
                    tracing::error!(error = %e, lease = %self.lease, "could not renew the lease in time");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "lease renewal failed; retrying"),
            }
        }
    }
}
