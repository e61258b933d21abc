//! NATS connections of the operator: one per distinct set of connection settings, reused across
//! reconciles and swarms. Settings carry the credential *contents* (read from Secrets on every
//! reconcile), so a rotated Secret yields new settings and a new connection, and the old one is
//! closed once no swarm uses it.
//!
//! No lock is held across a connect: the pool's map is locked only to find or insert the slot
//! of a set of settings, and each slot connects on its own. A swarm whose server accepts and
//! never answers delays only the reconciles that use the same settings, never the others.

use crate::error::{Cause, Error};
use async_nats::jetstream::Context;
use qis_contract::connect;
use qis_contract::paths::tls as tls_file;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::OnceCell;

pub use qis_contract::connect::Auth;

/// TLS material, PEM.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Tls {
    pub ca: Option<String>,
    pub cert_and_key: Option<(String, String)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.ca.is_some())
            .field("client_cert", &self.cert_and_key.is_some())
            .finish()
    }
}

/// Everything that makes two connections different.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Settings {
    pub url: String,
    pub auth: Auth,
    pub tls: Option<Tls>,
    pub jetstream_domain: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL's user-info is a secret as much as `auth` is.
        f.debug_struct("Settings")
            .field("url", &connect::redact_urls(&self.url))
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("jetstream_domain", &self.jetstream_domain)
            .finish()
    }
}

impl Settings {
    fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

/// Shared connections, keyed by settings; each user (a swarm) holds one.
#[derive(Debug)]
pub struct Pool {
    inner: Mutex<PoolInner>,
    timeout: Duration,
    scratch: PathBuf,
}

/// The connection of one set of settings: empty until a connect succeeds; callers with the
/// same settings wait on the one connecting, a failed connect leaves it empty for the next.
type Slot = Arc<OnceCell<async_nats::Client>>;

#[derive(Debug, Default)]
struct PoolInner {
    clients: HashMap<Settings, Slot>,
    users: HashMap<String, Settings>,
}

impl Pool {
    /// `timeout` bounds connecting and every JetStream request; `scratch` is where TLS
    /// material is written for the client library (an emptyDir in the operator's pod).
    pub fn new(timeout: Duration, scratch: PathBuf) -> Arc<Pool> {
        Arc::new(Pool {
            inner: Mutex::new(PoolInner::default()),
            timeout,
            scratch,
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, PoolInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A JetStream context for `user` (e.g. `ns/swarm`) with `settings`.
    pub async fn jetstream(&self, user: &str, settings: &Settings) -> Result<Context, Error> {
        let slot = {
            let mut inner = self.inner();
            if let Some(old) = inner.users.insert(user.to_owned(), settings.clone())
                && old != *settings
                && !inner.users.values().any(|s| *s == old)
            {
                inner.clients.remove(&old);
            }
            inner.clients.entry(settings.clone()).or_default().clone()
        };
        // Outside the lock: connecting may take up to the timeout.
        let client = slot
            .get_or_try_init(|| self.connect(settings))
            .await?
            .clone();
        let mut js = match &settings.jetstream_domain {
            Some(d) => async_nats::jetstream::with_domain(client, d),
            None => async_nats::jetstream::new(client),
        };
        js.set_timeout(self.timeout);
        Ok(js)
    }

    /// Forgets `user`; its connection closes when no other user has the same settings.
    pub async fn release(&self, user: &str) {
        let mut inner = self.inner();
        if let Some(old) = inner.users.remove(user)
            && !inner.users.values().any(|s| *s == old)
        {
            inner.clients.remove(&old);
        }
    }

    /// Open connections (for metrics and tests).
    pub async fn open_connections(&self) -> usize {
        self.inner()
            .clients
            .values()
            .filter(|slot| slot.initialized())
            .count()
    }

    async fn connect(&self, s: &Settings) -> Result<async_nats::Client, Error> {
        let nats = |e: Cause| Error::Nats {
            context: format!("connecting to {}", connect::redact_urls(&s.url)),
            source: e,
        };
        let opts = connect::options("qis-operator", self.timeout);
        let mut opts = connect::with_auth(opts, &s.auth).map_err(|e| Error::InvalidSpec {
            field: "spec.nats.credentials.credsFile".into(),
            message: e.to_string(),
        })?;
        if let Some(tls) = &s.tls {
            let dir = self.scratch.join(format!("{:016x}", s.fingerprint()));
            std::fs::create_dir_all(&dir).map_err(|e| nats(e.into()))?;
            let write = |name: &str, pem: &str| {
                let path = dir.join(name);
                std::fs::write(&path, pem)
                    .map(|()| path)
                    .map_err(|e| nats(e.into()))
            };
            let ca = tls
                .ca
                .as_deref()
                .map(|ca| write(tls_file::CA, ca))
                .transpose()?;
            let cert_and_key = match &tls.cert_and_key {
                Some((cert, key)) => {
                    Some((write(tls_file::CERT, cert)?, write(tls_file::KEY, key)?))
                }
                None => None,
            };
            opts = connect::with_tls(opts, ca, cert_and_key);
        }
        let urls = connect::server_addrs(&s.url).map_err(|e| Error::InvalidSpec {
            field: "spec.nats.url".into(),
            message: e.to_string(),
        })?;
        tokio::time::timeout(self.timeout, opts.connect(urls))
            .await
            .map_err(|_| nats(TimedOut(self.timeout).into()))?
            .map_err(|e| nats(e.into()))
    }
}

/// A connection attempt that got no answer within the operator's NATS timeout.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {0:?}")]
struct TimedOut(Duration);
