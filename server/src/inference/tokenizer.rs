//! The tokenizer of a chat model: rebuilt from GGUF metadata with the
//! `tokenizers` crate so that token ids match llama.cpp's, or read from a
//! Hugging Face `tokenizer.json` (ChatGLM3, GLM-4).
//!
//! Prompt text comes in two kinds of segment: what the chat template produced
//! is parsed for control tokens (`<|im_start|>`); what users wrote is not, so
//! a user cannot forge turn boundaries. One encoder serves both, switched per
//! segment: a second copy of the vocabulary and merges cost ~5 MiB resident.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use super::error::{InferenceError, Result};
use super::gguf::Metadata;

// llama.cpp's token types (llama_token_type).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// A piece of prompt text and whether it may contain control tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Produced by the chat template: control tokens are structure.
    Structure(String),
    /// Written by a user: control-token strings are just text.
    Content(String),
}

pub struct ChatTokenizer {
    /// Locked for the length of one prompt's encoding, which sets its
    /// control-token parsing per segment.
    encoder: Mutex<Tokenizer>,
    /// The bytes each token id stands for; empty for control tokens, which
    /// are never shown to users.
    token_bytes: Vec<Vec<u8>>,
    control: Vec<bool>,
    pub bos: Option<u32>,
    pub eos: u32,
    /// Tokens that end a turn besides `eos` (e.g. `<|im_end|>` when eos is
    /// `<|endoftext|>`).
    pub end_of_turn: Vec<u32>,
    tokens: Vec<String>,
}

