//! Apply step of a subject: every desired consumer is created or put back (a bounded number
//! of requests at a time), then the consumers of sites that are gone are deleted. Returns the
//! drift that was reverted.

use super::build::DesiredConsumers;
use super::validate::ValidatedSubject;
use crate::context::Context;
use crate::error::Error;
use crate::jetstream::{self, ConsumerOutcome};
use crate::metrics::KindLabel;
use futures::{StreamExt, TryStreamExt};
use kube::Resource;
use qis_crds::QisSubject;
use qis_crds::constants::reason;

/// Parallel consumer requests per subject.
const CONCURRENCY: usize = 16;

/// Applies `desired` through `js`; returns the reverted drift, one line per consumer.
pub async fn subject(
    v: &ValidatedSubject<'_>,
    ctx: &Context,
    js: Result<async_nats::jetstream::Context, Error>,
    desired: &DesiredConsumers,
) -> Result<Vec<String>, Error> {
    let js = js?;
    let requests = desired.configs.iter().cloned().map(|d| {
        let (js, stream) = (js.clone(), desired.stream.clone());
        async move { jetstream::ensure_consumer(&js, &stream, &d).await }
    });
    let outcomes: Vec<ConsumerOutcome> = futures::stream::iter(requests)
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    let reference = v.subject.object_ref(&());
    for gone in &desired.gone {
        if jetstream::delete_consumer(&js, &desired.stream, &gone.name).await? {
            let note = format!("site {} is gone; deleted consumer {}", gone.site, gone.name);
            ctx.event(&reference, false, "ConsumerDeleted", "DeleteConsumer", note)
                .await;
        }
    }
    let reverted: Vec<String> = outcomes
        .into_iter()
        .filter(|o| !o.reverted.is_empty())
        .map(|o| format!("{}: {}", o.name, o.reverted.join(", ")))
        .collect();
    if !reverted.is_empty() {
        let kind = <QisSubject as crate::reconcile::Kind>::LABEL;
        ctx.metrics
            .drift_reverted
            .get_or_create(&KindLabel { kind })
            .inc();
        let note = format!(
            "consumers differed from the spec and were put back: {}",
            reverted.join("; ")
        );
        ctx.event(&reference, true, reason::DRIFTED, "RevertConsumer", note)
            .await;
    }
    Ok(reverted)
}
