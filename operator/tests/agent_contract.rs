//! The operator–agent contract, end to end without a cluster: the Deployment the operator
//! renders for a site is "run" by laying its mounted Secrets out as files under a temporary
//! root (where the container would see them) and feeding its environment to the agent's own
//! configuration loader. What the agent then believes (site, identity, stream, credentials,
//! TLS, data directory, outbox bound, port, user overrides) must be what the operator meant.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, KeyToPath, PodSpec};
use qis_agent::config::{Config, Mode};
use qis_crds::{NatsConnection, NatsCredentials, NatsTls, QisSwarm, QisSwarmSpec, SecretKeyRef};
use qis_operator::sites::Site;
use qis_operator::workload::{self, AGENT_PORT, Defaults, env};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const NAMESPACE: &str = "factory";
const POD: &str = "campus-agent-hall-a-7d9f-x2k4q";

/// The Secrets of the namespace: name → key → contents.
fn secrets() -> BTreeMap<&'static str, BTreeMap<&'static str, &'static str>> {
    BTreeMap::from([
        (
            "nats-user",
            BTreeMap::from([("user", "hall-a\n"), ("pass", " s3cret pass\n")]),
        ),
        (
            "nats-tls",
            BTreeMap::from([
                ("ca.crt", "CA PEM"),
                ("tls.crt", "CERT PEM"),
                ("tls.key", "KEY PEM"),
            ]),
        ),
    ])
}

fn swarm() -> QisSwarm {
    let key = |key: &str| SecretKeyRef {
        name: "nats-user".into(),
        key: key.into(),
    };
    let mut spec = QisSwarmSpec {
        nats: Some(NatsConnection {
            url: Some("nats://nats.edge:4222,nats://nats-2.edge:4222".into()),
            credentials: Some(NatsCredentials {
                creds_file: None,
                nkey_seed: None,
                username: Some(key("user")),
                password: Some(key("pass")),
                token: None,
            }),
            tls: Some(NatsTls {
                secret_name: "nats-tls".into(),
                client_cert: true,
            }),
            jetstream_domain: Some("hub".into()),
        }),
        ..Default::default()
    };
    spec.agent.env = vec![k8s_openapi::api::core::v1::EnvVar {
        name: "QIS_OUTBOX_FSYNC".into(),
        value: Some("always".into()),
        ..Default::default()
    }];
    let mut s = QisSwarm::new("campus", spec);
    s.metadata.namespace = Some(NAMESPACE.into());
    s.metadata.uid = Some("0c6f1e2a-0000-4000-8000-000000000001".into());
    s
}

fn pod_spec(d: &Deployment) -> &PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod template")
}

/// Lays out every Secret and projected volume of `pod` under `root` as the kubelet would
/// (each key, or each listed item, a file in the mount path); returns the container's view of mount paths.
fn mount_secrets(pod: &PodSpec, container: &Container, root: &Path) -> Vec<String> {
    let secrets = secrets();
    let mut mounted = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let dir = root.join(m.mount_path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).expect("mount dir");
        mounted.push(m.mount_path.clone());
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .expect("every mount has its volume");
        // (secret name, items) of a Secret volume, or of each source of a projected one.
        let mut sources: Vec<(String, Option<Vec<KeyToPath>>)> = Vec::new();
        if let Some(secret) = &volume.secret {
            let name = secret.secret_name.clone().expect("a secret name");
            sources.push((name, secret.items.clone()));
        }
        for p in volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
        {
            let secret = p.secret.as_ref().expect("only Secrets are projected");
            sources.push((secret.name.clone(), secret.items.clone()));
        }
        for (name, items) in sources {
            let data = &secrets[name.as_str()];
            match items {
                Some(items) => {
                    for item in items {
                        std::fs::write(dir.join(&item.path), data[item.key.as_str()])
                            .expect("write");
                    }
                }
                None => {
                    for (k, v) in data {
                        std::fs::write(dir.join(k), v).expect("write");
                    }
                }
            }
        }
    }
    mounted
}

