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

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid spec: {field}: {message}")]
    InvalidSpec { field: String, message: String },
    #[error("not supported in place: {0}")]
    NotSupported(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("consumer limit reached: {0}")]
    ConsumerLimit(String),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("{0}")]
    Waiting(String),
    /// The swarm a subject names does not exist (yet).
    #[error("{0}")]
    SwarmNotFound(String),
    #[error("{0}")]
    MissingSecret(String),
    #[error("the reconcile panicked: {0}")]
    Panicked(String),
}

impl Error {
    pub fn category(&self) -> Category {
        match self {
            Error::InvalidSpec { .. } => Category::InvalidSpec,
            Error::NotSupported(_) => Category::NotSupported,
            Error::Conflict(_) | Error::ConsumerLimit(_) => Category::Conflict,
            Error::Nats(_)
            | Error::Kube(_)
            | Error::Finalizer(_)
            | Error::Waiting(_)
            | Error::SwarmNotFound(_)
            | Error::MissingSecret(_)
            | Error::Panicked(_) => Category::Transient,
        }
    }

    /// The condition reason (and metrics label) this error reports as.
    pub fn reason(&self) -> &'static str {
        use qis_crds::constants::reason;
        match self {
            Error::InvalidSpec { .. } => reason::INVALID_SPEC,
            Error::NotSupported(_) => reason::NOT_SUPPORTED,
            Error::Conflict(_) => reason::RESOURCE_CONFLICT,
            Error::ConsumerLimit(_) => reason::CONSUMER_LIMIT_REACHED,
            Error::Nats(_) => reason::NATS_UNAVAILABLE,
            Error::Kube(_) | Error::Finalizer(_) => reason::KUBE_API_ERROR,
            Error::Waiting(_) => reason::PROGRESSING,
            Error::SwarmNotFound(_) => reason::SWARM_NOT_FOUND,
            Error::MissingSecret(_) => reason::SECRET_NOT_FOUND,
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
        assert_eq!(Error::NotSupported("storage".into()).requeue_after(3), None);
        assert_eq!(
            Error::Conflict("x".into()).requeue_after(0),
            Some(Duration::from_secs(60))
        );
        let nats = Error::Nats("down".into());
        assert_eq!(nats.requeue_after(0), Some(Duration::from_secs(1)));
        assert_eq!(nats.requeue_after(3), Some(Duration::from_secs(8)));
        assert_eq!(nats.requeue_after(30), Some(Duration::from_secs(60)));
    }
}
