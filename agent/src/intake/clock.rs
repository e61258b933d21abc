//! The intake's time bounds: a packet's timestamp must lie within
//! `[now − window, now + maxClockSkew]` of the agent's clock, the window and the skew of the
//! subjects that follow the packet's address (the largest of each when several do). A packet
//! to an address no subject follows takes the largest window and skew of the subjects the
//! agent follows (its configured defaults when it follows none): the intake cannot know the
//! settings of receivers elsewhere, and says so in the refusal. A timestamp before 2020 is
//! refused on its own rule: the device's clock looks unset.

use crate::subject_worker::SubjectSpec;
use qis_contract::synthesis::Settings;

/// 2020-01-01T00:00:00Z: a timestamp before it comes from a device whose clock is unset.
pub const CLOCK_SET_AFTER: f64 = 1_577_836_800.0;

/// How far back (`window`) and ahead (`skew`) of the agent's clock a timestamp may be,
/// seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeBounds {
    pub window: f64,
    pub skew: f64,
}

impl TimeBounds {
    /// The bounds of resolved settings.
    pub fn of(s: &Settings) -> TimeBounds {
        TimeBounds {
            window: s.window,
            skew: s.max_clock_skew,
        }
    }

    /// Either's window and either's skew, whichever is larger.
    fn widest(self, other: TimeBounds) -> TimeBounds {
        TimeBounds {
            window: self.window.max(other.window),
            skew: self.skew.max(other.skew),
        }
    }
}

impl Default for TimeBounds {
    fn default() -> Self {
        TimeBounds::of(&Settings::default())
    }
}

/// Where the bounds of a packet came from (named in a refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The subjects that follow its address.
    Followed,
    /// No subject follows its address: the largest of the followed subjects.
    Largest,
    /// The agent follows no subject: its defaults.
    Defaults,
}

/// The bounds of a packet to `address`, and where they came from. A subject whose settings
/// do not resolve (the agent refuses it) gives none.
pub fn bounds_for(
    subjects: &[SubjectSpec],
    address: &str,
    defaults: TimeBounds,
) -> (TimeBounds, Origin) {
    let resolved = |s: &SubjectSpec| Settings::from_crd(&s.synthesis).ok();
    let widest = |it: &mut dyn Iterator<Item = &SubjectSpec>| {
        it.filter_map(resolved)
            .map(|s| TimeBounds::of(&s))
            .reduce(TimeBounds::widest)
    };
    let following = &mut subjects
        .iter()
        .filter(|s| qis_contract::stream::filters_overlap(&s.address, address));
    if let Some(b) = widest(following) {
        return (b, Origin::Followed);
    }
    match widest(&mut subjects.iter()) {
        Some(b) => (b, Origin::Largest),
        None => (defaults, Origin::Defaults),
    }
}

/// Whether `timestamp` is within `bounds` of `now`: the rule it breaks and why, if not.
pub fn check(
    timestamp: f64,
    now: f64,
    bounds: TimeBounds,
    origin: Origin,
) -> Result<(), (&'static str, String)> {
    if timestamp < CLOCK_SET_AFTER {
        let msg = format!(
            "timestamp {timestamp} is before 2020-01-01: the device's clock looks unset \
             (set it, e.g. with NTP, before sending)"
        );
        return Err(("clock_unset", msg));
    }
    let whose = match origin {
        Origin::Followed => "of the subjects that follow this packet's address",
        Origin::Largest => {
            "the largest of the subjects this agent follows (none follows this packet's address)"
        }
        Origin::Defaults => "the agent's defaults (it follows no subject)",
    };
    if timestamp > now + bounds.skew {
        let msg = format!(
            "timestamp {timestamp} is {:.3}s ahead of the agent's clock ({now:.3}), over the \
             maxClockSkew of {}s ({whose})",
            timestamp - now,
            bounds.skew
        );
        return Err(("timestamp_in_future", msg));
    }
    if timestamp < now - bounds.window {
        let msg = format!(
            "timestamp {timestamp} is {:.3}s old by the agent's clock ({now:.3}), older than \
             the window of {}s ({whose})",
            now - timestamp,
            bounds.window
        );
        return Err(("timestamp_too_old", msg));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use qis_crds::SynthesisSettings;

    fn subject(address: &str, window: &str, skew: &str) -> SubjectSpec {
        SubjectSpec {
            name: "s".into(),
            domain: "hvac".into(),
            problem_class: None,
            address: address.into(),
            synthesis: SynthesisSettings {
                window: Some(window.parse().expect("duration")),
                max_clock_skew: Some(skew.parse().expect("duration")),
                ..Default::default()
            },
        }
    }

    #[test]
    fn the_bounds_are_the_widest_of_the_followers_else_of_all_else_the_defaults() {
        let subjects = [
            subject("qis.iot.hvac.>", "10m", "5s"),
            subject("qis.iot.hvac.energy", "2m", "40s"),
            subject("qis.iot.water.>", "3h", "1s"),
        ];
        let d = TimeBounds {
            window: 7.0,
            skew: 3.0,
        };
        let b = |window, skew| TimeBounds { window, skew };
        assert_eq!(
            bounds_for(&subjects, "qis.iot.hvac.energy", d),
            (b(600.0, 40.0), Origin::Followed)
        );
        assert_eq!(
            bounds_for(&subjects, "qis.iot.power.grid", d),
            (b(10_800.0, 40.0), Origin::Largest)
        );
        assert_eq!(
            bounds_for(&[], "qis.iot.power.grid", d),
            (d, Origin::Defaults)
        );
    }

    #[test]
    fn a_timestamp_is_checked_against_each_bound_and_the_edges_pass() {
        let (now, b) = (1_800_000_000.0, TimeBounds::default());
        let rule = |ts: f64| check(ts, now, b, Origin::Followed).err().map(|e| e.0);
        assert_eq!(rule(now + 30.0), None);
        assert_eq!(rule(now - 3600.0), None);
        assert_eq!(rule(now + 30.001), Some("timestamp_in_future"));
        assert_eq!(rule(now - 3600.001), Some("timestamp_too_old"));
        assert_eq!(rule(1.0), Some("clock_unset"));
        assert_eq!(rule(CLOCK_SET_AFTER - 0.5), Some("clock_unset"));
    }
}