impl ChatTokenizer {
    pub(crate) fn from_metadata(md: Metadata<'_>) -> Result<Self> {
        let model = md.string("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(InferenceError::Unsupported(format!(
                "tokenizer model `{model}` (only byte-level BPE, `gpt2`, is supported)"
            )));
        }
        let pre = if md.contains("tokenizer.ggml.pre") {
            md.string("tokenizer.ggml.pre")?
        } else {
            "default"
        };
        let tokens: Vec<String> = md
            .strings("tokenizer.ggml.tokens")?
            .into_iter()
            .map(str::to_owned)
            .collect();
        let types = if md.contains("tokenizer.ggml.token_type") {
            md.integers("tokenizer.ggml.token_type")?
        } else {
            vec![1; tokens.len()]
        };
        if types.len() != tokens.len() {
            return Err(InferenceError::Metadata(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let merges = md
            .strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| InferenceError::Metadata(format!("merge `{m}` has no space")))
            })
            .collect::<Result<Vec<_>>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| InferenceError::Tokenizer(format!("BPE: {e}")))?;

        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer(pre)?));

        // Control tokens are special (parsed only in template segments);
        // user-defined ones are matched everywhere, as llama.cpp does.
        let control: Vec<bool> = types.iter().map(|&t| t == TOKEN_TYPE_CONTROL).collect();
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == TOKEN_TYPE_CONTROL)
            .map(|(tok, _)| AddedToken::from(tok.clone(), true))
            .collect();
        let user_defined: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == TOKEN_TYPE_USER_DEFINED)
            .map(|(tok, _)| AddedToken::from(tok.clone(), false))
            .collect();
        tokenizer
            .add_special_tokens(specials)
            .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;
        tokenizer
            .add_tokens(user_defined)
            .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;

        let byte_of = unicode_to_byte();
        let token_bytes = tokens
            .iter()
            .zip(&control)
            .map(|(tok, &is_control)| {
                if is_control {
                    Vec::new()
                } else {
                    token_to_bytes(tok, &byte_of)
                }
            })
            .collect();

        let id = |key: &str| -> Result<Option<u32>> {
            if md.contains(key) {
                Ok(Some(md.usize(key)? as u32))
            } else {
                Ok(None)
            }
        };
        let eos = id("tokenizer.ggml.eos_token_id")?.ok_or_else(|| {
            InferenceError::Metadata("missing key `tokenizer.ggml.eos_token_id`".into())
        })?;
        let add_bos = md.contains("tokenizer.ggml.add_bos_token")
            && md.bool("tokenizer.ggml.add_bos_token")?;
        let bos = if add_bos {
            id("tokenizer.ggml.bos_token_id")?
        } else {
            None
        };
        let mut end_of_turn = Vec::new();
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(t) = id(key)? {
                end_of_turn.push(t);
            }
        }
        // Chat models whose metadata names only <|endoftext|> as eos still end
        // turns with <|im_end|> (ChatML); llama.cpp treats it as end-of-generation too.
        for name in ["<|im_end|>", "<|eot_id|>", "<|end|>"] {
            if let Some(i) = tokens.iter().position(|t| t == name)
                && control[i]
                && !end_of_turn.contains(&(i as u32))
            {
                end_of_turn.push(i as u32);
            }
        }

        Ok(Self {
            encoder: Mutex::new(tokenizer),
            token_bytes,
            control,
            bos,
            eos,
            end_of_turn,
            tokens,
        })
    }

    /// A Hugging Face `tokenizer.json`. Its added special tokens are the
    /// control tokens; generation ends at `end_ids` (and at `eos`). No BOS is
    /// added: the chat format spells out its own prefix tokens.
    pub fn from_tokenizer_json(tokenizer: Tokenizer, eos: u32, end_ids: Vec<u32>) -> Result<Self> {
        let size = tokenizer.get_vocab_size(true);
        let mut tokens = vec![String::new(); size];
        for (token, id) in tokenizer.get_vocab(true) {
            match tokens.get_mut(id as usize) {
                Some(slot) => *slot = token,
                None => {
                    return Err(InferenceError::Tokenizer(format!(
                        "token id {id} of `{token}` is past the vocabulary size {size}"
                    )));
                }
            }
        }
        let mut control = vec![false; size];
        for (id, added) in tokenizer.get_added_tokens_decoder() {
            if added.special
                && let Some(c) = control.get_mut(id as usize)
            {
                *c = true;
            }
        }
        let spelling = if is_byte_level(tokenizer.get_decoder()) {
            Spelling::ByteLevel(unicode_to_byte())
        } else {
            Spelling::SentencePiece
        };
        let token_bytes = tokens
            .iter()
            .zip(&control)
            .map(|(tok, &is_control)| {
                if is_control {
                    Vec::new()
                } else {
                    spelling.bytes(tok)
                }
            })
            .collect();
        if eos as usize >= size {
            return Err(InferenceError::Tokenizer(format!(
                "end-of-sequence id {eos} is past the vocabulary size {size}"
            )));
        }
        Ok(Self {
            encoder: Mutex::new(tokenizer),
            token_bytes,
            control,
            bos: None,
            eos,
            end_of_turn: end_ids.into_iter().filter(|&i| i != eos).collect(),
            tokens,
        })
    }

    /// The id of a token spelled exactly `token`, if the vocabulary has one.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokens
            .iter()
            .position(|t| t == token)
            .map(|i| i as u32)
    }

    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// Encodes prompt segments; a BOS token is prepended when the model asks for one.
    pub fn encode_segments(&self, segments: &[Segment]) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self.bos.into_iter().collect();
        // A panic mid-encode leaves nothing half-done: the flag is set again
        // before every segment.
        let mut tokenizer = self.encoder.lock().unwrap_or_else(PoisonError::into_inner);
        for segment in segments {
            let (user_text, text) = match segment {
                Segment::Structure(t) => (false, t),
                Segment::Content(t) => (true, t),
            };
            if text.is_empty() {
                continue;
            }
            // "Encode special tokens" as text, i.e. do not parse them.
            tokenizer.set_encode_special_tokens(user_text);
            let enc = tokenizer
                .encode_fast(text.as_str(), false)
                .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;
            ids.extend_from_slice(enc.get_ids());
        }
        Ok(ids)
    }

    /// Encodes user text: control-token strings are not parsed.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_segments(&[Segment::Content(text.to_owned())])
            .map(|mut ids| {
                if self.bos.is_some() {
                    ids.remove(0);
                }
                ids
            })
    }

    /// The raw bytes of a token (possibly part of a UTF-8 character).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    pub fn is_end_of_generation(&self, id: u32) -> bool {
        id == self.eos || self.end_of_turn.contains(&id)
    }

    /// The token's string as stored in the vocabulary (for templates: bos/eos).
    pub fn token_str(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }
}

