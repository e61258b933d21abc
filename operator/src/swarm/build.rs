//! Build step of a swarm (pure): the objects it should have: its stream, the agents' RBAC and
//! one Deployment per site.

use super::validate::ValidatedSwarm;
use crate::error::Error;
use crate::sites::{self, Sites};
use crate::workload::{self, Defaults};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

/// The desired objects of a swarm.
#[derive(Debug)]
pub struct DesiredSwarm {
    pub stream: async_nats::jetstream::stream::Config,
    /// The agents, or why their sites are not known (the Nodes could not be listed).
    pub agents: Result<Agents, Error>,
}

/// The agents' objects.
#[derive(Debug)]
pub struct Agents {
    /// Name of the ServiceAccount, Role and RoleBinding.
    pub account_name: String,
    pub account: ServiceAccount,
    pub role: Role,
    pub binding: RoleBinding,
    pub sites: Vec<SiteAgents>,
    /// Node-label values that are not DNS labels (reported, not used).
    pub skipped: Vec<String>,
}

/// One site's Deployment.
#[derive(Debug)]
pub struct SiteAgents {
    pub site: String,
    pub replicas: i32,
    pub deployment_name: String,
    pub deployment: Deployment,
}

/// The objects of `v`, its sites resolved on `nodes`.
pub fn swarm(
    v: &ValidatedSwarm<'_>,
    nodes: Result<Vec<Node>, Error>,
    defaults: &Defaults,
) -> DesiredSwarm {
    let stream = crate::stream_config::desired(&v.namespace, &v.name, &v.swarm.spec);
    let agents = nodes.map(|n| agents(v, &n, &stream.name, defaults));
    DesiredSwarm { stream, agents }
}

fn agents(v: &ValidatedSwarm<'_>, nodes: &[Node], stream: &str, defaults: &Defaults) -> Agents {
    let Sites { sites, skipped } = sites::resolve(&v.swarm.spec, nodes);
    let sites = sites
        .iter()
        .map(|site| SiteAgents {
            site: site.name.clone(),
            replicas: site.replicas,
            deployment_name: workload::deployment_name(&v.name, &site.name),
            deployment: workload::deployment(v.swarm, site, &v.prefix, stream, defaults),
        })
        .collect();
    Agents {
        account_name: workload::agent_account_name(&v.name),
        account: workload::service_account(v.swarm),
        role: workload::role(v.swarm),
        binding: workload::role_binding(v.swarm),
        sites,
        skipped,
    }
}
