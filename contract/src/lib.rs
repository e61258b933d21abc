//! The contract between the operator and the agent: everything both sides must build the same
//! way, defined once.
//!
//! | item | module |
//! |---|---|
//! | the JetStream stream of a swarm (and of a standalone agent) | [`stream`] |
//! | the durable consumers of a subject (and of a standalone agent) | [`consumer`] |
//! | the agent container's environment variable names | [`env`] |
//! | where the agent pod's volumes are mounted, and the file names in them | [`paths`] |
//! | synthesis settings with their defaults filled in, and their bounds | [`synthesis`] |
//! | how both connect to NATS (timeouts, reconnects, credentials) | [`connect`] |
//!
//! The operator renders the agent's Deployment from [`env`] and [`paths`]; the agent reads its
//! configuration back through the same names (a round-trip test in `operator/tests` renders a
//! Deployment and feeds it to the agent's loader). A standalone agent, with no operator, makes
//! its stream and consumers with the same builders the operator uses.

pub mod connect;
pub mod consumer;
pub mod env;
pub mod paths;
pub mod stream;
pub mod synthesis;
