//! The agent's settings: from a YAML file on a bare device (standalone), or from the pod the
//! operator made (environment, with subjects found through the Kubernetes API).

use qis_contract::env;
use qis_contract::paths::{credentials, tls};
use qis_crds::addressing;
use qis_crds::{Addressing, SynthesisSettings};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem, naming the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}: {1}")]
    File(PathBuf, String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("environment variable {0} is not set")]
    MissingEnv(&'static str),
}

/// Longest agent id: with the longest domain, problem class and site, a synthesis packet still
/// fits in 512 bytes (pod names made by a Deployment have at most 63 characters).
pub const MAX_AGENT_ID: usize = 64;

/// Checks the names every agent derives others from, naming the setting (`key` of each).
fn check_identity(
    (agent_key, agent_id): (&str, &str),
    (site_key, site): (&str, &str),
    (prefix_key, prefix): (&str, &str),
    (stream_key, stream): (&str, &str),
) -> Result<(), ConfigError> {
    if agent_id.trim().is_empty()
        || agent_id.len() > MAX_AGENT_ID
        || !agent_id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(invalid(
            agent_key,
            format!("must be 1 to {MAX_AGENT_ID} printable ASCII characters without spaces"),
        ));
    }
    addressing::check_token("site", site).map_err(|e| invalid(site_key, e.to_string()))?;
    addressing::check_prefix(prefix).map_err(|e| invalid(prefix_key, e.to_string()))?;
    // A JetStream stream name: no whitespace, '.', '*', '>' or path separators.
    if stream.is_empty()
        || stream.len() > 255
        || stream
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c))
    {
        return Err(invalid(
            stream_key,
            "must be a stream name (no whitespace, '.', '*', '>', '/', '\\'; at most 255 bytes)",
        ));
    }
    Ok(())
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// How to reach NATS.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// A `.creds` file.
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    /// A file holding an nkey seed.
    #[serde(default)]
    pub nkey_file: Option<PathBuf>,
    /// User name (with `passwordFile`).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A file holding a token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM); makes TLS required.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// JetStream domain.
    #[serde(default)]
    pub jetstream_domain: Option<String>,
}

/// One subject the agent synthesizes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubjectConfig {
    /// Name (a DNS label); the durable consumer is `<name>_<site>`.
    pub name: String,
    pub domain: String,
    /// Left out: the whole domain.
    #[serde(default)]
    pub problem_class: Option<String>,
    #[serde(default)]
    pub addressing: Option<Addressing>,
    #[serde(default)]
    pub synthesis: SynthesisSettings,
}

impl SubjectConfig {
    /// The NATS address of this subject under `prefix`.
    pub fn address(&self, prefix: &str) -> String {
        qis_crds::subject::address_of(
            prefix,
            &self.domain,
            self.problem_class.as_deref(),
            self.addressing.as_ref(),
        )
    }

    fn check(&self, i: usize) -> Result<(), ConfigError> {
        let f = |s: &str| format!("subjects[{i}].{s}");
        let label = self.name.len() <= 63
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.name.starts_with('-')
            && !self.name.ends_with('-');
        if self.name.is_empty() || !label {
            return Err(invalid(&f("name"), "must be a DNS label"));
        }
        addressing::check_domain(&self.domain).map_err(|e| invalid(&f("domain"), e.to_string()))?;
        if let Some(pc) = &self.problem_class {
            addressing::check_token("problemClass", pc)
                .map_err(|e| invalid(&f("problemClass"), e.to_string()))?;
        }
        Ok(())
    }
}

/// A standalone agent's YAML file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    /// This device's identity (pod name in a cluster).
    pub agent_id: String,
    /// The site this device belongs to (one consumer identity per site).
    pub site: String,
    pub nats: NatsConfig,
    /// Subject prefix of the swarm, e.g. `qis.iot`.
    pub subject_prefix: String,
    /// The swarm's stream.
    pub stream: String,
    /// Create the stream and the consumers when they are missing (no operator on a bare
    /// device). Default `true`.
    #[serde(default = "yes")]
    pub manage_jetstream: bool,
    #[serde(default)]
    pub subjects: Vec<SubjectConfig>,
    /// Synthesis defaults of every subject.
    #[serde(default)]
    pub synthesis: SynthesisSettings,
    /// Intake and local API address. Default `127.0.0.1:8080` (loopback: the privacy firewall
    /// is not on the network).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the outbox lives. Default `./qis-data`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Outbox capacity in packets; when full the oldest is dropped. Default 10000.
    #[serde(default = "default_outbox")]
    pub outbox_max: usize,
    /// Limits of the HTTP intake (every field optional).
    #[serde(default)]
    pub intake: IntakeFile,
    /// Outbox byte bound and fsync policy.
    #[serde(default)]
    pub outbox: OutboxFileConfig,
}

