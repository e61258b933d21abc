//! Synthesis settings resolved once: a subject's settings over its swarm's defaults, every
//! unset field filled with its documented default, every value checked against its bounds
//! (naming the field as in the CRD). The operator refuses a spec whose settings do not resolve
//! (`InvalidSpec`); the agent synthesizes with what [`resolve`] returns.

use qis_crds::common::{MAX_PACKETS, MAX_PROBLEMS, MAX_VOTERS};
use qis_crds::{Duration, SynthesisMethod, SynthesisSettings};

/// Hops a synthesis packet may carry when `maxHops` is unset.
pub const DEFAULT_MAX_HOPS: u8 = 1;
/// Most hops `maxHops` may allow (the CRD's bound).
pub const MAX_HOPS: u8 = 8;
/// Least time between two synthesis packets of one subject when `publishInterval` is unset.
pub const DEFAULT_PUBLISH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Everything a subject's synthesis runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// What the consensus math takes.
    pub settings: Settings,
    /// Synthesis generations a packet may carry (`Qis-Hops`).
    pub max_hops: u8,
    /// Least time between two synthesis packets the agent publishes.
    pub publish_interval: std::time::Duration,
}

/// The settings of a subject (`subject`) over its swarm's (`defaults`), resolved and checked.
pub fn resolve(
    subject: &SynthesisSettings,
    defaults: &SynthesisSettings,
) -> Result<Resolved, InvalidSetting> {
    check(&subject.or(defaults))
}

/// Resolves and checks one set of settings (a swarm's defaults alone, or already merged).
pub fn check(s: &SynthesisSettings) -> Result<Resolved, InvalidSetting> {
    let publish_interval = match s.publish_interval.map(|d| d.get()) {
        None => DEFAULT_PUBLISH_INTERVAL,
        Some(Ok(d)) if !d.is_zero() => d,
        Some(Ok(_)) => return Err(InvalidSetting::new("publishInterval", "must be positive")),
        Some(Err(e)) => return Err(InvalidSetting::new("publishInterval", e.to_string())),
    };
    let max_hops = s.max_hops.unwrap_or(DEFAULT_MAX_HOPS);
    if max_hops > MAX_HOPS {
        return Err(InvalidSetting::new(
            "maxHops",
            format!("{max_hops} is outside [0, {MAX_HOPS}]"),
        ));
    }
    Ok(Resolved {
        settings: Settings::from_crd(s)?,
        max_hops,
        publish_interval,
    })
}

/// Resolved synthesis settings (the CRD's, with defaults filled in).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub method: SynthesisMethod,
    /// Seconds.
    pub window: f64,
    /// Seconds; `None` for no decay.
    pub half_life: Option<f64>,
    pub threshold: f64,
    pub quorum: u32,
    /// Combined confidence an alert needs (not used by the seed method).
    pub min_confidence: f64,
    pub trim_fraction: f64,
    pub limits: Limits,
    /// Seconds a packet's timestamp may be ahead of the agent's clock.
    pub max_clock_skew: f64,
}

/// What one subject's window may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Distinct voters (agents; packets in seed mode).
    pub voters: usize,
    /// Remembered packet ids.
    pub packets: usize,
    /// Distinct problems named by the votes.
    pub problems: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            voters: 10_000,
            packets: 100_000,
            problems: 1_000,
        }
    }
}

/// A synthesis setting an agent cannot use, naming the field (as in the CRD).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("synthesis.{field} {reason}")]
pub struct InvalidSetting {
    pub field: &'static str,
    pub reason: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            method: SynthesisMethod::default(),
            window: Self::DEFAULT_WINDOW,
            half_life: None,
            threshold: 0.6,
            quorum: 2,
            min_confidence: 0.5,
            trim_fraction: 0.1,
            limits: Limits::default(),
            max_clock_skew: Self::DEFAULT_MAX_CLOCK_SKEW,
        }
    }
}

impl Settings {
    /// Default window, seconds.
    pub const DEFAULT_WINDOW: f64 = 3600.0;
    /// Default clock skew allowed ahead, seconds.
    pub const DEFAULT_MAX_CLOCK_SKEW: f64 = 30.0;

