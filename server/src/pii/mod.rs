//! Sensitive-data detection and redaction. Pure: no I/O, no clock.
//!
//! One regular expression with one alternative per detector family scans
//! the text once: e-mail addresses, runs of digits (with spaces or dashes
//! and an optional trailing X), and the custom patterns. Runs of digits are
//! then classified in code (resident-ID checksum, Luhn, SSN shape, mobile
//! prefix), because checksums cannot be expressed as regular expressions
//! and because a single "number run" alternative avoids the ambiguity of
//! four overlapping digit patterns competing for the same text.
//!
//! The scan runs on a normalised view of the text (`normalize`: full-width
//! and other scripts' digits, Unicode spaces and dashes, zero-width
//! characters), and each match redacts the original characters behind it.

mod checks;
mod normalize;
mod stream;

use regex::Regex;
use securechat_crds::sensitive::{
    Alternative, CompiledPatterns, EMAIL, PatternError, compile_patterns,
};
use securechat_crds::v1alpha1::{Detector, FilterAction, SensitiveDataSpec};

use normalize::View;

pub use stream::{Released, StreamFilter};

/// What replaces each match.
pub const REDACTION: &str = "[FILTERED]";

/// Which rule matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Builtin(Detector),
    Custom(String),
}

impl Kind {
    /// Metric / audit label.
    pub fn label(&self) -> String {
        match self {
            Kind::Builtin(Detector::CreditCard) => "credit_card".into(),
            Kind::Builtin(Detector::USSSN) => "us_ssn".into(),
            Kind::Builtin(Detector::Email) => "email".into(),
            Kind::Builtin(Detector::ChineseResidentID) => "cn_resident_id".into(),
            Kind::Builtin(Detector::ChineseMobile) => "cn_mobile".into(),
            Kind::Custom(name) => format!("custom:{name}"),
        }
    }
}

/// One detection: byte range in the scanned text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub start: usize,
    pub end: usize,
    pub kind: Kind,
}

/// A compiled filter for one configuration.
#[derive(Debug)]
pub struct Filter {
    regex: Option<Regex>,
    /// [`EMAIL`] anchored at the start only: does an address begin here?
    /// (None when the e-mail detector is off.)
    email_head: Option<Regex>,
    detectors: Vec<Detector>,
    anchored: Vec<(Alternative, Regex)>,
    custom_names: Vec<String>,
    pub action: FilterAction,
    pub input: bool,
    pub output: bool,
}

/// One match of the combined scan: its byte range in the normalised view
/// and the alternative that produced it.
#[derive(Debug, Clone, Copy)]
struct ScanMatch {
    start: usize,
    end: usize,
    which: Option<Alternative>,
}

/// What may stand between the digit groups of a number run
/// (`securechat_crds::sensitive::NUMBER_RUN`).
const SEPARATORS: [char; 5] = [' ', '-', '.', '/', '_'];

/// Separators that are also decimal points, dates and versions: a run
/// written with them is only a card, in groups of four.
const PUNCTUATION: [char; 3] = ['.', '/', '_'];

impl Filter {
    /// Compiles the configured detectors and custom patterns into one
    /// regular expression, by the rules the operator also checks
    /// ([`compile_patterns`]). Fails on a custom pattern that does not
    /// compile, naming it, or on patterns too large together.
    pub fn new(spec: &SensitiveDataSpec) -> Result<Self, PatternError> {
        // The scan uses `find_iter`, which runs the fast DFA engines;
        // resolving capture groups on every match would not. Which
        // alternative matched is then decided by testing the (short) match
        // against each alternative anchored, in order: with leftmost-first
        // semantics the first alternative that matches it whole is the one
        // that produced it.
        let CompiledPatterns { combined, anchored } = compile_patterns(spec)?;
        let email_head = spec.detectors.contains(&Detector::Email).then(|| {
            // A constant pattern that `compile_patterns` has just compiled
            // as an alternative of `combined`.
            Regex::new(&format!("^(?:{EMAIL})")).expect("the built-in e-mail pattern compiles")
        });
        Ok(Self {
            regex: combined,
            email_head,
            anchored,
            detectors: spec.detectors.clone(),
            custom_names: spec
                .custom_patterns
                .iter()
                .map(|p| p.name.clone())
                .collect(),
            action: spec.action,
            input: spec.input,
            output: spec.output,
        })
    }

