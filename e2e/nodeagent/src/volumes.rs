//! Volumes materialized as files under `<pod dir>/volumes/<name>`: emptyDir, secret,
//! configMap, downwardAPI and projected (secret, configMap, downwardAPI, serviceAccountToken
//! from the TokenRequest API); and the pod's kubeconfig.

use crate::Error;
use crate::env::{Sources, field};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    DownwardAPIVolumeFile, KeyToPath, Pod, ServiceAccount, ServiceAccountTokenProjection,
};
use kube::Client;
use kube::api::{Api, PostParams};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// A projected ServiceAccount token, refreshed at 80 % of its lifetime as the kubelet does.
#[derive(Debug)]
pub(crate) struct Token {
    /// The volume's directory.
    dir: PathBuf,
    projection: ServiceAccountTokenProjection,
    mode: u32,
    pub refresh_at: Instant,
}

impl Token {
    /// The token's file.
    pub(crate) fn file(&self) -> PathBuf {
        self.dir.join(&self.projection.path)
    }
}

/// Where a pod's volumes are.
#[derive(Debug, Default)]
pub(crate) struct Volumes {
    /// Volume name → directory.
    pub dirs: BTreeMap<String, PathBuf>,
    pub tokens: Vec<Token>,
}

/// Writes `data` to `dir/rel` (atomically: a temporary file renamed) with `mode`.
fn write(dir: &Path, rel: &str, data: &[u8], mode: u32) -> Result<PathBuf, Error> {
    let rel_path = Path::new(rel);
    if rel.is_empty()
        || rel_path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(Error::Invalid(format!("invalid volume file path {rel:?}")));
    }
    let path = dir.join(rel_path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
    }
    let tmp = path.with_extension("nodeagent-tmp");
    std::fs::write(&tmp, data).map_err(Error::io(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode | 0o400))
        .map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(Error::io(&path))?;
    Ok(path)
}

fn mode(m: Option<i32>, default: Option<i32>) -> u32 {
    m.or(default)
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(0o644)
        & 0o777
}

/// Writes the keys of a Secret or ConfigMap: `items` if given, else every key.
fn write_keys(
    dir: &Path,
    what: &str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&Vec<KeyToPath>>,
    optional: bool,
    default_mode: Option<i32>,
) -> Result<(), Error> {
    let Some(data) = data else {
        return if optional {
            Ok(())
        } else {
            Err(Error::Invalid(format!("{what} not found")))
        };
    };
    match items {
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => {
                        write(dir, &item.path, v, mode(item.mode, default_mode))?;
                    }
                    None if optional => {}
                    None => {
                        return Err(Error::Invalid(format!("{what} has no key {:?}", item.key)));
                    }
                }
            }
        }
        None => {
            for (k, v) in &data {
                write(dir, k, v, mode(None, default_mode))?;
            }
        }
    }
    Ok(())
}

fn write_downward(
    dir: &Path,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
) -> Result<(), Error> {
    for item in items {
        let Some(f) = &item.field_ref else {
            tracing::warn!(
                path = item.path,
                "downwardAPI resourceFieldRef is not supported"
            );
            continue;
        };
        let value = field(pod, &f.field_path)
            .ok_or_else(|| Error::Invalid(format!("unsupported fieldPath {}", f.field_path)))?;
        write(
            dir,
            &item.path,
            value.as_bytes(),
            mode(item.mode, default_mode),
        )?;
    }
    Ok(())
}

/// Requests a token for the pod's ServiceAccount, bound to the pod, and writes it.
pub(crate) async fn write_token(
    client: &Client,
    pod: &Pod,
    token: &mut Token,
) -> Result<(), Error> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = field(pod, "spec.serviceAccountName").unwrap_or_else(|| "default".to_owned());
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let expiration = token.projection.expiration_seconds.unwrap_or(3600);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: token.projection.audience.iter().cloned().collect(),
            expiration_seconds: Some(expiration),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let issued = api
        .create_token_request(&sa, &PostParams::default(), &request)
        .await?;
    let status = issued
        .status
        .ok_or_else(|| Error::Invalid("TokenRequest without status".to_owned()))?;
    write(
        &token.dir,
        &token.projection.path,
        status.token.as_bytes(),
        token.mode,
    )?;
    let lifetime = (status.expiration_timestamp.0.as_second()
        - k8s_openapi::jiff::Timestamp::now().as_second())
    .max(10);
    let lifetime = u64::try_from(lifetime).unwrap_or(10);
    token.refresh_at = Instant::now() + Duration::from_secs(lifetime * 8 / 10);
    Ok(())
}