    /// Fills the CRD's unset fields with the documented defaults; refuses a value the agent
    /// cannot use (a duration out of range, a number outside its bounds), naming its field.
    pub fn from_crd(s: &SynthesisSettings) -> Result<Settings, InvalidSetting> {
        let d = Settings::default();
        Ok(Settings {
            method: s.method.unwrap_or_default(),
            window: window(s.window)?.unwrap_or(d.window),
            half_life: half_life(s.half_life)?,
            threshold: unit("threshold", s.threshold, 1.0, d.threshold)?,
            quorum: quorum(s.quorum)?.unwrap_or(d.quorum),
            min_confidence: unit("minConfidence", s.min_confidence, 1.0, d.min_confidence)?,
            trim_fraction: unit("trimFraction", s.trim_fraction, 0.45, d.trim_fraction)?,
            max_clock_skew: seconds("maxClockSkew", s.max_clock_skew)?.unwrap_or(d.max_clock_skew),
            limits: Limits {
                voters: limit("maxVoters", s.max_voters, MAX_VOTERS, d.limits.voters)?,
                packets: limit("maxPackets", s.max_packets, MAX_PACKETS, d.limits.packets)?,
                problems: limit(
                    "maxProblems",
                    s.max_problems,
                    MAX_PROBLEMS,
                    d.limits.problems,
                )?,
            },
        })
    }

    /// The seed article's rules: every packet a vote, no window, threshold 0.6.
    pub fn seed() -> Settings {
        Settings {
            method: SynthesisMethod::Seed,
            window: f64::INFINITY,
            half_life: None,
            threshold: 0.6,
            quorum: 1,
            min_confidence: 0.0,
            trim_fraction: 0.0,
            limits: Limits::default(),
            max_clock_skew: f64::INFINITY,
        }
    }
}

impl InvalidSetting {
    /// The setting `field` (as in the CRD) is refused for `reason`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> InvalidSetting {
        InvalidSetting {
            field,
            reason: reason.into(),
        }
    }
}

/// A duration setting in seconds; refused when it does not fit a duration.
fn seconds(field: &'static str, d: Option<Duration>) -> Result<Option<f64>, InvalidSetting> {
    d.map(|d| d.get().map(|d| d.as_secs_f64()))
        .transpose()
        .map_err(|e| InvalidSetting {
            field,
            reason: e.to_string(),
        })
}

/// The window, when set: positive.
fn window(d: Option<Duration>) -> Result<Option<f64>, InvalidSetting> {
    let window = seconds("window", d)?;
    if window == Some(0.0) {
        return Err(InvalidSetting {
            field: "window",
            reason: "must be positive".into(),
        });
    }
    Ok(window)
}

/// The half-life: 0 (or unset) for no decay, else at least 1 s.
fn half_life(d: Option<Duration>) -> Result<Option<f64>, InvalidSetting> {
    let half_life = seconds("halfLife", d)?.filter(|h| *h > 0.0);
    if half_life.is_some_and(|h| h < 1.0) {
        // Shorter, every vote older than a few microseconds weighs 0 and the combined
        // confidence is 0/0.
        return Err(InvalidSetting {
            field: "halfLife",
            reason: "must be at least 1s (or 0 for no decay)".into(),
        });
    }
    Ok(half_life)
}

/// The quorum, when set: at least 1.
fn quorum(q: Option<u32>) -> Result<Option<u32>, InvalidSetting> {
    if q == Some(0) {
        return Err(InvalidSetting {
            field: "quorum",
            reason: "must be at least 1".into(),
        });
    }
    Ok(q)
}

/// A number in `[0, max]`, or `default` when unset.
fn unit(
    field: &'static str,
    v: Option<f64>,
    max: f64,
    default: f64,
) -> Result<f64, InvalidSetting> {
    match v {
        None => Ok(default),
        Some(v) if (0.0..=max).contains(&v) => Ok(v),
        Some(v) => Err(InvalidSetting {
            field,
            reason: format!("{v} is outside [0, {max}]"),
        }),
    }
}

/// A count in `[1, max]`, or `default` when unset.
fn limit(
    field: &'static str,
    v: Option<u32>,
    max: u32,
    default: usize,
) -> Result<usize, InvalidSetting> {
    match v {
        None => Ok(default),
        Some(v) if (1..=max).contains(&v) => Ok(v as usize),
        Some(v) => Err(InvalidSetting {
            field,
            reason: format!("{v} is outside [1, {max}]"),
        }),
    }
}