    fn enabled(&self, d: Detector) -> bool {
        self.detectors.contains(&d)
    }

    /// All detections in `text`, in order, non-overlapping: found in the
    /// normalised view, reported as ranges of `text`.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        if self.regex.is_none() {
            return Vec::new();
        }
        let view = View::new(text);
        let mut out: Vec<Finding> = Vec::new();
        for found in self.find_in_view(view.text()) {
            let (start, end) = view.original_range(text, found.start, found.end);
            match out.last_mut() {
                // Two matches inside what one original character folded to
                // (rare: `⑽` is "(10)") become one redaction.
                Some(last) if start < last.end => last.end = last.end.max(end),
                _ => out.push(Finding {
                    start,
                    end,
                    ..found
                }),
            }
        }
        out
    }

    fn find_in_view(&self, text: &str) -> Vec<Finding> {
        let Some(regex) = &self.regex else {
            return Vec::new();
        };
        let matches: Vec<ScanMatch> = regex
            .find_iter(text)
            .filter(|m| !m.is_empty())
            .map(|m| {
                let which = self
                    .anchored
                    .iter()
                    .find(|(_, r)| r.is_match(m.as_str()))
                    .map(|(alt, _)| *alt);
                ScanMatch {
                    start: m.start(),
                    end: m.end(),
                    which,
                }
            })
            .collect();
        let matches = self.claim_glued_emails(text, matches);
        let mut out: Vec<Finding> = Vec::new();
        for (i, &ScanMatch { start, end, which }) in matches.iter().enumerate() {
            match which {
                Some(Alternative::Email) => out.push(Finding {
                    start,
                    end,
                    kind: Kind::Builtin(Detector::Email),
                }),
                Some(Alternative::Number) => {
                    // A neighbour that is redacted becomes `[FILTERED]` and
                    // glues to nothing: "a@b.io4111…" must not leave the
                    // card standing alone after the e-mail is replaced.
                    let redacted_before = out.last().is_some_and(|f| f.end == start);
                    let redacted_after = matches.get(i + 1).is_some_and(|next| {
                        next.start <= end
                            && matches!(
                                next.which,
                                Some(Alternative::Email | Alternative::Custom(_))
                            )
                    });
                    if is_isolated(text, start, end, redacted_before, redacted_after) {
                        self.classify_run(text, start, end, &mut out);
                    }
                }
                Some(Alternative::Custom(i)) => out.push(Finding {
                    start,
                    end,
                    kind: Kind::Custom(self.custom_names[i].clone()),
                }),
                None => {}
            }
        }
        out
    }

    /// A number run directly followed by `@` whose last group begins an
    /// e-mail address ("5500-0055-5555-5559 20@y.io"): the run took the
    /// address's first characters, and no address can start at the `@`, so
    /// the scan never saw it; once the card in front was redacted,
    /// "20@y.io" stood in clear (found by the `pii_filter` fuzz target).
    /// The address is reported too, from that group on. The run stays whole
    /// (its last group may be a card's, as in "4111 1111 1111 1111@b.co"),
    /// so the two may overlap; `find` merges overlapping findings.
    fn claim_glued_emails(&self, text: &str, matches: Vec<ScanMatch>) -> Vec<ScanMatch> {
        let Some(email_head) = &self.email_head else {
            return matches;
        };
        let mut out = Vec::with_capacity(matches.len());
        let mut email_end = 0;
        for found in matches {
            let ScanMatch { start, end, which } = found;
            if end <= email_end {
                continue;
            }
            out.push(found);
            if which != Some(Alternative::Number) || !text[end..].starts_with('@') {
                continue;
            }
            let Some(separator) = text[start..end].rfind(SEPARATORS) else {
                continue;
            };
            let head = start + separator + 1;
            if let Some(email) = email_head.find(&text[head..]) {
                email_end = head + email.end();
                out.push(ScanMatch {
                    start: head,
                    end: email_end,
                    which: Some(Alternative::Email),
                });
            }
        }
        out
    }

    /// Classifies a run of digits; when the whole run is not sensitive,
    /// tries windows of its separator-delimited groups, so "card 4111 1111
    /// 1111 1111 2025" still finds the card in front of the year.
    fn classify_run(&self, text: &str, start: usize, end: usize, out: &mut Vec<Finding>) {
        if let Some(kind) = self.classify(&text[start..end]) {
            out.push(Finding { start, end, kind });
            return;
        }
        // Group boundaries (byte offsets within text).
        let mut groups = Vec::new();
        let mut group_start = start;
        for (i, c) in text[start..end].char_indices() {
            if SEPARATORS.contains(&c) {
                groups.push((group_start, start + i));
                group_start = start + i + 1;
            }
        }
        groups.push((group_start, end));
        if groups.len() < 2 || groups.len() > 12 {
            return;
        }
        let mut from = 0;
        while from < groups.len() {
            let mut found = None;
            // Longest window first, so a card is not reported as a phone.
            for to in (from..groups.len()).rev() {
                if (from, to) == (0, groups.len() - 1) {
                    continue;
                }
                let (s, e) = (groups[from].0, groups[to].1);
                if let Some(kind) = self.classify(&text[s..e]) {
                    found = Some((
                        to,
                        Finding {
                            start: s,
                            end: e,
                            kind,
                        },
                    ));
                    break;
                }
            }
            match found {
                Some((to, finding)) => {
                    out.push(finding);
                    from = to + 1;
                }
                None => from += 1,
            }
        }
    }

    fn classify(&self, raw: &str) -> Option<Kind> {
        let compact: Vec<u8> = raw.bytes().filter(|b| b.is_ascii_alphanumeric()).collect();
        let check = |d: Detector, ok: bool| (self.enabled(d) && ok).then_some(Kind::Builtin(d));
        if raw.contains(PUNCTUATION) {
            return check(
                Detector::CreditCard,
                checks::is_card(&compact) && checks::is_in_groups_of_four(raw),
            );
        }
        check(
            Detector::ChineseResidentID,
            checks::is_cn_resident_id(&compact),
        )
        .or_else(|| {
            check(
                Detector::CreditCard,
                !raw.starts_with('+') && checks::is_card(&compact),
            )
        })
        .or_else(|| check(Detector::USSSN, checks::is_us_ssn(raw)))
        .or_else(|| check(Detector::ChineseMobile, checks::is_cn_mobile(&compact)))
    }

    /// Replaces every detection with [`REDACTION`].
    pub fn redact(&self, text: &str) -> (String, Vec<Finding>) {
        let findings = self.find(text);
        if findings.is_empty() {
            return (text.to_string(), findings);
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in &findings {
            out.push_str(&text[at..f.start]);
            out.push_str(REDACTION);
            at = f.end;
        }
        out.push_str(&text[at..]);
        (out, findings)
    }
}

