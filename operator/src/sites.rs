//! The sites of a swarm (pure): listed by hand, discovered from a node label, or the single
//! `default` site.

use crate::validate::is_dns_label;
use k8s_openapi::api::core::v1::{Affinity, Node, Toleration};
use qis_crds::QisSwarmSpec;
use qis_crds::constants::DEFAULT_SITE;
use std::collections::{BTreeMap, BTreeSet};

/// One site: one agent Deployment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Site {
    pub name: String,
    pub replicas: i32,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    pub affinity: Option<Affinity>,
    /// Found through the node label (not listed in the spec).
    pub discovered: bool,
}

/// The sites of a swarm and the node-label values that could not name a site.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sites {
    pub sites: Vec<Site>,
    /// Label values that are not DNS labels (reported, not used).
    pub skipped: Vec<String>,
}

/// Sites listed in the spec, then those discovered on `nodes` (a listed site of the same name
/// wins), sorted by name; with neither, the `default` site.
pub fn resolve(spec: &QisSwarmSpec, nodes: &[Node]) -> Sites {
    let mut by_name: BTreeMap<String, Site> = BTreeMap::new();
    let mut skipped = BTreeSet::new();
    if let Some(d) = &spec.site_discovery {
        for value in nodes
            .iter()
            .filter_map(|n| n.metadata.labels.as_ref()?.get(&d.node_label))
        {
            if !is_dns_label(value) {
                skipped.insert(value.clone());
                continue;
            }
            by_name.entry(value.clone()).or_insert_with(|| Site {
                name: value.clone(),
                replicas: d.replicas,
                node_selector: BTreeMap::from([(d.node_label.clone(), value.clone())]),
                tolerations: d.tolerations.clone(),
                affinity: None,
                discovered: true,
            });
        }
    }
    for s in &spec.sites {
        by_name.insert(
            s.name.clone(),
            Site {
                name: s.name.clone(),
                replicas: s.replicas,
                node_selector: s.node_selector.clone(),
                tolerations: s.tolerations.clone(),
                affinity: s.affinity.clone(),
                discovered: false,
            },
        );
    }
    if by_name.is_empty() && spec.site_discovery.is_none() {
        by_name.insert(
            DEFAULT_SITE.to_owned(),
            Site {
                name: DEFAULT_SITE.to_owned(),
                replicas: 1,
                ..Default::default()
            },
        );
    }
    Sites {
        sites: by_name.into_values().collect(),
        skipped: skipped.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use qis_crds::{SiteDiscovery, SiteSpec};

    fn node(name: &str, site: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: site.map(|s| BTreeMap::from([("qis.dev/site".to_owned(), s.to_owned())])),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn discovery() -> Option<SiteDiscovery> {
        Some(SiteDiscovery {
            node_label: "qis.dev/site".into(),
            replicas: 2,
            tolerations: vec![],
        })
    }

    #[test]
    fn default_site_when_nothing_is_said() {
        let s = resolve(&QisSwarmSpec::default(), &[]);
        assert_eq!(
            s.sites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["default"]
        );
    }

    #[test]
    fn discovery_gives_one_site_per_label_value() {
        let spec = QisSwarmSpec {
            site_discovery: discovery(),
            ..Default::default()
        };
        let nodes = [
            node("n1", Some("hall-b")),
            node("n2", Some("hall-a")),
            node("n3", Some("hall-a")),
            node("n4", None),
            node("n5", Some("Bad_Value")),
        ];
        let s = resolve(&spec, &nodes);
        assert_eq!(
            s.sites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["hall-a", "hall-b"]
        );
        assert_eq!(
            s.sites[0]
                .node_selector
                .get("qis.dev/site")
                .map(String::as_str),
            Some("hall-a")
        );
        assert_eq!(s.sites[0].replicas, 2);
        assert_eq!(s.skipped, ["Bad_Value"]);
        assert!(
            resolve(&spec, &[]).sites.is_empty(),
            "discovery with no labelled nodes runs no site"
        );
    }

    #[test]
    fn listed_sites_win_over_discovered() {
        let spec = QisSwarmSpec {
            site_discovery: discovery(),
            sites: vec![SiteSpec {
                name: "hall-a".into(),
                replicas: 3,
                ..Default::default()
            }],
            ..Default::default()
        };
        let s = resolve(
            &spec,
            &[node("n1", Some("hall-a")), node("n2", Some("hall-c"))],
        );
        assert_eq!(s.sites.len(), 2);
        assert_eq!((s.sites[0].replicas, s.sites[0].discovered), (3, false));
        assert!(s.sites[1].discovered);
    }
}