/// The `intake` section of `agent.yaml`: what is left out takes its default.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IntakeFile {
    #[serde(default)]
    pub max_connections: Option<Setting>,
    #[serde(default)]
    pub header_timeout: Option<Setting>,
    #[serde(default)]
    pub body_timeout: Option<Setting>,
    #[serde(default)]
    pub body_budget: Option<Setting>,
    #[serde(default)]
    pub queue_wait: Option<Setting>,
}

/// A setting as YAML gives it: a number or a string (checked later, naming the field).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Setting {
    Number(u64),
    Text(String),
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Setting::Number(n) => write!(f, "{n}"),
            Setting::Text(t) => f.write_str(t),
        }
    }
}

/// Limits of the HTTP intake against clients that are slow, many or large (see
/// `docs/agent.md`, "Intake limits").
#[derive(Debug, Clone, PartialEq)]
pub struct IntakeLimits {
    /// Open connections at most; the next one is answered 503 at once and closed.
    pub max_connections: usize,
    /// Time to send a request's headers, from the connection's start or the end of the
    /// previous response (so also how long an idle keep-alive connection is kept).
    pub header_timeout: Duration,
    /// Time to send a request's body, from the end of its headers.
    pub body_timeout: Duration,
    /// Bytes of batch bodies held at once (read, parsed, queued), all requests together.
    pub body_budget: usize,
    /// How long a request waits for room (body budget, deposit queue) before 503 with
    /// `Retry-After`.
    pub queue_wait: Duration,
}

impl Default for IntakeLimits {
    fn default() -> Self {
        IntakeLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            body_budget: 8 * 1024 * 1024,
            queue_wait: Duration::from_secs(1),
        }
    }
}

/// Longest timeout or wait the intake takes (a longer one would all but disable it).
const MAX_INTAKE_WAIT: Duration = Duration::from_secs(3600);
/// Most connections the intake takes (each one is a file descriptor and ~10 KiB).
const MAX_CONNECTIONS: usize = 65_536;

fn intake_count(field: &str, v: &str, min: usize, max: usize) -> Result<usize, ConfigError> {
    let n: usize = v
        .trim()
        .parse()
        .map_err(|e| invalid(field, format!("{v:?}: {e}")))?;
    if n < min || n > max {
        return Err(invalid(field, format!("{n} is not within {min}..={max}")));
    }
    Ok(n)
}

fn intake_wait(field: &str, v: &str, zero: bool) -> Result<Duration, ConfigError> {
    let d =
        qis_crds::duration::parse(v.trim()).map_err(|e| invalid(field, format!("{v:?} {e}")))?;
    if d.is_zero() && !zero {
        return Err(invalid(field, "must be positive"));
    }
    if d > MAX_INTAKE_WAIT {
        return Err(invalid(field, format!("{v:?} is over 1h")));
    }
    Ok(d)
}

impl IntakeLimits {
    /// The limits from five optional settings, each named as the user wrote it (an
    /// `agent.yaml` field or a `QIS_INTAKE_*` variable) in its error.
    pub fn from_settings(
        get: impl Fn(usize) -> Option<String>,
        names: [&str; 5],
    ) -> Result<IntakeLimits, ConfigError> {
        let d = IntakeLimits::default();
        let min_budget = crate::intake::MAX_BATCH_BYTES;
        Ok(IntakeLimits {
            max_connections: match get(0) {
                Some(v) => intake_count(names[0], &v, 1, MAX_CONNECTIONS)?,
                None => d.max_connections,
            },
            header_timeout: match get(1) {
                Some(v) => intake_wait(names[1], &v, false)?,
                None => d.header_timeout,
            },
            body_timeout: match get(2) {
                Some(v) => intake_wait(names[2], &v, false)?,
                None => d.body_timeout,
            },
            body_budget: match get(3) {
                Some(v) => intake_count(names[3], &v, min_budget, 1 << 30)?,
                None => d.body_budget,
            },
            queue_wait: match get(4) {
                Some(v) => intake_wait(names[4], &v, true)?,
                None => d.queue_wait,
            },
        })
    }

