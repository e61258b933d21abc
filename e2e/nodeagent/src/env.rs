//! A container's environment as the kubelet resolves it: values with `$(VAR)` expansion,
//! downward-API fields, Secret and ConfigMap keys, `envFrom`; then mount paths rewritten to
//! the materialized volume directories.

use crate::Error;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::Client;
use kube::api::Api;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The pod's (and node's) address.
pub(crate) const POD_IP: &str = "127.0.0.1";

/// The value of a downward-API field path of `pod`.
pub(crate) fn field(pod: &Pod, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    // A missing label or annotation is an empty value, as for the kubelet.
    let lookup = |map: &Option<BTreeMap<String, String>>, prefix: &str| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(
            map.as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    let all = |map: &Option<BTreeMap<String, String>>| {
        map.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}\n"))
            .collect::<String>()
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "metadata.labels" => Some(all(&meta.labels)),
        "metadata.annotations" => Some(all(&meta.annotations)),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => Some(
            spec.and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".to_owned()),
        ),
        "status.podIP" | "status.podIPs" | "status.hostIP" | "status.hostIPs" => {
            Some(POD_IP.to_owned())
        }
        p if p.starts_with("metadata.labels['") => lookup(&meta.labels, "metadata.labels['"),
        p if p.starts_with("metadata.annotations['") => {
            lookup(&meta.annotations, "metadata.annotations['")
        }
        _ => None,
    }
}

/// Expands `$(VAR)` with `vars` as Kubernetes does: `$$` is a literal `$`, unknown references
/// stay as they are.
pub(crate) fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Reads Secrets and ConfigMaps of one namespace (once each).
pub(crate) struct Sources {
    secrets: Api<Secret>,
    config_maps: Api<ConfigMap>,
    secret_cache: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    config_map_cache: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

impl Sources {
    pub(crate) fn new(client: &Client, namespace: &str) -> Sources {
        Sources {
            secrets: Api::namespaced(client.clone(), namespace),
            config_maps: Api::namespaced(client.clone(), namespace),
            secret_cache: HashMap::new(),
            config_map_cache: HashMap::new(),
        }
    }

    /// The data of Secret `name`, None when it does not exist.
    pub(crate) async fn secret(
        &mut self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
        if let Some(d) = self.secret_cache.get(name) {
            return Ok(d.clone());
        }
        let data = match self.secrets.get_opt(name).await? {
            Some(s) => {
                let mut data: BTreeMap<String, Vec<u8>> = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                for (k, v) in s.string_data.unwrap_or_default() {
                    data.insert(k, v.into_bytes());
                }
                Some(data)
            }
            None => None,
        };
        self.secret_cache.insert(name.to_owned(), data.clone());
        Ok(data)
    }

    /// The data (and binaryData) of ConfigMap `name`, None when it does not exist.
    pub(crate) async fn config_map(
        &mut self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
        if let Some(d) = self.config_map_cache.get(name) {
            return Ok(d.clone());
        }
        let data = match self.config_maps.get_opt(name).await? {
            Some(c) => {
                let mut data: BTreeMap<String, Vec<u8>> = c
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                for (k, v) in c.binary_data.unwrap_or_default() {
                    data.insert(k, v.0);
                }
                Some(data)
            }
            None => None,
        };
        self.config_map_cache.insert(name.to_owned(), data.clone());
        Ok(data)
    }