/// Materializes every volume of `pod` under `root/volumes`.
pub(crate) async fn materialize(
    client: &Client,
    pod: &Pod,
    root: &Path,
    sources: &mut Sources,
) -> Result<Volumes, Error> {
    let mut out = Volumes::default();
    let spec = pod.spec.as_ref();
    for v in spec.and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
        let dir = root.join("volumes").join(&v.name);
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        if v.empty_dir.is_some() {
            // A directory is all it is.
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            write_keys(
                &dir,
                &format!("Secret {name}"),
                sources.secret(&name).await?,
                s.items.as_ref(),
                s.optional.unwrap_or(false),
                s.default_mode,
            )?;
        } else if let Some(c) = &v.config_map {
            write_keys(
                &dir,
                &format!("ConfigMap {}", c.name),
                sources.config_map(&c.name).await?,
                c.items.as_ref(),
                c.optional.unwrap_or(false),
                c.default_mode,
            )?;
        } else if let Some(d) = &v.downward_api {
            write_downward(
                &dir,
                pod,
                d.items.as_deref().unwrap_or_default(),
                d.default_mode,
            )?;
        } else if let Some(p) = &v.projected {
            for src in p.sources.iter().flatten() {
                if let Some(s) = &src.secret {
                    write_keys(
                        &dir,
                        &format!("Secret {}", s.name),
                        sources.secret(&s.name).await?,
                        s.items.as_ref(),
                        s.optional.unwrap_or(false),
                        p.default_mode,
                    )?;
                } else if let Some(c) = &src.config_map {
                    write_keys(
                        &dir,
                        &format!("ConfigMap {}", c.name),
                        sources.config_map(&c.name).await?,
                        c.items.as_ref(),
                        c.optional.unwrap_or(false),
                        p.default_mode,
                    )?;
                } else if let Some(d) = &src.downward_api {
                    write_downward(
                        &dir,
                        pod,
                        d.items.as_deref().unwrap_or_default(),
                        p.default_mode,
                    )?;
                } else if let Some(t) = &src.service_account_token {
                    let mut token = Token {
                        dir: dir.clone(),
                        projection: t.clone(),
                        mode: mode(None, p.default_mode),
                        refresh_at: Instant::now(),
                    };
                    write_token(client, pod, &mut token).await?;
                    out.tokens.push(token);
                } else {
                    tracing::warn!(volume = v.name, "unsupported projected source, left out");
                }
            }
        } else {
            tracing::warn!(
                volume = v.name,
                "unsupported volume type: an empty directory"
            );
        }
        out.dirs.insert(v.name.clone(), dir);
    }
    Ok(out)
}

/// Writes the pod's kubeconfig (JSON, which is YAML): the API server, the namespace's
/// `kube-root-ca.crt`, and the first projected token as `tokenFile` (anonymous without one).
pub(crate) async fn kubeconfig(
    root: &Path,
    pod: &Pod,
    server: &str,
    volumes: &Volumes,
    sources: &mut Sources,
) -> Result<PathBuf, Error> {
    let ca = sources
        .config_map("kube-root-ca.crt")
        .await?
        .and_then(|d| d.get("ca.crt").cloned())
        .ok_or_else(|| Error::Invalid("ConfigMap kube-root-ca.crt has no ca.crt yet".to_owned()))?;
    let ca_file = write(root, "kube-root-ca.crt", &ca, 0o644)?;
    let user = match volumes.tokens.first() {
        Some(t) => serde_json::json!({"tokenFile": t.file()}),
        None => serde_json::json!({}),
    };
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": {"server": server, "certificate-authority": ca_file}}],
        "users": [{"name": "pod", "user": user}],
        "contexts": [{"name": "pod", "context": {"cluster": "cluster", "user": "pod",
            "namespace": pod.metadata.namespace}}],
        "current-context": "pod",
    });
    let text = serde_json::to_vec_pretty(&config)
        .map_err(|e| Error::Invalid(format!("kubeconfig: {e}")))?;
    write(root, "kubeconfig", &text, 0o600)
}