    fn from_file(f: &IntakeFile) -> Result<IntakeLimits, ConfigError> {
        let values = [
            &f.max_connections,
            &f.header_timeout,
            &f.body_timeout,
            &f.body_budget,
            &f.queue_wait,
        ];
        Self::from_settings(
            |i| values[i].as_ref().map(ToString::to_string),
            [
                "intake.maxConnections",
                "intake.headerTimeout",
                "intake.bodyTimeout",
                "intake.bodyBudget",
                "intake.queueWait",
            ],
        )
    }

    /// The `QIS_INTAKE_*` variables of an agent pod.
    pub const ENV: [&'static str; 5] = [
        env::INTAKE_MAX_CONNECTIONS,
        env::INTAKE_HEADER_TIMEOUT,
        env::INTAKE_BODY_TIMEOUT,
        env::INTAKE_BODY_BUDGET,
        env::INTAKE_QUEUE_WAIT,
    ];
}

fn yes() -> bool {
    true
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("qis-data")
}
fn default_outbox() -> usize {
    10_000
}

/// Where the agent runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// A bare device: subjects from the file.
    Standalone {
        subjects: Vec<SubjectConfig>,
        defaults: SynthesisSettings,
    },
    /// A pod made by the operator: subjects from the API, status written back.
    Cluster { namespace: String, swarm: String },
}

/// Everything the agent needs to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub agent_id: String,
    pub site: String,
    pub nats: NatsConfig,
    pub prefix: String,
    pub stream: String,
    pub manage_jetstream: bool,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub outbox_max: usize,
    pub intake: IntakeLimits,
    pub outbox: OutboxSettings,
    pub mode: Mode,
    /// Least time between two status writes of one subject.
    pub report_interval: Duration,
}

impl Config {
    /// Reads and checks a standalone YAML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::File(path.to_owned(), e.to_string()))?;
        let f: FileConfig = serde_yaml::from_str(&text)
            .map_err(|e| ConfigError::File(path.to_owned(), e.to_string()))?;
        Self::from_file_config(f)
    }

    pub fn from_file_config(f: FileConfig) -> Result<Config, ConfigError> {
        check_identity(
            ("agentId", &f.agent_id),
            ("site", &f.site),
            ("subjectPrefix", &f.subject_prefix),
            ("stream", &f.stream),
        )?;
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in f.subjects.iter().enumerate() {
            s.check(i)?;
            if !names.insert(s.name.as_str()) {
                return Err(invalid(
                    &format!("subjects[{i}].name"),
                    format!("{:?} is listed twice", s.name),
                ));
            }
        }
        Ok(Config {
            agent_id: f.agent_id,
            site: f.site,
            nats: f.nats,
            prefix: f.subject_prefix,
            stream: f.stream,
            manage_jetstream: f.manage_jetstream,
            listen: f.listen,
            data_dir: f.data_dir,
            outbox_max: f.outbox_max.max(1),
            intake: IntakeLimits::from_file(&f.intake)?,
            outbox: OutboxSettings::parse(
                "outbox",
                f.outbox.max_bytes.as_deref(),
                f.outbox.fsync.as_deref(),
                f.outbox.fsync_interval.as_deref(),
            )?,
            mode: Mode::Standalone {
                subjects: f.subjects,
                defaults: f.synthesis,
            },
            report_interval: Duration::from_secs(5),
        })
    }

    /// Reads the environment the operator gives an agent pod.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let need = |k: &'static str| non_empty_env(&get, k).ok_or(ConfigError::MissingEnv(k));
        let nats = nats_from_env(&get, need(env::NATS_URL)?);
        let listen = listen_from_env(&get)?;
        let (agent_id, site) = (need(env::POD_NAME)?, need(env::SITE)?);
        let (prefix, stream) = (need(env::SUBJECT_PREFIX)?, need(env::STREAM)?);
        check_identity(
            (env::POD_NAME, &agent_id),
            (env::SITE, &site),
            (env::SUBJECT_PREFIX, &prefix),
            (env::STREAM, &stream),
        )?;
        Ok(Config {
            agent_id,
            site,
            nats,
            prefix,
            stream,
            manage_jetstream: false,
            listen,
            data_dir: get(env::DATA_DIR)
                .map(PathBuf::from)
                .unwrap_or_else(default_data_dir),
            outbox_max: outbox_max_from_env(&get)?,
            intake: IntakeLimits::from_settings(
                |i| non_empty_env(&get, IntakeLimits::ENV[i]),
                IntakeLimits::ENV,
            )?,
            outbox: OutboxSettings::parse(
                "QIS_OUTBOX",
                get(env::OUTBOX_MAX_BYTES).as_deref(),
                get(env::OUTBOX_FSYNC).as_deref(),
                get(env::OUTBOX_FSYNC_INTERVAL).as_deref(),
            )?,
            mode: Mode::Cluster {
                namespace: need(env::NAMESPACE)?,
                swarm: need(env::SWARM)?,
            },
            report_interval: report_interval_from_env(&get)?,
        })
    }
}

