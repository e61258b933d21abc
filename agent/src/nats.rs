//! Connecting to NATS with the agent's settings (credentials and TLS from files, as mounted
//! from Secrets in a pod or written on a device).

use crate::config::NatsConfig;
use qis_contract::connect::{self, Auth};

fn read(p: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Connects; keeps reconnecting for ever once connected (an edge link comes and goes). The
/// first connection is retried in the background too, so the agent starts offline.
pub async fn connect(
    c: &NatsConfig,
    name: &str,
    stream: &str,
) -> Result<async_nats::Client, String> {
    let opts = connect::options(name, connect::REQUEST_TIMEOUT)
        .custom_inbox_prefix(qis_crds::addressing::agent_inbox_prefix(stream))
        .retry_on_initial_connect()
        .max_reconnects(None);
    let mut opts = connect::with_auth(opts, &auth(c)?).map_err(|e| e.to_string())?;
    if c.ca_file.is_some() || c.cert_file.is_some() {
        let cert_and_key = c.cert_file.clone().zip(c.key_file.clone());
        opts = connect::with_tls(opts, c.ca_file.clone(), cert_and_key);
    }
    let urls = connect::server_addrs(&c.url).map_err(|e| e.to_string())?;
    opts.connect(urls).await.map_err(|e| e.to_string())
}

/// The credentials the files of `c` hold (the first kind set wins, as in `agent.yaml`'s docs).
fn auth(c: &NatsConfig) -> Result<Auth, String> {
    Ok(if let Some(p) = &c.creds_file {
        Auth::Creds(read(p)?)
    } else if let Some(p) = &c.nkey_file {
        Auth::Nkey(read(p)?)
    } else if let (Some(u), Some(p)) = (&c.user, &c.password_file) {
        Auth::UserPassword(u.clone(), read(p)?.trim_end().to_owned())
    } else if let Some(p) = &c.token_file {
        Auth::Token(read(p)?)
    } else {
        Auth::None
    })
}

/// A JetStream context on `client`, in the configured domain.
pub fn jetstream(client: async_nats::Client, c: &NatsConfig) -> async_nats::jetstream::Context {
    connect::jetstream(
        client,
        c.jetstream_domain.as_deref(),
        connect::REQUEST_TIMEOUT,
    )
}
