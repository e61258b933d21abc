//! The NATS permissions a swarm's agents need, and nothing more, rendered for a nats-server
//! config (`authorization { users = [...] }`) or for `nsc edit user`.
//!
//! `qis-operator nats-permissions --namespace <ns> --swarm <name>` prints them; the operator
//! does not manage NATS users (accounts belong to whoever runs the NATS server).

use qis_crds::addressing;

/// Subjects a user may publish to and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// What the agents of the swarm with subject prefix `prefix` and stream `stream` need:
/// deposit under the prefix, read the stream and its consumers, pull and ack, create
/// the ephemeral ordered consumer that rebuilds their window, and receive replies on
/// the swarm's inbox prefix only ([`addressing::agent_inbox_prefix`]). They cannot create,
/// change or delete streams, nor create or change durable consumers.
pub fn agent(prefix: &str, stream: &str) -> Permissions {
    let api = "$JS.API";
    Permissions {
        publish: vec![
            format!("{prefix}.>"),
            format!("{api}.STREAM.INFO.{stream}"),
            format!("{api}.CONSUMER.INFO.{stream}.>"),
            // Ephemeral consumers only (the subject names no consumer): an agent cannot
            // create or change the operator's durable consumers.
            format!("{api}.CONSUMER.CREATE.{stream}"),
            format!("{api}.CONSUMER.MSG.NEXT.{stream}.>"),
            format!("$JS.ACK.{stream}.>"),
        ],
        subscribe: vec![format!("{}.>", addressing::agent_inbox_prefix(stream))],
    }
}

impl Permissions {
    /// The `permissions` block of a nats-server config user.
    pub fn nats_conf(&self) -> String {
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "permissions: {{\n  publish: {{ allow: [{}] }}\n  subscribe: {{ allow: [{}] }}\n}}\n",
            list(&self.publish),
            list(&self.subscribe)
        )
    }

    /// `nsc edit user` arguments setting these permissions (for a JWT-based account).
    pub fn nsc_args(&self, user: &str) -> String {
        format!(
            "nsc edit user --name {user} --allow-pub '{}' --allow-sub '{}'\n",
            self.publish.join(","),
            self.subscribe.join(",")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_are_confined_to_their_swarm() {
        let p = agent("qis.campus", "qis_factory_campus");
        for s in p.publish.iter().chain(&p.subscribe) {
            assert!(
                s.starts_with("qis.campus.")
                    || s.contains(".qis_factory_campus")
                    || s.starts_with("_INBOX.qis_factory_campus."),
                "{s} reaches beyond the swarm"
            );
        }
        assert!(!p.publish.iter().any(|s| s.contains("STREAM.CREATE")));
        let conf = p.nats_conf();
        assert!(conf.contains("subscribe: { allow: [\"_INBOX.qis_factory_campus.>\"] }"));
        assert!(
            p.nsc_args("agents")
                .contains("--allow-sub '_INBOX.qis_factory_campus.>'")
        );
    }
}