/// The variable `key`, if set and not empty.
fn non_empty_env(get: &impl Fn(&str) -> Option<String>, key: &str) -> Option<String> {
    get(key).filter(|v| !v.is_empty())
}

/// The NATS connection of a pod: `url`, and the credential and TLS files the operator mounted
/// (each only if its file exists).
fn nats_from_env(get: &impl Fn(&str) -> Option<String>, url: String) -> NatsConfig {
    let dir = get(env::NATS_CREDENTIALS_DIR).map(PathBuf::from);
    let in_dir = |file: &str| dir.as_ref().map(|d| d.join(file)).filter(|p| p.exists());
    let tls = get(env::NATS_TLS_DIR).map(PathBuf::from);
    let in_tls = |file: &str| tls.as_ref().map(|d| d.join(file)).filter(|p| p.exists());
    let user = in_dir(credentials::USERNAME).map(|p| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_owned()
    });
    NatsConfig {
        url,
        creds_file: in_dir(credentials::CREDS),
        nkey_file: in_dir(credentials::NKEY),
        user,
        password_file: in_dir(credentials::PASSWORD),
        token_file: in_dir(credentials::TOKEN),
        ca_file: in_tls(tls::CA),
        cert_file: in_tls(tls::CERT),
        key_file: in_tls(tls::KEY),
        jetstream_domain: non_empty_env(get, env::JETSTREAM_DOMAIN),
    }
}

/// The intake's address (`QIS_LISTEN`), else every interface on the agent's port.
fn listen_from_env(get: &impl Fn(&str) -> Option<String>) -> Result<SocketAddr, ConfigError> {
    match get(env::LISTEN) {
        Some(l) => l.parse().map_err(|e| invalid(env::LISTEN, format!("{e}"))),
        None => Ok(SocketAddr::from((
            [0, 0, 0, 0],
            qis_contract::paths::AGENT_PORT,
        ))),
    }
}

/// The outbox's packet bound, at least 1.
fn outbox_max_from_env(get: &impl Fn(&str) -> Option<String>) -> Result<usize, ConfigError> {
    let Some(v) = get(env::OUTBOX_MAX) else {
        return Ok(default_outbox());
    };
    match v.parse() {
        Ok(0) => Err(invalid(env::OUTBOX_MAX, "must be at least 1")),
        Ok(n) => Ok(n),
        Err(e) => Err(invalid(env::OUTBOX_MAX, format!("{v:?}: {e}"))),
    }
}

/// How often the reporter writes (a positive duration), 5 s if unset.
fn report_interval_from_env(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Duration, ConfigError> {
    let Some(v) = get(env::REPORT_INTERVAL) else {
        return Ok(Duration::from_secs(5));
    };
    match qis_crds::duration::parse(&v) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(invalid(env::REPORT_INTERVAL, "must be positive")),
        Err(e) => Err(invalid(env::REPORT_INTERVAL, format!("{v:?} {e}"))),
    }
}

