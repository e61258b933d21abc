//! Objects whose spec does not even deserialize (applied without the CRD schema, or by an
//! older or newer CRD). They must not break the watch of the others (`DeserializeGuard`); they
//! get `Ready=False, reason InvalidSpec` naming the field that does not parse (read again as
//! JSON and decoded with `serde_path_to_error`: kube's guard keeps only the parser's message),
//! and if they are being deleted, our finalizer is removed (we cannot read what to clean up)
//! with a Warning.

use crate::context::Context;
use crate::error::Error;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::Action;
use qis_crds::constants::{condition, reason};
use serde::de::DeserializeOwned;
use serde_json::json;

/// The path of the first field of `object` that does not deserialize as `K` (e.g.
/// `spec.sites`), and the parser's message there.
pub fn failing_field<K: DeserializeOwned>(object: &serde_json::Value) -> Option<(String, String)> {
    match serde_path_to_error::deserialize::<_, K>(object) {
        Ok(_) => None,
        Err(e) => Some((e.path().to_string(), e.inner().to_string())),
    }
}

/// Reports `invalid` (of kind `K`): drops `finalizer` with a Warning when it is being
/// deleted, otherwise writes `Ready=False` naming the field and returns the `InvalidSpec`.
pub async fn report<K>(
    invalid: &InvalidObject,
    finalizer: &str,
    ctx: &Context,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let meta = &invalid.metadata;
    let (Some(name), Some(ns)) = (meta.name.clone(), meta.namespace.clone()) else {
        return Ok(Action::await_change());
    };
    let ar = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
    if meta.deletion_timestamp.is_some() {
        let reference = ObjectReference {
            api_version: Some(ar.api_version.clone()),
            kind: Some(ar.kind.clone()),
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: meta.uid.clone(),
            ..Default::default()
        };
        abandon(&api, &name, invalid, finalizer, &reference, ctx).await?;
        return Ok(Action::await_change());
    }
    // Read again to name the field; if that fails too, the guard's message stands.
    let named = match api.get(&name).await {
        Ok(obj) => serde_json::to_value(&obj)
            .ok()
            .and_then(|v| failing_field::<K>(&v)),
        Err(_) => None,
    };
    let (field, detail) = named.unwrap_or_else(|| ("spec".into(), invalid.error.clone()));
    let message = format!("the object does not match the schema: {field}: {detail}");
    write_invalid(&api, &name, invalid, &message).await?;
    Err(Error::InvalidSpec { field, message })
}

/// Removes our `finalizer` from the object being deleted (when it still has it), leaving
/// its NATS objects as they are, and says so in a Warning.
async fn abandon(
    api: &Api<DynamicObject>,
    name: &str,
    invalid: &InvalidObject,
    finalizer: &str,
    reference: &ObjectReference,
    ctx: &Context,
) -> Result<(), Error> {
    let finalizers = invalid.metadata.finalizers.clone().unwrap_or_default();
    let Some(i) = finalizers.iter().position(|f| f == finalizer) else {
        return Ok(());
    };
    let patch: json_patch::Patch = serde_json::from_value(json!([
        { "op": "test", "path": format!("/metadata/finalizers/{i}"), "value": finalizer },
        { "op": "remove", "path": format!("/metadata/finalizers/{i}") }
    ]))
    .map_err(|e| Error::Finalizer { source: e.into() })?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await?;
    let note = format!(
        "the object could not be read ({}); its NATS objects were left as they are",
        invalid.error
    );
    ctx.event(reference, true, reason::CLEANUP_ABANDONED, "Delete", note)
        .await;
    Ok(())
}

/// Writes `Ready=False, reason InvalidSpec` with `message` into the object's status.
async fn write_invalid(
    api: &Api<DynamicObject>,
    name: &str,
    invalid: &InvalidObject,
    message: &str,
) -> Result<(), Error> {
    let generation = invalid.metadata.generation;
    let status = json!({ "status": {
        "observedGeneration": generation,
        "conditions": [{
            "type": condition::READY,
            "status": "False",
            "reason": reason::INVALID_SPEC,
            "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
        }]
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use qis_crds::{QisSubject, QisSwarm};

    #[test]
    fn the_field_that_does_not_parse_is_named() {
        let swarm = json!({
            "apiVersion": "qis.dev/v1alpha1", "kind": "QisSwarm",
            "metadata": {"name": "broken", "namespace": "plant"},
            "spec": {"sites": [{"name": "a"}, {"name": "b", "replicas": "three"}]},
        });
        let (field, _) = failing_field::<QisSwarm>(&swarm).expect("refused");
        assert_eq!(field, "spec.sites[1].replicas");
        let subject = json!({
            "apiVersion": "qis.dev/v1alpha1", "kind": "QisSubject",
            "metadata": {"name": "garbled", "namespace": "plant"},
            "spec": {"swarmRef": {"name": "plant"}, "domain": "hvac", "synthesis": {"quorum": "two"}},
        });
        let (field, message) = failing_field::<QisSubject>(&subject).expect("refused");
        assert_eq!(field, "spec.synthesis.quorum");
        assert!(message.contains("two"), "{message}");
        let fine = json!({
            "apiVersion": "qis.dev/v1alpha1", "kind": "QisSubject",
            "metadata": {"name": "fine", "namespace": "plant"},
            "spec": {"swarmRef": {"name": "plant"}, "domain": "hvac"},
        });
        assert_eq!(failing_field::<QisSubject>(&fine), None);
    }
}
