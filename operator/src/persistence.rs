//! The volume of an agent's outbox (`spec.agent.persistence`), pure: an `emptyDir` (the
//! default) or one PersistentVolumeClaim per site, and what of a claim's change the API server
//! cannot apply.
//!
//! A claim holds one outbox (one append-only log and its delivered mark), so a site with a
//! claim runs one replica (the schema refuses more) and its Deployment is updated by
//! `Recreate`: a rolling update would start the new pod while the old one still writes the
//! outbox (on the same node), or wait for a ReadWriteOnce volume held elsewhere.
//!
//! Ownership follows `deletionPolicy`: with `delete` the swarm owns its claims (the garbage
//! collector removes them with it); with `retain` they are left, like the stream, and a swarm
//! created again with the same name adopts them with their undelivered packets. A removed
//! site's claim goes with its Deployment.

use crate::workload;
use k8s_openapi::api::apps::v1::DeploymentStrategy;
use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Volume, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use qis_crds::{DeletionPolicy, Persistence, PersistenceType, QisSwarm};
use std::collections::BTreeMap;

/// The name of the volume (in the pod) mounted at [`crate::workload::DATA_DIR`].
pub const VOLUME: &str = "data";

/// The swarm's persistence, defaults filled in.
pub fn of(swarm: &QisSwarm) -> Persistence {
    swarm.spec.agent.persistence.clone().unwrap_or_default()
}

/// Whether the swarm's sites keep their outbox in claims.
pub fn uses_claims(swarm: &QisSwarm) -> bool {
    of(swarm).type_ == PersistenceType::PersistentVolumeClaim
}

/// `<swarm>-agent-<site>-data`.
pub fn claim_name(swarm: &str, site: &str) -> String {
    format!("{}-data", workload::deployment_name(swarm, site))
}

/// The agent's outbox byte bound: a quarter of the volume, so the log (at most twice what is
/// pending), a compaction's copy (at most what is pending) and the mark fit.
pub fn outbox_max_bytes(swarm: &QisSwarm) -> u64 {
    of(swarm).size_bytes() / 4
}

/// The pod's data volume of `site`.
pub fn data_volume(swarm: &QisSwarm, site: &str) -> Volume {
    use kube::ResourceExt;
    let p = of(swarm);
    match p.type_ {
        PersistenceType::EmptyDir => Volume {
            name: VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity(p.size().to_owned())),
                ..Default::default()
            }),
            ..Default::default()
        },
        PersistenceType::PersistentVolumeClaim => Volume {
            name: VOLUME.to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&swarm.name_any(), site),
                read_only: None,
            }),
            ..Default::default()
        },
    }
}

/// `Recreate` with a claim; the default (rolling) otherwise.
pub fn strategy(swarm: &QisSwarm) -> Option<DeploymentStrategy> {
    uses_claims(swarm).then(|| DeploymentStrategy {
        type_: Some("Recreate".to_owned()),
        rolling_update: None,
    })
}

/// The claim of `site`, when the swarm uses claims.
pub fn claim(swarm: &QisSwarm, site: &str) -> Option<PersistentVolumeClaim> {
    use kube::ResourceExt;
    let p = of(swarm);
    if p.type_ != PersistenceType::PersistentVolumeClaim {
        return None;
    }
    let mut metadata = workload::meta(swarm, claim_name(&swarm.name_any(), site), Some(site));
    if swarm.spec.deletion_policy == DeletionPolicy::Retain {
        metadata.owner_references = None;
    }
    Some(PersistentVolumeClaim {
        metadata,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: p.storage_class_name.clone(),
            volume_mode: Some("Filesystem".to_owned()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(p.size().to_owned()),
                )])),
                limits: None,
            }),
            ..Default::default()
        }),
        status: None,
    })
}

/// Bytes of a quantity in the binary or decimal suffixes a storage request uses; `None` for
/// anything else (then the API server decides).
pub fn quantity_bytes(q: &str) -> Option<u128> {
    let q = q.trim();
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (n, unit) = q.split_at(split);
    let n: u128 = n.parse().ok()?;
    let mult: u128 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn request(c: &PersistentVolumeClaim) -> Option<&str> {
    c.spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.as_str())
}