// ---- Outbox settings: byte bound and fsync policy -------------------------------------------

/// The `outbox` block of a standalone file (`QIS_OUTBOX_MAX_BYTES`, `QIS_OUTBOX_FSYNC`,
/// `QIS_OUTBOX_FSYNC_INTERVAL` in a pod).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboxFileConfig {
    /// Bytes pending at most, e.g. `16Mi` (suffixes `Ki`, `Mi`, `Gi`). Default `16Mi`.
    #[serde(default, deserialize_with = "string_or_number")]
    pub max_bytes: Option<String>,
    /// `always`, `interval` or `never`. Default `interval`.
    #[serde(default)]
    pub fsync: Option<String>,
    /// With `interval`: at most this long between a write and its fsync. Default `1s`.
    #[serde(default)]
    pub fsync_interval: Option<String>,
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        S(String),
        N(u64),
    }
    Ok(Option::<V>::deserialize(d)?.map(|v| match v {
        V::S(s) => s,
        V::N(n) => n.to_string(),
    }))
}

/// The outbox's bounds and fsync policy.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct OutboxSettings {
    pub max_bytes: Option<u64>,
    pub fsync: crate::outbox::Fsync,
}

/// Smallest byte bound: a few packets must fit.
pub const OUTBOX_MIN_BYTES: u64 = 64 * 1024;
/// Longest fsync interval.
pub const OUTBOX_MAX_FSYNC_INTERVAL: Duration = Duration::from_secs(3600);

fn parse_bytes(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, ""),
    };
    let unit = match unit {
        "" => 1u64,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    };
    num.parse::<u64>().ok()?.checked_mul(unit)
}

/// The outbox's byte bound named `key`: none if unset, else a byte count of at least
/// [`OUTBOX_MIN_BYTES`].
fn outbox_max_bytes(key: &str, value: Option<&str>) -> Result<Option<u64>, ConfigError> {
    let Some(v) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    match parse_bytes(v) {
        Some(b) if b >= OUTBOX_MIN_BYTES => Ok(Some(b)),
        Some(_) => Err(invalid(
            key,
            format!("{v:?} is below the least, {OUTBOX_MIN_BYTES} bytes"),
        )),
        None => Err(invalid(
            key,
            format!("{v:?} is not a byte count (e.g. 16Mi)"),
        )),
    }
}

/// The interval fsync policy's period named `key`: 1 s if unset, else above 0 and at most 1 h.
fn fsync_interval(key: &str, value: Option<&str>) -> Result<Duration, ConfigError> {
    let Some(v) = value.filter(|v| !v.is_empty()) else {
        return Ok(Duration::from_secs(1));
    };
    match qis_crds::duration::parse(v) {
        Ok(d) if !d.is_zero() && d <= OUTBOX_MAX_FSYNC_INTERVAL => Ok(d),
        Ok(_) => Err(invalid(
            key,
            format!("{v:?} must be above 0 and at most 1h"),
        )),
        Err(e) => Err(invalid(key, format!("{v:?} {e}"))),
    }
}

/// The fsync policy named `key` (`interval` with `every` if unset).
fn fsync_policy(
    key: &str,
    value: Option<&str>,
    every: Duration,
) -> Result<crate::outbox::Fsync, ConfigError> {
    use crate::outbox::Fsync;
    match value.filter(|v| !v.is_empty()) {
        None | Some("interval") => Ok(Fsync::Interval(every)),
        Some("always") => Ok(Fsync::Always),
        Some("never") => Ok(Fsync::Never),
        Some(v) => Err(invalid(
            key,
            format!("{v:?}: expected always, interval or never"),
        )),
    }
}

impl OutboxSettings {
    /// Checks the settings; `field` names their block (`outbox` in a file, `QIS_OUTBOX` in the
    /// environment).
    pub fn parse(
        field: &str,
        max_bytes: Option<&str>,
        fsync: Option<&str>,
        interval: Option<&str>,
    ) -> Result<OutboxSettings, ConfigError> {
        let name = |file_key: &str, env_key: &str| {
            if field.starts_with("QIS_") {
                format!("{field}_{env_key}")
            } else {
                format!("{field}.{file_key}")
            }
        };
        let max_bytes = outbox_max_bytes(&name("maxBytes", "MAX_BYTES"), max_bytes)?;
        let every = fsync_interval(&name("fsyncInterval", "FSYNC_INTERVAL"), interval)?;
        let fsync = fsync_policy(&name("fsync", "FSYNC"), fsync, every)?;
        Ok(OutboxSettings { max_bytes, fsync })
    }

