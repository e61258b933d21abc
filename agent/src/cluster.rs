//! Cluster mode: the agent finds its swarm's subjects through the Kubernetes API and follows
//! their changes without a restart.

use crate::subject_worker::SubjectSpec;
use futures::StreamExt;
use kube::core::DeserializeGuard;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use qis_crds::{QisSubject, QisSwarm, SynthesisSettings};
use tokio::sync::watch;

/// The subjects of a swarm (sorted by name) and the swarm's synthesis defaults.
pub type Subjects = (Vec<SubjectSpec>, SynthesisSettings);

fn spec_of(prefix: &str, s: &QisSubject) -> SubjectSpec {
    SubjectSpec {
        name: s.name_any(),
        domain: s.spec.domain.clone(),
        problem_class: s.spec.problem_class.clone(),
        address: s.spec.address(prefix),
        synthesis: s.spec.synthesis.clone(),
    }
}

/// How long reading the swarm (its synthesis defaults) may take.
const SWARM_READ_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// The swarm's synthesis defaults. A failed read keeps the defaults last read (`last`):
/// replacing them with the built-in ones would restart every subject's worker with settings
/// nobody configured.
async fn read_defaults(
    swarms: &Api<QisSwarm>,
    swarm: &str,
    last: &SynthesisSettings,
) -> SynthesisSettings {
    match tokio::time::timeout(SWARM_READ_DEADLINE, swarms.get_opt(swarm)).await {
        Ok(Ok(s)) => s.map(|s| s.spec.synthesis).unwrap_or_default(),
        Ok(Err(e)) => {
            tracing::warn!(%swarm, error = %e, "cannot read the swarm: keeping its synthesis defaults as last read");
            last.clone()
        }
        Err(_) => {
            tracing::warn!(%swarm, "the API server did not answer in time: keeping the swarm's synthesis defaults as last read");
            last.clone()
        }
    }
}

/// The subjects of the swarm in the store (sorted by name, none being deleted); the ones that
/// cannot be read are logged and left out.
fn subjects_of(
    state: &[std::sync::Arc<DeserializeGuard<QisSubject>>],
    swarm: &str,
    prefix: &str,
) -> Vec<SubjectSpec> {
    for unreadable in state.iter().filter_map(|g| g.0.as_ref().err()) {
        tracing::warn!(
            subject = unreadable.metadata.name.as_deref().unwrap_or_default(),
            error = %unreadable.error,
            "a subject of the namespace cannot be read; serving the others"
        );
    }
    let mut specs: Vec<SubjectSpec> = state
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|s| s.spec.swarm_ref.name == swarm && s.metadata.deletion_timestamp.is_none())
        .map(|s| spec_of(prefix, s))
        .collect();
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    tracing::debug!(
        subjects = specs.len(),
        in_store = state.len(),
        "subjects of the swarm"
    );
    specs
}

/// Watches the swarm's subjects; sends the whole set on every change.
pub fn follow(
    client: Client,
    namespace: String,
    swarm: String,
    prefix: String,
) -> watch::Receiver<Subjects> {
    let (tx, rx) = watch::channel((Vec::new(), SynthesisSettings::default()));
    tokio::spawn(async move {
        // Read through `DeserializeGuard`: one subject of the namespace that does not deserialize
        // (stored under another CRD schema) failed the whole list, and the agent served none.
        let subjects: Api<DeserializeGuard<QisSubject>> =
            Api::namespaced(client.clone(), &namespace);
        let swarms: Api<QisSwarm> = Api::namespaced(client, &namespace);
        let (reader, writer) = reflector::store();
        // Every watcher event, `InitDone` included: the store swaps the initial list in only
        // then, so reading it on the objects alone would see it empty.
        let mut events = reflector(writer, watcher(subjects, watcher::Config::default()))
            .default_backoff()
            .boxed();
        let mut refresh = tokio::time::interval(std::time::Duration::from_secs(30));
        loop {
            tokio::select! {
                e = events.next() => match e {
                    Some(Ok(_)) => {}
                    Some(Err(err)) => { tracing::warn!(error = %err, "subject watch"); continue; }
                    None => return,
                },
                _ = refresh.tick() => {}
            }
            let last = tx.borrow().1.clone();
            let defaults = read_defaults(&swarms, &swarm, &last).await;
            let specs = subjects_of(&reader.state(), &swarm, &prefix);
            tx.send_if_modified(|cur| {
                let changed = cur.0 != specs || cur.1 != defaults;
                if changed {
                    *cur = (specs, defaults);
                }
                changed
            });
        }
    });
    rx
}