/// The container's environment as the agent would read it: downward-API fields resolved, and
/// paths under a mount redirected to where this test laid the mount out.
fn environment(container: &Container, mounted: &[String], root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in container.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.namespace") => NAMESPACE.into(),
                Some("metadata.name") => POD.into(),
                other => panic!("{}: unexpected source {other:?}", e.name),
            },
            (None, None) => String::new(),
        };
        let value = if mounted.iter().any(|m| value.starts_with(m.as_str())) {
            root.join(value.trim_start_matches('/'))
                .display()
                .to_string()
        } else {
            value
        };
        out.insert(e.name.clone(), value);
    }
    out
}

#[test]
fn the_agent_reads_back_the_pod_the_operator_renders() {
    let root = tempfile::tempdir().expect("temp root");
    let site = Site {
        name: "hall-a".into(),
        replicas: 1,
        ..Default::default()
    };
    let defaults = Defaults {
        agent_image: "ghcr.io/qis/agent:test".into(),
        nats_url: "nats://unused:4222".into(),
    };
    let d = workload::deployment(
        &swarm(),
        &site,
        "qis.campus",
        "qis_factory_campus",
        &defaults,
    );
    let pod = pod_spec(&d);
    let container = &pod.containers[0];
    let mounted = mount_secrets(pod, container, root.path());
    let vars = environment(container, &mounted, root.path());
    for name in env::SET_BY_OPERATOR {
        assert!(vars.contains_key(*name), "the operator sets {name}");
    }

    let config = Config::from_env(|k| vars.get(k).cloned()).expect("the agent accepts its pod");

    let under = |p: &str| -> PathBuf { root.path().join(p.trim_start_matches('/')) };
    assert_eq!(config.agent_id, POD);
    assert_eq!(config.site, "hall-a");
    assert_eq!(config.prefix, "qis.campus");
    assert_eq!(config.stream, "qis_factory_campus");
    assert!(!config.manage_jetstream, "the operator owns the stream");
    assert_eq!(
        config.mode,
        Mode::Cluster {
            namespace: NAMESPACE.into(),
            swarm: "campus".into()
        }
    );
    let nats = &config.nats;
    assert_eq!(nats.url, "nats://nats.edge:4222,nats://nats-2.edge:4222");
    assert_eq!(nats.jetstream_domain.as_deref(), Some("hub"));
    assert_eq!(nats.user.as_deref(), Some("hall-a"));
    let password = nats.password_file.as_ref().expect("the password file");
    assert_eq!(
        std::fs::read_to_string(password).expect("readable"),
        " s3cret pass\n"
    );
    assert!(nats.creds_file.is_none() && nats.token_file.is_none() && nats.nkey_file.is_none());
    let tls = |f: &Option<PathBuf>| {
        std::fs::read_to_string(f.as_ref().expect("tls file")).expect("readable")
    };
    assert_eq!(tls(&nats.ca_file), "CA PEM");
    assert_eq!(tls(&nats.cert_file), "CERT PEM");
    assert_eq!(tls(&nats.key_file), "KEY PEM");
    assert_eq!(config.data_dir, under(qis_contract::paths::DATA_DIR));
    assert_eq!(
        config.outbox.max_bytes.map(|b| b.to_string()).as_deref(),
        vars.get(env::OUTBOX_MAX_BYTES).map(String::as_str),
        "the outbox bound the operator derived from the data volume"
    );
    assert_eq!(
        config.outbox.fsync,
        qis_agent::outbox::Fsync::Always,
        "spec.agent.env reaches the agent"
    );
    let port = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http"))
        .expect("the http port");
    assert_eq!(port.container_port, AGENT_PORT);
    assert_eq!(i32::from(config.listen.port()), AGENT_PORT);
}
