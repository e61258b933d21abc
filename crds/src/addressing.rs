//! Addressing rules: subject tokens, prefixes, readable and hashed addresses, and the
//! names of the JetStream objects derived from Kubernetes names.
//!
//! The rules are the contract written in `docs/addressing.md`. Tokens are checked here (and by
//! the CRD schema with [`TOKEN_PATTERN`]) so a `domain` such as `hvac.>` can never widen a subscription.

use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// Regex of one subject token, as the CRD schema states it.
pub const TOKEN_PATTERN: &str = "^[a-z0-9_-]{1,64}$";
/// Regex of a subject prefix: one to eight tokens joined by `.`.
pub const PREFIX_PATTERN: &str = "^[a-z0-9_-]{1,64}(\\.[a-z0-9_-]{1,64}){0,7}$";
/// Longest token, in characters.
pub const MAX_TOKEN_LEN: usize = 64;
/// Most tokens in a prefix.
pub const MAX_PREFIX_TOKENS: usize = 8;
/// Token that marks a hashed address; no domain may take it.
pub const HASHED_MARKER: &str = "fp";
/// Context bucket of a hashed subject that names none.
pub const DEFAULT_BUCKET: &str = "default";
/// Hex characters of the SHA-256 digest kept in a hashed address.
pub const HASH_HEX_LEN: usize = 32;

/// Why a token or prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} characters long, the limit is {MAX_TOKEN_LEN}")]
    TooLong { what: &'static str, len: usize },
    #[error(
        "{what} {value:?} has the character {bad:?}: only lowercase letters, digits, '-' and '_' are allowed"
    )]
    BadCharacter {
        what: &'static str,
        value: String,
        bad: char,
    },
    #[error("prefix {value:?} has {count} tokens, the limit is {MAX_PREFIX_TOKENS}")]
    TooManyTokens { value: String, count: usize },
    #[error("domain {HASHED_MARKER:?} is reserved for hashed addresses")]
    ReservedDomain,
}

/// Checks one subject token (`domain`, `problemClass`, a site, a bucket, a prefix part).
pub fn check_token(what: &'static str, value: &str) -> Result<(), AddressError> {
    if value.is_empty() {
        return Err(AddressError::Empty { what });
    }
    let len = value.chars().count();
    if len > MAX_TOKEN_LEN {
        return Err(AddressError::TooLong { what, len });
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(AddressError::BadCharacter {
            what,
            value: value.to_owned(),
            bad,
        });
    }
    Ok(())
}

/// Checks a domain: a token that is not the hashed-address marker.
pub fn check_domain(value: &str) -> Result<(), AddressError> {
    check_token("domain", value)?;
    if value == HASHED_MARKER {
        return Err(AddressError::ReservedDomain);
    }
    Ok(())
}

/// Checks a subject prefix such as `qis.iot`.
pub fn check_prefix(value: &str) -> Result<(), AddressError> {
    if value.is_empty() {
        return Err(AddressError::Empty {
            what: "subject prefix",
        });
    }
    let count = value.split('.').count();
    if count > MAX_PREFIX_TOKENS {
        return Err(AddressError::TooManyTokens {
            value: value.to_owned(),
            count,
        });
    }
    value
        .split('.')
        .try_for_each(|t| check_token("subject prefix token", t))
}

/// Default prefix of a swarm: `qis.<namespace>.<swarm>`.
pub fn default_prefix(namespace: &str, swarm: &str) -> String {
    format!("qis.{namespace}.{swarm}")
}

/// Readable address `<prefix>.<domain>.<problemClass>`, or domain-wide `<prefix>.<domain>.>`
/// when `problem_class` is `None`.
pub fn readable_address(prefix: &str, domain: &str, problem_class: Option<&str>) -> String {
    match problem_class {
        Some(pc) => format!("{prefix}.{domain}.{pc}"),
        None => format!("{prefix}.{domain}.>"),
    }
}

/// Canonical form hashed into a hashed address: `domain|problemClass|bucket`.
pub fn canonical_form(domain: &str, problem_class: &str, bucket: &str) -> String {
    format!("{domain}|{problem_class}|{bucket}")
}

