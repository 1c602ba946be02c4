//! The rules a sensitive-data configuration must pass to compile, in one
//! place for the operator and the server: the operator refuses a spec the
//! server would refuse (before writing its config), instead of reporting
//! Ready while new pods fail to start on it.
//!
//! The server scans text with ONE regular expression: an alternative per
//! built-in detector family, then each custom pattern. So a configuration
//! compiles when each custom pattern compiles alone (an error then names
//! the pattern) AND the whole alternation fits the regex crate's compiled
//! size limit ([`SIZE_LIMIT`]). The second rule is the one a per-pattern
//! check misses: `\w{100}` (Unicode word characters) compiles alone, and
//! measured, two of them fit in one regex, three do not.

use regex::{Regex, RegexBuilder};
use thiserror::Error;

use crate::v1alpha1::{CustomPattern, Detector, SensitiveDataSpec};

/// E-mail addresses.
pub const EMAIL: &str = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}";
/// Digits with single separators (space, dash, dot, slash, underscore), an
/// optional leading + (country code) and an optional trailing X (resident-ID
/// check character); the server classifies each run in code (checksums are
/// not regular), where dots, slashes and underscores count only between a
/// card's groups of four.
pub const NUMBER_RUN: &str = r"\+?[0-9](?:[ ._/-]?[0-9])*(?:[Xx])?";

/// The compiled size limit of each regular expression, in bytes: the regex
/// crate's default (10 MiB), written here so the operator and the server
/// cannot drift apart.
pub const SIZE_LIMIT: usize = 10 * (1 << 20);

/// Which alternative of the combined regex produced a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alternative {
    /// [`EMAIL`].
    Email,
    /// [`NUMBER_RUN`], classified by detector afterwards.
    Number,
    /// The custom pattern at this index of `customPatterns`.
    Custom(usize),
}

/// A configuration's patterns, compiled.
#[derive(Debug)]
pub struct CompiledPatterns {
    /// Every alternative in one regex (None when nothing is enabled): the
    /// scan.
    pub combined: Option<Regex>,
    /// Each alternative anchored at both ends, in order: which one produced
    /// a match is the first that matches it whole (leftmost-first).
    pub anchored: Vec<(Alternative, Regex)>,
}

/// Why a configuration's patterns do not compile.
#[derive(Debug, Error)]
pub enum PatternError {
    /// One custom pattern does not compile alone (syntax, or over the size
    /// limit by itself).
    #[error("customPatterns[{index}] ({name}): {source}")]
    Pattern {
        /// Its index in `customPatterns`.
        index: usize,
        /// Its name.
        name: String,
        /// The regex crate's error.
        #[source]
        source: regex::Error,
    },
    /// Every pattern compiles alone, the combined regex does not.
    #[error(
        "the custom patterns ({names}) and the built-in detectors together exceed the \
         compiled size limit of {limit} bytes; use fewer or smaller patterns: {source}",
        limit = SIZE_LIMIT
    )]
    TooLarge {
        /// The custom patterns' names, comma-separated.
        names: String,
        /// The regex crate's error.
        #[source]
        source: regex::Error,
    },
}

fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).size_limit(SIZE_LIMIT).build()
}

/// Compiles the detectors and custom patterns of `spec` by the rules above.
pub fn compile_patterns(spec: &SensitiveDataSpec) -> Result<CompiledPatterns, PatternError> {
    let mut sources: Vec<(Alternative, &str)> = Vec::new();
    if spec.detectors.contains(&Detector::Email) {
        sources.push((Alternative::Email, EMAIL));
    }
    if spec.detectors.iter().any(|d| *d != Detector::Email) {
        sources.push((Alternative::Number, NUMBER_RUN));
    }
    let custom_error = |index: usize, source| PatternError::Pattern {
        index,
        name: spec.custom_patterns[index].name.clone(),
        source,
    };
    for (index, CustomPattern { regex, .. }) in spec.custom_patterns.iter().enumerate() {
        compile(regex).map_err(|e| custom_error(index, e))?;
        sources.push((Alternative::Custom(index), regex.as_str()));
    }
    let combined = if sources.is_empty() {
        None
    } else {
        let joined: Vec<String> = sources.iter().map(|(_, s)| format!("(?:{s})")).collect();
        let combined = compile(&joined.join("|")).map_err(|source| PatternError::TooLarge {
            names: spec
                .custom_patterns
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            source,
        })?;
        Some(combined)
    };
    let anchored = sources
        .iter()
        .map(|(alternative, s)| {
            let regex = compile(&format!("^(?:{s})$")).map_err(|e| match alternative {
                Alternative::Custom(index) => custom_error(*index, e),
                // The built-ins are constants that compile (tested below).
                Alternative::Email | Alternative::Number => unreachable!("built-in pattern: {e}"),
            })?;
            Ok((*alternative, regex))
        })
        .collect::<Result<_, PatternError>>()?;
    Ok(CompiledPatterns { combined, anchored })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(patterns: &[(&str, &str)]) -> SensitiveDataSpec {
        SensitiveDataSpec {
            custom_patterns: patterns
                .iter()
                .map(|(name, regex)| CustomPattern {
                    name: (*name).into(),
                    regex: (*regex).into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_defaults_and_good_patterns_compile() {
        let compiled = compile_patterns(&spec(&[("ticket", r"TICKET-[0-9]{6}")])).expect("ok");
        assert!(compiled.combined.is_some());
        assert_eq!(compiled.anchored.len(), 3);
        assert_eq!(compiled.anchored[2].0, Alternative::Custom(0));
        let none = SensitiveDataSpec {
            detectors: Vec::new(),
            ..Default::default()
        };
        assert!(compile_patterns(&none).expect("ok").combined.is_none());
    }

    #[test]
    fn a_pattern_that_does_not_compile_is_named() {
        let err = compile_patterns(&spec(&[("ok", "a+"), ("bad", "(")])).expect_err("refused");
        assert!(
            matches!(&err, PatternError::Pattern { index: 1, name, .. } if name == "bad"),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("customPatterns[1] (bad): "),
            "{err}"
        );
    }

    #[test]
    fn a_pattern_over_the_size_limit_alone_is_named() {
        let err = compile_patterns(&spec(&[("huge", r"\w{1000}")])).expect_err("refused");
        assert!(
            matches!(err, PatternError::Pattern { index: 0, .. }),
            "{err:?}"
        );
    }

    /// Measured: `\w{100}` (Unicode word characters) compiles alone; two
    /// fit in one regex, three exceed the limit.
    #[test]
    fn patterns_that_compile_alone_can_exceed_the_limit_together() {
        let one = r"\w{100}";
        assert!(compile(one).is_ok());
        let names: Vec<String> = (0..3).map(|i| format!("p{i}")).collect();
        let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), one)).collect();
        let err = compile_patterns(&spec(&many)).expect_err("refused");
        assert!(matches!(err, PatternError::TooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains("(p0, p1, p2)"), "{err}");
    }
}
