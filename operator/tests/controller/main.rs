//! The real operator binary against the real control plane (kube-apiserver with RBAC and
//! admission, controller manager, scheduler; `qis_testkit::controlplane`) and a real
//! nats-server: each test is one scenario of the operator issue, end to end, in a namespace of
//! its own, the operator running as its ServiceAccount under the ClusterRole the chart renders.
//! One test binary, so one control plane for all of them; one module per feature.

mod cluster;

mod crash_recovery;
mod deletion;
mod drift_and_writes;
mod invalid_specs;
mod leader_election;
mod nats_connection;
mod outbox_claims;
mod rbac;
mod sites;
mod swarm_lifecycle;
mod trust;
