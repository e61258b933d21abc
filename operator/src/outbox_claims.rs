//! Applying and pruning the sites' outbox claims (built in [`crate::persistence`]).

use crate::context::Context;
use crate::error::{Error, Refusal};
use crate::{apply, persistence};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Resource, ResourceExt};
use qis_crds::QisSwarm;
use qis_crds::constants::{LABEL_SITE, LABEL_SWARM};

/// Applies the claim of `site` when the swarm uses claims; returns whether it was written. A
/// change the API server cannot make in place (class, shrinking, growth its class does not
/// allow) is `NotSupported`, naming the claim and the field: the claim stays as it is.
pub async fn apply(ctx: &Context, swarm: &QisSwarm, site: &str) -> Result<bool, Error> {
    let Some(desired) = persistence::claim(swarm, site) else {
        return Ok(false);
    };
    let name = desired.name_any();
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &swarm.namespace().unwrap_or_default());
    if let Some(live) = api.get_opt(&name).await?
        && let Some(problem) = persistence::unsupported_change(&live, &desired)
    {
        return Err(Error::NotSupported {
            context: problem,
            source: None,
        });
    }
    match apply::apply(&api, &name, &desired, &ctx.applied).await {
        Ok((_, written)) => Ok(written),
        // Invalid or Forbidden: what the server will not do to a claim (a resize its storage
        // class does not allow, a spec field of an unbound claim), said in its words.
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 422 || e.code == 403 => {
            Err(Error::NotSupported {
                context: format!(
                    "PersistentVolumeClaim {name}: spec.agent.persistence cannot be applied to it"
                ),
                source: Some(
                    Refusal {
                        code: e.code.into(),
                        description: e.message,
                    }
                    .into(),
                ),
            })
        }
        Err(e) => Err(e),
    }
}

/// Deletes the swarm's claims of sites not in `sites` (and all of them when the swarm no
/// longer uses claims); returns the names deleted.
pub async fn prune(
    ctx: &Context,
    swarm: &QisSwarm,
    sites: &[String],
) -> Result<Vec<String>, Error> {
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &swarm.namespace().unwrap_or_default());
    let selector = format!(
        "{LABEL_SWARM}={},app.kubernetes.io/managed-by={}",
        swarm.name_any(),
        qis_crds::constants::MANAGED_BY
    );
    let keep = persistence::uses_claims(swarm);
    let mut deleted = Vec::new();
    for old in api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        let site = old.labels().get(LABEL_SITE).cloned().unwrap_or_default();
        // Only claims this swarm made: the label could be copied onto another object.
        let ours = old.name_any() == persistence::claim_name(&swarm.name_any(), &site);
        let owned_elsewhere = old
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) != swarm.meta().uid.as_ref());
        if ours && !owned_elsewhere && !(keep && sites.contains(&site)) {
            api.delete(&old.name_any(), &DeleteParams::background())
                .await?;
            deleted.push(old.name_any());
        }
    }
    Ok(deleted)
}
