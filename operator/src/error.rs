//! Operator errors, each with the category that decides what the controller does next.

use std::time::Duration;

/// What the controller does about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// The spec is wrong: report it and wait for the user to change it.
    InvalidSpec,
    /// The server cannot do this in place: report it and wait for a change.
    NotSupported,
    /// Something else owns what we need: report it and look again later.
    Conflict,
    /// NATS or the API server hiccupped: retry with backoff.
    Transient,
}

/// Any underlying error, kept whole as the [`std::error::Error::source`] of ours.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a server said when it refused a request: its error code and its words. The
/// JetStream API answers with these; so does the API server, whose words we quote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{description}")]
pub struct Refusal {
    pub code: u64,
    pub description: String,
}

/// Why a reconcile waits for something else to happen first.
#[derive(Debug, thiserror::Error)]
pub enum Wait {
    /// The swarm a subject names is in the cache but does not deserialize.
    #[error("swarm {swarm:?} cannot be read: {problem}")]
    SwarmUnreadable { swarm: String, problem: String },
    /// The swarm a subject names has not reported its stream ready.
    #[error("swarm {swarm:?} has no stream ready yet")]
    StreamNotReady { swarm: String },
    /// A consumer's stream does not exist (yet).
    #[error("{what}: the stream does not exist yet")]
    NoStream { what: String },
}

/// An operator error. Its `Display` is the condition message users see, so it carries the
/// immediate cause's words; the cause itself is kept as the `source` for the error chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid spec: {field}: {message}")]
    InvalidSpec { field: String, message: String },
    #[error("not supported in place: {context}{}", colon(.source.as_deref()))]
    NotSupported {
        context: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("conflict: {context}{}", colon(.source.as_ref()))]
    Conflict {
        context: String,
        #[source]
        source: Option<Refusal>,
    },
    #[error(
        "consumer limit reached: {context}: {source}; raise the swarm's spec.stream.maxConsumers \
         (or the account's JetStream consumer limit)"
    )]
    ConsumerLimit {
        context: String,
        #[source]
        source: Refusal,
    },
    #[error("NATS: {context}: {source}")]
    Nats {
        context: String,
        #[source]
        source: Cause,
    },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {source}")]
    Finalizer {
        #[source]
        source: Cause,
    },
    #[error(transparent)]
    Waiting(#[from] Wait),
    /// The swarm a subject names does not exist (yet).
    #[error("swarm {swarm:?} does not exist (yet)")]
    SwarmNotFound { swarm: String },
    #[error("{field}: Secret {secret:?} {}", missing(.key.as_deref()))]
    MissingSecret {
        field: String,
        secret: String,
        /// The key the Secret lacks; `None` when the Secret itself is missing.
        key: Option<String>,
    },
    #[error("the reconcile panicked: {0}")]
    Panicked(String),
}

/// `": cause"`, or nothing without a cause.
fn colon(cause: Option<impl std::fmt::Display>) -> String {
    cause.map(|c| format!(": {c}")).unwrap_or_default()
}

fn missing(key: Option<&str>) -> String {
    match key {
        Some(key) => format!("has no key {key:?}"),
        None => "does not exist".to_owned(),
    }
}

impl Error {
    pub fn category(&self) -> Category {
        match self {
            Error::InvalidSpec { .. } => Category::InvalidSpec,
            Error::NotSupported { .. } => Category::NotSupported,
            Error::Conflict { .. } | Error::ConsumerLimit { .. } => Category::Conflict,
            Error::Nats { .. }
            | Error::Kube(_)
            | Error::Finalizer { .. }
            | Error::Waiting(_)
            | Error::SwarmNotFound { .. }
            | Error::MissingSecret { .. }
            | Error::Panicked(_) => Category::Transient,
        }
    }

