//! CEL rules on duration fields that always answer with their own message.
//!
//! `tls.validity: 100000000h` used to be refused with "type conversion error
//! from 'string' to 'google.protobuf.Duration'": the value matches the
//! schema's pattern, but CEL's `duration()` fails beyond Go's limit
//! (2,562,047h), and a failing rule reports the failure, not its message.
//! Every `duration()` call in our rules therefore runs only behind
//! [`CEL_SAFE_DURATION`], whose values always convert; a value outside it is
//! refused by the field's own bounds rule, which names the field, and the
//! cross-field rules let it pass rather than fail on it.

use serde_json::{Value, json};

use crate::Duration;
use crate::duration::CEL_SAFE_DURATION;

/// CEL that is true when `expr` (a duration string) converts safely.
fn converts(expr: &str) -> String {
    format!("{expr}.matches('{CEL_SAFE_DURATION}')")
}

/// A field-level rule: the duration is at least `min` (when given) and at
/// most `max`, refused with a message naming `field` (its path under
/// `spec`, as users write it) and both bounds.
pub(crate) fn duration_bounds(field: &str, min: Option<Duration>, max: Duration) -> Value {
    let (rule, message) = match min {
        Some(min) => (
            format!(
                "{} && duration(self) >= duration('{min}') && duration(self) <= duration('{max}')",
                converts("self")
            ),
            format!("{field}: must be at least {min} and at most {max}"),
        ),
        None => (
            format!(
                "{} && duration(self) <= duration('{max}')",
                converts("self")
            ),
            format!("{field}: must be at most {max}"),
        ),
    };
    json!({"rule": rule, "message": message})
}

/// `rule`, which compares the durations `exprs` (CEL expressions of
/// duration strings), evaluated only when every one of them converts: a
/// value that does not is refused by its own [`duration_bounds`] rule.
pub(crate) fn when_durations_convert(exprs: &[&str], rule: &str) -> String {
    let all: Vec<String> = exprs.iter().map(|e| converts(e)).collect();
    format!("!({}) || ({rule})", all.join(" && "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_name_the_field_and_guard_the_conversion() {
        let rule = duration_bounds(
            "tls.validity",
            Some(Duration::from_secs(3600)),
            Duration::from_secs(8760 * 3600),
        );
        assert_eq!(
            rule["message"],
            "tls.validity: must be at least 1h and at most 8760h"
        );
        let text = rule["rule"].as_str().expect("a string");
        assert!(
            text.starts_with("self.matches('^") && text.ends_with("duration('8760h')"),
            "{text}"
        );
    }

    #[test]
    fn cross_field_rules_pass_values_that_do_not_convert() {
        let rule =
            when_durations_convert(&["self.a", "self.b"], "duration(self.a) < duration(self.b)");
        assert!(rule.starts_with("!(self.a.matches("), "{rule}");
        assert!(rule.contains(" && self.b.matches("), "{rule}");
        assert!(
            rule.ends_with("|| (duration(self.a) < duration(self.b))"),
            "{rule}"
        );
    }
}
