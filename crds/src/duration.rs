//! Go-style duration strings.
//!
//! Kubernetes, cert-manager and most operators write durations the way Go's
//! `time.ParseDuration` reads them: a sequence of decimal numbers with a unit
//! each (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), e.g. `24h`, `1h30m`, `1.5s`.
//! The same strings are what CEL's `duration()` understands, which lets the
//! API server compare two of them in a validation rule. Days are not a Go
//! unit and are refused, as Go refuses them.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The OpenAPI pattern every duration field carries, so a malformed value is
/// rejected by the API server with the field's name before CEL ever sees it.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A stricter shape than [`DURATION_PATTERN`] that CEL rules test before
/// they call `duration()`: at most 5 integer digits before `h` and 7 before
/// any smaller unit. CEL's `duration()` fails beyond Go's limit of
/// 2,562,047h (i64 nanoseconds) with "type conversion error", which the API
/// server reports instead of the rule's message; within the schema's 32
/// characters this shape stays below 670,000h (4 × `9999999m`), so a rule
/// guarded by it always gets to say what it means. Written with `[.]`, not
/// `\.`, because it is embedded in a CEL string literal.
pub const CEL_SAFE_DURATION: &str =
    r"^([0-9]{1,5}([.][0-9]+)?h|[0-9]{1,7}([.][0-9]+)?(ns|us|µs|ms|s|m))+$";

/// A parsed duration. It serialises in its shortest Go form (`90m` reads back
/// from Rust as `1h30m`); the API server keeps whatever string was applied.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    value: std::time::Duration,
}

/// Why a string is not a Go duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string is empty.
    #[error("empty duration")]
    Empty,
    /// Not numbers with units (e.g. a sign, a stray character).
    #[error(
        "invalid duration {0:?}: expected numbers with units ns, us, ms, s, m or h, e.g. \"24h\" or \"1h30m\""
    )]
    Invalid(String),
    /// A number without its unit, e.g. `30`.
    #[error("duration {0:?} has a missing unit: write e.g. \"30s\", not \"30\"")]
    MissingUnit(String),
    /// A unit Go does not know, e.g. `d`: the input and the unit.
    #[error("duration {0:?} has an unknown unit {1:?}: use ns, us, ms, s, m or h")]
    UnknownUnit(String, String),
    /// More seconds than a u64 holds.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

impl Duration {
    /// A whole number of seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self {
            value: std::time::Duration::from_secs(secs),
        }
    }

    /// A whole number of milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Self {
            value: std::time::Duration::from_millis(millis),
        }
    }

    /// The same span as a [`std::time::Duration`].
    pub const fn from_std(value: std::time::Duration) -> Self {
        Self { value }
    }

    /// The span as a [`std::time::Duration`].
    pub const fn as_std(&self) -> std::time::Duration {
        self.value
    }

    /// The span as a [`chrono::TimeDelta`], saturating at its maximum.
    pub fn as_chrono(&self) -> chrono::TimeDelta {
        chrono::TimeDelta::from_std(self.value).unwrap_or(chrono::TimeDelta::MAX)
    }

    /// Whole seconds, the fraction dropped.
    pub const fn as_secs(&self) -> u64 {
        self.value.as_secs()
    }
}

impl From<std::time::Duration> for Duration {
    fn from(value: std::time::Duration) -> Self {
        Self { value }
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_go_duration(s).map(|value| Self { value })
    }
}

/// Parses like Go's `time.ParseDuration`, minus negative values (no field of
/// ours means anything negative). "0" alone is accepted, as in Go.
fn parse_go_duration(input: &str) -> Result<std::time::Duration, DurationError> {
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    if input == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let invalid = || DurationError::Invalid(input.to_string());
    let mut rest = input;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after_int) = rest.split_at(int_len);
        let (frac_part, after_num) = match after_int.strip_prefix('.') {
            Some(tail) => {
                let frac_len = tail.bytes().take_while(u8::is_ascii_digit).count();
                tail.split_at(frac_len)
            }
            None => ("", after_int),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = after_num
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after_num.len(), |(i, _)| i);
        let (unit, tail) = after_num.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "" => return Err(DurationError::MissingUnit(input.to_string())),
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            other => {
                return Err(DurationError::UnknownUnit(
                    input.to_string(),
                    other.to_string(),
                ));
            }
        };
        let overflow = || DurationError::Overflow(input.to_string());
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(overflow)?;
        // Fractions are scaled digit by digit so "1.5h" is exact.
        let mut scale = unit_nanos;
        for digit in frac_part.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            nanos += u128::from(digit - b'0') * scale;
        }
        total_nanos = total_nanos.checked_add(nanos).ok_or_else(overflow)?;
        rest = tail;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000)
        .map_err(|_| DurationError::Overflow(input.to_string()))?;
    // Go's limit is ~290 years; ours is generous but finite.
    Ok(std::time::Duration::new(
        secs,
        (total_nanos % 1_000_000_000) as u32,
    ))
}

