//! The SSE encoder of streamed chat completions
//! (server/src/routes/openai.rs `sse_events`), serialised by axum's `Sse`
//! exactly as the server sends it.
//!
//! Properties, whatever the model text, completion id, model name and error
//! message:
//! - the body is UTF-8 without a carriage return, and every event is one
//!   `data: ` line followed by a blank line: no text adds a line, a field or
//!   an event;
//! - there is one event per piece up to the first end (plus the role head,
//!   the optional usage event and `[DONE]`), in order;
//! - every text round-trips: each event's `delta.content` is the piece's
//!   text, and id and model come back unchanged.
#![no_main]

use std::sync::LazyLock;

use axum::response::IntoResponse;
use axum::response::sse::Sse;
use libfuzzer_sys::fuzz_target;
use securechat_server::engine::{FinishReason, Usage};
use securechat_server::error::ApiError;
use securechat_server::chat_pipeline::Piece;
use securechat_server::routes::openai::sse_events;
use serde_json::Value;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
});

#[derive(Debug, Clone)]
enum PieceIn {
    Text(String),
    Finished {
        length: bool,
        filtered: bool,
        output_redactions: u64,
    },
    /// An error after the head was sent, naming what the caller asked for.
    Failed(String),
}

#[derive(Debug)]
struct Input {
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
    pieces: Vec<PieceIn>,
}

/// `[flags]id\0model\0piece\0piece...`: flags bit 0 asks for the usage
/// event. A piece is `T<text>`, `F<flags>` (a finish: bit 0 length, bit 1
/// filtered, bit 2 redactions) or `E<model name>` (an error); anything else
/// is text as it stands.
fn parse(data: &[u8]) -> Option<Input> {
    let (&flags, rest) = data.split_first()?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut fields = rest.split(|b| *b == 0);
    let id = text(fields.next()?);
    let model = text(fields.next().unwrap_or_default());
    let pieces = fields
        .map(|p| match p.split_first() {
            Some((b'T', t)) => PieceIn::Text(text(t)),
            Some((b'F', f)) => {
                let f = f.first().copied().unwrap_or(0);
                PieceIn::Finished {
                    length: f & 1 != 0,
                    filtered: f & 2 != 0,
                    output_redactions: u64::from(f & 4 != 0),
                }
            }
            Some((b'E', m)) => PieceIn::Failed(text(m)),
            _ => PieceIn::Text(text(p)),
        })
        .collect();
    Some(Input {
        id,
        model,
        created: 1_700_000_000 + i64::from(flags),
        include_usage: flags & 1 != 0,
        pieces,
    })
}

fn piece(p: &PieceIn) -> Piece {
    match p.clone() {
        PieceIn::Text(t) => Piece::Text(t),
        PieceIn::Finished {
            length,
            filtered,
            output_redactions,
        } => Piece::Finished {
            finish_reason: if length {
                FinishReason::Length
            } else {
                FinishReason::Stop
            },
            usage: Usage {
                prompt_tokens: 7,
                completion_tokens: 11,
            },
            filtered,
            output_redactions,
        },
        PieceIn::Failed(model) => Piece::Failed(ApiError::ModelNotFound(model)),
    }
}

fn encode(input: &Input) -> String {
    let (tx, rx) = tokio::sync::mpsc::channel(input.pieces.len().max(1));
    for p in &input.pieces {
        tx.try_send(piece(p)).expect("room for every piece");
    }
    drop(tx);
    let events = sse_events(
        rx,
        input.id.clone(),
        input.model.clone(),
        input.created,
        input.include_usage,
    );
    let body = Sse::new(events).into_response().into_body();
    let bytes = RUNTIME
        .block_on(axum::body::to_bytes(body, usize::MAX))
        .expect("the body is read");
    String::from_utf8(bytes.to_vec()).expect("an SSE body is UTF-8")
}

fn chunk(data: &str, input: &Input) -> Value {
    let v: Value = serde_json::from_str(data).expect("a chunk is JSON");
    assert_eq!(v["id"].as_str(), Some(input.id.as_str()), "id changed");
    assert_eq!(
        v["model"].as_str(),
        Some(input.model.as_str()),
        "model changed"
    );
    assert_eq!(v["created"].as_i64(), Some(input.created));
    v
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = parse(data) else {
        return;
    };
    let body = encode(&input);
    assert!(!body.contains('\r'), "a carriage return in the stream");
    let events: Vec<&str> = body
        .strip_suffix("\n\n")
        .expect("the stream ends with a blank line")
        .split("\n\n")
        .collect();
    let data: Vec<&str> = events
        .iter()
        .map(|e| {
            assert!(!e.contains('\n'), "an event of more than one line: {e:?}");
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data line: {e:?}"))
        })
        .collect();
    let (last, data) = data.split_last().expect("at least [DONE]");
    assert_eq!(*last, "[DONE]");
    let (head, mut rest) = data.split_first().expect("a head event");
    let head = chunk(head, &input);
    assert_eq!(head["choices"][0]["delta"]["role"], "assistant");
    for p in &input.pieces {
        let (event, tail) = rest.split_first().expect("an event for every piece");
        rest = tail;
        match p {
            PieceIn::Text(t) => {
                let v = chunk(event, &input);
                assert_eq!(
                    v["choices"][0]["delta"]["content"].as_str(),
                    Some(t.as_str()),
                    "text did not round-trip"
                );
            }
            PieceIn::Finished {
                length, filtered, ..
            } => {
                let v = chunk(event, &input);
                let expected = match (filtered, length) {
                    (true, _) => "content_filter",
                    (false, true) => "length",
                    (false, false) => "stop",
                };
                assert_eq!(v["choices"][0]["finish_reason"].as_str(), Some(expected));
                if input.include_usage {
                    let (usage, tail) = rest.split_first().expect("a usage event");
                    rest = tail;
                    assert!(chunk(usage, &input)["usage"].is_object());
                }
                break;
            }
            PieceIn::Failed(model) => {
                let v: Value = serde_json::from_str(event).expect("an error event is JSON");
                assert_eq!(
                    v,
                    ApiError::ModelNotFound(model.clone()).body(),
                    "the error did not round-trip"
                );
                break;
            }
        }
    }
    assert!(rest.is_empty(), "events after the end: {rest:?}");
});