    /// The condition reason (and metrics label) this error reports as.
    pub fn reason(&self) -> &'static str {
        use qis_crds::constants::reason;
        match self {
            Error::InvalidSpec { .. } => reason::INVALID_SPEC,
            Error::NotSupported { .. } => reason::NOT_SUPPORTED,
            Error::Conflict { .. } => reason::RESOURCE_CONFLICT,
            Error::ConsumerLimit { .. } => reason::CONSUMER_LIMIT_REACHED,
            Error::Nats { .. } => reason::NATS_UNAVAILABLE,
            Error::Kube(_) | Error::Finalizer { .. } => reason::KUBE_API_ERROR,
            Error::Waiting(_) => reason::PROGRESSING,
            Error::SwarmNotFound { .. } => reason::SWARM_NOT_FOUND,
            Error::MissingSecret { .. } => reason::SECRET_NOT_FOUND,
            Error::Panicked(_) => reason::RECONCILE_PANICKED,
        }
    }

    /// When to look again: never on our own for a spec the user must fix (a change of the
    /// object triggers a reconcile), later for a conflict, soon for a transient error.
    pub fn requeue_after(&self, attempt: u32) -> Option<Duration> {
        match self.category() {
            Category::InvalidSpec | Category::NotSupported => None,
            Category::Conflict => Some(Duration::from_secs(60)),
            Category::Transient => {
                let secs = 1u64 << attempt.min(6);
                Some(Duration::from_secs(secs.min(60)))
            }
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_decide_requeue() {
        let invalid = Error::InvalidSpec {
            field: "spec.x".into(),
            message: "bad".into(),
        };
        assert_eq!(invalid.requeue_after(0), None);
        let storage = Error::NotSupported {
            context: "storage".into(),
            source: None,
        };
        assert_eq!(storage.requeue_after(3), None);
        let conflict = Error::Conflict {
            context: "x".into(),
            source: None,
        };
        assert_eq!(conflict.requeue_after(0), Some(Duration::from_secs(60)));
        let nats = Error::Nats {
            context: "down".into(),
            source: std::io::Error::other("refused").into(),
        };
        assert_eq!(nats.requeue_after(0), Some(Duration::from_secs(1)));
        assert_eq!(nats.requeue_after(3), Some(Duration::from_secs(8)));
        assert_eq!(nats.requeue_after(30), Some(Duration::from_secs(60)));
    }

    #[test]
    fn messages_carry_the_cause_and_the_chain_keeps_it() {
        use std::error::Error as _;
        let refused = Refusal {
            code: 10065,
            description: "subjects overlap with an existing stream".into(),
        };
        let conflict = Error::Conflict {
            context: "stream S".into(),
            source: Some(refused.clone()),
        };
        assert_eq!(
            conflict.to_string(),
            "conflict: stream S: subjects overlap with an existing stream"
        );
        let cause = conflict.source().expect("a source");
        assert_eq!(cause.downcast_ref::<Refusal>(), Some(&refused));
        let local = Error::NotSupported {
            context: "stream S: storage cannot change".into(),
            source: None,
        };
        assert_eq!(
            local.to_string(),
            "not supported in place: stream S: storage cannot change"
        );
        assert!(local.source().is_none());
        let nats = Error::Nats {
            context: "connecting to nats://x:4222".into(),
            source: std::io::Error::other("refused").into(),
        };
        assert_eq!(
            nats.to_string(),
            "NATS: connecting to nats://x:4222: refused"
        );
        let io = nats
            .source()
            .and_then(|c| c.downcast_ref::<std::io::Error>());
        assert_eq!(io.map(|e| e.kind()), Some(std::io::ErrorKind::Other));
        let missing = Error::MissingSecret {
            field: "spec.nats.credentials".into(),
            secret: "creds".into(),
            key: Some("user.creds".into()),
        };
        assert_eq!(
            missing.to_string(),
            "spec.nats.credentials: Secret \"creds\" has no key \"user.creds\""
        );
        let waiting = Error::from(Wait::StreamNotReady { swarm: "s".into() });
        assert_eq!(waiting.to_string(), "swarm \"s\" has no stream ready yet");
        assert_eq!(waiting.reason(), qis_crds::constants::reason::PROGRESSING);
    }
}