/// The pre-tokenizer named by `tokenizer.ggml.pre`, as llama.cpp defines it.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    // Every supported variant ends in GPT-2's byte-level split *without* a
    // prefix space (llama.cpp never adds one for BPE vocabularies).
    let byte_level = ByteLevel::new(false, false, true);
    Ok(match pre {
        // SmolLM: each digit is its own pre-token.
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        "gpt2" | "default" => byte_level.into(),
        other => {
            return Err(InferenceError::Unsupported(format!(
                "pre-tokenizer `{other}`"
            )));
        }
    })
}

/// GPT-2's byte-to-printable-character table, inverted: byte-level BPE vocab
/// entries spell each byte as one of these characters.
fn unicode_to_byte() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut map = HashMap::with_capacity(256);
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let c = if printable(b) {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or('\u{FFFD}')
        };
        map.insert(c, b);
    }
    map
}

/// How a `tokenizer.json` vocabulary spells bytes.
enum Spelling {
    /// GPT-2 style: every byte is one printable character (GLM-4).
    ByteLevel(HashMap<char, u8>),
    /// SentencePiece style: `▁` is a space and `<0xNN>` a raw byte (ChatGLM3).
    SentencePiece,
}

impl Spelling {
    fn bytes(&self, token: &str) -> Vec<u8> {
        match self {
            Self::ByteLevel(byte_of) => token_to_bytes(token, byte_of),
            Self::SentencePiece => {
                let hex = token
                    .strip_prefix("<0x")
                    .and_then(|t| t.strip_suffix('>'))
                    .filter(|h| h.len() == 2);
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => vec![b],
                    None => token.replace('\u{2581}', " ").into_bytes(),
                }
            }
        }
    }
}

fn is_byte_level(decoder: Option<&DecoderWrapper>) -> bool {
    match decoder {
        Some(DecoderWrapper::ByteLevel(_)) => true,
        Some(DecoderWrapper::Sequence(seq)) => {
            seq.get_decoders().iter().any(|d| is_byte_level(Some(d)))
        }
        _ => false,
    }
}

fn token_to_bytes(token: &str, byte_of: &HashMap<char, u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(token.len());
    for c in token.chars() {
        match byte_of.get(&c) {
            Some(b) => out.push(*b),
            // Not a byte-level spelling (e.g. a user-defined token): its own text.
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_round_trips_all_bytes() {
        let map = unicode_to_byte();
        assert_eq!(map.len(), 256);
        let mut seen: Vec<u8> = map.values().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..=255u8).collect::<Vec<_>>());
        // Space is spelled 'Ġ' (U+0120) and newline 'Ċ' (U+010A) in GPT-2 vocabularies.
        assert_eq!(map[&'\u{120}'], b' ');
        assert_eq!(map[&'\u{10A}'], b'\n');
        assert_eq!(token_to_bytes("\u{120}hi", &map), b" hi");
    }

    #[test]
    fn sentencepiece_spelling() {
        let s = Spelling::SentencePiece;
        assert_eq!(s.bytes("\u{2581}hello"), b" hello");
        assert_eq!(s.bytes("<0x0A>"), b"\n");
        assert_eq!(s.bytes("<0xE4>"), [0xE4]);
        assert_eq!(s.bytes("<0xZZ>"), b"<0xZZ>");
        assert_eq!(s.bytes("abc"), b"abc");
    }
}