    /// One key of a Secret or ConfigMap; None when optional and absent.
    async fn key(
        &mut self,
        kind: &str,
        name: &str,
        key: &str,
        optional: bool,
    ) -> Result<Option<String>, Error> {
        let data = if kind == "Secret" {
            self.secret(name).await?
        } else {
            self.config_map(name).await?
        };
        match data.as_ref().and_then(|d| d.get(key)) {
            Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
            None if optional => Ok(None),
            None => Err(Error::Invalid(format!(
                "{kind} {name} has no key {key:?} (or does not exist)"
            ))),
        }
    }
}

/// The environment of `container`, in order (later entries win).
pub(crate) async fn resolve(
    pod: &Pod,
    container: &Container,
    sources: &mut Sources,
) -> Result<Vec<(String, String)>, Error> {
    let mut out: Vec<(String, String)> = Vec::new();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, optional, what) = if let Some(s) = &from.secret_ref {
            (
                sources.secret(&s.name).await?,
                s.optional.unwrap_or(false),
                format!("Secret {}", s.name),
            )
        } else if let Some(c) = &from.config_map_ref {
            (
                sources.config_map(&c.name).await?,
                c.optional.unwrap_or(false),
                format!("ConfigMap {}", c.name),
            )
        } else {
            continue;
        };
        match data {
            Some(d) => {
                for (k, v) in d {
                    out.push((
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v).into_owned(),
                    ));
                }
            }
            None if optional => {}
            None => return Err(Error::Invalid(format!("envFrom: {what} not found"))),
        }
    }
    for e in container.env.iter().flatten() {
        let value = match &e.value_from {
            None => Some(expand(
                e.value.as_deref().unwrap_or_default(),
                &vars_of(&out),
            )),
            Some(from) => {
                if let Some(f) = &from.field_ref {
                    Some(field(pod, &f.field_path).ok_or_else(|| {
                        Error::Invalid(format!("unsupported fieldPath {}", f.field_path))
                    })?)
                } else if let Some(s) = &from.secret_key_ref {
                    sources
                        .key("Secret", &s.name, &s.key, s.optional.unwrap_or(false))
                        .await?
                } else if let Some(c) = &from.config_map_key_ref {
                    sources
                        .key("ConfigMap", &c.name, &c.key, c.optional.unwrap_or(false))
                        .await?
                } else {
                    tracing::warn!(name = e.name, "unsupported valueFrom (resourceFieldRef?)");
                    None
                }
            }
        };
        if let Some(v) = value {
            out.push((e.name.clone(), v));
        }
    }
    Ok(out)
}

fn vars_of(env: &[(String, String)]) -> HashMap<String, String> {
    env.iter().cloned().collect()
}

/// Mount path → directory on this machine, longest mount path first.
#[derive(Debug, Clone, Default)]
pub(crate) struct Mounts(Vec<(String, PathBuf)>);

impl Mounts {
    /// The mounts of `container`, given where each volume was materialized.
    pub(crate) fn of(container: &Container, volumes: &BTreeMap<String, PathBuf>) -> Mounts {
        let mut mounts: Vec<(String, PathBuf)> = container
            .volume_mounts
            .iter()
            .flatten()
            .filter_map(|m| {
                let dir = volumes.get(&m.name)?;
                let dir = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                    Some(sub) => dir.join(sub),
                    None => dir.clone(),
                };
                Some((m.mount_path.trim_end_matches('/').to_owned(), dir))
            })
            .filter(|(p, _)| !p.is_empty())
            .collect();
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Mounts(mounts)
    }

    /// `value` with a leading mount path replaced by its directory.
    pub(crate) fn rewrite(&self, value: &str) -> String {
        for (path, dir) in &self.0 {
            if value == path {
                return dir.display().to_string();
            }
            if let Some(rest) = value.strip_prefix(path.as_str())
                && let Some(rest) = rest.strip_prefix('/')
            {
                return Path::new(dir).join(rest).display().to_string();
            }
        }
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let vars: HashMap<String, String> = [("A".to_owned(), "x".to_owned())].into();
        assert_eq!(expand("$(A)/$(B)/$$(A)/$", &vars), "x/$(B)/$(A)/$");
        assert_eq!(expand("a$(A", &vars), "a$(A");
    }

    #[test]
    fn mount_paths_are_rewritten_longest_first() {
        let c = Container {
            volume_mounts: Some(vec![
                k8s_openapi::api::core::v1::VolumeMount {
                    name: "a".into(),
                    mount_path: "/etc/qis".into(),
                    ..Default::default()
                },
                k8s_openapi::api::core::v1::VolumeMount {
                    name: "b".into(),
                    mount_path: "/etc/qis/nats/".into(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let vols = BTreeMap::from([
            ("a".to_owned(), PathBuf::from("/w/a")),
            ("b".to_owned(), PathBuf::from("/w/b")),
        ]);
        let m = Mounts::of(&c, &vols);
        assert_eq!(m.rewrite("/etc/qis/nats"), "/w/b");
        assert_eq!(m.rewrite("/etc/qis/nats/creds"), "/w/b/creds");
        assert_eq!(m.rewrite("/etc/qis/x"), "/w/a/x");
        assert_eq!(m.rewrite("/etc/qisx"), "/etc/qisx");
    }
}