/// Formats the shortest Go-style string for the value, e.g. `1h30m`, `90s`
/// written as `1m30s`, `500ms`.
impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.value.as_nanos();
        if total == 0 {
            return f.write_str("0s");
        }
        let secs = self.value.as_secs();
        let sub_nanos = self.value.subsec_nanos();
        if secs == 0 {
            return if sub_nanos.is_multiple_of(1_000_000) {
                write!(f, "{}ms", sub_nanos / 1_000_000)
            } else if sub_nanos.is_multiple_of(1_000) {
                write!(f, "{}us", sub_nanos / 1_000)
            } else {
                write!(f, "{sub_nanos}ns")
            };
        }
        let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 || sub_nanos > 0 {
            if sub_nanos > 0 {
                let frac = format!("{:09}", sub_nanos);
                write!(f, "{s}.{}s", frac.trim_end_matches('0'))?;
            } else {
                write!(f, "{s}s")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Duration({self})")
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
            "description": "A Go-style duration such as \"24h\", \"90m\", \"30s\" or \"1h30m\"."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> f64 {
        s.parse::<Duration>().expect(s).as_std().as_secs_f64()
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(secs("24h"), 86_400.0);
        assert_eq!(secs("90m"), 5_400.0);
        assert_eq!(secs("30s"), 30.0);
        assert_eq!(secs("1h30m"), 5_400.0);
        assert_eq!(secs("1.5h"), 5_400.0);
        assert_eq!(secs("500ms"), 0.5);
        assert_eq!(secs("2h45m10.5s"), 9_910.5);
        assert_eq!(secs("10us"), 0.00001);
        assert_eq!(secs("10µs"), 0.00001);
        assert_eq!(secs("0"), 0.0);
        assert_eq!(secs(".5s"), 0.5);
    }

    #[test]
    fn refuses_what_go_refuses() {
        assert_eq!("".parse::<Duration>(), Err(DurationError::Empty));
        assert!(matches!(
            "30".parse::<Duration>(),
            Err(DurationError::MissingUnit(_))
        ));
        assert!(
            matches!("1d".parse::<Duration>(), Err(DurationError::UnknownUnit(_, u)) if u == "d")
        );
        assert!(matches!(
            "h".parse::<Duration>(),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            "-5s".parse::<Duration>(),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            "5 s".parse::<Duration>(),
            Err(DurationError::UnknownUnit(_, _))
        ));
        assert!(matches!(
            "99999999999999999999999h".parse::<Duration>(),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats_shortest_form_and_round_trips() {
        for (input, shown) in [
            ("24h", "24h"),
            ("90m", "1h30m"),
            ("90s", "1m30s"),
            ("500ms", "500ms"),
            ("1.25s", "1.25s"),
            ("0s", "0s"),
            ("2160h", "2160h"),
        ] {
            let d: Duration = input.parse().expect(input);
            assert_eq!(d.to_string(), shown);
            assert_eq!(shown.parse::<Duration>().expect(shown), d);
        }
    }

    #[test]
    fn the_cel_guard_passes_only_durations_cel_can_convert() {
        let guard = regex::Regex::new(CEL_SAFE_DURATION).expect("compiles");
        // CEL converts with Go's time.ParseDuration: i64 nanoseconds.
        let go_limit = std::time::Duration::from_nanos(i64::MAX as u64);
        // The largest values the guard passes within the schema's 32
        // characters, and ordinary ones.
        for s in [
            "99999h99999h99999h99999h99999h",
            "9999999m9999999m9999999m9999999m",
            "87600h",
            "1h30m",
            "500ms",
            "1.5h",
        ] {
            assert!(s.len() <= 32 && guard.is_match(s), "{s}");
            let value = s.parse::<Duration>().expect(s).as_std();
            assert!(value < go_limit / 3, "{s}");
        }
        for s in [
            "100000000h",
            "2562048h",
            "100000h",
            "99999999m",
            "1d",
            "30",
            "",
        ] {
            assert!(!guard.is_match(s), "{s}");
        }
    }

    #[test]
    fn pattern_agrees_with_parser_on_samples() {
        // The schema pattern is what the API server enforces; the parser is
        // what the operator uses. They must not disagree on ordinary inputs.
        let re_ok = ["24h", "1h30m", "1.5h", "500ms", "10us", "30s"];
        for s in re_ok {
            assert!(s.parse::<Duration>().is_ok(), "{s}");
        }
        let json = serde_json::to_string(&Duration::from_secs(3600)).expect("serialises");
        assert_eq!(json, "\"1h\"");
        let back: Duration = serde_json::from_str("\"1h\"").expect("deserialises");
        assert_eq!(back, Duration::from_secs(3600));
        assert!(serde_json::from_str::<Duration>("\"1d\"").is_err());
    }
}
