//! Connecting to NATS with the agent's settings (credentials and TLS from files, as mounted
//! from Secrets in a pod or written on a device).

use crate::config::NatsConfig;
use std::time::Duration;

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
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .custom_inbox_prefix(qis_crds::addressing::agent_inbox_prefix(stream))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(5)));
    if let Some(p) = &c.creds_file {
        opts = opts
            .credentials(&read(p)?)
            .map_err(|e| format!("{}: {e}", p.display()))?;
    } else if let Some(p) = &c.nkey_file {
        opts = opts.nkey(read(p)?.trim().to_owned());
    } else if let (Some(u), Some(p)) = (&c.user, &c.password_file) {
        opts = opts.user_and_password(u.clone(), read(p)?.trim_end().to_owned());
    } else if let Some(p) = &c.token_file {
        opts = opts.token(read(p)?.trim().to_owned());
    }
    if let Some(ca) = &c.ca_file {
        opts = opts.require_tls(true).add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&c.cert_file, &c.key_file) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    let urls: Vec<async_nats::ServerAddr> = c
        .url
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("nats url {:?}: {e}", c.url))?;
    opts.connect(urls).await.map_err(|e| e.to_string())
}

/// A JetStream context on `client`, in the configured domain.
pub fn jetstream(client: async_nats::Client, c: &NatsConfig) -> async_nats::jetstream::Context {
    let mut js = match &c.jetstream_domain {
        Some(d) => async_nats::jetstream::with_domain(client, d),
        None => async_nats::jetstream::new(client),
    };
    js.set_timeout(Duration::from_secs(5));
    js
}
