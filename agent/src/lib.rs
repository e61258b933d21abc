//! `qis-agent`: the edge agent of a QIS swarm.
//!
//! - [`packet`]: the outcome packet, its seed-compatible wire format and headers.
//! - [`synthesis`]: the consensus math, pure and incremental.

pub mod packet;
pub mod synthesis;