    /// The outbox's limits with `max_packets`.
    pub fn limits(&self, max_packets: usize) -> crate::outbox::Limits {
        crate::outbox::Limits {
            max_packets,
            max_bytes: self
                .max_bytes
                .unwrap_or(crate::outbox::Limits::DEFAULT_MAX_BYTES),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_file_is_checked() {
        let yaml = "agentId: pump-7\nsite: hall-a\nnats: {url: 'nats://127.0.0.1:4222'}\nsubjectPrefix: qis.iot\nstream: QIS\nsubjects:\n- {name: wear, domain: predictive-maintenance, problemClass: bearing-wear}\n";
        let c = Config::from_file_config(serde_yaml::from_str(yaml).unwrap()).unwrap();
        assert_eq!(c.listen, default_listen(), "loopback by default");
        let Mode::Standalone { subjects, .. } = &c.mode else {
            panic!("standalone")
        };
        assert_eq!(
            subjects[0].address(&c.prefix),
            "qis.iot.predictive-maintenance.bearing-wear"
        );
        let bad = yaml.replace("domain: predictive-maintenance", "domain: 'hvac.>'");
        assert!(Config::from_file_config(serde_yaml::from_str(&bad).unwrap()).is_err());
        let unknown = format!("{yaml}extra: 1\n");
        assert!(
            serde_yaml::from_str::<FileConfig>(&unknown).is_err(),
            "unknown settings are refused"
        );
    }

    /// Found by agent/tests/fuzz_config.rs: each was accepted, then the agent made consumers
    /// and subscriptions of the bad name, or published no synthesis packet at all.
    #[test]
    fn identity_settings_are_refused_naming_the_variable() {
        let base = |k: &str| -> Option<String> {
            Some(
                match k {
                    "QIS_NATS_URL" => "nats://nats:4222",
                    "QIS_POD_NAME" => "plant-agent-a-x1",
                    "QIS_SITE" => "a",
                    "QIS_SUBJECT_PREFIX" => "qis.f.plant",
                    "QIS_STREAM" => "qis_f_plant",
                    "QIS_NAMESPACE" => "f",
                    "QIS_SWARM" => "plant",
                    _ => return None,
                }
                .to_owned(),
            )
        };
        let long = "x".repeat(65_536);
        for (key, value) in [
            ("QIS_STREAM", "a\\b"),
            ("QIS_STREAM", "a.b"),
            ("QIS_SITE", long.as_str()),
            ("QIS_SITE", "a.b"),
            ("QIS_SUBJECT_PREFIX", "qis.>"),
            ("QIS_POD_NAME", long.as_str()),
            ("QIS_POD_NAME", "a b"),
            ("QIS_OUTBOX_MAX", "0"),
        ] {
            let got = Config::from_env(|k| {
                if k == key {
                    Some(value.to_owned())
                } else {
                    base(k)
                }
            });
            match got {
                Err(ConfigError::Invalid { field, .. }) => assert_eq!(field, key, "{value:.20}"),
                other => panic!("{key}={value:.20}: {other:?}"),
            }
        }
        assert!(Config::from_env(base).is_ok());
    }

    #[test]
    fn intake_limits_are_read_and_bad_ones_refused_by_name() {
        let yaml = "agentId: pump-7\nsite: hall-a\nnats: {url: 'nats://127.0.0.1:4222'}\nsubjectPrefix: qis.iot\nstream: QIS\n";
        let c = Config::from_file_config(serde_yaml::from_str(yaml).unwrap()).unwrap();
        assert_eq!(c.intake, IntakeLimits::default());
        let set = format!(
            "{yaml}intake: {{maxConnections: 64, headerTimeout: 3s, bodyTimeout: 1500ms, bodyBudget: 2097152, queueWait: 0}}\n"
        );
        let c = Config::from_file_config(serde_yaml::from_str(&set).unwrap()).unwrap();
        assert_eq!(
            c.intake,
            IntakeLimits {
                max_connections: 64,
                header_timeout: Duration::from_secs(3),
                body_timeout: Duration::from_millis(1500),
                body_budget: 2 * 1024 * 1024,
                queue_wait: Duration::ZERO,
            }
        );
        for (bad, field) in [
            ("maxConnections: 0", "intake.maxConnections"),
            ("maxConnections: lots", "intake.maxConnections"),
            ("headerTimeout: 0", "intake.headerTimeout"),
            ("bodyTimeout: 2h", "intake.bodyTimeout"),
            ("bodyBudget: 1000", "intake.bodyBudget"),
            ("queueWait: soon", "intake.queueWait"),
        ] {
            let f = serde_yaml::from_str(&format!("{yaml}intake: {{{bad}}}\n")).unwrap();
            let e = Config::from_file_config(f).unwrap_err().to_string();
            assert!(e.starts_with(field), "{bad}: {e}");
        }
        let env = |k: &str| match k {
            "QIS_INTAKE_HEADER_TIMEOUT" => Some("-1s".to_owned()),
            _ => None,
        };
        let e = IntakeLimits::from_settings(|i| env(IntakeLimits::ENV[i]), IntakeLimits::ENV)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("QIS_INTAKE_HEADER_TIMEOUT"), "{e}");
    }

    #[test]
    fn cluster_env() {
        let env = |k: &str| -> Option<String> {
            Some(
                match k {
                    "QIS_NATS_URL" => "nats://nats:4222",
                    "QIS_POD_NAME" => "plant-agent-a-x1",
                    "QIS_SITE" => "a",
                    "QIS_SUBJECT_PREFIX" => "qis.f.plant",
                    "QIS_STREAM" => "qis_f_plant",
                    "QIS_NAMESPACE" => "f",
                    "QIS_SWARM" => "plant",
                    _ => return None,
                }
                .to_owned(),
            )
        };
        let c = Config::from_env(env).unwrap();
        assert_eq!(
            c.mode,
            Mode::Cluster {
                namespace: "f".into(),
                swarm: "plant".into()
            }
        );
        assert!(!c.manage_jetstream);
        assert!(matches!(
            Config::from_env(|_| None),
            Err(ConfigError::MissingEnv(_))
        ));
    }

    #[test]
    fn outbox_settings_are_checked_and_named() {
        use crate::outbox::Fsync;
        let ok = OutboxSettings::parse("outbox", Some("16Mi"), Some("always"), None).unwrap();
        assert_eq!(ok.max_bytes, Some(16 << 20));
        assert_eq!(ok.fsync, Fsync::Always);
        let d = OutboxSettings::parse("outbox", None, None, Some("250ms")).unwrap();
        assert_eq!(d.fsync, Fsync::Interval(Duration::from_millis(250)));
        for (bytes, fsync, every, field) in [
            (Some("1Ki"), None, None, "outbox.maxBytes"),
            (Some("16MB"), None, None, "outbox.maxBytes"),
            (None, Some("sometimes"), None, "outbox.fsync"),
            (None, None, Some("0s"), "outbox.fsyncInterval"),
            (None, None, Some("2h"), "outbox.fsyncInterval"),
        ] {
            match OutboxSettings::parse("outbox", bytes, fsync, every) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{bytes:?} {fsync:?} {every:?}: {other:?}"),
            }
        }
        match OutboxSettings::parse("QIS_OUTBOX", None, Some("x"), None) {
            Err(ConfigError::Invalid { field, .. }) => assert_eq!(field, "QIS_OUTBOX_FSYNC"),
            other => panic!("{other:?}"),
        }
        let yaml = "agentId: a\nsite: s\nnats: {url: 'nats://127.0.0.1:4222'}\nsubjectPrefix: qis.iot\nstream: QIS\noutbox: {maxBytes: 1048576, fsync: never}\n";
        let c = Config::from_file_config(serde_yaml::from_str(yaml).unwrap()).unwrap();
        assert_eq!(c.outbox.max_bytes, Some(1 << 20));
        assert_eq!(c.outbox.fsync, Fsync::Never);
    }
}
