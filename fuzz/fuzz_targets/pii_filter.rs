//! The sensitive-data scanner (server/src/pii: `Filter`, `StreamFilter`),
//! fed as the server feeds it: model output bytes cut at arbitrary points
//! (inside multi-byte characters and inside matches), made into text by the
//! same `Utf8Stream` the generator uses, then filtered chunk by chunk.
//!
//! Properties:
//! - the output holds nothing to redact: re-scanning it finds nothing, for
//!   the one-shot and the streamed result alike;
//! - streaming gives the one-shot output (Redact), or the text before the
//!   first detection (Reject), whatever the cuts. The stream holds back at
//!   most `MAX_HOLD` (256) bytes of a run of e-mail / number characters, so
//!   this one is checked when no such run is longer than that;
//! - the filter matches a normalised view: the text's twin as input methods
//!   and copy-paste write it (full-width digits and `＠`, no-break spaces,
//!   a zero-width space after every digit) has the same detections, and
//!   its redacted form holds nothing to redact either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securechat_crds::v1alpha1::{CustomPattern, Detector, FilterAction, SensitiveDataSpec};
use securechat_server::inference::Utf8Stream;
use securechat_server::pii::{Filter, StreamFilter};

/// The stream's documented hold bound (server/src/pii/stream.rs).
const MAX_HOLD: usize = 256;

const DETECTORS: [Detector; 5] = [
    Detector::CreditCard,
    Detector::USSSN,
    Detector::Email,
    Detector::ChineseResidentID,
    Detector::ChineseMobile,
];

/// `[flags][n][n chunk lengths][text]`: flags bits 0-4 enable the
/// detectors (none set: the default, all), bit 5 adds a custom pattern made
/// of word characters as operators write them (an employee number), bit 6
/// selects Reject. Chunk lengths are bytes, cycled over the text (none: the
/// text in one piece).
struct Input<'a> {
    detectors: u8,
    custom: bool,
    reject: bool,
    cuts: &'a [u8],
    text: String,
}

impl<'a> Input<'a> {
    fn parse(data: &'a [u8]) -> Option<Self> {
        let (&flags, rest) = data.split_first()?;
        let (&n, rest) = rest.split_first()?;
        let n = usize::from(n).min(rest.len());
        let (cuts, text) = rest.split_at(n);
        Some(Self {
            detectors: flags & 0x1f,
            custom: flags & 0x20 != 0,
            reject: flags & 0x40 != 0,
            cuts,
            text: String::from_utf8_lossy(text).into_owned(),
        })
    }
}

fn spec(input: &Input<'_>) -> SensitiveDataSpec {
    let mut spec = SensitiveDataSpec::default();
    if input.detectors != 0 {
        spec.detectors = DETECTORS
            .iter()
            .enumerate()
            .filter(|(i, _)| input.detectors & (1 << i) != 0)
            .map(|(_, d)| *d)
            .collect();
    }
    if input.custom {
        spec.custom_patterns.push(CustomPattern {
            name: "employee".into(),
            regex: "EMP-[0-9]{6}".into(),
        });
    }
    if input.reject {
        spec.action = FilterAction::Reject;
    }
    spec
}

/// Longest run of characters the stream may hold back (those of e-mail
/// addresses and spaced digit groups, and any non-ASCII byte, which may
/// fold to one); a superset, so it is conservative.
fn longest_holdable_run(text: &str) -> usize {
    let holdable = |b: u8| {
        !b.is_ascii()
            || b.is_ascii_alphanumeric()
            || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-' | b'@' | b' ' | b'/')
    };
    text.bytes()
        .fold((0, 0), |(longest, run), b| {
            let run = if holdable(b) { run + 1 } else { 0 };
            (longest.max(run), run)
        })
        .0
}

/// `text` as a Chinese input method and a web page's clipboard write it:
/// full-width digits and at sign, no-break spaces, a zero-width space after
/// every digit.
fn twin(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for c in text.chars() {
        match c {
            '0'..='9' => {
                out.push(char::from_u32(u32::from(c) - u32::from('0') + 0xFF10).unwrap_or(c));
                out.push('\u{200B}');
            }
            '@' => out.push('＠'),
            ' ' => out.push('\u{00A0}'),
            _ => out.push(c),
        }
    }
    out
}

fn kinds(filter: &Filter, text: &str) -> Vec<String> {
    filter.find(text).iter().map(|f| f.kind.label()).collect()
}

fn streamed(filter: &Filter, bytes: &[u8], cuts: &[u8]) -> (String, bool) {
    let mut utf8 = Utf8Stream::default();
    let mut stream = StreamFilter::new(filter);
    let mut out = String::new();
    let mut rejected = false;
    let mut rest = bytes;
    let mut sizes = cuts.iter().map(|c| usize::from(*c)).cycle();
    while !rest.is_empty() {
        let n = if cuts.is_empty() {
            rest.len()
        } else {
            sizes.next().unwrap_or(1).clamp(1, rest.len())
        };
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let released = stream.push(&utf8.push(chunk));
        out.push_str(&released.text);
        rejected |= released.rejected;
    }
    let released = stream.push(&utf8.finish());
    out.push_str(&released.text);
    rejected |= released.rejected;
    let released = stream.finish();
    out.push_str(&released.text);
    (out, rejected | released.rejected)
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let filter = Filter::new(&spec(&input)).expect("the fixed patterns compile");
    let text = input.text.as_str();
    let findings = filter.find(text);
    for f in &findings {
        assert!(f.start < f.end && f.end <= text.len(), "bad range {f:?}");
        assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end));
    }
    let one_shot = match filter.action {
        FilterAction::Reject => match findings.first() {
            Some(first) => text[..first.start].to_string(),
            None => text.to_string(),
        },
        _ => filter.redact(text).0,
    };
    let leftover = filter.find(&one_shot);
    assert!(
        leftover.is_empty(),
        "one-shot output still holds {leftover:?}\ninput:  {text:?}\noutput: {one_shot:?}"
    );

    let twin = twin(text);
    assert_eq!(
        kinds(&filter, &twin),
        kinds(&filter, text),
        "the twin's detections differ\ninput: {text:?}\ntwin:  {twin:?}"
    );
    let (twin_out, _) = filter.redact(&twin);
    let leftover = filter.find(&twin_out);
    assert!(
        leftover.is_empty(),
        "the twin's output still holds {leftover:?}\ntwin:   {twin:?}\noutput: {twin_out:?}"
    );

    let (stream_out, rejected) = streamed(&filter, text.as_bytes(), input.cuts);
    let leftover = filter.find(&stream_out);
    assert!(
        leftover.is_empty(),
        "streamed output still holds {leftover:?}\ninput:  {text:?}\noutput: {stream_out:?}"
    );
    if longest_holdable_run(text) <= MAX_HOLD {
        assert_eq!(
            stream_out, one_shot,
            "streamed and one-shot differ\ninput: {text:?}\ncuts: {:?}",
            input.cuts
        );
        if filter.action == FilterAction::Reject {
            assert_eq!(rejected, !findings.is_empty(), "reject decision differs");
        }
    }
});
