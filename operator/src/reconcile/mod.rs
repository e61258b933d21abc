//! What the swarm and subject reconcilers share: the [`Kind`] each of them implements, the
//! instrumented entry ([`entry`]), the finalizer with its deadline ([`finalize`]) and the
//! status write ([`status_write`]). Each reconciler is a short driver over its own steps
//! (`swarm/` and `subject/`: validate → dereference → build → apply → status).

pub mod entry;
pub mod finalize;
pub mod status_write;

use crate::context::Context;
use crate::error::Error;
use kube::Resource;
use kube::core::NamespaceResourceScope;
use kube::runtime::controller::Action;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::future::Future;

/// A kind this operator reconciles.
pub trait Kind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The `kind` label of the metrics.
    const LABEL: &'static str;
    /// The finalizer that guards what Kubernetes cannot garbage-collect.
    const FINALIZER: &'static str;

    /// Makes the world match the object and reports it in the status.
    fn apply(&self, ctx: &Context) -> impl Future<Output = Result<Action, Error>> + Send;

    /// Takes away what the object made, before the finalizer goes.
    fn cleanup(&self, ctx: &Context) -> impl Future<Output = Result<Action, Error>> + Send;
}
