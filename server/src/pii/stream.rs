//! Streaming redaction: text arrives in chunks (SSE tokens) and a number may
//! be split across two of them. The filter holds back only the tail that
//! could still grow into a match and releases everything before it at once.

use super::normalize::fold_into;
use super::{Filter, Finding};
use securechat_crds::v1alpha1::FilterAction;

/// Longest tail ever held back. A longer unbroken run of word characters is
/// released from its front (no built-in detector matches anything longer
/// than an e-mail address, 254 bytes).
const MAX_HOLD: usize = 256;

/// What one step releases.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    pub text: String,
    pub findings: Vec<Finding>,
    /// Reject mode found something: `text` stops before it and the stream
    /// must end.
    pub rejected: bool,
}

/// Per-response state.
pub struct StreamFilter<'a> {
    filter: &'a Filter,
    pending: String,
    rejected: bool,
}

impl<'a> StreamFilter<'a> {
    pub fn new(filter: &'a Filter) -> Self {
        Self {
            filter,
            pending: String::new(),
            rejected: false,
        }
    }

    /// Adds a chunk; returns what is now safe to send.
    pub fn push(&mut self, chunk: &str) -> Released {
        if self.rejected {
            return Released::default();
        }
        self.pending.push_str(chunk);
        let cut = hold_from(&self.pending);
        let ready: String = self.pending.drain(..cut).collect();
        self.scan(&ready)
    }

    /// The stream ended: release the rest.
    pub fn finish(&mut self) -> Released {
        if self.rejected {
            return Released::default();
        }
        let rest = std::mem::take(&mut self.pending);
        self.scan(&rest)
    }

    fn scan(&mut self, text: &str) -> Released {
        let (redacted, findings) = self.filter.redact(text);
        if self.filter.action == FilterAction::Reject
            && let Some(first) = findings.first()
        {
            self.rejected = true;
            return Released {
                text: text[..first.start].to_string(),
                findings,
                rejected: true,
            };
        }
        Released {
            text: redacted,
            findings,
            rejected: false,
        }
    }
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-' | '@' | '/')
}

/// How a character counts for the hold, judged by what it folds to in the
/// filter's normalised view (so `４`, `＠` and a no-break space between
/// digits are held like `4`, `@` and a space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Folds to nothing (zero-width): held, and invisible to its neighbours.
    Invisible,
    /// Folds to a space.
    Space,
    /// Folds to e-mail / number characters; `digit`: its fold starts and
    /// ends with one.
    Word {
        digit: bool,
    },
    Other,
}

fn hold_class(c: char) -> Hold {
    let digit = |ch: Option<char>| ch.is_some_and(|d| d.is_ascii_digit());
    if c.is_ascii() {
        // Folds to itself; no allocation for the common case.
        return match c {
            ' ' => Hold::Space,
            _ if is_word(c) => Hold::Word {
                digit: digit(Some(c)),
            },
            _ => Hold::Other,
        };
    }
    let mut folded = String::new();
    fold_into(c, &mut folded);
    if folded.is_empty() {
        Hold::Invisible
    } else if folded == " " {
        Hold::Space
    } else if folded.chars().all(is_word) {
        Hold::Word {
            digit: digit(folded.chars().next()) && digit(folded.chars().next_back()),
        }
    } else {
        Hold::Other
    }
}

/// Byte index where the tail that might still be part of a match begins:
/// the trailing run of e-mail/number characters, including single spaces
/// between digits (card numbers are written in groups).
fn hold_from(text: &str) -> usize {
    let mut start = text.len();
    // The class of the nearest visible character right of the cursor.
    let mut next: Option<Hold> = None;
    let mut iter = text.char_indices().rev().peekable();
    while let Some((i, c)) = iter.next() {
        let class = hold_class(c);
        let keep = match class {
            Hold::Invisible | Hold::Word { .. } => true,
            // "4111 1111" continues across the space; "4111 " at the very
            // end may continue with the next chunk.
            Hold::Space => {
                let prev = iter.peek().map(|&(_, p)| hold_class(p));
                matches!(prev, Some(Hold::Word { digit: true } | Hold::Invisible))
                    && next.is_none_or(|n| matches!(n, Hold::Word { .. }))
            }
            Hold::Other => false,
        };
        if !keep {
            break;
        }
        start = i;
        if class != Hold::Invisible {
            next = Some(class);
        }
    }
    if text.len() - start > MAX_HOLD {
        let mut cut = text.len() - MAX_HOLD;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        return cut;
    }
    start
}

