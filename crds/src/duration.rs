//! The duration of every duration field: a Go-style string (`30s`, `1h30m`, `500ms`) read with
//! checked arithmetic and bounded to [`MAX`].
//!
//! Reading never fails and never panics: a value that is not a duration, or is out of range, is
//! kept as an error inside the object ([`Duration::get`]) so that one bad object deserializes
//! like any other and validation reports it on that object, naming the field, instead of
//! failing the whole watch (or, as kube-core's `Duration` did for `99999999999999999999s`,
//! panicking in the watcher).
//!
//! The CRD schema refuses the same values at admission: a pattern, a length bound and a CEL
//! rule comparing with [`MAX`].

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// Regex of a positive Go duration (`90s`, `1h30m`, `500ms`): what `kubectl explain` shows and
/// the API server enforces on every duration field.
pub const DURATION_PATTERN: &str = "^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// Longest duration string the schema admits.
pub const MAX_LENGTH: usize = 32;

/// Longest duration any field admits: 10 years (87600h). Far above any sensible setting, and
/// far below every overflow: in nanoseconds it fits an `i64` thirty times over.
pub const MAX: std::time::Duration = std::time::Duration::from_secs(87_600 * 3600);

/// [`MAX`] as the CRD's CEL rule writes it.
pub const MAX_TEXT: &str = "87600h";

/// Why a duration string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Longer than [`MAX_LENGTH`] characters.
    #[error("is longer than {MAX_LENGTH} characters")]
    TooLong,
    /// Not of the form `<number><unit>…` with units ns, us, µs, ms, s, m, h.
    #[error("is not a duration such as 30s, 1h30m or 500ms")]
    Syntax,
    /// Above [`MAX`].
    #[error("is longer than {MAX_TEXT}")]
    OutOfRange,
}

/// A duration field's value: valid (at most [`MAX`]) or the reason it is not.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Duration(Result<std::time::Duration, DurationError>);

impl Duration {
    /// The value, or why it was refused.
    pub fn get(self) -> Result<std::time::Duration, DurationError> {
        self.0
    }

    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Duration {
        if secs > MAX.as_secs() {
            Duration(Err(DurationError::OutOfRange))
        } else {
            Duration(Ok(std::time::Duration::from_secs(secs)))
        }
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Duration {
        if d > MAX {
            Duration(Err(DurationError::OutOfRange))
        } else {
            Duration(Ok(d))
        }
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ok(d) => write!(f, "{d:?}"),
            Err(e) => write!(f, "<invalid duration: {e}>"),
        }
    }
}

/// Nanoseconds of each unit.
fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        // U+00B5 micro sign and U+03BC Greek mu, as Go accepts both.
        "us" | "\u{00b5}s" | "\u{03bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// Parses a non-negative Go duration with checked arithmetic: `0`, or one or more
/// `<digits>[.<digits>]<unit>`. Fractions below a nanosecond are truncated, as Go does.
pub fn parse(s: &str) -> Result<std::time::Duration, DurationError> {
    if s.chars().count() > MAX_LENGTH {
        return Err(DurationError::TooLong);
    }
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let max = MAX.as_nanos();
    let mut rest = s;
    let mut total: u128 = 0;
    if rest.is_empty() {
        return Err(DurationError::Syntax);
    }
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if int_len == 0 {
            return Err(DurationError::Syntax);
        }
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                if n == 0 {
                    return Err(DurationError::Syntax);
                }
                f.split_at(n)
            }
            None => ("", after),
        };
        let unit_len = after
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit())
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let unit = unit_nanos(unit).ok_or(DurationError::Syntax)?;
        // At most 32 characters: the integer part has at most 31 digits, < 10^31 < u128::MAX.
        let int: u128 = int.parse().map_err(|_| DurationError::OutOfRange)?;
        let whole = int.checked_mul(unit).ok_or(DurationError::OutOfRange)?;
        let mut part = 0u128;
        let mut scale = 1u128;
        for d in frac.bytes().take(18) {
            part = part * 10 + u128::from(d - b'0');
            scale *= 10;
        }
        // part < 10^18 and unit ≤ 3.6·10^12: the product fits a u128 with room to spare.
        let fraction = part * unit / scale;
        total = total
            .checked_add(whole)
            .and_then(|t| t.checked_add(fraction))
            .ok_or(DurationError::OutOfRange)?;
        if total > max {
            return Err(DurationError::OutOfRange);
        }
        rest = after;
    }
    // total ≤ MAX in nanoseconds, which fits a u64.
    let nanos = u64::try_from(total).map_err(|_| DurationError::OutOfRange)?;
    Ok(std::time::Duration::from_nanos(nanos))
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Duration, DurationError> {
        parse(s).map(Duration::from)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            // std's Debug form (`86400s`, `1.5s`, `500ms`, `10µs`) is exact and reads back.
            Ok(d) => write!(f, "{d:?}"),
            Err(e) => write!(f, "<invalid duration: {e}>"),
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Ok(_) => serializer.collect_str(self),
            Err(e) => Err(serde::ser::Error::custom(format!("duration {e}"))),
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as 30s or 1h30m")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Duration, E> {
                Ok(Duration(parse(value)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "maxLength": MAX_LENGTH,
            "pattern": DURATION_PATTERN,
            "x-kubernetes-validations": [{
                "rule": format!("duration(self) <= duration('{MAX_TEXT}')"),
                "message": format!("must be at most {MAX_TEXT} (10 years)"),
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    #[test]
    fn reads_go_durations() {
        let cases = [
            ("0", Std::ZERO),
            ("30s", Std::from_secs(30)),
            ("1h30m", Std::from_secs(5400)),
            ("1.5s", Std::from_millis(1500)),
            ("500ms", Std::from_millis(500)),
            ("10us", Std::from_micros(10)),
            ("10µs", Std::from_micros(10)),
            ("10μs", Std::from_micros(10)),
            ("7ns", Std::from_nanos(7)),
            ("0.100000000000000000000h", Std::from_secs(360)),
            ("87600h", MAX),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn refuses_without_panicking() {
        let cases = [
            ("99999999999999999999s", DurationError::OutOfRange),
            ("87600h1ns", DurationError::OutOfRange),
            (
                "9999999999999999999999999999999h",
                DurationError::OutOfRange,
            ),
            (
                "1234567890123456789012345678901234s",
                DurationError::TooLong,
            ),
            ("", DurationError::Syntax),
            ("-5s", DurationError::Syntax),
            ("5", DurationError::Syntax),
            ("5d", DurationError::Syntax),
            (".5s", DurationError::Syntax),
            ("5.s", DurationError::Syntax),
            ("s", DurationError::Syntax),
            ("NaNs", DurationError::Syntax),
            ("1e9s", DurationError::Syntax),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Err(want), "{text}");
        }
    }

    #[test]
    fn a_bad_value_deserializes_and_reports_itself() {
        let d: Duration = serde_json::from_str("\"99999999999999999999s\"").expect("reads");
        assert_eq!(d.get(), Err(DurationError::OutOfRange));
        assert!(serde_json::to_string(&d).is_err());
    }

    #[test]
    fn round_trips() {
        for text in ["86400s", "120s", "1.5s", "500ms", "10µs", "7ns"] {
            let d: Duration = text.parse().expect("parses");
            assert_eq!(d.to_string(), text);
        }
        assert_eq!(
            Duration::from(MAX + Std::from_nanos(1)).get(),
            Err(DurationError::OutOfRange)
        );
    }
}