/// A number glued to letters or other digits (an id like `ab4111…`, part of
/// a longer token) is not a standalone number. A side glued to a match that
/// is redacted counts as free: after redaction the number stands alone.
fn is_isolated(text: &str, start: usize, end: usize, free_before: bool, free_after: bool) -> bool {
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    (free_before || !before.is_some_and(|c| c.is_ascii_alphanumeric()))
        && (free_after || !after.is_some_and(|c| c.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use securechat_crds::v1alpha1::CustomPattern;

    fn all() -> Filter {
        Filter::new(&SensitiveDataSpec::default()).unwrap()
    }

    fn kinds(text: &str) -> Vec<String> {
        all().find(text).iter().map(|f| f.kind.label()).collect()
    }

    #[test]
    fn true_positives_for_every_detector() {
        let cases = [
            ("card 4111 1111 1111 1111 please", "credit_card"),
            ("card 4111-1111-1111-1111.", "credit_card"),
            ("amex 378282246310005", "credit_card"),
            ("ssn 123-45-6789 ok", "us_ssn"),
            ("mail john.doe+x@example.co.uk now", "email"),
            ("身份证11010519491231002X。", "cn_resident_id"),
            ("id 440308199901010012", "cn_resident_id"),
            ("手机13812345678", "cn_mobile"),
            ("call +86 138 1234 5678", "cn_mobile"),
            ("call 138-1234-5678", "cn_mobile"),
        ];
        for (text, want) in cases {
            assert_eq!(kinds(text), vec![want.to_string()], "{text}");
        }
    }

    /// What input methods and copy-paste produce: each is redacted whole,
    /// as written, and the rest of the text is left as it was.
    #[test]
    fn unicode_forms_are_caught_and_redacted_as_written() {
        let cases = [
            // Full-width digits, letters and @ (Chinese input methods).
            ("卡号４１１１ １１１１ １１１１ １１１１。", "credit_card"),
            (
                "身份证１１０１０５１９４９１２３１００２Ｘ。",
                "cn_resident_id",
            ),
            ("手机１３８１２３４５６７８。", "cn_mobile"),
            ("邮箱john.doe＠example.com。", "email"),
            ("邮箱ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ。", "email"),
            // Zero-width characters inside a number or an address.
            (
                "card 4111\u{200B}1111\u{200B}1111\u{200B}1111 ok",
                "credit_card",
            ),
            ("call 138\u{200D}1234\u{2060}5678 ok", "cn_mobile"),
            ("mail jo\u{200B}hn@exa\u{200C}mple.com ok", "email"),
            ("ssn 123\u{FEFF}-45-6789 ok", "us_ssn"),
            // No-break, narrow, ideographic and other Unicode spaces.
            (
                "card 4111\u{00A0}1111\u{00A0}1111\u{00A0}1111 ok",
                "credit_card",
            ),
            (
                "card 4111\u{202F}1111\u{2009}1111\u{3000}1111 ok",
                "credit_card",
            ),
            ("ssn 123\u{00A0}45\u{00A0}6789 ok", "us_ssn"),
            // Dots, slashes and underscores between a card's groups.
            ("card 4111.1111.1111.1111 ok", "credit_card"),
            ("card 4111/1111/1111/1111 ok", "credit_card"),
            ("card 4111_1111_1111_1111 ok", "credit_card"),
            // En dash, em dash, minus sign.
            ("ssn 123\u{2013}45\u{2013}6789 ok", "us_ssn"),
            ("ssn 123\u{2014}45\u{2212}6789 ok", "us_ssn"),
            ("call 138\u{2013}1234\u{2013}5678 ok", "cn_mobile"),
            // Arabic-Indic and Persian digits.
            ("بطاقة ٤١١١ ١١١١ ١١١١ ١١١١ ok", "credit_card"),
            ("card ۴۱۱۱۱۱۱۱۱۱۱۱۱۱۱۱ ok", "credit_card"),
        ];
        for (text, want) in cases {
            assert_eq!(kinds(text), vec![want.to_string()], "{text}");
            let (out, _) = all().redact(text);
            assert_eq!(out.matches(REDACTION).count(), 1, "{text} -> {out}");
            // Everything around the number is kept byte for byte.
            let (head, tail) = out.split_once(REDACTION).unwrap();
            assert!(
                text.starts_with(head) && text.ends_with(tail),
                "{text} -> {out}"
            );
            assert!(!head.ends_with(|c: char| c.is_ascii_digit()), "{out}");
            assert!(all().find(&out).is_empty(), "{out}");
        }
    }

    #[test]
    fn punctuated_numbers_that_are_not_cards_are_left_alone() {
        for text in [
            "about 3.141592653589796", // a decimal whose digits pass Luhn
            "see 4111.1111.1111.1112", // fails Luhn
            "dated 2025/11/26 and 26.11.2025",
            "ip 192.168.100.200",
            "call 138.1234.5678", // a phone only with spaces or dashes
            "file_2025_11_26_1200",
        ] {
            assert!(kinds(text).is_empty(), "{text}: {:?}", kinds(text));
        }
    }

    #[test]
    fn false_positives_are_left_alone() {
        for text in [
            "4111 1111 1111 1112",     // fails Luhn
            "order 1234567890123",     // 13 digits failing Luhn
            "110105194912310021",      // bad ID checksum
            "12812345678",             // not a mobile prefix
            "000-12-3456",             // never-issued SSN
            "123456789",               // bare nine digits
            "version 1.2.3 at 10:30",  // small numbers
            "user@localhost",          // no TLD
            "tokenab4111111111111111", // glued to letters
            "year 2025, page 12",
        ] {
            assert!(kinds(text).is_empty(), "{text}: {:?}", kinds(text));
        }
    }

    #[test]
    fn an_address_that_starts_with_a_number_group_is_not_left_behind() {
        let cases = [
            ("5500-0055-5555-5559 20@y.io", "[FILTERED] [FILTERED]"),
            (
                "call 138 1234 5678 9@x.org now",
                "call [FILTERED] [FILTERED] now",
            ),
            // The card's own last group starts the address: one redaction.
            ("4111 1111 1111 1111@b.co", "[FILTERED]"),
        ];
        for (text, want) in cases {
            let (out, _) = all().redact(text);
            assert_eq!(out, want, "{text}");
            assert!(all().find(&out).is_empty(), "{out}");
        }
    }

    #[test]
    fn redacts_each_match_in_one_pass() {
        let (out, findings) = all()
            .redact("a 4111111111111111, b x@y.io, c 13812345678 and 4111 1111 1111 1111 2025");
        assert_eq!(
            out,
            "a [FILTERED], b [FILTERED], c [FILTERED] and [FILTERED] 2025"
        );
        assert_eq!(findings.len(), 4);
    }

    #[test]
    fn a_number_glued_to_a_redacted_match_is_still_checked() {
        // The re-scan property of fuzz/pii_filter: the card stood alone
        // once the match glued to it became [FILTERED], and leaked.
        let f = Filter::new(&SensitiveDataSpec {
            custom_patterns: vec![CustomPattern {
                name: "employee".into(),
                regex: "EMP-[0-9]{6}".into(),
            }],
            ..Default::default()
        })
        .unwrap();
        for (text, want) in [
            ("ab@c.de4111111111111111", "[FILTERED][FILTERED]"),
            ("4111 1111 1111 1111a@b.co", "[FILTERED][FILTERED]"),
            ("4111111111111111EMP-123456 ok", "[FILTERED][FILTERED] ok"),
        ] {
            let (out, _) = f.redact(text);
            assert_eq!(out, want, "{text}");
            assert!(f.find(&out).is_empty(), "{out}");
        }
        // Glued to text that stays, a number is still part of a token.
        assert!(f.find("tokenab4111111111111111").is_empty());
    }

    #[test]
    fn only_enabled_detectors_fire() {
        let spec = SensitiveDataSpec {
            detectors: vec![Detector::Email],
            ..Default::default()
        };
        let f = Filter::new(&spec).unwrap();
        assert_eq!(f.find("4111111111111111 a@b.cd").len(), 1);
        let none = Filter::new(&SensitiveDataSpec {
            detectors: vec![],
            ..Default::default()
        })
        .unwrap();
        assert!(none.find("a@b.cd 4111111111111111").is_empty());
    }

    #[test]
    fn custom_patterns_are_named_and_bad_ones_refused() {
        let spec = SensitiveDataSpec {
            custom_patterns: vec![CustomPattern {
                name: "employee".into(),
                regex: "EMP-[0-9]{6}".into(),
            }],
            ..Default::default()
        };
        let f = Filter::new(&spec).unwrap();
        let (out, found) = f.redact("badge EMP-123456 ok");
        assert_eq!(out, "badge [FILTERED] ok");
        assert_eq!(found[0].kind.label(), "custom:employee");
        let bad = SensitiveDataSpec {
            custom_patterns: vec![CustomPattern {
                name: "x".into(),
                regex: "(unclosed".into(),
            }],
            ..Default::default()
        };
        assert!(Filter::new(&bad).is_err());
    }
}