/// First [`HASH_HEX_LEN`] lowercase hex characters of SHA-256 of the canonical form.
pub fn fingerprint(domain: &str, problem_class: &str, bucket: &str) -> String {
    let digest = Sha256::digest(canonical_form(domain, problem_class, bucket).as_bytes());
    let mut hex = String::with_capacity(HASH_HEX_LEN);
    for byte in digest.iter().take(HASH_HEX_LEN / 2) {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Hashed address `<prefix>.fp.<fingerprint>`.
pub fn hashed_address(prefix: &str, domain: &str, problem_class: &str, bucket: &str) -> String {
    format!(
        "{prefix}.{HASHED_MARKER}.{}",
        fingerprint(domain, problem_class, bucket)
    )
}

/// Context bucket computed from a context vector: `q<levels>-<digits>`.
///
/// The first `dims` components are each clamped to `[0, 1]` and quantized to
/// `min(floor(x * levels), levels - 1)`, written as one lowercase hex digit; missing components
/// count as `0`, non-finite ones as `0`. `levels` is clamped to `2..=16` and `dims` to `1..=16`,
/// so the result is always a valid token. Example: `[0.18, 0.92, 0.03, 0.71]`, 4 levels, 4 dims →
/// `q4-0302`.
pub fn vector_bucket(vector: &[f64], levels: u8, dims: usize) -> String {
    let levels = levels.clamp(2, 16);
    let dims = dims.clamp(1, 16);
    let mut out = format!("q{levels}-");
    for i in 0..dims {
        let x = vector
            .get(i)
            .copied()
            .filter(|x| x.is_finite())
            .unwrap_or(0.0);
        let scaled = (x.clamp(0.0, 1.0) * f64::from(levels)).floor();
        // `scaled` is in 0..=levels and levels <= 16, so the cast is exact.
        let digit = (scaled as u32).min(u32::from(levels) - 1);
        let _ = write!(out, "{digit:x}");
    }
    out
}

/// JetStream stream of a swarm: `qis_<namespace>_<swarm>`.
///
/// Namespaces and swarm names are DNS labels (no `_`, no `.`), so the name is unique and valid
/// for NATS.
pub fn stream_name(namespace: &str, swarm: &str) -> String {
    format!("qis_{namespace}_{swarm}")
}

/// Inbox prefix of a swarm's agents: `_INBOX.<stream>`. Agents take their reply subjects under
/// it, so their NATS user may subscribe to `_INBOX.<stream>.>` only, and never reads another
/// client's replies.
pub fn agent_inbox_prefix(stream: &str) -> String {
    format!("_INBOX.{stream}")
}

/// Durable consumer of one subject at one site: `<subject>_<site>`.
///
/// Subject names are DNS labels (no `_`), so the first `_` separates the two parts.
pub fn consumer_name(subject: &str, site: &str) -> String {
    format!("{subject}_{site}")
}

/// Do the subject spaces `a.>` and `b.>` of two prefixes overlap (one is a prefix of the other,
/// token-wise)?
pub fn prefixes_overlap(a: &str, b: &str) -> bool {
    let (ta, tb): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
    ta.iter().zip(tb.iter()).all(|(x, y)| x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_refuse_injection() {
        for bad in ["hvac.>", "*", ">", "hvac ", "Hvac", "", "a.b", "é"] {
            assert!(check_token("domain", bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_token("domain", &"a".repeat(65)).is_err());
        for good in [
            "hvac",
            "energy-anomaly",
            "bearing_wear",
            "a",
            &"z".repeat(64),
        ] {
            assert_eq!(check_token("domain", good), Ok(()));
        }
    }

    #[test]
    fn fp_is_reserved_as_domain() {
        assert_eq!(check_domain("fp"), Err(AddressError::ReservedDomain));
        assert_eq!(check_domain("fpx"), Ok(()));
    }

    #[test]
    fn prefixes() {
        assert_eq!(check_prefix("qis.iot"), Ok(()));
        assert!(check_prefix("qis..iot").is_err());
        assert!(check_prefix("qis.>").is_err());
        assert!(check_prefix(&["a"; 9].join(".")).is_err());
        assert_eq!(check_prefix(&["a"; 8].join(".")), Ok(()));
    }

    #[test]
    fn readable_addresses() {
        assert_eq!(
            readable_address("qis.iot", "hvac", Some("energy-anomaly")),
            "qis.iot.hvac.energy-anomaly"
        );
        assert_eq!(readable_address("qis.iot", "hvac", None), "qis.iot.hvac.>");
    }

    #[test]
    fn overlap_is_token_wise() {
        assert!(prefixes_overlap("qis.iot", "qis.iot.hvac"));
        assert!(prefixes_overlap("qis.iot", "qis.iot"));
        assert!(!prefixes_overlap("qis.iot", "qis.iot2"));
        assert!(!prefixes_overlap("qis.a.b", "qis.a.c"));
    }

    #[test]
    fn vector_bucket_quantizes() {
        assert_eq!(vector_bucket(&[0.18, 0.92, 0.03, 0.71], 4, 4), "q4-0302");
        assert_eq!(vector_bucket(&[1.0, -3.0, f64::NAN], 16, 4), "q16-f000");
        assert_eq!(
            check_token("bucket", &vector_bucket(&[0.5; 40], 99, 99)),
            Ok(())
        );
    }
}
