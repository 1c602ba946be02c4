//! The view the detectors match on. People write sensitive numbers with
//! whatever their keyboard or clipboard gives: full-width digits and `＠`
//! from Chinese and Japanese input methods, no-break and ideographic spaces,
//! en dashes from word processors, zero-width spaces and joiners pasted from
//! web pages, Arabic-Indic digits. Matching the raw text, each of these
//! walked around the filter.
//!
//! Each character is folded on its own: zero-width characters are dropped,
//! Unicode spaces become `' '`, dash variants `'-'`, other scripts' decimal
//! digits their ASCII digit, and everything else its NFKC form (which is
//! what turns `４` into `4`, `＠` into `@` and `Ｘ` into `X`). Folding per
//! character, rather than NFKC over the whole text, keeps a simple map: every
//! byte of the view knows the original character it came from, so a match in
//! the view redacts exactly the original characters behind it. (Whole-text
//! NFKC would also compose base letters with combining marks; no detector
//! matches either form, so nothing is lost.)

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization;

/// The folded text and, when it differs from the original, where each of
/// its bytes came from.
pub(super) struct View<'a> {
    text: Cow<'a, str>,
    /// For each byte of `text`: the byte offset in the original of the
    /// character it was folded from. `None`: the view is the original.
    origin: Option<Vec<usize>>,
}

impl<'a> View<'a> {
    pub(super) fn new(original: &'a str) -> Self {
        // ASCII folds to itself: the common case costs one scan.
        if original.is_ascii() {
            return Self::unchanged(original);
        }
        let mut text = String::with_capacity(original.len());
        let mut origin = Vec::with_capacity(original.len());
        let mut changed = false;
        for (at, c) in original.char_indices() {
            let before = text.len();
            fold_into(c, &mut text);
            changed |= text.len() - before != c.len_utf8() || !text[before..].starts_with(c);
            origin.resize(text.len(), at);
        }
        if !changed {
            return Self::unchanged(original);
        }
        Self {
            text: Cow::Owned(text),
            origin: Some(origin),
        }
    }

    fn unchanged(original: &'a str) -> Self {
        Self {
            text: Cow::Borrowed(original),
            origin: None,
        }
    }

    pub(super) fn text(&self) -> &str {
        &self.text
    }

    /// The original byte range behind the view's `start..end` (not empty):
    /// from the first to the last original character any of its bytes came
    /// from, whole.
    pub(super) fn original_range(
        &self,
        original: &str,
        start: usize,
        end: usize,
    ) -> (usize, usize) {
        let Some(origin) = &self.origin else {
            return (start, end);
        };
        let first = origin[start];
        let last = origin[end - 1];
        let last_len = original[last..].chars().next().map_or(0, char::len_utf8);
        (first, last + last_len)
    }
}

/// Appends what `c` folds to (see the module header); nothing for a
/// zero-width character.
pub(super) fn fold_into(c: char, out: &mut String) {
    if is_zero_width(c) {
        return;
    }
    if c.is_ascii() {
        out.push(c);
    } else if c.is_whitespace() {
        out.push(' ');
    } else if is_dash(c) {
        out.push('-');
    } else if let Some(digit) = decimal_digit(c) {
        out.push(digit);
    } else {
        out.extend(c.nfkc());
    }
}

/// Invisible characters that text pasted from web pages and chat apps
/// carries inside words and numbers (the soft hyphen shows only at a line
/// break).
fn is_zero_width(c: char) -> bool {
    matches!(
        c,
        '\u{200B}' // zero width space
            | '\u{200C}' // zero width non-joiner
            | '\u{200D}' // zero width joiner
            | '\u{2060}' // word joiner
            | '\u{FEFF}' // zero width no-break space (BOM)
            | '\u{00AD}' // soft hyphen
            | '\u{180E}' // Mongolian vowel separator
    )
}

/// Dashes that stand for a hyphen between digit groups (NFKC leaves all of
/// these but the full-width and small hyphen-minus as they are).
fn is_dash(c: char) -> bool {
    matches!(
        c,
        '\u{2010}'
            ..='\u{2015}' // hyphen .. horizontal bar, en and em dash included
            | '\u{2212}' // minus sign
            | '\u{FE58}' // small em dash
            | '\u{FE63}' // small hyphen-minus
            | '\u{FF0D}' // full-width hyphen-minus
    )
}

/// Decimal digits of scripts whose numbers are written with their own
/// digits; NFKC keeps them distinct from ASCII digits.
const DIGIT_ZEROS: [u32; 5] = [
    0x0660, // Arabic-Indic
    0x06F0, // Extended Arabic-Indic (Persian, Urdu)
    0x0966, // Devanagari
    0x09E6, // Bengali
    0x0E50, // Thai
];

fn decimal_digit(c: char) -> Option<char> {
    let code = u32::from(c);
    DIGIT_ZEROS
        .iter()
        .find(|&&zero| (zero..zero + 10).contains(&code))
        .and_then(|zero| char::from_digit(code - zero, 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(text: &str) -> String {
        View::new(text).text().to_string()
    }

    #[test]
    fn folds_what_keyboards_and_clipboards_produce() {
        let cases = [
            ("４１１１ １１１１", "4111 1111"),
            ("１１０１０５１９４９１２３１００２Ｘ", "11010519491231002X"),
            ("john＠example．com", "john@example.com"),
            (
                "4111\u{200B}1111\u{200D}1111\u{2060}1111",
                "4111111111111111",
            ),
            (
                "4111\u{00A0}1111\u{3000}1111\u{202F}1111",
                "4111 1111 1111 1111",
            ),
            ("123\u{2013}45\u{2014}6789", "123-45-6789"),
            ("٤١١١ ۱۱۱۱", "4111 1111"),
            ("身份证", "身份证"),
        ];
        for (text, want) in cases {
            assert_eq!(view(text), want, "{text:?}");
        }
    }

    #[test]
    fn a_view_range_maps_back_to_whole_original_characters() {
        let original = "id：１２３\u{200B}４ end";
        let v = View::new(original);
        let start = v.text().find('1').unwrap();
        let end = v.text().find('4').unwrap() + 1;
        let (s, e) = v.original_range(original, start, end);
        assert_eq!(&original[s..e], "１２３\u{200B}４");
    }

    #[test]
    fn text_that_folds_to_itself_is_not_copied() {
        for text in ["plain ascii", "中文没有数字", "é"] {
            assert!(matches!(View::new(text).text, Cow::Borrowed(_)), "{text}");
        }
    }
}
