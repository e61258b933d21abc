//! Validate step of a swarm: the spec checks of [`crate::validate::swarm`], and the values
//! they make safe to build from. A [`ValidatedSwarm`] is made only here.

use crate::error::Error;
use kube::ResourceExt;
use qis_crds::QisSwarm;

/// A swarm whose spec passed the checks, with what every later step needs of it.
#[derive(Debug)]
pub struct ValidatedSwarm<'a> {
    pub swarm: &'a QisSwarm,
    pub namespace: String,
    pub name: String,
    /// The subject prefix its agents publish under.
    pub prefix: String,
    /// The node label its sites are discovered by, if the spec asks and nodes may be read.
    pub node_label: Option<String>,
    /// The spec asks for discovery, but this operator may not read Nodes.
    pub discovery_disabled: bool,
}

/// Checks `swarm`; `may_read_nodes` is the operator's `--watch-nodes`.
pub fn swarm(swarm: &QisSwarm, may_read_nodes: bool) -> Result<ValidatedSwarm<'_>, Error> {
    crate::validate::swarm(&swarm.spec)?;
    let namespace = swarm.namespace().unwrap_or_default();
    let name = swarm.name_any();
    let discovery = swarm.spec.site_discovery.as_ref();
    Ok(ValidatedSwarm {
        prefix: crate::stream_config::prefix(&namespace, &name, &swarm.spec),
        node_label: discovery
            .filter(|_| may_read_nodes)
            .map(|d| d.node_label.clone()),
        discovery_disabled: discovery.is_some() && !may_read_nodes,
        swarm,
        namespace,
        name,
    })
}
