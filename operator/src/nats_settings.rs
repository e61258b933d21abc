//! The NATS connection settings of a swarm: its spec over the operator's defaults, with
//! credentials and TLS material read from Secrets in the swarm's namespace on every reconcile
//! (so a rotated Secret is picked up at the next resync).

use crate::error::Error;
use crate::nats_connections::{Auth, Settings, Tls};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use qis_crds::{NatsConnection, SecretKeyRef};
use std::collections::HashMap;

struct Secrets {
    api: Api<Secret>,
    cache: HashMap<String, Secret>,
}

impl Secrets {
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
        Some(c) => {
            if let Some(r) = &c.creds_file {
                Auth::Creds(secrets.key(r, "spec.nats.credentials.credsFile").await?)
            } else if let Some(r) = &c.nkey_seed {
                Auth::Nkey(secrets.key(r, "spec.nats.credentials.nkeySeed").await?)
            } else if let (Some(u), Some(p)) = (&c.username, &c.password) {
                Auth::UserPassword(
                    secrets.key(u, "spec.nats.credentials.username").await?,
                    secrets.key(p, "spec.nats.credentials.password").await?,
                )
            } else if let Some(r) = &c.token {
                Auth::Token(secrets.key(r, "spec.nats.credentials.token").await?)
            } else {
                return Err(Error::InvalidSpec {
                    field: "spec.nats.credentials".into(),
                    message: "set exactly one of credsFile, nkeySeed, username+password, token"
                        .into(),
                });
            }
        }
        // A swarm that names its own server and no credentials connects without any.
        None if n.url.is_some() => Auth::None,
        None => defaults.auth.clone(),
    };
    let tls = match &n.tls {
        Some(t) => {
            let field = "spec.nats.tls.secretName";
            let ca = Some(
                secrets
                    .key_of(&t.secret_name, qis_contract::paths::tls::CA, field)
                    .await?,
            );
            let cert_and_key = if t.client_cert {
                Some((
                    secrets
                        .key_of(&t.secret_name, qis_contract::paths::tls::CERT, field)
                        .await?,
                    secrets
                        .key_of(&t.secret_name, qis_contract::paths::tls::KEY, field)
                        .await?,
                ))
            } else {
                None
            };
            Some(Tls { ca, cert_and_key })
        }
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