#[cfg(test)]
mod tests {
    use super::*;
    use securechat_crds::v1alpha1::SensitiveDataSpec;

    fn run(filter: &Filter, chunks: &[&str]) -> (Vec<String>, String) {
        let mut s = StreamFilter::new(filter);
        let mut emitted = Vec::new();
        for c in chunks {
            emitted.push(s.push(c).text);
        }
        emitted.push(s.finish().text);
        let whole = emitted.concat();
        (emitted, whole)
    }

    #[test]
    fn a_card_split_across_chunks_is_caught() {
        let f = Filter::new(&SensitiveDataSpec::default()).unwrap();
        let (_, whole) = run(&f, &["my card is 4111 11", "11 1111 ", "1111 thanks"]);
        assert_eq!(whole, "my card is [FILTERED] thanks");
        let (_, whole) = run(&f, &["mail jo", "hn@exam", "ple.com."]);
        assert_eq!(whole, "mail [FILTERED].");
        let (_, whole) = run(&f, &["手机138", "1234", "5678。"]);
        assert_eq!(whole, "手机[FILTERED]。");
    }

    #[test]
    fn unicode_forms_split_across_chunks_are_caught() {
        let f = Filter::new(&SensitiveDataSpec::default()).unwrap();
        for (chunks, want) in [
            (
                &["卡号４１１１ １１", "１１ １１１１ ", "１１１１。"][..],
                "卡号[FILTERED]。",
            ),
            (
                &["手机１３８", "１２３４", "５６７８。"],
                "手机[FILTERED]。",
            ),
            (
                &["card 4111\u{00A0}", "1111\u{00A0}1111\u{00A0}", "1111 ok"],
                "card [FILTERED] ok",
            ),
            (
                &["card 4111\u{200B}", "1111\u{200B}1111\u{200B}1111", " ok"],
                "card [FILTERED] ok",
            ),
            (&["card 4111.1111.", "1111.1111 ok"], "card [FILTERED] ok"),
            (&["card 4111/1111/", "1111/1111 ok"], "card [FILTERED] ok"),
            (
                &["ssn 123\u{2013}45", "\u{2013}6789 ok"],
                "ssn [FILTERED] ok",
            ),
            (&["mail john＠exam", "ple.com。"], "mail [FILTERED]。"),
        ] {
            let (_, whole) = run(&f, chunks);
            assert_eq!(whole, want, "{chunks:?}");
        }
    }

    #[test]
    fn safe_text_is_released_immediately() {
        let f = Filter::new(&SensitiveDataSpec::default()).unwrap();
        let mut s = StreamFilter::new(&f);
        assert_eq!(s.push("Hello there, ").text, "Hello there, ");
        // Only the last word (which could become an e-mail) waits.
        assert_eq!(s.push("how are you").text, "how are ");
        assert_eq!(s.push("? Fine").text, "you? ");
        assert_eq!(s.finish().text, "Fine");
    }

    #[test]
    fn the_hold_is_bounded() {
        let f = Filter::new(&SensitiveDataSpec::default()).unwrap();
        let mut s = StreamFilter::new(&f);
        let released = s.push(&"a".repeat(1000)).text;
        assert_eq!(released.len(), 1000 - MAX_HOLD);
    }

    #[test]
    fn reject_mode_stops_the_stream_before_the_match() {
        let spec = SensitiveDataSpec {
            action: FilterAction::Reject,
            ..Default::default()
        };
        let f = Filter::new(&spec).unwrap();
        let mut s = StreamFilter::new(&f);
        let first = s.push("ssn is 123-45-");
        assert_eq!(first.text, "ssn is ");
        let second = s.push("6789 and more");
        assert!(second.rejected && second.text.is_empty());
        assert_eq!(s.push("later").text, "");
        assert_eq!(s.finish(), Released::default());
    }
}