/// What of `desired` cannot be applied to the `live` claim in place, said for the user: a
/// different storage class (immutable), a smaller size (claims never shrink). `None` when the
/// change may go to the API server (which still refuses growth where the class does not allow
/// expansion, reported from its answer).
pub fn unsupported_change(
    live: &PersistentVolumeClaim,
    desired: &PersistentVolumeClaim,
) -> Option<String> {
    let name = live.metadata.name.clone().unwrap_or_default();
    let class =
        |c: &PersistentVolumeClaim| c.spec.as_ref().and_then(|s| s.storage_class_name.clone());
    let (live_class, want_class) = (class(live), class(desired));
    // Left out in the spec: the default class the API server filled in, not a change.
    if want_class.is_some() && live_class != want_class {
        return Some(format!(
            "PersistentVolumeClaim {name}: storageClassName is immutable ({} → {}); the claim is \
             kept as it is (delete it to move the outbox, and its undelivered packets, to the new \
             class)",
            live_class.as_deref().unwrap_or("<default>"),
            want_class.as_deref().unwrap_or("<default>"),
        ));
    }
    let (Some(have), Some(want)) = (request(live), request(desired)) else {
        return None;
    };
    match (quantity_bytes(have), quantity_bytes(want)) {
        (Some(h), Some(w)) if w < h => Some(format!(
            "PersistentVolumeClaim {name}: size {want} is below the claim's {have}; a claim never \
             shrinks, so it is kept at {have}"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qis_crds::QisSwarmSpec;

    fn swarm(p: Option<Persistence>, policy: DeletionPolicy) -> QisSwarm {
        let mut spec = QisSwarmSpec::default();
        spec.agent.persistence = p;
        spec.deletion_policy = policy;
        let mut s = QisSwarm::new("plant", spec);
        s.metadata.namespace = Some("factory".into());
        s.metadata.uid = Some("uid-1".into());
        s
    }

    fn pvc(class: Option<&str>, size: &str) -> Persistence {
        Persistence {
            type_: PersistenceType::PersistentVolumeClaim,
            storage_class_name: class.map(str::to_owned),
            size: Some(size.to_owned()),
        }
    }

    #[test]
    fn default_is_todays_empty_dir() {
        let s = swarm(None, DeletionPolicy::Delete);
        let v = data_volume(&s, "a");
        assert_eq!(
            v.empty_dir.and_then(|e| e.size_limit),
            Some(Quantity("64Mi".into()))
        );
        assert!(claim(&s, "a").is_none());
        assert!(strategy(&s).is_none());
        assert_eq!(outbox_max_bytes(&s), 16 << 20);
    }

    #[test]
    fn a_claim_per_site_owned_unless_retained() {
        let s = swarm(Some(pvc(Some("local-path"), "1Gi")), DeletionPolicy::Delete);
        let c = claim(&s, "hall-a").expect("claim");
        assert_eq!(c.metadata.name.as_deref(), Some("plant-agent-hall-a-data"));
        assert_eq!(c.metadata.owner_references.as_ref().map(Vec::len), Some(1));
        let spec = c.spec.as_ref().expect("spec");
        assert_eq!(spec.storage_class_name.as_deref(), Some("local-path"));
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_owned()]));
        assert_eq!(request(&c), Some("1Gi"));
        assert_eq!(
            data_volume(&s, "hall-a")
                .persistent_volume_claim
                .map(|p| p.claim_name),
            Some("plant-agent-hall-a-data".to_owned())
        );
        assert_eq!(
            strategy(&s).and_then(|s| s.type_).as_deref(),
            Some("Recreate")
        );
        assert_eq!(outbox_max_bytes(&s), 256 << 20);
        let kept = swarm(Some(pvc(None, "64Mi")), DeletionPolicy::Retain);
        let c = claim(&kept, "a").expect("claim");
        assert_eq!(
            c.metadata.owner_references, None,
            "retain: left with the stream"
        );
        assert_eq!(c.spec.and_then(|s| s.storage_class_name), None);
    }

    #[test]
    fn class_changes_and_shrinking_are_reported_growth_is_tried() {
        let s = |class, size| {
            claim(&swarm(Some(pvc(class, size)), DeletionPolicy::Delete), "a").expect("claim")
        };
        let live = s(Some("local-path"), "64Mi");
        let moved = unsupported_change(&live, &s(Some("fast"), "64Mi")).expect("class");
        assert!(moved.contains("storageClassName is immutable"), "{moved}");
        let shrunk = unsupported_change(&live, &s(Some("local-path"), "32Mi")).expect("shrink");
        assert!(shrunk.contains("never shrinks"), "{shrunk}");
        assert_eq!(
            unsupported_change(&live, &s(Some("local-path"), "1Gi")),
            None
        );
        assert_eq!(
            unsupported_change(&live, &s(None, "64Mi")),
            None,
            "default class"
        );
        assert_eq!(quantity_bytes("64Mi"), Some(64 << 20));
        assert_eq!(quantity_bytes("1G"), Some(1_000_000_000));
        assert_eq!(quantity_bytes("1.5Gi"), None);
    }
}
