//! Build step of a subject (pure): its address, one durable pull consumer per site of its
//! swarm, and the consumers of sites that are gone (known from the subject's own status, so
//! no listing of the stream's consumers is needed).

use super::dereference::SwarmView;
use super::validate::ValidatedSubject;
use crate::consumer_config;
use async_nats::jetstream::consumer::pull;
use qis_crds::ConsumerStatus;

/// The desired consumers of a subject.
#[derive(Debug)]
pub struct DesiredConsumers {
    pub address: String,
    /// The stream they consume.
    pub stream: String,
    pub configs: Vec<pull::Config>,
    /// One per site, in the order of `configs`.
    pub consumers: Vec<ConsumerStatus>,
    /// Consumers in the old status whose site is gone: to delete.
    pub gone: Vec<ConsumerStatus>,
}

/// The consumers `v` should have on `swarm`.
pub fn subject(v: &ValidatedSubject<'_>, swarm: &SwarmView) -> DesiredConsumers {
    let spec = &v.subject.spec;
    let address = consumer_config::address(&swarm.prefix, spec);
    let configs = swarm
        .sites
        .iter()
        .map(|site| consumer_config::desired(&v.namespace, &v.name, site, &address, spec))
        .collect();
    let consumers = swarm
        .sites
        .iter()
        .map(|site| ConsumerStatus {
            site: site.clone(),
            name: qis_crds::addressing::consumer_name(&v.name, site),
        })
        .collect();
    let gone = v
        .subject
        .status
        .as_ref()
        .map(|s| s.consumers.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| !swarm.sites.contains(&c.site))
        .collect();
    DesiredConsumers {
        address,
        stream: swarm.stream.clone(),
        configs,
        consumers,
        gone,
    }
}
