//! From token bytes to the text users see: whole UTF-8 characters only, and
//! nothing of a stop sequence.

/// Buffers token bytes until they form complete UTF-8 characters. A
/// character split across tokens is emitted once its last byte arrives.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Appends bytes; returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Validated just above.
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // Invalid bytes (a model can emit any byte): show the
                        // replacement character and move past them.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        // An incomplete character at the end: wait for more.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// Flushes what is left at the end of generation.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

/// What [`StopFilter::push`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text safe to emit; generation goes on.
    Emit(String),
    /// A stop sequence appeared: emit this text (what preceded it) and stop.
    Stopped(String),
}

/// Holds back text that could be the start of a stop sequence, so a stop
/// string is never (even partly) streamed to the client.
#[derive(Debug)]
pub struct StopFilter {
    stops: Vec<String>,
    held: String,
}

impl StopFilter {
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopOutcome {
        self.held.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let before = self.held[..at].to_owned();
            self.held.clear();
            return StopOutcome::Stopped(before);
        }
        // Keep the longest tail that some stop sequence starts with.
        let keep_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let emit = self.held[..keep_from].to_owned();
        self.held.drain(..keep_from);
        StopOutcome::Emit(emit)
    }

    /// Releases held text when generation ends for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_byte_character_split_across_tokens() {
        let mut s = Utf8Stream::default();
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(s.push(&euro[..1]), "");
        assert_eq!(s.push(&euro[1..2]), "");
        assert_eq!(s.push(&[euro[2], b'!']), "€!");
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&[b'a', 0xFF, b'b']), "a\u{FFFD}b");
        assert_eq!(s.push(&[0xE2, 0x82]), "");
        assert_eq!(s.finish(), "\u{FFFD}");
    }

    #[test]
    fn stop_sequence_split_across_pushes_is_never_emitted() {
        let mut f = StopFilter::new(&["</end>".to_owned()]);
        assert_eq!(f.push("hello </"), StopOutcome::Emit("hello ".into()));
        assert_eq!(f.push("en"), StopOutcome::Emit(String::new()));
        assert_eq!(f.push("d> more"), StopOutcome::Stopped(String::new()));
    }

    #[test]
    fn false_start_is_released() {
        let mut f = StopFilter::new(&["STOP".to_owned()]);
        assert_eq!(f.push("ST"), StopOutcome::Emit(String::new()));
        assert_eq!(f.push("ART"), StopOutcome::Emit("START".into()));
        assert_eq!(f.push("ok ST"), StopOutcome::Emit("ok ".into()));
        assert_eq!(f.finish(), "ST");
    }

    #[test]
    fn earliest_stop_wins_and_text_before_it_is_kept() {
        let mut f = StopFilter::new(&["b".to_owned(), "xa".to_owned(), String::new()]);
        assert_eq!(f.push("1xab"), StopOutcome::Stopped("1".into()));
    }
}
