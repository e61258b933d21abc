//! The NATS connection settings of a swarm: its spec over the operator's defaults, with
//! credentials and TLS material read from Secrets in the swarm's namespace on every reconcile
//! (so a rotated Secret is picked up at the next resync).

use crate::error::Error;
use crate::nats_connections::{Auth, Settings, Tls};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use qis_crds::{NatsConnection, NatsCredentials, NatsTls, SecretKeyRef};
use std::collections::HashMap;

struct Secrets {
    api: Api<Secret>,
    cache: HashMap<String, Secret>,
}

impl Secrets {
    /// The one way of authenticating `c` names, read from its Secrets.
    async fn auth(&mut self, c: &NatsCredentials) -> Result<Auth, Error> {
        if let Some(r) = &c.creds_file {
            Ok(Auth::Creds(
                self.key(r, "spec.nats.credentials.credsFile").await?,
            ))
        } else if let Some(r) = &c.nkey_seed {
            Ok(Auth::Nkey(
                self.key(r, "spec.nats.credentials.nkeySeed").await?,
            ))
        } else if let (Some(u), Some(p)) = (&c.username, &c.password) {
            Ok(Auth::UserPassword(
                self.key(u, "spec.nats.credentials.username").await?,
                self.key(p, "spec.nats.credentials.password").await?,
            ))
        } else if let Some(r) = &c.token {
            Ok(Auth::Token(
                self.key(r, "spec.nats.credentials.token").await?,
            ))
        } else {
            Err(Error::InvalidSpec {
                field: "spec.nats.credentials".into(),
                message: "set exactly one of credsFile, nkeySeed, username+password, token".into(),
            })
        }
    }

    /// The CA (and the client certificate and key when `t` asks for one) of `t`'s Secret.
    async fn tls(&mut self, t: &NatsTls) -> Result<Tls, Error> {
        use qis_contract::paths::tls::{CA, CERT, KEY};
        let field = "spec.nats.tls.secretName";
        let ca = Some(self.key_of(&t.secret_name, CA, field).await?);
        let cert_and_key = if t.client_cert {
            Some((
                self.key_of(&t.secret_name, CERT, field).await?,
                self.key_of(&t.secret_name, KEY, field).await?,
            ))
        } else {
            None
        };
        Ok(Tls { ca, cert_and_key })
    }

    async fn key(&mut self, r: &SecretKeyRef, field: &str) -> Result<String, Error> {
        self.key_of(&r.name, &r.key, field).await
    }

    async fn key_of(&mut self, name: &str, key: &str, field: &str) -> Result<String, Error> {
        if !self.cache.contains_key(name) {
            let secret = self
                .api
                .get_opt(name)
                .await?
                .ok_or_else(|| Error::MissingSecret {
                    field: field.to_owned(),
                    secret: name.to_owned(),
                    key: None,
                })?;
            self.cache.insert(name.to_owned(), secret);
        }
        let secret = &self.cache[name];
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|s| s.clone().into_bytes())
            })
            .ok_or_else(|| Error::MissingSecret {
                field: field.to_owned(),
                secret: name.to_owned(),
                key: Some(key.to_owned()),
            })?;
        String::from_utf8(bytes).map_err(|_| Error::InvalidSpec {
            field: field.to_owned(),
            message: format!("key {key:?} of Secret {name:?} is not UTF-8 text"),
        })
    }
}

/// Resolves the connection settings of a swarm in `namespace`.
pub async fn resolve(
    client: &Client,
    namespace: &str,
    spec: Option<&NatsConnection>,
    defaults: &Settings,
) -> Result<Settings, Error> {
    let Some(n) = spec else {
        return Ok(defaults.clone());
    };
    let mut secrets = Secrets {
        api: Api::namespaced(client.clone(), namespace),
        cache: HashMap::new(),
    };
    let auth = match &n.credentials {
        Some(c) => secrets.auth(c).await?,
        // A swarm that names its own server and no credentials connects without any.
        None if n.url.is_some() => Auth::None,
        None => defaults.auth.clone(),
    };
    let tls = match &n.tls {
        Some(t) => Some(secrets.tls(t).await?),
        None if n.url.is_some() => None,
        None => defaults.tls.clone(),
    };
    Ok(Settings {
        url: n.url.clone().unwrap_or_else(|| defaults.url.clone()),
        auth,
        tls,
        jetstream_domain: n
            .jetstream_domain
            .clone()
            .or_else(|| defaults.jetstream_domain.clone()),
    })
}
