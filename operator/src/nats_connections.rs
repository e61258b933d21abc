//! NATS connections of the operator: one per distinct set of connection settings, reused across
//! reconciles and swarms. Settings carry the credential *contents* (read from Secrets on every
//! reconcile), so a rotated Secret yields new settings and a new connection, and the old one is
//! closed once no swarm uses it.
//!
//! No lock is held across a connect: the pool's map is locked only to find or insert the slot
//! of a set of settings, and each slot connects on its own. A swarm whose server accepts and
//! never answers delays only the reconciles that use the same settings, never the others.

use crate::error::Error;
use async_nats::jetstream::Context;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::OnceCell;

/// How to authenticate.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub enum Auth {
    #[default]
    None,
    /// Contents of a `.creds` file.
    Creds(String),
    /// An nkey seed.
    Nkey(String),
    UserPassword(String, String),
    Token(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.write_str(match self {
            Auth::None => "None",
            Auth::Creds(_) => "Creds(…)",
            Auth::Nkey(_) => "Nkey(…)",
            Auth::UserPassword(..) => "UserPassword(…)",
            Auth::Token(_) => "Token(…)",
        })
    }
}

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
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Settings {
    pub url: String,
    pub auth: Auth,
    pub tls: Option<Tls>,
    pub jetstream_domain: Option<String>,
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
        let nats = |e: &dyn std::fmt::Display| Error::Nats(format!("connecting to {}: {e}", s.url));
        let mut opts = async_nats::ConnectOptions::new()
            .name("qis-operator")
            .connection_timeout(self.timeout)
            .request_timeout(Some(self.timeout));
        opts = match &s.auth {
            Auth::None => opts,
            Auth::Creds(c) => opts.credentials(c).map_err(|e| Error::InvalidSpec {
                field: "spec.nats.credentials.credsFile".into(),
                message: format!("not a valid .creds file: {e}"),
            })?,
            Auth::Nkey(seed) => opts.nkey(seed.trim().to_owned()),
            Auth::UserPassword(u, p) => opts.user_and_password(u.clone(), p.clone()),
            Auth::Token(t) => opts.token(t.trim().to_owned()),
        };
        if let Some(tls) = &s.tls {
            let dir = self.scratch.join(format!("{:016x}", s.fingerprint()));
            std::fs::create_dir_all(&dir).map_err(|e| nats(&e))?;
            opts = opts.require_tls(true);
            if let Some(ca) = &tls.ca {
                let path = dir.join("ca.crt");
                std::fs::write(&path, ca).map_err(|e| nats(&e))?;
                opts = opts.add_root_certificates(path);
            }
            if let Some((cert, key)) = &tls.cert_and_key {
                let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
                std::fs::write(&c, cert).map_err(|e| nats(&e))?;
                std::fs::write(&k, key).map_err(|e| nats(&e))?;
                opts = opts.add_client_certificate(c, k);
            }
        }
        let urls: Vec<async_nats::ServerAddr> = s
            .url
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<_, _>>()
            .map_err(|e| Error::InvalidSpec {
                field: "spec.nats.url".into(),
                message: e.to_string(),
            })?;
        tokio::time::timeout(self.timeout, opts.connect(urls))
            .await
            .map_err(|_| {
                Error::Nats(format!(
                    "connecting to {}: timed out after {:?}",
                    s.url, self.timeout
                ))
            })?
            .map_err(|e| nats(&e))
    }
}
