//! Types both kinds share: synthesis settings, conditions.

use crate::Duration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `seed` | `mean` | `trimmedMean` | `median`: how votes are counted and confidences combined.
///
/// `seed` is the seed article's arithmetic (every packet is a vote, plain mean of all
/// confidences, alert on strength alone), kept for comparison; the others give each agent one
/// vote per window and combine the agreeing votes' confidences by weighted mean, trimmed mean
/// (`trimFraction` dropped at each end) or weighted median. Default `trimmedMean`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SynthesisMethod {
    /// The seed article's arithmetic: every packet is a vote, plain mean of all confidences,
    /// alert on strength alone. For comparison with the article; not for production.
    Seed,
    /// Weighted mean of the agreeing votes' confidences.
    Mean,
    /// Weighted mean after dropping `trimFraction` of the votes at each end.
    #[default]
    TrimmedMean,
    /// Weighted median of the agreeing votes' confidences.
    Median,
}

/// Synthesis settings. On a swarm they are the defaults of its subjects; on a subject each field
/// set overrides the swarm's.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SynthesisSettings {
    /// Only packets whose timestamp lies within this window of now are considered; each agent
    /// has one vote in it (its latest). Default `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
    /// Half-life of a vote's weight (exponential decay with age). Unset: no decay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_life: Option<Duration>,
    /// Consensus strength above which an alert is raised (with `quorum`). Default `0.6`, the
    /// seed's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub threshold: Option<f64>,
    /// Distinct agents that must agree before an alert is raised. Default `2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub quorum: Option<u32>,
    /// Combined confidence of the agreeing votes below which no alert is raised, however many
    /// agree: agents that all say "maybe" are not an alarm. Default `0.5`. The `seed` method
    /// ignores it (the seed alerts on strength alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_confidence: Option<f64>,
    /// How confidences are combined. Default `trimmedMean`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<SynthesisMethod>,
    /// Fraction of votes dropped at each end by `trimmedMean`. Default `0.1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 0.45))]
    pub trim_fraction: Option<f64>,
    /// Synthesis generations a packet may carry (`Qis-Hops`); packets beyond it are not
    /// re-synthesized. Default `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 8))]
    pub max_hops: Option<u8>,
    /// Least time between two synthesis packets an agent publishes for one subject. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_interval: Option<Duration>,
    /// Distinct agents whose votes one window of one subject holds. While the window is full,
    /// an agent without a vote in it is not counted (those already voting keep updating),
    /// until votes expire; each such packet is counted in
    /// `qis_agent_synthesis_evictions_total{reason="voters"}`. Default `10000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_VOTERS))]
    pub max_voters: Option<u32>,
    /// Packets one window of one subject remembers (duplicate detection, the `packets` count);
    /// when full, the oldest is forgotten (`reason="packets"`). Default `100000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_PACKETS))]
    pub max_packets: Option<u32>,
    /// Distinct problems (`<domain>.<problemClass>`) the votes of one window may name (a
    /// domain-wide subject follows every problem class of its domain); a vote naming another
    /// is not counted (`reason="problems"`). Default `1000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_PROBLEMS))]
    pub max_problems: Option<u32>,
    /// How far ahead of the agent's clock a packet's timestamp may be. The intake refuses a
    /// packet stamped further ahead (422, rule `timestamp_in_future`) and receivers ignore such a
    /// twin, counted by the same rule (it would outlive the window and, under decay, outweigh
    /// every honest vote). Packets older than the window are refused and ignored likewise
    /// (`timestamp_too_old`); the intake refuses stamps before 2020 as an unset clock
    /// (`clock_unset`).
    /// Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_clock_skew: Option<Duration>,
}

/// Largest `maxVoters`.
pub const MAX_VOTERS: u32 = 100_000;
/// Largest `maxPackets`.
pub const MAX_PACKETS: u32 = 1_000_000;
/// Largest `maxProblems`.
pub const MAX_PROBLEMS: u32 = 100_000;

impl SynthesisSettings {
    /// Each field of `self` that is set, else the one of `defaults`.
    pub fn or(&self, defaults: &SynthesisSettings) -> SynthesisSettings {
        SynthesisSettings {
            window: self.window.or(defaults.window),
            half_life: self.half_life.or(defaults.half_life),
            threshold: self.threshold.or(defaults.threshold),
            quorum: self.quorum.or(defaults.quorum),
            min_confidence: self.min_confidence.or(defaults.min_confidence),
            method: self.method.or(defaults.method),
            trim_fraction: self.trim_fraction.or(defaults.trim_fraction),
            max_hops: self.max_hops.or(defaults.max_hops),
            publish_interval: self.publish_interval.or(defaults.publish_interval),
            max_voters: self.max_voters.or(defaults.max_voters),
            max_packets: self.max_packets.or(defaults.max_packets),
            max_problems: self.max_problems.or(defaults.max_problems),
            max_clock_skew: self.max_clock_skew.or(defaults.max_clock_skew),
        }
    }
}

/// Schema of a conditions list: a list-map keyed on `type`, so that two field managers can own
/// different entries.
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

/// Reference to a key of a Secret in the object's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}
