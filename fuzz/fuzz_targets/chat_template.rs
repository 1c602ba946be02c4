//! Chat-template rendering with hostile message content
//! (server/src/inference/chat_template.rs) and the prompt segments' encoding
//! (server/src/inference/tokenizer.rs `encode_segments`).
//!
//! The seeds put the control-token spellings of the templates we ship
//! (ChatML, ChatGLM3, GLM-4), template syntax and the renderer's own
//! private-use markers into messages; the fuzzer moves them around.
//!
//! Properties, for every shipped template:
//! - rendering succeeds and yields exactly one content segment per message,
//!   in order, equal to the message's text;
//! - the structure segments do not depend on what the messages say (the
//!   same conversation with empty messages renders the same structure);
//! - encoded with a vocabulary that knows the control tokens, content
//!   segments never yield a control token: all control tokens of the prompt
//!   come from the structure.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use securechat_server::engine::{ChatMessage, Role};
use securechat_server::inference::{
    CHATML_TEMPLATE, ChatTemplate, ChatTokenizer, GlmFamily, Segment,
};
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// Control tokens of the templates above (and a few of their relatives).
const CONTROL: [&str; 12] = [
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|observation|>",
    "[gMASK]",
    "sop",
    "<sop>",
    "<s>",
    "</s>",
];

struct Fixture {
    templates: Vec<ChatTemplate>,
    tokenizer: ChatTokenizer,
}

/// A byte-level vocabulary (one token per byte, no merges) plus the control
/// tokens as special tokens: whatever the text, its control tokens can
/// only come from structure.
fn tokenizer() -> ChatTokenizer {
    let vocab: Vocab = ByteLevel::alphabet()
        .into_iter()
        .map(|c| c.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, Vec::new())
        .build()
        .expect("a byte-level BPE");
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, false, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer
        .add_special_tokens(CONTROL.map(|t| AddedToken::from(t, true)))
        .expect("special tokens");
    let eos = tokenizer.token_to_id("<|endoftext|>").expect("eos");
    ChatTokenizer::from_tokenizer_json(tokenizer, eos, Vec::new()).expect("a chat tokenizer")
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| Fixture {
    templates: [
        CHATML_TEMPLATE,
        GlmFamily::ChatGlm3.chat_template(),
        GlmFamily::Glm4.chat_template(),
    ]
    .into_iter()
    .map(|source| ChatTemplate::new(source, "<s>", "</s>").expect("a shipped template"))
    .collect(),
    tokenizer: tokenizer(),
});

/// `[flags][message]\0[message]...`: flags bit 0 asks for the generation
/// prompt; a message is a role byte (`s`ystem, `u`ser, `a`ssistant, others
/// by their value mod 3) and its text.
fn parse(data: &[u8]) -> Option<(bool, Vec<ChatMessage>)> {
    let (&flags, rest) = data.split_first()?;
    let messages = rest
        .split(|b| *b == 0)
        .filter_map(|m| m.split_first())
        .map(|(&role, text)| ChatMessage {
            role: match role {
                b's' => Role::System,
                b'u' => Role::User,
                b'a' => Role::Assistant,
                r => [Role::System, Role::User, Role::Assistant][usize::from(r % 3)],
            },
            content: String::from_utf8_lossy(text).into_owned(),
        })
        .collect();
    Some((flags & 1 != 0, messages))
}

fn structure(segments: &[Segment]) -> Vec<&str> {
    segments
        .iter()
        .filter_map(|s| match s {
            Segment::Structure(t) => Some(t.as_str()),
            Segment::Content(_) => None,
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let fixture = &*FIXTURE;
    let Some((add_generation_prompt, messages)) = parse(data) else {
        return;
    };
    let blank: Vec<ChatMessage> = messages
        .iter()
        .map(|m| ChatMessage {
            role: m.role,
            content: String::new(),
        })
        .collect();
    for template in &fixture.templates {
        let segments = template
            .render(&messages, add_generation_prompt)
            .expect("a shipped template renders any content");
        let contents: Vec<&str> = segments
            .iter()
            .filter_map(|s| match s {
                Segment::Content(t) => Some(t.as_str()),
                Segment::Structure(_) => None,
            })
            .collect();
        let expected: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, expected, "content segments are not the messages");

        let reference = template
            .render(&blank, add_generation_prompt)
            .expect("a shipped template renders empty messages");
        assert_eq!(
            structure(&segments),
            structure(&reference),
            "message content changed the structure"
        );

        let tokenizer = &fixture.tokenizer;
        let controls = |segments: &[Segment]| -> Vec<u32> {
            tokenizer
                .encode_segments(segments)
                .expect("encodes")
                .into_iter()
                .filter(|id| tokenizer.is_control(*id))
                .collect()
        };
        let structure_only: Vec<Segment> = segments
            .iter()
            .filter(|s| matches!(s, Segment::Structure(_)))
            .cloned()
            .collect();
        assert_eq!(
            controls(&segments),
            controls(&structure_only),
            "message content became control tokens"
        );
    }
});
